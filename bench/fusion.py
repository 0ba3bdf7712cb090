"""Hybrid fusion parameters chosen on held-out dev queries, then measured on the test queries.

The retrieval table (``bench.retrieval``) fuses with the defaults (reciprocal rank fusion,
k = 60, 50 results from each list). Here the fusion is chosen the way a user would tune it:
on dev queries = a quarter of the training half's queries (``sha1("dev:" + query) % 4 == 0``),
which the fine-tuned encoder never sees (its pairs come from the rest of that half). The grid:
RRF with k in {5, 10, 20, 30, 60, 100} and weighted score fusion with the dense weight in
{0.3 ... 0.9}, each fusing the best {10, 20, 50, 100, 200} of each list. The choice is then
measured on the test half (``sha1(query) % 2 == 1``, as in ``bench.retrieval``) beside dense,
lexical, the previous default (RRF, k = 60, depth 50) and one setting for both encoders (the
best mean dev nDCG over the two), with paired-bootstrap 95% intervals of hybrid - dense and
hybrid - lexical over the test queries; once with the packaged encoder, once fine-tuned.

    python -m bench.fusion [--skip-finetune]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from bench import crowdflower as cf
from bench.common import report
from bench.retrain import K, human_judgments
from bench.retrieval import apply_in_batches, fine_tuned_encoder, items_of
from ecrec_stream.config import IndexSettings
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.faiss_index import SearchHit
from ecrec_stream.index.fusion import fuse
from ecrec_stream.training.evaluate import ndcg_at_k

LIST_DEPTH = 200
DEPTHS = (10, 20, 50, 100, 200)
RRF_KS = (5.0, 10.0, 20.0, 30.0, 60.0, 100.0)
DENSE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Lists = dict[str, tuple[list[SearchHit], list[SearchHit]]]


def is_dev(query: str) -> bool:
    """A quarter of the training half's queries, by a hash of their own."""
    return int(hashlib.sha1(f"dev:{query}".encode()).hexdigest(), 16) % 4 == 0


def result_lists(live: LiveItemIndex, queries: list[str]) -> Lists:
    """Each query's dense and lexical top ``LIST_DEPTH`` (item id, own score), searched once."""
    out: Lists = {}
    for q in queries:
        dense = [SearchHit(r.item.item_id, r.score) for r in live.search(q, LIST_DEPTH, "dense")]
        lexical = [
            SearchHit(r.item.item_id, r.score) for r in live.search(q, LIST_DEPTH, "lexical")
        ]
        out[q] = (dense, lexical)
    return out


def per_query_ndcg(
    lists: Lists, judgments: dict[str, dict[str, float]], config: dict[str, Any] | str
) -> np.ndarray:
    """nDCG@K per query for ``config`` ("dense", "lexical" or fusion parameters)."""
    scores = []
    for q, gains in judgments.items():
        dense, lexical = lists[q]
        if config == "dense":
            ranked = [h.item_id for h in dense[:K]]
        elif config == "lexical":
            ranked = [h.item_id for h in lexical[:K]]
        else:
            assert isinstance(config, dict)
            depth = config["depth"]
            fused = fuse(
                dense[:depth],
                lexical[:depth],
                K,
                method=config["method"],
                rrf_k=config.get("rrf_k", 60.0),
                dense_weight=config.get("dense_weight", 0.5),
            )
            ranked = [h.item_id for h in fused]
        scores.append(ndcg_at_k(ranked, gains, K))
    return np.asarray(scores)


def grid() -> list[dict[str, Any]]:
    rrf = [{"method": "rrf", "rrf_k": k, "depth": d} for k, d in itertools.product(RRF_KS, DEPTHS)]
    weighted = [
        {"method": "weighted", "dense_weight": w, "depth": d}
        for w, d in itertools.product(DENSE_WEIGHTS, DEPTHS)
    ]
    return rrf + weighted


def describe(config: dict[str, Any]) -> str:
    if config["method"] == "rrf":
        return f"RRF k={config['rrf_k']:g}, depth {config['depth']}"
    return f"weighted w_dense={config['dense_weight']:g}, depth {config['depth']}"


