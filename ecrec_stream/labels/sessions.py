"""Shopping sessions: searches joined with later clicks of the same session, kept as plain
dicts (so a Faust table can store them as JSON), closed by event time (:class:`SessionWindows`)
and turned into relevance candidates on close."""

from __future__ import annotations

import heapq
import statistics
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ecrec_stream.contracts.events import ClickEvent, SearchEvent
from ecrec_stream.ingest.eventtime import Watermarks
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
    """Fold ``event`` into ``state``; False (and no change) for a duplicate event id. An event
    that raises leaves ``state`` as it was (its entry is built before anything changes)."""
    if event.event_id in state["event_ids"]:
        return False
    ts = event.ts.timestamp()
    search = click = None
    if isinstance(event, SearchEvent):
        search = {
            "event_id": event.event_id,
            "ts": ts,
            "query": event.query,
            "impressions": list(event.impressions),
        }
    elif event.action != "remove_from_cart":  # no evidence of relevance: only its id is kept
        click = {
            "event_id": event.event_id,
            "ts": ts,
            "search_id": event.search_id,
            "item_id": event.item_id,
            "position": event.position,
            "action": event.action,
            "dwell_ms": event.dwell_ms,
        }
    state["event_ids"] = [*state["event_ids"], event.event_id][-MAX_EVENT_IDS:]
    state["first_ts"] = ts if state["first_ts"] is None else min(state["first_ts"], ts)
    state["last_ts"] = ts if state["last_ts"] is None else max(state["last_ts"], ts)
    state["user_id"] = state["user_id"] or event.user_id
    if search is not None:
        state["searches"][event.search_id] = search
    elif click is not None and len(state["clicks"]) < max_clicks:
        state["clicks"].append(click)
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


def relevance_candidates(
    state: dict[str, Any], title_of: Callable[[str], str | None] | None = None
) -> list[RelevanceCandidate]:
    """One candidate per (search, shown item): the strongest action on it, its longest dwell,
    whether it was skipped above a clicked item, and (``title_of``) the item's title."""
    per_search: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for click in state["clicks"]:
        sid = _search_of(state, click)
        if sid is not None:
            per_search.setdefault(sid, {}).setdefault(click["item_id"], []).append(click)
    out = []
    session_id, user_id = state["session_id"], state["user_id"]
    for sid, search in state["searches"].items():
        clicked = per_search.get(sid, {})
        impressions = search["impressions"]
        event_id, query, ts = search["event_id"], search["query"], float(search["ts"])
        deepest = max((p for p, item in enumerate(impressions) if item in clicked), default=-1)
        for pos, item_id in enumerate(impressions):
            item_clicks = clicked.get(item_id)
            action: Any = "none"  # a click's action, as folded into the session
            dwell_ms, click_ids = None, ()
            if item_clicks:  # most impressions have none: nothing to fold
                action = max((c["action"] for c in item_clicks), key=ACTION_GRADE.__getitem__)
                dwells = [c["dwell_ms"] for c in item_clicks if c["dwell_ms"] is not None]
                dwell_ms = max(dwells) if dwells else None
                click_ids = tuple(sorted(c["event_id"] for c in item_clicks))
            out.append(
                RelevanceCandidate(
                    search_event_id=event_id,
                    session_id=session_id,
                    query=query,
                    item_id=item_id,
                    position=pos,
                    action=action,
                    dwell_ms=dwell_ms,
                    skipped_above_click=not item_clicks and pos < deepest,
                    click_event_ids=click_ids,
                    user_id=user_id,
                    event_ts=ts,
                    item_title=None if title_of is None else title_of(item_id),
                )
            )
    return out


@dataclass
class SessionStep:
    """What one batch did to the session windows of a partition."""

    closed: list[dict[str, Any]] = field(default_factory=list)  # states, by session id
    late: int = 0
    duplicates: int = 0
    failed: list[tuple[SearchEvent | ClickEvent, BaseException]] = field(default_factory=list)


