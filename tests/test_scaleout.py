"""Scale-out on the real broker: several stream workers in one consumer group split the
partitions, and when one is SIGKILLed mid-stream the survivors take its partitions and finish:
every expected example id arrives, duplicates are only repeated ids, no alert is raised twice;
two index replicas fed the same topics answer the same."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecrec_stream.contracts.events import utc_now
from ecrec_stream.labels.examples import example_id
from streams.broker import free_port
from streams.kafka import all_topics, ensure_topics
from tests.helpers import (
    EMPTY_EVENT_BATCH,
    isolated_env,
    produce,
    read_to_end,
    read_topic,
    souring_reviews,
    unique,
    wait_until,
)
from workers.processes import indexer_process, worker_process

pytestmark = pytest.mark.integration

PARTITIONS = 6
FUNCTIONS = ["rating", "lexicon", "prototype", "seed_classifier"]


def _originals(messages: list[Any]) -> list[str]:
    return [
        e["example_id"]
        for m in messages
        if m.value() != b"{}"
        for e in json.loads(m.value())["examples"]
        if e["augmented_from"] is None
    ]


def _trace_missing(
    bootstrap: str,
    names: Any,
    tag: str,
    n: int,
    missing: set[str],
    survivor_stats: list[Any],
    tmp_path: Path,
) -> str:
    """Where the reviews whose examples never arrived were last seen: their raw and validated
    records, dead letters, and the survivors' label counters (the logs stay under tmp_path)."""
    by_example = {
        example_id("sentiment", [f"{tag}-{i}"], f"item-{i % 29}", FUNCTIONS): f"{tag}-{i}"
        for i in range(n)
    }
    lost = {by_example[e] for e in missing}
    raw = [
        (m.partition(), m.offset())
        for m in read_to_end(bootstrap, names.reviews, b"{}")
        if json.loads(m.value()).get("event_id") in lost
    ]
    valid = [
        (m.partition(), m.offset(), m.key())
        for m in read_to_end(bootstrap, names.valid_reviews, EMPTY_EVENT_BATCH)
        for e in json.loads(m.value())["events"]
        if e["event_id"] in lost
    ]
    dead = [
        m.value()[:300]
        for m in read_to_end(bootstrap, names.dlq, b"{}")
        if any(e.encode() in m.value() for e in lost)
    ]
    labels = [
        {k: s.get("labels", {}).get(k) for k in ("reviews_read", "duplicate_events",
                                                 "near_duplicate_reviews", "examples_sentiment")}
        for s in survivor_stats
    ]  # fmt: skip
    return (
        f"{len(missing)} of {n} reviews never labelled: {sorted(lost)}; raw records {raw}; "
        f"validated in {valid}; dead letters {dead}; survivors' label counts {labels}, "
        f"rereads {[s.get('rereads') for s in survivor_stats]}; logs under {tmp_path}"
    )


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_split_partitions_and_survivors_finish_after_a_kill(
    broker: Any, tmp_path: Path, workers: int, request: pytest.FixtureRequest
) -> None:
    tag = unique(f"scale{workers}")
    names, env = isolated_env(tag)
    env |= {
        "ECREC_PARTITIONS": str(PARTITIONS),
        "ECREC_INGEST__BATCH_MAX": "20",  # many commits: the kill lands between them
        "ECREC_LABELS__AUGMENTERS": "[]",  # originals are what this test counts
        "ECREC_DRIFT__DETECTORS": '["rating"]',
        "ECREC_DRIFT__WINDOW_EVENTS": "40",
        "ECREC_DRIFT__REFERENCE_SIZE": "160",
        "ECREC_DRIFT__MAX_LAG_S": "100000",
        "ECREC_INGEST__STALL_REREAD_S": "15",  # streams/stalls.py, sooner than its default
    }
    ensure_topics(broker.bootstrap, all_topics(names), PARTITIONS)
    n = 900
    expected = {
        example_id("sentiment", [f"{tag}-{i}"], f"item-{i % 29}", FUNCTIONS) for i in range(n)
    }
    ports = [free_port() for _ in range(workers)]
    procs = [
        worker_process(broker.url, tmp_path / f"w{k}", port, extra_env=env).start()
        for k, port in enumerate(ports)
    ]

    def stats(port: int) -> Any:
        return httpx.get(f"http://127.0.0.1:{port}/ecrec/stats", timeout=5).json()

    def held(port: int) -> set[int]:
        """The partitions of the reviews topic this worker holds."""
        return set(stats(port)["partitions"].get(names.reviews, []))

    everything = set(range(PARTITIONS))

    try:
        for proc, port in zip(procs, ports, strict=True):
            proc.wait_http(f"http://127.0.0.1:{port}/ecrec/stats", timeout_s=180)

        # the group has settled when the workers hold disjoint shares of every partition
        def split() -> bool:
            shares = [held(p) for p in ports]
            return all(shares) and sum(map(len, shares)) == PARTITIONS == len(set().union(*shares))

        wait_until(split, timeout_s=120, interval_s=0.5)
        shares = [sorted(held(p)) for p in ports]
        produce(broker.bootstrap, souring_reviews(names.reviews, tag, n))
        read_topic(
            broker.bootstrap,
            names.examples,
            done=lambda ms: len(set(_originals(ms))) >= 150,
            timeout_s=240,
        )
        procs[0].kill()  # SIGKILL mid-stream: no commit, no goodbye to the group
        survivors = ports[1:]
        wait_until(  # they take over the dead worker's partitions
            lambda: set().union(*(held(p) for p in survivors)) == everything, timeout_s=120
        )
        messages = read_topic(
            broker.bootstrap,
            names.examples,
            done=lambda ms: set(_originals(ms)) >= expected,
            timeout_s=420,
        )
        rereads = stats(survivors[0])["rereads"]
        survivor_stats = [stats(p) for p in survivors]
    finally:
        for proc in procs:
            proc.stop()
    ids = _originals(messages)
    missing = expected - set(ids)
    assert not missing, _trace_missing(
        broker.bootstrap, names, tag, n, missing, survivor_stats, tmp_path
    )
    assert set(ids) == expected  # nothing lost, nothing that a clean run would not make
    print(f"{workers} workers, shares {shares}: {len(ids) - n} duplicate ids, rereads {rereads}")
    alerts = [json.loads(m.value()) for m in read_to_end(broker.bootstrap, names.alerts, b"{}")]
    alerts = [a for a in alerts if a]
    assert alerts, "the rating shift raised no alert: the drift half of the test proves nothing"
    alert_ids = [a["alert_id"] for a in alerts]
    windows = [(a["detector"], a["window_start"], a["window_end"]) for a in alerts]
    assert len(alert_ids) == len(set(alert_ids)) and len(windows) == len(set(windows)), alerts


