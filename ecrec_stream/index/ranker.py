"""A fusion of the dense and lexical lists learned from the shop's own traffic.

A fixed fusion weight chosen on one shop's data is wrong for another's: on Crowdflower the
dense list leads, on a hardware catalog (model numbers, sizes, brands) BM25 does, and a
user cannot know which weight to set. This ranker learns it from the relevance examples the
label stage makes from clicks (``ecrec.examples``; a click's weight already corrects for its
position): a pairwise logistic model (scikit-learn) over what a replica knows of each candidate
of a search, the same features for every query:

* dense: cosine, reciprocal rank, found at all; lexical: BM25 relative to the query's best,
  reciprocal rank, found at all;
* the share of the query's words in the title;
* the same rank features again for queries with a digit (model numbers, sizes), so a shop can
  weigh the lists differently for those.

For each query, every (relevant, not relevant) pair of its examples is one row (the feature
difference) and its mirror; the fitted weights score candidates, best first. Which examples:
the relevant ones, and as "not relevant" only the pairs never clicked across many sessions
(``never_clicked``), not the skips above a click: a skip is by construction ranked above the
item clicked, so pairs of it teach the model to push the top of the lists down (Joachims'
skip-above bias). Trained on Crowdflower traffic with them, the fusion fell below dense and
RRF (nDCG@10 0.738 vs 0.761 / 0.767); without them it led both (0.777; ``bench.learned_fusion``).
The model is a JSON document of weights, its version the digest of that document: no pickle,
and the same examples give the same version.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecrec_stream.index.faiss_index import SearchHit
from ecrec_stream.index.fusion import FusedHit

FEATURES = (
    "dense_score",
    "dense_rrank",
    "in_dense",
    "lexical_score",
    "lexical_rrank",
    "in_lexical",
    "title_match",
    "digit_dense_rrank",
    "digit_lexical_rrank",
)


def hits_for(
    dense: Sequence[SearchHit], lexical: Sequence[SearchHit], items: Sequence[str]
) -> list[FusedHit]:
    """``items`` with their rank and score in each of one search's lists (``None`` where a
    list does not hold it): what :func:`candidate_features` needs for items a user was shown.

    >>> [(h.dense_rank, h.lexical_rank) for h in hits_for([SearchHit("a", .9)], [], ["a", "b"])]
    [(1, None), (None, None)]
    """
    dense_at = {h.item_id: (rank, h.score) for rank, h in enumerate(dense, start=1)}
    lexical_at = {h.item_id: (rank, h.score) for rank, h in enumerate(lexical, start=1)}
    return [
        FusedHit(
            i,
            0.0,
            dense_at[i][0] if i in dense_at else None,
            dense_at[i][1] if i in dense_at else None,
            lexical_at[i][0] if i in lexical_at else None,
            lexical_at[i][1] if i in lexical_at else None,
        )
        for i in items
    ]


def candidate_features(
    query: str, hits: Sequence[FusedHit], titles: Sequence[str | None]
) -> np.ndarray:
    """The features (columns, :data:`FEATURES`) of each candidate (rows) of one search.

    >>> hits = [FusedHit("a", 0, 1, 0.8, None, None), FusedHit("b", 0, None, None, 1, 12.0)]
    >>> candidate_features("usb 3 cable", hits, ["usb cable", "hdmi"]).round(2).tolist()[1]
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    """
    from ecrec_stream.labels.relevance import content_tokens

    words = content_tokens(query)
    digit = float(any(ch.isdigit() for ch in query))
    best = max((h.lexical_score or 0.0 for h in hits), default=0.0)
    rows = []
    for hit, title in zip(hits, titles, strict=True):
        dense_rrank = 1.0 / hit.dense_rank if hit.dense_rank else 0.0
        lexical_rrank = 1.0 / hit.lexical_rank if hit.lexical_rank else 0.0
        shared = len(words & content_tokens(title)) / len(words) if words and title else 0.0
        rows.append(
            [
                hit.dense_score or 0.0,
                dense_rrank,
                float(hit.dense_rank is not None),
                (hit.lexical_score or 0.0) / best if best > 0 else 0.0,
                lexical_rrank,
                float(hit.lexical_rank is not None),
                shared,
                digit * dense_rrank,
                digit * lexical_rrank,
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


@dataclass(frozen=True)
class LearnedFusion:
    """Weights of :data:`FEATURES`; ``trained_on``: how many (relevant, not relevant) pairs of
    how many queries, and anything worth keeping about the fit (``info``)."""

    weights: tuple[float, ...]
    features: tuple[str, ...] = FEATURES
    trained_on: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Content digest of the weights and feature names (16 hex digits, like a model's)."""
        doc = json.dumps({"features": self.features, "weights": self.weights}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features @ np.asarray(self.weights))

    def scorer(
        self, query: str, title_of: Callable[[str], str | None]
    ) -> Callable[[list[FusedHit]], np.ndarray]:
        """The ``scorer`` of :func:`~ecrec_stream.index.fusion.fuse` for one query."""

        def score(hits: list[FusedHit]) -> np.ndarray:
            titles = [title_of(h.item_id) for h in hits]
            return self.score(candidate_features(query, hits, titles))

        return score

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "features": list(self.features),
                "weights": list(self.weights),
                "trained_on": self.trained_on,
                "info": self.info,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> LearnedFusion:
        """Parse and check (feature names known, version matching the weights)."""
        doc = json.loads(text)
        fusion = cls(
            tuple(float(w) for w in doc["weights"]),
            tuple(doc["features"]),
            {k: int(v) for k, v in doc.get("trained_on", {}).items()},
            dict(doc.get("info", {})),
        )
        if fusion.features != FEATURES or len(fusion.weights) != len(FEATURES):
            raise ValueError(f"a fusion over {fusion.features}, this version scores {FEATURES}")
        if doc.get("version") not in (None, fusion.version):
            raise ValueError(f"fusion {doc['version']} does not match its weights")
        return fusion