def mean_difference_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% paired-bootstrap interval of mean(a - b) over the same queries."""
    result = bootstrap((a - b,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _difference(a: np.ndarray, b: np.ndarray, ci: tuple[float, float]) -> str:
    return f"{a.mean() - b.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def evaluate(
    name: str,
    lists: Lists,
    dev: dict[str, dict[str, float]],
    test: dict[str, dict[str, float]],
    shared: dict[str, Any],
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Test nDCG of dense, lexical, the previous default fusion, this encoder's best fusion
    on dev, and ``shared`` (one setting chosen on dev for every encoder)."""
    previous = {"method": "rrf", "rrf_k": 60.0, "depth": 50}
    dev_scores = [(float(per_query_ndcg(lists, dev, c).mean()), c) for c in grid()]
    best_dev, chosen = max(dev_scores, key=lambda sc: sc[0])
    test_dense = per_query_ndcg(lists, test, "dense")
    test_lexical = per_query_ndcg(lists, test, "lexical")
    rows = []
    data: dict[str, Any] = {
        "chosen": chosen,
        "dev_ndcg": {
            "chosen": best_dev,
            "shared": float(per_query_ndcg(lists, dev, shared).mean()),
            "previous_default": float(per_query_ndcg(lists, dev, previous).mean()),
            "dense": float(per_query_ndcg(lists, dev, "dense").mean()),
            "lexical": float(per_query_ndcg(lists, dev, "lexical").mean()),
        },
        "grid_dev_ndcg": [{"config": c, "ndcg": s} for s, c in dev_scores],
        "test": {},
    }
    for label, scores in (
        ("dense", test_dense),
        ("lexical", test_lexical),
        (f"hybrid, previous default ({describe(previous)})", per_query_ndcg(lists, test, previous)),
        (
            f"hybrid, this encoder's best on dev ({describe(chosen)})",
            per_query_ndcg(lists, test, chosen),
        ),
        (
            f"hybrid, one setting for both, chosen on dev ({describe(shared)})",
            per_query_ndcg(lists, test, shared),
        ),
    ):
        if label.startswith("hybrid"):
            vs_dense = mean_difference_ci(scores, test_dense)
            vs_lexical = mean_difference_ci(scores, test_lexical)
            d_dense = _difference(scores, test_dense, vs_dense)
            d_lex = _difference(scores, test_lexical, vs_lexical)
        else:
            vs_dense = vs_lexical = (float("nan"), float("nan"))
            d_dense = d_lex = "-"
        rows.append([name, label, float(scores.mean()), d_dense, d_lex])
        data["test"][label] = {
            "ndcg": float(scores.mean()),
            "minus_dense_ci95": list(vs_dense),
            "minus_lexical_ci95": list(vs_lexical),
        }
    return rows, data


def shared_setting(encoders: list[Lists], dev: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The grid setting with the best mean dev nDCG over the encoders (ties: grid order)."""
    return max(
        grid(),
        key=lambda c: np.mean([per_query_ndcg(lists, dev, c).mean() for lists in encoders]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    dev = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 0 and is_dev(q)])
    test = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 1])
    live = LiveItemIndex(SentenceTransformerEncoder(), IndexSettings())
    apply_in_batches(live, items_of(judg.titles))
    encoders = [("all-MiniLM-L6-v2", result_lists(live, [*dev, *test]))]
    data: dict[str, Any] = {"dev_queries": len(dev), "test_queries": len(test)}
    if not args.skip_finetune:
        with tempfile.TemporaryDirectory() as tmp:
            tuned, n_pairs = fine_tuned_encoder(
                judg,
                Path(tmp),
                keep=lambda q: not is_dev(q),
                name="all-MiniLM-L6-v2 fine-tuned (half 0 minus dev)",
            )
            live.swap_encoder(tuned)
            name = f"fine-tuned ({n_pairs} pairs, dev left out)"
            encoders.append((name, result_lists(live, [*dev, *test])))
            data["fine_tune_pairs"] = n_pairs
    shared = shared_setting([lists for _, lists in encoders], dev)
    data["shared"] = shared
    rows: list[list[Any]] = []
    for name, lists in encoders:
        encoder_rows, data[name] = evaluate(name, lists, dev, test, shared)
        rows += encoder_rows
    report(
        "retrieval_fusion",
        f"Fusion chosen on {len(dev)} dev queries, nDCG@{K} on {len(test)} test queries "
        f"(95% paired-bootstrap intervals)",
        ["encoder", "ranking", f"nDCG@{K}", "- dense", "- lexical"],
        rows,
        data,
    )


if __name__ == "__main__":
    main()
