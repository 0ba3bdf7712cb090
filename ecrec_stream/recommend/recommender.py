"""The recommendation stage: live behaviour, content neighbours and popularity, fused.

``observe_many(clicks)`` folds views, clicks, cart changes and purchases into three decayed,
bounded item-to-item relations (:class:`~ecrec_stream.recommend.covisit.CoVisitation`):

* ``covisit``: items interacted with in the same session (symmetric; "people also viewed"),
* ``follows``: ``b`` came ``g`` steps after ``a`` in a session, weighted ``1/g`` (directional;
  the sequential-rules idea that the session-recommendation literature finds hard to beat),
* ``bought``: both added to a cart or bought in the same session ("bought together"),

each weighted by what the shopper did (a view or click 1, an add-to-cart 3, a purchase 5; a pair
gets the geometric mean of its two). It also keeps each live session's recent items and cart
(:class:`~ecrec_stream.recommend.sessions.SessionTracker`) and decayed popularity overall and
per category, and the category flow (:class:`~ecrec_stream.recommend.flow.CategoryFlow`:
which leaf category a session moves to next, and what is taken there), which reaches items
that were never seen together with the anchors.

``recommend(item_ids, k)`` scores candidates from the anchors (a session's items, newest
weighted most: ``rank ** -recency`` from the newest) in each source, brings each source to [0,
1] (behaviour saturating, ``raw / (raw + shrink)``; popularity by the most popular; content is a
cosine) and fuses them with weights (:class:`~ecrec_stream.config.RecommendSettings`), so an
item never clicked is recommendable by its content the moment it is indexed, and popularity
fills in where behaviour and content have nothing. Every result says which source found it and
why.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ecrec_stream.config import RecommendSettings
from ecrec_stream.contracts.events import ClickEvent
from ecrec_stream.ingest.quality import BoundedSeen
from ecrec_stream.recommend.covisit import CoVisitation
from ecrec_stream.recommend.flow import CategoryFlow
from ecrec_stream.recommend.popularity import DecayedPopularity
from ecrec_stream.recommend.sessions import SessionTracker

ACTION_WEIGHT = {"view": 1.0, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
CART_ACTIONS = {"add_to_cart", "purchase"}
Kind = Literal["next", "similar", "bought_together"]
Source = Literal["behaviour", "flow", "content", "popularity"]
SOURCES: tuple[Source, ...] = ("behaviour", "flow", "content", "popularity")
# content neighbours: (anchor item ids, how many) -> [(item id, cosine similarity)]
ContentNeighbours = Callable[[Sequence[str], int], list[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item: fused score, the source that contributed most, a reason a person
    can read, and each source's normalised score (``None``: that source did not find it)."""

    item_id: str
    score: float
    source: Source
    reason: str
    behaviour: float | None
    flow: float | None
    content: float | None
    popularity: float | None


@dataclass
class ObserveStep:
    """What one ``observe_many`` call did."""

    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class _Candidate:
    scores: dict[str, float] = field(default_factory=dict)
    anchor: dict[str, tuple[str, float]] = field(default_factory=dict)  # source -> (why, raw)


