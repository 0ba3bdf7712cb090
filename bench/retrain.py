"""Retraining: does a retrain make search better, and how long from alert to new model serving.

Quality (real human judgments, ../shared/data/crowdflower_search_relevance): the catalog is
every distinct title; queries are split by ``sha1(query) % 2`` into training queries (0) and
never-trained test queries (1), and each half into two "departments" (k-means on the base
model's query vectors). Sessions are simulated from the judgments (``bench.crowdflower``:
impressions = the serving model's top 10, position-biased clicks on the human gain) and
labelled by the project's own ``RelevanceLabeler`` (the label agents' code, in-process);
round 1 is traffic of department A, round 2 (after the department shift) of department B with
impressions from the round-1 model. Each round is one gated retrain (``Retrainer``) over the
replay buffer. Reported on the test queries (gain = median_relevance - 1, unjudged = 0) with
the plain baselines from the same run: BM25 (SQLite FTS5) and a retrain on raw clicks.

Timing (``--timing``): 10k examples and a 50k-item catalog with a tiny model on this CPU:
buffer read, training, evaluation, publication, re-embedding and swap in a live index, and
search latency p50/p99 during the swap against steady state.

    python -m bench.retrain [--sessions 800] [--epochs 3] [--timing-only]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import crowdflower as cf
from bench.common import instacart_titles, percentile, report
from ecrec_stream.config import EmbeddingSettings, IndexSettings, LabelSettings, TrainingSettings
from ecrec_stream.labels.examples import RelevanceLabeler, TrainingExample
from ecrec_stream.training import ReplayBuffer, Retrainer, model_encoder, retrieval_metrics
from ecrec_stream.training.evaluate import Judgments, embed_catalog, ndcg_at_k, recall_at_k
from ecrec_stream.training.registry import ModelRegistry

K = 10


def human_judgments(judg: cf.Judgments, queries: list[str]) -> Judgments:
    wanted = set(queries)
    out: Judgments = {}
    for (q, t), rel in judg.relevance.items():
        if q in wanted:
            out.setdefault(q, {})[f"t{t}"] = float(rel - 1)
    return {q: g for q, g in out.items() if any(v > 0 for v in g.values())}


def bm25_metrics(titles: list[str], judgments: Judgments) -> dict[str, float]:
    """BM25 over the titles with SQLite FTS5 (its built-in bm25 ranking)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(title, tokenize='porter unicode61')")
    db.executemany("INSERT INTO t(rowid, title) VALUES (?, ?)", enumerate(titles))
    ndcg, recall = [], []
    for q, gains in judgments.items():
        terms = " OR ".join(f'"{w}"' for w in q.replace('"', " ").split())
        rows = db.execute(
            "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (terms, K)
        ).fetchall()
        ranked = [f"t{r[0]}" for r in rows]
        ndcg.append(ndcg_at_k(ranked, gains, K))
        recall.append(recall_at_k(ranked, gains, K))
    return {f"ndcg@{K}": float(np.mean(ndcg)), f"recall@{K}": float(np.mean(recall))}


def label(sim: cf.SimulatedSessions, labeler: RelevanceLabeler) -> list[TrainingExample]:
    """Label in stream-sized micro-batches (50 sessions), as the label agents do."""
    out: list[TrainingExample] = []
    batch: list[Any] = []
    sessions = 0
    last = None
    for c in [*sim.candidates, None]:
        if c is None or (c.session_id != last and sessions == 50):
            out += labeler.label_many(batch)
            batch, sessions = [], 0
        if c is None:
            break
        if c.session_id != last:
            sessions, last = sessions + 1, c.session_id
        batch.append(c)
    return out


def raw_click_examples(sim: cf.SimulatedSessions) -> list[TrainingExample]:
    """The raw-clicks baseline: every clicked impression is a relevant pair, nothing else."""
    from tests.helpers import relevant_pair

    return [
        relevant_pair(
            f"raw-{c.search_event_id}-{c.item_id}",
            c.query,
            c.item_title,
            c.item_id,
            list(c.source_event_ids),
            datetime.fromtimestamp(c.event_ts or 0, timezone.utc),
        )
        for c in sim.candidates
        if c.action != "none"
    ]


