"""Faults against real processes and brokers: what goes in, what comes out, what is lost.

``python -m bench.reliability [--only worker,replica,trainer,leader,embedded,throughput]``

Each fault is a SIGKILL (no shutdown, no final snapshot or commit) in the middle of a stream:

* **worker**: the stream worker (ingest) on Apache Kafka 3.9, killed after ~30% of 20,000
  reviews were validated, restarted on the same data dir;
* **replica**: an index replica (real MiniLM), killed after ~40% of 3,000 items were indexed,
  restarted from its snapshot;
* **trainer**: the trainer, killed after ~30% of 3,000 relevance examples were buffered,
  restarted from its saved buffer;
* **leader**: the leader of a partition of a three-node Kafka cluster (replication 3,
  ``min.insync.replicas`` 2), with a producer sending items at ``acks=all`` to a worker and a
  replica that are not restarted (tests/test_cluster.py);
* **embedded**: the embedded Tansu broker on ``s3://`` storage (moto's S3 emulator), killed
  after a consumer group committed 60% of 20,000 records, restarted.

"In" is what was sent (or acknowledged, for the leader fault), "out" the distinct records
that came out the other side, "lost" in minus out (must be 0), "duplicates" records delivered
more than once (at-least-once; every id is deterministic), "stall" the longest time nothing
came out after the kill (restart included). ``throughput`` runs the ingest-only worker on Kafka
and on Tansu in the same run (bench.ingest's measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import console, report
from ecrec_stream.contracts.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, partition_reader
from tests.helpers import isolated_env, unique, wait_until
from workers.processes import indexer_process, trainer_process, worker_process

SCENARIOS = ("worker", "replica", "trainer", "leader", "embedded", "throughput")


class Watch:
    """Polls ``count()`` every 0.2 s on a thread: the longest flat stretch after ``mark()``."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.samples: list[tuple[float, int]] = []
        self.marked = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the process is down (killed): no sample
                self.samples.append((time.monotonic(), self.count()))
            time.sleep(0.2)

    def mark(self) -> None:
        self.marked = time.monotonic()

    def stall(self, done: int) -> float:
        from tests.test_cluster import longest_stall

        self._stop.set()
        self._thread.join(5)
        after = [(t, c) for t, c in self.samples if t >= self.marked]
        # from the kill to the first sample that moved counts too (the process was down)
        if after:
            after.insert(0, (self.marked, after[0][1]))
        return longest_stall(after, done)


def _reviews(topic: str, tag: str, n: int) -> list[tuple[str, str, bytes]]:
    now = utc_now().isoformat()
    return [
        (
            topic,
            f"item-{i % 97}",
            json.dumps(
                {
                    "event_id": f"{tag}-{i}",
                    "ts": now,
                    "item_id": f"item-{i % 97}",
                    "rating": 1 + i % 5,
                    "text": "fine",
                }
            ).encode(),
        )
        for i in range(n)
    ]


def _send(bootstrap: str, records: list[tuple[str, str, bytes]]) -> None:
    producer = new_producer(bootstrap)
    for n, (topic, key, value) in enumerate(records):
        producer.produce(topic, key=key.encode(), value=value)
        if n % 5_000 == 0:
            producer.flush()
    assert producer.flush(60) == 0


class TopicIds:
    """Reads a topic of batches (EventBatch / ExampleBatch) on a thread: every id seen."""

    def __init__(self, bootstrap: str, topic: str, field: str, key: str) -> None:
        self.ids: list[str] = []
        self._consumer = partition_reader(bootstrap, [topic], name="bench-reliability")
        self._field, self._key = field, key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._consumer.consume(500, 0.2):
                if m.error() is None and m.value():
                    body = json.loads(m.value())
                    self.ids += [e[self._key] for e in body.get(self._field, [])]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _row(
    fault: str, broker: str, sent: int, out: list[str] | set[str], dups: int, stall: float
) -> dict[str, Any]:
    distinct = len(set(out))
    return {
        "fault": fault,
        "broker": broker,
        "in": sent,
        "out": distinct,
        "lost": sent - distinct,
        "duplicates": dups,
        "stall_s": round(stall, 1),
    }


