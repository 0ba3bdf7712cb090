"""Sessions: joining searches with clicks, duplicates, bots."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from ecrec_stream.contracts.events import ClickEvent, SearchEvent
from ecrec_stream.labels.sessions import (
    BotRules,
    SessionWindows,
    add_event,
    bot_reason,
    new_session,
    relevance_candidates,
)
from tests.helpers import at


def _search(sid: str = "q1", t: float = 0, items: int = 5) -> SearchEvent:
    return SearchEvent(
        event_id=f"ev-{sid}",
        ts=at(t),
        search_id=sid,
        session_id="u1",
        query="oat milk",
        impressions=[f"i{n}" for n in range(items)],
        user_id="alice",
    )


def _click(
    n: int, t: float, action: str = "click", dwell: int = 20_000, search_id: str | None = "q1"
) -> ClickEvent:
    return ClickEvent(
        event_id=f"ev-c{n}-{t}",
        ts=at(t),
        session_id="u1",
        search_id=search_id,
        item_id=f"i{n}",
        position=n,
        action=action,  # type: ignore[arg-type]
        dwell_ms=dwell,
    )


def test_clicks_join_their_search() -> None:
    state = new_session("u1", 0)
    for ev in [
        _search(),
        _click(2, 10, "add_to_cart"),
        _click(2, 20, "purchase"),
        _click(4, 30, search_id=None),
    ]:
        assert add_event(state, ev, max_clicks=100)
    assert not add_event(state, _click(2, 10, "add_to_cart"), max_clicks=100)  # duplicate id
    cands = {c.item_id: c for c in relevance_candidates(state)}
    assert cands["i2"].action == "purchase" and len(cands["i2"].click_event_ids) == 2
    assert cands["i4"].action == "click"  # matched by impression, no search id
    assert cands["i0"].skipped_above_click and cands["i3"].skipped_above_click
    assert not cands["i2"].skipped_above_click
    assert cands["i0"].user_id == "alice"


def test_bot_sessions_are_flagged_and_people_are_not() -> None:
    person = new_session("u1", 0)
    add_event(person, _search(), max_clicks=100)
    for n in range(4):
        add_event(person, _click(n, 20 * n + 5), max_clicks=100)
    assert bot_reason(person, BotRules()) is None
    bot = new_session("u1", 0)
    add_event(bot, _search(), max_clicks=100)
    for n in range(10):
        add_event(bot, _click(n % 5, 0.3 * n, dwell=100), max_clicks=100)
    assert "per minute" in (bot_reason(bot, BotRules()) or "")
    slow_bot = new_session("u1", 0)
    add_event(slow_bot, _search(), max_clicks=100)
    for n in range(6):
        add_event(slow_bot, _click(n % 5, 30 * n, dwell=120), max_clicks=100)
    assert "dwell" in (bot_reason(slow_bot, BotRules()) or "")
    assert timedelta(0) == timedelta(0)


def _in(session: str, sid: str, t: float) -> SearchEvent:
    return _search(sid, t).model_copy(
        update={"session_id": session, "event_id": f"{session}-{sid}"}
    )


def test_session_windows_close_by_event_time_and_survive_a_restart() -> None:
    store: dict[str, Any] = {}
    inputs = ("searches", "clicks")
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=inputs)
    step = win.add(0, "searches", [_in("a", "q1", 0), _in("b", "q2", 40)])
    assert step.closed == [] and set(store) == {"a", "b"}
    # a repeated event is a duplicate; clicks at t=95 move the watermark to 95: "a" (last 0)
    # closes once the searches' watermark passes too, "b" (last 40 + 60 > 95) stays open
    step = win.add(0, "searches", [_in("a", "q1", 0)])
    assert step.duplicates == 1
    step = win.add(0, "clicks", [_click(1, 95).model_copy(update={"session_id": "c"})])
    assert [s["session_id"] for s in step.closed] == []  # searches' watermark still at 40
    step = win.add(0, "searches", [_in("d", "q3", 100)])
    assert [s["session_id"] for s in step.closed] == ["a"]
    assert "a" not in store  # tombstoned once closed

    # a new instance over the same store (a restarted worker) knows which sessions are open
    again = SessionWindows(store, gap_s=60, max_clicks=100, inputs=inputs)
    again.add(0, "clicks", [_click(2, 200).model_copy(update={"session_id": "f"})])
    step = again.add(0, "searches", [_in("e", "q4", 200)])
    assert sorted(s["session_id"] for s in step.closed) == ["b", "c", "d"]
    # an event for a session the watermark has passed is late: counted, not a new session
    step = again.add(0, "searches", [_in("b", "q5", 31)])
    assert step.late == 1 and "b" not in store


def test_session_windows_collect_a_failing_event_and_go_on() -> None:
    store: dict[str, Any] = {}
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",))
    bad = _in("x", "q1", 0)
    object.__setattr__(bad, "impressions", None)  # add_event raises on it
    step = win.add(0, "searches", [bad, _in("y", "q2", 1)])
    assert [ev.event_id for ev, _ in step.failed] == [bad.event_id]
    assert "y" in store
    strict = SessionWindows({}, gap_s=60, max_clicks=100, inputs=("searches",), raise_errors=True)
    with pytest.raises(TypeError):
        strict.add(0, "searches", [bad])


def test_closed_sessions_kept_until_forgotten_close_again_after_a_restart() -> None:
    store: dict[str, Any] = {}
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",), keep_closed=True)
    win.add(0, "searches", [_in("a", "q1", 0), _in("b", "q2", 10)])
    step = win.add(0, "searches", [_in("a", "q9", 20), _in("c", "q3", 100)])
    t0 = at(0).timestamp()
    closed = [(s["session_id"], s["last_ts"] - t0) for s in step.closed]
    assert closed == [("a", 20.0), ("b", 10.0)]
    # closed, but kept (with the event that came in the closing batch) until forgotten
    assert set(store) == {"a", "b", "c"} and len(store["a"]["searches"]) == 2

    # a crash before the examples were sent: the restarted worker closes them again, whole
    again = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",), keep_closed=True)
    step = again.add(0, "searches", [_in("d", "q4", 200)])
    assert sorted(s["session_id"] for s in step.closed) == ["a", "b", "c"]
    assert len(next(s for s in step.closed if s["session_id"] == "a")["searches"]) == 2

    # sent: forgotten (one tombstone each), but not a session whose id came back meanwhile
    a_closed, b_closed = ({"session_id": sid, "last_ts": t0 + t} for sid, t in closed)
    assert win.forget(0, [b_closed]) == 1 and "b" not in store
    win.add(0, "searches", [_in("a", "q5", 150)])  # after the gap: a new session "a"
    assert win.forget(0, [a_closed]) == 0
    assert list(store["a"]["searches"]) == ["q5"] and store["a"]["first_ts"] == t0 + 150


class TableLikeStore(dict[str, Any]):
    """A store that, like a Faust table, holds encoded values (a read returns a copy) and
    counts its reads."""

    reads = 0

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, json.dumps(value))

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return json.loads(super().__getitem__(key))

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def items(self) -> Any:
        return [(key, json.loads(raw)) for key, raw in super().items()]


def test_open_sessions_are_read_from_their_recent_copies_and_new_ids_not_looked_up() -> None:
    store = TableLikeStore()
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",), recent_capacity=1)
    win.add(0, "searches", [_in("a", "q1", 0), _in("b", "q2", 1)])  # two new sessions
    assert store.reads == 0
    win.add(0, "searches", [_in("b", "q3", 2)])  # the session written last: its copy
    assert store.reads == 0
    win.add(0, "searches", [_in("a", "q4", 3)])  # beyond the capacity of 1: the store
    assert store.reads == 1
    assert [len(store[sid]["searches"]) for sid in "ab"] == [2, 2]


def test_a_failing_event_leaves_its_open_session_as_it_was() -> None:
    store = TableLikeStore()
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",))
    win.add(0, "searches", [_in("x", "q1", 0)])
    before = {**store["x"], "event_ids": list(store["x"]["event_ids"])}
    bad = _in("x", "q2", 5)
    object.__setattr__(bad, "impressions", None)  # add_event raises on it
    step = win.add(0, "searches", [bad])
    assert len(step.failed) == 1
    assert store["x"] == before  # the copy it would have been folded into is unchanged
    win.add(0, "searches", [_in("x", "q3", 6)])
    assert (
        store["x"]["event_ids"] == ["x-q1", "x-q3"] and store["x"]["first_ts"] == at(0).timestamp()
    )


def test_released_partitions_are_read_from_the_store_when_they_come_back() -> None:
    store = TableLikeStore()
    win = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",))
    win.add(0, "searches", [_in("a", "q1", 0)])
    win.release([0])
    # meanwhile another worker owned partition 0 and folded a search into "a"
    other = SessionWindows(store, gap_s=60, max_clicks=100, inputs=("searches",))
    other.add(0, "searches", [_in("a", "q2", 10)])
    win.add(0, "searches", [_in("a", "q3", 20)])
    assert list(store["a"]["searches"]) == ["q1", "q2", "q3"]
    # and a session the other worker opened is open here too (closed by the watermark)
    other.add(0, "searches", [_in("b", "q4", 25)])
    win.release([0])
    step = win.add(0, "searches", [_in("c", "q5", 200)])
    assert sorted(s["session_id"] for s in step.closed) == ["a", "b"]