class Recommender:
    """Item-to-item and next-item recommendations from the click stream.

    ``category_of(item)`` gives an item's top-level category and ``leaf_of(item)`` its leaf
    category (the category flow's unit; ``None`` if unknown); ``available(item)``
    says whether it may be recommended (in the catalog, not deleted; default: anything not
    forgotten); ``content`` finds content neighbours (the live FAISS index), if any.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> rec = Recommender(RecommendSettings())
    >>> clicks = [ClickEvent(event_id=f"e{n}", ts=t, session_id=f"s{n % 3}", item_id=item,
    ...                      action="add_to_cart") for n, item in enumerate("aabbcc")]
    >>> clicks.append(ClickEvent(event_id="e9", ts=t, session_id="s9", item_id="d", action="view"))
    >>> rec.observe_many(clicks).counts["pairs"]
    3
    >>> [(r.item_id, r.source) for r in rec.recommend(["a"], 3, kind="bought_together")]
    [('b', 'behaviour'), ('c', 'behaviour'), ('d', 'popularity')]
    """

    def __init__(
        self,
        settings: RecommendSettings,
        *,
        category_of: Callable[[str], str | None] = lambda item: None,
        leaf_of: Callable[[str], str | None] = lambda item: None,
        available: Callable[[str], bool] | None = None,
        content: ContentNeighbours | None = None,
    ) -> None:
        self.settings = settings
        self.category_of = category_of
        self.leaf_of = leaf_of
        self._available = available
        self.content = content
        n, half_life = settings.neighbours, settings.half_life_s
        self.covisit = CoVisitation(neighbours=n, half_life_s=half_life)
        self.follows = CoVisitation(neighbours=n, half_life_s=half_life)
        self.bought = CoVisitation(neighbours=n, half_life_s=half_life)
        self.flow = CategoryFlow(
            decay=settings.flow_decay, moves=n, items=settings.popular_top, half_life_s=half_life
        )
        self.popularity = DecayedPopularity(
            top=settings.popular_top, half_life_s=settings.half_life_s
        )
        self.sessions = SessionTracker(
            max_items=settings.session_items,
            ttl_s=settings.session_ttl_s,
            max_sessions=settings.max_sessions,
        )
        self.seen = BoundedSeen(settings.dedupe_capacity)
        self.deleted: set[str] = set()

    # -- learning ------------------------------------------------------------------------------
    def observe_many(self, clicks: Iterable[ClickEvent]) -> ObserveStep:
        """Fold interactions into the relations, sessions and popularity (each event once)."""
        step = ObserveStep()
        for click in clicks:
            if not self.seen.add(click.event_id):
                step.counts["duplicates"] += 1
                continue
            ts = click.ts.timestamp()
            before = self.sessions.add(click.session_id, click.item_id, ts, click.action)
            weight = ACTION_WEIGHT.get(click.action, 0.0)
            step.counts["events"] += 1
            if weight == 0.0:
                continue
            self.deleted.discard(click.item_id)  # an interaction means it is there again
            self.popularity.add(click.item_id, self.category_of(click.item_id), weight, ts)
            in_cart = click.action in CART_ACTIONS
            distinct: dict[str, str] = {}  # previous item -> its strongest action, newest first
            for item, _, action in reversed(before.recent):
                if item != click.item_id:
                    best = distinct.get(item)
                    if best is None or ACTION_WEIGHT[action] > ACTION_WEIGHT[best]:
                        distinct[item] = action
            leaf = self.leaf_of(click.item_id)
            if leaf is not None:
                previous = [c for c in map(self.leaf_of, distinct) if c is not None]
                self.flow.observe(previous, leaf, click.item_id, weight, ts)
            for gap, (item, action) in enumerate(distinct.items(), start=1):
                pair = math.sqrt(weight * ACTION_WEIGHT[action])
                self.covisit.add_pair(item, click.item_id, pair, ts)
                self.follows.add(item, click.item_id, pair / gap, ts)
                if in_cart and action in CART_ACTIONS:
                    self.bought.add_pair(item, click.item_id, pair, ts)
                step.counts["pairs"] += 1
        return step

    def forget_items(self, item_ids: Iterable[str]) -> None:
        """Deleted items: never recommended again, gone from every relation and session."""
        for item in item_ids:
            self.deleted.add(item)
            for relation in (self.covisit, self.follows, self.bought, self.flow):
                relation.forget(item)
            self.popularity.forget(item)
            self.sessions.forget_item(item)

    def available(self, item: str) -> bool:
        if item in self.deleted:
            return False
        return self._available(item) if self._available is not None else True

    # -- recommending --------------------------------------------------------------------------
    def for_session(self, session_id: str, k: int, **options: Any) -> list[Recommendation] | None:
        """Next items for a live session (``None``: no such session, or it expired); what is
        in its cart or was bought is never offered."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        exclude = set(options.pop("exclude", ())) | session.cart | session.bought
        return self.recommend(session.items(), k, kind="next", exclude=exclude, **options)

    def recommend(
        self,
        item_ids: Sequence[str],
        k: int,
        *,
        kind: Kind = "next",
        exclude: Iterable[str] = (),
        category: str | None = None,
        category_cap: int | None = None,
    ) -> list[Recommendation]:
        """``k`` items for the anchors ``item_ids`` (newest last), best first."""
        cfg = self.settings
        anchors = [a for a in dict.fromkeys(item_ids) if a not in self.deleted]
        banned = set(anchors) | set(exclude)
        pool = max(k * 3, cfg.candidates)
        candidates: dict[str, _Candidate] = defaultdict(_Candidate)
        self._behaviour(anchors, kind, pool, candidates)
        if kind == "next" and anchors and cfg.flow_weight > 0:
            leaves = [c for c in map(self.leaf_of, anchors) if c is not None]
            for item, score, (before, after, share) in self.flow.scores(leaves, pool):
                cand = candidates[item]
                cand.scores["flow_raw"] = score
                cand.anchor["flow"] = (f"{before} to {after}", share)
        if self.content is not None and anchors and cfg.content_weight > 0:
            for item, similarity in self.content(anchors, pool):
                if similarity > 0:
                    cand = candidates[item]
                    cand.scores["content"] = similarity
                    cand.anchor["content"] = (", ".join(anchors[-3:]), similarity)
        last_category = self.category_of(anchors[-1]) if anchors else None
        for scope in (category or last_category, None):
            for item, weight in self.popularity.top(scope, pool):
                cand = candidates[item]
                if "popularity_raw" not in cand.scores:  # the narrower scope first
                    cand.scores["popularity_raw"] = weight
                    cand.anchor["popularity"] = (scope or "the whole shop", weight)
        for cand in candidates.values():
            if "behaviour_raw" in cand.scores:
                raw = cand.scores.pop("behaviour_raw")
                cand.scores["behaviour"] = raw / (raw + cfg.behaviour_shrink)
        _normalise(candidates, "popularity")
        _normalise(candidates, "flow")
        weights: dict[Source, float] = {
            "behaviour": cfg.behaviour_weight,
            "flow": cfg.flow_weight,
            "content": cfg.content_weight,
            "popularity": cfg.popularity_weight,
        }
        scored = []
        for item, cand in candidates.items():
            if item in banned or not self.available(item):
                continue
            if category is not None and self.category_of(item) != category:
                continue
            parts: dict[Source, float] = {
                s: weights[s] * cand.scores[s] for s in SOURCES if s in cand.scores
            }
            if not parts:
                continue
            source = max(parts, key=lambda s: parts[s])
            scored.append((sum(parts.values()), item, source, cand))
        scored.sort(key=lambda row: (-row[0], row[1]))
        picked: list[tuple[float, str, Source, _Candidate]] = []
        per_category: Counter[str | None] = Counter()

        def take(rows: Iterable[tuple[float, str, Source, _Candidate]], upto: int) -> None:
            for row in rows:
                if len(picked) >= upto:
                    return
                if any(row[1] == p[1] for p in picked):
                    continue
                if category_cap is not None:
                    cat = self.category_of(row[1])
                    if per_category[cat] >= category_cap:
                        continue
                    per_category[cat] += 1
                picked.append(row)

        # The last cold_slots places go to the best items only content knows of (never
        # interacted with, as far as this request's sources see), unless the fusion already
        # ranked such items higher: a new item gets shown, and so gets clicks to learn from.
        reserve = min(cfg.cold_slots, k - 1) if kind != "bought_together" else 0
        take(scored, k - reserve)
        cold = [row for row in scored if row[3].scores.keys() == {"content"}]
        served = sum(row[3].scores.keys() == {"content"} for row in picked)
        take(cold, len(picked) + max(0, reserve - served))
        take(scored, k)
        return [
            Recommendation(
                item_id=item,
                score=round(score, 6),
                source=source,
                reason=_reason(source, kind, cand.anchor[source]),
                behaviour=_rounded(cand.scores.get("behaviour")),
                flow=_rounded(cand.scores.get("flow")),
                content=_rounded(cand.scores.get("content")),
                popularity=_rounded(cand.scores.get("popularity")),
            )
            for score, item, source, cand in picked
        ]

    def _behaviour(
        self, anchors: list[str], kind: Kind, pool: int, candidates: dict[str, _Candidate]
    ) -> None:
        cfg = self.settings
        relations: list[tuple[CoVisitation, float]]
        if kind == "next":
            relations = [(self.follows, 1.0), (self.covisit, cfg.covisit_mix)]
        elif kind == "similar":
            relations = [(self.covisit, 1.0)]
        else:
            relations = [(self.bought, 1.0)]
        for rank, anchor in enumerate(reversed(anchors), start=1):
            recency = rank**-cfg.recency
            for relation, mix in relations:
                for item, weight in relation.neighbours(anchor, pool):
                    cand = candidates[item]
                    contribution = recency * mix * weight
                    cand.scores["behaviour_raw"] = (
                        cand.scores.get("behaviour_raw", 0.0) + contribution
                    )
                    best = cand.anchor.get("behaviour")
                    if best is None or contribution > best[1]:
                        cand.anchor["behaviour"] = (anchor, weight)

    def stats(self) -> dict[str, int]:
        """What the recommender holds: items with links, links, updates and pruned links over
        the three relations, categories and moves of the category flow, live sessions, deleted
        items."""
        relations = (self.covisit, self.follows, self.bought)
        return {
            **{f"flow_{key}": value for key, value in self.flow.stats().items()},
            "items_with_links": len(self.covisit),
            "links": sum(r.entries() for r in relations),
            "updates": sum(r.updates for r in relations),
            "pruned": sum(r.pruned for r in relations),
            "live_sessions": len(self.sessions),
            "deleted": len(self.deleted),
        }

    # -- state protocol (ecrec_stream.state) ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "covisit": self.covisit.state_dict(),
            "follows": self.follows.state_dict(),
            "bought": self.bought.state_dict(),
            "flow": self.flow.state_dict(),
            "popularity": self.popularity.state_dict(),
            "sessions": self.sessions.state_dict(),
            "seen": self.seen.state_dict(),
            "deleted": sorted(self.deleted),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.covisit.load_state(state["covisit"])
        self.follows.load_state(state["follows"])
        self.bought.load_state(state["bought"])
        self.flow.load_state(state["flow"])
        self.popularity.load_state(state["popularity"])
        self.sessions.load_state(state["sessions"])
        self.seen.load_state(state["seen"])
        self.deleted = set(state["deleted"])

    def reset_state(self) -> None:
        parts = (self.covisit, self.follows, self.bought, self.flow, self.popularity, self.sessions)
        for part in parts:
            part.reset_state()
        self.seen.reset_state()
        self.deleted = set()


def _normalise(candidates: dict[str, _Candidate], source: str) -> None:
    """Scale a source's raw scores to [0, 1] by its best candidate."""
    key = f"{source}_raw"
    top = max((c.scores[key] for c in candidates.values() if key in c.scores), default=0.0)
    for cand in candidates.values():
        if key in cand.scores:
            value = cand.scores.pop(key)
            if top > 0:
                cand.scores[source] = value / top


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _reason(source: Source, kind: Kind, anchor: tuple[str, float]) -> str:
    what, weight = anchor
    if source == "behaviour":
        relation = {
            "next": "came after or with",
            "similar": "viewed with",
            "bought_together": "bought with",
        }[kind]
        return f"{relation} {what} (decayed weight {weight:.2f})"
    if source == "flow":
        return f"often taken next: from {what} ({weight:.0%} of moves), popular there"
    if source == "content":
        return f"content neighbour of {what} (cosine {weight:.3f})"
    return f"popular in {what} (decayed weight {weight:.2f})"
