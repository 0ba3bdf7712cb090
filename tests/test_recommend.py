"""Recommendations: decayed, bounded co-visitation; live sessions; filters; and on the real
broker a click stream that makes two items neighbours, a delete that removes an item from
every answer, a restarted replica that answers the same, and 422s for bad parameters."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecrec_stream.config import RecommendSettings
from ecrec_stream.contracts.events import ClickEvent, utc_now
from ecrec_stream.recommend import CoVisitation, Recommender, SessionTracker

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _click(
    n: int, session: str, item: str, action: str = "view", t: float | None = None
) -> ClickEvent:
    return ClickEvent(
        event_id=f"{session}-{n}-{item}",
        ts=T0 + timedelta(seconds=n if t is None else t),
        session_id=session,
        item_id=item,
        action=action,  # type: ignore[arg-type]
    )


def test_weights_halve_every_half_life_and_survive_a_landmark_move() -> None:
    cv = CoVisitation(neighbours=5, half_life_s=100.0)
    cv.add("a", "b", 4.0, ts=0.0)
    cv.add("a", "c", 1.0, ts=200.0)  # two half-lives later: b is worth 1.0 now
    assert cv.weight("a", "b") == pytest.approx(1.0) and cv.weight("a", "c") == pytest.approx(1.0)
    cv.add("a", "c", 1.0, ts=100.0 * 70)  # far ahead: the landmark moves, ratios hold
    assert cv.landmark == 7000.0
    assert cv.weight("a", "c") == pytest.approx(1.0 + 2 ** (-68))
    assert cv.weight("a", "b") == pytest.approx(4.0 * 2 ** (-70))


def test_each_item_keeps_its_heaviest_neighbours_within_the_bound() -> None:
    cv = CoVisitation(neighbours=3, half_life_s=1e9)
    for n in range(50):
        cv.add("a", f"x{n}", 1.0 + n, ts=0.0)
        assert len(cv.neighbours("a")) <= 6
    assert [i for i, _ in cv.neighbours("a", 3)] == ["x49", "x48", "x47"]
    assert cv.pruned > 0


def test_sessions_are_bounded_split_by_event_time_and_expire_by_wall_clock() -> None:
    wall = [0.0]
    tracker = SessionTracker(max_items=3, ttl_s=60, max_sessions=2, clock=lambda: wall[0])
    for n, item in enumerate("abcd"):
        tracker.add("s1", item, float(n), "add_to_cart" if item == "b" else "view")
    session = tracker.get("s1")
    assert session is not None and session.items() == ["b", "c", "d"] and session.cart == {"b"}
    tracker.add("s1", "b", 5.0, "remove_from_cart")
    assert tracker.get("s1").cart == set()  # type: ignore[union-attr]
    tracker.add("s2", "x", 6.0, "view")
    tracker.add("s3", "y", 7.0, "view")  # over max_sessions: the least recent (s1) goes
    assert tracker.get("s1") is None and tracker.get("s3") is not None
    again = tracker.add("s3", "z", 7.0 + 61, "view")  # its own events 61 s apart: a new session
    assert again.items() == [] and tracker.get("s3").items() == ["z"]  # type: ignore[union-attr]
    wall[0] = 61.0
    assert tracker.get("s2") is None  # not updated for more than ttl_s


def _shop() -> Recommender:
    categories = {
        "milk": "dairy",
        "butter": "dairy",
        "cheese": "dairy",
        "bread": "bakery",
        "bagel": "bakery",
        "soap": "household",
    }
    rec = Recommender(RecommendSettings(), category_of=categories.get)
    clicks = []
    for s in range(20):
        clicks += [
            _click(1, f"s{s}", "milk", "add_to_cart"),
            _click(2, f"s{s}", "bread", "add_to_cart"),
            _click(3, f"s{s}", "butter", "view"),
        ]
    clicks += [_click(4, f"v{s}", "cheese", "view") for s in range(5)]
    clicks += [_click(5, "w", "soap", "purchase"), _click(6, "w", "bagel", "view")]
    rec.observe_many(clicks)
    return rec


def test_actions_weigh_differently_and_explain_themselves() -> None:
    rec = _shop()
    together = rec.recommend(["milk"], 3, kind="bought_together")
    assert together[0].item_id == "bread" and together[0].source == "behaviour"
    assert "bought with milk" in together[0].reason
    similar = [r.item_id for r in rec.recommend(["milk"], 2, kind="similar")]
    assert similar == ["bread", "butter"]  # carted together outweighs viewed together
    assert rec.observe_many([_click(1, "s0", "milk", "add_to_cart")]).counts["duplicates"] == 1
    popular = {r.item_id: r.reason for r in rec.recommend(["milk"], 10) if r.source == "popularity"}
    assert popular["cheese"].startswith("popular in dairy")  # the anchor's category first
    assert popular["soap"].startswith("popular in the whole shop")


def test_filters_exclude_the_cart_deleted_items_and_cap_categories() -> None:
    rec = _shop()
    rec.observe_many([_click(7, "live", "milk", "add_to_cart"), _click(8, "live", "butter")])
    session = rec.for_session("live", 5)
    assert session is not None and "milk" not in {r.item_id for r in session}  # in the cart
    assert rec.for_session("nobody", 5) is None
    rec.forget_items(["bread"])
    for kind in ("next", "similar", "bought_together"):
        assert "bread" not in {r.item_id for r in rec.recommend(["milk"], 10, kind=kind)}  # type: ignore[arg-type]
    only_dairy = rec.recommend(["milk"], 10, category="dairy")
    assert only_dairy and {rec.category_of(r.item_id) for r in only_dairy} == {"dairy"}
    capped = rec.recommend(["milk"], 10, category_cap=1)
    cats = [rec.category_of(r.item_id) for r in capped]
    assert len(cats) == len(set(cats))


def test_a_cold_item_is_recommended_by_its_content() -> None:
    rec = Recommender(
        RecommendSettings(),
        content=lambda anchors, k: [("new-oat-milk", 0.9), ("milk", 0.8)],
    )
    rec.observe_many([_click(1, "s", "milk"), _click(2, "s", "bread")])
    results = rec.recommend(["milk"], 3)
    cold = next(r for r in results if r.item_id == "new-oat-milk")
    assert cold.source == "content" and cold.behaviour is None and "cosine 0.900" in cold.reason


def test_the_category_flow_reaches_items_never_seen_with_the_anchors() -> None:
    leaves = {
        "apple": "produce > fruit",
        "pear": "produce > fruit",
        "milk": "dairy > milk",
        "oat-milk": "dairy > milk",
        "soap": "household > soap",
    }
    rec = Recommender(
        RecommendSettings(flow_weight=1.0, popularity_weight=0.0),
        category_of=lambda item: leaves[item].split(" > ")[0],
        leaf_of=leaves.get,
    )
    clicks = []
    for s in range(10):  # fruit, then milk: the aisle order of a cart
        clicks += [_click(1, f"s{s}", "apple", "add_to_cart"), _click(2, f"s{s}", "milk")]
    clicks += [_click(3, "t", "oat-milk", "add_to_cart"), _click(4, "u", "soap", "view")]
    rec.observe_many(clicks)
    # pear was never in a session: its flow comes from the apple's category moving to milk
    results = {r.item_id: r for r in rec.recommend(["pear"], 5) if r.score > 0}
    assert set(results) == {"milk", "oat-milk"}  # soap: no session moved to its category
    oat = results["oat-milk"]
    assert oat.source == "flow" and oat.behaviour is None and oat.flow is not None
    assert "from produce > fruit to dairy > milk (100% of moves)" in oat.reason
    assert results["milk"].flow == 1.0 and oat.flow < 1.0  # milk is taken more in its aisle
    # an older anchor's category counts flow_decay (0.5) times less per step back
    fruit, soap = "produce > fruit", "household > soap"
    newest = {item: score for item, score, _ in rec.flow.scores([soap, fruit], 5)}
    older = {item: score for item, score, _ in rec.flow.scores([fruit, soap], 5)}
    assert older["milk"] == pytest.approx(0.5 * newest["milk"])
    rec.forget_items(["oat-milk"])
    assert "oat-milk" not in {r.item_id for r in rec.recommend(["pear"], 5)}
    assert rec.stats()["flow_categories"] == 3  # fruit, milk, soap took weight


# -- on the real broker ------------------------------------------------------------------------
def _item(item_id: str, title: str, op: str = "upsert") -> dict[str, Any]:
    from tests.helpers import unique

    doc: dict[str, Any] = {
        "event_id": unique("ev"),
        "ts": utc_now().isoformat(),
        "op": op,
        "item_id": item_id,
    }
    if op == "upsert":
        doc.update(title=title, category_path=["kitchen", "mugs"], brand="Acme", price=4.0)
    return doc


def _view(tag: str, n: int, session: str, item: str, action: str = "view") -> dict[str, Any]:
    return {
        "event_id": f"{tag}-{session}-{n}",
        "ts": (utc_now() + timedelta(seconds=n)).isoformat(),
        "session_id": session,
        "item_id": item,
        "action": action,
        "surface": "browse",
    }


def _ids(base: str, **params: Any) -> list[str]:
    body = httpx.get(f"{base}/recommend", params=params, timeout=10).json()
    return [r["item_id"] for r in body["results"]]


@pytest.mark.integration
def test_clicks_make_neighbours_deletes_vanish_and_a_restart_answers_the_same(
    broker: Any, worker: Any, tmp_path: Path
) -> None:
    from ecrec_stream.config import Settings
    from streams.broker import free_port
    from tests.helpers import produce, unique, wait_until
    from workers.processes import indexer_process

    topics = Settings().topics
    tag = unique("rec")
    a, b, c, cold = (f"{tag}-{x}" for x in ("a", "b", "c", "cold"))
    produce(
        broker.bootstrap,
        [
            (topics.items, a, json.dumps(_item(a, f"{tag} blue ceramic mug")).encode()),
            (topics.items, b, json.dumps(_item(b, f"{tag} red ceramic mug")).encode()),
            (topics.items, c, json.dumps(_item(c, f"{tag} green teapot")).encode()),
            (topics.items, cold, json.dumps(_item(cold, f"{tag} blue ceramic mug large")).encode()),
        ],
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def replica() -> Any:
        env = {"ECREC_INDEX__SNAPSHOT_INTERVAL_S": "0.5"}
        proc = indexer_process(broker.url, tmp_path, port, name="rec", extra_env=env).start()
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        return proc

    proc = replica()
    try:
        # every item indexed (they are keyed by id: partitions may be applied in any order)
        wait_until(
            lambda: all(httpx.get(f"{base}/items/{i}").status_code == 200 for i in (a, b, c, cold)),
            timeout_s=60,
        )
        # cold: never clicked, recommendable by its content as soon as it is indexed
        assert cold in _ids(base, item_id=a, k=5)
        sessions = [
            (f"{tag}-s{n}", [(a, "view"), (b, "add_to_cart"), (c, "view")]) for n in range(3)
        ]
        produce(
            broker.bootstrap,
            [
                (topics.clicks, sid, json.dumps(_view(tag, n, sid, item, action)).encode())
                for sid, rows in sessions
                for n, (item, action) in enumerate(rows)
            ],
        )

        # the positive marker: b becomes a behavioural neighbour of a
        def b_is_a_neighbour() -> bool:
            body = httpx.get(f"{base}/recommend", params={"item_id": a, "k": 5}).json()
            return any(r["item_id"] == b and r["source"] == "behaviour" for r in body["results"])

        def first_session() -> dict[str, Any]:
            params = {"session_id": sessions[0][0]}
            return dict(httpx.get(f"{base}/recommend", params=params).json())

        wait_until(
            lambda: b_is_a_neighbour() and first_session()["anchors"] == [a, b, c],
            timeout_s=60,
            interval_s=0.2,
        )
        session = first_session()
        assert session["session_found"]
        assert b not in [r["item_id"] for r in session["results"]]  # in its cart
        posted = httpx.post(
            f"{base}/recommend", json={"item_ids": [a], "k": 5, "kind": "bought_together"}
        )
        assert posted.status_code == 200
        before = {kind: _ids(base, item_id=a, k=5, kind=kind) for kind in ("similar", "next")}
        time.sleep(1.5)  # two snapshot intervals: the state above is on disk
    finally:
        assert proc.stop() == 0
    proc = replica()
    try:
        assert httpx.get(f"{base}/stats").json()["restored_from_snapshot"]
        after = {kind: _ids(base, item_id=a, k=5, kind=kind) for kind in ("similar", "next")}
        assert after == before
        produce(
            broker.bootstrap, [(topics.items, b, json.dumps(_item(b, "", op="delete")).encode())]
        )
        wait_until(lambda: httpx.get(f"{base}/items/{b}").status_code == 404, timeout_s=60)
        for params in (
            {"item_id": a, "kind": "similar"},
            {"item_id": a, "kind": "bought_together"},
            {"item_id": c, "kind": "next"},
            {"session_id": sessions[1][0]},
        ):
            assert b not in _ids(base, k=10, **params), params
        # bad parameters
        for params in (
            {},
            {"item_id": a, "session_id": "s"},
            {"item_id": a, "k": 0},
            {"item_id": a, "kind": "weird"},
            {"item_id": a, "k": 10_000},
        ):
            assert httpx.get(f"{base}/recommend", params=params).status_code == 422, params
        for body in (
            {"item_ids": []},
            {"item_ids": [a], "k": 0},
            {"item_ids": [a], "kind": "x"},
            {"item_ids": [a] * 51},
        ):
            assert httpx.post(f"{base}/recommend", json=body).status_code == 422, body
    finally:
        assert proc.stop() == 0
