"""Each live session's recent items and its cart, bounded and expiring.

Two clocks, each where it is robust: a session's own events split it into two when they are
more than ``ttl_s`` of *event time* apart (a returning shopper starts afresh, whatever order
the topics were read in), while a lookup treats a session as over once it has not been updated
for ``ttl_s`` of *wall-clock time*. The newest event time seen across all sessions would be
the other choice for lookups, but one producer with a clock hours ahead would then end every
live session at once."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LiveSession:
    """A session's recent interactions (item, event time, action), newest last, and the items
    in its cart and bought (what a recommendation must not offer again)."""

    recent: list[tuple[str, float, str]] = field(default_factory=list)
    cart: set[str] = field(default_factory=set)
    bought: set[str] = field(default_factory=set)
    last_ts: float = 0.0  # event time of its newest event
    touched: float = 0.0  # wall-clock time it was last updated

    def items(self) -> list[str]:
        """Distinct recent items, newest last."""
        seen: dict[str, None] = {}
        for item, _, _ in self.recent:
            seen.pop(item, None)
            seen[item] = None
        return list(seen)


class SessionTracker:
    """The last ``max_items`` interactions of at most ``max_sessions`` sessions (least recently
    active dropped first); a session idle for ``ttl_s`` is over (see the module docstring).

    >>> wall = [0.0]
    >>> tracker = SessionTracker(max_items=2, ttl_s=60, clock=lambda: wall[0])
    >>> for n, item in enumerate("abc"):
    ...     _ = tracker.add("s1", item, float(n), "view")
    >>> tracker.get("s1").items()
    ['b', 'c']
    >>> wall[0] = 100.0; tracker.get("s1") is None
    True
    """

    def __init__(
        self,
        *,
        max_items: int = 20,
        ttl_s: float = 1800.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, LiveSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session_id: str, item: str, ts: float, action: str) -> LiveSession:
        """Record an interaction; returns the session as it was *before* it (for pairing)."""
        session = self._sessions.pop(session_id, None)
        if session is None or ts - session.last_ts > self.ttl_s:
            session = LiveSession()
        before = LiveSession(list(session.recent), set(session.cart), set(session.bought))
        if action == "remove_from_cart":
            session.cart.discard(item)
        else:
            session.recent = [*session.recent, (item, ts, action)][-self.max_items :]
            if action == "add_to_cart":
                session.cart.add(item)
            elif action == "purchase":
                session.bought.add(item)
                session.cart.discard(item)
        session.last_ts = max(session.last_ts, ts)
        session.touched = self.clock()
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return before

    def get(self, session_id: str) -> LiveSession | None:
        """The session, unless it has not been updated for ``ttl_s`` (wall clock)."""
        session = self._sessions.get(session_id)
        if session is None or self.clock() - session.touched > self.ttl_s:
            return None
        return session

    def forget_item(self, item: str) -> None:
        for session in self._sessions.values():
            session.recent = [r for r in session.recent if r[0] != item]

    def state_dict(self) -> dict[str, Any]:
        return {
            "sessions": [
                [
                    sid,
                    [list(r) for r in s.recent],
                    sorted(s.cart),
                    sorted(s.bought),
                    s.last_ts,
                    s.touched,
                ]
                for sid, s in self._sessions.items()
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._sessions = OrderedDict(
            (
                sid,
                LiveSession(
                    [(str(i), float(t), str(a)) for i, t, a in recent],
                    set(cart),
                    set(bought),
                    float(last),
                    float(touched),
                ),
            )
            for sid, recent, cart, bought, last, touched in state["sessions"]
        )

    def reset_state(self) -> None:
        self._sessions.clear()
