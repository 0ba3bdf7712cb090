"""What the broker can do, measured rather than assumed from its name, and consumer lag where
the broker's end offsets can be trusted.

The embedded Tansu broker answers ListOffsets(latest) with the last record *batch's* base
offset + 1, not the high watermark, and reports no topic configurations (docs/broker.md);
Apache Kafka does both. Each workaround in the project is chosen by the capability it works
around, so a Kafka-compatible broker that does these right (Kafka, Redpanda, a fixed Tansu) gets
the plain client behaviour:

* ``exact_end_offsets``: produce a two-record batch to a probe topic and compare the high
  watermark with the offsets the broker acknowledged. Where they agree, lag is read from
  watermarks; where they do not, lag is reported as unknown (``null``, with the reason), and
  the "end" that table recovery and the index replica wait for is read to the last record
  of the last batch (:func:`last_record_ends`). Faust writes its changelogs in full producer
  batches on either broker.
* ``topic_configs``: DescribeConfigs reports a topic's ``cleanup.policy``, so compacted
  changelogs are possible and can be checked.
* ``replication``: the broker's ``default.replication.factor`` (1 where it is not described):
  what the topics Faust creates itself (table changelogs, its assignor's) are given, like the
  project's own topics (``streams.kafka.ensure_topics`` asks for the broker default).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client import Gauge

from streams.kafka import consumer_config, ensure_topics, new_producer, topic_partitions

LOG = logging.getLogger(__name__)
PROBE_TOPIC = "__ecrec_capabilities"
NO_WATERMARKS = "this broker's end offsets are not high watermarks (docs/broker.md)"

Offsets = dict[str, dict[int, int]]  # topic -> partition -> offset
CONSUMER_LAG = Gauge(
    "ecrec_consumer_lag",
    "Records between a reader's position and the partition's high watermark",
    ["reader", "topic", "partition"],
)


@dataclass(frozen=True)
class BrokerCapabilities:
    exact_end_offsets: bool
    topic_configs: bool
    replication: int = 1

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


@functools.lru_cache(maxsize=8)
def probe_capabilities(bootstrap: str, timeout_s: float = 10.0) -> BrokerCapabilities:
    """Measure what the broker at ``bootstrap`` does (once per process and bootstrap)."""
    ensure_topics(bootstrap, [PROBE_TOPIC], 1)
    producer = new_producer(bootstrap, **{"linger.ms": 50})
    acked: list[int] = []

    def delivered(err: Any, message: Any) -> None:
        if err is None:
            acked.append(message.offset())

    for value in (b"probe-1", b"probe-2"):  # one batch: the linger holds the first
        producer.produce(PROBE_TOPIC, value=value, partition=0, on_delivery=delivered)
    producer.flush(timeout_s)
    if len(acked) != 2:
        raise RuntimeError(f"the capability probe was not acknowledged by {bootstrap}")
    consumer = Consumer(consumer_config(bootstrap, f"ecrec-probe-{uuid.uuid4().hex[:8]}"))
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(PROBE_TOPIC, 0), timeout_s)
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, PROBE_TOPIC)
    try:
        described = admin.describe_configs([resource])[resource].result(timeout_s)
        topic_configs = "cleanup.policy" in described
    except Exception:  # KafkaException: the broker does not describe configs
        topic_configs = False
    found = BrokerCapabilities(
        exact_end_offsets=high == max(acked) + 1,
        topic_configs=topic_configs,
        replication=_default_replication(admin, timeout_s) if topic_configs else 1,
    )
    LOG.info("broker %s: %s", bootstrap, found)
    return found


def _default_replication(admin: AdminClient, timeout_s: float) -> int:
    """The brokers' ``default.replication.factor`` (1 if they do not say)."""
    broker = next(iter(admin.list_topics(timeout=timeout_s).brokers))
    resource = ConfigResource(ConfigResource.Type.BROKER, str(broker))
    try:
        described = admin.describe_configs([resource])[resource].result(timeout_s)
        return max(1, int(described["default.replication.factor"].value))
    except Exception:  # KafkaException, KeyError, ValueError: not described
        return 1


def end_offsets(bootstrap: str, topics: list[str], timeout_s: float = 10.0) -> Offsets:
    """High watermark of every partition of ``topics`` (trust them only where
    :attr:`BrokerCapabilities.exact_end_offsets`)."""
    consumer = Consumer(consumer_config(bootstrap, f"ecrec-lag-{uuid.uuid4().hex[:8]}"))
    try:
        return {
            topic: {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout_s)[1]
                for p in topic_partitions(bootstrap, topic)
            }
            for topic in topics
        }
    finally:
        consumer.close()


