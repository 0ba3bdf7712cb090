"""The demo: embedded broker + stream worker + index replica + simulated shop traffic.

It shows what a user runs in production, on one machine: events flow through the real broker,
the Faust worker validates and routes them (bad ones to the DLQ), the replica embeds catalog
changes into FAISS within a second, and the HTTP search answers from the live index.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ecrec_stream.config import Settings
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, resolve_bootstrap
from workers.processes import indexer_process, trainer_process, worker_process
from workers.replay import topic_for
from workers.simulate import ShopSimulator, load_instacart_catalog, synthetic_catalog


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 60.0
    rate: float = 100.0
    n_items: int = 500
    catalog_dir: Path | None = None
    seed: int = 11
    live: bool = True
    n_example_queries: int = 4
    shift_at: float | None = None
    retrain_wait_s: float = 240.0


class ExamplesReader(threading.Thread):
    """Counts training examples on ``ecrec.examples`` and keeps recent augmented samples."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="demo-examples")
        from streams.kafka import partition_reader

        self.consumer = partition_reader(bootstrap, [topic], name="ecrec-demo-examples")
        self.counts: dict[str, int] = {"relevance": 0, "sentiment": 0, "augmented": 0}
        self.texts: dict[str, str] = {}
        self.samples: list[tuple[str, str, str, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(200, timeout=0.2):
                if msg.error() is not None:
                    continue
                batch = json.loads(msg.value() or b"{}")
                for ex in batch["examples"]:
                    self.counts[ex["task"]] += 1
                    if ex["augmented_from"] is None:
                        if len(self.texts) < 50_000:
                            self.texts[ex["example_id"]] = ex["text"]
                    else:
                        self.counts["augmented"] += 1
                        self._sample(ex)
        self.consumer.close()

    def _sample(self, ex: dict[str, Any]) -> None:
        """Keep the latest few samples per task, one per source text."""
        source = self.texts.get(ex["augmented_from"])
        if source is None:
            return
        same_task = [x for x in self.samples if x[0] == ex["task"]]
        if any(x[2] == source for x in same_task):
            return
        if len(same_task) >= 4:
            self.samples.remove(same_task[0])
        self.samples.append((ex["task"], ex["augmenter"], source, ex["text"], ex["label"]))


def samples_table(samples: list[tuple[str, str, str, str, int]]) -> Table:
    table = Table(title="augmented training examples (kept by the meaning filter)")
    for col in ("task", "augmenter", "source", "augmented", "label"):
        table.add_column(col)
    for task, augmenter, source, text, label in samples:
        table.add_row(task, augmenter, source[:70], text[:70], str(label))
    return table


def results_table(payload: dict[str, Any]) -> Table:
    """A rich table of one ``/search`` response."""
    table = Table(
        title=f"search ({payload.get('mode', 'dense')}): {payload['query']!r} "
        f"(index holds {payload['index_size']})"
    )
    for col in ("#", "score", "dense #", "BM25 #", "item", "title", "category", "price"):
        table.add_column(col)
    for rank, hit in enumerate(payload["results"], 1):
        price = hit["price"]
        table.add_row(
            str(rank),
            f"{hit['score']:.3f}",
            str(hit.get("dense_rank") or "-"),
            str(hit.get("lexical_rank") or "-"),
            hit["item_id"],
            hit["title"] or "",
            " > ".join(hit["category_path"]),
            "" if price is None else f"{price:.2f}",
        )
    return table


def recommend_table(payload: dict[str, Any]) -> Table:
    """A rich table of one ``/recommend`` response: each result's source and why."""
    anchors = ", ".join(payload["anchors"][-3:]) or "-"
    title = f"recommend ({payload['kind']}) from {anchors}"
    if payload.get("session_id"):
        found = "" if payload.get("session_found") else ", session not live: popular items"
        title = f"recommend next for session {payload['session_id']}{found}"
    table = Table(title=title)
    for col in ("#", "score", "source", "item", "title", "why"):
        table.add_column(col)
    for rank, hit in enumerate(payload["results"], 1):
        table.add_row(
            str(rank),
            f"{hit['score']:.3f}",
            hit["source"],
            hit["item_id"],
            hit["title"] or "",
            hit["reason"],
        )
    return table


def drift_table(status: dict[str, Any]) -> Table:
    """Each drift detector's latest window statistic against its calibrated threshold."""
    table = Table(title=f"drift detectors (serving model {status.get('model_version', '?')})")
    for col in ("detector", "reference", "windows", "statistic", "threshold", "drifted"):
        table.add_column(col, justify="left" if col == "detector" else "right")
    for name, d in status.get("detectors", {}).items():
        stat, thr = d.get("statistic"), d.get("threshold")
        drifted = d.get("drifted")
        table.add_row(
            name,
            d["reference"],
            str(d["windows"]),
            "-" if stat is None else f"{stat:.4f}",
            ("River" if d.get("sequential") else "-") if thr is None else f"{thr:.4f}",
            "-"
            if drifted is None
            else ("[red]yes[/]" if drifted else "no")
            + (f" x{d['consecutive']}" if d.get("consecutive") else ""),
        )
    return table


def alerts_table(alerts: list[dict[str, Any]]) -> Table:
    """Recent retraining alerts, newest last."""
    table = Table(title=f"retraining alerts ({len(alerts)})")
    for col in ("alert id", "window end", "detector", "reason", "moved categories"):
        table.add_column(col)
    for a in alerts[-5:]:
        moved = ", ".join(
            f"{m['category']} {m['before']:.0%}->{m['after']:.0%}"
            for m in a.get("moved_categories", [])[:3]
        )
        table.add_row(a["alert_id"], a["window_end"][:19], a["detector"], a["reason"], moved)
    return table


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(url, timeout=1.0)
        return response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _dashboard(
    elapsed: float,
    produced: int,
    bad_sent: int,
    worker: dict[str, Any] | None,
    index: dict[str, Any] | None,
    examples: ExamplesReader,
    drift: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
) -> Group:
    table = Table(title="ecrec-stream demo", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rate = produced / elapsed if elapsed > 0 else 0.0
    table.add_row("elapsed", f"{elapsed:6.1f} s")
    table.add_row("live events produced", f"{produced:,} ({rate:,.0f}/s), {bad_sent} malformed")
    if worker:
        valid, dead = sum(worker["valid"].values()), sum(worker["dead"].values())
        table.add_row("validated by worker", f"{valid:,}")
        table.add_row("dead letters (DLQ)", f"{dead:,}")
        labels = worker.get("labels", {})
        table.add_row(
            "bot sessions excluded / duplicates dropped",
            f"{labels.get('bot_sessions', 0)} / {labels.get('duplicate_events', 0)}",
        )
        for task in ("relevance", "sentiment"):
            acc = labels.get(f"{task}_lf_accuracy")
            if acc:
                table.add_row(
                    f"{task} label-function accuracy (label model)",
                    ", ".join(f"{k} {v:.2f}" for k, v in acc.items()),
                )
    else:
        table.add_row("stream worker", "starting (joining its consumer group)")
    if index:
        fresh = index["freshness"]
        p50 = "-" if fresh["p50_s"] is None else f"{fresh['p50_s'] * 1000:,.0f} ms"
        p99 = "-" if fresh["p99_s"] is None else f"{fresh['p99_s'] * 1000:,.0f} ms"
        table.add_row("index size", f"{index['items']:,} items ({index['tombstones']} deleted)")
        table.add_row("index freshness p50 / p99", f"{p50} / {p99}")
        table.add_row("item changes applied", f"{index['applied_events']:,}")
        rebuild = index.get("rebuild")
        serving = f"{index['model_version']} ({index['swaps']} swaps)"
        if rebuild:
            serving += (
                f", re-embedding for {rebuild['version']}: {rebuild['done']}/{rebuild['total']}"
            )
        table.add_row("serving model", serving)
    else:
        table.add_row("index replica", "starting (loading the model)")
    c = examples.counts
    total = c["relevance"] + c["sentiment"]
    table.add_row(
        "training examples (relevance / sentiment)",
        f"{c['relevance']:,} / {c['sentiment']:,} ({total / max(elapsed, 1e-9):,.0f}/s),"
        f" {c['augmented']:,} augmented",
    )
    if trainer:
        buffer = trainer["buffer"]
        stats = trainer["stats"]
        table.add_row(
            "trainer: buffer (recent + reservoir) / triggers / deferred / published / rejected",
            f"{buffer['recent']:,} + {sum(buffer['reservoir'].values()):,} / "
            + " / ".join(
                str(stats.get(k, 0)) for k in ("triggers", "deferred", "published", "rejected")
            ),
        )
    if not drift or not drift.get("enabled"):
        return Group(table)
    return Group(table, drift_table(drift), alerts_table(drift.get("alerts", [])))


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> None:
    """Run the whole pipeline for ``options.duration_s`` seconds, then print example searches."""
    broker = EmbeddedBroker() if settings.uses_embedded_broker else None
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-demo-"))
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if broker is not None:
            broker.start()
            console.print(f"[green]embedded broker[/] (Tansu) on {broker.url}")
        bootstrap = resolve_bootstrap(settings, broker.bootstrap if broker else None)
        broker_url = f"kafka://{bootstrap}"
        ensure_topics(bootstrap, all_topics(settings.topics), settings.partitions)
        worker_port, index_port = free_port(), free_port()
        # Simulated sessions last seconds, not the half hour of real shoppers: close them after
        # 10 s of event-time inactivity unless the user chose a gap.
        # The demo's minute of traffic is too short for production-sized drift windows.
        demo_env = {
            "ECREC_LABELS__SESSION_GAP_S": "10",
            # (400 / 80 was tried: the first seconds of simulated traffic are not stationary, and
            # a 15 s demo without a shift raised a click-through alert; 600 / 100 did not.)
            "ECREC_DRIFT__REFERENCE_SIZE": "600",
            "ECREC_DRIFT__WINDOW_EVENTS": "100",
            # a simulated search's clicks follow it within seconds (1-20 s each)
            "ECREC_DRIFT__CTR_HORIZON_S": "30",
        }
        extra = {k: v for k, v in demo_env.items() if k not in os.environ}
        # A minute of demo traffic gives a few thousand examples: let the trainer work with them.
        trainer_env = {
            "ECREC_TRAINING__MIN_EXAMPLES": "100",
            "ECREC_TRAINING__MIN_EVAL_QUERIES": "5",
            "ECREC_TRAINING__EPOCHS": "1",
        }
        trainer_extra = {k: v for k, v in trainer_env.items() if k not in os.environ}
        worker = worker_process(broker_url, workdir, worker_port, extra_env=extra).start()
        # the replica's console reads this worker's pages
        console_env = {
            "ECREC_CONSOLE__WORKER_URLS": json.dumps([f"http://127.0.0.1:{worker_port}"])
        }
        indexer = indexer_process(broker_url, workdir, index_port, extra_env=console_env).start()
        trainer = trainer_process(broker_url, workdir, extra_env=trainer_extra).start()
        try:
            _drive(
                settings,
                options,
                console,
                bootstrap,
                worker_port,
                index_port,
                lambda: stopping,
                [worker, indexer, trainer],
                workdir,
            )
        finally:
            trainer.stop()
            indexer.stop()
            worker.stop()
        console.print(f"logs and index snapshots: {workdir}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if broker is not None:
            broker.stop()


def _drive(
    settings: Settings,
    options: DemoOptions,
    console: Console,
    bootstrap: str,
    worker_port: int,
    index_port: int,
    should_stop: Any,
    children: list[Any],
    workdir: Path,
) -> None:
    index_url = f"http://127.0.0.1:{index_port}"
    worker_url = f"http://127.0.0.1:{worker_port}/ecrec/stats"
    drift_url = f"http://127.0.0.1:{worker_port}/ecrec/drift"
    catalog = (
        load_instacart_catalog(options.catalog_dir, limit=options.n_items, seed=options.seed)
        if options.catalog_dir
        else synthetic_catalog(options.n_items, seed=options.seed)
    )
    sim = ShopSimulator(catalog, seed=options.seed)
    producer = new_producer(bootstrap)
    topics = {kind: topic_for(kind, settings)[0] for kind in ("item", "search", "click", "review")}
    with console.status("starting the stream worker and the index replica..."):
        _wait_ready(worker_url, f"{index_url}/healthz", children)
    produced = bad_sent = 0
    for kind, key, doc in sim.catalog_events():
        producer.produce(topics[kind], key=key.encode(), value=json.dumps(doc).encode())
        produced += 1
    producer.flush(30)
    console.print(f"[bold]operator console:[/] {index_url}/console")
    console.print(
        f"sent a catalog of {len(catalog):,} items; streaming sessions at "
        f"{options.rate:.0f} events/s for {options.duration_s:.0f} s (Ctrl-C stops)"
    )
    stream = sim.stream(in_event_time=True)
    examples = ExamplesReader(bootstrap, settings.topics.examples)
    examples.start()
    start = time.monotonic()
    next_refresh = 0.0

    def draw(live: Live) -> None:
        elapsed = time.monotonic() - start
        live.update(
            _dashboard(
                elapsed,
                produced - len(catalog),
                bad_sent,
                _get_json(worker_url),
                _get_json(f"{index_url}/stats"),
                examples,
                _get_json(drift_url),
                _trainer_status(workdir),
            ),
            refresh=True,
        )

    try:
        with Live(
            console=console, refresh_per_second=4, transient=False, auto_refresh=False
        ) as live:
            while not should_stop():
                elapsed = time.monotonic() - start
                if elapsed >= options.duration_s:
                    break
                for child in children:
                    if not child.alive():
                        raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
                if options.shift_at is not None and elapsed >= options.shift_at and not sim.shifted:
                    moved_to = sim.shift()
                    live.console.print(
                        f"[yellow]shift at {elapsed:.0f} s[/]: traffic moves to "
                        f"{', '.join(moved_to)}; click-through drops, reviews sour"
                    )
                due = int(elapsed * options.rate) - (produced - len(catalog))
                for _ in range(max(0, due)):
                    kind, key, payload = next(stream)
                    producer.produce(topics[kind], key=key.encode(), value=payload)
                    produced += 1
                    bad_sent += key.startswith("bad-")
                producer.poll(0)
                if options.live and elapsed >= next_refresh:
                    draw(live)
                    next_refresh = elapsed + 0.5
                time.sleep(0.01)
            producer.flush(30)
            time.sleep(2.0)  # let the last events through
            draw(live)
            if options.shift_at is not None:
                _await_retrain(workdir, index_url, options.retrain_wait_s, should_stop, draw, live)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
    finally:
        examples.stop.set()
    producer.flush(30)
    console.print()
    if examples.samples:
        console.print(samples_table(examples.samples))
    status = _trainer_status(workdir)
    if status and status.get("outcomes"):
        console.print(retrain_table(status["outcomes"]))
    _example_searches(sim, options, console, index_url)


def _trainer_status(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "trainer" / "status.json"
    try:
        body: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body


def _await_retrain(
    workdir: Path,
    index_url: str,
    timeout_s: float,
    should_stop: Any,
    draw: Any,
    live: Live,
) -> None:
    """After a shift, wait (up to ``timeout_s``) for the alert's retrain to finish and, if it
    was published, for the replica to serve it."""
    deadline = time.monotonic() + timeout_s
    live.console.print(f"waiting up to {timeout_s:.0f} s for a retraining alert's retrain...")
    while time.monotonic() < deadline and not should_stop():
        status = _trainer_status(workdir) or {}
        outcomes = [o for o in status.get("outcomes", []) if o.get("artifact") != "fusion"]
        if outcomes:
            last = outcomes[-1]
            index = _get_json(f"{index_url}/stats") or {}
            if not last["accepted"] or index.get("model_version") == last["candidate_version"]:
                draw(live)
                return
        draw(live)
        time.sleep(1.0)


def retrain_table(outcomes: list[dict[str, Any]]) -> Table:
    """Before/after metrics of each retrain: serving vs candidate on held-back data."""
    table = Table(title="retrains (nDCG@10 on held-back examples: serving -> candidate)")
    for col in ("trigger", "verdict", "recent", "older", "train s", "why"):
        table.add_column(col, overflow="fold")
    for o in outcomes:

        def pair(split: str, o: dict[str, Any] = o) -> str:
            s, c = o["serving"].get(split, {}), o["candidate"].get(split, {})
            if "ndcg@10" not in s:
                return "-"
            return f"{s['ndcg@10']:.3f} -> {c.get('ndcg@10', float('nan')):.3f}"

        table.add_row(
            o["trigger"][:40],
            "[green]published[/]" if o["accepted"] else "[yellow]rejected[/]",
            pair("recent"),
            pair("older"),
            f"{o['timings_s'].get('train', 0):.1f}",
            "; ".join(o["reasons"]),
        )
    return table


def _wait_ready(
    worker_url: str, index_health_url: str, children: list[Any], timeout_s: float = 180.0
) -> None:
    """Wait until the worker owns its partitions and the replica answers, so the freshness
    figures measure the pipeline rather than process start-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        stats = _get_json(worker_url)
        if stats and stats.get("assigned", 0) > 0 and _get_json(index_health_url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the pipeline was not ready after {timeout_s:.0f} s")


def _example_searches(
    sim: ShopSimulator, options: DemoOptions, console: Console, index_url: str
) -> None:
    queries = []
    for _ in range(options.n_example_queries):
        queries.append(sim.query_for(sim.rng.choice(sim.catalog)))
    tables = []
    for query in queries:
        try:
            response = httpx.get(f"{index_url}/search", params={"q": query, "k": 5}, timeout=10)
        except httpx.HTTPError as exc:
            console.print(f"[red]search failed:[/] {exc}")
            return
        if response.status_code == 200:
            payload = response.json()
            tables.append(results_table(payload))
            if payload["results"]:  # what the shop would show beside the top result
                top = payload["results"][0]["item_id"]
                rec = httpx.get(f"{index_url}/recommend", params={"item_id": top, "k": 5})
                if rec.status_code == 200:
                    tables.append(recommend_table(rec.json()))
        else:
            console.print(f"[red]{response.status_code}[/] {response.text}")
    console.print(Group(*tables))
