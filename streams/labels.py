"""Faust agents that turn validated events into training examples on ``ecrec.examples``.

* ``label.reviews``: each micro-batch of reviews -> dedupe -> sentiment label functions ->
  label model -> augment -> one ``ExampleBatch`` message.
* ``label.sessions``: searches and clicks (both keyed by session id, so co-partitioned) are
  folded into a session table; a session closes when event time in its partition passes its
  last event by ``session_gap_s``; closed sessions become relevance examples, bot-like ones none.

Table writes happen once per session per incoming batch message, inside stream iteration (the
current event's partition is the session's partition), never from timers: BROKER.md explains
the silent data loss otherwise. Model work runs in a one-thread executor, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import faust
from pydantic import ValidationError

from ecrec_stream.config import Settings
from ecrec_stream.events import ClickEvent, EventBatch, ReviewEvent, SearchEvent
from ecrec_stream.labels.base import SentimentCandidate
from ecrec_stream.labels.examples import (
    ExampleBatch,
    RelevanceLabeler,
    SentimentLabeler,
    TrainingExample,
    build_labelers,
)
from ecrec_stream.quality import BoundedSeen, near_duplicate_key
from ecrec_stream.sessions import (
    BotRules,
    Watermarks,
    add_event,
    bot_reason,
    new_session,
    relevance_candidates,
)
from streams.failstop import fail_stop

LOG = logging.getLogger(__name__)


@dataclass
class LabelRuntime:
    """What the label agents share with the worker's stats page."""

    relevance: RelevanceLabeler
    sentiment: SentimentLabeler
    titles: TitleCache
    stats: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.stats, "titles_known": len(self.titles)}
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
        return out


