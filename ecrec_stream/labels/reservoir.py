"""A bounded, uniform sample of a stream (reservoir sampling, Vitter's Algorithm R), seeded.

The label model refits on a reservoir of vote rows and the position-bias model on a reservoir
of impressions: both keep recent and older data in bounded memory. ``random.sample`` needs the
whole population up front, so the ten lines live here, once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ecrec_stream.state import rng_state, set_rng_state

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

    def state_dict(self, pack: Callable[[list[T]], Any] = list) -> dict[str, Any]:
        """The sample (through ``pack``, to state values), the count seen and the generator
        (shared generators are saved by each reservoir; restoring one restores it)."""
        return {"items": pack(list(self.items)), "seen": self.seen, "rng": rng_state(self._rng)}

    def load_state(self, state: dict[str, Any], unpack: Callable[[Any], list[T]] = list) -> None:
        self.items = unpack(state["items"])
        self.seen = int(state["seen"])
        set_rng_state(self._rng, state["rng"])
