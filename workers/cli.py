"""The ``ecrec-stream`` command line: one entry point for every process."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from ecrec_stream.config import Settings, describe_validation_error, load_settings
from ecrec_stream.exceptions import ConfigError

app = typer.Typer(
    help="Keep e-commerce search models fresh from live Kafka traffic. Settings come from "
    "ECREC_* environment variables (see the README); ECREC_BROKER=kafka://host:port selects "
    "an external Kafka, the default 'embedded' a Tansu broker started by `demo`/`broker`.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

KINDS = ("item", "search", "click", "review")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line saying what went wrong, then exit ``code`` (no traceback)."""
    console.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    """The process's settings; a typo'd variable or a bad value ends the command briefly."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except ValidationError as exc:
        _fail(describe_validation_error(exc), 2)


@contextmanager
def _reaching(what: str, where: str, start: str) -> Iterator[None]:
    """Turn a failure to reach another process (an HTTP service or the broker) into one line
    naming what could not be reached, where, and what to start."""
    import httpx
    from confluent_kafka import KafkaException

    try:
        yield
    except (httpx.HTTPError, KafkaException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(f"cannot reach {what} at {where} ({reason}): {start}")


def _check_broker(bootstrap: str) -> None:
    """Fail fast (a few seconds, one line) when no broker answers at ``bootstrap``."""
    from confluent_kafka.admin import AdminClient

    with _reaching(
        "the broker",
        bootstrap,
        "start one with `ecrec-stream broker` and export the ECREC_BROKER it prints, "
        "or point ECREC_BROKER at your Kafka",
    ):
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=5)


def _publish(bootstrap: str, topic: str, key: str, message: BaseModel, what: str) -> None:
    """Send one contract message and wait for its delivery; one line and exit 1 if it fails."""
    from streams.kafka import new_producer

    producer = new_producer(bootstrap)
    producer.produce(topic, key=key.encode(), value=message.model_dump_json().encode())
    if producer.flush(10):
        _fail(f"the {what} was not delivered to {bootstrap} within 10 s")


def _external_bootstrap(settings: Settings) -> str:
    from streams.kafka import resolve_bootstrap

    if settings.uses_embedded_broker:
        console.print(
            "[red]This command needs a running broker.[/] Start one with "
            "`ecrec-stream broker` and export the ECREC_BROKER=kafka://... it prints, or point "
            "ECREC_BROKER at your Kafka."
        )
        raise typer.Exit(2)
    bootstrap = resolve_bootstrap(settings)
    _check_broker(bootstrap)
    return bootstrap


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="port to listen on (0 = any free port)")] = 9092,
    host: Annotated[str, typer.Option(help="loopback address to bind")] = "127.0.0.1",
    storage: Annotated[
        str,
        typer.Option(
            help="memory://tansu/ (gone on exit) or s3://BUCKET/ in an S3-compatible store "
            "(durable: topics and committed offsets survive a restart; credentials and endpoint "
            "from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
        ),
    ] = "memory://tansu/",
) -> None:
    """Run the embedded Tansu broker in the foreground (in memory by default; --storage
    s3://BUCKET/ makes it durable). SIGINT or SIGTERM stops it; it also stops if this process
    is killed."""
    import signal
    import threading

    from streams.broker import BrokerError, EmbeddedBroker

    # A flag rather than an exception: a signal at any moment (even while the broker starts)
    # ends the loop below and the context manager stops the child.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        embedded = EmbeddedBroker(host, port or None, storage=storage)
    except BrokerError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    with embedded as running:
        console.print(
            f"embedded broker on [bold]{running.url}[/] (storage {storage}); "
            f"export ECREC_BROKER={running.url}. Ctrl-C stops it."
        )
        while not stop.wait(0.2):
            code = running.poll()
            if code is not None:
                console.print(f"[red]the broker exited with code {code}[/]")
                raise typer.Exit(1)


@app.command()
def worker(
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run the Faust stream worker: ingest (validate, route to valid topics or the DLQ), the
    label agents and the drift agent; ECREC_INGEST__ENABLED, ECREC_LABELS__ENABLED and
    ECREC_DRIFT__ENABLED switch each role (docs/operations.md)."""
    from streams.worker import run_worker

    settings = _settings()
    bootstrap = _external_bootstrap(settings)
    # Faust parses sys.argv itself; hand it a clean command line.
    sys.argv = [sys.argv[0], "worker"]
    try:
        run_worker(settings, bootstrap, loglevel=log_level)
    except ConfigError as exc:  # e.g. a topic layout or a setting this broker cannot honour
        _fail(str(exc), 2)


@app.command()
def indexer(
    port: Annotated[int | None, typer.Option(help="HTTP port (default ECREC_INDEX__PORT)")] = None,
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run an index replica: consume all item partitions, keep FAISS fresh, serve /search.

    With ECREC_ROBUSTNESS__ENABLED=true it also mines adversarial training pairs: relevant
    examples whose item its index loses once the query is perturbed go back to
    ecrec.examples for the trainer (turn it on for one replica)."""
    from workers.api import serve_indexer

    _setup_logging(log_level)
    settings = _settings(**({"index": {"port": port}} if port is not None else {}))
    serve_indexer(settings, _external_bootstrap(settings), log_level=log_level)


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="seconds of live traffic (Ctrl-C stops early)")
    ] = 60.0,
    rate: Annotated[float, typer.Option(help="events per second to produce")] = 100.0,
    items: Annotated[int, typer.Option(help="size of the generated catalog")] = 500,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="folder with an Instacart-style products.csv/aisles.csv/departments.csv "
            "instead of a generated catalog"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed of the simulator")] = 11,
    live: Annotated[bool, typer.Option(help="show the live dashboard")] = True,
    shift_at: Annotated[
        float | None,
        typer.Option(
            help="after this many seconds, traffic drifts (other departments, fewer clicks, "
            "worse reviews): watch the drift detectors, the retraining alert, the trainer's "
            "gated retrain and the replica's swap"
        ),
    ] = None,
    retrain_wait: Annotated[
        float,
        typer.Option(help="with --shift-at: seconds to wait after the traffic for the retrain"),
    ] = 240.0,
) -> None:
    """Run everything on the embedded broker: worker, index replica, trainer, simulated shop
    traffic, a live dashboard (ingest, index freshness, labels, drift detectors and alerts,
    retrains and model swaps), then example searches."""
    from workers.demo import DemoOptions, run_demo

    _setup_logging("warning")
    run_demo(
        _settings(),
        DemoOptions(
            duration_s=duration,
            rate=rate,
            n_items=items,
            catalog_dir=catalog,
            seed=seed,
            live=live,
            shift_at=shift_at,
            retrain_wait_s=retrain_wait,
        ),
        console,
    )


@app.command()
def trainer(
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run the trainer: buffer examples from ecrec.examples, retrain on retraining alerts (or
    `ecrec-stream retrain`), gate on held-back data, publish to the registry and ecrec.models."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from workers.trainer import serve_trainer

    _setup_logging(log_level)
    settings = _settings()
    bootstrap = _external_bootstrap(settings)
    progress = Progress(
        TextColumn("fine-tuning"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps, loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
    )
    task_id: list[TaskID] = []

    def on_step(step: int, total: int, loss: float) -> None:
        if step == 1 or not task_id:
            if task_id:
                progress.remove_task(task_id.pop())
            task_id.append(progress.add_task("train", total=total, loss=loss))
        progress.update(task_id[0], completed=step, loss=loss)

    def on_outcome(outcome: object) -> None:
        summary = getattr(outcome, "summary")()  # noqa: B009 - RetrainOutcome, imported lazily
        verdict = "[green]published[/]" if summary["accepted"] else "[yellow]rejected[/]"
        console.print(f"retrain {verdict}: {'; '.join(summary['reasons'])}")

    registry = settings.training.registry_url or settings.registry_dir
    console.print(f"trainer: registry {registry}, state {settings.trainer_dir}")
    with progress:
        serve_trainer(settings, bootstrap, on_step=on_step, on_outcome=on_outcome)


@app.command()
def retrain(
    reason: Annotated[str, typer.Option(help="why (kept with the request)")] = "manual request",
    wait: Annotated[
        float, typer.Option(help="seconds to wait for the trainer's answer (0: do not wait)")
    ] = 0.0,
) -> None:
    """Ask the running trainer for a retrain now (a request on ecrec.alerts); with --wait,
    print whether the new model was published or why it was rejected."""
    from ecrec_stream.contracts import RetrainRejected, RetrainRequest
    from workers.trainer import wait_for_answer

    settings = _settings()
    bootstrap = _external_bootstrap(settings)
    from streams.kafka import ensure_topics

    request = RetrainRequest.new(reason)
    ensure_topics(bootstrap, [settings.topics.alerts], settings.partitions)
    _publish(bootstrap, settings.topics.alerts, request.alert_id, request, "request")
    console.print(f"retrain requested: {request.alert_id}")
    if wait <= 0:
        return
    answer = wait_for_answer(settings, bootstrap, request.alert_id, wait)
    if answer is None:
        console.print(f"[yellow]no answer within {wait:.0f} s[/]: is a trainer running?")
        raise typer.Exit(1)
    if isinstance(answer, RetrainRejected):
        console.print(f"[yellow]rejected[/]: {answer.reason}")
        raise typer.Exit(3)
    console.print(f"[green]published[/] version {answer.version}: {answer.metrics}")


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="JSONL (one event per line) or CSV file")],
    topic: Annotated[str, typer.Option(help="input kind (item/search/click/review) or a topic")],
    key_field: Annotated[
        str | None,
        typer.Option(
            help="field used as message key (default: item_id for items/reviews, else session_id)"
        ),
    ] = None,
) -> None:
    """Feed a JSONL or CSV file into a topic (records are sent as-is; the worker validates)."""
    from workers.replay import replay_file

    settings = _settings()
    sent = replay_file(file, topic, settings, _external_bootstrap(settings), key_field=key_field)
    console.print(f"sent {sent} records")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="free-text query")],
    k: Annotated[int, typer.Option(help="number of results")] = 10,
    url: Annotated[str, typer.Option(help="index replica base URL")] = "http://127.0.0.1:8080",
    mode: Annotated[
        str | None,
        typer.Option(
            help="hybrid (BM25 + vectors, fused), dense or lexical; default: the replica's "
            "ECREC_INDEX__SEARCH_MODE"
        ),
    ] = None,
) -> None:
    """Query a running index replica and print the results (with the rank each retriever
    gave them)."""
    import httpx

    params: dict[str, str | int] = {"q": query, "k": k}
    if mode:
        params["mode"] = mode
    with _reaching("an index replica", url, "start one with `ecrec-stream indexer` or pass --url"):
        response = httpx.get(f"{url.rstrip('/')}/search", params=params, timeout=10)
    if response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    from workers.demo import results_table

    console.print(results_table(response.json()))


@app.command()
def recommend(
    item: Annotated[str | None, typer.Option(help="similar to / bought with this item id")] = None,
    session: Annotated[str | None, typer.Option(help="next items for this live session")] = None,
    items: Annotated[
        str | None, typer.Option(help="next items for these comma-separated item ids")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="similar, bought_together or next (default: similar for --item)"),
    ] = None,
    k: Annotated[int, typer.Option(help="number of results")] = 10,
    category: Annotated[str | None, typer.Option(help="only items of this category")] = None,
    url: Annotated[str, typer.Option(help="index replica base URL")] = "http://127.0.0.1:8080",
) -> None:
    """Recommendations from a running index replica: similar or bought-together items
    (--item), the next items for a live session (--session) or for a list of items (--items);
    each result says which source found it and why."""
    import httpx

    if sum(x is not None for x in (item, session, items)) != 1:
        _fail("give exactly one of --item, --session, --items", 2)
    base = url.rstrip("/")
    with _reaching("an index replica", url, "start one with `ecrec-stream indexer` or pass --url"):
        if items is not None:
            body: dict[str, Any] = {
                "item_ids": [i.strip() for i in items.split(",") if i.strip()],
                "k": k,
                "kind": kind or "next",
                "category": category,
            }
            response = httpx.post(f"{base}/recommend", json=body, timeout=10)
        else:
            params: dict[str, Any] = {"k": k}
            params.update({"item_id": item} if item else {"session_id": session})
            params.update({key: v for key, v in (("kind", kind), ("category", category)) if v})
            response = httpx.get(f"{base}/recommend", params=params, timeout=10)
    if response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    from workers.demo import recommend_table

    console.print(recommend_table(response.json()))


@app.command()
def status(
    url: Annotated[
        str | None, typer.Option(help="stream worker base URL (default: ECREC_WORKER_WEB_PORT)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
) -> None:
    """Show the drift detectors' latest statistics against their thresholds and the recent
    retraining alerts of a running stream worker."""
    import httpx

    base = url or f"http://127.0.0.1:{_settings().worker_web_port}"
    with _reaching("a stream worker", base, "start one with `ecrec-stream worker` or pass --url"):
        response = httpx.get(f"{base.rstrip('/')}/ecrec/drift", timeout=10)
    if response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    body = response.json()
    if as_json:
        console.print_json(json.dumps(body))
        return
    from workers.demo import alerts_table, drift_table

    if not body.get("enabled"):
        console.print("drift detection is off (ECREC_DRIFT__ENABLED=false)")
        return
    console.print(drift_table(body))
    counts = body.get("counts", {})
    console.print(
        f"observed {counts.get('events', 0):,} events, up to event time "
        f"{body.get('observed_until') or '-'}; {body.get('waiting', 0):,} waiting for slower "
        "inputs (event-time merge)"
    )
    console.print(alerts_table(body.get("alerts", [])))


@app.command()
def models(
    registry: Annotated[
        Path | None,
        typer.Option(
            help="registry directory (default: ECREC_TRAINING__REGISTRY_URL's store, else "
            "<ECREC_DATA_DIR>/models)"
        ),
    ] = None,
    use: Annotated[
        str | None,
        typer.Option(help="make this published version the serving one (a rollback, too)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the manifests as JSON")] = False,
) -> None:
    """List the published versions (encoders and learned fusions) with their metrics, or switch
    the serving one of a kind (a rollback, too)."""
    from rich.table import Table

    from ecrec_stream.training.registry import ArtifactError, ModelRegistry, open_registry

    reg = ModelRegistry(registry) if registry is not None else open_registry(_settings())
    if use is not None:
        try:
            reg.set_current(use)
        except ArtifactError as exc:
            console.print(f"[red]refused[/]: {exc}")
            raise typer.Exit(1) from exc
        console.print(f"serving version is now [bold]{use}[/]")
        settings = _settings()
        if settings.uses_embedded_broker:
            console.print(
                "ECREC_BROKER is not set: running replicas were not told (they load it on "
                "their next publication or restart from the registry)"
            )
            return
        from ecrec_stream.contracts import ModelPublication
        from streams.kafka import resolve_bootstrap

        manifest = reg.manifest(use)
        publication = ModelPublication.of(manifest, trigger="rollback", kind="rollback")
        bootstrap = resolve_bootstrap(settings)
        _check_broker(bootstrap)
        _publish(bootstrap, settings.topics.models, manifest.name, publication, "announcement")
        console.print(f"announced on {settings.topics.models}: replicas swap to {use}")
        return
    serving = {reg.current(), reg.current_fusion()} - {None}
    if as_json:
        rows = [
            {**m.model_dump(mode="json"), "serving": m.version in serving} for m in reg.versions()
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"model versions in {reg.location} (* serving)")
    for col in ("", "version", "artifact", "name", "parent", "created", "metrics"):
        table.add_column(col, no_wrap=col == "version", overflow="fold")
    for m in reg.versions():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.metrics.items()))
        table.add_row(
            "*" if m.version in serving else "",
            m.version,
            m.artifact,
            m.name,
            m.parent_version or "-",
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            metrics or "-",
        )
    console.print(table)


@app.command()
def config() -> None:
    """Print the effective settings (from ECREC_* variables) as JSON."""
    console.print_json(json.dumps(_settings().model_dump(mode="json")))


if __name__ == "__main__":
    app()
