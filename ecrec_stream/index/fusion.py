"""Fusing the dense and lexical result lists of one search into one ranking.

* ``rrf``: reciprocal rank fusion (Cormack et al., 2009): ``sum 1 / (rrf_k + rank)`` over the
  lists an item is in. Needs no score calibration.
* ``weighted``: min-max normalised scores, ``w * dense + (1 - w) * lexical`` (an item missing
  from a list gets 0 there). Chosen on Crowdflower's dev queries it beat every RRF setting
  there (``bench.fusion``), where the dense list leads; on a hardware catalog where BM25 leads,
  its 0.8 on dense fell below BM25 alone, and RRF did not. RRF is the default until a shop's
  own traffic has taught a ``learned`` fusion.
* ``learned``: the candidates (both lists' union, with their ranks and scores in each) scored
  by ``scorer``, a fusion learned from the shop's clicks (:mod:`ecrec_stream.index.ranker`).

Every fused hit keeps its rank and score in each list (``None`` where that retriever did not
find it), so a result says which retriever found it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ecrec_stream.index.faiss_index import SearchHit

Fusion = Literal["rrf", "weighted", "learned"]


@dataclass(frozen=True, slots=True)
class FusedHit:
    item_id: str
    score: float
    dense_rank: int | None = None  # 1-based
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None


def fuse(
    dense: Sequence[SearchHit],
    lexical: Sequence[SearchHit],
    k: int,
    *,
    method: Fusion = "rrf",
    rrf_k: float = 60.0,
    dense_weight: float = 0.5,
    scorer: Callable[[list[FusedHit]], np.ndarray] | None = None,
) -> list[FusedHit]:
    """The best ``k`` of both lists, fused by ``method``.

    >>> d = [SearchHit("a", 0.9), SearchHit("b", 0.8)]
    >>> lx = [SearchHit("b", 7.0), SearchHit("c", 3.0)]
    >>> [(h.item_id, h.dense_rank, h.lexical_rank) for h in fuse(d, lx, 3)]
    [('b', 2, 1), ('a', 1, None), ('c', None, 2)]
    >>> [h.item_id for h in fuse(d, lx, 2, method="weighted", dense_weight=0.9)]
    ['a', 'b']
    """
    dense_at = {h.item_id: (rank, h.score) for rank, h in enumerate(dense, start=1)}
    lexical_at = {h.item_id: (rank, h.score) for rank, h in enumerate(lexical, start=1)}
    ids = list(dict.fromkeys([*dense_at, *lexical_at]))
    if method == "rrf":
        scores = {
            i: sum(1.0 / (rrf_k + at[i][0]) for at in (dense_at, lexical_at) if i in at)
            for i in ids
        }
    elif method == "weighted":
        dense_norm, lexical_norm = _min_max(dense_at), _min_max(lexical_at)
        scores = {
            i: dense_weight * dense_norm.get(i, 0.0) + (1 - dense_weight) * lexical_norm.get(i, 0.0)
            for i in ids
        }
    elif method == "learned" and scorer is not None:
        candidates = [_hit(i, 0.0, dense_at, lexical_at) for i in ids]
        scores = dict(zip(ids, (float(v) for v in scorer(candidates)), strict=True))
    else:
        raise ValueError(f"unknown fusion {method!r} (rrf, weighted, or learned with a scorer)")
    # ties: the better best rank in either list first, then the id (deterministic)
    best_rank = {i: min(at[i][0] for at in (dense_at, lexical_at) if i in at) for i in ids}
    ranked = sorted(ids, key=lambda i: (-scores[i], best_rank[i], i))[:k]
    return [_hit(i, scores[i], dense_at, lexical_at) for i in ranked]


def _hit(
    item: str,
    score: float,
    dense_at: dict[str, tuple[int, float]],
    lexical_at: dict[str, tuple[int, float]],
) -> FusedHit:
    return FusedHit(
        item,
        score,
        dense_at[item][0] if item in dense_at else None,
        dense_at[item][1] if item in dense_at else None,
        lexical_at[item][0] if item in lexical_at else None,
        lexical_at[item][1] if item in lexical_at else None,
    )


def _min_max(at: dict[str, tuple[int, float]]) -> dict[str, float]:
    if not at:
        return {}
    scores = [s for _, s in at.values()]
    low, high = min(scores), max(scores)
    span = high - low
    return {i: (s - low) / span if span > 0 else 1.0 for i, (_, s) in at.items()}


__all__ = ["FusedHit", "Fusion", "fuse"]