def quality(
    n_sessions: int, epochs: int, workdir: Path, model: str = "default"
) -> tuple[list[list[Any]], dict[str, Any]]:
    import faiss

    judg = cf.load()
    catalog = {f"t{i}": t for i, t in enumerate(judg.titles)}
    settings = TrainingSettings(epochs=epochs, device="auto", min_interval_s=0)
    registry = ModelRegistry(workdir / "models")
    retrainer = Retrainer(settings, registry, EmbeddingSettings(model=model))
    version, base = retrainer.serving()
    encode = model_encoder(base)
    base_catalog = retrainer.embedded_catalog(version, base, catalog)

    train_q = [q for q in judg.queries if cf.query_half(q) == 0]
    test_q = [q for q in judg.queries if cf.query_half(q) == 1]
    kmeans = faiss.Kmeans(base_catalog.vectors.shape[1], 2, niter=25, seed=3)
    kmeans.train(encode(judg.queries))
    _, dept = kmeans.index.search(encode(judg.queries), 1)
    department = {q: int(d) for q, d in zip(judg.queries, dept[:, 0], strict=True)}
    tests = {
        "test (all)": human_judgments(judg, test_q),
        "test dept A": human_judgments(judg, [q for q in test_q if department[q] == 0]),
        "test dept B": human_judgments(judg, [q for q in test_q if department[q] == 1]),
    }

    def measure(model: Any, ver: str, emb: Any = None) -> dict[str, dict[str, float]]:
        # the catalog vectors the retrainer computed for the gate, where there are some
        emb = emb or embed_catalog(model_encoder(model), ver, catalog)
        return {
            name: retrieval_metrics(model_encoder(model), emb, j, K) for name, j in tests.items()
        }

    def rankings(model: Any, ver: str, queries: list[str]) -> dict[str, list[int]]:
        emb = retrainer.embedded_catalog(ver, model, catalog)
        top = emb.top_k(model_encoder(model)(queries), K)
        return {q: [int(i[1:]) for i in r] for q, r in zip(queries, top, strict=True)}

    rows: list[list[Any]] = []
    data: dict[str, Any] = {"sessions_per_round": n_sessions, "epochs": epochs, "rounds": []}

    def add(name: str, metrics: dict[str, dict[str, float]], extra: str = "") -> None:
        row: list[Any] = [name]
        for split in tests:
            row += [metrics[split][f"ndcg@{K}"], metrics[split][f"recall@{K}"]]
        rows.append([*row, extra])
        data[name] = metrics

    add("BM25 (SQLite FTS5)", {n: bm25_metrics(judg.titles, j) for n, j in tests.items()})
    add("base all-MiniLM-L6-v2", measure(base, version, base_catalog))

    labeler = RelevanceLabeler(None, LabelSettings(augment_variants=0))
    buffer = ReplayBuffer(settings.recent_size, settings.reservoir_size)
    raw_buffer = ReplayBuffer(settings.recent_size, settings.reservoir_size)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for round_no, dept_id in ((1, 0), (2, 1)):
        serving_version, serving_model = retrainer.serving()
        queries = [q for q in train_q if department[q] == dept_id]
        sim = cf.simulate(
            judg,
            rankings(serving_model, serving_version, queries),
            n_sessions,
            seed=round_no,
            start=start + timedelta(days=round_no),
        )
        examples = label(sim, labeler)
        buffer.add(examples)
        t0 = time.perf_counter()
        split = buffer.split(settings.holdout_recent, settings.holdout_older)
        outcome = retrainer.retrain(
            split, catalog, trigger=f"round {round_no}", buffer_s=time.perf_counter() - t0
        )
        _, new_model = retrainer.serving()
        verdict = "published" if outcome.accepted else "rejected: " + "; ".join(outcome.reasons)
        add(
            f"retrain {round_no} (dept {'AB'[dept_id]} traffic), label model",
            measure(
                outcome_model(retrainer, outcome, new_model),
                outcome.candidate_version or "",
                retrainer.last_candidate_catalog,
            ),
            verdict,
        )
        data["rounds"].append(
            {"round": round_no, "examples": len(examples), "outcome": outcome.summary()}
        )
        if round_no == 1:  # the raw-clicks baseline, trained the same way on the same sessions
            raw_buffer.add(raw_click_examples(sim))
            raw_split = raw_buffer.split(settings.holdout_recent, settings.holdout_older)
            raw_registry = ModelRegistry(workdir / "raw-models")
            raw_registry.publish(base, name="base")
            raw = Retrainer(settings, raw_registry, EmbeddingSettings(model=model))
            raw_outcome = raw.retrain(raw_split, catalog, trigger="raw clicks")
            add(
                "retrain 1 on raw clicks (baseline)",
                measure(
                    outcome_model(raw, raw_outcome, None),
                    raw_outcome.candidate_version or "",
                    raw.last_candidate_catalog,
                ),
                "published" if raw_outcome.accepted else "rejected",
            )
            data["raw_clicks_outcome"] = raw_outcome.summary()
    return rows, data


def outcome_model(retrainer: Retrainer, outcome: Any, fallback: Any) -> Any:
    """The candidate that was trained (published or not): metrics are reported either way."""
    return retrainer.last_candidate if retrainer.last_candidate is not None else fallback


