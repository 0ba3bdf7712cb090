"""An index replica: consumes *all* partitions of the validated items topic, keeps a
:class:`~ecrec_stream.index.LiveItemIndex` fresh, snapshots it, and serves search over HTTP.
It follows ``ecrec.models`` too: a published version is verified in the registry, loaded, and
the catalog re-embedded in the background while the old model keeps serving; then the pair
is swapped. A model that fails verification is refused and the old one keeps serving.

It uses confluent-kafka with manual partition assignment rather than a consumer group: each
replica must read every partition (not share them), and a restarted replica must start exactly
at the offsets stored in its snapshot. Assignment gives both directly and skips the group join
(which Tansu holds for seconds). No offsets are committed to Kafka: the snapshot is the commit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition
from pydantic import ValidationError

from ecrec_stream.config import Settings
from ecrec_stream.contracts import ModelPublication
from ecrec_stream.contracts.events import ClickEvent, EventBatch, ItemEvent
from ecrec_stream.embedding import Encoder
from ecrec_stream.exceptions import EcrecError
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.persist import Offsets, snapshot_model
from ecrec_stream.recommend import Recommender
from ecrec_stream.state import StateError, dumps_state, loads_state
from ecrec_stream.training.registry import open_registry
from streams.capabilities import (
    BrokerCapabilities,
    LagMonitor,
    last_record_ends,
    probe_capabilities,
)
from streams.kafka import (
    DeadLetterSink,
    ensure_topics,
    fetch,
    partition_reader,
    topic_partitions,
)

LOG = logging.getLogger(__name__)
RECOMMEND_FILE = "recommend.state"
RECOMMEND_KIND = "recommender"
RECOMMEND_VERSION = 2  # 2: the category flow


class IndexReplica:
    """Feeds a live index from Kafka on a background thread."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        live: LiveItemIndex,
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.live = live
        self.topic = settings.topics.valid_items
        self.models_topic = settings.topics.models
        # recommendations learn from validated clicks, in the same loop and snapshot
        self.clicks_topic = settings.topics.valid_clicks if settings.recommend.enabled else None
        self.data_dir = Path(settings.index.data_dir)
        self.offsets: Offsets = {t: {} for t in self.topics}
        self.recommender = Recommender(
            settings.recommend,
            category_of=self._category_of,
            leaf_of=self._leaf_of,
            available=lambda item: live.get(item) is not None,
            content=live.neighbours,
        )
        # the API thread reads the recommender while this loop updates it
        self.recommend_lock = threading.Lock()
        self.registry = open_registry(settings)
        # publications wait here for the model thread, with their (partition, offset)
        self._models: queue.Queue[tuple[ModelPublication, int, int]] = queue.Queue()
        self._offsets_lock = threading.Lock()
        self.model_stats: dict[str, Any] = {
            "loaded": 0,
            "fusions_loaded": 0,
            "refused": 0,
            "last_error": None,
        }
        self.restored_from_snapshot = False
        self.skipped_messages = 0  # messages that failed their contract (dead-lettered)
        self.dead_letters = DeadLetterSink(settings, bootstrap)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error
        self._dirty = False
        self.capabilities: BrokerCapabilities | None = None  # measured at start
        self.lag: LagMonitor | None = None
        self.caught_up = threading.Event()
        self.error: Exception | None = None

    @property
    def topics(self) -> list[str]:
        """What this replica reads (every partition of each)."""
        return [self.topic, self.models_topic] + ([self.clicks_topic] if self.clicks_topic else [])

    def _category_of(self, item: str) -> str | None:
        stored = self.live.get(item)
        return stored.item.category_path[0] if stored and stored.item.category_path else None

    def _leaf_of(self, item: str) -> str | None:
        stored = self.live.get(item)
        return (
            " > ".join(stored.item.category_path) if stored and stored.item.category_path else None
        )

    def start(self) -> None:
        """Restore the latest snapshot, assign every partition at its offset, start consuming."""
        restored = self.live.load_snapshot(self.data_dir)
        if restored is not None:
            self.offsets = {t: dict(restored.get(t, {})) for t in self.topics}
            if self.clicks_topic and not self._restore_recommender():
                self.offsets[self.clicks_topic] = {}  # no recommender state: read clicks again
            self.restored_from_snapshot = True
            LOG.info(
                "restored %d items from snapshot; resuming at %s",
                len(self.live),
                self.offsets[self.topic],
            )
        if self.settings.index.learned_fusion and (fusion := self.registry.current_fusion()):
            self.use_fusion(fusion)  # the registry's serving fusion, as at the last publication
        ensure_topics(self.bootstrap, self.topics, self.settings.partitions)
        self.capabilities = probe_capabilities(self.bootstrap)
        self.lag = LagMonitor(
            self.bootstrap,
            self.topics,
            self._applied_offsets,
            reader=f"replica:{self.settings.index.replica_id}",
        ).start()
        self._thread = threading.Thread(target=self._run, name="index-replica", daemon=True)
        self._thread.start()
        self._model_thread = threading.Thread(
            target=self._follow_models, name="index-models", daemon=True
        )
        self._model_thread.start()

    def _applied_offsets(self) -> Offsets:
        with self._offsets_lock:
            return {t: dict(p) for t, p in self.offsets.items()}

    def _restore_recommender(self) -> bool:
        """Load the recommender from the snapshot; False when it holds none of this version
        (an older replica's snapshot: the clicks are then read again from the start)."""
        blob = self.live.snapshot_extras.get(RECOMMEND_FILE)
        if blob is None:
            return False
        try:
            state = loads_state(blob, kind=RECOMMEND_KIND, version=RECOMMEND_VERSION)
        except StateError as exc:
            LOG.warning("recommender state not restored (%s): relearning from the clicks", exc)
            return False
        self.recommender.load_state(state)
        return True

    def _run(self) -> None:
        cfg = self.settings.index
        consumer = partition_reader(
            self.bootstrap,
            self.topics,
            name=f"ecrec-index-{cfg.replica_id}",
            offsets=self.offsets,
        )
        try:
            ends = self._end_offsets(consumer)
            last_snapshot = time.monotonic()
            while not self._stop.is_set():
                messages = fetch(consumer, cfg.fetch_max_messages, cfg.batch_wait_s)
                if messages:
                    self._apply(messages)
                if not self.caught_up.is_set() and self._reached(ends, not messages):
                    self.caught_up.set()
                if self._dirty and time.monotonic() - last_snapshot >= cfg.snapshot_interval_s:
                    self.snapshot()
                    last_snapshot = time.monotonic()
        except Exception as exc:
            LOG.exception("index replica stopped on an error")
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            consumer.close()

    def _end_offsets(self, consumer: Any) -> dict[int, int] | None:
        """Each item partition's end offset when the replica starts (``None`` when the broker
        does not answer): the replica has caught up once it has applied everything before
        them. A first empty fetch does not show that: it may come before the first fetch
        response. Where the broker's ends stop at the last producer batch's base offset (Tansu,
        docs/broker.md), that batch is read to its last record."""
        try:
            marks = {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                for p in topic_partitions(self.bootstrap, self.topic)
            }
            ends = {(self.topic, p): high for p, (low, high) in marks.items() if high > low}
            if self.capabilities is None or not self.capabilities.exact_end_offsets:
                ends = last_record_ends(self.bootstrap, ends)
        except Exception as exc:  # KafkaException; an answer is not worth stopping the index
            LOG.warning("no end offsets (%s): caught up at the first empty fetch", exc)
            return None
        return {p: end for (_, p), end in ends.items()}  # non-empty partitions only

    def _reached(self, ends: dict[int, int] | None, idle: bool) -> bool:
        if ends is None:
            return idle
        with self._offsets_lock:
            done = self.offsets[self.topic]
            return all(done.get(p, 0) >= end for p, end in ends.items())

    def _apply(self, messages: list[Message]) -> None:
        """Apply fetched messages in micro-batches of at most ``batch_max`` items.

        A message is an ``EventBatch`` of up to an ingest batch of items, so a bulk load would
        otherwise be embedded whole before any of it is searchable; each micro-batch becomes
        searchable as soon as it is embedded.
        """
        limit = self.settings.index.batch_max
        events: list[ItemEvent] = []
        clicks: list[ClickEvent] = []
        advanced = {t: dict(self.offsets[t]) for t in (self.topic, self.clicks_topic) if t}
        for message in messages:
            if message.topic() == self.models_topic:
                self._queue_model(message)
                continue
            try:
                batch = EventBatch.model_validate_json(message.value() or b"")
            except ValidationError as exc:
                # The stream worker validated these already; a bad one means another producer
                # wrote to the validated topic. Set it aside rather than stop the index.
                self._dead_letter(message, "batch", exc)
            else:
                for event in batch.events:
                    if isinstance(event, ClickEvent):
                        clicks.append(event)
                    elif isinstance(event, ItemEvent):
                        events.append(event)
                        if len(events) >= limit:
                            self._apply_items(events)
                            events = []
            partition, offset, topic = message.partition(), message.offset(), message.topic()
            if partition is not None and offset is not None and topic in advanced:
                advanced[topic][partition] = offset + 1
        if events:
            self._apply_items(events)
        if clicks:
            with self.recommend_lock:
                self.recommender.observe_many(clicks)
        # Offsets move only after the events are in the index, so a snapshot never claims
        # more than it holds.
        with self._offsets_lock:
            self.offsets.update(advanced)
        self._dirty = True

    def _apply_items(self, events: list[ItemEvent]) -> None:
        """Apply item changes; items they deleted leave every recommendation, too."""
        self.live.apply_many(events)
        gone = [e.item_id for e in events if e.is_delete and self.live.get(e.item_id) is None]
        if gone and self.clicks_topic:
            with self.recommend_lock:
                self.recommender.forget_items(gone)

    def _dead_letter(self, message: Message, kind: str, exc: ValidationError) -> None:
        """A message that fails its topic's contract goes to the dead-letter topic and is
        skipped (every replica refuses it under the same id)."""
        self.skipped_messages += 1
        self.dead_letters.send(message, kind, exc)

    # -- following ecrec.models ----------------------------------------------------------
    def _queue_model(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        try:
            publication = ModelPublication.model_validate_json(message.value() or b"")
        except ValidationError as exc:
            self._dead_letter(message, "model_publication", exc)
            self._advance_models(partition, offset)
            return
        self._models.put((publication, partition or 0, offset or 0))

    def _advance_models(self, partition: int | None, offset: int | None) -> None:
        if partition is not None and offset is not None:
            with self._offsets_lock:
                self.offsets[self.models_topic][partition] = offset + 1
            self._dirty = True

    def _follow_models(self) -> None:
        """Swap to each published version in turn (of a queued run, only the newest encoder
        and the newest fusion)."""
        while not self._stop.is_set():
            try:
                first = self._models.get(timeout=0.2)
            except queue.Empty:
                # The same thread as model swaps, so an IVF re-training and a re-embedding
                # never run at once; both leave the serving index answering meanwhile.
                if self.live.retrain_due():
                    self._retrain_index()
                continue
            newest = {first[0].artifact: first}
            while not self._models.empty():  # a newer publication supersedes its kind's older
                publication, partition, offset = self._models.get_nowait()
                if (older := newest.get(publication.artifact)) is not None:
                    self._advance_models(older[1], older[2])
                newest[publication.artifact] = (publication, partition, offset)
            for publication, partition, offset in sorted(newest.values(), key=lambda m: m[2]):
                if publication.artifact == "fusion":
                    self.use_fusion(publication.version)
                elif publication.version != self.live.serving.version:
                    self.swap_to(publication.version)
                # The offset moves only once the swap is done (or refused): a snapshot taken
                # meanwhile still names the old model and makes a restart load this one again.
                self._advance_models(partition, offset)

    def _retrain_index(self) -> None:
        started = time.monotonic()
        if self.live.retrain_index():
            self._dirty = True
            LOG.warning(
                "item index moved to an IVF of %s lists over %d items in %.1f s",
                self.live.index.nlist,
                len(self.live),
                time.monotonic() - started,
            )

    def use_fusion(self, version: str) -> bool:
        """Verify and load the learned fusion ``version``; False (the old fusion keeps
        serving) if refused."""
        try:
            fusion = self.registry.load_fusion(version)
        except EcrecError as exc:
            LOG.error("refusing fusion %s, the old one keeps serving: %s", version, exc)
            self.model_stats["refused"] += 1
            self.model_stats["last_error"] = str(exc)
            return False
        self.live.set_fusion(fusion)
        self.model_stats["fusions_loaded"] += 1
        LOG.warning("hybrid search now fused by learned fusion %s", version)
        return True

    def swap_to(self, version: str) -> bool:
        """Verify and load ``version`` from the registry, re-embed, swap; False if refused."""
        try:
            encoder: Encoder = self.registry.load_encoder(version, self.settings.embedding)
        except EcrecError as exc:
            LOG.error("refusing model %s, the old one keeps serving: %s", version, exc)
            self.model_stats["refused"] += 1
            self.model_stats["last_error"] = str(exc)
            return False
        started = time.monotonic()
        embedded = self.live.swap_encoder(encoder, self.settings.index.batch_max)
        self.model_stats["loaded"] += 1
        self.model_stats["last_swap_s"] = round(time.monotonic() - started, 3)
        LOG.warning("now serving model %s (%d items re-embedded)", version, embedded)
        self._dirty = True
        return True

    def snapshot(self) -> Path:
        offsets = self._applied_offsets()
        extras = {}
        if self.clicks_topic:
            with self.recommend_lock:
                state = self.recommender.state_dict()
            extras[RECOMMEND_FILE] = dumps_state(
                state, kind=RECOMMEND_KIND, version=RECOMMEND_VERSION
            )
        path = self.live.save_snapshot(self.data_dir, offsets, extras)
        self._dirty = False
        return path

    def stop(self, *, final_snapshot: bool = True) -> None:
        self._stop.set()
        if self.lag is not None:
            self.lag.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if getattr(self, "_model_thread", None) is not None:
            self._model_thread.join(timeout=60)
        if final_snapshot and self._dirty:
            self.snapshot()

    def recommend_stats(self) -> dict[str, Any]:
        """What the recommender holds (``enabled`` false when it is off)."""
        if self.clicks_topic is None:
            return {"enabled": False}
        with self.recommend_lock:
            return {"enabled": True, **self.recommender.stats()}

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def serving_encoder(settings: Settings) -> Encoder:
    """The encoder a replica starts with: the version its snapshot was built with, when the
    registry has it (so a replica restarted after a swap serves the new model without
    re-embedding), else the configured model."""
    from ecrec_stream.embedding import SentenceTransformerEncoder

    version = snapshot_model(Path(settings.index.data_dir))
    registry = open_registry(settings)
    if version is not None and registry.has(version):
        try:
            return registry.load_encoder(version, settings.embedding)
        except EcrecError as exc:
            LOG.error(
                "snapshot model %s is not loadable (%s); using %s",
                version,
                exc,
                settings.embedding.model,
            )
    return SentenceTransformerEncoder(settings.embedding)
