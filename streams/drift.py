"""The drift agent: validated searches, clicks and reviews -> :class:`DriftMonitor` -> a report
per closed window on ``ecrec.drift`` and retraining alerts on ``ecrec.alerts`` (plus an optional
webhook).

State (references, open windows, alert policy) is snapshotted to
``<data_dir>/drift/monitor.state`` (:mod:`ecrec_stream.state`, no pickle) with the last consumed
offset of every partition: after a restart, redelivered messages at or below those offsets are
skipped, so a window is never counted twice and an alert never raised twice. An alert is sent,
then the snapshot written at once; only a crash between the two re-sends it, with the same
``alert_id`` (consumers drop it by id). A crash loses at most ``snapshot_interval_s`` of drift
observations, never training data. Each worker monitors the partitions it is assigned (with one
worker: all of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge

from ecrec_stream.config import Settings
from ecrec_stream.contracts import DriftReport, ModelPublication
from ecrec_stream.contracts.events import AnyEvent, EventBatch
from ecrec_stream.drift import DriftMonitor, MonitorStep, RetrainingAlert
from ecrec_stream.drift.monitor import STATE_KIND, STATE_VERSION
from ecrec_stream.drift.stage import DriftRecord, DriftStage
from ecrec_stream.state import StateError, load_state, save_state
from streams.catalog import CatalogCache, SharedModelWork
from streams.failstop import stop_on_error

LOG = logging.getLogger(__name__)


@dataclass
class DriftRuntime:
    """What the drift agent shares with the worker's web pages."""

    monitor: DriftMonitor
    registry: CollectorRegistry
    catalog: CatalogCache
    status: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class DriftMetrics:
    """Prometheus gauges for every detector's statistic and threshold, and alert counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.statistic = Gauge(
            "ecrec_drift_statistic", "Latest window statistic", ["detector"], registry=registry
        )
        self.threshold = Gauge(
            "ecrec_drift_threshold", "Calibrated threshold", ["detector"], registry=registry
        )
        self.drifted = Gauge(
            "ecrec_drift_drifted", "1 if the latest window drifted", ["detector"], registry=registry
        )
        self.alerts = Counter("ecrec_drift_alerts", "Retraining alerts sent", registry=registry)
        self.windows = Counter(
            "ecrec_drift_windows", "Windows closed", ["detector"], registry=registry
        )

    def record(self, step: MonitorStep) -> None:
        for r in step.results:
            self.statistic.labels(r.detector).set(r.statistic)
            self.threshold.labels(r.detector).set(r.threshold)
            self.drifted.labels(r.detector).set(float(r.drifted))
            self.windows.labels(r.detector).inc()
        self.alerts.inc(len(step.alerts))


async def post_webhook(url: str, alert: RetrainingAlert, timeout_s: float, retries: int) -> bool:
    """POST the alert as JSON, retrying with backoff; never raises (logged instead)."""
    import httpx

    body = alert.model_dump(mode="json")
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for attempt in range(retries + 1):
            try:
                response = await client.post(url, json=body)
                if response.status_code < 500:
                    return response.is_success
            except httpx.HTTPError as exc:
                LOG.warning("webhook try %d for %s: %s", attempt + 1, alert.alert_id, exc)
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
    LOG.error("webhook gave up on alert %s", alert.alert_id)
    return False


def _events(value: bytes) -> list[AnyEvent] | None:
    try:
        return list(EventBatch.model_validate_json(value).events)
    except ValueError:
        return None


def add_drift_agent(app: faust.App, settings: Settings, shared: SharedModelWork) -> DriftRuntime:
    """Register the drift agent on ``app``; returns what the web pages show."""
    cfg = settings.drift
    names = settings.topics
    input_topics = (names.valid_searches, names.valid_clicks, names.valid_reviews)
    monitor = DriftMonitor(
        cfg,
        encode=shared.encoder.encode,
        category_of=shared.catalog.category,
        model_version=settings.embedding.model,
        encoder_version=shared.encoder.version,
        inputs=tuple(f"{topic}:{p}" for topic in input_topics for p in range(settings.partitions)),
        click_inputs=tuple(f"{names.valid_clicks}:{p}" for p in range(settings.partitions)),
    )
    stage = DriftStage(monitor)
    path = settings.data_dir / "drift" / "monitor.state"
    try:
        saved = load_state(path, kind=STATE_KIND, version=STATE_VERSION)
    except StateError as exc:  # an older worker's state: references fill again from traffic
        LOG.warning("drift state not restored (%s): the detectors start afresh", exc)
        saved = None
    if saved is not None:
        stage.load_state(saved)
        LOG.info("drift monitor restored from %s (offsets %s)", path, dict(stage.offsets))
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry)
    runtime = DriftRuntime(monitor, registry, shared.catalog, monitor.status())
    drift_topic = app.topic(names.drift, value_serializer="raw", key_serializer="raw")
    alerts_topic = app.topic(names.alerts, value_serializer="raw", key_serializer="raw")
    inputs = app.topic(*input_topics, value_serializer="raw", key_serializer="raw")
    last_save = time.monotonic()
    dirty = False  # observed since the last snapshot
    pending: set[asyncio.Task[bool]] = set()

    def observe_messages(records: list[tuple[str, int, int, bytes]]) -> tuple[MonitorStep, Any]:
        """Decode a micro-batch of ``EventBatch`` messages (topic, partition, offset, value)
        and hand it to the stage. Runs on drift's model thread: one hand-off per micro-batch, not
        per message (per message, the drift agent queued behind the label agents' model work
        and fell minutes behind in the demo)."""
        decoded = [
            DriftRecord(topic, part, offset, _events(value))
            for topic, part, offset, value in records
        ]
        step = stage.observe_many(decoded)
        for name, n in step.counts.items():
            runtime.stats[name] += n
        return step, monitor.status()

    def snapshot() -> None:
        save_state(path, stage.state_dict(), kind=STATE_KIND, version=STATE_VERSION)

    async def save(force: bool = False) -> None:
        """Snapshot now if forced, else if there is something new and the interval is up."""
        nonlocal last_save, dirty
        if force or (dirty and time.monotonic() - last_save >= cfg.snapshot_interval_s):
            await shared.off_loop("drift", snapshot)
            last_save, dirty = time.monotonic(), False

    async def emit(step: MonitorStep) -> None:
        """Send the step's window reports and alerts (alerts flushed before the snapshot that
        records them as sent)."""
        metrics.record(step)
        for r in step.results:
            report = DriftReport(**r.as_dict(), model_version=monitor.model_version)
            await drift_topic.send(
                key=f"{r.detector}:{monitor.model_version}:{r.window}".encode(),
                value=report.model_dump_json().encode(),
            )
        for alert in step.alerts:
            await alerts_topic.send(
                key=alert.alert_id.encode(), value=alert.model_dump_json().encode()
            )
            LOG.warning("retraining alert %s: %s", alert.alert_id, alert.reason)
            if cfg.webhook_url:
                task = asyncio.ensure_future(
                    post_webhook(cfg.webhook_url, alert, cfg.webhook_timeout_s, cfg.webhook_retries)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
        if step.alerts:
            await app.producer.flush()
        await save(force=bool(step.alerts))

    def tick() -> tuple[MonitorStep, dict[str, Any], bool]:
        before = monitor.counts["events"]
        step = monitor.tick()
        return step, monitor.status(), monitor.counts["events"] != before

    async def drift(stream: faust.StreamT) -> None:
        nonlocal dirty
        # take_events (not take): each record's partition and offset, for the redelivery check
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from faust's stubs
            cfg.batch_max, within=cfg.batch_wait_s
        )
        async for events in batches:
            with stop_on_error("drift"):
                records = [
                    (e.message.topic, e.message.partition, e.message.offset, e.value)
                    for e in events
                ]
                step, runtime.status = await shared.off_loop("drift", observe_messages, records)
                dirty = True
                await emit(step)

    @app.timer(min(1.0, cfg.snapshot_interval_s))
    async def when_idle() -> None:
        """Release events held for inputs that went quiet; snapshot once the interval is up."""
        nonlocal dirty
        with stop_on_error("drift timer"):
            step, runtime.status, changed = await shared.off_loop("drift", tick)
            dirty = dirty or changed
            await emit(step)

    models_topic = app.topic(names.models, value_serializer="raw", key_serializer="raw")

    def rebase(version: str) -> dict[str, Any]:
        monitor.rebase(version)
        return monitor.status()

    async def follow_models(stream: faust.StreamT) -> None:
        """After a publication the references start again: the traffic from now on is what
        the new model was trained on (its training window ends at the publication)."""
        async for value in stream:
            with stop_on_error("drift.models"):
                try:
                    publication = ModelPublication.model_validate_json(value)
                except ValueError:
                    runtime.stats["skipped_model_messages"] += 1
                    continue
                if publication.artifact != "encoder":
                    continue  # a learned fusion: the encoder, hence the embeddings, stay
                if publication.version == monitor.model_version:
                    continue  # already rebased (a redelivery, or a restart after the rebase)
                runtime.status = await shared.off_loop("drift", rebase, publication.version)
                runtime.stats["rebases"] += 1
                LOG.warning("drift references rebased for model %s", publication.version)
                await save(force=True)

    app.agent(inputs, name="ecrec.drift")(drift)
    app.agent(models_topic, name="ecrec.drift.models")(follow_models)
    return runtime
