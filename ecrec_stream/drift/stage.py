"""The drift stage the drift agent calls: validated batch messages in, windows and alerts out,
with the rule that makes a restart safe (a message at or below the last observed offset of its
partition is a redelivery and is skipped) and the state protocol of :mod:`ecrec_stream.state`
(the monitor and those offsets, saved together)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ecrec_stream.contracts.events import AnyEvent
from ecrec_stream.drift.monitor import DriftMonitor, MonitorStep


@dataclass(frozen=True, slots=True)
class DriftRecord:
    """One validated batch message: where it was read, and its events (``None`` when the
    message did not parse; the label agents dead-letter it)."""

    topic: str
    partition: int
    offset: int
    events: Sequence[AnyEvent] | None


@dataclass
class DriftStep(MonitorStep):
    """What one ``observe_many`` call produced, and what it skipped."""

    counts: Counter[str] = field(default_factory=Counter)


class DriftStage:
    """Feed a micro-batch of validated batch messages to the :class:`DriftMonitor`, each under
    its ``topic:partition`` input, once: redeliveries after a restart are skipped by offset, so
    a window is never counted twice and an alert never raised twice.

    >>> from ecrec_stream.config import DriftSettings
    >>> monitor = DriftMonitor(DriftSettings(), encode=None, category_of=str, model_version="m1")
    >>> stage = DriftStage(monitor)
    >>> stage.observe_many([DriftRecord("t", 0, 5, [])]).counts["batches"]
    1
    >>> stage.observe_many([DriftRecord("t", 0, 5, [])]).counts["skipped_redelivered"]
    1
    """

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self.offsets: dict[str, dict[int, int]] = defaultdict(dict)  # last observed per partition

    def observe_many(self, records: Sequence[DriftRecord]) -> DriftStep:
        counts: Counter[str] = Counter()
        batches = []
        for record in records:
            if record.offset <= self.offsets[record.topic].get(record.partition, -1):
                counts["skipped_redelivered"] += 1
                continue
            if record.events is None:
                counts["skipped_batches"] += 1
            else:
                batches.append((f"{record.topic}:{record.partition}", record.events))
                counts["batches"] += 1
            self.offsets[record.topic][record.partition] = record.offset
        observed = self.monitor.observe_many(batches)
        return DriftStep(results=observed.results, alerts=observed.alerts, counts=counts)

    def tick(self) -> MonitorStep:
        """Release the events whose slower inputs went idle (call from a timer)."""
        return self.monitor.tick()

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict(),
            "offsets": {
                t: {str(p): o for p, o in parts.items()} for t, parts in self.offsets.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.monitor.load_state(state["monitor"])
        self.offsets = defaultdict(dict)
        for topic, parts in state["offsets"].items():
            self.offsets[topic] = {int(p): int(o) for p, o in parts.items()}

    def reset_state(self) -> None:
        self.monitor.reset_state()
        self.offsets = defaultdict(dict)
