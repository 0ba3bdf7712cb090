"""Hybrid retrieval: dense vs lexical vs fused, on real judgments, and what the lexical side costs.

Quality (../shared/data/crowdflower_search_relevance): every distinct title is the catalog,
indexed by a real ``LiveItemIndex`` (FAISS + SQLite FTS5, the replica's code path); test
queries are those with ``sha1(query) % 2 == 1``; gain = median_relevance - 1, unjudged = 0;
nDCG@10 and recall@10 per mode with the packaged all-MiniLM-L6-v2, then again with that
encoder fine-tuned (the trainer's loop, 3 epochs) on the other half's pairs judged >= 3.

Cost: items/s applied in micro-batches of 256 (lexical alone, vectors alone, both) and search
latency p50/p99 per mode on the same index, from the same run; memory and snapshot size at
100k items. Engines: SQLite FTS5 (what the replica uses) against tantivy and bm25s (static:
every change is a rebuild) at 10k, 100k and 1M titles (Instacart product names with size
variants), each size and engine in its own process so that its memory reading is its own.

    pip install -e '.[bench]'   # tantivy, bm25s (and datasets for bench.finetune_loops)
    python -m bench.retrieval [--sizes 10000,100000,1000000] [--skip-engines] [--skip-quality]
                              [--skip-finetune]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import crowdflower as cf
from bench.common import instacart_titles, percentile, report, rss_mb
from bench.retrain import K, human_judgments
from ecrec_stream.config import EmbeddingSettings, IndexSettings
from ecrec_stream.contracts.events import ItemEvent
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.lexical import Fts5Index, LexicalDoc, match_expression, tokens
from ecrec_stream.training.evaluate import ndcg_at_k, recall_at_k

MODES = ("dense", "lexical", "hybrid")
BATCH = 256
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def items_of(titles: list[str]) -> list[ItemEvent]:
    return [
        ItemEvent(event_id=f"e{i}", ts=T0, op="upsert", item_id=f"t{i}", title=t[:512])
        for i, t in enumerate(titles)
    ]


def apply_in_batches(live: LiveItemIndex, items: list[ItemEvent]) -> float:
    """Items/s applied in micro-batches of ``BATCH``."""
    t0 = time.perf_counter()
    for start in range(0, len(items), BATCH):
        live.apply_many(items[start : start + BATCH])
    return len(items) / (time.perf_counter() - t0)


def mode_quality(
    live: LiveItemIndex,
    tests: dict[str, dict[str, float]],
    searched: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Mean nDCG@K and recall@K per mode over the judged queries ``tests``; ``searched`` maps a
    judged query to the text searched instead of it (a perturbed query, ``bench.augment``)."""
    out: dict[str, Any] = {}
    queries = list(tests)
    texts = [searched.get(q, q) if searched else q for q in queries]
    for mode in MODES:
        ndcg, recall = [], []
        found = live.search_ids(texts, K, mode)  # type: ignore[arg-type]
        for query, ranked in zip(queries, found, strict=True):
            gains = tests[query]
            ndcg.append(ndcg_at_k(ranked, gains, K))
            recall.append(recall_at_k(ranked, gains, K))
        out[mode] = {f"ndcg@{K}": float(np.mean(ndcg)), f"recall@{K}": float(np.mean(recall))}
    return out


def latencies_ms(live: LiveItemIndex, queries: list[str], n: int = 1000) -> dict[str, Any]:
    out = {}
    for mode in MODES:
        for q in queries[:20]:  # warm-up
            live.search(q, K, mode)  # type: ignore[arg-type]
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            live.search(queries[i % len(queries)], K, mode)  # type: ignore[arg-type]
            times.append((time.perf_counter() - t0) * 1000)
        out[mode] = {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2)}
    return out


