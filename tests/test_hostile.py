"""Integration: hostile input and backlogs through the real broker never stop the worker."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from ecrec_stream.contracts.events import utc_now
from streams.broker import free_port
from streams.kafka import all_topics, ensure_topics
from tests.helpers import (
    EMPTY_EVENT_BATCH,
    batch_events,
    isolated_env,
    produce,
    read_to_end,
    read_topic,
    unique,
)
from tests.plugins import PLANTED
from workers.processes import worker_process

pytestmark = pytest.mark.integration


def _dead(msgs: list[Any], tag: str) -> dict[str, dict[str, Any]]:
    out = {}
    for m in msgs:
        d = json.loads(m.value())
        out[base64.b64decode(d["raw_b64"]).decode("utf-8", "replace")[:200]] = d
    return {k: v for k, v in out.items() if tag in k}


def test_poison_records_and_a_raising_label_function_stop_nothing(
    broker: Any, tmp_path: Path
) -> None:
    """One 5,000-digit integer among 300 items (an outage before), a deeply nested review, and
    a review a user label function raises on: every valid event arrives, every example but the
    one it raised on is made, the three are dead letters with their reasons, the worker lives."""
    tag = unique("poison")
    names, env = isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    env |= {
        "ECREC_LABELS__EXTRA_FUNCTIONS": '["tests.plugins:exploding_sentiment"]',
        "ECREC_LABELS__AUGMENTERS": '["typo"]',
        # a small message bound, so the examples of one batch must be split to be sent
        "ECREC_INGEST__MAX_PAYLOAD_BYTES": "8192",
        "ECREC_MAX_MESSAGE_BYTES": "16384",
    }
    now = utc_now().isoformat()
    items = []
    for i in range(300):
        doc = json.dumps(
            {
                "event_id": f"{tag}-i{i}",
                "ts": now,
                "op": "upsert",
                "item_id": f"{tag}-i{i}",
                "title": f"wool scarf {i}",
                "price": 9.5,
            }
        ).encode()
        if i == 150:
            doc = doc.replace(b'"price": 9.5', b'"price": 1' + b"0" * 5_000)
        items.append((names.items, tag, doc))
    reviews = []
    for i in range(40):
        text = f"{tag} review {i}: " + ("lovely soft warm sweater, " * 20)
        if i == 7:
            text = f"{tag} {PLANTED} " + text
        reviews.append(
            (
                names.reviews,
                tag,
                json.dumps(
                    {
                        "event_id": f"{tag}-r{i}",
                        "ts": now,
                        "item_id": f"{tag}-i{i}",
                        "rating": 5,
                        "text": text,
                    }
                ).encode(),
            )
        )
    nested = f'{{"event_id":"{tag}-deep","x":'.encode() + b"[" * 3_000 + b"]" * 3_000 + b"}"
    reviews.insert(20, (names.reviews, tag, nested))
    produce(broker.bootstrap, items + reviews)

    proc = worker_process(broker.url, tmp_path, free_port(), extra_env=env).start()
    try:
        valid = read_topic(
            broker.bootstrap,
            names.valid_items,
            timeout_s=120,
            done=lambda ms: len(batch_events(ms)) >= 299,
        )
        assert {e["event_id"] for e in batch_events(valid)} == {
            f"{tag}-i{i}" for i in range(300) if i != 150
        }

        def originals(msgs: list[Any]) -> set[str]:
            return {
                e["source_event_ids"][0]
                for m in msgs
                for e in json.loads(m.value())["examples"]
                if e["augmented_from"] is None
            }

        expected = {f"{tag}-r{i}" for i in range(40) if i != 7}
        examples = read_topic(
            broker.bootstrap,
            names.examples,
            timeout_s=240,
            done=lambda ms: originals(ms) >= expected,
        )
        assert originals(examples) == expected
        assert all(len(m.value()) <= 16_384 for m in examples)
        assert len(examples) > 1  # split: 39 long reviews and their typo copies exceed 16 KiB

        dead = _dead(
            read_topic(
                broker.bootstrap,
                names.dlq,
                timeout_s=60,
                done=lambda ms: len(_dead(ms, tag)) >= 3,
            ),
            tag,
        )
        reasons = sorted(
            (d["reason"], d["source"]["topic"], d["dead_letter_id"].count(":"))
            for d in dead.values()
        )
        assert reasons == [
            ("malformed_json", names.items, 3),
            ("malformed_json", names.reviews, 3),
            # inside a batch message: the id names the event as well as the position
            ("processing_error", names.valid_reviews, 4),
        ]
        exploded = next(d for d in dead.values() if d["reason"] == "processing_error")
        assert exploded["dead_letter_id"].endswith(f":{tag}-r7")
        assert "ValueError: planted failure" in exploded["error"]
        huge = next(d for d in dead.values() if d["source"]["topic"] == names.items)
        assert "4300" in huge["error"]
        assert proc.alive(), proc.log_tail()
    finally:
        proc.stop()


def test_a_backlog_larger_than_a_message_is_split_not_fatal(broker: Any, tmp_path: Path) -> None:
    """600 reviews of 2.5 KB waiting when the worker starts: one 500-record micro-batch is
    ~1.3 MB, over the producer's 1 MiB limit (the worker died on it before). Also runs the
    worker with its web server off (port 0) and a data dir that does not exist yet."""
    tag = unique("backlog")
    names, env = isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    env |= {
        "ECREC_LABELS__ENABLED": "false",
        "ECREC_DRIFT__ENABLED": "false",
        "ECREC_WORKER_WEB_PORT": "0",
    }
    now = utc_now().isoformat()
    n = 600
    produce(
        broker.bootstrap,
        [
            (
                names.reviews,
                tag,  # one key: all in one partition, so one micro-batch holds 500 of them
                json.dumps(
                    {
                        "event_id": f"{tag}-{i}",
                        "ts": now,
                        "item_id": "sku",
                        "rating": 3,
                        "text": "a" * 2_500,
                    }
                ).encode(),
            )
            for i in range(n)
        ],
    )
    data_dir = tmp_path / "not" / "yet" / "here"
    proc = worker_process(broker.url, data_dir, 0, extra_env=env).start()
    try:
        read_topic(
            broker.bootstrap,
            names.valid_reviews,
            timeout_s=120,
            done=lambda ms: len(batch_events(ms)) >= n or not proc.alive(),
        )
        assert proc.alive(), proc.log_tail()
        msgs = read_to_end(broker.bootstrap, names.valid_reviews, EMPTY_EVENT_BATCH)
        assert sorted(e["event_id"] for e in batch_events(msgs)) == sorted(
            f"{tag}-{i}" for i in range(n)
        )
        assert max(len(m.value()) for m in msgs) <= 524_288
        assert len(msgs) >= 3
    finally:
        proc.stop()
