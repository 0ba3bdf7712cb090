"""Hybrid fusion learned from a shop's own clicks, against the fixed fusions and each retriever
alone, on real judgments.

``python -m bench.learned_fusion [--sessions 5000] [--skip-finetune]``

Catalog: every Crowdflower title (9,708) in the replica's index (packaged MiniLM, SQLite FTS5
BM25). Traffic: shopping sessions over the training half of the queries (``query_half == 0``),
shown the index's RRF hybrid top 10 and clicked from the human judgments through the
position-biased cascade of ``bench.crowdflower``; the worker's own relevance labeler turns them
into examples (position-debiased weights, negatives from many sessions included). They go into
the trainer's replay buffer as they come; after the first N sessions (N = 250 ... ``--sessions``)
the trainer's own :class:`~ecrec_stream.training.fusion.FusionLearner` fits on the buffer and
gates the fit against the serving fusion by cross-fitting over the buffer's queries (RRF until
one passes), exactly as the trainer does. Measured on the **other** half of the queries (never
in the traffic) by nDCG@10 against the human judgments: the fit as it came out (ungated) and
the fusion served after the gate;
overall and on the query subsets where BM25 tends to lead (queries with a digit; with a unit or
size; starting with a brand: a word that begins at least five catalog titles), beside dense,
BM25, RRF (k 60, the default until traffic has arrived) and the weighted fusion (0.8 on dense,
the earlier default); "served" there is the fusion served at the end. Paired-bootstrap 95%
intervals over the test queries of learned minus the better single retriever of each subset.
Then the same after fine-tuning the encoder on the training half's judged pairs (the trainer's
loop), the fusion refitted on the same buffer with the fine-tuned encoder's lists and gated
against RRF on them.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from bench import crowdflower as cf
from bench.common import cached_encoder, console, report
from bench.fusion import Lists, result_lists
from bench.retrain import K, human_judgments
from bench.retrieval import apply_in_batches, fine_tuned_encoder, items_of
from ecrec_stream.config import IndexSettings, LabelSettings, TrainingSettings
from ecrec_stream.contracts.examples import TrainingExample
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.fusion import FusedHit, fuse
from ecrec_stream.index.ranker import (
    LearnedFusion,
    candidate_features,
    fit_learned_fusion,
    fusion_groups,
    hits_for,
)
from ecrec_stream.labels.examples import RelevanceLabeler
from ecrec_stream.training import ReplayBuffer
from ecrec_stream.training.evaluate import judgments_from_examples, ndcg_at_k
from ecrec_stream.training.fusion import (
    FusionLearner,
    FusionOutcome,
    fusion_examples,
    logged_rerank,
    query_fold,
)
from ecrec_stream.training.gate import paired_difference

DEPTH = 100  # results taken from each list before fusing, as the replica's hybrid_depth
UNITS = re.compile(
    r"^\d*(in|inch|inches|oz|ounce|gb|tb|mb|mm|cm|ft|feet|lb|lbs|w|watt|v|volt|mah|hz|qt|"
    r"gal|gallon|ml|l|pack|pk|ct|count|x)$"
)


def subsets(judg: cf.Judgments, queries: list[str]) -> dict[str, list[str]]:
    """The test queries overall and in the subsets where lexical matching tends to matter."""
    starts = Counter(t.lower().split()[0] for t in judg.titles if t.split())
    brand = {w for w, n in starts.items() if n >= 5 and w.isalpha() and len(w) > 2}
    return {
        "all": queries,
        "with a digit": [q for q in queries if any(c.isdigit() for c in q)],
        "with a unit or size": [
            q for q in queries if any(UNITS.match(w) for w in q.lower().split())
        ],
        "starting with a brand": [q for q in queries if q.lower().split()[0] in brand],
    }


def traffic_examples(
    judg: cf.Judgments, lists: Lists, queries: list[str], n_sessions: int, seed: int = 3
) -> list[tuple[int, Any]]:
    """(session number, example) of ``n_sessions`` sessions over ``queries``, shown the RRF top
    10, labelled by the worker's relevance labeler in micro-batches of 50 sessions."""
    rankings = {}
    for q in queries:
        dense, lexical = lists[q]
        rankings[q] = [int(h.item_id[1:]) for h in fuse(dense[:DEPTH], lexical[:DEPTH], K)]
    sim = cf.simulate(judg, rankings, n_sessions, seed=seed)
    labeler = RelevanceLabeler(None, LabelSettings(augment_variants=0))
    by_session: dict[str, list[Any]] = defaultdict(list)
    for c in sim.candidates:  # in session order
        by_session[c.session_id].append(c)
    sessions = list(by_session.values())
    out: list[tuple[int, Any]] = []
    for start in range(0, len(sessions), 50):
        chunk = sessions[start : start + 50]
        seen = start + len(chunk)  # sessions seen once this micro-batch is labelled
        out += [(seen, e) for e in labeler.label_many([c for s in chunk for c in s])]
    return out