def fine_tuned_encoder(
    judg: cf.Judgments,
    workdir: Path,
    keep: Callable[[str], bool] | None = None,
    name: str = "all-MiniLM-L6-v2 fine-tuned (crowdflower half 0)",
    extra_pairs: Sequence[tuple[str, str]] = (),
) -> tuple[Any, int]:
    """The packaged encoder fine-tuned (3 epochs, the trainer's loop) on the training half's
    pairs judged >= 3 (only queries that ``keep`` accepts, when given) plus ``extra_pairs``
    (query, title), published to and loaded from a registry like the trainer's; and how many
    pairs it trained on."""
    from sentence_transformers import SentenceTransformer

    from ecrec_stream.embedding import resolve_model_path
    from ecrec_stream.training.finetune import FineTuneConfig, TrainPair, fine_tune
    from ecrec_stream.training.registry import ModelRegistry

    pairs = [
        TrainPair(q, title)
        for q, title in cf.relevant_pairs(judg, half=0)
        if keep is None or keep(q)
    ] + [TrainPair(q, title) for q, title in extra_pairs]
    model = SentenceTransformer(resolve_model_path(EmbeddingSettings().model), device="cpu")
    fine_tune(model, pairs, FineTuneConfig(epochs=3, validation_fraction=0.0))
    registry = ModelRegistry(workdir / "models")
    manifest = registry.publish(model, name=name)
    return registry.load_encoder(manifest.version, EmbeddingSettings()), len(pairs)


def quality_and_cost(
    workdir: Path, fine_tune: bool = True
) -> tuple[list[list[Any]], list[list[Any]], dict[str, Any]]:
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    items = items_of(judg.titles)
    tests = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 1])
    base = SentenceTransformerEncoder()
    data: dict[str, Any] = {"catalog": len(items), "test_queries": len(tests)}

    # cost, on the base encoder: lexical alone, vectors alone, both
    lexical = Fts5Index()
    t0 = time.perf_counter()
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        lexical.upsert_many([i.item_id for i in chunk], [LexicalDoc(i.title or "") for i in chunk])
    lexical_rate = len(items) / (time.perf_counter() - t0)
    dense_only = LiveItemIndex(base, IndexSettings(lexical=False, search_mode="dense"))
    dense_rate = apply_in_batches(dense_only, items)
    live = LiveItemIndex(base, IndexSettings())
    both_rate = apply_in_batches(live, items)
    cost_rows: list[list[Any]] = [
        ["items/s applied, lexical alone (FTS5)", round(lexical_rate)],
        ["items/s applied, vectors alone (MiniLM + FAISS)", round(dense_rate)],
        ["items/s applied, both", round(both_rate)],
    ]
    lat = latencies_ms(live, judg.queries)
    for mode, v in lat.items():
        cost_rows.append([f"search p50 / p99 ms, {mode}", f"{v['p50']} / {v['p99']}"])
    data["cost"] = {
        "items_per_s": {"lexical": lexical_rate, "vectors": dense_rate, "both": both_rate},
        "search_ms": lat,
        "items": len(items),
    }
    del dense_only

    q_base = mode_quality(live, tests)
    rows: list[list[Any]] = [
        [
            "all-MiniLM-L6-v2",
            *[q_base[m][f"ndcg@{K}"] for m in MODES],
            *[q_base[m][f"recall@{K}"] for m in MODES],
        ]
    ]
    data["quality"] = {"base": q_base}
    if fine_tune:
        tuned, n_pairs = fine_tuned_encoder(judg, workdir)
        live.swap_encoder(tuned)  # the replica's own swap; the lexical side is kept
        q = mode_quality(live, tests)
        rows.append(
            [
                f"fine-tuned ({n_pairs} pairs)",
                *[q[m][f"ndcg@{K}"] for m in MODES],
                *[q[m][f"recall@{K}"] for m in MODES],
            ]
        )
        data["quality"].update(fine_tuned=q, fine_tune_pairs=n_pairs)
    return rows, cost_rows, data


