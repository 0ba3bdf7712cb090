"""Faust agents that turn validated events into training examples on ``ecrec.examples``.

* ``label.reviews``: each micro-batch of reviews -> dedupe -> sentiment label functions ->
  label model -> one ``ExampleBatch`` message.
* ``label.sessions``: searches and clicks (both keyed by session id, so co-partitioned) are
  folded into a session table; a session closes when event time in its partition passes its
  last event by ``session_gap_s``; closed sessions become relevance examples, bot-like ones none.
* augmentation trails labelling (:class:`~ecrec_stream.labels.stages.TrailingAugmentation`):
  each micro-batch's examples are sent first, then queued; a task makes their variants, a few
  at a time, while neither label agent has a message in hand and both are caught up (see
  AUGMENT_CAUGHT_UP_S), or while they are busy within ``augment_busy_share`` of the wall
  time, and sends them to the originals' partition. An example that waits
  over ``augment_max_lag_s`` gets none (counted as ``augment_shed``); a crash loses the queue
  (the originals were sent). ``augment_max_lag_s`` null: variants made inline, in the
  originals' message.
* the LLM annotator (``ECREC_LABELS__ANNOTATOR__ENABLED=true``): the agents offer their
  examples to its bounded queue and never wait for it; a task drains the queue within its rate
  budget on a thread of its own and sends the revised examples (``revision`` 1) when its votes
  arrive. A crash loses the queue (the examples themselves were sent already).

Table writes happen once per session per incoming batch message, inside stream iteration (the
current event's partition is the session's partition), never from timers: docs/broker.md explains
the silent data loss otherwise. A closed session stays in the table until its examples were sent
(then its tombstone): a crash in between closes it again after the restart. Model work runs
on a thread per task (relevance, sentiment; drift has its own), off the event loop.

The rules (dedupe, bot filtering, which candidates exist) live in the domain stages
(:mod:`ecrec_stream.labels.stages`); the agents decode, call a stage on its model thread, send
and checkpoint. Every ``snapshot_interval_s`` the stages' state (label models, position model,
seed classifier, dedupe windows) is taken between two messages, the producer is flushed (so
every event in a dedupe window has its examples delivered) and the state written to
``<data_dir>/labels/labels.state``; a restarted worker resumes it. Redelivered events after a
restart are labelled again under the same ids (at-least-once); an event already in a restored
dedupe window was delivered before the snapshot.

Errors: a batch message that does not parse, and a record that a stage raises on (found by
bisection, :mod:`ecrec_stream.ingest.isolation`), become dead letters and the agent goes on
(``ECREC_ON_PROCESSING_ERROR=stop`` to stop instead). Any other error, a failed send above all,
stops the worker before it commits (:func:`streams.failstop.stop_on_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiorwlock
import faust
from faust.types import TP

from ecrec_stream.config import Settings
from ecrec_stream.contracts.events import (
    ClickEvent,
    DeadLetterReason,
    EventBatch,
    ReviewEvent,
    SearchEvent,
    SourcePosition,
)
from ecrec_stream.device import name_os_thread
from ecrec_stream.ingest.isolation import Failure, describe
from ecrec_stream.ingest.validation import RawRecord, make_dead_letter
from ecrec_stream.labels.annotate import Annotator, build_annotator
from ecrec_stream.labels.base import RelevanceCandidate, SentimentCandidate, Task
from ecrec_stream.labels.examples import (
    RelevanceLabeler,
    SentimentLabeler,
    TrainingExample,
    build_labelers,
    example_batch_messages,
)
from ecrec_stream.labels.sessions import BotRules, SessionWindows
from ecrec_stream.labels.stages import (
    LabelStep,
    ReviewLabelStage,
    SessionLabelStage,
    TrailingAugmentation,
)
from ecrec_stream.state import TakenState, load_state, save_state
from streams.catalog import CatalogCache, SharedModelWork
from streams.failstop import stop_on_error

LOG = logging.getLogger(__name__)
PROCESSING = DeadLetterReason.PROCESSING_ERROR
STATE_KIND = "label_stages"
STATE_VERSION = 1
# Trailing augmentation: examples per model call (reviews: ~16 embeddings, ~0.15 s on one CPU
# thread, the longest a label agent's next message waits for it); how long both agents must
# have had nothing in hand before it runs (an agent with more to read takes it first); and
# when an agent counts as caught up: its latest message waited less than CAUGHT_UP_S, or it
# has had nothing to read for IDLE_S. Idle between messages is not enough: a worker at its
# limit still has gaps, and variants made in them took the CPU that ingest and drift needed.
# At 1,000 session events/s a 2 s bound let them take 23% of the worker early in a run
# (max lag 10.1-12.8 s in 4 runs); 0.5 s: 7.2 and 7.7 s, and at 500/s as many variants.
AUGMENT_CHUNK = 8
AUGMENT_SETTLE_S = 0.005
AUGMENT_CAUGHT_UP_S = 0.5
AUGMENT_IDLE_S = 1.0
# Reviews per model call when the review agent joins several messages (see
# LabelSettings.review_batch_max): the encoder's gain flattens out by 32-64.
REVIEW_CALL_MAX = 64


def _review_calls(
    messages: list[tuple[Any, EventBatch]], most: int
) -> Iterator[list[tuple[Any, EventBatch]]]:
    """Consecutive messages grouped so that a group holds at most ``most`` events (a message
    with more is a group of its own)."""
    group: list[tuple[Any, EventBatch]] = []
    size = 0
    for message in messages:
        n = len(message[1].events)
        if group and size + n > most:
            yield group
            group, size = [], 0
        group.append(message)
        size += n
    if group:
        yield group


def _candidate_json(candidate: RelevanceCandidate | SentimentCandidate) -> bytes:
    """A candidate as JSON, the payload of its dead letter."""
    return json.dumps(dataclasses.asdict(candidate), default=str).encode()


def _event_id(record: ReviewEvent | SentimentCandidate) -> str:
    return record.event_id


class JsonValues(MutableMapping[str, Any]):
    """A Faust table whose values are JSON bytes, seen as a mapping of JSON values: each
    value encoded once per write."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: str) -> Any:
        raw = self.table[key]
        return None if raw is None else json.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key] = json.dumps(value, separators=(",", ":")).encode()

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        """(key, value) pairs from the table's own items: a RocksDB table looks a key up in
        the current event's partition only."""
        for key, raw in self.table.items():
            yield key, None if raw is None else json.loads(raw)


