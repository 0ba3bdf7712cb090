"""Crashes lose nothing: kill -9 the stream worker or an index replica mid-stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecrec_stream.contracts.events import utc_now
from streams.broker import free_port
from streams.kafka import all_topics, ensure_topics, new_producer
from tests.helpers import (
    EMPTY_EVENT_BATCH,
    EMPTY_EXAMPLE_BATCH,
    batch_events,
    produce,
    read_to_end,
    read_topic,
    unique,
    wait_until,
)
from tests.helpers import (
    isolated_env as _isolated_env,
)
from workers.processes import indexer_process, worker_process

pytestmark = pytest.mark.integration


def _kill_worker_when(
    broker: Any,
    tmp_path: Path,
    env: dict[str, str],
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout_s: float,
) -> list[Any]:
    """Run an isolated worker until ``done(messages of topic)``, SIGKILL it, and return
    everything on ``topic`` at that point (nothing writes it once the worker is dead)."""
    proc = worker_process(broker.url, tmp_path, free_port(), extra_env=env).start()
    try:
        read_topic(broker.bootstrap, topic, timeout_s=timeout_s, done=done)
    finally:
        proc.kill()
    sentinel = EMPTY_EXAMPLE_BATCH if topic.endswith("examples") else EMPTY_EVENT_BATCH
    return read_to_end(broker.bootstrap, topic, sentinel)


def test_worker_killed_mid_batch_loses_no_event(broker: Any, tmp_path: Path) -> None:
    tag = unique("crash")
    names, env = _isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    n = 30_000
    producer = new_producer(broker.bootstrap)
    now = utc_now().isoformat()
    for i in range(n):
        producer.produce(
            names.reviews,
            key=f"item-{i % 97}".encode(),
            value=json.dumps(
                {
                    "event_id": f"{tag}-{i}",
                    "ts": now,
                    "item_id": f"item-{i % 97}",
                    "rating": 1 + i % 5,
                    "text": "fine",
                }
            ).encode(),
        )
        if i % 10_000 == 0:
            producer.flush()
    assert producer.flush(30) == 0
    env["ECREC_INGEST__BATCH_MAX"] = "50"  # small batches: many commits, a kill lands mid-way
    env["ECREC_LABELS__ENABLED"] = "false"  # this test is about ingest
    env["ECREC_DRIFT__ENABLED"] = "false"
    partial = len(
        batch_events(
            _kill_worker_when(
                broker,
                tmp_path,
                env,
                names.valid_reviews,
                lambda ms: len(batch_events(ms)) >= 3_000,
                120,
            )
        )
    )
    assert partial < n, "the worker finished before the kill; the test proves nothing"
    proc = worker_process(broker.url, tmp_path, free_port(), extra_env=env).start()
    try:
        messages = read_topic(
            broker.bootstrap,
            names.valid_reviews,
            timeout_s=240,
            done=lambda ms: len({e["event_id"] for e in batch_events(ms)}) >= n,
        )
    finally:
        proc.stop()
    ids = [e["event_id"] for e in batch_events(messages)]
    assert set(ids) == {f"{tag}-{i}" for i in range(n)}
    # at-least-once: redelivered events are duplicates with the same id, never new data
    print(f"killed after {partial} events; {len(ids) - n} duplicates after restart")


def test_replica_killed_resumes_without_losing_items(broker: Any, tmp_path: Path) -> None:
    tag = unique("rkill")
    names, env = _isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    env["ECREC_INDEX__SNAPSHOT_INTERVAL_S"] = "0.5"
    producer = new_producer(broker.bootstrap)

    def send_items(ids: range) -> None:
        now = utc_now().isoformat()
        for i in ids:
            batch = {
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
                        "title": f"wool scarf {i}",
                    }
                ],
            }
            producer.produce(
                names.valid_items, key=str(i).encode(), value=json.dumps(batch).encode()
            )
        assert producer.flush(30) == 0

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start() -> Any:
        proc = indexer_process(broker.url, tmp_path, port, extra_env=env).start()
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        return proc

    send_items(range(0, 200))
    proc = start()
    try:
        wait_until(lambda: httpx.get(f"{base}/stats").json()["items"] == 200, timeout_s=60)
        wait_until(lambda: any((tmp_path / "indexer").glob("snap-*")), timeout_s=10)
        send_items(range(200, 260))
        wait_until(lambda: httpx.get(f"{base}/stats").json()["items"] == 260, timeout_s=60)
    finally:
        proc.kill()  # no final snapshot
    send_items(range(260, 300))
    proc = start()
    try:
        wait_until(lambda: httpx.get(f"{base}/stats").json()["items"] == 300, timeout_s=60)
        stats = httpx.get(f"{base}/stats").json()
        assert stats["restored_from_snapshot"]
        # only what came after the last snapshot is embedded again, never the whole catalog
        assert stats["items_embedded"] < 300
        for i in (0, 150, 259, 299):
            assert httpx.get(f"{base}/items/{tag}-{i}").status_code == 200
    finally:
        proc.stop()


def test_worker_killed_while_labelling_gives_the_same_example_ids(
    broker: Any, tmp_path: Path
) -> None:
    """Reviews -> sentiment examples with a SIGKILL in the middle: after the restart every
    review has its example, and no example id exists that a clean run would not make."""
    from ecrec_stream.labels.examples import example_id

    tag = unique("lkill")
    names, env = _isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    env["ECREC_INGEST__BATCH_MAX"] = "20"
    n = 400
    now = utc_now().isoformat()
    producer = new_producer(broker.bootstrap)
    words = ["lovely soft", "great fitting", "awful scratchy", "cheap flimsy", "perfect warm"]
    for i in range(n):
        rating = (5, 4, 1, 2, 5)[i % 5]
        producer.produce(
            names.reviews,
            key=f"item-{i % 13}".encode(),
            value=json.dumps(
                {
                    "event_id": f"{tag}-{i}",
                    "ts": now,
                    "item_id": f"item-{i % 13}",
                    "rating": rating,
                    "text": f"A {words[i % 5]} sweater, review number {i}",
                }
            ).encode(),
        )
    assert producer.flush(30) == 0
    functions = ["rating", "lexicon", "prototype", "seed_classifier"]
    expected = {
        example_id("sentiment", [f"{tag}-{i}"], f"item-{i % 13}", functions) for i in range(n)
    }

    def originals(msgs: list[Any]) -> set[str]:
        return {
            e["example_id"]
            for m in msgs
            for e in json.loads(m.value())["examples"]
            if e["augmented_from"] is None
        }

    before = originals(
        _kill_worker_when(
            broker, tmp_path, env, names.examples, lambda ms: len(originals(ms)) >= 60, 180
        )
    )
    assert len(before) < n, "labelling finished before the kill; the test proves nothing"
    proc = worker_process(broker.url, tmp_path, free_port(), extra_env=env).start()
    try:
        msgs = read_topic(
            broker.bootstrap,
            names.examples,
            timeout_s=300,
            done=lambda ms: originals(ms) >= expected,
        )
    finally:
        proc.stop()
    assert originals(msgs) == expected
    augmented = [
        e
        for m in msgs
        for e in json.loads(m.value())["examples"]
        if e["augmented_from"] is not None
    ]
    assert {e["augmented_from"] for e in augmented} <= expected
    print(f"killed after {len(before)} of {n} reviews were labelled")


def test_open_sessions_survive_restarts_from_rocksdb_and_from_the_changelog(
    broker: Any, tmp_path: Path
) -> None:
    """A session's search before a restart and its click after it become one session: the
    session table is read back from the worker's RocksDB (same data dir) and rebuilt from its
    changelog (a new data dir), and the searches are not read again."""
    tag = unique("sessrestart")
    names, env = _isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    env |= {"ECREC_LABELS__SESSION_GAP_S": "60", "ECREC_LABELS__AUGMENTERS": "[]"}
    key = f"{tag}-k"  # every record on one partition
    t0 = utc_now()
    items = [f"{tag}-i{n}" for n in range(4)]

    def at(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat()

    def search(session: str, seconds: float) -> tuple[str, str, bytes]:
        doc = {
            "event_id": f"{session}-search",
            "ts": at(seconds),
            "search_id": f"{session}-q",
            "session_id": session,
            "query": "wool socks",
            "impressions": items,
        }
        return names.searches, key, json.dumps(doc).encode()

    def click(session: str, seconds: float, item: int) -> tuple[str, str, bytes]:
        doc = {
            "event_id": f"{session}-click",
            "ts": at(seconds),
            "session_id": session,
            "search_id": f"{session}-q",
            "item_id": items[item],
            "position": item,
            "action": "add_to_cart",
            "dwell_ms": 30_000,
        }
        return names.clicks, key, json.dumps(doc).encode()

    def run_worker(data_dir: Path, records: list[tuple[str, str, bytes]], events: int) -> None:
        """A worker on ``data_dir`` reads ``records`` (``events`` new session events: a copy
        of one, which the broker may deliver, counts as a duplicate), then stops, committing
        its offsets."""
        port = free_port()
        proc = worker_process(broker.url, data_dir, port, extra_env=env).start()

        def new_events() -> int:
            labels = httpx.get(f"http://127.0.0.1:{port}/ecrec/stats").json()["labels"]
            return int(labels.get("session_events_read", 0) - labels.get("duplicate_events", 0))

        try:
            proc.wait_http(f"http://127.0.0.1:{port}/ecrec/stats", timeout_s=180)
            produce(broker.bootstrap, records)
            wait_until(lambda: new_events() >= events, timeout_s=120, interval_s=0.5)
            time.sleep(1.0)  # an event read again as new (its session lost) would show here
            assert new_events() == events
        finally:
            assert proc.stop() == 0

    first, second = f"{tag}-s1", f"{tag}-s2"
    run_worker(tmp_path / "a", [search(first, 0)], 1)
    run_worker(tmp_path / "a", [search(second, 5)], 1)  # the first session from RocksDB
    moved_on = [search(f"{tag}-s3", 300), click(f"{tag}-s3", 300, 0)]  # closes both
    run_worker(  # both sessions from the changelog, read back when their clicks come
        tmp_path / "b", [click(first, 10, 1), click(second, 15, 2), *moved_on], 4
    )
    examples = [
        e
        for m in read_to_end(broker.bootstrap, names.examples, EMPTY_EXAMPLE_BATCH)
        for e in json.loads(m.value())["examples"]
    ]
    for session, clicked in ((first, 1), (second, 2)):
        mine = {e["item_id"]: e for e in examples if f"{session}-search" in e["source_event_ids"]}
        assert items[clicked] in mine, (session, sorted(mine))
        assert set(mine[items[clicked]]["source_event_ids"]) == {
            f"{session}-search",
            f"{session}-click",
        }
        assert mine[items[clicked]]["label"] == 1