class SessionWindows:
    """Session windows over searches and clicks, closed by event time, per partition.

    A session closes once its partition's watermark (the slower of the ``inputs``, see
    :class:`~ecrec_stream.ingest.eventtime.Watermarks`) passes its last event by ``gap_s``. An event
    that arrives after that point is late: counted, never folded into a bogus new session.
    Session state lives in ``store`` (a Faust table in the worker: written once per touched
    session per batch, one tombstone per closed session; a dict in tests). Which sessions are
    open in a partition is rebuilt from the store after a restart, and after :meth:`release`
    (call it when the partitions are revoked: another worker may write them meanwhile). The
    ``recent_capacity`` sessions most recently written are kept as objects too and read from
    there, and a session id that is not open is never looked up: a store read of a Faust table
    decodes JSON from RocksDB.

    ``keep_closed``: a closed session stays in the store until :meth:`forget` is called with
    it (once its examples were sent), so a crash before then closes it again after the restart
    (the same example ids) instead of losing it. Without, it is deleted when it closes.

    >>> from datetime import datetime, timezone
    >>> def search(i, sid, ts):
    ...     at = datetime.fromtimestamp(ts, tz=timezone.utc)
    ...     return SearchEvent(event_id=f"s{i}", ts=at, search_id=f"q{i}", session_id=sid,
    ...                        query="milk", impressions=["a"])
    >>> win = SessionWindows({}, gap_s=60, max_clicks=100, inputs=("searches", "clicks"))
    >>> win.add(0, "searches", [search(1, "u1", 0.0)]).closed
    []
    >>> win.add(0, "clicks", [])  # a silent input holds the watermark back
    SessionStep(closed=[], late=0, duplicates=0, failed=[])
    >>> _ = win.add(0, "clicks", [ClickEvent(event_id="c9", ts=datetime.fromtimestamp(
    ...     100.0, tz=timezone.utc), session_id="u9", item_id="a")])
    >>> step = win.add(0, "searches", [search(2, "u2", 100.0), search(3, "u1", 1.0)])
    >>> [s["session_id"] for s in step.closed], step.late
    (['u1'], 1)
    """

    def __init__(
        self,
        store: MutableMapping[str, Any],
        *,
        gap_s: float,
        max_clicks: int,
        inputs: tuple[str, ...],
        raise_errors: bool = False,
        keep_closed: bool = False,
        recent_capacity: int = 20_000,
    ) -> None:
        self.store = store
        self.recent_capacity = recent_capacity
        self.gap_s = gap_s
        self.max_clicks = max_clicks
        self.raise_errors = raise_errors
        self.keep_closed = keep_closed
        self.watermarks = Watermarks(inputs)
        # per partition: each open session's last event time, and a min-heap of (last event
        # time, session id) whose stale entries (the session moved on) are skipped when
        # popped: closing looks at the sessions due, not at every open one (with thousands
        # open, reading each from the store per batch was a fifth of the worker's time)
        self._open: dict[int, dict[str, float]] = {}
        self._due: dict[int, list[tuple[float, str]]] = {}
        # per partition (keep_closed): closed sessions still in the store, with the last event
        # time they closed with
        self._closing: dict[int, dict[str, float]] = {}
        # per partition: the states last written to the store (the same objects), oldest first.
        # A session's events come in bursts: most reads follow its last write by seconds.
        self._recent: dict[int, OrderedDict[str, dict[str, Any]]] = {}

    def release(self, partitions: Iterable[int]) -> None:
        """Drop what is known of ``partitions`` (revoked: the store is the truth when they
        come back)."""
        for part in partitions:
            for known in (self._open, self._due, self._closing, self._recent):
                known.pop(part, None)

    def _read(self, partition: int, sid: str) -> dict[str, Any] | None:
        """Session ``sid`` as stored (open, or closed and kept)."""
        recent = self._recent[partition]
        state = recent.get(sid)
        if state is None:
            return cast(dict[str, Any] | None, self.store.get(sid))
        recent.move_to_end(sid)
        return state

    def _write(self, partition: int, sid: str, state: dict[str, Any]) -> None:
        self.store[sid] = state
        recent = self._recent[partition]
        recent[sid] = state
        recent.move_to_end(sid)
        if len(recent) > self.recent_capacity:
            recent.popitem(last=False)

    def _delete(self, partition: int, sid: str) -> None:
        if partition in self._recent:
            self._recent[partition].pop(sid, None)
        if sid in self.store:
            del self.store[sid]  # one changelog tombstone

    def add(
        self, partition: int, source: str, events: Sequence[SearchEvent | ClickEvent]
    ) -> SessionStep:
        """Fold one batch from ``source`` (an input name) into ``partition``'s sessions and
        close those the watermark has passed. A stage error on one event is collected in
        ``failed`` (or raised with ``raise_errors``); the rest of the batch goes on."""
        step = SessionStep()
        if partition not in self._open:  # first batch of this partition since start
            self._open[partition] = {
                k: float(v["last_ts"])
                for k, v in self.store.items()
                if v and v["partition"] == partition
            }
            self._due[partition] = [(ts, k) for k, ts in self._open[partition].items()]
            heapq.heapify(self._due[partition])
            self._recent[partition] = OrderedDict()
        open_here, due = self._open[partition], self._due[partition]
        closing = self._closing.setdefault(partition, {})
        touched: dict[str, dict[str, Any]] = {}
        for ev in events:
            ts = ev.ts.timestamp()
            if self.watermarks.is_late(partition, ts, self.gap_s):
                step.late += 1  # later than its session could still be open
                continue
            sid = ev.session_id
            state = touched.get(sid)
            if state is None:
                if closing.pop(sid, None) is not None:
                    # the session id came back after its session closed: a new session,
                    # written over the closed one (which, if a crash comes before its
                    # examples are sent, is then not closed again)
                    self._recent[partition].pop(sid, None)
                    state = new_session(sid, partition)
                elif sid in open_here:
                    state = self._read(partition, sid) or new_session(sid, partition)
                else:  # neither open nor closing here: not in the store
                    state = new_session(sid, partition)
            try:
                added = add_event(state, ev, max_clicks=self.max_clicks)
            except Exception as exc:
                if self.raise_errors:
                    raise
                step.failed.append((ev, exc))
                continue
            if added:
                touched[ev.session_id] = state
            else:
                step.duplicates += 1
            self.watermarks.advance(partition, source, ts)
        for sid, state in touched.items():
            if open_here.get(sid) != state["last_ts"]:
                open_here[sid] = state["last_ts"]
                heapq.heappush(due, (state["last_ts"], sid))
        horizon = self.watermarks.get(partition) - self.gap_s
        while due and due[0][0] < horizon:
            last_ts, sid = heapq.heappop(due)
            if open_here.get(sid) != last_ts:
                continue  # a stale entry: the session has a later event, or closed
            del open_here[sid]
            if self.keep_closed:  # written below if touched, deleted by forget()
                state = touched.get(sid) or self._read(partition, sid)
                if state is not None:
                    closing[sid] = last_ts
            else:
                state = touched.pop(sid, None) or self._read(partition, sid)
                self._delete(partition, sid)
            if state is None:
                continue
            step.closed.append(state)
        step.closed.sort(key=lambda state: state["session_id"])  # sort the few, not all open
        for sid, state in touched.items():  # one store write per touched session
            self._write(partition, sid, state)
        return step

    def forget(self, partition: int, closed: Iterable[dict[str, Any]]) -> int:
        """Delete sessions that :meth:`add` closed (its ``closed`` states) from the store
        (keep_closed): one tombstone each. A session whose id came back since is kept. Returns
        how many were deleted."""
        closing = self._closing.get(partition, {})
        deleted = 0
        for state in closed:
            sid = state["session_id"]
            if closing.get(sid) == state["last_ts"]:
                del closing[sid]
                self._delete(partition, sid)
                deleted += 1
        return deleted
