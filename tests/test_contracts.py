"""Topic and HTTP contracts: one pydantic model per topic, the documented table generated from
them, alerts as a union on ``kind``, and consumers that set aside what fails."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from ecrec_stream.config import TopicNames
from ecrec_stream.contracts import (
    TOPIC_CONTRACTS,
    DeadLetter,
    DriftReport,
    ModelPublication,
    RetrainingAlert,
    RetrainRejected,
    RetrainRequest,
    parse_alert,
    topic_table,
    validate_message,
)
from ecrec_stream.drift.base import DriftResult
from tests.helpers import isolated_settings, produce, read_topic, wait_until

DOCS = Path(__file__).resolve().parents[1] / "docs" / "topics.md"


def test_every_topic_has_a_contract() -> None:
    assert set(TOPIC_CONTRACTS) == set(TopicNames.model_fields)


def test_the_documented_topic_table_is_the_generated_one() -> None:
    text = DOCS.read_text()
    assert topic_table() in text, "docs/topics.md is stale: paste contracts.topic_table()"


def _alert() -> RetrainingAlert:
    report = DriftReport(**DriftResult("rating", 0.1, math.nan, True, 3, 1.0, 2.0, 50).as_dict())
    return RetrainingAlert(
        alert_id="a1",
        detector="rating",
        reason="test",
        model_version="m1",
        window_start="2026-01-01T00:00:00Z",
        window_end="2026-01-01T00:01:00Z",
        evidence=[report],
        moved_categories=[],
        samples=["milk"],
    )


def test_alerts_are_one_union_on_kind() -> None:
    alert = _alert()
    assert alert.evidence[0].threshold is None  # River's NaN before a signal: null on the wire
    for message in (
        alert,
        RetrainRequest.new("manual"),
        RetrainRejected(alert_id="rejected-1", reason="gate"),
    ):
        parsed = parse_alert(message.model_dump_json())
        assert type(parsed) is type(message) and parsed == message
        assert parsed.schema_version == 1
    with pytest.raises(ValidationError):
        parse_alert(b'{"alert_id": "x", "kind": "retrain_please"}')
    with pytest.raises(ValidationError):  # a contract refuses fields it does not know
        parse_alert(b'{"alert_id": "x", "kind": "retrain_request", "reason": "r", "typo": 1}')


def test_validate_message_uses_the_topic_contract() -> None:
    publication = ModelPublication(version="v1", name="m")
    assert validate_message("models", publication.model_dump_json()) == publication
    with pytest.raises(ValidationError):
        validate_message("models", b'{"kind": "published"}')


@pytest.mark.integration
def test_the_replica_openapi_schema_names_every_answer(indexer: str) -> None:
    spec = httpx.get(f"{indexer}/openapi.json", timeout=10).json()
    for path, model in [
        ("/search", "SearchResponse"),
        ("/stats", "ReplicaStats"),
        ("/items/{item_id}", "ItemResponse"),
        ("/healthz", "Health"),
    ]:
        schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert schema["schema"]["$ref"].endswith(f"/{model}"), path
    assert "ReplicaStats" in spec["components"]["schemas"]


@pytest.mark.integration
def test_the_trainer_dead_letters_an_alert_that_fails_its_contract(
    broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.bootstrap, "alerts", tmp_path / "data")
    names = settings.topics
    produce(
        broker.bootstrap,
        [
            (names.alerts, "bad", b'{"alert_id": "bad", "kind": "retrain_please"}'),
            (
                names.alerts,
                "rej",
                RetrainRejected(alert_id="rej", reason="r").model_dump_json().encode(),
            ),
        ],
    )
    from workers.trainer import TrainerWorker

    trainer = TrainerWorker(settings, broker.bootstrap)
    runner = threading.Thread(target=trainer.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: trainer.stats["malformed_messages"] >= 1, timeout_s=60)
        letters = read_topic(broker.bootstrap, names.dlq, done=lambda ms: len(ms) >= 1)
    finally:
        trainer.stop_event.set()
        runner.join(30)
    letter = DeadLetter.model_validate_json(letters[0].value())
    assert letter.kind == "alert" and letter.reason == "schema_violation"
    assert "retrain_please" in letter.raw_preview and letter.source.topic == names.alerts
    assert not trainer.pending  # neither the bad message nor the rejection is a trigger


@pytest.mark.integration
def test_a_replica_dead_letters_what_fails_its_contract_and_keeps_serving(
    broker: Any, tmp_path: Path
) -> None:
    from ecrec_stream.contracts import EventBatch, ItemEvent
    from ecrec_stream.index import LiveItemIndex
    from tests.helpers import HashEncoder, at
    from workers.indexer import IndexReplica

    index = {"data_dir": str(tmp_path / "index"), "lexical": False, "search_mode": "dense"}
    settings = isolated_settings(broker.bootstrap, "replica-dlq", tmp_path / "data", index=index)
    names = settings.topics
    good = EventBatch(
        kind="item",
        source={"topic": names.items, "partition": 0, "offset": 0},
        last_offset=0,
        events=[ItemEvent(event_id="e1", ts=at(0), op="upsert", item_id="mug", title="blue mug")],
    )
    produce(
        broker.bootstrap,
        [
            (names.valid_items, "x", b'{"kind": "item", "events": "not a list"}'),
            (names.models, "m", b'{"version": 7}'),
            (names.valid_items, "mug", good.model_dump_json().encode()),
        ],
    )
    replica = IndexReplica(settings, broker.bootstrap, LiveItemIndex(HashEncoder(), settings.index))
    replica.start()
    try:
        wait_until(lambda: replica.live.get("mug") is not None, timeout_s=60)
        wait_until(lambda: replica.skipped_messages == 2, timeout_s=30)
        letters = read_topic(broker.bootstrap, names.dlq, done=lambda ms: len(ms) >= 2)
    finally:
        replica.stop(final_snapshot=False)
    kinds = sorted(DeadLetter.model_validate_json(m.value()).kind for m in letters)
    assert kinds == ["batch", "model_publication"]
    assert replica.live.search("blue mug", 1)[0].item.item_id == "mug"