@dataclass
class LabelRuntime:
    """What the label agents share with the worker's stats page."""

    relevance: RelevanceLabeler
    sentiment: SentimentLabeler
    titles: CatalogCache
    stats: Counter[str] = field(default_factory=Counter)
    annotator: Annotator | None = None
    # per task: seconds from its latest batch message being written to its labelling, and
    # the most any of its messages waited since the worker started
    lag_s: dict[str, float] = field(default_factory=dict)
    lag_max_s: dict[str, float] = field(default_factory=dict)
    checkpoint_s: float = 0.0  # how long the latest state checkpoint took
    checkpoint_hold_s: float = 0.0  # of which the label agents were held (the state taken)
    checkpoint_hold_max_s: float = 0.0  # the longest hold since the worker started
    encoder_cache: dict[str, int] = field(default_factory=dict)  # the shared cache's counts
    encoder: dict[str, Any] = field(default_factory=dict)  # name, version, device, precision

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.stats, "titles_known": len(self.titles)}
        out["lag_s"] = {task: round(lag, 3) for task, lag in self.lag_s.items()}
        out["lag_max_s"] = {task: round(lag, 3) for task, lag in self.lag_max_s.items()}
        out["checkpoint_s"] = round(self.checkpoint_s, 3)
        out["checkpoint_hold_s"] = round(self.checkpoint_hold_s, 3)
        out["checkpoint_hold_max_s"] = round(self.checkpoint_hold_max_s, 3)
        out["encoder_cache"] = dict(self.encoder_cache)
        out["encoder"] = dict(self.encoder)
        if self.annotator is not None:
            out["annotator"] = self.annotator.stats.as_dict(self.annotator.backlog)
        for labeler in (self.relevance, self.sentiment):
            task = labeler.task
            out[f"{task}_counts"] = labeler.counts
            if labeler.meaning_filter is not None:
                out[f"{task}_filter"] = labeler.meaning_filter.counts.as_dict()
            acc = labeler.model.accuracies
            if acc is not None:
                out[f"{task}_lf_accuracy"] = dict(
                    zip(labeler.names, acc.round(3).tolist(), strict=True)
                )
            out[f"{task}_label_model"] = {
                "fits": labeler.model.fits,
                "fallbacks": labeler.model.fallbacks,
                "last_fallback": labeler.model.last_fallback,
            }
        theta = self.relevance.position_bias.theta
        out["position_bias"] = {
            "estimated": theta is not None,
            "examination_by_position": None if theta is None else theta.round(3).tolist(),
            "pairs_at_several_positions": self.relevance.position_bias.pairs_at_several_positions,
        }
        return out


