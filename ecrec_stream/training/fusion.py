"""Learning the hybrid search's fusion from the replay buffer, gated and published like a model.

The trainer refits the fusion (:mod:`ecrec_stream.index.ranker`) each time enough new examples
arrived: the serving encoder's and BM25's result lists for every buffered query (the replica's
own retrievers over the trainer's copy of the catalog), the examples that teach a fusion
(:func:`~ecrec_stream.index.ranker.trains_fusion`), one pairwise logistic fit on all of them.

The gate compares the fitting procedure with the serving fusion (the last learned one, or the
fixed default) on every buffered query by cross-fitting: the queries fall into
``fusion_folds`` folds by a hash of their text, each fold is re-ranked by a fusion fitted on
the other folds, and the paired bootstrap of :mod:`ecrec_stream.training.gate` over all queries
decides (not worse than the serving fusion by more than ``gate_margin``, at
``gate_confidence``). Each fusion re-ranks only the items a query's examples judge (the logged
items). Why not the model gate's time-ordered held-back split: a fusion has nine weights and
nothing to forget, and a shop's traffic holds few distinct queries; on Crowdflower traffic
(124 queries) that split left ~90 recent and 12 older queries, and the older check's interval
(+-0.04) could pass no fit. Logged clicks favour the fusion that chose what was shown: on that
traffic the gate's estimate of a fit minus RRF was -0.008 where human judgments of the same
queries said +0.001 (docs/benchmarks.md), so the gate is conservative towards the serving
fusion.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecrec_stream.config import IndexSettings, TrainingSettings
from ecrec_stream.contracts.examples import TrainingExample
from ecrec_stream.index.faiss_index import SearchHit
from ecrec_stream.index.fusion import fuse
from ecrec_stream.index.ranker import (
    LearnedFusion,
    candidate_features,
    fit_learned_fusion,
    fusion_groups,
    hits_for,
    trains_fusion,
)
from ecrec_stream.training.buffer import BufferSplit
from ecrec_stream.training.evaluate import (
    Judgments,
    Scores,
    judgments_from_examples,
    mean_scores,
    ndcg_at_k,
    recall_at_k,
)
from ecrec_stream.training.gate import GateDecision, paired_difference

# (dense, lexical) result lists of each query, best first
Lists = Mapping[str, tuple[Sequence[SearchHit], Sequence[SearchHit]]]
ListsOf = Callable[[list[str]], Lists]
TitleOf = Callable[[str], str | None]


@dataclass
class FusionOutcome:
    """What one fit did: the candidate, the gate's decision and why."""

    serving: str  # the serving fusion: a learned fusion's version, or "rrf" / "weighted"
    accepted: bool
    reasons: list[str]
    candidate: LearnedFusion | None = None
    decision: GateDecision | None = None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (trainer status, logs)."""
        return {
            "artifact": "fusion",
            "trigger": "learned fusion refit",
            "accepted": self.accepted,
            "reasons": self.reasons,
            "serving_version": self.serving,
            "candidate_version": None if self.candidate is None else self.candidate.version,
            "serving": self.decision.serving if self.decision else {},
            "candidate": self.decision.candidate if self.decision else {},
            "counts": self.counts,
            "timings_s": {"train": round(self.seconds, 3)},
        }


def query_fold(query: str, folds: int) -> int:
    """A query's cross-fitting fold: a stable hash of its text (the same in every process)."""
    return int(hashlib.sha1(query.encode()).hexdigest()[:8], 16) % folds


def fusion_examples(examples: Iterable[TrainingExample]) -> list[TrainingExample]:
    """The relevance examples that teach (and judge) a fusion."""
    return [e for e in examples if e.task == "relevance" and trains_fusion(e.label, e.votes)]


def logged_rerank(judgments: Judgments, rank: Callable[[str], list[str]], k: int) -> Scores:
    """nDCG@k (and recall) when ``rank(query)``'s order re-ranks each query's judged items
    (items it does not rank at all go last, in a fixed order). Queries whose judged items all
    have one gain say nothing about order and are left out.

    >>> logged_rerank({"q": {"a": 0.0, "b": 2.0}}, lambda q: ["b", "a"], 10)["ndcg@10"]
    1.0
    """
    queries = sorted(q for q, gains in judgments.items() if len(set(gains.values())) > 1)
    ndcg, recall = [], []
    for query in queries:
        gains = judgments[query]
        position = {item: i for i, item in enumerate(rank(query))}
        ranked = sorted(gains, key=lambda i: (position.get(i, len(position)), i))
        ndcg.append(ndcg_at_k(ranked, gains, k))
        recall.append(recall_at_k(ranked, gains, k))
    return mean_scores(queries, ndcg, recall, k)


