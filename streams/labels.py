"""Faust agents that turn validated events into training examples on ``ecrec.examples``.

* ``label.reviews``: each micro-batch of reviews -> dedupe -> sentiment label functions ->
  label model -> augment -> one ``ExampleBatch`` message.
* ``label.sessions``: searches and clicks (both keyed by session id, so co-partitioned) are
  folded into a session table; a session closes when event time in its partition passes its
  last event by ``session_gap_s``; closed sessions become relevance examples, bot-like ones none.
* the LLM annotator (``ECREC_LABELS__ANNOTATOR__ENABLED=true``): the agents offer their
  examples to its bounded queue and never wait for it; a task drains the queue within its rate
  budget on a thread of its own and sends the revised examples (``revision`` 1) when its votes
  arrive. A crash loses the queue (the examples themselves were sent already).

Table writes happen once per session per incoming batch message, inside stream iteration (the
current event's partition is the session's partition), never from timers: docs/broker.md explains
the silent data loss otherwise. Model work runs in a one-thread executor, off the event loop.

Errors: a batch message that does not parse, and a record that a stage raises on (found by
bisection, :mod:`ecrec_stream.isolation`), become dead letters and the agent goes on
(``ECREC_ON_PROCESSING_ERROR=stop`` to stop instead). Any other error, a failed send above all,
stops the worker before it commits (:func:`streams.failstop.stop_on_error`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import faust

from ecrec_stream.config import Settings
from ecrec_stream.events import (
    ClickEvent,
    DeadLetterReason,
    EventBatch,
    ReviewEvent,
    SearchEvent,
    SourcePosition,
)
from ecrec_stream.isolation import Failure, describe, isolate_failures
from ecrec_stream.labels.annotate import Annotator
from ecrec_stream.labels.base import RelevanceCandidate, SentimentCandidate, Task
from ecrec_stream.labels.examples import (
    RelevanceLabeler,
    SentimentLabeler,
    TrainingExample,
    build_annotator,
    build_labelers,
    example_batch_messages,
)
from ecrec_stream.quality import BoundedSeen, near_duplicate_key
from ecrec_stream.sessions import BotRules, SessionWindows, bot_reason, relevance_candidates
from ecrec_stream.validation import RawRecord, make_dead_letter
from streams.catalog import CatalogCache, SharedModelWork
from streams.failstop import stop_on_error

LOG = logging.getLogger(__name__)
PROCESSING = DeadLetterReason.PROCESSING_ERROR


def _candidate_json(candidate: RelevanceCandidate | SentimentCandidate) -> bytes:
    """A candidate as JSON, the payload of its dead letter."""
    return json.dumps(dataclasses.asdict(candidate), default=str).encode()


def _event_id(record: ReviewEvent | SentimentCandidate) -> str:
    return record.event_id


@dataclass
class LabelRuntime:
    """What the label agents share with the worker's stats page."""

    relevance: RelevanceLabeler
    sentiment: SentimentLabeler
    titles: CatalogCache
    stats: Counter[str] = field(default_factory=Counter)
    annotator: Annotator | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.stats, "titles_known": len(self.titles)}
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
    """Register the label agents and the session table on ``app``."""
    cfg = settings.labels
    names = settings.topics
    relevance, sentiment = build_labelers(cfg, shared.encoder)
    annotator = build_annotator(cfg, relevance, sentiment) if cfg.annotator.enabled else None
    titles = shared.catalog
    runtime = LabelRuntime(relevance, sentiment, titles, annotator=annotator)
    stats = runtime.stats
    examples_topic = app.topic(names.examples, value_serializer="raw", key_serializer="raw")
    sessions = app.Table(
        f"{settings.app_id}-sessions",
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )
    seen_reviews = BoundedSeen(cfg.dedupe_capacity)
    seen_texts = BoundedSeen(cfg.dedupe_capacity)
    bot_rules = BotRules(
        cfg.bot_max_clicks_per_minute, cfg.bot_max_clicks, cfg.bot_min_median_dwell_ms
    )
    policy = settings.on_processing_error
    windows = SessionWindows(
        sessions,
        gap_s=cfg.session_gap_s,
        max_clicks=cfg.max_session_clicks,
        inputs=(names.valid_searches, names.valid_clicks),
        raise_errors=policy == "stop",
    )

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

    async def label_isolated(
        labeler: RelevanceLabeler | SentimentLabeler, cands: list[Any]
    ) -> tuple[list[TrainingExample], list[Failure[Any]]]:
        result: tuple[list[TrainingExample], list[Failure[Any]]] = await shared.off_loop(
            isolate_failures, labeler.label_many, cands, policy
        )
        if annotator is not None:
            annotator.offer(result[0], labeler.fast_names)  # a deque append: never waits
        return result

    if annotator is not None:
        llm_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecrec-llm")

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
                    revised = await shared.off_loop(labeler.revise, late)
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

    def review_candidate(review: ReviewEvent) -> SentimentCandidate | None:
        if not seen_reviews.add(review.event_id):
            stats["duplicate_events"] += 1
            return None
        text = ". ".join(p for p in (review.title, review.text) if p.strip())
        if text and not seen_texts.add(near_duplicate_key(text)):
            stats["near_duplicate_reviews"] += 1
            return None
        return SentimentCandidate(
            review.event_id,
            review.item_id,
            text,
            review.rating,
            review.user_id,
            event_ts=review.ts.timestamp(),
        )

    async def label_reviews(stream: faust.StreamT) -> None:
        async for event in stream.events():
            with stop_on_error("label.reviews"):
                batch = await parse(event)
                if batch is None:
                    continue
                reviews = [r for r in batch.events if isinstance(r, ReviewEvent)]
                stats["reviews_read"] += len(reviews)
                cands, failed = isolate_failures(
                    lambda rs: [c for r in rs if (c := review_candidate(r)) is not None],
                    reviews,
                    policy,
                )
                examples, failed_labels = await label_isolated(sentiment, cands)
                await dead_letter_failures(
                    event, "review", failed, lambda r: r.model_dump_json().encode(), _event_id
                )
                await dead_letter_failures(
                    event, "review", failed_labels, _candidate_json, _event_id
                )
                await emit(
                    "sentiment",
                    examples,
                    batch.source.partition,
                    f"sentiment:{batch.source.partition}:{batch.source.offset}",
                )

    session_topics = app.topic(
        names.valid_searches, names.valid_clicks, value_serializer="raw", key_serializer="raw"
    )

    async def label_sessions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            with stop_on_error("label.sessions"):
                batch = await parse(event)
                if batch is None:
                    continue
                part = event.message.partition
                step = windows.add(
                    part,
                    event.message.topic,
                    [ev for ev in batch.events if isinstance(ev, SearchEvent | ClickEvent)],
                )
                stats["late_events"] += step.late
                stats["duplicate_events"] += step.duplicates
                for ev, exc in step.failed:
                    await dead_letter(
                        event,
                        ev.type,
                        PROCESSING,
                        describe(exc),
                        ev.model_dump_json().encode(),
                        ev.event_id,
                    )
                cands = []
                for state in step.closed:
                    reason = bot_reason(state, bot_rules)
                    if reason:
                        stats["bot_sessions"] += 1
                        LOG.info(
                            "session %s looks automated (%s): no labels",
                            state["session_id"],
                            reason,
                        )
                        continue
                    stats["sessions_closed"] += 1
                    cands.extend(relevance_candidates(state))
                if cands:
                    cands = [replace(c, item_title=titles.get(c.item_id)) for c in cands]
                    examples, failed_labels = await label_isolated(relevance, cands)
                    await dead_letter_failures(
                        event,
                        "search",
                        failed_labels,
                        _candidate_json,
                        lambda c: f"{c.search_event_id}/{c.item_id}",
                    )
                    await emit(
                        "relevance", examples, part, f"relevance:{part}:{event.message.offset}"
                    )

    app.agent(reviews_topic, name="ecrec.label.reviews")(label_reviews)
    app.agent(session_topics, name="ecrec.label.sessions")(label_sessions)
    return runtime
