"""Category-mix drift: Jensen-Shannon distance between the category shares of the reference
and of a window (scipy's ``jensenshannon``), with the categories that moved most as evidence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from ecrec_stream.drift.base import WindowedTwoSample


def category_shares(
    reference: Sequence[str], window: Sequence[str], smoothing: float = 0.5
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories of either sample and their shares in each, additively smoothed so a category
    new to the window counts without an infinite divergence."""
    ref, cur = Counter(reference), Counter(window)
    cats = sorted(set(ref) | set(cur))
    p = np.array([ref[c] + smoothing for c in cats], dtype=np.float64)
    q = np.array([cur[c] + smoothing for c in cats], dtype=np.float64)
    return cats, p / p.sum(), q / q.sum()


class CategoryMixJS(WindowedTwoSample[str]):
    """Jensen-Shannon distance (base 2, in [0, 1]) of category shares.

    >>> d = CategoryMixJS("cats", window_events=10, reference_size=40)
    >>> _ = d.update([(float(i), "a" if i % 2 else "b") for i in range(40)])
    >>> [r.drifted for r in d.update([(40.0 + i, "z") for i in range(10)])]
    [True]
    """

    top_moved = 3

    def statistic(self, reference: Sequence[str], window: Sequence[str]) -> float:
        _, p, q = category_shares(reference, window)
        return float(jensenshannon(p, q, base=2))

    def details(self, reference: Sequence[str], window: Sequence[str]) -> dict[str, Any]:
        cats, p, q = category_shares(reference, window, smoothing=0.0)
        order = np.argsort(-np.abs(q - p))[: self.top_moved]
        return {
            "moved": [
                {
                    "category": cats[i],
                    "before": round(float(p[i]), 4),
                    "after": round(float(q[i]), 4),
                }
                for i in order
            ]
        }
