"""The Faust stream worker: one ingest agent per input topic.

Each agent reads raw bytes in micro-batches, calls
:func:`ecrec_stream.ingest.validation.validate_many` and emits two things: one
:class:`~ecrec_stream.contracts.events.EventBatch` per input partition and micro-batch to the
matching ``valid_*`` topic (same partition number, so per-key order holds), and one
:class:`~ecrec_stream.contracts.events.DeadLetter` per rejected record to the DLQ topic.

Delivery is at-least-once. Faust acknowledges a ``take_events`` batch when the loop body
returns *or raises*, and commits acknowledged offsets after flushing the producer. So the body
must not raise after a partial send: bad input never raises (it becomes a dead letter), and an
unexpected error stops the process at once (exit code 70) before any offset is committed; the
restarted worker redelivers the batch and downstream consumers drop duplicates by event id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from ecrec_stream.config import Settings
from ecrec_stream.contracts.events import DeadLetterReason, SourcePosition
from ecrec_stream.contracts.http import DriftStatus, WorkerStats, bearer_token_ok
from ecrec_stream.exceptions import ConfigError
from ecrec_stream.ingest.batching import event_batch_messages
from ecrec_stream.ingest.validation import RawRecord, make_dead_letter, validate_many
from streams.capabilities import (
    NO_WATERMARKS,
    BrokerCapabilities,
    LagMonitor,
    committed_offsets,
    last_record_ends,
    probe_capabilities,
)
from streams.failstop import stop_on_error
from streams.process import gc_pauses, running_event_loop
from streams.stalls import PartitionProgress, StallGuard

LOG = logging.getLogger(__name__)


@dataclass
class IngestCounters:
    """Per-kind counts since this worker started (served at ``/ecrec/stats``)."""

    valid: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "valid": dict(self.valid),
            "dead": dict(self.dead),
            "dead_reasons": dict(self.dead_reasons),
            "batches": dict(self.batches),
            "messages": dict(self.messages),
        }


def _records(events: Sequence[EventT]) -> list[RawRecord]:
    return [
        RawRecord(
            value=e.message.value,
            key=e.message.key,
            position=SourcePosition(
                topic=e.message.topic, partition=e.message.partition, offset=e.message.offset
            ),
        )
        for e in events
    ]


def cap_faust_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's consumer use ``fetch_max_wait_ms=max_wait_ms``.

    faust-streaming hard-codes ``fetch_max_wait_ms=1500`` when it builds its aiokafka consumer
    and offers no setting for it. Tansu answers a fetch only when that wait expires (measured:
    produce->consume p50 86 ms at 50 ms, 3.2 s at 1500 ms), which alone would put the stream
    worker's hop at ~0.5 s. So the driver module gets an aiokafka namespace whose consumer
    class overrides that one argument. Nothing else in the process is affected. On Apache Kafka
    a fetch returns as soon as data arrives, so a short wait only costs idle fetch requests.
    """
    import types

    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    class _Consumer(aiokafka.AIOKafkaConsumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = max_wait_ms
            super().__init__(*args, **kwargs)

    shim = types.ModuleType("aiokafka")
    shim.__dict__.update(aiokafka.__dict__)
    shim.AIOKafkaConsumer = _Consumer  # type: ignore[attr-defined]
    driver.aiokafka = shim


def never_commit_past_unread_records() -> None:
    """Make Faust commit no offset past a record that no agent has acknowledged.

    Two faust-streaming rules did. Its delivery loop treats a jump in a partition's offsets (a
    record arriving more than one past the last read) as records that will never come
    (compacted topics, transaction markers) and counts them as acknowledged ("gaps"). None of
    the topics the agents read is compacted or transactional, so a jump there is Faust's own
    rebalance race (streams/stalls.py): records fetched but not delivered, which were then
    committed unprocessed and, once re-fetched, dropped as already read (1 of 900 reviews never
    labelled after a worker was killed, 1 run in 3 on Kafka 3.9, tests/test_scaleout.py). And
    its commit rule (``Consumer._new_offset``) commits the first run of acknowledged offsets
    even when the record at the committed offset is not among them: it checks the head only
    when something was committed before (not on a partition new to its owner, whose first
    records a takeover may not have delivered yet), and then only for a hole of two records or
    more (``min(acked) - committed > 1``): traced on Kafka 3.9, a survivor committed a
    taken-over partition past 8 validated review batches its label agent never saw.

    Here no gap counts as acknowledged, and the committed run must start exactly at the
    committed offset, or at the partition's first offset (:func:`record_log_starts`) when
    nothing was committed yet. The commit then stops before the missing records, and Faust's
    seek or the stall guard re-reads them (at-least-once). Tables' changelogs are not
    acknowledged by agents, so their recovery is not affected. Checked against faust-streaming
    0.15 (the pin), which calls ``_add_gap`` only from its delivery loop.
    """
    from faust.transport.consumer import Consumer
    from faust.utils.functional import consecutive_numbers

    async def _record_no_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        LOG.info("%s: offsets %d-%d skipped in delivery; not counted as acknowledged",
                 tp, offset_from, offset_to)  # fmt: skip

    def _next_commit(self: Any, tp: Any) -> int | None:
        """The offset to commit for ``tp``: one past the run of acknowledged offsets that starts
        at the committed offset (or, with none committed yet, at the partition's first offset,
        :func:`record_log_starts`); None while the record there is not acknowledged."""
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        committed = self._committed_offset[tp]
        log_start = LOG_STARTS.get(tp)
        if committed is None and log_start is None:
            return None  # where the partition starts is not known yet: commit nothing
        start = max(x for x in (committed, log_start) if x is not None)
        if acked[0] > start:
            return None  # the record at ``start`` is still out: never commit past it
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    Consumer._add_gap = _record_no_gap  # type: ignore[method-assign]
    Consumer._new_offset = _next_commit  # type: ignore[method-assign]


# A partition's first offset (the log start), for the commit rule above: filled by the
# worker's timer (record_log_starts).
LOG_STARTS: dict[Any, int] = {}


async def record_log_starts(consumer: Any) -> None:
    """Ask the broker (one request) for the first offset of every assigned partition whose
    commit waits on it: acknowledged records but nothing committed and no start known yet, or
    acknowledged records all past the commit and the known start (retention may have removed
    records past the commit). Nothing is asked while every commit can go ahead."""
    waiting = []
    for tp in consumer.assignment():
        acked = consumer._acked.get(tp)
        if not acked:
            continue
        known = [
            x for x in (consumer._committed_offset.get(tp), LOG_STARTS.get(tp)) if x is not None
        ]
        if not known or min(acked) > max(known):
            waiting.append(tp)
    if waiting:
        LOG_STARTS.update(await consumer.earliest_offsets(*waiting))


def never_ack_skipped_records() -> None:
    """Make Faust leave the records its streams skip unacknowledged.

    faust-streaming's stream skips a record taken from its queue while the app's flow control
    is paused or that was fetched under an earlier consumer generation (a rebalance in
    between), and acknowledges it anyway ("otherwise the lag would increase"): its offset is
    committed and the record is never processed. During a rebalance Faust resumes the stream
    partitions before it seeks them (faust-streaming#596), so records fetched from the old
    positions reach the queues while flow control is still paused: traced on Kafka 3.9
    (tests/test_scaleout.py), a survivor acknowledged 7 validated review batches it had taken
    over without its label agent seeing them, and the reviews that no re-read raw batch
    carried again were never labelled (1 of 900, 1 run in 3). Unacknowledged, they stop the
    commits there; Faust's seek or the stall guard (streams/stalls.py) re-reads them. A record
    processed to the end while a rebalance starts is not acknowledged either: re-read, its
    outputs repeat under the same ids (at-least-once). Checked against faust-streaming 0.15
    (the pin), whose streams acknowledge through ``Event.ack``.
    """
    from faust.events import Event

    if getattr(Event.ack, "ecrec_patched", False):
        return
    acknowledge = Event.ack

    def ack_unless_skipped(self: Any) -> bool:
        app, generation = self.app, self.message.generation_id
        if not app.flow_control.is_active() or (
            generation is not None and generation != app.consumer_generation_id
        ):
            return False
        return bool(acknowledge(self))

    ack_unless_skipped.ecrec_patched = True  # type: ignore[attr-defined]
    Event.ack = ack_unless_skipped  # type: ignore[method-assign]


# The apps whose table recovery reads changelogs to their last record, with their bootstrap.
_LAST_RECORD_ENDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def recover_tables_to_the_last_record(app: faust.App, bootstrap: str) -> None:
    """Make ``app``'s table recovery read each changelog to its last record on a broker whose
    end offsets are the last record batch's base offset + 1 (Tansu, docs/broker.md).

    Faust recovers a table by reading its changelog up to the end offset its consumer's
    ``highwaters`` reports (faust/tables/recovery.py). Tansu's leaves out the other records of
    the last batch (a table came back with 19,999 of 20,000 keys); the worker used to write one
    record per producer batch to keep recovery exact, at one produce request per table write.
    Here the app's ``highwaters`` reads those last batches instead
    (:func:`streams.capabilities.last_record_ends`): Faust's public consumer method is wrapped
    for this app only. Checked against faust-streaming 0.15 (the pin), whose recovery asks
    nothing else for its ends.
    """
    from faust.transport.consumer import ThreadDelegateConsumer

    _LAST_RECORD_ENDS[app] = bootstrap
    if getattr(ThreadDelegateConsumer.highwaters, "ecrec_patched", False):
        return
    reported_ends = ThreadDelegateConsumer.highwaters

    async def highwaters(self: Any, *partitions: Any) -> Mapping[Any, int]:
        ends = await reported_ends(self, *partitions)
        bootstrap = _LAST_RECORD_ENDS.get(self.app)
        if bootstrap is None:
            return ends
        reported = {(tp.topic, tp.partition): end for tp, end in ends.items() if end is not None}
        exact = await asyncio.to_thread(last_record_ends, bootstrap, reported)
        return {tp: exact.get((tp.topic, tp.partition), end) for tp, end in ends.items()}

    highwaters.ecrec_patched = True  # type: ignore[attr-defined]
    ThreadDelegateConsumer.highwaters = highwaters  # type: ignore[method-assign]


def require_token(app: faust.App, expected: str) -> None:
    """ECREC_API__TOKEN: every page of the worker's web server (its own and Faust's) answers
    401 without ``Authorization: Bearer <token>`` (or ``?token=``)."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if not bearer_token_ok(
            expected, request.headers.get("Authorization"), request.query.get("token")
        ):
            return web.json_response(
                {"detail": "a bearer token is required (ECREC_API__TOKEN)"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        response: web.StreamResponse = await handler(request)
        return response

    app.web.web_app.middlewares.append(check)  # type: ignore[attr-defined]


def create_app(
    settings: Settings, bootstrap: str, capabilities: BrokerCapabilities | None = None
) -> faust.App:
    """Build the Faust app for ``settings`` against ``bootstrap`` (host:port list), with the
    broker's measured ``capabilities`` (probed here when not given)."""
    cap_faust_fetch_wait(settings.ingest.fetch_max_wait_ms)
    never_commit_past_unread_records()
    never_ack_skipped_records()
    labels = settings.labels.enabled
    capabilities = capabilities or probe_capabilities(bootstrap)
    if settings.ingest.auto_offset_reset == "latest" and not capabilities.exact_end_offsets:
        raise ConfigError(
            f"ECREC_INGEST__AUTO_OFFSET_RESET=latest needs a broker whose end offsets are high "
            f"watermarks; {NO_WATERMARKS}"
        )
    # Faust creates only the last folder of its datadir.
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    web_enabled = settings.worker_web_port != 0
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        # The session table lives in RocksDB so a restart does not replay its whole changelog
        # (compacted on Kafka; Tansu does not compact). Faust declares changelogs compacted.
        store="rocksdb://" if labels else "memory://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        topic_replication_factor=capabilities.replication,
        topic_allow_declare=True,
        # Tansu holds JoinGroup for ~session_timeout/2 (docs/broker.md): keep both short.
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset=settings.ingest.auto_offset_reset,
        # On a rebalance, do not wait for every in-flight event to be acknowledged: an event
        # buffered by take_events() is acknowledged only after its batch is yielded, and a
        # survivor of a killed worker was seen waiting on such events for minutes (never taking
        # over the dead worker's partitions; tests/test_scaleout.py). Only acknowledged offsets
        # are committed, so the new owner redelivers the rest: at-least-once, and every output
        # id is deterministic (docs/delivery.md).
        stream_wait_empty=False,
        # Faust rejects port 0 even with the web server off; 0 means "no web server" here.
        web_port=settings.worker_web_port if web_enabled else 6066,
        web_host="127.0.0.1",
        web_enabled=web_enabled,
        # Every message is packed under max_message_bytes (ecrec_stream.ingest.batching); the
        # producer's own limit must admit that plus its record overhead.
        producer_max_request_size=settings.max_message_bytes + 65_536,
        # batches of the many small sends (changelog writes above all): fewer produce requests
        producer_linger=settings.producer_linger_ms / 1000,
    )
    if not capabilities.exact_end_offsets:
        recover_tables_to_the_last_record(app, bootstrap)
    if settings.api.token is not None and web_enabled:
        require_token(app, settings.api.token.get_secret_value())
    counters = IngestCounters()
    names = settings.topics
    stall_guard: StallGuard[Any] = StallGuard(settings.ingest.stall_reread_s)

    @app.timer(2.0)
    async def note_log_starts() -> None:
        """A partition whose commit waits on its first offset learns it within 2 s."""
        if app.rebalancing:
            return
        try:
            await record_log_starts(app.consumer)
        except Exception as exc:  # the broker may be busy; the next tick asks again
            LOG.info("could not read partitions' first offsets yet: %s", exc)

    if settings.ingest.stall_reread_s > 0:

        @app.timer(max(1.0, settings.ingest.stall_reread_s / 4))
        async def reread_stalled_partitions() -> None:
            """streams/stalls.py: Faust's committed and read offsets per partition (private
            attributes of faust-streaming 0.15; the pin keeps them) and the broker's end offsets
            (from the lag monitor); a stalled partition is resumed and re-read."""
            consumer: Any = app.consumer
            if app.rebalancing:
                return
            ends = lag.ends or {}
            assigned = [tp for tp in consumer.assignment() if tp.topic in read_by_agents]
            # acknowledgements so far per topic: committed offsets plus records acknowledged
            # past them (a commit moves records from the second to the first: the sum only
            # grows), summed over the topics of every agent reading the topic
            acks: dict[str, int] = defaultdict(int)
            for tp in assigned:
                acks[tp.topic] += (consumer._committed_offset.get(tp) or 0) + len(
                    consumer._acked.get(tp) or ()
                )
            agent_acks: dict[str, int] = defaultdict(int)
            for topics in topics_of_agents:
                for topic in topics:
                    agent_acks[topic] += sum(acks[t] for t in topics)
            progress = {
                tp: PartitionProgress(
                    consumer._committed_offset.get(tp),
                    consumer._read_offset.get(tp),
                    ends.get(tp.topic, {}).get(tp.partition),
                    agent_acks.get(tp.topic, 0),
                )
                for tp in assigned
            }
            for tp in stall_guard.stalled(progress, time.monotonic()):
                state, start = progress[tp], progress[tp].committed or 0
                LOG.warning(
                    "%s:%d: no progress for %.0f s with records past the committed offset %s "
                    "(read %s, end %s); resuming it and re-reading from %s (streams/stalls.py)",
                    tp.topic,
                    tp.partition,
                    stall_guard.stall_s,
                    state.committed,
                    state.read,
                    state.end,
                    start,
                )
                consumer.resume_partitions({tp})
                await consumer.seek(tp, start)

    dlq = app.topic(names.dlq, value_serializer="raw", key_serializer="raw")
    for kind, (source_name, valid_name) in names.routes().items():
        if settings.ingest.enabled:
            _add_ingest_agent(app, settings, counters, kind, source_name, valid_name, dlq)
    runtime = drift = None
    if labels or settings.drift.enabled:
        from streams.catalog import SharedModelWork

        shared = SharedModelWork(settings, bootstrap)

        @app.task
        async def start_catalog_cache() -> None:
            shared.catalog.start()

        if labels:
            from streams.labels import add_label_agents

            runtime = add_label_agents(app, settings, shared)
        if settings.drift.enabled:
            from streams.drift import add_drift_agent

            drift = add_drift_agent(app, settings, shared)

    # The group's lag is over what its agents read, taken from the agents themselves: a topic
    # no agent reads (valid items: the catalog cache reads them without a group) would show as
    # forever behind, and one the labels or drift agents read exists only when they are on.
    topics_of_agents = [tuple(agent.get_topic_names()) for agent in app.agents.values()]
    read_by_agents = sorted({t for topics in topics_of_agents for t in topics})
    lag = LagMonitor(
        bootstrap,
        read_by_agents,
        lambda: committed_offsets(bootstrap, settings.app_id, read_by_agents),
        reader=f"group:{settings.app_id}",
    )

    @app.task
    async def start_lag_monitor() -> None:
        lag.start()  # a thread of its own: broker round trips never block the event loop

    pauses = gc_pauses()

    @app.page("/ecrec/stats")
    async def stats(web: Any, request: Any) -> Any:
        # ``assigned`` > 0 once the consumer group has handed this worker its partitions.
        assignment = app.consumer.assignment()
        partitions: dict[str, list[int]] = defaultdict(list)
        for tp in sorted(assignment):
            partitions[tp.topic].append(tp.partition)
        answer = WorkerStats(
            **counters.as_dict(),
            assigned=len(assignment),
            partitions=partitions,
            labels=runtime.as_dict() if runtime else {},
            lag=lag.as_dict(),
            broker=capabilities.as_dict(),
            rereads={f"{tp.topic}:{tp.partition}": n for tp, n in stall_guard.rereads.items()},
            event_loop=running_event_loop(),
            gc=pauses.as_dict(),
        )
        return web.json(answer.model_dump(mode="json"))

    @app.page("/ecrec/drift")
    async def drift_status(web: Any, request: Any) -> Any:
        answer = DriftStatus(
            enabled=drift is not None,
            **(drift.status if drift else {}),
            stats=dict(drift.stats) if drift else {},
            catalog_items=len(drift.catalog) if drift else 0,
        )
        return web.json(answer.model_dump(mode="json"))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        from prometheus_client import REGISTRY, generate_latest

        # process metrics and consumer lag (default registry) and the drift detectors' own
        body = generate_latest(REGISTRY) + (generate_latest(drift.registry) if drift else b"")
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    return app


