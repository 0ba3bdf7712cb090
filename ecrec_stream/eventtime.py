"""Event-time bookkeeping shared by the session labeller and the drift monitor: watermarks over
several inputs and the lateness rule. (BoundedSeen, the bounded de-duplication both use, lives
in :mod:`ecrec_stream.quality`.)"""

from __future__ import annotations


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
