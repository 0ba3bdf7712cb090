"""The shop simulator: deterministic, and its clicks follow relevance."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ecrec_stream.contracts.events import ClickEvent, ReviewEvent, SearchEvent
from tests.conftest import SHARED_DATA
from workers.simulate import ShopSimulator, load_instacart_catalog, synthetic_catalog

T = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODELS = {"search": SearchEvent, "click": ClickEvent, "review": ReviewEvent}


def test_same_seed_same_sessions() -> None:
    a = ShopSimulator(synthetic_catalog(200), seed=3)
    b = ShopSimulator(synthetic_catalog(200), seed=3)
    assert [a.session(T).events for _ in range(20)] == [b.session(T).events for _ in range(20)]


def test_sessions_are_valid_and_clicks_favour_relevant_items() -> None:
    sim = ShopSimulator(synthetic_catalog(300), seed=5)
    shown: Counter[int] = Counter()
    clicked: Counter[int] = Counter()
    for _ in range(1500):
        session = sim.session(T)
        for grade in session.relevance.values():
            shown[grade] += 1
        for kind, _key, doc in session.events:
            MODELS[kind].model_validate(doc, strict=False)  # every event meets the contract
            if kind == "click":
                clicked[session.relevance[doc["item_id"]]] += 1
    ctr = {g: clicked[g] / shown[g] for g in shown if shown[g]}
    assert ctr[3] > ctr[2] > ctr[0]


@pytest.mark.skipif(not (SHARED_DATA / "instacart_catalog").exists(), reason="no shared data")
def test_instacart_catalog_loads_with_categories() -> None:
    items = load_instacart_catalog(Path(SHARED_DATA / "instacart_catalog"), limit=500)
    assert len(items) == 500 and all(len(i.category_path) == 2 for i in items)
    assert len({i.item_id for i in items}) == 500


def test_in_event_time_holds_each_record_until_its_time() -> None:
    import json

    sim = ShopSimulator(synthetic_catalog(200, seed=3), seed=3)
    stream = sim.stream(malformed_rate=0.0, in_event_time=True)
    ahead = Counter()
    for _ in range(400):
        kind, _, payload = next(stream)
        ts = datetime.fromisoformat(json.loads(payload)["ts"])
        ahead[kind] += ts > datetime.now(timezone.utc)
    assert sum(ahead.values()) == 0, ahead
    # the default stream sends a session's future clicks at once
    plain = ShopSimulator(synthetic_catalog(200, seed=3), seed=3).stream(malformed_rate=0.0)
    now = datetime.now(timezone.utc)
    future = [datetime.fromisoformat(json.loads(next(plain)[2])["ts"]) > now for _ in range(400)]
    assert any(future)
