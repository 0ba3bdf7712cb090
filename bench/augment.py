"""Language-model augmentation and robustness, measured (issue 11; first part: robustness).

Robustness: how much the serving index loses when a real query is perturbed one way at a time
(``ecrec_stream.augment.perturb``: a typo, another word order, the head noun's number, unit
spelling, an abbreviation, a synonym). Catalog = every distinct Crowdflower title indexed by a
real ``LiveItemIndex`` with the packaged encoder; queries = every Crowdflower query with a
relevant judgment; gain = median_relevance - 1. For each perturbation, only the queries it
changes count, clean and perturbed on the same queries, per search mode.

    python -m bench.augment
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import crowdflower as cf
from bench.common import report
from bench.retrain import K, human_judgments
from bench.retrieval import MODES, apply_in_batches, items_of, mode_quality
from ecrec_stream.augment.perturb import PERTURBATIONS, perturb
from ecrec_stream.config import IndexSettings
from ecrec_stream.index import LiveItemIndex


def robustness(seed: int = 0) -> tuple[list[list[Any]], dict[str, Any]]:
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    judgments = human_judgments(judg, judg.queries)
    live = LiveItemIndex(SentenceTransformerEncoder(), IndexSettings())
    apply_in_batches(live, items_of(judg.titles))
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"queries": len(judgments), "catalog": len(judg.titles)}
    clean_all = mode_quality(live, judgments)
    rows.append(
        [
            "none (clean)",
            len(judgments),
            "",
            *[f"{clean_all[m][f'ndcg@{K}']:.3f}" for m in MODES],
        ]
    )
    data["clean"] = clean_all
    for kind in PERTURBATIONS:
        changed = {q: p for q in judgments if (p := perturb(q, kind, seed)) != q.lower().strip()}
        if not changed:
            rows.append([kind, 0, "", "-", "-", "-"])
            continue
        tests = {q: judgments[q] for q in changed}
        clean = mode_quality(live, tests)
        perturbed = mode_quality(live, tests, searched=changed)
        example = next(iter(changed.items()))
        rows.append(
            [
                kind,
                len(changed),
                f"{example[0]} -> {example[1]}",
                *[f"{clean[m][f'ndcg@{K}']:.3f} -> {perturbed[m][f'ndcg@{K}']:.3f}" for m in MODES],
            ]
        )
        data[kind] = {
            "queries_changed": len(changed),
            "examples": list(changed.items())[:5],
            "clean": clean,
            "perturbed": perturbed,
        }
    return rows, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, data = robustness(args.seed)
    report(
        "augment_robustness",
        f"Serving index under query perturbations: nDCG@{K} clean -> perturbed on the "
        f"{data['queries']} Crowdflower queries each perturbation changes",
        ["perturbation", "queries changed", "example", *[f"nDCG {m}" for m in MODES]],
        rows,
        data,
    )


if __name__ == "__main__":
    main()