def fit_on(
    buffer: ReplayBuffer,
    lists: Lists,
    title_of: Callable[[str], str],
    serving: LearnedFusion | None,
) -> FusionOutcome:
    """What the trainer does with ``buffer``: split, fit, gate against ``serving``."""
    cfg = TrainingSettings()
    learner = FusionLearner(cfg, IndexSettings(hybrid_depth=DEPTH))
    split = buffer.split(cfg.holdout_recent, cfg.holdout_older)
    return learner.fit_many(split, lambda qs: {q: lists[q] for q in qs}, title_of, serving)


def per_query_ndcg(
    lists: Lists,
    tests: dict[str, dict[str, float]],
    method: str,
    fusion: LearnedFusion | None,
    title_of: Callable[[str], str],
) -> dict[str, float]:
    out = {}
    for q, gains in tests.items():
        dense, lexical = lists[q]
        if method == "dense":
            ranked = [h.item_id for h in dense[:K]]
        elif method == "lexical":
            ranked = [h.item_id for h in lexical[:K]]
        elif method == "learned" and fusion is not None:

            def scorer(hits: list[FusedHit], q: str = q) -> np.ndarray:
                return fusion.score(
                    candidate_features(q, hits, [title_of(h.item_id) for h in hits])
                )

            ranked = [
                h.item_id
                for h in fuse(dense[:DEPTH], lexical[:DEPTH], K, method="learned", scorer=scorer)
            ]
        elif method == "weighted":
            ranked = [
                h.item_id
                for h in fuse(
                    dense[:DEPTH], lexical[:DEPTH], K, method="weighted", dense_weight=0.8
                )
            ]
        else:
            ranked = [h.item_id for h in fuse(dense[:DEPTH], lexical[:DEPTH], K, method="rrf")]
        out[q] = ndcg_at_k(ranked, gains, K)
    return out


