"""The encoder in float32 against bf16 autocast (``ECREC_EMBEDDING__PRECISION``), same run,
same model, on real data: speed, how far the vectors move, and what that changes downstream.

    python -m bench.precision [--reviews 400]

* Speed: the Crowdflower product titles (the catalog), its queries, and real clothing reviews
  (62 words on average), each embedded in batches of 64 by the worker's encoder.
* Vectors: cosine of each text's bf16 vector to its float32 vector.
* Retrieval: nDCG@10 and recall@10 of dense search over the Crowdflower catalog against the
  human judgments, with a paired bootstrap interval of the difference; overlap of the top 10.
* Meaning filter: keep/drop decisions (cosine to the original >= ``min_similarity``) on the
  review variants the label agents make (EDA and typos), float32 against bf16.

bf16 is the default only where it was measured faster (CUDA; CPUs with AMX): on a CPU with
AVX512-BF16 but no AMX it is slower than float32, and elsewhere torch emulates it; this bench
shows the cost of forcing it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench import crowdflower as cf
from bench.common import report
from bench.ingest import _review_texts
from ecrec_stream.augment.eda import EdaAugmenter
from ecrec_stream.augment.noise import TypoAugmenter
from ecrec_stream.config import EmbeddingSettings, LabelSettings
from ecrec_stream.device import cpu_has_amx
from ecrec_stream.embedding import SentenceTransformerEncoder
from ecrec_stream.training.evaluate import ndcg_at_k, recall_at_k

PRECISIONS = ("float32", "bfloat16")
K = 10


def timed_encode(encoder: SentenceTransformerEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """Vectors of ``texts`` and the wall seconds per text (after a warm-up batch)."""
    encoder.encode(texts[:64])
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    return vectors, (time.perf_counter() - start) / len(texts)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rounds: int = 2000) -> tuple[float, float]:
    """95% interval of mean(b - a) over resampled queries."""
    rng = np.random.default_rng(0)
    diff = b - a
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(rounds)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=400)
    args = parser.parse_args()
    judg = cf.load()
    reviews = _review_texts()[: args.reviews]
    sources = [(str(i), r) for i, r in enumerate(reviews)]
    variants = [
        (reviews[int(v.source_id)], v.text)
        for aug in (EdaAugmenter(), TypoAugmenter())
        for v in aug.augment_many(sources, seed=13)
    ]
    texts = {"titles": judg.titles, "queries": judg.queries, "reviews": reviews}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    speed: dict[str, dict[str, float]] = {}
    quality: dict[str, dict[str, Any]] = {}
    keep: dict[str, np.ndarray] = {}
    min_similarity = LabelSettings().min_similarity
    for precision in PRECISIONS:
        encoder = SentenceTransformerEncoder(EmbeddingSettings(precision=precision))
        vectors[precision], speed[precision] = {}, {}
        for name, batch in texts.items():
            vectors[precision][name], speed[precision][name] = timed_encode(encoder, batch)
        ranked = cf.top_k(vectors[precision]["titles"], vectors[precision]["queries"], K)
        per_query = []
        for q, rows in zip(judg.queries, ranked, strict=True):
            gains = {str(t): judg.gain(q, t) for (qq, t) in judg.relevance if qq == q}
            found = [str(t) for t in rows]
            per_query.append((ndcg_at_k(found, gains, K), recall_at_k(found, gains, K)))
        quality[precision] = {"per_query": np.array(per_query), "ranked": ranked}
        originals = encoder.encode([o for o, _ in variants])
        changed = encoder.encode([v for _, v in variants])
        keep[precision] = (originals * changed).sum(axis=1) >= min_similarity
    fp, bf = quality["float32"], quality["bfloat16"]
    cosines = {
        name: (vectors["float32"][name] * vectors["bfloat16"][name]).sum(axis=1) for name in texts
    }
    pairs = zip(fp["ranked"], bf["ranked"], strict=True)
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in pairs])
    ndcg_ci = paired_bootstrap(fp["per_query"][:, 0], bf["per_query"][:, 0])
    rows = [
        [f"ms per text: {name} ({len(batch):,})", speed["float32"][name] * 1e3,
         speed["bfloat16"][name] * 1e3, f"x{speed['float32'][name] / speed['bfloat16'][name]:.2f}"]
        for name, batch in texts.items()
    ] + [
        [f"cosine to float32: {name} (mean / min)", 1.0, f"{c.mean():.5f} / {c.min():.5f}", ""]
        for name, c in cosines.items()
    ] + [
        [f"nDCG@{K}, {len(judg.queries)} judged queries", fp["per_query"][:, 0].mean(),
         bf["per_query"][:, 0].mean(), f"diff 95% CI [{ndcg_ci[0]:+.4f}, {ndcg_ci[1]:+.4f}]"],
        [f"recall@{K}", fp["per_query"][:, 1].mean(), bf["per_query"][:, 1].mean(), ""],
        [f"top-{K} overlap with float32", 1.0, float(overlap), ""],
        [f"meaning filter keeps, {len(variants)} review variants", int(keep["float32"].sum()),
         int(keep["bfloat16"].sum()),
         f"same decision {np.mean(keep['float32'] == keep['bfloat16']):.2%}"],
    ]  # fmt: skip
    report(
        "precision",
        f"The encoder in float32 vs bf16 autocast, same run (AMX here: {cpu_has_amx()})",
        ["measure", "float32", "bfloat16", "note"],
        rows,
        {
            "amx_cpu": cpu_has_amx(),
            "ms_per_text": {p: {n: v * 1e3 for n, v in s.items()} for p, s in speed.items()},
            "cosine": {
                n: {"mean": float(c.mean()), "min": float(c.min())} for n, c in cosines.items()
            },
            "ndcg": {p: float(q["per_query"][:, 0].mean()) for p, q in quality.items()},
            "ndcg_diff_ci95": ndcg_ci,
            "recall": {p: float(q["per_query"][:, 1].mean()) for p, q in quality.items()},
            "top_k_overlap": float(overlap),
            "filter_agreement": float(np.mean(keep["float32"] == keep["bfloat16"])),
            "variants": len(variants),
        },
    )


if __name__ == "__main__":
    main()