# -- size: memory and snapshot at 100k --------------------------------------------------------
def catalog_titles(n: int) -> list[str]:
    """``n`` product titles: Instacart names with size and pack variants."""
    names = instacart_titles()
    sizes = ["", "12 oz", "16 oz", "1 lb", "2 lb", "32 fl oz", "1/2 gal", "6 ct", "12 ct", "3/4 in"]
    packs = ["", "2 pack", "4 pack", "6 pack", "family size", "value pack", "organic", "XL-200"]
    packs += [f"model {c}-{m}" for c in "ABCDEFGHIJKL" for m in (10, 20, 30, 40, 50, 60, 70, 80)]
    out = [f"{name} {s} {p}".strip() for p in packs for s in sizes for name in names]
    return out[:n]


def _snapshot_sizes(n: int, out: Any) -> None:
    from tests.helpers import HashEncoder

    titles = catalog_titles(n)
    # a hashing encoder of MiniLM's dimension: vector storage does not depend on the values
    live = LiveItemIndex(HashEncoder(dim=384, name="hash-384"), IndexSettings())
    before = rss_mb()
    apply_in_batches(live, items_of(titles))
    after = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        snap = live.save_snapshot(Path(tmp), {})
        sizes = {p.name: p.stat().st_size for p in snap.iterdir()}
    out.put({"items": n, "rss_growth_mb": after - before, "snapshot_bytes": sizes})


# -- engines ------------------------------------------------------------------------------------
def _load_and_update(
    add: Callable[[list[int], list[str]], None], titles: list[str], rng: np.random.Generator
) -> dict[str, float]:
    """Items/s loading ``titles`` in micro-batches through ``add`` (ids, texts), then the
    mean ms per batch of 2,048 random updates."""
    n = len(titles)
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        add(list(range(s, min(n, s + BATCH))), titles[s : s + BATCH])
    load_items_per_s = n / (time.perf_counter() - t0)
    updates = [int(i) for i in rng.integers(0, n, 2048)]
    t0 = time.perf_counter()
    for s in range(0, len(updates), BATCH):
        ids = updates[s : s + BATCH]
        add(ids, [titles[i] + " v2" for i in ids])
    update_batch_ms = (time.perf_counter() - t0) * 1000 / (len(updates) / BATCH)
    return {"load_items_per_s": load_items_per_s, "update_batch_ms": update_batch_ms}


