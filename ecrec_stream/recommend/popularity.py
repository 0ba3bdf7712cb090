"""Time-decayed popularity of items, overall and per category: the fallback recommender."""

from __future__ import annotations

from typing import Any

from ecrec_stream.recommend.covisit import CoVisitation

OVERALL = "*"


class DecayedPopularity:
    """Decayed interaction weight per item, overall and within each category (a
    :class:`CoVisitation` row per category, so it shares the decay and the memory bound).

    >>> pop = DecayedPopularity(top=3, half_life_s=100.0)
    >>> for item, cat in [("a", "x"), ("b", "x"), ("b", "x"), ("c", "y")]:
    ...     pop.add(item, cat, 1.0, ts=0.0)
    >>> [i for i, _ in pop.top()], [i for i, _ in pop.top("y")]
    (['b', 'a', 'c'], ['c'])
    """

    def __init__(self, *, top: int = 200, half_life_s: float = 7 * 86_400.0) -> None:
        self._counts = CoVisitation(neighbours=top, half_life_s=half_life_s)

    def add(self, item: str, category: str | None, weight: float, ts: float) -> None:
        self._counts.add(OVERALL, item, weight, ts)
        if category:
            self._counts.add(f"cat:{category}", item, weight, ts)

    def top(self, category: str | None = None, k: int | None = None) -> list[tuple[str, float]]:
        return self._counts.neighbours(OVERALL if category is None else f"cat:{category}", k)

    def forget(self, item: str) -> None:
        self._counts.forget(item)

    def state_dict(self) -> dict[str, Any]:
        return self._counts.state_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        self._counts.load_state(state)

    def reset_state(self) -> None:
        self._counts.reset_state()