def add_label_agents(app: faust.App, settings: Settings, bootstrap: str) -> LabelRuntime:
    """Register the label agents, the session table and the title cache on ``app``."""
    cfg = settings.labels
    names = settings.topics
    from ecrec_stream.embedding import CachedEncoder, SentenceTransformerEncoder

    encoder = CachedEncoder(SentenceTransformerEncoder(settings.embedding))
    relevance, sentiment = build_labelers(cfg, encoder)
    titles = TitleCache(bootstrap, names.valid_items)
    runtime = LabelRuntime(relevance, sentiment, titles)
    stats = runtime.stats
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecrec-label")
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
    watermarks = Watermarks((names.valid_searches, names.valid_clicks))
    open_sessions: dict[int, set[str]] = {}

    @app.task
    async def start_title_cache() -> None:
        titles.start()

    async def emit(task: str, examples: list[TrainingExample], partition: int, key: str) -> None:
        if examples:
            batch = ExampleBatch(task=task, examples=examples)
            await examples_topic.send(
                key=key.encode(), value=batch.model_dump_json().encode(), partition=partition
            )
            stats[f"examples_{task}"] += len(examples)
            stats[f"augmented_{task}"] += sum(e.augmented_from is not None for e in examples)

    async def off_loop(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def parse(event: Any) -> EventBatch | None:
        try:
            return EventBatch.model_validate_json(event.value)
        except ValidationError as exc:
            # Only the ingest agents write these topics; a bad one is a foreign producer.
            LOG.error("skipping malformed batch on %s: %s", event.message.topic, exc)
            stats["skipped_batches"] += 1
            return None

    reviews_topic = app.topic(names.valid_reviews, value_serializer="raw", key_serializer="raw")

    async def label_reviews(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                batch = parse(event)
                if batch is None:
                    continue
                cands = []
                for review in batch.events:
                    if not isinstance(review, ReviewEvent) or not seen_reviews.add(review.event_id):
                        stats["duplicate_events"] += 1
                        continue
                    text = ". ".join(p for p in (review.title, review.text) if p.strip())
                    if text and not seen_texts.add(near_duplicate_key(text)):
                        stats["near_duplicate_reviews"] += 1
                        continue
                    cands.append(
                        SentimentCandidate(
                            review.event_id, review.item_id, text, review.rating, review.user_id
                        )
                    )
                examples = await off_loop(sentiment.label_many, cands)
                await emit(
                    "sentiment",
                    examples,
                    batch.source.partition,
                    f"sentiment:{batch.source.partition}:{batch.source.offset}",
                )
            except Exception:
                fail_stop("label.reviews")

    session_topics = app.topic(
        names.valid_searches, names.valid_clicks, value_serializer="raw", key_serializer="raw"
    )

    async def label_sessions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                batch = parse(event)
                if batch is None:
                    continue
                part = event.message.partition
                if part not in open_sessions:  # first batch of this partition since start
                    open_sessions[part] = {
                        k for k, v in sessions.items() if v and v["partition"] == part
                    }
                touched: dict[str, dict[str, Any]] = {}
                for ev in batch.events:
                    if not isinstance(ev, SearchEvent | ClickEvent):
                        continue
                    if ev.ts.timestamp() < watermarks.get(part) - cfg.session_gap_s:
                        # later than its session could still be open: labelled already
                        # or never joinable; counted, not turned into a bogus session
                        stats["late_events"] += 1
                        continue
                    state = (
                        touched.get(ev.session_id)
                        or sessions.get(ev.session_id)
                        or new_session(ev.session_id, part)
                    )
                    if add_event(state, ev, max_clicks=cfg.max_session_clicks):
                        touched[ev.session_id] = state
                    else:
                        stats["duplicate_events"] += 1
                    watermarks.advance(part, event.message.topic, ev.ts.timestamp())
                closing = [
                    s
                    for s in open_sessions[part] | set(touched)
                    if (touched.get(s) or sessions.get(s) or {"last_ts": 1e18})["last_ts"]
                    < watermarks.get(part) - cfg.session_gap_s
                ]
                cands = []
                for sid in closing:
                    state = touched.pop(sid, None) or sessions.get(sid)
                    open_sessions[part].discard(sid)
                    if state is None:
                        continue
                    if sid in sessions:
                        del sessions[sid]  # one changelog tombstone per closed session
                    reason = bot_reason(state, bot_rules)
                    if reason:
                        stats["bot_sessions"] += 1
                        LOG.info("session %s looks automated (%s): no labels", sid, reason)
                        continue
                    stats["sessions_closed"] += 1
                    cands.extend(relevance_candidates(state))
                for sid, state in touched.items():  # one table write per touched session
                    sessions[sid] = state
                    open_sessions[part].add(sid)
                if cands:
                    cands = [replace(c, item_title=titles.get(c.item_id)) for c in cands]
                    examples = await off_loop(relevance.label_many, cands)
                    await emit(
                        "relevance", examples, part, f"relevance:{part}:{event.message.offset}"
                    )
            except Exception:
                fail_stop("label.sessions")

    app.agent(reviews_topic, name="ecrec.label.reviews")(label_reviews)
    app.agent(session_topics, name="ecrec.label.sessions")(label_sessions)
    return runtime


class TitleCache:
    """Item titles for the content relevance function, read from ``valid_items`` (all
    partitions, from the beginning) by a confluent-kafka consumer thread: every worker needs
    every item's title, not just its own partitions'."""

    def __init__(self, bootstrap: str, topic: str, capacity: int = 1_000_000) -> None:
        import threading

        self.bootstrap = bootstrap
        self.topic = topic
        self.capacity = capacity
        self._titles: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecrec-titles", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, item_id: str) -> str | None:
        return self._titles.get(item_id)

    def __len__(self) -> int:
        return len(self._titles)

    def _run(self) -> None:
        import uuid

        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streams.kafka import consumer_config, topic_partitions

        consumer = Consumer(consumer_config(self.bootstrap, f"ecrec-titles-{uuid.uuid4().hex}"))
        consumer.assign(
            [
                TopicPartition(self.topic, p, OFFSET_BEGINNING)
                for p in topic_partitions(self.bootstrap, self.topic)
            ]
        )
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, timeout=0.2):
                    if msg.error() is not None:
                        continue
                    # Plain JSON, not the pydantic model: the ingest agent validated these
                    # already, and this thread shares the worker's CPU with the agents.
                    try:
                        events = json.loads(msg.value() or b"")["events"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    for item in events:
                        if item.get("type") != "item":
                            continue
                        if item.get("op") == "delete":
                            self._titles.pop(item["item_id"], None)
                        elif len(self._titles) < self.capacity or item["item_id"] in self._titles:
                            self._titles[item["item_id"]] = item.get("title") or ""
        finally:
            consumer.close()