def last_record_ends(
    bootstrap: str, reported: Mapping[tuple[str, int], int], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """One past the last record of each (topic, partition), given the end offsets a broker
    without :attr:`BrokerCapabilities.exact_end_offsets` reported: Tansu's is the last record
    batch's base offset + 1, so that batch is read from its base and its last record counted.
    A partition that gives no record within ``timeout_s`` keeps its reported end; on a broker
    whose ends are exact the answer equals ``reported``.

    Written here because no client library corrects a broker's ListOffsets answer; it reads
    one batch per partition (~0.1-0.4 s in all), so it is meant for rare calls such as table
    recovery, not for a lag poll.
    """
    out = dict(reported)
    pending = {key: end for key, end in reported.items() if end > 0}
    if not pending:
        return out
    consumer = Consumer(consumer_config(bootstrap, f"ecrec-ends-{uuid.uuid4().hex[:8]}"))
    try:
        consumer.assign([TopicPartition(t, p, end - 1) for (t, p), end in pending.items()])
        seen: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            messages = consumer.consume(1000, 0.2)
            for message in messages:
                offset = message.offset()
                if message.error() is None and offset is not None:
                    key = (str(message.topic()), int(message.partition() or 0))
                    seen[key] = max(seen.get(key, 0), offset + 1)
            # a fetch returns whole batches: once every partition gave a record, a poll that
            # brings nothing more means each last batch was read to its end
            if not messages and seen.keys() >= pending.keys():
                break
    finally:
        consumer.close()
    for key, end in pending.items():
        if key not in seen:
            LOG.warning("no record read at %s[%d] offset %d: kept that end", *key, end - 1)
        out[key] = max(end, seen.get(key, end))
    return out


def committed_offsets(
    bootstrap: str, group: str, topics: list[str], timeout_s: float = 10.0
) -> Offsets:
    """The consumer group's committed offsets (a partition without one is absent)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(group)
    answer = admin.list_consumer_group_offsets([request])[group].result(timeout_s)
    out: Offsets = {t: {} for t in topics}
    for tp in answer.topic_partitions:
        if tp.topic in out and tp.offset >= 0:
            out[tp.topic][tp.partition] = tp.offset
    return out


def lag(
    ends: Mapping[str, Mapping[int, int]], positions: Mapping[str, Mapping[int, int]]
) -> Offsets:
    """Records behind, per topic and partition: end offset minus the next offset to read (a
    partition never read counts from 0).

    >>> lag({"t": {0: 10, 1: 5}}, {"t": {0: 7}})
    {'t': {0: 3, 1: 5}}
    """
    return {
        topic: {p: max(0, end - positions.get(topic, {}).get(p, 0)) for p, end in parts.items()}
        for topic, parts in ends.items()
    }


class LagMonitor:
    """Reads lag every ``interval_s`` on a thread of its own (so no request or event loop
    waits on the broker): ``positions()`` gives where the reader is (a replica's applied
    offsets, or a group's committed ones). ``latest`` is ``None`` where the broker's end offsets
    cannot be trusted, with ``reason`` saying so; a gauge, if given, is set per partition."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        positions: Callable[[], Mapping[str, Mapping[int, int]]],
        *,
        reader: str,
        interval_s: float = 5.0,
        gauge: Any = CONSUMER_LAG,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.positions = positions
        self.reader = reader
        self.interval_s = interval_s
        self.gauge = gauge
        self.latest: Offsets | None = None
        self.ends: Offsets | None = None  # the end offsets last read (None: not trustworthy)
        self.reason: str | None = None
        self.measured_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LagMonitor:
        self._thread = threading.Thread(target=self._run, name=f"lag-{self.reader}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            if not probe_capabilities(self.bootstrap).exact_end_offsets:
                self.reason = NO_WATERMARKS
                return
        except Exception as exc:  # the broker is unreachable: say so, do not stop the reader
            self.reason = f"capability probe failed: {exc}"
            return
        while not self._stop.is_set():
            try:
                self.read_once()
            except Exception as exc:  # a failed read leaves the last figures, with the reason
                self.reason = f"lag not read: {exc}"
                LOG.warning("lag of %s not read: %s", self.reader, exc)
            self._stop.wait(self.interval_s)

    def read_once(self) -> Offsets:
        self.ends = end_offsets(self.bootstrap, self.topics)
        behind = lag(self.ends, self.positions())
        self.latest, self.reason, self.measured_at = behind, None, time.time()
        if self.gauge is not None:
            for topic, parts in behind.items():
                for partition, value in parts.items():
                    self.gauge.labels(self.reader, topic, str(partition)).set(value)
        return behind

    def as_dict(self) -> dict[str, Any]:
        """What ``/stats`` shows: total and per-partition lag, or why there is none."""
        return {
            "reader": self.reader,
            "total": sum(v for parts in self.latest.values() for v in parts.values())
            if self.latest is not None
            else None,
            "partitions": self.latest,
            "measured_at": self.measured_at,
            "reason": self.reason,
        }
