"""A bounded, uniform sample of a stream (reservoir sampling, Vitter's Algorithm R), seeded.

The label model refits on a reservoir of vote rows and the position-bias model on a reservoir
of impressions: both keep recent and older data in bounded memory. ``random.sample`` needs the
whole population up front, so the ten lines live here, once.
"""

from __future__ import annotations

import random
from typing import Generic, TypeVar

T = TypeVar("T")


class Reservoir(Generic[T]):
    """Keep a uniform sample of at most ``capacity`` of the items added so far.

    >>> r = Reservoir[int](capacity=3, seed=1)
    >>> for i in range(100):
    ...     r.add(i)
    >>> len(r.items), r.seen
    (3, 100)
    """

    def __init__(self, capacity: int, seed: int = 0, rng: random.Random | None = None) -> None:
        """``rng``: a generator shared with other reservoirs (then ``seed`` is unused)."""
        self.capacity = capacity
        self.items: list[T] = []
        self.seen = 0
        self._rng = rng or random.Random(seed)

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.capacity:
                self.items[j] = item

    def __len__(self) -> int:
        return len(self.items)
