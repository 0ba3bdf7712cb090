"""Time-decayed item-to-item co-visitation counts with a bounded neighbour list per item.

Written here rather than taken from a library: ``implicit``'s item-item models
(``CosineRecommender``, ``BM25Recommender``) and ``scipy.sparse`` co-occurrence fit a whole
user-item matrix at once, so an update means a refit; River has no item-item model. Streaming
needs an increment per click that is visible at once, a decay so that last week outweighs last
year, and a memory bound.

* **Decay** is forward decay (Cormode, Shkapenyuk, Srivastava and Xu, ICDE 2009): a weight
  added at event time ``t`` is stored as ``w * 2 ** ((t - landmark) / half_life)``, so older
  weights never need touching; comparing two stored weights compares their decayed values, and
  :meth:`weight` divides by the factor of "now". When the exponent grows large the landmark
  moves and every stored weight is rescaled once.
* **Memory**: each item keeps at most ``neighbours`` co-visited items. A list that grows past
  twice that is cut back to its heaviest ``neighbours`` (a Space-Saving-like heavy-hitter cut,
  amortised O(1) per increment): an item's frequent companions stay, one-off co-visits go.
  Per item that is at most ``2 x neighbours`` entries, whatever the traffic.
"""

from __future__ import annotations

import math
from typing import Any

RESCALE_AT = 60.0  # exponent (in half-lives) past which the landmark moves


class CoVisitation:
    """``weight(a, b)``: how strongly ``b`` was visited with ``a``, decayed to the newest event
    time seen; ``neighbours(a)``: ``a``'s companions, heaviest first.

    >>> cv = CoVisitation(neighbours=2, half_life_s=10.0)
    >>> cv.add("a", "b", 1.0, ts=0.0)
    >>> cv.add("a", "c", 1.0, ts=10.0)  # one half-life later: b's weight has halved
    >>> [(n, round(w, 2)) for n, w in cv.neighbours("a")]
    [('c', 1.0), ('b', 0.5)]
    """

    def __init__(self, *, neighbours: int = 50, half_life_s: float = 7 * 86_400.0) -> None:
        if neighbours < 1 or half_life_s <= 0:
            raise ValueError("neighbours must be >= 1 and half_life_s > 0")
        self.max_neighbours = neighbours
        self.half_life_s = half_life_s
        self.landmark = 0.0  # event time (s) where stored weights are at scale 1
        self.newest_ts = -math.inf
        self._rows: dict[str, dict[str, float]] = {}
        self.updates = 0
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _scale(self, ts: float) -> float:
        return float(2.0 ** ((ts - self.landmark) / self.half_life_s))

    def _rescale(self, ts: float) -> None:
        """Move the landmark to ``ts``: every stored weight is multiplied once."""
        factor = 2.0 ** ((self.landmark - ts) / self.half_life_s)
        for row in self._rows.values():
            for key in row:
                row[key] *= factor
        self.landmark = ts

    def add(self, a: str, b: str, weight: float, ts: float) -> None:
        """Add ``weight`` to ``a``'s link to ``b`` at event time ``ts`` (one direction)."""
        if a == b or weight <= 0:
            return
        if not self._rows and self.landmark == 0.0:
            self.landmark = ts
        if (ts - self.landmark) / self.half_life_s > RESCALE_AT:
            self._rescale(ts)
        self.newest_ts = max(self.newest_ts, ts)
        row = self._rows.setdefault(a, {})
        row[b] = row.get(b, 0.0) + weight * self._scale(ts)
        self.updates += 1
        if len(row) > 2 * self.max_neighbours:
            keep = sorted(row.items(), key=lambda kv: -kv[1])[: self.max_neighbours]
            self.pruned += len(row) - len(keep)
            self._rows[a] = dict(keep)

    def add_pair(self, a: str, b: str, weight: float, ts: float) -> None:
        """Both directions at once (a symmetric relation)."""
        self.add(a, b, weight, ts)
        self.add(b, a, weight, ts)

    def _now_factor(self) -> float:
        return 1.0 / self._scale(self.newest_ts) if self.newest_ts > -math.inf else 1.0

    def neighbours(self, a: str, k: int | None = None) -> list[tuple[str, float]]:
        """``a``'s companions with their weights decayed to the newest event time."""
        row = self._rows.get(a)
        if not row:
            return []
        factor = self._now_factor()
        ranked = sorted(row.items(), key=lambda kv: -kv[1])
        return [(item, w * factor) for item, w in (ranked if k is None else ranked[:k])]

    def weight(self, a: str, b: str) -> float:
        return self._rows.get(a, {}).get(b, 0.0) * self._now_factor()

    def forget(self, item: str) -> None:
        """Drop ``item`` everywhere (a deleted item)."""
        self._rows.pop(item, None)
        for row in self._rows.values():
            row.pop(item, None)

    def entries(self) -> int:
        return sum(len(row) for row in self._rows.values())

    # -- state protocol (ecrec_stream.state) ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "landmark": self.landmark,
            "newest_ts": self.newest_ts,
            "rows": {a: [list(row), list(row.values())] for a, row in self._rows.items()},
            "updates": self.updates,
            "pruned": self.pruned,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.landmark = float(state["landmark"])
        self.newest_ts = float(state["newest_ts"])
        self._rows = {
            a: dict(zip(keys, map(float, values), strict=True))
            for a, (keys, values) in state["rows"].items()
        }
        self.updates, self.pruned = int(state["updates"]), int(state["pruned"])

    def reset_state(self) -> None:
        self.__init__(  # type: ignore[misc]
            neighbours=self.max_neighbours, half_life_s=self.half_life_s
        )
