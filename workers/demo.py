"""The demo: embedded broker + stream worker + index replica + simulated shop traffic.

It shows what a user runs in production, on one machine: events flow through the real broker,
the Faust worker validates and routes them (bad ones to the DLQ), the replica embeds catalog
changes into FAISS within a second, and the HTTP search answers from the live index.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ecrec_stream.config import Settings
from ecrec_stream.simulate import ShopSimulator, load_instacart_catalog, synthetic_catalog
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, resolve_bootstrap
from workers.processes import indexer_process, worker_process
from workers.replay import topic_for


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 60.0
    rate: float = 200.0
    n_items: int = 1000
    catalog_dir: Path | None = None
    seed: int = 11
    live: bool = True
    n_example_queries: int = 4


def results_table(payload: dict[str, Any]) -> Table:
    """A rich table of one ``/search`` response."""
    table = Table(title=f"search: {payload['query']!r} (index holds {payload['index_size']})")
    for col in ("#", "score", "item", "title", "category", "price"):
        table.add_column(col)
    for rank, hit in enumerate(payload["results"], 1):
        price = hit["price"]
        table.add_row(
            str(rank),
            f"{hit['score']:.3f}",
            hit["item_id"],
            hit["title"] or "",
            " > ".join(hit["category_path"]),
            "" if price is None else f"{price:.2f}",
        )
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
) -> Table:
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
    else:
        table.add_row("stream worker", "starting (joining its consumer group)")
    if index:
        fresh = index["freshness"]
        p50 = "-" if fresh["p50_s"] is None else f"{fresh['p50_s'] * 1000:,.0f} ms"
        p99 = "-" if fresh["p99_s"] is None else f"{fresh['p99_s'] * 1000:,.0f} ms"
        table.add_row("index size", f"{index['items']:,} items ({index['tombstones']} deleted)")
        table.add_row("index freshness p50 / p99", f"{p50} / {p99}")
        table.add_row("item changes applied", f"{index['applied_events']:,}")
    else:
        table.add_row("index replica", "starting (loading the model)")
    return table


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
        worker = worker_process(broker_url, workdir, worker_port).start()
        indexer = indexer_process(broker_url, workdir, index_port).start()
        try:
            _drive(
                settings,
                options,
                console,
                bootstrap,
                worker_port,
                index_port,
                lambda: stopping,
                [worker, indexer],
            )
        finally:
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
) -> None:
    index_url = f"http://127.0.0.1:{index_port}"
    worker_url = f"http://127.0.0.1:{worker_port}/ecrec/stats"
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
    console.print(
        f"sent a catalog of {len(catalog):,} items; streaming sessions at "
        f"{options.rate:.0f} events/s for {options.duration_s:.0f} s (Ctrl-C stops)"
    )
    stream = sim.stream()
    start = time.monotonic()
    next_refresh = 0.0
    worker_stats = index_stats = None
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
                due = int(elapsed * options.rate) - (produced - len(catalog))
                for _ in range(max(0, due)):
                    kind, key, payload = next(stream)
                    producer.produce(topics[kind], key=key.encode(), value=payload)
                    produced += 1
                    bad_sent += key.startswith("bad-")
                producer.poll(0)
                if elapsed >= next_refresh:
                    worker_stats = _get_json(worker_url)
                    index_stats = _get_json(f"{index_url}/stats")
                    if options.live:
                        live.update(
                            _dashboard(
                                elapsed,
                                produced - len(catalog),
                                bad_sent,
                                worker_stats,
                                index_stats,
                            ),
                            refresh=True,
                        )
                    next_refresh = elapsed + 0.5
                time.sleep(0.01)
            producer.flush(30)
            time.sleep(1.0)  # let the last events through
            worker_stats = _get_json(worker_url)
            index_stats = _get_json(f"{index_url}/stats")
            live.update(
                _dashboard(
                    time.monotonic() - start,
                    produced - len(catalog),
                    bad_sent,
                    worker_stats,
                    index_stats,
                ),
                refresh=True,
            )
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
    producer.flush(30)
    console.print()
    _example_searches(sim, options, console, index_url)


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
            tables.append(results_table(response.json()))
        else:
            console.print(f"[red]{response.status_code}[/] {response.text}")
    console.print(Group(*tables))
