"""What the stream worker sets and measures process-wide: the event loop, the GIL switch
interval, the garbage collector's young threshold and its pauses. Apart from
:mod:`streams.worker` so that the worker's web pages (:mod:`streams.app`) can read them."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

from ecrec_stream.config import Settings


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
