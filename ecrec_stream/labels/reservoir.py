"""A bounded, uniform sample of a stream (reservoir sampling, Vitter's Algorithm R), seeded.

The label model refits on a reservoir of vote rows and the position-bias model on a reservoir
of impressions: both keep recent and older data in bounded memory. ``random.sample`` needs the
whole population up front, so the ten lines live here, once, with the rule both models use
for when to refit on their sample (:func:`refit_due`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ecrec_stream.state import TakenState, rng_state, set_rng_state

T = TypeVar("T")


def refit_due(new: int, sample: int, at_least: int) -> bool:
    """Whether a model fitted on a reservoir of ``sample`` items is refitted, ``new`` items
    having entered the sample since its last fit (:attr:`Reservoir.entered`): once
    ``at_least`` and half the sample are new. A fit costs time in proportion to the sample, so
    refitting after a fixed count makes labelling a sustained stream quadratic (the label
    model and the position model both wait so). Counted as items that entered the sample,
    not items seen: once ``seen`` is many times the capacity few items enter, and refitting
    on a sample that is nearly the one fitted before only repeats that fit (so refits come
    ever further apart: the sample half new after ``e ** 0.5`` = 1.65 times the items seen).

    >>> refit_due(600, 1_000, 500), refit_due(600, 20_000, 500), refit_due(10_000, 20_000, 500)
    (True, False, True)
    """
    return new >= max(at_least, sample // 2)


class Reservoir(Generic[T]):
    """Keep a uniform sample of at most ``capacity`` of the items added so far.

    >>> r = Reservoir[int](capacity=3, seed=1)
    >>> for i in range(100):
    ...     r.add(i)
    >>> len(r.items), r.seen, 3 <= r.entered < 30  # entered: ~3 * (1 + ln(100 / 3))
    (3, 100, True)
    """

    def __init__(self, capacity: int, seed: int = 0, rng: random.Random | None = None) -> None:
        """``rng``: a generator shared with other reservoirs (then ``seed`` is unused)."""
        self.capacity = capacity
        self.items: list[T] = []
        self.seen = 0
        self.entered = 0  # items added that went into the sample
        self._rng = rng or random.Random(seed)

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            self.entered += 1
        else:
            j = self._rng.randrange(self.seen)
            if j < self.capacity:
                self.items[j] = item
                self.entered += 1

    def add_many(self, items: Iterable[T]) -> None:
        """:meth:`add` each of ``items`` in turn: the same sample and generator draws, without
        a method call per item (the label model and the position model add several items per
        session event).

        >>> one, many = Reservoir[int](3, seed=1), Reservoir[int](3, seed=1)
        >>> for i in range(100):
        ...     one.add(i)
        >>> many.add_many(range(60)); many.add_many(range(60, 100))
        >>> (many.items, many.seen, many.entered) == (one.items, one.seen, one.entered)
        True
        """
        sample, capacity = self.items, self.capacity
        rest = iter(items)
        room = capacity - len(sample)
        if room > 0:
            taken = list(itertools.islice(rest, room))
            sample.extend(taken)
            self.seen += len(taken)
            self.entered += len(taken)
            if len(taken) < room:
                return
        draw = self._rng.randrange
        seen, entered = self.seen, self.entered
        for item in rest:
            seen += 1
            j = draw(seen)
            if j < capacity:
                sample[j] = item
                entered += 1
        self.seen, self.entered = seen, entered

    def __len__(self) -> int:
        return len(self.items)

    def state_dict(self, pack: Callable[[list[T]], Any] = list) -> dict[str, Any]:
        """The sample (through ``pack``, to state values), the count seen and the generator
        (shared generators are saved by each reservoir; restoring one restores it)."""
        return self.take_state(pack)()

    def take_state(self, pack: Callable[[list[T]], Any] = list) -> TakenState:
        """:meth:`state_dict` in two steps (:class:`~ecrec_stream.state.TakesState`): a copy of
        the list now, ``pack`` on it when called. Items must not be changed in place."""
        items, seen, entered, rng = list(self.items), self.seen, self.entered, rng_state(self._rng)
        return lambda: {"items": pack(items), "seen": seen, "entered": entered, "rng": rng}

    def load_state(self, state: dict[str, Any], unpack: Callable[[Any], list[T]] = list) -> None:
        self.items = unpack(state["items"])
        self.seen = int(state["seen"])
        self.entered = int(state.get("entered", self.seen))  # absent before session 19
        set_rng_state(self._rng, state["rng"])
