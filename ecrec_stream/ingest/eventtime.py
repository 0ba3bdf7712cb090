"""Event-time bookkeeping shared by the session labeller and the drift monitor: watermarks over
several inputs and the lateness rule. (BoundedSeen, the bounded de-duplication both use, lives
in :mod:`ecrec_stream.ingest.quality`.)"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from typing import Any


class Watermarks:
    """Event-time progress per partition, the minimum over several inputs (searches and clicks
    arrive on two topics). A partition makes no progress until every input has been seen in it,
    so a jump in one topic cannot close sessions whose events still sit in the other.

    >>> wm = Watermarks(("searches", "clicks"))
    >>> wm.advance(0, "searches", 100.0); wm.get(0)
    -inf
    >>> wm.advance(0, "clicks", 40.0); wm.advance(0, "searches", 90.0); wm.get(0)
    40.0
    >>> wm.is_late(0, 30.0, allowed_lateness=5.0), wm.is_late(0, 36.0, allowed_lateness=5.0)
    (True, False)
    """

    def __init__(self, inputs: tuple[str, ...]) -> None:
        self.inputs = inputs
        self._ts: dict[tuple[int, str], float] = {}

    def advance(self, partition: int, source: str, ts: float) -> None:
        key = (partition, source)
        self._ts[key] = max(self._ts.get(key, float("-inf")), ts)

    def get(self, partition: int) -> float:
        return min(self._ts.get((partition, s), float("-inf")) for s in self.inputs)

    def is_late(self, partition: int, ts: float, allowed_lateness: float) -> bool:
        """Whether an event at ``ts`` arrives after the watermark has passed it by more than
        ``allowed_lateness`` seconds (a session gap, a drift window)."""
        return ts < self.get(partition) - allowed_lateness


class ReorderBuffer:
    """Merges several inputs (topics, partitions) into one event-time order.

    Events wait until the watermark (the slowest input's newest event time) passes them, then
    leave sorted by event time. An input is not waited for when it lags the newest event seen
    anywhere by more than ``max_lag_s`` (event time), or when it has sent nothing for
    ``max_idle_s`` of wall-clock time (Kafka Streams' ``max.task.idle.ms``: a topic that carries
    no traffic, or a backlog whose event time stands still, must not stall the rest). At most
    ``capacity`` events wait (the oldest leave first when it is full). Needed wherever a
    statistic mixes inputs: a click-through rate built from searches and clicks read in topic
    order would see whichever topic's backlog the consumer fetched first.

    ``inputs`` names inputs expected from the start: until each has been seen, nothing leaves
    while the buffered events span less than ``max_lag_s`` and the first one arrived less than
    ``max_idle_s`` ago. :meth:`release` applies the wall-clock rule without new events (call
    it from a timer).

    >>> buf = ReorderBuffer(max_lag_s=100, inputs=("clicks", "searches"))
    >>> buf.add("clicks", [(5.0, "c5"), (9.0, "c9")])
    []
    >>> buf.add("searches", [(4.0, "s4"), (7.0, "s7")])
    ['s4', 'c5', 's7']
    >>> buf.flush()
    ['c9']
    >>> now = [0.0]
    >>> idle = ReorderBuffer(max_lag_s=100, max_idle_s=10, inputs=("a", "b"), clock=lambda: now[0])
    >>> idle.add("a", [(1.0, "a1")]), idle.release()
    ([], [])
    >>> now[0] = 11.0; idle.release()
    ['a1']
    """

    def __init__(
        self,
        max_lag_s: float,
        capacity: int = 100_000,
        inputs: tuple[str, ...] = (),
        max_idle_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag_s = max_lag_s
        self.max_idle_s = max_idle_s
        self.capacity = capacity
        self.inputs = inputs
        self.clock = clock
        self._oldest = float("inf")
        self._newest: dict[str, float] = {}
        self._last_heard: dict[str, float] = {}  # wall clock, per input
        self._started = float("inf")  # wall clock of the first event
        self._heap: list[tuple[float, int, object]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def state_dict(self, encode: Callable[[object], Any]) -> dict[str, Any]:
        """The waiting events (each through ``encode``, to state values) and each input's
        newest event time. Wall-clock readings are not kept: see :meth:`load_state`."""
        return {
            "oldest": self._oldest,
            "newest": dict(self._newest),
            "heap": [[ts, seq, encode(event)] for ts, seq, event in self._heap],
            "seq": self._seq,
        }

    def load_state(self, state: dict[str, Any], decode: Callable[[Any], object]) -> None:
        """Resume ``state_dict``'s buffer. Every input starts a fresh idle period (a restored
        buffer waits at most ``max_idle_s`` once more)."""
        now = self.clock()
        self._oldest = float(state["oldest"])
        self._newest = {k: float(v) for k, v in state["newest"].items()}
        self._last_heard = dict.fromkeys(self._newest, now)
        self._started = now if self._newest else float("inf")
        self._heap = [(float(ts), int(seq), decode(event)) for ts, seq, event in state["heap"]]
        heapq.heapify(self._heap)
        self._seq = int(state["seq"])

    def reset_state(self) -> None:
        self._oldest = float("inf")
        self._newest, self._last_heard = {}, {}
        self._started = float("inf")
        self._heap, self._seq = [], 0

    def watermark(self) -> float:
        if not self._newest:
            return float("-inf")
        now = self.clock()
        top = max(self._newest.values())
        waiting = now - self._started < self.max_idle_s and top - self._oldest < self.max_lag_s
        if waiting and any(i not in self._newest for i in self.inputs):
            return float("-inf")  # an expected input has not shown up yet
        active = [
            t
            for i, t in self._newest.items()
            if t >= top - self.max_lag_s and now - self._last_heard[i] < self.max_idle_s
        ]
        return min(active) if active else top

    def progress(self, inputs: Iterable[str]) -> float:
        """How far ``inputs`` have been received, in event time: the oldest newest-event time
        among those still live. An input idle for ``max_idle_s`` (wall clock) no longer holds
        anything back, nor does an expected one not heard from within ``max_idle_s`` of the
        first event; ``inf`` when none of them is live.

        >>> now = [0.0]
        >>> buf = ReorderBuffer(max_lag_s=100, max_idle_s=10, clock=lambda: now[0])
        >>> _ = buf.add("clicks:0", [(50.0, "c")]); _ = buf.add("searches:0", [(90.0, "s")])
        >>> buf.progress(["clicks:0", "clicks:1"])  # clicks:1 may still come
        -inf
        >>> now[0] = 11.0; _ = buf.add("clicks:0", [(60.0, "c2")])
        >>> buf.progress(["clicks:0", "clicks:1"])  # clicks:1 stayed silent: not waited for
        60.0
        """
        now = self.clock()
        times = []
        for name in inputs:
            if name in self._newest:
                if now - self._last_heard[name] < self.max_idle_s:
                    times.append(self._newest[name])
            elif now - self._started < self.max_idle_s:
                times.append(float("-inf"))
        return min(times) if times else float("inf")

    def add(self, source: str, events: list[tuple[float, object]]) -> list[object]:
        """Add ``(event time, event)`` pairs from ``source``; return the events now released."""
        now = self.clock()
        self._started = min(self._started, now)
        for ts, event in events:
            self._newest[source] = max(self._newest.get(source, float("-inf")), ts)
            self._last_heard[source] = now
            self._oldest = min(self._oldest, ts)
            heapq.heappush(self._heap, (ts, self._seq, event))
            self._seq += 1
        return self.release()

    def release(self) -> list[object]:
        """The events the watermark has passed (or that overflow ``capacity``), in order."""
        mark = self.watermark()
        out = []
        while self._heap and (self._heap[0][0] <= mark or len(self._heap) > self.capacity):
            out.append(heapq.heappop(self._heap)[2])
        return out

    def flush(self) -> list[object]:
        """Release everything still waiting, in event-time order."""
        out = [e for _, _, e in sorted(self._heap)]
        self._heap.clear()
        return out
