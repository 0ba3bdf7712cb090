"""confluent-kafka client settings and topic administration, tuned for both brokers.

Settings follow docs/broker.md: a short session timeout (Tansu holds JoinGroup for about
half of it), ``earliest`` resets (its ListOffsets(latest) is wrong), and the murmur2 partitioner
so that keys land where Faust (Java-compatible hashing) expects them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import ValidationError

from ecrec_stream.config import Settings, TopicNames, bootstrap_servers
from ecrec_stream.contracts.events import DeadLetter, DeadLetterReason, SourcePosition
from ecrec_stream.ingest.validation import RawRecord, make_dead_letter, summarise_errors

LOG = logging.getLogger(__name__)


def resolve_bootstrap(settings: Settings, embedded_bootstrap: str | None = None) -> str:
    """The bootstrap list for ``settings``; an embedded broker must already be running."""
    if settings.uses_embedded_broker:
        if embedded_bootstrap is None:
            raise ValueError("ECREC_BROKER=embedded but no embedded broker is running")
        return embedded_bootstrap
    return bootstrap_servers(settings.broker)


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "log.connection.close": False,
        **extra,
    }


def consumer_config(bootstrap: str, group_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 50,
        "log.connection.close": False,
        **extra,
    }


def all_topics(names: TopicNames) -> list[str]:
    return list(names.model_dump().values())


def ensure_topics(
    bootstrap: str, topics: Iterable[str], partitions: int, replication_factor: int = -1
) -> None:
    """Create ``topics`` with ``partitions`` partitions where they do not exist yet, replicated
    as the broker's ``default.replication.factor`` says (``-1``, KIP-464) unless told."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        LOG.info("created topic %s (%d partitions)", topic, partitions)


def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:
        raise KafkaException(meta.error)
    return sorted(meta.partitions)


def fetch(consumer: Consumer, num_messages: int, timeout: float) -> list[Message]:
    """Up to ``num_messages`` data messages: partition-EOF events are skipped, any other
    consumer error raises (fail-stop: a reader must not skip what it could not read)."""
    out = []
    for message in consumer.consume(num_messages=num_messages, timeout=timeout):
        err = message.error()
        if err is None:
            out.append(message)
        elif err.code() != KafkaError._PARTITION_EOF:
            raise RuntimeError(f"consume error: {err}")
    return out


class DeadLetterSink:
    """Sets aside on the dead-letter topic the messages a reader finds failing their topic's
    contract, with the reason. The dead letter's id is the message's
    position, so readers that all refuse one (every replica) write one id. Its producer is
    made on first use and each letter is flushed before the reader moves on."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.topic = settings.topics.dlq
        self.bootstrap = bootstrap
        self.max_raw_bytes = settings.ingest.dlq_max_raw_bytes
        self._producer: Producer | None = None

    def send(self, message: Message, kind: str, exc: ValidationError) -> DeadLetter:
        record = RawRecord(
            position=SourcePosition(
                topic=message.topic() or "",
                partition=message.partition() or 0,
                offset=message.offset() or 0,
            ),
            key=message.key(),
            value=message.value(),
        )
        letter = make_dead_letter(
            record,
            kind,
            DeadLetterReason.SCHEMA_VIOLATION,
            summarise_errors(exc),
            max_raw_bytes=self.max_raw_bytes,
        )
        if self._producer is None:
            self._producer = new_producer(self.bootstrap)
        self._producer.produce(
            self.topic, key=letter.dead_letter_id.encode(), value=letter.model_dump_json().encode()
        )
        self._producer.flush(10)
        LOG.error("%s set aside as a dead letter: %s", letter.dead_letter_id, letter.error)
        return letter


def new_producer(bootstrap: str, **extra: Any) -> Producer:
    return Producer(producer_config(bootstrap, **extra))


def partition_reader(
    bootstrap: str,
    topics: Iterable[str],
    *,
    name: str,
    offsets: Mapping[str, Mapping[int, int]] | None = None,
    **extra: Any,
) -> Consumer:
    """A consumer assigned every partition of ``topics`` (no consumer group), each from its
    next offset in ``offsets`` or from the beginning: what a replica, a cache or a reader of
    results needs, since each must see every partition rather than a group's share.

    ``name`` prefixes the consumer's unique group id (used only for client metadata).
    """
    consumer = Consumer(consumer_config(bootstrap, f"{name}-{uuid.uuid4().hex[:10]}", **extra))
    known = offsets or {}
    consumer.assign(
        [
            TopicPartition(topic, p, known.get(topic, {}).get(p, OFFSET_BEGINNING))
            for topic in topics
            for p in topic_partitions(bootstrap, topic)
        ]
    )
    return consumer
