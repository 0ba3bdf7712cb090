"""The stream worker's int8 encoder (``EMBEDDING__WORKER_QUANTIZATION=int8``) against float32,
same run, real data:

* cost: wall and CPU ms per text in calls of 64 (the review agent's), torch and ONNX Runtime
  on ``--threads`` threads, the default pass threads; the int8 vectors' cosine to float32's;
* sentiment labels of ``--reviews`` real clothing reviews (the default labelers, calls of 64,
  each encoder from a fresh state): agreement, the embedding label functions' votes, and the
  accuracy of each against the reviewers' own "recommended" flag (95% bootstrap intervals),
  beside two plain baselines: the star rating alone and "everything recommended";
* the meaning filter's decisions (the default similarity threshold) on EDA and typo variants
  of real reviews.

    python -m bench.int8 [--reviews 3000] [--threads 1]

Drift under int8: ``python -m bench.drift --quantization int8``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench import crowdflower as cf
from bench.common import clothing_review_events, clothing_review_rows, report
from bench.encode import CALL, timed
from bench.sentiment_live import label_reviews
from ecrec_stream.augment.eda import EdaAugmenter
from ecrec_stream.augment.filter import MeaningFilter
from ecrec_stream.augment.noise import TypoAugmenter
from ecrec_stream.config import EmbeddingSettings, LabelSettings
from ecrec_stream.contracts.events import ReviewEvent
from ecrec_stream.embedding import Encoder, SentenceTransformerEncoder
from ecrec_stream.embedding.int8 import Int8Encoder
from ecrec_stream.labels.examples import build_labelers


def bootstrap(correct: np.ndarray, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the mean of ``correct`` (0/1 per review)."""
    rng = np.random.default_rng(seed)
    means = [correct[rng.integers(0, len(correct), len(correct))].mean() for _ in range(draws)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def sentiment_examples(encoder: Encoder, events: list[ReviewEvent]) -> dict[str, Any]:
    """Each review's sentiment example, keyed by event id (a fresh labeler and stage)."""
    _, sentiment = build_labelers(LabelSettings(), encoder)
    return label_reviews(sentiment, events)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--variants-of", type=int, default=800, help="reviews to vary")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    int8 = Int8Encoder(EmbeddingSettings(), threads=args.threads)
    encoders: dict[str, Encoder] = {
        "float32": SentenceTransformerEncoder(EmbeddingSettings()),
        "int8": int8,
    }
    rows = clothing_review_rows(args.reviews)

    # -- cost and closeness ---------------------------------------------------------------------
    judg = cf.load()
    texts = {
        "reviews": [r["Review Text"] for r in rows[:512]],
        "titles": judg.titles[:2048],
        "queries": judg.queries,
    }
    timings = {n: {k: timed(e, t) for k, t in texts.items()} for n, e in encoders.items()}
    cost_rows, cost_data = [], {}
    for kind, batch in texts.items():
        (ref, wall32, cpu32), (got, wall8, cpu8) = timings["float32"][kind], timings["int8"][kind]
        cosine = np.einsum("ij,ij->i", ref, got)
        cost_rows.append(
            [f"{kind} ({len(batch):,})", wall32 * 1e3, wall8 * 1e3, cpu32 * 1e3, cpu8 * 1e3,
             f"x{cpu32 / cpu8:.2f}", f"{cosine.mean():.4f}", f"{cosine.min():.4f}"]
        )  # fmt: skip
        cost_data[kind] = {
            "texts": len(batch),
            "ms_per_text": {"float32": {"wall": wall32 * 1e3, "cpu": cpu32 * 1e3},
                            "int8": {"wall": wall8 * 1e3, "cpu": cpu8 * 1e3}},
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
        }  # fmt: skip
    pass_threads = int8.pass_threads
    report(
        "int8_cost",
        f"Worker encoder, float32 vs int8: calls of {CALL}, {args.threads} thread(s) per pass, "
        f"{pass_threads} pass threads, same run",
        ["texts", "wall ms/text float32", "wall int8", "CPU ms/text float32", "CPU int8",
         "CPU saved", "cosine mean", "cosine min"],
        cost_rows,
        {"threads": args.threads, "pass_threads": pass_threads, "call": CALL, **cost_data},
    )  # fmt: skip

    # -- sentiment labels -----------------------------------------------------------------------
    events = clothing_review_events(rows)
    truth = {f"r{i}": int(r["Recommended IND"]) for i, r in enumerate(rows)}
    rating = {f"r{i}": int(r["Rating"]) for i, r in enumerate(rows)}
    examples = {name: sentiment_examples(enc, events) for name, enc in encoders.items()}
    both = sorted(examples["float32"].keys() & examples["int8"].keys())
    a, b = examples["float32"], examples["int8"]
    agree = {"label": float(np.mean([a[k].label == b[k].label for k in both]))}
    for function in ("prototype", "seed_classifier"):
        same_votes = [a[k].votes[function] == b[k].votes[function] for k in both]
        agree[function] = float(np.mean(same_votes))
    covered = [k for k in both if rating[k] != 3]
    judged = {  # name: whether its label matched, per review it labels
        "label model, float32": [a[k].label == truth[k] for k in both],
        "label model, int8": [b[k].label == truth[k] for k in both],
        f"rating alone (the {len(covered):,} it covers)": [
            int(rating[k] >= 4) == truth[k] for k in covered
        ],
        "label model, float32, on those": [a[k].label == truth[k] for k in covered],
        "label model, int8, on those": [b[k].label == truth[k] for k in covered],
        "label model, float32, on 3-star reviews": [
            a[k].label == truth[k] for k in both if rating[k] == 3
        ],
        "label model, int8, on 3-star reviews": [
            b[k].label == truth[k] for k in both if rating[k] == 3
        ],
        "everything recommended": [truth[k] == 1 for k in both],
    }
    label_rows: list[list[Any]] = []
    label_data: dict[str, Any] = {"reviews": len(events), "in_both": len(both), "agree": agree}
    for name, hits in judged.items():
        correct = np.asarray(hits, dtype=float)
        low, high = bootstrap(correct)
        label_rows.append([name, len(correct), correct.mean(), f"[{low:.3f}, {high:.3f}]"])
        label_data[name] = {"n": len(correct), "accuracy": correct.mean(), "ci95": [low, high]}
    report(
        "int8_labels",
        f"Sentiment labels of {len(events):,} real reviews against the reviewers' 'recommended' "
        f"({len(both):,} labelled by both): labels agree {agree['label']:.1%}, prototype votes "
        f"{agree['prototype']:.1%}, seed-classifier votes {agree['seed_classifier']:.1%}",
        ["labels", "examples", "accuracy", "95% bootstrap"],
        label_rows,
        label_data,
    )

    # -- the meaning filter ---------------------------------------------------------------------
    sources = {str(i): r["Review Text"] for i, r in enumerate(rows[: args.variants_of])}
    variants = [
        v
        for augmenter in (EdaAugmenter(), TypoAugmenter())
        for v in augmenter.augment_many(list(sources.items()), seed=13)
    ]
    threshold = LabelSettings().min_similarity
    kept = {
        name: {
            (v.source_id, v.text)
            for v, _ in MeaningFilter(enc, min_similarity=threshold).filter_many(variants, sources)
        }
        for name, enc in encoders.items()
    }
    decisions = [
        ((v.source_id, v.text) in kept["float32"]) == ((v.source_id, v.text) in kept["int8"])
        for v in variants
    ]
    same = float(np.mean(decisions))
    report(
        "int8_filter",
        f"Meaning filter (cosine >= {threshold}) on {len(variants):,} EDA and typo variants of "
        f"{len(sources):,} real reviews",
        ["encoder", "kept", "same decision as float32"],
        [["float32", len(kept["float32"]), "-"], ["int8", len(kept["int8"]), f"{same:.1%}"]],
        {"variants": len(variants), "kept": {n: len(k) for n, k in kept.items()},
         "same_decision": same},
    )  # fmt: skip


if __name__ == "__main__":
    main()