def trains_fusion(label: int, votes: dict[str, int]) -> bool:
    """Whether a relevance example teaches the fusion: a relevant one, or a "not relevant"
    one that comes from many sessions (see the module docstring).

    >>> trains_fusion(1, {"clicks": 1}), trains_fusion(0, {"clicks": 0})
    (True, False)
    >>> trains_fusion(0, {"never_clicked": 0})
    True
    """
    return label == 1 or "never_clicked" in votes


def fusion_groups(
    examples: Sequence[tuple[str, str, int, float]],
    features_of: Callable[[str, list[str]], np.ndarray],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(query, item, label, weight)`` examples (already chosen by :func:`trains_fusion`) as
    :func:`fit_learned_fusion`'s groups: per query, one row per item (its examples' mean label,
    rounded; their summed weight), its features from ``features_of(query, items)``."""
    labels: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    weights: dict[tuple[str, str], float] = defaultdict(float)
    for query, item, label, weight in examples:
        labels[query][item].append(float(label))
        weights[query, item] += weight
    groups = []
    for query, items in labels.items():
        ids = sorted(items)
        y = np.array([round(float(np.mean(items[i]))) for i in ids], dtype=float)
        w = np.array([weights[query, i] for i in ids])
        groups.append((features_of(query, ids), y, w))
    return groups


def fit_learned_fusion(
    groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *, c: float = 1.0
) -> LearnedFusion | None:
    """Fit on ``groups``: per query, its examples' features, labels (1 relevant, 0 not) and
    weights; ``None`` when no query has both a relevant and a not-relevant example.

    >>> rng = np.random.default_rng(0)
    >>> groups = []
    >>> for _ in range(50):  # relevant items rank high in the lexical list, not the dense one
    ...     x = rng.random((6, len(FEATURES)))
    ...     y = (x[:, FEATURES.index("lexical_rrank")] > 0.5).astype(float)
    ...     groups.append((x, y, np.ones(6)))
    >>> fusion = fit_learned_fusion(groups)
    >>> w = dict(zip(FEATURES, fusion.weights))
    >>> w["lexical_rrank"] > abs(w["dense_rrank"])
    True
    """
    from sklearn.linear_model import LogisticRegression

    diffs, pair_weights, queries = [], [], 0
    for x, y, w in groups:
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if not len(pos) or not len(neg):
            continue
        queries += 1
        i, j = np.meshgrid(pos, neg, indexing="ij")
        diffs.append(x[i.ravel()] - x[j.ravel()])
        pair_weights.append(np.sqrt(w[i.ravel()] * w[j.ravel()]))
    if not diffs:
        return None
    d, pw = np.vstack(diffs), np.concatenate(pair_weights)
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=1000)
    model.fit(
        np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], sample_weight=np.r_[pw, pw]
    )
    return LearnedFusion(
        tuple(float(v) for v in model.coef_[0]),
        trained_on={"pairs": len(d), "queries": queries},
    )