def add_label_agents(app: faust.App, settings: Settings, shared: SharedModelWork) -> LabelRuntime:
    """Register the label agents, the session table and the state checkpoint on ``app``."""
    cfg = settings.labels
    names = settings.topics
    relevance, sentiment = build_labelers(cfg, shared.encoder)
    annotator = build_annotator(cfg, relevance, sentiment) if cfg.annotator.enabled else None
    titles = shared.catalog
    runtime = LabelRuntime(
        relevance,
        sentiment,
        titles,
        annotator=annotator,
        encoder_cache=shared.encoder.counts,
        encoder=shared.encoder_info,
    )
    stats = runtime.stats
    policy = settings.on_processing_error
    review_stage = ReviewLabelStage(sentiment, dedupe_capacity=cfg.dedupe_capacity, on_error=policy)
    bot_rules = BotRules(
        cfg.bot_max_clicks_per_minute, cfg.bot_max_clicks, cfg.bot_min_median_dwell_ms
    )
    session_stage = SessionLabelStage(relevance, bot_rules, titles.get, on_error=policy)
    state_path = settings.data_dir / "labels" / "labels.state"
    saved = load_state(state_path, kind=STATE_KIND, version=STATE_VERSION)
    if saved is not None:
        review_stage.load_state(saved["reviews"])
        session_stage.load_state(saved["sessions"])
        stats["restored_state"] += 1
        LOG.warning("label stages restored from %s", state_path)
    # Read-held while an agent processes a message, write-held by a checkpoint: the two label
    # agents (different stages) process side by side, and a checkpoint is taken between two
    # messages of each. (One plain lock made the session agent wait for every review's
    # labelling on the model thread: it read ~120 events/s at 1,000/s paced traffic.)
    processing = aiorwlock.RWLock()
    checkpointed_at = [0]  # the stats' total when the last checkpoint was taken
    next_checkpoint = [0.0]  # monotonic time before which none is taken
    examples_topic = app.topic(names.examples, value_serializer="raw", key_serializer="raw")
    # values are JSON bytes encoded here (JsonValues): with a JSON value serializer, Faust
    # encodes each value twice (for RocksDB and for the changelog); both read the same bytes
    sessions = app.Table(
        f"{settings.app_id}-sessions",
        default=None,
        partitions=settings.partitions,
        value_type=bytes,  # what sets a table's value serializer (raw), not its schema
        schema=faust.Schema(key_serializer="json", value_serializer="raw"),
    )
    session_inputs = (names.valid_searches, names.valid_clicks)
    windows = SessionWindows(
        JsonValues(sessions),
        gap_s=cfg.session_gap_s,
        max_clicks=cfg.max_session_clicks,
        inputs=session_inputs,
        raise_errors=policy == "stop",
        keep_closed=True,  # deleted once their examples were sent (forget, below)
        recent_capacity=cfg.session_recent_capacity,
    )

    async def release_sessions(_app: Any, revoked: set[TP], **_: Any) -> None:
        """Revoked partitions' sessions are read from the table again if they come back."""
        windows.release({tp.partition for tp in revoked if tp.topic in session_inputs})

    # mode calls receivers as (sender, *args, signal=...); its stub wants *args, not one arg
    app.on_partitions_revoked.connect(release_sessions)  # type: ignore[arg-type]

    dlq = app.topic(names.dlq, value_serializer="raw", key_serializer="raw")
    max_raw = settings.ingest.dlq_max_raw_bytes

    async def emit(
        task: Task, examples: list[TrainingExample], partition: int | None, key: str
    ) -> None:
        """Send examples as byte-bounded ``ExampleBatch`` messages (a backlog can make one
        micro-batch larger than a message may be); ids and order are kept."""
        messages, oversized = example_batch_messages(task, examples, settings.max_message_bytes)
        for n, body in enumerate(messages):
            await examples_topic.send(
                key=(key if n == 0 else f"{key}:{n}").encode(), value=body, partition=partition
            )
        for i in oversized:
            LOG.error("example %s does not fit one message: dropped", examples[i].example_id)
        stats[f"examples_{task}"] += len(examples) - len(oversized)
        stats[f"oversized_examples_{task}"] += len(oversized)
        stats[f"example_messages_{task}"] += len(messages)
        stats[f"augmented_{task}"] += sum(e.augmented_from is not None for e in examples)

    async def dead_letter(
        event: Any, kind: str, reason: DeadLetterReason, error: str, payload: bytes, item: str
    ) -> None:
        """Dead-letter one record of the batch message ``event`` (``item`` names it)."""
        position = SourcePosition(
            topic=event.message.topic,
            partition=event.message.partition,
            offset=event.message.offset,
        )
        letter = make_dead_letter(
            RawRecord(payload, position), kind, reason, error, max_raw_bytes=max_raw, event_id=item
        )
        await dlq.send(key=letter.dead_letter_id.encode(), value=letter.model_dump_json().encode())
        stats[f"dead_letters_{reason.value}"] += 1
        LOG.warning("dead-lettered %s (%s): %s", letter.dead_letter_id, reason.value, error)

    async def dead_letter_failures(
        event: Any,
        kind: str,
        failures: list[Failure[Any]],
        payload: Callable[[Any], bytes],
        name: Callable[[Any], str],
    ) -> None:
        """Dead-letter the records a stage raised on (``processing_error``)."""
        for failure in failures:
            await dead_letter(
                event, kind, PROCESSING, failure.error, payload(failure.item), name(failure.item)
            )

    lags = runtime.lag_s
    # Variants trail their originals (TrailingAugmentation) unless augment_max_lag_s is null:
    # then every micro-batch is augmented inline, on the labelling path.
    trailing: dict[Task, TrailingAugmentation[tuple[int | None, str]]] = {}
    if cfg.augment_max_lag_s is not None:
        trailing = {
            labeler.task: TrailingAugmentation(
                labeler,
                max_wait_s=cfg.augment_max_lag_s,
                capacity=cfg.augment_queue_capacity,
                chunk=AUGMENT_CHUNK,
                on_error=policy,
                busy_share=cfg.augment_busy_share,
            )
            for labeler in (relevance, sentiment)
        }
    busy: Counter[str] = Counter()  # label agents with a message in hand
    done_at: dict[str, float] = {}  # when each label agent last finished a message
    wake_augmentation = asyncio.Event()

    def caught_up() -> bool:
        """Neither label agent has a message in hand, and each is caught up with its input."""
        now = time.monotonic()
        return not any(busy.values()) and all(
            lag < AUGMENT_CAUGHT_UP_S or now - done_at.get(task, 0.0) > AUGMENT_IDLE_S
            for task, lag in lags.items()
        )

    async def run_stage(
        stage: ReviewLabelStage | SessionLabelStage, batch: Sequence[Any], event: Any
    ) -> LabelStep:
        """The stage on the model thread; its counts into the stats, its examples offered to
        the annotator (a deque append: never waits)."""
        task = stage.labeler.task
        if event.message.timestamp:
            lags[task] = lag = time.time() - event.message.timestamp
            runtime.lag_max_s[task] = max(lag, runtime.lag_max_s.get(task, 0.0))
        step: LabelStep = await shared.off_loop(
            task, partial(stage.label_many, augment=task not in trailing), batch
        )
        stats.update(step.counts)
        if annotator is not None:
            annotator.offer(step.examples, stage.labeler.fast_names)
        return step

    async def emit_and_trail(
        task: Task, examples: list[TrainingExample], partition: int | None, key: str
    ) -> None:
        """Send a micro-batch's examples, then queue them for their variants."""
        await emit(task, examples, partition, key)
        if task in trailing:
            trailing[task].offer(examples, (partition, key), now=time.monotonic())

    @contextlib.contextmanager
    def handling(task: Task) -> Iterator[None]:
        """Marks a label agent busy while it handles one message; when the last agent is done,
        trailing augmentation may use the model thread."""
        busy[task] += 1
        try:
            yield
        finally:
            busy[task] -= 1
            done_at[task] = time.monotonic()
            if not any(busy.values()):
                wake_augmentation.set()

    if trailing:

        @app.task
        async def augment_trailing() -> None:
            """Make the waiting variants while the label agents are caught up, and while
            they are busy within the busy budget (``augment_busy_share``): one chunk at a
            time, oldest first, each task in turn; send each chunk's variants to its
            originals' partition."""
            while True:
                with contextlib.suppress(TimeoutError):  # re-checked each second when idle
                    await asyncio.wait_for(wake_augmentation.wait(), AUGMENT_IDLE_S)
                wake_augmentation.clear()
                while any(t.waiting for t in trailing.values()):
                    await asyncio.sleep(AUGMENT_SETTLE_S)
                    busy_now = not caught_up()
                    taken = False
                    for task, trail in trailing.items():
                        chunk = trail.next_chunk(now=time.monotonic(), busy=busy_now)
                        if chunk is None:
                            continue
                        taken = True
                        with stop_on_error("label.augment"):
                            started = time.monotonic()
                            async with processing.reader:
                                step = await shared.off_loop(task, trail.augment_many, chunk)
                            if busy_now:  # within the busy budget: its seconds are spent
                                trail.charge(time.monotonic() - started)
                                stats[f"augmented_while_busy_{task}"] += len(step.variants)
                            for failure in step.failed:
                                stats[f"augment_failed_{task}"] += 1
                                LOG.warning(
                                    "no variants of %s: %s",
                                    failure.item.example_id,
                                    failure.error,
                                )
                            if step.variants:
                                partition, key = step.route
                                await emit(task, step.variants, partition, f"{key}:variants")
                    if not taken:  # busy, the budget spent: an agent finishing a message wakes
                        break  # this task again

    if annotator is not None:
        llm_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ecrec-llm", initializer=name_os_thread
        )

        @app.task
        async def annotate_routed() -> None:
            """Drain the annotator's queue within its budget; send the revised examples."""
            loop = asyncio.get_running_loop()
            while True:
                batch = annotator.take()
                if not batch:
                    await asyncio.sleep(0.2)
                    continue
                try:
                    late = await loop.run_in_executor(llm_thread, annotator.annotate, batch)
                except Exception:  # an optional stage: its failure must not stop labelling
                    LOG.exception("the LLM annotator failed on %d examples", len(batch))
                    continue
                for labeler in (relevance, sentiment):
                    async with processing.reader:  # a checkpoint reads the labelers' state
                        revised = await shared.off_loop(labeler.task, labeler.revise, late)
                    if revised:
                        with stop_on_error("label.annotate"):
                            await emit(
                                labeler.task, revised, None, f"revised:{revised[0].example_id}"
                            )

    async def parse(event: Any) -> EventBatch | None:
        try:
            return EventBatch.model_validate_json(event.value)
        except ValueError as exc:
            # Only the ingest agents write these topics; a bad one is a foreign producer.
            stats["skipped_batches"] += 1
            await dead_letter(
                event, "batch", DeadLetterReason.SCHEMA_VIOLATION, describe(exc), event.value, ""
            )
            return None

    reviews_topic = app.topic(names.valid_reviews, value_serializer="raw", key_serializer="raw")

    async def label_reviews(stream: faust.StreamT) -> None:
        # take_events (not take): each message's partition, offset and send time; acked after
        # the step, once its examples were sent
        steps = stream.take_events(  # type: ignore[attr-defined]  # missing from faust's stubs
            cfg.review_batch_max, within=cfg.review_batch_wait_s
        )
        async for events in steps:
            with stop_on_error("label.reviews"), handling("sentiment"):
                parsed = []
                for event in events:
                    batch = await parse(event)
                    if batch is not None:
                        parsed.append((event, batch))
                for group in _review_calls(parsed, REVIEW_CALL_MAX):
                    # Held per model call, not per step: a checkpoint (and, behind its writer,
                    # the session agent) waited for the rest of a step of up to
                    # review_batch_max messages, 3.4-3.9 s at 100 reviews/s (session 25).
                    # A call's messages are whole, so the state is still taken between two.
                    async with processing.reader:
                        await label_review_messages(group)

    async def label_review_messages(messages: list[tuple[Any, EventBatch]]) -> None:
        """One model call for the reviews of ``messages``; dead letters name the message of
        their review; examples go to their review's source partition."""
        reviews = [r for _, b in messages for r in b.events if isinstance(r, ReviewEvent)]
        message_of = {r.event_id: event for event, b in messages for r in b.events}
        partition_of = {r.event_id: b.source.partition for _, b in messages for r in b.events}
        step = await run_stage(review_stage, reviews, messages[0][0])
        for failure in step.failed_inputs:
            await dead_letter_failures(
                message_of[failure.item.event_id],
                "review",
                [failure],
                lambda r: r.model_dump_json().encode(),
                _event_id,
            )
        for failure in step.failed_candidates:
            await dead_letter_failures(
                message_of[failure.item.event_id], "review", [failure], _candidate_json, _event_id
            )
        first_offset: dict[int, int] = {}
        for _, b in messages:
            first_offset.setdefault(b.source.partition, b.source.offset)
        by_partition: dict[int, list[TrainingExample]] = {part: [] for part in first_offset}
        for example in step.examples:
            by_partition[partition_of[example.source_event_ids[0]]].append(example)
        for part, examples in by_partition.items():
            await emit_and_trail(
                "sentiment", examples, part, f"sentiment:{part}:{first_offset[part]}"
            )

    session_topics = app.topic(
        names.valid_searches, names.valid_clicks, value_serializer="raw", key_serializer="raw"
    )

    async def label_sessions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            with stop_on_error("label.sessions"), handling("relevance"):
                async with processing.reader:
                    batch = await parse(event)
                    if batch is None:
                        continue
                    part = event.message.partition
                    stats["session_events_read"] += len(batch.events)
                    closed = windows.add(
                        part,
                        event.message.topic,
                        [ev for ev in batch.events if isinstance(ev, SearchEvent | ClickEvent)],
                    )
                    stats["late_events"] += closed.late
                    stats["duplicate_events"] += closed.duplicates
                    for ev, exc in closed.failed:
                        await dead_letter(
                            event,
                            ev.type,
                            PROCESSING,
                            describe(exc),
                            ev.model_dump_json().encode(),
                            ev.event_id,
                        )
                    if not closed.closed:
                        continue
                    step = await run_stage(session_stage, closed.closed, event)
                    await dead_letter_failures(
                        event,
                        "search",
                        step.failed_candidates,
                        _candidate_json,
                        lambda c: f"{c.search_event_id}/{c.item_id}",
                    )
                    if step.examples:
                        await emit_and_trail(
                            "relevance",
                            step.examples,
                            part,
                            f"relevance:{part}:{event.message.offset}",
                        )
                    # sent (or dead-lettered): now their tombstones; a crash before this
                    # point closes them again after the restart, under the same example ids
                    windows.forget(part, closed.closed)

    def take_stage_states() -> TakenState:
        reviews, sessions = review_stage.take_state(), session_stage.take_state()
        return lambda: {"reviews": reviews(), "sessions": sessions()}

    @app.timer(cfg.snapshot_interval_s)
    async def checkpoint() -> None:
        """Save the stages' state when something changed: taken between two messages, then
        the producer flushed, then written (see the module docstring)."""
        total = sum(stats.values())
        if total == checkpointed_at[0] or time.monotonic() < next_checkpoint[0]:
            return
        with stop_on_error("label.checkpoint"):
            # a position refit under way is saved as its result: waited for here, while the
            # agents go on, rather than while they are held (up to 9 s at its full sample)
            await asyncio.to_thread(relevance.wait_for_refit)
            began = time.monotonic()
            # the never-clicked tallies before the hold, on the relevance thread (between two
            # of its calls): most of the state's time at capacity, and an older copy of them
            # only repeats negatives under their ids (RelevanceLabeler.take_aggregate_state)
            await shared.off_loop("relevance", relevance.take_aggregate_state)
            # the hold takes copies (TakesState); the document is built from them after it
            held = time.monotonic()
            async with processing.writer:
                taken = await shared.off_loop("relevance", take_stage_states)
            runtime.checkpoint_hold_s = hold = time.monotonic() - held
            runtime.checkpoint_hold_max_s = max(hold, runtime.checkpoint_hold_max_s)
            await app.producer.flush()
            # built and written on a thread of its own: on the relevance thread the write
            # (0.9 s at 1,000 session events/s) held the session agent
            await asyncio.to_thread(
                lambda: save_state(state_path, taken(), kind=STATE_KIND, version=STATE_VERSION)
            )
            checkpointed_at[0] = total
            stats["checkpoints"] += 1
            # Taking and writing the state is Python work under the GIL that the agents
            # share (at capacity ~1.6 s of it, 4-5 s of wall time at 1,000 events/s): it
            # must not take more than a twentieth of their time (one 300-s run each at 1,000
            # session events/s: 27 s behind at a tenth, 16 s at a twentieth; runs vary by as
            # much, docs/benchmarks.md).
            took = time.monotonic() - began
            next_checkpoint[0] = time.monotonic() + 19 * took
            runtime.checkpoint_s = took

    app.agent(reviews_topic, name="ecrec.label.reviews")(label_reviews)
    app.agent(session_topics, name="ecrec.label.sessions")(label_sessions)
    return runtime
