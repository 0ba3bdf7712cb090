"""Category flow: which category a session moves to next, and what is taken there.

Item-to-item relations need both items to have been seen together; in a catalog of tens of
thousands of items most pairs never are (on the real Instacart baskets a third of the test
targets never appear in a training basket). Categories are dense where items are sparse: shoppers
fill a grocery cart aisle by aisle, browse a fashion shop department by department. So the
next item is scored through the catalog's leaf categories,

    score(i) = sum over anchors a, newest first (g = 1, 2, ...) of
               decay ** (g - 1) * P(category c(i) follows c(a)) * P(i | c(i)),

a first-order Markov model over categories with item popularity inside each (the
"hierarchical" smoothing of sparse item transitions; the transition and the within-category
shares are decayed with event time like every other relation here). Written by hand: it is
two decayed, bounded tables, and no maintained library keeps such a model from a stream.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ecrec_stream.recommend.covisit import CoVisitation

MASS = "*"  # the row of ``_mass`` holding each category's total weight


class CategoryFlow:
    """Decayed category-to-category moves and item shares within each category.

    ``observe(previous, category, item, weight, ts)`` records that a session which had just been
    in ``previous`` (leaf categories, newest first) took ``item`` from ``category``;
    ``scores(anchors)`` ranks items for a session whose anchors are in those categories.

    >>> flow = CategoryFlow(decay=0.5, half_life_s=1e9)
    >>> for session in (["fruit", "dairy"], ["fruit", "dairy"], ["fruit", "bakery"]):
    ...     for n, cat in enumerate(session):
    ...         flow.observe(session[:n][::-1], cat, f"{cat}-item", 1.0, ts=0.0)
    >>> [(item, round(score, 2)) for item, score, _ in flow.scores(["fruit"], 3)]
    [('dairy-item', 0.67), ('bakery-item', 0.33)]
    """

    def __init__(
        self,
        *,
        decay: float = 0.5,
        window: int = 5,
        moves: int = 50,
        items: int = 200,
        half_life_s: float = 7 * 86_400.0,
    ) -> None:
        if not 0 < decay <= 1 or window < 1:
            raise ValueError("decay must be in (0, 1] and window >= 1")
        self.decay = decay
        self.window = window
        self._moves = CoVisitation(neighbours=moves, half_life_s=half_life_s)  # cat -> next cat
        self._items = CoVisitation(neighbours=items, half_life_s=half_life_s)  # cat -> item
        # each category's total weight (one row; ~every category is kept: the bound is wide)
        self._mass = CoVisitation(neighbours=1_000_000, half_life_s=half_life_s)

    def __len__(self) -> int:
        """Categories with a recorded move."""
        return len(self._moves)

    def observe(
        self, previous: Sequence[str], category: str, item: str, weight: float, ts: float
    ) -> None:
        """``item`` of ``category`` taken with ``weight`` after a session's ``previous`` leaf
        categories (newest first; only the first ``window`` count)."""
        self._items.add(category, item, weight, ts)
        self._mass.add(MASS, category, weight, ts)
        for gap, before in enumerate(previous[: self.window]):
            # CoVisitation skips a == b; a session staying in its category is a move too
            self._moves.add(before, f">{category}", self.decay**gap, ts)

    def scores(
        self, anchors: Sequence[str], k: int, *, categories: int = 10
    ) -> list[tuple[str, float, tuple[str, str, float]]]:
        """The ``k`` best items for anchors in leaf categories ``anchors`` (newest last):
        ``(item, score, (from category, to category, share of the moves))``."""
        toward: dict[str, float] = defaultdict(float)
        why: dict[str, tuple[str, float]] = {}
        for gap, before in enumerate(reversed(anchors)):
            row = self._moves.neighbours(before)
            total = sum(w for _, w in row)
            if total <= 0:
                continue
            for target, w in row:
                share = w / total
                toward[target[1:]] += self.decay**gap * share
                if target[1:] not in why or share > why[target[1:]][1]:
                    why[target[1:]] = (before, share)
        mass = dict(self._mass.neighbours(MASS)) if toward else {}
        scored: dict[str, tuple[float, str]] = {}
        for target in sorted(toward, key=lambda c: -toward[c])[:categories]:
            total = mass.get(target, 0.0)
            if total <= 0:
                continue
            for item, w in self._items.neighbours(target, k):
                score = toward[target] * w / total
                if item not in scored or score > scored[item][0]:
                    scored[item] = (score, target)
        best = sorted(scored.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        return [(item, score, (why[c][0], c, why[c][1])) for item, (score, c) in best]

    def forget(self, item: str) -> None:
        self._items.forget(item)

    def stats(self) -> dict[str, int]:
        return {"categories": len(self._mass.neighbours(MASS)), "moves": self._moves.entries()}

    # -- state protocol (ecrec_stream.state) ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "moves": self._moves.state_dict(),
            "items": self._items.state_dict(),
            "mass": self._mass.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._moves.load_state(state["moves"])
        self._items.load_state(state["items"])
        self._mass.load_state(state["mass"])

    def reset_state(self) -> None:
        for part in (self._moves, self._items, self._mass):
            part.reset_state()
