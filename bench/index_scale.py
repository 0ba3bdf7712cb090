"""The item index at catalog scale: exact (flat) against IVF, on vectors of real titles.

``python -m bench.index_scale [--sizes 100000,1000000] [--queries 200]``

Vectors: the packaged MiniLM's embeddings of the real Crowdflower and Instacart titles
(~19,000, cached in bench/.cache), grown to each size by perturbed copies (each a real title's
vector plus Gaussian noise, renormalised: near-duplicates, as size and pack variants are in a
real catalog). Queries: the real Crowdflower queries, then perturbed titles up to
``--queries``. Through the replica's own :class:`FaissItemIndex`: the ``flat`` backend (exact)
and ``ivf`` (trained once it holds 39 x nlist vectors, then added to) with ``nlist`` about
sqrt(size), searched at several ``nprobe``. Per row: recall@10 against the exact top 10, search
p50 / p99 ms for one query at a time (the replica's path), time to load the catalog in
batches of 10,000, upserts and deletes after loading (µs per item, batches of 256), and the
serialised index's bytes per item against the 1,536 bytes of a raw 384-d float32 vector.

``auto`` rows: the default backend through the replica's own :class:`LiveItemIndex`, loaded in
micro-batches of 2,000 items while a thread does what the replica's model thread does (build
the IVF the index asks for, in the background, and swap it in): the IVF builds it made, how
long each took, apply latency per micro-batch (an applied batch is searchable) and search
latency while a build ran against while none did, then recall and latency at the end.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import numpy as np

from bench import crowdflower as cf
from bench.common import cached_vectors, console, instacart_titles, percentile, report
from ecrec_stream.config import IndexSettings
from ecrec_stream.contracts.events import ItemEvent, utc_now
from ecrec_stream.index import FaissItemIndex, LiveItemIndex

NOISE = 0.35  # norm of the perturbation relative to the unit vector it is added to
K = 10


def real_vectors() -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the real titles and of the real queries."""
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    titles = sorted(set(judg.titles) | set(instacart_titles()))
    encoder = SentenceTransformerEncoder()
    vectors = cached_vectors("index-scale", encoder.version, titles + judg.queries, encoder.encode)
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors[: len(titles)], vectors[len(titles) :]


