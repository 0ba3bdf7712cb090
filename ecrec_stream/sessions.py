"""Shopping sessions: searches joined with later clicks of the same session, kept as plain
dicts (so a Faust table can store them as JSON), turned into relevance candidates on close."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, cast

from ecrec_stream.events import ClickEvent, SearchEvent
from ecrec_stream.labels.base import RelevanceCandidate
from ecrec_stream.labels.relevance import ACTION_GRADE

MAX_EVENT_IDS = 1_000


def new_session(session_id: str, partition: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "partition": partition,
        "user_id": None,
        "searches": {},
        "clicks": [],
        "first_ts": None,
        "last_ts": None,
        "event_ids": [],
    }


def add_event(state: dict[str, Any], event: SearchEvent | ClickEvent, *, max_clicks: int) -> bool:
    """Fold ``event`` into ``state``; False (and no change) for a duplicate event id."""
    if event.event_id in state["event_ids"]:
        return False
    state["event_ids"] = [*state["event_ids"], event.event_id][-MAX_EVENT_IDS:]
    ts = event.ts.timestamp()
    state["first_ts"] = ts if state["first_ts"] is None else min(state["first_ts"], ts)
    state["last_ts"] = ts if state["last_ts"] is None else max(state["last_ts"], ts)
    state["user_id"] = state["user_id"] or event.user_id
    if isinstance(event, SearchEvent):
        state["searches"][event.search_id] = {
            "event_id": event.event_id,
            "ts": ts,
            "query": event.query,
            "impressions": list(event.impressions),
        }
    elif len(state["clicks"]) < max_clicks:
        state["clicks"].append(
            {
                "event_id": event.event_id,
                "ts": ts,
                "search_id": event.search_id,
                "item_id": event.item_id,
                "position": event.position,
                "action": event.action,
                "dwell_ms": event.dwell_ms,
            }
        )
    return True


@dataclass(frozen=True, slots=True)
class BotRules:
    max_clicks_per_minute: float = 30.0
    max_clicks: int = 100
    min_median_dwell_ms: int = 500


def bot_reason(state: dict[str, Any], rules: BotRules) -> str | None:
    """Why a session looks automated, or ``None``. Rates no person reaches: many clicks a
    minute, hundreds of clicks, or clicks whose median dwell is a fraction of a second."""
    clicks = state["clicks"]
    if len(clicks) > rules.max_clicks:
        return f"{len(clicks)} clicks in one session"
    if len(clicks) >= 5:
        span_min = max((state["last_ts"] - state["first_ts"]) / 60.0, 1 / 60)
        if len(clicks) / span_min > rules.max_clicks_per_minute:
            return f"{len(clicks) / span_min:.0f} clicks per minute"
        dwells = [c["dwell_ms"] for c in clicks if c["dwell_ms"] is not None]
        if len(dwells) >= 5 and statistics.median(dwells) < rules.min_median_dwell_ms:
            return f"median dwell {statistics.median(dwells):.0f} ms"
    return None


def _search_of(state: dict[str, Any], click: dict[str, Any]) -> str | None:
    if click["search_id"] in state["searches"]:
        return str(click["search_id"])
    # no (known) search id: the latest earlier search that showed the item
    best = None
    for sid, s in state["searches"].items():
        if (
            click["item_id"] in s["impressions"]
            and s["ts"] <= click["ts"]
            and (best is None or s["ts"] > state["searches"][best]["ts"])
        ):
            best = sid
    return best


def relevance_candidates(state: dict[str, Any]) -> list[RelevanceCandidate]:
    """One candidate per (search, shown item): the strongest action on it, its longest dwell,
    and whether it was skipped above a clicked item."""
    per_search: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for click in state["clicks"]:
        sid = _search_of(state, click)
        if sid is not None:
            per_search.setdefault(sid, {}).setdefault(click["item_id"], []).append(click)
    out = []
    for sid, search in state["searches"].items():
        clicked = per_search.get(sid, {})
        positions = {item: p for p, item in enumerate(search["impressions"])}
        deepest = max((positions[i] for i in clicked if i in positions), default=-1)
        for pos, item_id in enumerate(search["impressions"]):
            item_clicks = clicked.get(item_id, [])
            action = max(
                (c["action"] for c in item_clicks), key=ACTION_GRADE.__getitem__, default="none"
            )
            dwells = [c["dwell_ms"] for c in item_clicks if c["dwell_ms"] is not None]
            out.append(
                RelevanceCandidate(
                    search_event_id=search["event_id"],
                    session_id=state["session_id"],
                    query=search["query"],
                    item_id=item_id,
                    position=pos,
                    action=cast(Any, action),
                    dwell_ms=max(dwells) if dwells else None,
                    skipped_above_click=not item_clicks and pos < deepest,
                    click_event_ids=tuple(sorted(c["event_id"] for c in item_clicks)),
                    user_id=state["user_id"],
                )
            )
    return out