def gate_estimates(
    examples: list[TrainingExample],
    lists: Lists,
    title_of: Callable[[str], str],
    truth: dict[str, dict[str, float]],
    folds: int = 5,
) -> tuple[list[list[Any]], dict[str, Any]]:
    """How far estimates from logged clicks are from the truth, on the traffic's own queries:
    each query ranked by a fusion fitted on the other folds (the gate's cross-fitting) and by
    RRF (the logging policy), candidate minus RRF by four estimates: nDCG@10 against the human
    judgments (the truth), the gate's logged re-rank, and two counterfactual (IPS) estimates,
    each click weighted by the inverse of its position's examination probability (the label
    stage's weight / confidence) and discounted at the rank the ranking gives it, once over the
    whole ranking and once over the items that were shown for the query."""
    learner = FusionLearner(TrainingSettings(), IndexSettings(hybrid_depth=DEPTH))
    taught = fusion_examples(examples)
    queries = sorted({e.text for e in taught})
    clicks: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    shown: dict[str, set[str]] = defaultdict(set)
    sessions: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        if e.task != "relevance" or e.augmented_from:
            continue
        shown[e.text].add(e.item_id)
        sessions[e.text].update(e.source_event_ids[:1])
        if e.label == 1 and e.votes.get("clicks") == 1 and e.confidence > 0:
            clicks[e.text].append((e.item_id, e.weight / e.confidence, max(e.grade or 1, 1)))

    def ips(rank: Callable[[str], list[str]], q: str, only_shown: bool) -> float:
        order = [i for i in rank(q) if i in shown[q]] if only_shown else rank(q)
        at = {i: r for r, i in enumerate(order[:K])}
        gained = sum(w * (2**g - 1) / np.log2(at[i] + 2) for i, w, g in clicks[q] if i in at)
        return float(gained) / max(1, len(sessions[q]))

    def features_of(query: str, items: list[str]) -> np.ndarray:
        dense, lexical = lists[query]
        hits = hits_for(dense[:DEPTH], lexical[:DEPTH], items)
        return candidate_features(query, hits, [title_of(i) for i in items])

    rrf = learner.ranking(None, lists, title_of)
    names = ("human judgments (truth)", "logged re-rank (the gate)", "IPS, whole ranking",
             "IPS, shown items only")  # fmt: skip
    per: dict[str, dict[str, dict[str, float]]] = {n: {"rrf": {}, "fit": {}} for n in names}
    for fold in range(folds):
        inside = [q for q in queries if query_fold(q, folds) == fold]
        rows = [(e.text, e.item_id, e.label, e.weight) for e in taught
                if query_fold(e.text, folds) != fold]  # fmt: skip
        fitted = fit_learned_fusion(fusion_groups(rows, features_of))
        if fitted is None:
            continue
        rank = learner.ranking(fitted, lists, title_of)
        logged = judgments_from_examples([e for e in taught if e.text in set(inside)])
        for who, ranking in (("rrf", rrf), ("fit", rank)):
            for q in inside:
                if q in truth:
                    per[names[0]][who][q] = ndcg_at_k(ranking(q)[:K], truth[q], K)
                per[names[2]][who][q] = ips(ranking, q, False)
                per[names[3]][who][q] = ips(ranking, q, True)
            per[names[1]][who].update(logged_rerank(logged, ranking, K).per_query)
    out_rows, data = [], {}
    for name in names:
        diff = paired_difference(per[name]["rrf"], per[name]["fit"])
        base = float(np.mean(list(per[name]["rrf"].values())))
        shown = f"{diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]"
        out_rows.append([name, diff.queries, base, shown, f"{diff.mean / base:+.1%}"])
        data[name] = {"queries": diff.queries, "rrf": base, "difference": diff.mean,
                      "ci95": [diff.low, diff.high]}  # fmt: skip
    return out_rows, data


def compare_negatives(
    examples: list[TrainingExample],
    lists: Lists,
    tests: dict[str, dict[str, float]],
    title_of: Callable[[str], str],
) -> None:
    """One fit on all the traffic's examples with each choice of "not relevant" evidence,
    ungated, measured on the test queries against the human judgments (why
    :func:`~ecrec_stream.index.ranker.trains_fusion` keeps only negatives from many sessions)."""

    def features_of(query: str, items: list[str]) -> np.ndarray:
        dense, lexical = lists[query]
        hits = hits_for(dense[:DEPTH], lexical[:DEPTH], items)
        return candidate_features(query, hits, [title_of(i) for i in items])

    relevance = [e for e in examples if e.task == "relevance" and not e.augmented_from]
    choices = {
        "never clicked across sessions (the default)": fusion_examples(relevance),
        "+ skips above a click": [e for e in relevance if e.label == 1 or e.label == 0],
    }
    rows, data = [], {}
    rrf = per_query_ndcg(lists, tests, "rrf", None, title_of)
    for name, chosen in choices.items():
        groups = fusion_groups(
            [(e.text, e.item_id, e.label, e.weight) for e in chosen], features_of
        )
        fitted = fit_learned_fusion(groups)
        scores = per_query_ndcg(lists, tests, "learned", fitted, title_of)
        queries = sorted(tests)
        low, high = paired_ci([scores[q] for q in queries], [rrf[q] for q in queries])
        mean = float(np.mean([scores[q] for q in queries]))
        pairs = fitted.trained_on["pairs"] if fitted is not None else 0
        base = float(np.mean(list(rrf.values())))
        rows.append([name, pairs, mean, f"{mean - base:+.3f} [{low:+.3f}, {high:+.3f}]"])
        data[name] = {"pairs": pairs, "ndcg@10": mean, "minus_rrf_ci95": [low, high]}
    report(
        "learned_fusion_negatives",
        f"Which 'not relevant' examples teach the fusion: nDCG@{K} on {len(tests)} test queries",
        ["negatives", "pairs", f"nDCG@{K}", "minus RRF [95% CI]"],
        rows,
        {"negatives": data},
    )