# -- timing -------------------------------------------------------------------------------
def workload(n_items: int, n_examples: int) -> tuple[dict[str, str], list[TrainingExample]]:
    """A catalog of ``n_items`` real Instacart titles and size variants of them, and
    ``n_examples`` relevant (query, item) examples: the query is the title's first two words."""
    from tests.helpers import relevant_pair

    names = instacart_titles()
    sizes = ["", "family size", "2 pack", "organic", "12 oz", "value pack"]
    texts = [f"{n} {s}".strip() for s in sizes for n in names][:n_items]
    catalog = {f"p{i}": t for i, t in enumerate(texts)}
    rng = np.random.default_rng(0)
    ids = list(catalog)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    examples = []
    for n, idx in enumerate(rng.integers(0, len(ids), n_examples)):
        item_id = ids[int(idx)]
        words = catalog[item_id].lower().split()
        examples.append(
            relevant_pair(
                f"x{n}",
                " ".join(words[:2]),
                catalog[item_id],
                item_id,
                [f"s{n}"],
                t0 + timedelta(seconds=n),
            )
        )
    return catalog, examples


def timing(
    workdir: Path,
    model_name: str = "tiny",
    n_items: int = 50_000,
    n_examples: int = 10_000,
    epochs: int = 1,
    batch_size: int = 64,
    encode_batch: int = 256,
    warm_up: bool = True,
) -> dict[str, Any]:
    """Alert -> new model serving, phase by phase; ``model_name`` "tiny" builds a 1-layer model
    from a config, anything else is a sentence-transformers name or path (``default`` = the
    packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    from ecrec_stream.contracts.events import ItemEvent
    from ecrec_stream.embedding import encode_pretokenised, resolve_model_path, weights_digest
    from ecrec_stream.index import LiveItemIndex
    from tests.helpers import tiny_sentence_model

    catalog, examples = workload(n_items, n_examples)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    registry = ModelRegistry(workdir / "timing-models")
    if model_name == "tiny":
        base = tiny_sentence_model(workdir / "tiny")
        described = "tiny BERT (1 layer, width 32) from a config"
    else:
        base = SentenceTransformer(resolve_model_path(model_name), device="cpu")
        described = "all-MiniLM-L6-v2" if model_name == "default" else model_name
    registry.publish(base, name=model_name)
    settings = TrainingSettings(
        epochs=epochs,
        batch_size=batch_size,
        encode_batch_size=encode_batch,
        device="auto",
        min_eval_queries=1,
        tolerance=1.0,
    )
    retrainer = Retrainer(settings, registry, EmbeddingSettings(model=model_name))
    version, model = retrainer.serving()
    encoder = registry.load_encoder(
        version, EmbeddingSettings(model=model_name, batch_size=encode_batch)
    )
    live = LiveItemIndex(encoder, IndexSettings(batch_max=1024))
    when = t0
    live.apply_many(
        [
            ItemEvent(event_id=f"e{i}", ts=when, op="upsert", item_id=i, title=t)
            for i, t in catalog.items()
        ]
    )
    buffer = ReplayBuffer(20_000, 0)
    buffer.add(examples)
    # What a running trainer has before an alert: the serving vectors and (on a GPU) a warm
    # device; both are timed here but are not part of the alert -> serving path.
    t_cat = time.perf_counter()
    retrainer.embedded_catalog(version, model, catalog)
    before_alert = {"embed serving catalog": time.perf_counter() - t_cat}
    if warm_up:
        before_alert["trainer warm-up"] = retrainer.warm_up()

    # the same catalog embedded by sentence-transformers' encode and by the project's
    # pre-tokenised path, in this run (the index replica and the gate use the latter on CUDA)
    encoders: dict[str, Any] = {}
    ordered = list(catalog.values())
    t_st = time.perf_counter()
    model.encode(
        ordered, batch_size=encode_batch, normalize_embeddings=True, show_progress_bar=False
    )
    encoders[f"SentenceTransformer.encode (batch {encode_batch})"] = time.perf_counter() - t_st
    t_pt = time.perf_counter()
    encode_pretokenised(model, ordered, encode_batch)
    encoders[f"encode_pretokenised (batch {encode_batch})"] = time.perf_counter() - t_pt

    t_alert = t_split = time.perf_counter()
    split = buffer.split(settings.holdout_recent, settings.holdout_older)
    outcome = retrainer.retrain(
        split, catalog, trigger="timing", buffer_s=time.perf_counter() - t_split
    )
    # force publication for the timing (the gate's verdict on synthetic queries is not the
    # point here): a rejected candidate is published by hand, timed the same way
    new_version = outcome.manifest.version if outcome.manifest else None
    if new_version is None and retrainer.last_candidate is not None:
        t_pub = time.perf_counter()
        new_version = registry.publish(retrainer.last_candidate, name=model_name).version
        outcome.timings["publish"] = time.perf_counter() - t_pub
    assert new_version is not None and new_version != version

    latencies: dict[str, list[float]] = {"steady": [], "swap": []}
    phase = ["steady"]
    stop = threading.Event()

    def searcher() -> None:
        queries = [e.text for e in examples[:500]]
        i = 0
        while not stop.is_set():
            s = time.perf_counter()
            live.search(queries[i % len(queries)], 10)
            latencies[phase[0]].append((time.perf_counter() - s) * 1000)
            i += 1

    thread = threading.Thread(target=searcher, daemon=True)
    t_steady = time.perf_counter()
    thread.start()
    time.sleep(3.0)
    steady_s = time.perf_counter() - t_steady
    t_load = time.perf_counter()
    new_encoder = registry.load_encoder(
        new_version, EmbeddingSettings(model=model_name, batch_size=encode_batch)
    )
    load_s = time.perf_counter() - t_load
    phase[0] = "swap"
    t_swap = time.perf_counter()
    live.swap_encoder(new_encoder, 4096)
    swap_s = time.perf_counter() - t_swap
    stop.set()
    thread.join()
    # alert -> serving, without the steady-state searches measured before the swap
    total = time.perf_counter() - t_alert - steady_s
    assert live.serving.version == new_version == weights_digest(new_encoder._model)
    return {
        "items": len(catalog),
        "examples": len(examples),
        "device": retrainer.device,
        "model": described,
        "epochs": epochs,
        "batch_size": batch_size,
        "before_alert_s": {k: round(v, 3) for k, v in before_alert.items()},
        "catalog_embedding_s": {k: round(v, 3) for k, v in encoders.items()},
        "phases_s": {
            **{k: round(v, 3) for k, v in outcome.timings.items()},
            "load_verified": round(load_s, 3),
            "reembed_and_swap": round(swap_s, 3),
        },
        "alert_to_serving_s": round(total, 3),
        "fine_tune": outcome.fine_tune.as_dict() if outcome.fine_tune else None,
        "counts": outcome.counts,
        "gate": outcome.reasons,
        "search_ms": {
            name: {
                "n": len(v),
                "p50": round(percentile(v, 50), 3),
                "p99": round(percentile(v, 99), 3),
            }
            for name, v in latencies.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=800, help="simulated sessions per round")
    parser.add_argument("--epochs", type=int, default=3, help="the trainer's default")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument(
        "--model",
        default="tiny",
        help="timing: 'tiny' (from a config), 'default' or a path; quality: the encoder",
    )
    parser.add_argument("--timing-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64, help="timing: training batch")
    parser.add_argument("--encode-batch", type=int, default=256, help="timing: embedding batch")
    parser.add_argument("--items", type=int, default=50_000, help="timing: catalog size")
    parser.add_argument("--tag", default="", help="suffix of the timing result's file name")
    args = parser.parse_args()
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.timing_only:
            model = "default" if args.model == "tiny" else args.model
            rows, data["quality"] = quality(args.sessions, args.epochs, work, model)
            cols = ["model"]
            for split in ("all", "dept A", "dept B"):
                cols += [f"nDCG@10 {split}", f"R@10 {split}"]
            report(
                "retrain_quality",
                "Retrieval on never-trained test queries (human judgments)",
                [*cols, "gate"],
                rows,
                {"quality": data["quality"]},
            )
        if not args.quality_only:
            data["timing"] = t = timing(
                work,
                args.model,
                epochs=args.timing_epochs,
                batch_size=args.batch_size,
                encode_batch=args.encode_batch,
                n_items=args.items,
            )
            rows = [[f"({k}, before the alert)", v] for k, v in t["before_alert_s"].items()]
            rows += [[f"(catalog: {k})", v] for k, v in t["catalog_embedding_s"].items()]
            rows += [[k, v] for k, v in t["phases_s"].items()]
            rows.append(["alert -> new model serving", t["alert_to_serving_s"]])
            for name, s in t["search_ms"].items():
                rows.append([f"search p50 / p99 ms ({name})", f"{s['p50']} / {s['p99']}"])
            report(
                f"retrain_timing_{args.tag}" if args.tag else "retrain_timing",
                f"Alert to serving: {t['examples']:,} examples, {t['items']:,} items, "
                f"{t['model']}, {t['epochs']} epoch(s) at batch {t['batch_size']}, {t['device']}",
                ["phase", "seconds"],
                rows,
                {"timing": t},
            )


if __name__ == "__main__":
    main()
