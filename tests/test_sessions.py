"""Sessions: joining searches with clicks, duplicates, bots."""

from __future__ import annotations

from datetime import timedelta

from ecrec_stream.events import ClickEvent, SearchEvent
from ecrec_stream.sessions import (
    BotRules,
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