def search_latency(
    live: LiveItemIndex, queries: list[str], fusion: LearnedFusion | None, rounds: int = 3
) -> dict[str, float]:
    """p50 / p99 ms of one hybrid search through the replica's index with ``fusion`` served
    (``None``: RRF); the query vectors are cached, so this is retrieval plus fusion."""
    live.set_fusion(fusion)
    times = []
    for _ in range(rounds):
        for q in queries:
            started = time.perf_counter()
            live.search(q, K, mode="hybrid")
            times.append((time.perf_counter() - started) * 1000)
    live.set_fusion(None)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    if len(a) < 2:
        return float("nan"), float("nan")
    result = bootstrap(
        (np.asarray(a), np.asarray(b)),
        lambda x, y: np.mean(x - y),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        random_state=0,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def measure(
    name: str,
    lists: Lists,
    tests: dict[str, dict[str, float]],
    groups: dict[str, list[str]],
    fusion: LearnedFusion | None,
    title_of: Callable[[str], str],
    last_fit: LearnedFusion | None = None,
) -> tuple[list[list[Any]], dict[str, Any]]:
    """``fusion`` is the one served (the gate's choice; ``None``: RRF), ``last_fit`` the last
    fit whatever the gate said (its column only)."""
    methods = ("dense", "lexical", "rrf", "weighted", "learned")
    scores = {m: per_query_ndcg(lists, tests, m, fusion, title_of) for m in methods}
    scores["last fit"] = per_query_ndcg(lists, tests, "learned", last_fit or fusion, title_of)
    methods += ("last fit",)
    rows, data = [], {}
    for subset, queries in groups.items():
        qs = [q for q in queries if q in tests]
        means = {
            m: float(np.mean([scores[m][q] for q in qs])) if qs else float("nan") for m in methods
        }
        better = "dense" if means["dense"] >= means["lexical"] else "lexical"
        learned, single = [scores["learned"][q] for q in qs], [scores[better][q] for q in qs]
        low, high = paired_ci(learned, single)
        rows.append(
            [
                name,
                subset,
                len(qs),
                *(means[m] for m in methods[:-1]),
                f"{means['learned'] - means[better]:+.3f} [{low:+.3f}, {high:+.3f}] vs {better}",
                means["last fit"],
            ]
        )
        data[subset] = {"queries": len(qs), **means, "better_single": better, "ci95": [low, high]}
    return rows, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument(
        "--only-negatives",
        action="store_true",
        help="only the comparison of which 'not relevant' examples teach a fusion",
    )
    args = parser.parse_args()
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    titles = judg.titles

    def title_of(item: str) -> str:
        return titles[int(item[1:])]

    encoder = cached_encoder("retrieval", SentenceTransformerEncoder(), titles + judg.queries)
    live = LiveItemIndex(encoder, IndexSettings(search_mode="hybrid"))
    apply_in_batches(live, items_of(titles))
    lists = result_lists(live, judg.queries)
    train_q = [q for q in judg.queries if cf.query_half(q) == 0]
    tests = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 1])
    groups = subsets(judg, list(tests))
    console.print({name: len(qs) for name, qs in groups.items()})
    examples = traffic_examples(judg, lists, train_q, args.sessions)
    console.print(f"{len(examples):,} examples from {args.sessions:,} sessions")
    if args.only_negatives:
        compare_negatives([e for _, e in examples], lists, tests, title_of)
        return

    def mean_ndcg(fusion: LearnedFusion | None, qs: list[str]) -> float:
        sub = {q: tests[q] for q in qs}
        method = "learned" if fusion is not None else "rrf"
        return float(np.mean(list(per_query_ndcg(lists, sub, method, fusion, title_of).values())))

    curve_rows, curve = [], {}
    buffer = ReplayBuffer(TrainingSettings().recent_size, TrainingSettings().reservoir_size)
    serving: LearnedFusion | None = None
    fed = 0
    steps = [n for n in (250, 500, 1000, 2000, 3000, args.sessions) if n <= args.sessions]
    for n in sorted(set(steps)):
        batch = [e for s, e in examples if s <= n][fed:]
        buffer.add(batch)
        fed += len(batch)
        outcome = fit_on(buffer, lists, title_of, serving)
        if outcome.accepted:
            serving = outcome.candidate
        crossed = outcome.decision.differences.get("cross_fitted") if outcome.decision else None
        verdict = ("published" if outcome.accepted else "rejected") + (
            f" {crossed}" if crossed is not None else f": {outcome.reasons[0]}"
        )
        fit = mean_ndcg(outcome.candidate, groups["all"]) if outcome.candidate else float("nan")
        point = {subset: mean_ndcg(serving, qs) for subset, qs in groups.items()}
        curve[n] = {
            "examples": fed,
            "pairs": outcome.counts.get("pairs", 0),
            "fit_ndcg_all": fit,
            "accepted": outcome.accepted,
            "reasons": outcome.reasons,
            "served": None if serving is None else serving.version,
            **point,
        }
        curve_rows.append(
            [n, fed, outcome.counts.get("pairs", 0), fit, verdict,
             "RRF" if serving is None else serving.version, *point.values()]
        )  # fmt: skip
    rrf = {subset: mean_ndcg(None, qs) for subset, qs in groups.items()}
    curve_rows.insert(0, [0, 0, 0, float("nan"), "-", "RRF", *rrf.values()])
    final, last_fit = serving, outcome.candidate
    rows, data = measure("packaged encoder", lists, tests, groups, final, title_of, last_fit)
    data = {"packaged": data, "fusion": None if final is None else json_of(final)}
    if not args.skip_finetune:
        workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-lf-"))
        tuned, pairs = fine_tuned_encoder(judg, workdir)
        tuned_live = LiveItemIndex(tuned, IndexSettings(search_mode="hybrid"))
        apply_in_batches(tuned_live, items_of(titles))
        tuned_lists = result_lists(tuned_live, judg.queries)
        tuned_outcome = fit_on(buffer, tuned_lists, title_of, None)
        console.print(f"fine-tuned encoder's fusion: {'; '.join(tuned_outcome.reasons)}")
        refit = tuned_outcome.candidate if tuned_outcome.accepted else None
        more, tuned_data = measure(
            f"fine-tuned ({pairs:,} pairs)", tuned_lists, tests, groups, refit, title_of,
            tuned_outcome.candidate,
        )  # fmt: skip
        rows += more
        data["fine_tuned"] = tuned_data
        data["fusion_fine_tuned"] = None if refit is None else json_of(refit)
    if last_fit := outcome.candidate:
        costs = {
            "RRF": search_latency(live, judg.queries, None),
            "learned": search_latency(live, judg.queries, last_fit),
        }
        report(
            "learned_fusion_cost",
            f"Hybrid search latency, {len(judg.queries)} queries x 3 (query vectors cached)",
            ["fusion", "p50 ms", "p99 ms"],
            [[name, c["p50_ms"], c["p99_ms"]] for name, c in costs.items()],
            {"latency": costs},
        )
    train_truth = human_judgments(judg, train_q)
    estimate_rows, estimates = gate_estimates(
        [e for _, e in examples], lists, title_of, train_truth
    )
    report(
        "learned_fusion_estimates",
        f"The traffic's own {len(train_truth)} queries, cross-fitted: a fusion fitted on the "
        f"other folds minus RRF (the logging policy), nDCG@{K} / IPS-DCG@{K}",
        ["estimate", "queries", "RRF", "fit - RRF [95% CI]", "relative"],
        estimate_rows,
        {"estimates": estimates},
    )
    report(
        "learned_fusion_curve",
        f"The trainer's fusion after the first N sessions: nDCG@{K} on the held-out queries of "
        "its fit (all) and of the fusion served after the gate (per subset)",
        [
            "sessions",
            "examples",
            "pairs",
            "fit (ungated)",
            "gate: candidate - serving",
            "served",
            *groups,
        ],
        curve_rows,
        {"curve": curve},
    )
    report(
        "learned_fusion",
        f"nDCG@{K} on held-out queries (human judgments), fusion learned from {args.sessions:,} "
        "sessions of the other queries",
        ["encoder", "queries", "n", "dense", "BM25", "RRF", "weighted 0.8", "served",
         "served - better single [95% CI]", "last fit (ungated)"],
        rows,
        data,
    )  # fmt: skip


def json_of(fusion: LearnedFusion) -> dict[str, Any]:
    import json

    return dict(json.loads(fusion.to_json()))


if __name__ == "__main__":
    main()
