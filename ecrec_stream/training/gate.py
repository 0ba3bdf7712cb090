"""The evaluation gate: a candidate model is published only if it does not make search worse,
with stated confidence.

A mean over a few hundred held-back queries moves by a hundredth of nDCG from one sample of
queries to the next, so a verdict on the difference of two means says little. The gate pairs
the two models query by query and bootstraps the mean difference (candidate minus serving) over
the held-back queries: it publishes when the lower bound of that interval is above ``-margin``
on recent data (the candidate is not worse by more than ``margin``, at ``confidence``) and above
``-tolerance`` on older data. The interval is in the decision's reasons and figures.

How many queries a verdict needs: the interval's half-width is about
``z * sd / sqrt(n)``, ``sd`` the spread of per-query differences (0.05-0.15 nDCG@10 between two
close models here, docs/retraining.md); with ``sd = 0.1`` a half-width of 0.01 needs ~400
queries, and 50 queries give about +-0.03.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Difference:
    """Candidate minus serving on one split: mean, interval, and the queries it rests on."""

    mean: float
    low: float
    high: float
    queries: int
    confidence: float

    def __str__(self) -> str:
        return (
            f"{self.mean:+.4f} ({self.confidence:.0%} CI {self.low:+.4f} to {self.high:+.4f}, "
            f"{self.queries} queries)"
        )


@dataclass(frozen=True)
class GateDecision:
    """Whether to publish, why, and the metrics compared (split -> metric -> value)."""

    accepted: bool
    reasons: list[str]
    serving: dict[str, dict[str, float]] = field(default_factory=dict)
    candidate: dict[str, dict[str, float]] = field(default_factory=dict)
    differences: dict[str, Difference] = field(default_factory=dict)


def paired_difference(
    serving: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """Mean of candidate minus serving over the queries both were scored on, with a percentile
    bootstrap interval over those queries (seeded: the same data give the same verdict).

    >>> s = {f"q{i}": 0.5 for i in range(200)}
    >>> c = {q: v + (0.02 if i % 2 else 0.0) for i, (q, v) in enumerate(s.items())}
    >>> d = paired_difference(s, c)
    >>> round(d.mean, 3), d.low > 0, d.queries
    (0.01, True, 200)
    """
    queries = sorted(set(serving) & set(candidate))
    if not queries:
        return Difference(0.0, -np.inf, np.inf, 0, confidence)
    diffs = np.array([candidate[q] - serving[q] for q in queries])
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Difference(float(diffs.mean()), float(low), float(high), len(queries), confidence)


def evaluation_gate(
    serving: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    *,
    metric: str = "ndcg@10",
    tolerance: float = 0.01,
    margin: float = 0.005,
    confidence: float = 0.95,
    min_queries: int = 10,
) -> GateDecision:
    """Accept when, with ``confidence``, the candidate is not worse than the serving model by
    more than ``margin`` on ``recent`` held-back data and by more than ``tolerance`` on
    ``older`` data (skipped, and said so, when fewer than ``min_queries`` older queries were
    held back). Each split's metrics carry per-query values (``Scores.per_query``); without them
    the means are compared as they are (no interval).

    >>> from ecrec_stream.training.evaluate import Scores
    >>> def split(values):
    ...     per = {f"q{i}": v for i, v in enumerate(values)}
    ...     return Scores({"ndcg@10": sum(values) / len(values), "queries": len(values)}, per)
    >>> s = {"recent": split([0.5] * 100), "older": split([0.6] * 100)}
    >>> better = {"recent": split([0.52] * 100), "older": split([0.6] * 100)}
    >>> evaluation_gate(s, better).accepted
    True
    >>> noisy = {"recent": split([0.5 + (0.3 if i % 2 else -0.3) for i in range(100)]),
    ...          "older": split([0.6] * 100)}
    >>> evaluation_gate(s, noisy).accepted  # same mean, too uncertain to rule out a loss
    False
    """
    reasons: list[str] = []
    recent_n = int(serving.get("recent", {}).get("queries", 0))
    plain = {k: dict(v) for k, v in serving.items()}, {k: dict(v) for k, v in candidate.items()}
    if recent_n < min_queries:
        return GateDecision(
            False, [f"only {recent_n} recent held-back queries (need {min_queries})"], *plain
        )
    differences: dict[str, Difference] = {}
    accepted = True
    for name, allowed in (("recent", margin), ("older", tolerance)):
        n = int(serving.get(name, {}).get("queries", 0))
        if name == "older" and n < min_queries:
            reasons.append(f"older data not checked: {n} held-back queries")
            continue
        diff = _difference(serving[name], candidate[name], metric, confidence)
        differences[name] = diff
        ok = diff.low >= -allowed
        accepted = accepted and ok
        verdict = "not worse" if ok else "may be worse"
        ours, theirs = candidate[name][metric], serving[name][metric]
        reasons.append(
            f"{name} {metric} {ours:.4f} vs serving {theirs:.4f}: {diff}; {verdict} than -{allowed}"
        )
    return GateDecision(accepted, reasons, *plain, differences)


def _difference(
    serving: Mapping[str, float], candidate: Mapping[str, float], metric: str, confidence: float
) -> Difference:
    s_per, c_per = getattr(serving, "per_query", None), getattr(candidate, "per_query", None)
    if s_per is None or c_per is None:  # means only: no interval to give
        mean = candidate[metric] - serving[metric]
        return Difference(mean, mean, mean, int(serving.get("queries", 0)), confidence)
    return paired_difference(s_per, c_per, confidence=confidence)
