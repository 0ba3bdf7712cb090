"""Broker faults on a three-node Apache Kafka cluster (KRaft on loopback; replication factor 3,
``min.insync.replicas`` 2): the leader of a partition is SIGKILLed while a producer with
``acks=all`` and idempotence sends items; every acknowledged item reaches the index replica
through the stream worker, which carry on without a restart. Runs in the Kafka leg only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecrec_stream.contracts.events import utc_now
from streams.broker import free_port
from streams.kafka import all_topics, ensure_topics, new_producer
from tests.helpers import isolated_env, unique, wait_until
from workers.processes import indexer_process, worker_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.config.getoption("--broker") != "kafka":
        pytest.skip("the three-node cluster needs Apache Kafka: it runs with --broker kafka")
    from tests.kafka_broker import KafkaBroker

    with KafkaBroker(nodes=3, version=request.config.getoption("--kafka-version")) as running:
        yield running


def leader_kill(cluster: Any, tmp_path: Path, n: int = 2000, rate: float = 250.0) -> dict[str, Any]:
    """Send ``n`` items at ``rate``/s, SIGKILL the leader of the items topic's partition 0 a
    third of the way in; returns what was acknowledged, indexed, and how long the index
    stalled. Shared with bench/reliability.py."""
    names, env = isolated_env(unique("cluster"))
    env |= {"ECREC_LABELS__ENABLED": "false", "ECREC_DRIFT__ENABLED": "false"}
    ensure_topics(cluster.bootstrap, all_topics(names), 4)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [
        worker_process(cluster.url, tmp_path / "worker", free_port(), extra_env=env).start(),
        indexer_process(cluster.url, tmp_path, port, extra_env=env).start(),
    ]
    acked: set[str] = set()
    failed: list[str] = []
    progress: list[tuple[float, int]] = []  # (time, items in the index)

    def delivered(err: Any, message: Any) -> None:
        item = json.loads(message.value())["item_id"]
        (failed.append(str(err)) if err is not None else acked.add(item))

    try:
        procs[1].wait_http(f"{base}/healthz", timeout_s=180)
        replicas = _replication(cluster, names.items)
        producer = new_producer(cluster.bootstrap)  # acks=all, idempotent
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                progress.append((time.monotonic(), httpx.get(f"{base}/stats").json()["items"]))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        killed, killed_at = None, 0.0
        started = time.monotonic()
        for i in range(n):
            doc = {
                "event_id": f"i{i}",
                "ts": utc_now().isoformat(),
                "op": "upsert",
                "item_id": f"it-{i}",
                "title": f"merino wool scarf number {i}",
            }
            producer.produce(
                names.items, key=doc["item_id"], value=json.dumps(doc), on_delivery=delivered
            )
            producer.poll(0)
            if killed is None and i == n // 3:
                killed, killed_at = cluster.leader_of(names.items, 0), time.monotonic()
                cluster.kill_node(killed)
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        assert producer.flush(120) == 0
        wait_until(lambda: httpx.get(f"{base}/stats").json()["items"] >= len(acked), 240)
        stop.set()
        watcher.join(5)
        indexed = {item for item in acked if httpx.get(f"{base}/items/{item}").status_code == 200}
        worker_alive = procs[0].alive() and procs[1].alive()
    finally:
        for proc in procs:
            proc.stop()
    stall = longest_stall([(t, c) for t, c in progress if t >= killed_at], len(acked))
    return {
        "replicas": replicas,
        "sent": n,
        "acked": len(acked),
        "failed": len(failed),
        "indexed": len(indexed),
        "lost": len(acked - indexed),
        "killed_node": killed,
        "stall_s": stall,
        "processes_alive": worker_alive,
    }


def longest_stall(samples: list[tuple[float, int]], done: int) -> float:
    """The longest time the count in ``samples`` (time, count) stayed the same below ``done``.

    >>> longest_stall([(0.0, 5), (0.2, 5), (1.0, 5), (1.2, 6), (1.4, 9)], 9)
    1.0
    """
    longest, since, last = 0.0, None, None
    for t, count in samples:
        if count != last:
            since, last = t, count
        elif count < done and since is not None:
            longest = max(longest, t - since)
    return longest


def _replication(cluster: Any, topic: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    def sizes() -> list[int]:
        meta = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        return [len(p.replicas) for p in meta.topics[topic].partitions.values()]

    wait_until(lambda: len(sizes()) == 4, 30)
    return sizes()


def test_a_killed_partition_leader_loses_nothing_acknowledged(cluster: Any, tmp_path: Path) -> None:
    result = leader_kill(cluster, tmp_path)
    print(result)
    assert result["replicas"] == [3, 3, 3, 3]
    assert result["acked"] >= 0.95 * result["sent"]  # a minority down: writes go on (min ISR 2)
    assert result["lost"] == 0 and result["indexed"] == result["acked"]
    assert result["processes_alive"]  # the worker and the replica carried on, no restart
