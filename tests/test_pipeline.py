"""Integration: the real broker, the real Faust worker, the real index replica and MiniLM."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from ecrec_stream.config import Settings
from ecrec_stream.contracts.events import utc_now
from tests.helpers import batch_events, produce, read_topic, unique, wait_until

pytestmark = pytest.mark.integration
TOPICS = Settings().topics


def _item_doc(
    item_id: str, title: str, ts: datetime | None = None, op: str = "upsert"
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": unique("ev"),
        "ts": (ts or utc_now()).isoformat(),
        "op": op,
        "item_id": item_id,
    }
    if op == "upsert":
        doc.update(title=title, category_path=["test", "integration"], brand="Acme", price=9.5)
    return doc


def test_bad_input_goes_to_the_dlq_and_valid_neighbours_survive(broker: Any, worker: Any) -> None:
    tag = unique("dlq")
    now = utc_now().isoformat()
    good_review = {
        "event_id": f"{tag}-r-ok",
        "ts": now,
        "item_id": "sku-1",
        "rating": 4,
        "text": "nice",
    }
    good_search = {
        "event_id": f"{tag}-s-ok",
        "ts": now,
        "search_id": f"{tag}-q",
        "session_id": f"{tag}-s",
        "query": "milk",
        "impressions": ["a", "b"],
    }
    good_click = {
        "event_id": f"{tag}-c-ok",
        "ts": now,
        "session_id": f"{tag}-s",
        "item_id": "a",
        "position": 0,
        "action": "click",
    }
    cases: list[tuple[str, bytes, str | None]] = [
        (TOPICS.reviews, json.dumps(good_review).encode(), None),
        (TOPICS.reviews, b'{"event_id": "' + tag.encode() + b'-broken", "ts": ', "malformed_json"),
        (
            TOPICS.reviews,
            json.dumps({**good_review, "event_id": f"{tag}-r-type", "rating": "4"}).encode(),
            "schema_violation",
        ),
        (TOPICS.reviews, json.dumps({**good_review, "event_id": f"{tag}-r-2"}).encode(), None),
        (TOPICS.searches, json.dumps(good_search).encode(), None),
        (
            TOPICS.searches,
            json.dumps({**good_search, "event_id": f"{tag}-s-extra", "surprise": True}).encode(),
            "schema_violation",
        ),
        (TOPICS.searches, b'{"q": "' + b"z" * 70_000 + b'"}', "oversized"),
        (TOPICS.clicks, json.dumps(good_click).encode(), None),
        (
            TOPICS.clicks,
            json.dumps({**good_click, "event_id": f"{tag}-c-missing", "item_id": None}).encode(),
            "schema_violation",
        ),
        (TOPICS.clicks, b"[1,2,3]", "not_an_object"),
        (
            TOPICS.items,
            json.dumps({**_item_doc(f"{tag}-nan", "x"), "price": 1.0})
            .replace("1.0", "NaN")
            .encode(),
            "malformed_json",  # NaN is not JSON: refused before the schema is looked at
        ),
    ]
    # one key per test so every record of a topic lands in one partition, in order
    positions = produce(broker.bootstrap, [(t, tag, v) for t, v, _ in cases])
    expected_dead = {
        (t, positions[i][0], positions[i][1]): (reason, len(v))
        for i, (t, v, reason) in enumerate(cases)
        if reason
    }
    expected_valid = {json.loads(v)["event_id"] for _, v, reason in cases if reason is None}

    def dead_of_test(msgs: list[Any]) -> list[dict[str, Any]]:
        out = []
        for m in msgs:
            d = json.loads(m.value())
            key = (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
            if key in expected_dead:
                out.append(d)
        return out

    dead = dead_of_test(
        read_topic(
            broker.bootstrap,
            TOPICS.dlq,
            timeout_s=60,
            done=lambda ms: len(dead_of_test(ms)) >= len(expected_dead),
        )
    )
    assert len(dead) == len(expected_dead)
    for d in dead:
        reason, size = expected_dead[
            (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
        ]
        assert d["reason"] == reason, d
        assert d["raw_size"] == size and d["error"]
        assert d["raw_truncated"] == (size > 16_384)
        assert len(base64.b64decode(d["raw_b64"])) == min(size, 16_384)

    seen: set[str] = set()
    for topic in (TOPICS.valid_reviews, TOPICS.valid_searches, TOPICS.valid_clicks):
        msgs = read_topic(
            broker.bootstrap,
            topic,
            timeout_s=60,
            done=lambda ms, t=topic: (
                {e["event_id"] for e in batch_events(ms)}
                >= {x for x in expected_valid if f"-{t.split('.')[-1][0]}-" in x}
            ),
        )
        seen |= {e["event_id"] for e in batch_events(msgs)}
    assert expected_valid <= seen

    # the two valid reviews keep their order around the bad ones; r-2 was sent after the bad
    # ones into the same partition, so once it is here the bad ones were handled
    def of_tag(ms: list[Any]) -> list[str]:
        return [e["event_id"] for e in batch_events(ms) if e["event_id"].startswith(tag)]

    reviews = of_tag(
        read_topic(
            broker.bootstrap,
            TOPICS.valid_reviews,
            timeout_s=60,
            done=lambda ms: f"{tag}-r-2" in of_tag(ms),
        )
    )
    assert reviews == [f"{tag}-r-ok", f"{tag}-r-2"]


def _search_ids(base: str, q: str, k: int = 5, mode: str = "hybrid") -> list[str]:
    response = httpx.get(f"{base}/search", params={"q": q, "k": k, "mode": mode}, timeout=10)
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["results"]]


def test_upserted_items_become_searchable_and_deleted_ones_vanish(
    broker: Any, worker: Any, indexer: str
) -> None:
    tag = unique("fresh")
    titles = {
        f"{tag}-{i}": f"{word} hiking boots waterproof"
        for i, word in enumerate(["crimson", "turquoise", "charcoal", "mustard", "lavender"])
    }
    latencies = []
    for item_id, title in titles.items():
        sent = time.monotonic()
        produce(
            broker.bootstrap,
            [(TOPICS.items, item_id, json.dumps(_item_doc(item_id, title)).encode())],
        )
        wait_until(lambda i=item_id, t=title: i in _search_ids(indexer, t, 3), timeout_s=30)
        latencies.append(time.monotonic() - sent)
    # generous bound: the benchmark measures p99; this only catches a broken pipeline
    assert max(latencies) < 15, latencies
    # the lexical index changed in the same micro-batches: a model number finds its item,
    # and a hybrid result says which retrievers found it
    model_no = f"{tag}-model"
    produce(
        broker.bootstrap,
        [(TOPICS.items, model_no, json.dumps(_item_doc(model_no, "Drill XQ-7731 kit")).encode())],
    )
    wait_until(lambda: model_no in _search_ids(indexer, "xq 7731", 3, "lexical"), timeout_s=30)
    hits = httpx.get(
        f"{indexer}/search", params={"q": "XQ-7731 drill", "k": 5, "mode": "hybrid"}, timeout=10
    ).json()["results"]
    hit = next(h for h in hits if h["item_id"] == model_no)
    assert hit["lexical_rank"] == 1 and hit["dense_rank"] is not None, hit
    gone = f"{tag}-1"
    produce(
        broker.bootstrap,
        [(TOPICS.items, gone, json.dumps(_item_doc(gone, "", op="delete")).encode())],
    )
    wait_until(lambda: httpx.get(f"{indexer}/items/{gone}").status_code == 404, timeout_s=30)
    assert gone not in _search_ids(indexer, titles[gone], 10)
    assert gone not in _search_ids(indexer, titles[gone], 10, "lexical")
    # an old upsert replayed after the delete does not resurrect the item
    old = utc_now() - timedelta(hours=1)
    marker = f"{tag}-marker"
    produce(
        broker.bootstrap,
        [
            (TOPICS.items, gone, json.dumps(_item_doc(gone, titles[gone], ts=old)).encode()),
            (TOPICS.items, marker, json.dumps(_item_doc(marker, "marker item")).encode()),
        ],
    )
    wait_until(lambda: httpx.get(f"{indexer}/items/{marker}").status_code == 200, timeout_s=30)
    assert httpx.get(f"{indexer}/items/{gone}").status_code == 404


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 422),
        ({"q": ""}, 422),
        ({"q": "   "}, 422),
        ({"q": "x" * 513}, 422),
        ({"q": "tea", "k": 0}, 422),
        ({"q": "tea", "k": 101}, 422),
        ({"q": "tea", "k": "ten"}, 422),
        ({"q": "tea", "k": 3, "mode": "fuzzy"}, 422),
        ({"q": "tea", "k": 3}, 200),
        ({"q": "tea", "k": 3, "mode": "lexical"}, 200),
        ({"q": 'tea" OR NEAR(x*', "k": 3, "mode": "hybrid"}, 200),  # no FTS5 syntax leaks
    ],
)
def test_search_input_bounds(indexer: str, params: dict[str, Any], status: int) -> None:
    response = httpx.get(f"{indexer}/search", params=params, timeout=10)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["detail"]


def test_unknown_item_is_404(indexer: str) -> None:
    response = httpx.get(f"{indexer}/items/definitely-not-there", timeout=10)
    assert response.status_code == 404 and "not in the index" in response.json()["detail"]


def test_replica_restart_resumes_from_snapshot_without_reembedding(
    broker: Any, worker: Any, pipeline_dir: Any
) -> None:
    from streams.broker import free_port
    from workers.processes import indexer_process

    tag = unique("restart")
    docs = [_item_doc(f"{tag}-{i}", f"{tag} vintage ceramic mug number {i}") for i in range(30)]
    produce(broker.bootstrap, [(TOPICS.items, d["item_id"], json.dumps(d).encode()) for d in docs])
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def replica() -> Any:
        proc = indexer_process(
            broker.url,
            pipeline_dir,
            port,
            name="replica-restart",
            extra_env={"ECREC_INDEX__SNAPSHOT_INTERVAL_S": "1"},
        ).start()
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        return proc

    def stats() -> dict[str, Any]:
        return httpx.get(f"{base}/stats", timeout=10).json()

    proc = replica()
    try:
        wait_until(
            lambda: all(httpx.get(f"{base}/items/{d['item_id']}").status_code == 200 for d in docs),
            timeout_s=60,
            interval_s=0.5,
        )
        before = stats()
        assert not before["restored_from_snapshot"] and before["items_embedded"] >= 30
        queries = [f"{tag} ceramic mug number {i}" for i in (3, 17)]
        # dense: the restored vectors answer exactly as before (BM25 scores would shift with
        # the corpus statistics the new item below changes)
        results_before = [_search_ids(base, q, mode="dense") for q in queries]
    finally:
        assert proc.stop() == 0
    # while it is down: one delete and one new item
    new_doc = _item_doc(f"{tag}-new", f"{tag} brand new enamel mug")
    produce(
        broker.bootstrap,
        [
            (
                TOPICS.items,
                docs[0]["item_id"],
                json.dumps(_item_doc(docs[0]["item_id"], "", op="delete")).encode(),
            ),
            (TOPICS.items, new_doc["item_id"], json.dumps(new_doc).encode()),
        ],
    )
    proc = replica()
    try:
        wait_until(
            lambda: httpx.get(f"{base}/items/{new_doc['item_id']}").status_code == 200, timeout_s=60
        )
        after = stats()
        assert after["restored_from_snapshot"]
        assert after["items_embedded"] == 1  # only the new item; the catalog came from disk
        assert after["items"] == before["items"]  # one deleted, one added
        assert after["lexical_items"] == after["items"]  # the lexical side restored too
        assert httpx.get(f"{base}/items/{docs[0]['item_id']}").status_code == 404
        assert docs[0]["item_id"] not in _search_ids(base, queries[0], 10, "lexical")
        assert [_search_ids(base, q, mode="dense") for q in queries] == [
            [i for i in r if i != docs[0]["item_id"]][:5] if docs[0]["item_id"] in r else r
            for r in results_before
        ]
    finally:
        proc.stop()
