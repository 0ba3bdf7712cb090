"""When the trainer retrains: the triggers (retraining alerts and requests) it holds, the
minimum interval between two retrains, and the deferral of a trigger that found too few
relevant pairs (a drift alert comes right after a shift, before the new traffic's labels)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ecrec_stream.contracts import RetrainingAlert, RetrainRequest

Trigger = RetrainingAlert | RetrainRequest


class RetrainSchedule:
    """Triggers waiting for a retrain, and the rules for when they run.

    * a retrain runs when triggers are pending, the reader has caught up with its topics, at
      least ``min_interval_s`` passed since the last one, and, after a deferral, new examples
      arrived since;
    * a retrain that found too few pairs keeps its triggers (:meth:`defer`) until the oldest of
      them has waited ``defer_max_s``; then it is rejected.

    >>> now = [0.0]
    >>> schedule = RetrainSchedule(min_interval_s=60, defer_max_s=600, clock=lambda: now[0])
    >>> schedule.add(RetrainRequest(alert_id="r1", reason="manual"))
    >>> [t.alert_id for t in schedule.take_due(caught_up=True, examples_added=10)]
    ['r1']
    >>> schedule.defer([RetrainRequest(alert_id="r1", reason="manual")], "too few", 10)
    True
    >>> now[0] = 61.0; schedule.take_due(caught_up=True, examples_added=10)  # nothing new yet
    []
    >>> [t.alert_id for t in schedule.take_due(caught_up=True, examples_added=11)]
    ['r1']
    """

    def __init__(
        self,
        *,
        min_interval_s: float,
        defer_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.defer_max_s = defer_max_s
        self.clock = clock
        self.pending: list[Trigger] = []
        self.deferral: dict[str, Any] | None = None  # what waits, and why (for the status)
        self.deferred = 0
        self._last_retrain = -float("inf")
        self._deferred_since: dict[str, float] = {}  # first try per trigger id
        self._added_at_deferral: int | None = None  # examples added at the last try

    def add(self, trigger: Trigger) -> None:
        self.pending.append(trigger)

    def take_due(self, *, caught_up: bool, examples_added: int) -> list[Trigger]:
        """The triggers to retrain for now (removed from :attr:`pending`), or none."""
        due = self.clock() - self._last_retrain >= self.min_interval_s
        if not (self.pending and caught_up and due and self.has_new_examples(examples_added)):
            return []
        triggers, self.pending = self.pending, []
        return triggers

    def defer(self, triggers: list[Trigger], reason: str, examples_added: int) -> bool:
        """Keep ``triggers`` for a retry once more examples arrived; ``False`` once the
        oldest has waited ``defer_max_s`` (the caller rejects them)."""
        now = self.clock()
        ids = [t.alert_id for t in triggers]
        first = min(self._deferred_since.setdefault(t, now) for t in ids)
        waited = now - first
        if waited >= self.defer_max_s:
            return False
        self.pending = triggers + self.pending
        self._added_at_deferral = examples_added
        self._last_retrain = now
        self.deferred += 1
        self.deferral = {"triggers": ids, "reason": reason, "waited_s": round(waited, 1)}
        return True

    def waited_s(self, triggers: list[Trigger]) -> float:
        """How long the oldest of ``triggers`` has been deferred (0 if never)."""
        now = self.clock()
        return now - min((self._deferred_since.get(t.alert_id, now) for t in triggers), default=now)

    def finished(self, triggers: list[Trigger]) -> None:
        """A retrain for ``triggers`` published or was rejected: forget their deferral."""
        for trigger in triggers:
            self._deferred_since.pop(trigger.alert_id, None)
        self._added_at_deferral, self.deferral = None, None
        self._last_retrain = self.clock()

    def has_new_examples(self, examples_added: int) -> bool:
        """Whether a deferred retrain has new examples to try again with (or none waits)."""
        return self._added_at_deferral is None or examples_added > self._added_at_deferral