def test_two_replicas_fed_the_same_topics_answer_the_same(broker: Any, tmp_path: Path) -> None:
    names, env = isolated_env(unique("replicas"))
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    worker_port = free_port()
    env["ECREC_LABELS__ENABLED"] = "false"
    env["ECREC_DRIFT__ENABLED"] = "false"
    now = utc_now()
    titles = ["wool scarf", "silk scarf", "leather gloves", "wool socks", "rain jacket"]
    items = [
        {
            "event_id": f"i{k}",
            "ts": now.isoformat(),
            "op": "upsert",
            "item_id": f"it-{k}",
            "title": f"{titles[k % 5]} {k}",
            "category_path": ["apparel", titles[k % 5].split()[1]],
        }
        for k in range(60)
    ]
    clicks = [
        {
            "event_id": f"c{s}-{j}",
            "ts": (now + timedelta(seconds=s * 10 + j)).isoformat(),
            "session_id": f"s{s}",
            "item_id": f"it-{(s + 7 * j) % 60}",
            "action": ("view", "click", "add_to_cart")[j % 3],
            "surface": "browse",
        }
        for s in range(40)
        for j in range(4)
    ]
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    replicas = [
        indexer_process(broker.url, tmp_path, port, name=f"replica{k}", extra_env=env)
        for k, port in enumerate(ports)
    ]
    procs = [worker_process(broker.url, tmp_path / "w", worker_port, extra_env=env).start()]
    try:
        procs.append(replicas[0].start())
        replicas[0].wait_http(f"{bases[0]}/healthz", timeout_s=180)
        # the first replica takes the catalog live, a few items at a time; the second starts
        # afterwards and reads it all at once: their vectors came from other micro-batches
        for start in range(0, len(items), 7):
            chunk = items[start : start + 7]
            produce(
                broker.bootstrap,
                [(names.items, d["item_id"], json.dumps(d).encode()) for d in chunk],
            )
            held = start + len(chunk)
            wait_until(
                lambda held=held: httpx.get(f"{bases[0]}/stats", timeout=5).json()["items"] >= held,
                timeout_s=60,
            )
        procs.append(replicas[1].start())
        replicas[1].wait_http(f"{bases[1]}/healthz", timeout_s=180)
        produce(
            broker.bootstrap,
            [(names.clicks, d["session_id"], json.dumps(d).encode()) for d in clicks],
        )

        def settled(base: str) -> bool:
            stats = httpx.get(f"{base}/stats", timeout=5).json()
            return stats["items"] == 60 and stats["recommend"]["updates"] > 0

        wait_until(lambda: all(settled(b) for b in bases), timeout_s=120)
        # the same click stream on both: wait until both have applied all of it
        wait_until(
            lambda: (
                len({json.dumps(httpx.get(f"{b}/stats").json()["recommend"]) for b in bases}) == 1
            ),
            timeout_s=60,
        )
        for query in ("wool scarf", "gloves", "jacket for rain"):
            answers = [
                [
                    r["item_id"]
                    for r in httpx.get(f"{b}/search", params={"q": query}).json()["results"]
                ]
                for b in bases
            ]
            assert answers[0] == answers[1] and answers[0], query
        for item in ("it-0", "it-7", "it-21"):
            answers = [
                [
                    (r["item_id"], r["score"])
                    for r in httpx.get(f"{b}/recommend", params={"item_id": item}).json()["results"]
                ]
                for b in bases
            ]
            assert answers[0] == answers[1] and answers[0], item
    finally:
        for proc in procs:
            proc.stop()
