"""Contracts: what is accepted, what is rejected, and why."""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

import pytest
from pydantic import ValidationError

from ecrec_stream.contracts.events import (
    MAX_IMPRESSIONS,
    ClickEvent,
    EventBatch,
    ItemEvent,
    ReviewEvent,
    SearchEvent,
    SourcePosition,
)

TS = "2026-03-01T12:00:00+02:00"


def _item(**over: Any) -> bytes:
    doc = {
        "event_id": "e1",
        "ts": TS,
        "op": "upsert",
        "item_id": "sku-1",
        "title": "Oat milk",
        "price": 2.5,
        "category_path": ["dairy", "milk"],
        "attributes": {"size": "1l"},
    }
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_valid_item_is_normalised_to_utc() -> None:
    event = ItemEvent.model_validate_json(_item())
    assert event.ts.tzinfo == timezone.utc and event.ts.hour == 10
    assert event.schema_version == 2 and event.type == "item"  # the current version


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"surprise": 1}, "surprise"),  # unknown fields are rejected
        ({"price": "2.50"}, "price"),  # strict: no string -> float coercion
        ({"price": -1}, "price"),
        ({"ts": "2026-03-01T12:00:00"}, "ts"),  # naive time
        ({"title": ...}, "title"),  # an upsert needs a title
        ({"title": "x" * 301}, "title"),
        ({"item_id": "has space"}, "item_id"),
        ({"category_path": ["a"] * 9}, "category_path"),
        ({"attributes": {f"k{i}": "v" for i in range(51)}}, "attributes"),
        ({"op": "merge"}, "op"),
        ({"schema_version": 3}, "schema_version"),
    ],
)
def test_item_rejections(override: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ItemEvent.model_validate_json(_item(**override))
    assert fragment in str(info.value)


def test_nan_price_is_rejected() -> None:
    raw = _item().replace(b'"price": 2.5', b'"price": NaN')
    with pytest.raises(ValidationError):
        ItemEvent.model_validate_json(raw)


def test_delete_needs_only_the_id() -> None:
    event = ItemEvent.model_validate_json(
        json.dumps({"event_id": "d", "ts": TS, "op": "delete", "item_id": "sku-1"})
    )
    assert event.is_delete and event.title is None


def test_search_click_review_contracts() -> None:
    SearchEvent.model_validate_json(
        json.dumps(
            {
                "event_id": "s",
                "ts": TS,
                "search_id": "q1",
                "session_id": "u1",
                "query": " milk ",
                "impressions": ["a", "b"],
            }
        )
    )
    with pytest.raises(ValidationError):
        SearchEvent.model_validate_json(
            json.dumps(
                {
                    "event_id": "s",
                    "ts": TS,
                    "search_id": "q1",
                    "session_id": "u1",
                    "query": "x",
                    "impressions": ["a"] * (MAX_IMPRESSIONS + 1),
                }
            )
        )
    with pytest.raises(ValidationError):
        SearchEvent.model_validate_json(
            json.dumps(
                {"event_id": "s", "ts": TS, "search_id": "q1", "session_id": "u1", "query": "   "}
            )
        )
    click = ClickEvent.model_validate_json(
        json.dumps(
            {
                "event_id": "c",
                "ts": TS,
                "session_id": "u1",
                "item_id": "a",
                "position": 0,
                "action": "purchase",
                "dwell_ms": 1200,
            }
        )
    )
    assert click.action == "purchase"
    with pytest.raises(ValidationError):
        ClickEvent.model_validate_json(
            json.dumps(
                {"event_id": "c", "ts": TS, "session_id": "u1", "item_id": "a", "action": "like"}
            )
        )
    for rating in (0, 6, "5", 4.5):
        with pytest.raises(ValidationError):
            ReviewEvent.model_validate_json(
                json.dumps({"event_id": "r", "ts": TS, "item_id": "a", "rating": rating})
            )


def test_event_batch_round_trips_mixed_kinds() -> None:
    event = ItemEvent.model_validate_json(_item())
    batch = EventBatch(
        kind="item",
        source=SourcePosition(topic="t", partition=1, offset=5),
        last_offset=9,
        events=[event],
    )
    again = EventBatch.model_validate_json(batch.model_dump_json())
    assert again.events == [event]


def test_version_1_events_stay_valid_and_clicks_gain_views_cart_removals_and_surfaces() -> None:
    from ecrec_stream.contracts.events import ClickEvent
    from ecrec_stream.ingest.validation import RawRecord, validate_one

    old = {
        "event_id": "c1",
        "ts": "2026-01-01T00:00:00Z",
        "schema_version": 1,
        "session_id": "s",
        "item_id": "i",
        "action": "purchase",
    }
    new = {**old, "event_id": "c2", "schema_version": 2, "action": "view", "surface": "browse"}
    for doc in (old, new):
        record = RawRecord(
            json.dumps(doc).encode(), SourcePosition(topic="t", partition=0, offset=0)
        )
        outcome = validate_one("click", record, max_payload_bytes=65_536, max_raw_bytes=1024)
        assert isinstance(outcome, ClickEvent), outcome
    bad = {**new, "surface": "email"}
    record = RawRecord(json.dumps(bad).encode(), SourcePosition(topic="t", partition=0, offset=0))
    refused = validate_one("click", record, max_payload_bytes=65_536, max_raw_bytes=1024)
    assert not isinstance(refused, ClickEvent) and "surface" in refused.error
