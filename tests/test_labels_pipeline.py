"""Integration: events through the real broker become training examples on ecrec.examples."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from ecrec_stream.config import Settings
from ecrec_stream.contracts.events import utc_now
from streams.kafka import new_producer
from tests.helpers import read_topic, unique

pytestmark = pytest.mark.integration
TOPICS = Settings().topics


def _send(bootstrap: str, records: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = new_producer(bootstrap)
    for topic, key, doc in records:
        producer.produce(topic, key=key.encode(), value=json.dumps(doc).encode())
    assert producer.flush(30) == 0


def _examples(bootstrap: str, pred: Any, n: int, timeout_s: float = 90) -> list[dict[str, Any]]:
    def matching(msgs: list[Any]) -> list[dict[str, Any]]:
        return [e for m in msgs for e in json.loads(m.value())["examples"] if pred(e)]

    return matching(
        read_topic(
            bootstrap, TOPICS.examples, timeout_s=timeout_s, done=lambda ms: len(matching(ms)) >= n
        )
    )


def _examples_until_marker(bootstrap: str, pred: Any, marker: str) -> list[dict[str, Any]]:
    """Examples matching ``pred``, read until the marker session's examples arrive (they are
    written after everything sent before the marker in the same partition)."""

    def examples(msgs: list[Any]) -> list[dict[str, Any]]:
        return [e for m in msgs for e in json.loads(m.value())["examples"]]

    def marker_seen(msgs: list[Any]) -> bool:
        return any(f"{marker}-search" in e["source_event_ids"] for e in examples(msgs))

    msgs = read_topic(bootstrap, TOPICS.examples, timeout_s=90, done=marker_seen)
    assert marker_seen(msgs), "the marker session was not labelled"
    return [e for e in examples(msgs) if pred(e)]


_EPOCHS = itertools.count(1)


def _session(
    tag: str, *, bot: bool = False, key: str | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """A search for trail shoes, then either one purchase at position 2 or bot clicks.

    Each session starts 3 h of event time after the previous one: every session pushes its
    partition's event time 1 h ahead to close itself, and a later one must not arrive late.
    ``key`` (default: the session id) picks the partition: a marker session sent with another
    session's key lands behind it, so its examples prove the earlier one was handled.
    """
    t0 = utc_now() + timedelta(hours=3 * next(_EPOCHS))
    search_id = f"{tag}-q"
    sid = key or f"{tag}-sess"
    items = [f"{tag}-i{n}" for n in range(5)]
    records = [
        (
            TOPICS.searches,
            sid,
            {
                "event_id": f"{tag}-search",
                "ts": t0.isoformat(),
                "search_id": search_id,
                "session_id": f"{tag}-sess",
                "query": "trail running shoes",
                "impressions": items,
                "user_id": f"{tag}-alice",
            },
        )
    ]
    if bot:
        for n in range(10):
            records.append(
                (
                    TOPICS.clicks,
                    sid,
                    {
                        "event_id": f"{tag}-c{n}",
                        "ts": (t0 + timedelta(milliseconds=200 * n)).isoformat(),
                        "session_id": f"{tag}-sess",
                        "search_id": search_id,
                        "item_id": items[n % 5],
                        "position": n % 5,
                        "action": "click",
                        "dwell_ms": 80,
                    },
                )
            )
    else:
        records.append(
            (
                TOPICS.clicks,
                sid,
                {
                    "event_id": f"{tag}-c2",
                    "ts": (t0 + timedelta(seconds=12)).isoformat(),
                    "session_id": f"{tag}-sess",
                    "search_id": search_id,
                    "item_id": items[2],
                    "position": 2,
                    "action": "purchase",
                    "dwell_ms": 45_000,
                },
            )
        )
    # Event time moves on in this partition on both topics (same key, another session), after
    # this session's events: the session closes.
    later = (t0 + timedelta(hours=1)).isoformat()
    records.append(
        (
            TOPICS.searches,
            sid,
            {
                "event_id": f"{tag}-later",
                "ts": later,
                "search_id": f"{tag}-q2",
                "session_id": f"{tag}-other",
                "query": "socks",
            },
        )
    )
    records.append(
        (
            TOPICS.clicks,
            sid,
            {
                "event_id": f"{tag}-later-c",
                "ts": later,
                "session_id": f"{tag}-other",
                "search_id": f"{tag}-q2",
                "item_id": items[0],
                "position": 0,
                "action": "click",
            },
        )
    )
    return records


def _catalog(tag: str) -> list[tuple[str, str, dict[str, Any]]]:
    titles = [
        "Stainless steel saucepan 2 qt",
        "Baby shampoo tear free",
        "Trail running shoes, waterproof",
        "Garden hose 50 ft",
        "Wool hiking socks",
    ]
    return [
        (
            TOPICS.items,
            f"{tag}-i{n}",
            {
                "event_id": f"{tag}-item{n}",
                "ts": utc_now().isoformat(),
                "op": "upsert",
                "item_id": f"{tag}-i{n}",
                "title": title,
            },
        )
        for n, title in enumerate(titles)
    ]


def test_a_session_becomes_graded_examples_and_redelivery_adds_no_ids(
    broker: Any, worker: Any
) -> None:
    tag = unique("lab")
    _send(broker.bootstrap, _catalog(tag))
    records = _session(tag)
    _send(broker.bootstrap, records)

    def of_session(e: dict[str, Any]) -> bool:
        return e["task"] == "relevance" and f"{tag}-search" in e["source_event_ids"]

    examples = _examples(broker.bootstrap, of_session, 3)
    originals = {e["item_id"]: e for e in examples if e["augmented_from"] is None}
    bought = originals[f"{tag}-i2"]
    assert bought["label"] == 1 and bought["grade"] == 3 and bought["votes"]["clicks"] == 1
    assert bought["text_pair"] == "Trail running shoes, waterproof"  # title joined in
    assert set(bought["source_event_ids"]) == {f"{tag}-search", f"{tag}-c2"}
    for skipped in (f"{tag}-i0", f"{tag}-i1"):
        assert originals[skipped]["label"] == 0 and originals[skipped]["grade"] == 0
    assert bought["user_key"] and tag not in bought["user_key"]  # pseudonymised
    ids_before = {e["example_id"] for e in originals.values()}

    # The same events again while the worker runs: the session closed already, so they are
    # late and counted, not labelled again. (Redelivery after a crash replays into a fresh
    # worker, and deterministic example ids make that idempotent: see test_labels.py.)
    _send(broker.bootstrap, records)
    marker = unique("lab")
    # sent after the redelivery into the same partitions: once its examples are out, the
    # redelivered events were handled
    _send(broker.bootstrap, _session(marker, key=f"{tag}-sess"))
    after = _examples_until_marker(broker.bootstrap, of_session, marker)
    assert {e["example_id"] for e in after if e["augmented_from"] is None} == ids_before
    # variants trail their originals (sent when the agents are idle): only of these originals
    assert {e["augmented_from"] for e in after} <= {None, *ids_before}


def test_a_review_becomes_a_sentiment_example(broker: Any, worker: Any) -> None:
    # Variants are drawn at random per example id and some are filtered out: for the first
    # text with a fresh id, 10 of 300 draws kept none (offline, the default labelers; the
    # others 3, 0 and 9 of 100). Four reviews (distinct texts: a copied text is a duplicate)
    # make "no variant at all" a ~1e-6 event; each review's own checks hold for every draw.
    texts = [
        "Love it, so soft and flattering, great fit",
        "Great quality and the color is beautiful, I wear it every day",
        "Excellent fabric, fits perfectly and looks lovely",
        "Very comfortable and well made, highly recommend",
    ]
    tags = [unique("rev") for _ in texts]
    _send(
        broker.bootstrap,
        [
            (
                TOPICS.reviews,
                f"{tag}-item",
                {
                    "event_id": f"{tag}-r",
                    "ts": utc_now().isoformat(),
                    "item_id": f"{tag}-item",
                    "rating": 5,
                    "title": "Perfect",
                    "text": text,
                    "user_id": f"{tag}-bob",
                },
            )
            for tag, text in zip(tags, texts, strict=True)
        ],
    )
    sources = {f"{tag}-r" for tag in tags}

    def ours(e: dict[str, Any]) -> bool:
        return len(e["source_event_ids"]) == 1 and e["source_event_ids"][0] in sources

    def complete(msgs: list[Any]) -> bool:
        found = [e for m in msgs for e in json.loads(m.value())["examples"] if ours(e)]
        originals = {e["source_event_ids"][0] for e in found if e["augmented_from"] is None}
        return originals == sources and any(e["augmented_from"] for e in found)

    # the originals first, then (trailing them, made while the agents are idle) their variants
    msgs = read_topic(broker.bootstrap, TOPICS.examples, timeout_s=90, done=complete)
    examples = [e for m in msgs for e in json.loads(m.value())["examples"] if ours(e)]
    originals = {e["source_event_ids"][0]: e for e in examples if e["augmented_from"] is None}
    assert originals.keys() == sources
    for original in originals.values():
        assert original["task"] == "sentiment" and original["label"] == 1
        assert original["votes"]["rating"] == 1 and original["votes"]["lexicon"] == 1
        assert not original["user_key"].endswith("-bob")
    variants = [e for e in examples if e["augmented_from"] is not None]
    if not variants:  # say why: shed (the worker was busy for augment_max_lag_s) or filtered
        stats = httpx.get(
            f"http://127.0.0.1:{worker.env['ECREC_WORKER_WEB_PORT']}/ecrec/stats"
        ).json()
        labels = stats["labels"]
        pytest.fail(f"no variants: {labels['sentiment_counts']} {labels.get('sentiment_filter')}")
    for variant in variants:
        original = originals[variant["source_event_ids"][0]]
        assert variant["augmented_from"] == original["example_id"]
        assert variant["label"] == 1 and variant["text"] != original["text"]


def test_a_bot_session_produces_no_examples(broker: Any, worker: Any) -> None:
    tag = unique("bot")
    _send(broker.bootstrap, _catalog(tag) + _session(tag, bot=True))
    marker = unique("lab")
    _send(broker.bootstrap, _catalog(marker) + _session(marker, key=f"{tag}-sess"))
    # the person's session, sent after the bot's into the same partitions, is labelled: the
    # bot's had its chance
    bot = _examples_until_marker(
        broker.bootstrap, lambda e: f"{tag}-search" in e["source_event_ids"], marker
    )
    assert bot == []
    stats = httpx.get(f"http://127.0.0.1:{worker.env['ECREC_WORKER_WEB_PORT']}/ecrec/stats")
    assert stats.json()["labels"]["bot_sessions"] >= 1


def test_a_worker_with_the_int8_encoder_labels_reviews(broker: Any, tmp_path: Any) -> None:
    """ECREC_EMBEDDING__WORKER_QUANTIZATION=int8: the label and drift agents embed with the
    ONNX Runtime int8 model, and the reviews become the examples their words and stars say."""
    from streams.broker import free_port
    from streams.kafka import all_topics, ensure_topics
    from tests.helpers import isolated_env, produce, wait_until
    from workers.processes import worker_process

    names, env = isolated_env(unique("int8"))
    env |= {"ECREC_PARTITIONS": "1", "ECREC_EMBEDDING__WORKER_QUANTIZATION": "int8"}
    ensure_topics(broker.bootstrap, all_topics(names), 1)
    texts = {
        5: ["Love it, so soft and flattering", "Great quality, I wear it every day"],
        1: ["Poor quality, it fell apart after one wash", "Terrible fit and cheap fabric"],
    }
    reviews = [
        (rating, f"r{rating}-{k}", text)
        for rating, group in texts.items()
        for k, text in enumerate(group)
    ]
    port = free_port()
    stats_url = f"http://127.0.0.1:{port}/ecrec/stats"
    proc = worker_process(broker.url, tmp_path, port, extra_env=env).start()
    try:
        proc.wait_http(stats_url, timeout_s=120)
        wait_until(lambda: httpx.get(stats_url).json()["assigned"], timeout_s=60)
        start = utc_now()
        produce(
            broker.bootstrap,
            [
                (
                    names.reviews,
                    event_id,
                    json.dumps(
                        {
                            "event_id": event_id,
                            "ts": (start + timedelta(seconds=i)).isoformat(),
                            "item_id": f"item-{i}",
                            "rating": rating,
                            "text": text,
                        }
                    ).encode(),
                )
                for i, (rating, event_id, text) in enumerate(reviews)
            ],
        )

        def originals(msgs: list[Any]) -> dict[str, int]:
            return {
                e["source_event_ids"][0]: e["label"]
                for m in msgs
                for e in json.loads(m.value())["examples"]
                if e["augmented_from"] is None
            }

        msgs = read_topic(
            broker.bootstrap,
            names.examples,
            timeout_s=90,
            done=lambda ms: len(originals(ms)) == len(reviews),
        )
        stats = httpx.get(stats_url).json()["labels"]
    finally:
        proc.stop()
    assert originals(msgs) == {event_id: int(rating == 5) for rating, event_id, _ in reviews}
    assert stats["encoder"]["precision"] == "int8"
    assert stats["encoder"]["version"].endswith("+int8")
    assert stats["encoder_cache"]["embedded"] >= len(reviews)