def grown(base: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` unit vectors: ``base`` itself, then perturbed copies of it."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=size - len(base))
    noise = rng.standard_normal((len(picks), base.shape[1])).astype(np.float32)
    noise *= NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    copies = base[picks] + noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([base, copies])


def measure(
    index: FaissItemIndex, vectors: np.ndarray, queries: np.ndarray, exact: list[set[str]] | None
) -> dict[str, Any]:
    times, recalls, found = [], [], []
    for n, query in enumerate(queries):
        started = time.perf_counter()
        hits = index.search(query[None, :], K)[0]
        times.append((time.perf_counter() - started) * 1000)
        ids = {h.item_id for h in hits}
        found.append(ids)
        if exact is not None:
            recalls.append(len(ids & exact[n]) / K)
    return {
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "recall@10": float(np.mean(recalls)) if recalls else 1.0,
        "found": found,
    }


def load(index: FaissItemIndex, vectors: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(vectors), 10_000):
        chunk = vectors[start : start + 10_000]
        index.upsert_many([f"it-{start + i}" for i in range(len(chunk))], chunk)
    return time.perf_counter() - started


def churn(index: FaissItemIndex, vectors: np.ndarray, rounds: int = 20) -> tuple[float, float]:
    """µs per item of upserting (replacing) and deleting batches of 256 existing items."""
    rng = np.random.default_rng(1)
    up, down = [], []
    for _ in range(rounds):
        picks = rng.choice(len(vectors), 256, replace=False)
        ids = [f"it-{i}" for i in picks]
        started = time.perf_counter()
        index.upsert_many(ids, vectors[picks])
        up.append((time.perf_counter() - started) / 256 * 1e6)
        started = time.perf_counter()
        index.delete_many(ids[:128])
        down.append((time.perf_counter() - started) / 128 * 1e6)
        index.upsert_many(ids[:128], vectors[picks[:128]])  # back, for the next round
    return float(np.median(up)), float(np.median(down))


class LookupEncoder:
    """Item text ``v<n>`` -> ``vectors[n]``: the live index over precomputed vectors."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.table = vectors
        self.dim = vectors.shape[1]
        self.name = self.version = "lookup"

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.table[[int(t[1:]) for t in texts]]


def auto_run(
    vectors: np.ndarray, queries: np.ndarray, exact: list[set[str]], batch: int = 2_000
) -> dict[str, Any]:
    """The default ``auto`` backend, loaded through LiveItemIndex with background IVF builds."""
    live = LiveItemIndex(LookupEncoder(vectors), IndexSettings(lexical=False))
    stop, builds = threading.Event(), []

    def model_thread() -> None:  # the replica's model thread between two publications
        while not stop.is_set():
            if not live.retrain_due():
                time.sleep(0.02)
                continue
            items, started = len(live), time.perf_counter()
            if live.retrain_index():
                builds.append(
                    {"items": items, "lists": live.index.nlist,
                     "seconds": time.perf_counter() - started}
                )  # fmt: skip

    thread = threading.Thread(target=model_thread, daemon=True)
    thread.start()
    apply_ms: dict[bool, list[float]] = {False: [], True: []}
    search_ms: dict[bool, list[float]] = {False: [], True: []}
    rng = np.random.default_rng(4)
    now = utc_now()
    for start in range(0, len(vectors), batch):
        events = [
            ItemEvent(event_id=f"e{i}", ts=now, op="upsert", item_id=f"it-{i}", title=f"v{i}")
            for i in range(start, min(len(vectors), start + batch))
        ]
        rebuilding = live.rebuilding
        started = time.perf_counter()
        live.apply_many(events)
        apply_ms[rebuilding].append((time.perf_counter() - started) * 1000)
        query = queries[rng.integers(len(queries))][None, :]
        rebuilding = live.rebuilding
        started = time.perf_counter()
        live.index.search(query, K)
        search_ms[rebuilding].append((time.perf_counter() - started) * 1000)
    while live.rebuilding or live.retrain_due():  # the last build, if one is running
        time.sleep(0.05)
    stop.set()
    thread.join()
    got = measure(live.index, vectors, queries, exact)
    return {
        "is_ivf": live.index.is_trained_ivf,
        "lists": live.index.nlist if live.index.is_trained_ivf else None,
        "nprobe": live.index.nprobe,
        "builds": builds,
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
        "recall@10": got["recall@10"],
        "apply_ms_p99": {"no build": percentile(apply_ms[False], 99),
                         "during a build": percentile(apply_ms[True], 99)},
        "search_ms_p99": {"no build": percentile(search_ms[False], 99),
                          "during a build": percentile(search_ms[True], 99)},
        "batches_during_builds": len(apply_ms[True]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", default="8,16,32,64")
    args = parser.parse_args()
    titles, real_queries = real_vectors()
    console.print(f"{len(titles):,} real title vectors, {len(real_queries):,} real queries")
    extra = grown(titles, len(titles) + max(0, args.queries - len(real_queries)), seed=2)
    queries = np.concatenate([real_queries, extra[len(titles) :]])[: args.queries]
    rows, out, auto_rows = [], {}, []
    for size in [int(s) for s in args.sizes.split(",")]:
        vectors = grown(titles, size, seed=0)
        flat = FaissItemIndex(vectors.shape[1])
        load_s = load(flat, vectors)
        exact = measure(flat, vectors, queries, None)
        up, down = churn(flat, vectors)
        blob, _ = flat.to_state()
        flat_row = {
            "backend": "flat",
            "nlist": None,
            "nprobe": None,
            "load_s": load_s,
            "p50_ms": exact["p50_ms"],
            "p99_ms": exact["p99_ms"],
            "recall@10": 1.0,
            "upsert_us": up,
            "delete_us": down,
            "bytes_per_item": len(blob) / size,
        }
        out[f"{size}/flat"] = flat_row
        rows.append([size, "flat (exact)", "-", load_s, exact["p50_ms"], exact["p99_ms"], 1.0,
                     up, down, len(blob) / size])  # fmt: skip
        del flat
        nlist = 1 << max(4, round(np.log2(np.sqrt(size))))
        ivf = FaissItemIndex(vectors.shape[1], backend="ivf", nlist=nlist)
        load_s = load(ivf, vectors)  # trains on the first 39 x nlist vectors, then adds
        blob, _ = ivf.to_state()
        up, down = churn(ivf, vectors)
        for nprobe in [int(p) for p in args.nprobe.split(",")]:
            ivf.set_nprobe(nprobe)
            got = measure(ivf, vectors, queries, exact["found"])
            out[f"{size}/ivf/{nprobe}"] = {
                "backend": "ivf",
                "nlist": nlist,
                "nprobe": nprobe,
                "load_s": load_s,
                "p50_ms": got["p50_ms"],
                "p99_ms": got["p99_ms"],
                "recall@10": got["recall@10"],
                "upsert_us": up,
                "delete_us": down,
                "bytes_per_item": len(blob) / size,
            }
            rows.append([size, f"ivf nlist {nlist}", nprobe, load_s, got["p50_ms"],
                         got["p99_ms"], got["recall@10"], up, down, len(blob) / size])  # fmt: skip
            console.print(f"{size:,} ivf nprobe {nprobe}: recall@10 {got['recall@10']:.3f}")
        del ivf
        auto = auto_run(vectors, queries, exact["found"])
        out[f"{size}/auto"] = auto
        lists = f"ivf {auto['lists']} lists" if auto["is_ivf"] else "flat"
        probes = auto["nprobe"] if auto["is_ivf"] else "-"
        rows.append([size, f"auto (default) -> {lists}", probes, "", auto["p50_ms"],
                     auto["p99_ms"], auto["recall@10"], "", "", ""])  # fmt: skip
        console.print(f"{size:,} auto: {auto}")
        auto_rows.append([size, len(auto["builds"]),
                          ", ".join(f"{b['items']:,}->{b['lists']} ({b['seconds']:.1f} s)"
                                    for b in auto["builds"]),
                          auto["batches_during_builds"],
                          auto["apply_ms_p99"]["no build"], auto["apply_ms_p99"]["during a build"],
                          auto["search_ms_p99"]["no build"],
                          auto["search_ms_p99"]["during a build"]])  # fmt: skip
    report(
        "index_scale",
        f"FaissItemIndex on real-title vectors grown by perturbed copies, {len(queries)} queries",
        ["items", "backend", "nprobe", "load s", "p50 ms", "p99 ms", "recall@10 vs exact",
         "upsert µs/item", "delete µs/item", "bytes/item"],
        rows,
        {"rows": out, "noise": NOISE, "queries": len(queries)},
    )  # fmt: skip

    report(
        "index_scale_auto",
        "The auto backend loaded in micro-batches of 2,000 with background IVF builds",
        ["items", "builds", "items -> lists (seconds)", "batches during builds",
         "apply p99 ms, no build", "apply p99 ms, during a build", "search p99 ms, no build",
         "search p99 ms, during a build"],
        auto_rows,
        {"rows": {str(r[0]): out[f"{r[0]}/auto"] for r in auto_rows}},
    )  # fmt: skip


if __name__ == "__main__":
    main()