class FusionLearner:
    """Fits a learned fusion on a buffer split and gates it against the serving one."""

    def __init__(self, training: TrainingSettings, index: IndexSettings) -> None:
        self.training = training
        self.index = index

    def ranking(
        self, fusion: LearnedFusion | None, lists: Lists, title_of: TitleOf
    ) -> Callable[[str], list[str]]:
        """Each query's full fused order under ``fusion`` (``None``: the fixed fusion)."""
        cfg, depth = self.index, self.index.hybrid_depth

        def rank(query: str) -> list[str]:
            dense, lexical = lists[query]
            dense, lexical = dense[:depth], lexical[:depth]
            everything = len(dense) + len(lexical)
            if fusion is None:
                hits = fuse(
                    dense,
                    lexical,
                    everything,
                    method=cfg.fusion,
                    rrf_k=cfg.rrf_k,
                    dense_weight=cfg.dense_weight,
                )
            else:
                hits = fuse(
                    dense,
                    lexical,
                    everything,
                    method="learned",
                    scorer=fusion.scorer(query, title_of),
                )
            return [h.item_id for h in hits]

        return rank

    def _cross_fitted_gate(
        self,
        examples: list[TrainingExample],
        fit: Callable[[list[TrainingExample]], LearnedFusion | None],
        serving: LearnedFusion | None,
        lists: Lists,
        title_of: TitleOf,
    ) -> GateDecision:
        """Every query scored out of fold: the queries are split into ``fusion_folds`` folds by
        a hash of their text; a fusion fitted on the other folds and the serving fusion each
        re-rank a fold's logged items; the paired bootstrap over all queries decides (the
        candidate may not be worse than the serving fusion by more than ``gate_margin``)."""
        cfg = self.training
        k, folds = cfg.eval_k, cfg.fusion_folds
        fold_of = {e.text: query_fold(e.text, folds) for e in examples}
        serving_rank = self.ranking(serving, lists, title_of)
        per_query: dict[str, dict[str, float]] = {"serving": {}, "candidate": {}}
        for fold in range(folds):
            inside = [e for e in examples if fold_of[e.text] == fold]
            judged = judgments_from_examples(inside)
            if not judged:
                continue
            fitted = fit([e for e in examples if fold_of[e.text] != fold])
            candidate_rank = self.ranking(fitted, lists, title_of) if fitted else serving_rank
            for name, rank in (("serving", serving_rank), ("candidate", candidate_rank)):
                per_query[name].update(logged_rerank(judged, rank, k).per_query)
        metric = f"ndcg@{k}"
        scores = {
            name: Scores(
                {metric: float(np.mean(list(v.values()))) if v else 0.0, "queries": len(v)}, v
            )
            for name, v in per_query.items()
        }
        n = len(per_query["serving"])
        plain = (
            {"cross_fitted": dict(scores["serving"])},
            {"cross_fitted": dict(scores["candidate"])},
        )
        if n < cfg.min_eval_queries:
            return GateDecision(
                False,
                [f"only {n} queries with an order to judge (need {cfg.min_eval_queries})"],
                *plain,
            )
        diff = paired_difference(
            per_query["serving"], per_query["candidate"], confidence=cfg.gate_confidence
        )
        ok = diff.low >= -cfg.gate_margin
        ours, theirs = scores["candidate"][metric], scores["serving"][metric]
        reason = (
            f"cross-fitted ({folds} folds of queries) {metric} {ours:.4f} vs serving "
            f"{theirs:.4f}: {diff}; {'not worse' if ok else 'may be worse'} than -{cfg.gate_margin}"
        )
        return GateDecision(ok, [reason], *plain, {"cross_fitted": diff})

    def fit_many(
        self,
        split: BufferSplit,
        lists_of: ListsOf,
        title_of: TitleOf,
        serving: LearnedFusion | None,
    ) -> FusionOutcome:
        """Fit on every buffered example that teaches a fusion and gate the fit by cross-fitting
        (module docstring). ``lists_of`` searches the serving encoder and BM25 for a list of
        queries; ``serving`` is the serving learned fusion (``None``: the fixed one of
        :class:`IndexSettings`)."""
        started = time.perf_counter()
        cfg, depth = self.training, self.index.hybrid_depth
        serving_name = serving.version if serving is not None else self.index.fusion
        examples = fusion_examples([*split.train, *split.recent_eval, *split.older_eval])
        queries = sorted({e.text for e in examples})
        lists = lists_of(queries)

        def features_of(query: str, items: list[str]) -> np.ndarray:
            dense, lexical = lists[query]
            hits = hits_for(dense[:depth], lexical[:depth], items)
            return candidate_features(query, hits, [title_of(i) for i in items])

        def fit(chosen: list[TrainingExample]) -> LearnedFusion | None:
            rows = [(e.text, e.item_id, e.label, e.weight) for e in chosen]
            return fit_learned_fusion(fusion_groups(rows, features_of))

        candidate = fit(examples)
        counts = {
            "train_examples": len(examples),
            "queries": len(queries),
            "pairs": candidate.trained_on["pairs"] if candidate is not None else 0,
        }
        outcome = FusionOutcome(serving_name, False, [], candidate, counts=counts)
        if candidate is None or counts["pairs"] < cfg.fusion_min_pairs:
            outcome.reasons = [
                f"only {counts['pairs']} (relevant, not relevant) pairs "
                f"(need {cfg.fusion_min_pairs})"
            ]
        elif serving is not None and candidate.version == serving.version:
            outcome.reasons = ["the fit gave the serving fusion again: nothing to publish"]
        else:
            outcome.decision = self._cross_fitted_gate(examples, fit, serving, lists, title_of)
            outcome.accepted = outcome.decision.accepted
            outcome.reasons = outcome.decision.reasons
        outcome.seconds = time.perf_counter() - started
        return outcome
