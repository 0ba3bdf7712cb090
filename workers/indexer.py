"""An index replica: consumes *all* partitions of the validated items topic, keeps a
:class:`~ecrec_stream.index.LiveItemIndex` fresh, snapshots it, and serves search over HTTP.

It uses confluent-kafka with manual partition assignment rather than a consumer group: each
replica must read every partition (not share them), and a restarted replica must start exactly
at the offsets stored in its snapshot. Assignment gives both directly and skips the group join
(which Tansu holds for seconds). No offsets are committed to Kafka: the snapshot is the commit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaError, Message
from pydantic import ValidationError

from ecrec_stream.config import Settings
from ecrec_stream.events import EventBatch, ItemEvent
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.persist import Offsets
from streams.kafka import ensure_topics, partition_reader

LOG = logging.getLogger(__name__)


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
        self.data_dir = Path(settings.index.data_dir)
        self.offsets: Offsets = {self.topic: {}}
        self.restored_from_snapshot = False
        self.skipped_messages = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error
        self._dirty = False
        self.caught_up = threading.Event()
        self.error: Exception | None = None

    def start(self) -> None:
        """Restore the latest snapshot, assign every partition at its offset, start consuming."""
        restored = self.live.load_snapshot(self.data_dir)
        if restored is not None:
            self.offsets = {self.topic: dict(restored.get(self.topic, {}))}
            self.restored_from_snapshot = True
            LOG.info(
                "restored %d items from snapshot; resuming at %s",
                len(self.live),
                self.offsets[self.topic],
            )
        ensure_topics(self.bootstrap, [self.topic], self.settings.partitions)
        self._thread = threading.Thread(target=self._run, name="index-replica", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cfg = self.settings.index
        consumer = partition_reader(
            self.bootstrap, [self.topic], name=f"ecrec-index-{cfg.replica_id}", offsets=self.offsets
        )
        try:
            last_snapshot = time.monotonic()
            while not self._stop.is_set():
                messages = consumer.consume(
                    num_messages=cfg.fetch_max_messages, timeout=cfg.batch_wait_s
                )
                if messages:
                    self._apply(messages)
                elif not self.caught_up.is_set():
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

    def _apply(self, messages: list[Message]) -> None:
        """Apply fetched messages in micro-batches of at most ``batch_max`` items.

        A message is an ``EventBatch`` of up to an ingest batch of items, so a bulk load would
        otherwise be embedded whole before any of it is searchable; each micro-batch becomes
        searchable as soon as it is embedded.
        """
        limit = self.settings.index.batch_max
        events: list[ItemEvent] = []
        advanced = dict(self.offsets[self.topic])
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consume error: {err}")
            try:
                batch = EventBatch.model_validate_json(message.value() or b"")
            except ValidationError as exc:
                # The stream worker validated these already; a bad one means another producer
                # wrote to the validated topic. Skip it loudly rather than stop the index.
                LOG.error(
                    "skipping malformed batch at %s[%d]@%d: %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    exc,
                )
                self.skipped_messages += 1
            else:
                for event in batch.events:
                    if isinstance(event, ItemEvent):
                        events.append(event)
                        if len(events) >= limit:
                            self.live.apply_many(events)
                            events = []
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None:
                advanced[partition] = offset + 1
        if events:
            self.live.apply_many(events)
        # Offsets move only after the events are in the index, so a snapshot never claims
        # more than it holds.
        self.offsets[self.topic] = advanced
        self._dirty = True

    def snapshot(self) -> Path:
        path = self.live.save_snapshot(self.data_dir, self.offsets)
        self._dirty = False
        return path

    def stop(self, *, final_snapshot: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if final_snapshot and self._dirty:
            self.snapshot()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def serve_indexer(settings: Settings, bootstrap: str, *, log_level: str = "warning") -> None:
    """Run one replica with its HTTP API until SIGINT/SIGTERM; snapshot on the way out."""
    import uvicorn

    from ecrec_stream.embedding import SentenceTransformerEncoder
    from workers.api import create_api

    encoder = SentenceTransformerEncoder(settings.embedding)
    live = LiveItemIndex(encoder, settings.index)
    replica = IndexReplica(settings, bootstrap, live)
    replica.start()
    api = create_api(settings, replica)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the
    # handler that was installed before it. Make that a no-op so the final snapshot below runs
    # and the process exits 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        uvicorn.run(api, host=settings.index.host, port=settings.index.port, log_level=log_level)
    finally:
        replica.stop(final_snapshot=True)
