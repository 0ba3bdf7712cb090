"""Run the Faust stream worker in the foreground."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Any

from ecrec_stream.config import Settings
from ecrec_stream.exceptions import ConfigError
from streams.kafka import all_topics, ensure_topics, topic_partitions

LOG = logging.getLogger(__name__)


def check_partitions(bootstrap: str, settings: Settings) -> None:
    """Each ``valid_*`` topic must have as many partitions as its input topic (batches keep
    their partition number)."""
    for source, valid in settings.topics.routes().values():
        n_source, n_valid = (
            len(topic_partitions(bootstrap, source)),
            len(topic_partitions(bootstrap, valid)),
        )
        if n_source != n_valid:
            raise ConfigError(
                f"topic {valid} has {n_valid} partitions but {source} has {n_source}; "
                "they must match"
            )


def use_event_loop(settings: Settings) -> None:
    """The event loop (``event_loop``), GIL switch interval (``gil_switch_interval_ms``) and
    young garbage collection threshold (``gc_young_threshold``) of this process; called
    before any event loop exists."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    if settings.gc_young_threshold:
        gc.set_threshold(settings.gc_young_threshold, *gc.get_threshold()[1:])
    if settings.event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # sets asyncio's event loop policy


def running_event_loop() -> str:
    """The running event loop's library: ``uvloop`` or ``asyncio`` (called inside the loop)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


class GcPauses:
    """How long Python's cyclic garbage collector stopped this process, per generation
    (``gc.callbacks``). A collection runs under the GIL, so every thread waits for it; a full
    one (generation 2) walks every tracked object, and the label state's objects (impressions,
    never-clicked pairs, sessions) grow to millions. Served in ``/ecrec/stats`` (``gc``)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]  # unreachable objects freed
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took, generation = time.perf_counter() - self._started, info["generation"]
        self.collections[generation] += 1
        self.total_s[generation] += took
        self.max_s[generation] = max(self.max_s[generation], took)
        self.collected[generation] += info.get("collected", 0)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            f"gen{g}": {
                "collections": self.collections[g],
                "total_s": round(self.total_s[g], 3),
                "max_s": round(self.max_s[g], 3),
                "collected": self.collected[g],
            }
            for g in range(3)
        }


_GC_PAUSES: GcPauses | None = None


def gc_pauses() -> GcPauses:
    """This process's :class:`GcPauses`, timing every collection from the first call on."""
    global _GC_PAUSES
    if _GC_PAUSES is None:
        _GC_PAUSES = GcPauses()
        gc.callbacks.append(_GC_PAUSES._callback)
    return _GC_PAUSES


def run_worker(settings: Settings, bootstrap: str, loglevel: str = "warning") -> None:
    """Create missing topics, then run the Faust worker until it is stopped (SIGTERM/SIGINT)."""
    use_event_loop(settings)
    import faust

    from streams.app import create_app

    ensure_topics(bootstrap, all_topics(settings.topics), settings.partitions)
    check_partitions(bootstrap, settings)
    app = create_app(settings, bootstrap)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG (so that every log call turns it),
    # and every aiokafka and Faust debug call then builds a record that no handler prints:
    # ~5% of a busy worker's CPU (bench.throughput --paced --profile). No spinner, no DEBUG.
    worker.spinner = None
    worker.execute_from_commandline()