def worker_fault(broker: Any, workdir: Path, n: int = 20_000) -> dict[str, Any]:
    tag = unique("rw")
    names, env = isolated_env(tag)
    env |= {"ECREC_INGEST__BATCH_MAX": "50", "ECREC_LABELS__ENABLED": "false"}
    env["ECREC_DRIFT__ENABLED"] = "false"
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    _send(broker.bootstrap, _reviews(names.reviews, tag, n))
    out = TopicIds(broker.bootstrap, names.valid_reviews, "events", "event_id")
    watch = Watch(lambda: len(set(out.ids)))
    proc = worker_process(broker.url, workdir / tag, free_port(), extra_env=env).start()
    wait_until(lambda: len(out.ids) >= 0.3 * n, 240, 0.05)
    proc.kill()
    watch.mark()
    proc = worker_process(broker.url, workdir / tag, free_port(), extra_env=env).start()
    try:
        wait_until(lambda: len(set(out.ids)) >= n, 300)
        time.sleep(2)  # late duplicates
    finally:
        proc.stop()
        out.close()
    ids = out.ids
    return _row(
        "stream worker SIGKILL", "Kafka 3.9", n, ids, len(ids) - len(set(ids)), watch.stall(n)
    )


def replica_fault(broker: Any, workdir: Path, n: int = 3_000) -> dict[str, Any]:
    tag = unique("rr")
    names, env = isolated_env(tag)
    env["ECREC_INDEX__SNAPSHOT_INTERVAL_S"] = "2"
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    now = utc_now().isoformat()
    batches = [
        (
            names.valid_items,
            str(i),
            json.dumps(
                {
                    "kind": "item",
                    "source": {"topic": "t", "partition": 0, "offset": i},
                    "last_offset": i,
                    "events": [
                        {
                            "type": "item",
                            "event_id": f"{tag}-{i}",
                            "ts": now,
                            "op": "upsert",
                            "item_id": f"{tag}-{i}",
                            "title": f"merino wool scarf number {i}",
                        }
                    ],
                }
            ).encode(),
        )
        for i in range(n)
    ]
    _send(broker.bootstrap, batches)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def stats() -> dict[str, Any]:
        return dict(httpx.get(f"{base}/stats", timeout=2).json())

    proc = indexer_process(broker.url, workdir / tag, port, extra_env=env).start()
    proc.wait_http(f"{base}/healthz", timeout_s=180)
    watch = Watch(lambda: int(stats()["items"]))
    wait_until(lambda: stats()["items"] >= 0.4 * n, 240, 0.1)
    seen_before = stats()["items"]
    proc.kill()
    watch.mark()
    proc = indexer_process(broker.url, workdir / tag, port, extra_env=env).start()
    try:
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        wait_until(lambda: stats()["items"] >= n, 300)
        final = stats()
        indexed = {
            f"{tag}-{i}"
            for i in range(n)
            if httpx.get(f"{base}/items/{tag}-{i}").status_code == 200
        }
    finally:
        proc.stop()
    # applied twice: what was in the index at the kill but not in its last snapshot
    reapplied = max(0, final["items_embedded"] - (n - seen_before))
    return _row("index replica SIGKILL", "Kafka 3.9", n, indexed, reapplied, watch.stall(n))


def trainer_fault(broker: Any, workdir: Path, n: int = 3_000) -> dict[str, Any]:
    from ecrec_stream.labels.examples import ExampleBatch
    from tests.helpers import toy_relevance

    tag = unique("rt")
    names, env = isolated_env(tag)
    env["ECREC_TRAINING__SAVE_INTERVAL_S"] = "1"
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    _, examples = toy_relevance(n)
    examples = examples[:n]
    batches = [
        (
            names.examples,
            f"k{i}",
            ExampleBatch(task="relevance", examples=examples[i : i + 20])
            .model_dump_json()
            .encode(),
        )
        for i in range(0, len(examples), 20)
    ]
    data = workdir / tag
    status = data / "trainer" / "status.json"

    def counts() -> dict[str, int]:
        return dict(json.loads(status.read_text())["buffer_counts"]) if status.exists() else {}

    proc = trainer_process(broker.url, data, extra_env=env).start()
    watch = Watch(lambda: counts().get("added", 0))
    time.sleep(8)  # the trainer loads its model before it reads
    producer = new_producer(broker.bootstrap)
    killed = False
    for topic, key, value in batches:  # a stream, not a backlog: the kill lands mid-way
        producer.produce(topic, key=key.encode(), value=value)
        producer.poll(0)
        time.sleep(0.02)
        if not killed and counts().get("added", 0) >= 0.3 * len(examples):
            killed = True
            proc.kill()
            watch.mark()
            proc = trainer_process(broker.url, data, extra_env=env).start()
    assert producer.flush(60) == 0
    try:
        wait_until(lambda: counts().get("added", 0) >= len(examples), 300)
        final = counts()
    finally:
        proc.stop()
    kept = final["added"]
    return _row(
        "trainer SIGKILL", "Kafka 3.9", len(examples), [str(i) for i in range(kept)],
        final.get("duplicates", 0), watch.stall(len(examples)),
    )  # fmt: skip