def _engine_run(engine: str, n: int, out: Any) -> None:
    titles = catalog_titles(n)
    rng = np.random.default_rng(0)
    queries = [" ".join(titles[int(i)].split()[:2]) for i in rng.integers(0, n, 500)]
    result: dict[str, Any] = {"engine": engine, "items": n}
    base_rss = rss_mb()
    tmp = Path(tempfile.mkdtemp())
    try:
        if engine == "fts5":
            idx = Fts5Index()
            result.update(
                _load_and_update(
                    lambda ids, texts: idx.upsert_many(
                        [f"t{i}" for i in ids], [LexicalDoc(t) for t in texts]
                    ),
                    titles,
                    rng,
                )
            )

            def search(q: str) -> Any:
                return idx.search(q, K)

            result["snapshot_bytes"] = len(idx.to_state())
        elif engine == "tantivy":
            import tantivy

            sb = tantivy.SchemaBuilder()
            sb.add_text_field("id", stored=True, tokenizer_name="raw")
            sb.add_text_field("title", stored=False, tokenizer_name="en_stem")
            index = tantivy.Index(sb.build(), path=str(tmp))
            writer = index.writer(100_000_000, 1)

            def add(ids: list[int], texts: list[str]) -> None:
                for i, t in zip(ids, texts, strict=True):
                    writer.delete_documents_by_term("id", f"t{i}")
                    writer.add_document(tantivy.Document(id=f"t{i}", title=t))
                writer.commit()  # searchable per micro-batch, as the replica needs

            result.update(_load_and_update(add, titles, rng))
            writer.wait_merging_threads()
            index.reload()
            searcher = index.searcher()

            def search(q: str) -> Any:
                terms = match_expression(q) or '""'
                query = index.parse_query(terms.replace(" OR ", " "), ["title"])
                return [searcher.doc(a)["id"] for _, a in searcher.search(query, K).hits]

            result["snapshot_bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        elif engine == "bm25s":
            import bm25s

            corpus = [tokens(t) for t in titles]
            t0 = time.perf_counter()
            retriever = bm25s.BM25()
            retriever.index(corpus, show_progress=False)
            build_s = time.perf_counter() - t0
            result["load_items_per_s"] = n / build_s
            result["update_batch_ms"] = build_s * 1000  # static: a change is a rebuild

            def search(q: str) -> Any:
                return retriever.retrieve([tokens(q) or ["_"]], k=K, show_progress=False)

            retriever.save(str(tmp / "bm25s"))
            result["snapshot_bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        else:
            raise ValueError(engine)
        result["memory_mb"] = rss_mb() - base_rss
        times = []
        for q in queries:
            t0 = time.perf_counter()
            search(q)
            times.append((time.perf_counter() - t0) * 1000)
        result["search_p50_ms"] = percentile(times, 50)
        result["search_p99_ms"] = percentile(times, 99)
    except ImportError as exc:
        result["error"] = f"not installed ({exc.name}): pip install -e '.[bench]'"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.put(result)


def in_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="engine catalog sizes")
    parser.add_argument("--engines", default="fts5,tantivy,bm25s")
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument(
        "--skip-finetune", action="store_true", help="quality with the packaged encoder only"
    )
    args = parser.parse_args()
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_quality:
            rows, cost_rows, data["quality"] = quality_and_cost(Path(tmp), not args.skip_finetune)
            report(
                "retrieval_quality",
                f"nDCG@{K} / recall@{K} on {data['quality']['test_queries']} never-trained "
                f"Crowdflower queries, {data['quality']['catalog']:,} titles",
                ["encoder", *[f"nDCG {m}" for m in MODES], *[f"R@{K} {m}" for m in MODES]],
                rows,
                {"quality": data["quality"]},
            )
            size = in_process(_snapshot_sizes, 100_000)
            cost_rows.append(["RSS growth at 100k items (MB)", round(size["rss_growth_mb"], 1)])
            for name, b in size["snapshot_bytes"].items():
                cost_rows.append([f"snapshot file {name} at 100k (MB)", round(b / 2**20, 2)])
            data["size_100k"] = size
            report(
                "retrieval_cost",
                "Hybrid index cost (same run; search on the Crowdflower catalog)",
                ["measure", "value"],
                cost_rows,
                {"cost": data["quality"]["cost"], "size_100k": size},
            )
        if not args.skip_engines:
            results = []
            for n in [int(s) for s in args.sizes.split(",")]:
                for engine in args.engines.split(","):
                    results.append(in_process(_engine_run, engine, n))
            report(
                "retrieval_engines",
                f"Lexical engines, micro-batches of {BATCH}, each run in its own process",
                [
                    "engine",
                    "items",
                    "load items/s",
                    "update ms/batch",
                    "p50 ms",
                    "p99 ms",
                    "memory MB",
                    "snapshot MB",
                ],
                [
                    [
                        r["engine"],
                        r["items"],
                        *(
                            [r["error"], "", "", "", "", ""]
                            if "error" in r
                            else [
                                round(r["load_items_per_s"]),
                                round(r["update_batch_ms"], 1),
                                round(r["search_p50_ms"], 2),
                                round(r["search_p99_ms"], 2),
                                round(r["memory_mb"], 1),
                                round(r["snapshot_bytes"] / 2**20, 1),
                            ]
                        ),
                    ]
                    for r in results
                ],
                {"engines": results},
            )


if __name__ == "__main__":
    main()
