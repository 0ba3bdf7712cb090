"""The worker's encoder with one pass thread against the default (``EMBEDDING__PASS_THREADS``),
same run, same model, on real texts: wall and CPU time per text, and whether the vectors moved.

    python -m bench.encode [--reviews 512] [--threads 1]

Texts come in calls of 64 (a review agent's model call), as the stream worker makes them:
torch limited to ``--threads`` (the worker's default on 2 cores is 1), the encoder's forward
passes run by the calling thread alone (1 thread) or split with helper threads (default:
the CPUs over torch's threads). Real clothing reviews (62 words on average), the
Crowdflower product titles and its search queries.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from bench import crowdflower as cf
from bench.common import report
from bench.ingest import _review_texts
from ecrec_stream.config import EmbeddingSettings
from ecrec_stream.device import pass_threads
from ecrec_stream.embedding import Encoder, SentenceTransformerEncoder

CALL = 64


def cpu_seconds() -> float:
    """CPU of this process, every thread (the helpers' too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, float, float]:
    """Vectors of ``texts`` embedded in calls of ``CALL``; wall and CPU seconds per text."""
    encoder.encode(texts[:CALL])  # warm-up
    wall, cpu = time.perf_counter(), cpu_seconds()
    vectors = np.vstack([encoder.encode(texts[i : i + CALL]) for i in range(0, len(texts), CALL)])
    return vectors, (time.perf_counter() - wall) / len(texts), (cpu_seconds() - cpu) / len(texts)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the worker's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    judg = cf.load()
    texts = {
        "reviews": _review_texts()[: args.reviews],
        "titles": judg.titles[:2048],
        "queries": judg.queries,
    }
    default = pass_threads(None, "cpu")
    runs = {"1 thread": 1, f"default ({default} threads)": default}
    results: dict[str, dict[str, tuple[np.ndarray, float, float]]] = {}
    for label, threads in runs.items():
        encoder = SentenceTransformerEncoder(EmbeddingSettings(pass_threads=threads))
        results[label] = {name: timed(encoder, batch) for name, batch in texts.items()}
    one, many = results.values()
    rows = []
    for name, batch in texts.items():
        moved = float(np.abs(one[name][0] - many[name][0]).max())
        rows.append(
            [f"{name} ({len(batch):,})", one[name][1] * 1e3, many[name][1] * 1e3,
             f"x{one[name][1] / many[name][1]:.2f}", one[name][2] * 1e3, many[name][2] * 1e3,
             f"{moved:.1e}"]
        )  # fmt: skip
    report(
        "encode",
        f"Encoder pass threads, calls of {CALL} texts, {args.threads} torch thread(s), same run",
        ["texts", "wall ms/text, 1 thread", f"wall, {default} threads", "speed-up",
         "CPU ms/text, 1 thread", f"CPU, {default} threads", "max vector change"],
        rows,
        {
            "torch_threads": args.threads,
            "default_threads": default,
            "call": CALL,
            "ms_per_text": {
                label: {n: {"wall": r[1] * 1e3, "cpu": r[2] * 1e3} for n, r in res.items()}
                for label, res in results.items()
            },
            "max_vector_change": {
                n: float(np.abs(one[n][0] - many[n][0]).max()) for n in texts
            },
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