def _add_ingest_agent(
    app: faust.App,
    settings: Settings,
    counters: IngestCounters,
    kind: str,
    source_name: str,
    valid_name: str,
    dlq: faust.TopicT,
) -> None:
    source = app.topic(source_name, value_serializer="raw", key_serializer="raw")
    valid = app.topic(valid_name, value_serializer="raw", key_serializer="raw")
    cfg = settings.ingest

    wait_s = cfg.batch_wait_s if kind == "item" else cfg.event_batch_wait_s

    async def ingest(stream: faust.StreamT) -> None:
        # take_events (not take): it keeps each record's partition and offset for the DLQ.
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from faust's stubs
            cfg.batch_max, within=wait_s
        )
        async for events in batches:
            with stop_on_error(f"ingest.{kind}"):
                await _ingest_batch(kind, _records(events), valid, dlq, counters, settings)

    app.agent(source, name=f"ecrec.ingest.{kind}")(ingest)


async def _ingest_batch(
    kind: str,
    records: list[RawRecord],
    valid: faust.TopicT,
    dlq: faust.TopicT,
    counters: IngestCounters,
    settings: Settings,
) -> None:
    by_partition: dict[int, list[RawRecord]] = defaultdict(list)
    for record in records:
        by_partition[record.position.partition].append(record)
    for partition, part_records in by_partition.items():
        # Validation never raises (a record that makes it raise is a dead letter); a send that
        # fails below is an infrastructure failure and stops the worker (fail_stop).
        outcome = validate_many(
            kind,
            part_records,
            max_payload_bytes=settings.ingest.max_payload_bytes,
            max_raw_bytes=settings.ingest.dlq_max_raw_bytes,
        )
        messages, oversized = event_batch_messages(
            kind, outcome.valid, outcome.positions, settings.max_message_bytes
        )
        by_position = {r.position: r for r in part_records} if oversized else {}
        dead = list(outcome.dead) + [
            make_dead_letter(
                by_position[outcome.positions[i]],
                kind,
                DeadLetterReason.OVERSIZED,
                "validated event does not fit ECREC_MAX_MESSAGE_BYTES="
                f"{settings.max_message_bytes}",
                max_raw_bytes=settings.ingest.dlq_max_raw_bytes,
            )
            for i in oversized
        ]
        for letter in dead:
            await dlq.send(
                key=letter.dead_letter_id.encode(),
                value=letter.model_dump_json().encode(),
            )
        for first, body in messages:
            await valid.send(
                key=f"{kind}:{partition}:{first.offset}".encode(),
                value=body,
                partition=partition,
            )
        counters.valid[kind] += len(outcome.valid) - len(oversized)
        counters.dead[kind] += len(dead)
        for letter in dead:
            counters.dead_reasons[letter.reason.value] += 1
        counters.messages[kind] += len(messages)
    counters.batches[kind] += 1