def leader_fault(version: str, workdir: Path) -> dict[str, Any]:
    from tests.kafka_broker import KafkaBroker
    from tests.test_cluster import leader_kill

    with KafkaBroker(nodes=3, version=version) as cluster:
        result = leader_kill(cluster, workdir / "cluster")
    row = _row(
        "partition leader SIGKILL (3 brokers)",
        f"Kafka {version} x3",
        result["acked"],
        [str(i) for i in range(result["indexed"])],
        0,
        result["stall_s"],
    )
    row["not acknowledged"] = result["sent"] - result["acked"]
    return row


def embedded_fault(workdir: Path, n: int = 20_000) -> dict[str, Any]:
    import boto3
    from confluent_kafka import Consumer
    from moto.server import ThreadedMotoServer

    from streams.kafka import consumer_config

    s3_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
    }
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="tansu")
    port = free_port()
    broker = EmbeddedBroker(port=port, storage="s3://tansu/").start()
    topic, group = unique("durable"), unique("g")
    got: list[int] = []
    try:
        ensure_topics(broker.bootstrap, [topic], 4)
        _send(broker.bootstrap, [(topic, f"k{i}", str(i).encode()) for i in range(n)])

        def read(count: int) -> None:
            consumer = Consumer(consumer_config(broker.bootstrap, group))
            consumer.subscribe([topic])
            target = len(got) + count
            deadline = time.monotonic() + 120
            while len(got) < target and time.monotonic() < deadline:
                got.extend(int(m.value()) for m in consumer.consume(500, 0.5) if m.error() is None)
            consumer.commit(asynchronous=False)
            consumer.close()

        read(int(0.6 * n))
        os.kill(broker._proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        broker._proc.wait()  # type: ignore[union-attr]
        killed = time.monotonic()
        broker = EmbeddedBroker(port=port, storage="s3://tansu/").start()
        before = len(got)
        consumer = Consumer(consumer_config(broker.bootstrap, group))
        consumer.subscribe([topic])
        first = None
        deadline = time.monotonic() + 120
        while len(set(got)) < n and time.monotonic() < deadline:
            batch = [int(m.value()) for m in consumer.consume(500, 0.5) if m.error() is None]
            if batch and first is None:
                first = time.monotonic()
            got.extend(batch)
        consumer.close()
        assert len(got) > before
    finally:
        broker.stop()
        server.stop()
        for key in env:
            os.environ.pop(key, None)
    return _row(
        "embedded broker SIGKILL + restart", "Tansu s3://", n, [str(g) for g in got],
        len(got) - len(set(got)), (first or killed) - killed,
    )  # fmt: skip


def throughput(kafka: Any, workdir: Path, events: int) -> list[dict[str, Any]]:
    from bench.ingest import run_worker

    args = argparse.Namespace(events=events, bad_rate=0.01)
    rows = []
    with EmbeddedBroker() as tansu:
        for name, broker in (("Tansu (embedded)", tansu), ("Apache Kafka 3.9", kafka)):
            result = run_worker(broker, args, workdir)
            rows.append({"broker": name, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--events", type=int, default=20_000, help="throughput run")
    parser.add_argument("--kafka-version", default="3.9.0")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-reliability-"))
    rows: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    from tests.kafka_broker import KafkaBroker

    with KafkaBroker(version=args.kafka_version) as kafka:
        for name, run in (
            ("worker", worker_fault),
            ("replica", replica_fault),
            ("trainer", trainer_fault),
        ):
            if name in chosen:
                console.print(f"fault: {name}")
                rows.append(run(kafka, workdir))
                console.print(rows[-1])
        if "throughput" in chosen:
            speed = throughput(kafka, workdir, args.events)
    if "leader" in chosen:
        rows.append(leader_fault(args.kafka_version, workdir))
        console.print(rows[-1])
    if "embedded" in chosen:
        rows.append(embedded_fault(workdir))
        console.print(rows[-1])
    report(
        "reliability",
        "Faults mid-stream (SIGKILL): records in, out, lost, duplicated, seconds of stall",
        ["fault", "broker", "in", "out", "lost", "duplicates", "stall s"],
        [
            [r["fault"], r["broker"], r["in"], r["out"], r["lost"], r["duplicates"], r["stall_s"]]
            for r in rows
        ],
        {"faults": rows, "throughput": speed},
    )
    if speed:
        report(
            "reliability_throughput",
            f"Ingest-only worker, {args.events:,} reviews, 1% malformed, same run",
            ["broker", "events/s", "CPU µs/event", "peak RSS MB"],
            [
                [s["broker"], s["events_per_s"], s["cpu_us_per_event"], s["peak_rss_mb"]]
                for s in speed
            ],
            {"results": speed},
        )


if __name__ == "__main__":
    main()
