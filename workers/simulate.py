"""A deterministic shop simulator: a catalog and a stream of realistic sessions.

Used by the demo, the tests and the benchmarks. Everything comes from one ``random.Random``
seed, so a run can be reproduced exactly. Sessions follow a position-based click model: a
shopper examines position ``p`` with probability ``1 / (p + 1) ** 0.7`` and clicks an examined
item with a probability that grows with its (hidden) relevance to the query, so clicks are
biased towards relevant items, as in real logs. The hidden grades are kept in
:attr:`Session.relevance` as ground truth; they never travel in events.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ecrec_stream.contracts.events import utc_now

# A small grocery and household vocabulary: department -> aisle -> product nouns.
_TAXONOMY: dict[str, dict[str, list[str]]] = {
    "dairy eggs": {
        "milk": ["whole milk", "oat milk", "almond milk", "skim milk", "lactose free milk"],
        "yogurt": ["greek yogurt", "vanilla yogurt", "strawberry yogurt", "plain yogurt"],
        "cheese": ["cheddar cheese", "mozzarella", "parmesan", "swiss cheese slices"],
        "eggs": ["large brown eggs", "free range eggs", "egg whites"],
    },
    "produce": {
        "fresh fruits": ["bananas", "gala apples", "blueberries", "strawberries", "avocados"],
        "fresh vegetables": ["baby spinach", "broccoli crowns", "carrots", "red onions"],
        "fresh herbs": ["basil", "cilantro", "flat leaf parsley", "mint"],
    },
    "snacks": {
        "chips pretzels": ["sea salt potato chips", "tortilla chips", "pretzel twists"],
        "cookies cakes": ["chocolate chip cookies", "oatmeal cookies", "shortbread"],
        "nuts seeds": ["roasted almonds", "cashews", "trail mix", "pumpkin seeds"],
    },
    "beverages": {
        "coffee": ["ground coffee", "whole bean coffee", "cold brew coffee", "espresso pods"],
        "tea": ["green tea", "chamomile tea", "earl grey tea", "chai tea latte mix"],
        "juice": ["orange juice", "apple juice", "cranberry juice cocktail"],
        "water seltzer": ["sparkling water", "lime seltzer", "spring water"],
    },
    "pantry": {
        "pasta": ["spaghetti", "penne rigate", "whole wheat fusilli", "lasagna noodles"],
        "sauces": ["marinara sauce", "pesto", "alfredo sauce", "hot sauce"],
        "baking": ["all purpose flour", "baking soda", "brown sugar", "vanilla extract"],
        "cereal": ["granola", "corn flakes", "steel cut oats", "honey nut cereal"],
    },
    "household": {
        "cleaning": ["dish soap", "all purpose cleaner", "laundry detergent", "sponges"],
        "paper goods": ["paper towels", "toilet paper", "facial tissues"],
    },
    "personal care": {
        "hair care": ["shampoo", "conditioner", "dry shampoo"],
        "oral hygiene": ["whitening toothpaste", "mint floss", "electric toothbrush heads"],
        "skin care": ["moisturizing lotion", "sunscreen spf 50", "lip balm"],
    },
    "pets": {
        "dog food care": ["dry dog food", "dog treats", "puppy food"],
        "cat food care": ["wet cat food", "cat litter", "cat treats"],
    },
}
_BRANDS = [
    "Greenfield",
    "Oakridge",
    "Sunny Valley",
    "Blue Harbor",
    "Maple & Co",
    "Nordvik",
    "Casa Verde",
    "Pure Path",
    "Hearthstone",
    "Little Acre",
    "Urban Pantry",
    "Tidewater",
]
_MODIFIERS = [
    "organic",
    "family size",
    "low fat",
    "unsweetened",
    "original",
    "extra large",
    "gluten free",
    "value pack",
    "classic",
    "reduced sodium",
    "fair trade",
    "fresh",
]
_SIZES = ["8 oz", "12 oz", "16 oz", "32 oz", "1 lb", "2 lb", "1 gal", "6 ct", "12 ct", "500 ml"]

_POSITIVE = [
    "Love this {noun}, will buy again.",
    "Great {noun}, exactly as described.",
    "Best {noun} I have tried, my family loves it.",
    "Fresh and tasty {noun}, five stars.",
]
_NEUTRAL = [
    "The {noun} is okay, nothing special.",
    "Decent {noun} for the price.",
    "Average {noun}; packaging could be better.",
]
_NEGATIVE = [
    "The {noun} arrived damaged and tasted stale.",
    "Terrible {noun}, would not buy again.",
    "Disappointed with this {noun}, it broke after one use.",
    "Awful {noun}, nothing like the picture.",
]


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    title: str
    category_path: tuple[str, ...]
    brand: str
    price: float
    quality: float  # hidden: drives review ratings

    def upsert(self, event_id: str, ts: datetime, *, price: float | None = None) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "ts": ts.isoformat(),
            "op": "upsert",
            "item_id": self.item_id,
            "title": self.title,
            "category_path": list(self.category_path),
            "brand": self.brand,
            "price": self.price if price is None else price,
        }


def synthetic_catalog(n_items: int, seed: int = 7) -> list[CatalogItem]:
    """``n_items`` plausible grocery products with a two-level category path."""
    rng = random.Random(seed)
    leaves = [
        (d, a, noun)
        for d, aisles in _TAXONOMY.items()
        for a, nouns in aisles.items()
        for noun in nouns
    ]
    items = []
    for i in range(n_items):
        dept, aisle, noun = leaves[i % len(leaves)] if i < len(leaves) else rng.choice(leaves)
        brand = rng.choice(_BRANDS)
        modifier = rng.choice(_MODIFIERS)
        size = rng.choice(_SIZES)
        title = f"{brand} {modifier} {noun} {size}".replace("  ", " ")
        items.append(
            CatalogItem(
                item_id=f"sku-{i:06d}",
                title=title,
                category_path=(dept, aisle),
                brand=brand,
                price=round(rng.uniform(0.99, 24.99), 2),
                quality=rng.betavariate(4, 1.6),
            )
        )
    return items


def load_instacart_catalog(
    folder: Path, limit: int | None = None, seed: int = 7
) -> list[CatalogItem]:
    """Read ``products.csv``, ``aisles.csv`` and ``departments.csv`` (the Instacart layout)."""
    rng = random.Random(seed)
    with open(folder / "aisles.csv", newline="") as fh:
        aisles = {row["aisle_id"]: row["aisle"] for row in csv.DictReader(fh)}
    with open(folder / "departments.csv", newline="") as fh:
        depts = {row["department_id"]: row["department"] for row in csv.DictReader(fh)}
    items = []
    with open(folder / "products.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            items.append(
                CatalogItem(
                    item_id=f"ic-{row['product_id']}",
                    title=row["product_name"].strip()[:300],
                    category_path=(depts[row["department_id"]], aisles[row["aisle_id"]]),
                    brand="",
                    price=round(rng.uniform(0.99, 24.99), 2),
                    quality=rng.betavariate(4, 1.6),
                )
            )
            if limit is not None and len(items) >= limit:
                break
    return items


@dataclass(slots=True)
class Session:
    """One simulated shopping session: its events and the hidden ground truth."""

    session_id: str
    query: str
    target_item_id: str
    relevance: dict[str, int] = field(default_factory=dict)  # item_id -> grade 0..3
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # kind, key, doc


class ShopSimulator:
    """Generates sessions (search, clicks, reviews) and catalog changes over a catalog."""

    def __init__(
        self,
        catalog: list[CatalogItem],
        seed: int = 11,
        *,
        n_impressions: int = 10,
        position_bias: float = 0.7,
    ) -> None:
        if not catalog:
            raise ValueError("the catalog is empty")
        self.catalog = catalog
        self.rng = random.Random(seed)
        self.n_impressions = min(n_impressions, len(catalog))
        self.position_bias = position_bias
        self._by_leaf: dict[tuple[str, ...], list[CatalogItem]] = {}
        for item in catalog:
            self._by_leaf.setdefault(item.category_path, []).append(item)
        self._seq = 0
        self._targets = catalog
        self._attract_scale = 1.0
        self._quality_shift = 0.0
        self.shifted = False

    def shift(self, share: float = 0.25) -> list[str]:
        """A drift scenario from now on: shoppers look for items of other top-level categories
        (the smallest ones, covering about ``share`` of the catalog), click less (attraction
        x 0.4) and review worse (hidden quality - 0.5). Returns the categories now searched."""
        by_top: dict[str, list[CatalogItem]] = {}
        for item in self.catalog:
            by_top.setdefault(item.category_path[0] if item.category_path else "", []).append(item)
        chosen: list[str] = []
        targets: list[CatalogItem] = []
        for top, items in sorted(by_top.items(), key=lambda kv: len(kv[1])):
            if len(targets) >= share * len(self.catalog) and targets:
                break
            chosen.append(top)
            targets.extend(items)
        self._targets = targets
        self._attract_scale = 0.4
        self._quality_shift = -0.5
        self.shifted = True
        return chosen

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:09d}"

    def catalog_events(self, ts: datetime | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """One upsert per catalog item."""
        ts = ts or utc_now()
        return [("item", it.item_id, it.upsert(self._next_id("item"), ts)) for it in self.catalog]

    def query_for(self, item: CatalogItem) -> str:
        """A shopper's query for ``item``: a few words of its title, sometimes with the brand."""
        words = [w for w in item.title.lower().split() if w.isalpha() and len(w) > 2]
        brand_words = set(item.brand.lower().split())
        content = [w for w in words if w not in brand_words] or words
        k = min(len(content), self.rng.choice([1, 2, 2, 3]))
        query = " ".join(content[-k:]) if content else item.title.lower()
        if item.brand and self.rng.random() < 0.2:
            query = f"{item.brand.lower()} {query}"
        return query

    def grade(self, query: str, target: CatalogItem, item: CatalogItem) -> int:
        """Hidden relevance: 3 the target, 2 same leaf sharing a query word, 1 same leaf."""
        if item.item_id == target.item_id:
            return 3
        if item.category_path == target.category_path:
            shared = set(query.split()) & set(item.title.lower().split())
            return 2 if shared else 1
        return 0

    def _search_event(
        self, sess: Session, search_id: str, shown: list[CatalogItem], ts: datetime
    ) -> tuple[str, str, dict[str, Any]]:
        return (
            "search",
            sess.session_id,
            {
                "event_id": self._next_id("ev"),
                "ts": ts.isoformat(),
                "search_id": search_id,
                "session_id": sess.session_id,
                "query": sess.query,
                "impressions": [i.item_id for i in shown],
            },
        )

    def session(self, ts: datetime | None = None) -> Session:
        """One search with ranked impressions, clicks by the click model, maybe a review."""
        rng = self.rng
        ts = ts or utc_now()
        target = rng.choice(self._targets)
        query = self.query_for(target)
        same_leaf = [i for i in self._by_leaf[target.category_path] if i.item_id != target.item_id]
        others = rng.sample(self.catalog, min(len(self.catalog), self.n_impressions * 2))
        pool = {i.item_id: i for i in [target, *same_leaf[: self.n_impressions], *others]}
        ranked = sorted(
            pool.values(), key=lambda i: -(self.grade(query, target, i) + rng.gauss(0, 1.2))
        )
        shown = ranked[: self.n_impressions]
        sess = Session(self._next_id("sess"), query, target.item_id)
        search_id = self._next_id("search")
        sess.relevance = {i.item_id: self.grade(query, target, i) for i in shown}
        sess.events.append(self._search_event(sess, search_id, shown, ts))
        t = ts
        for pos, item in enumerate(shown):
            examine = 1.0 / (pos + 1) ** self.position_bias
            attract = (0.05, 0.2, 0.5, 0.85)[sess.relevance[item.item_id]] * self._attract_scale
            if rng.random() >= examine * attract:
                continue
            grade = sess.relevance[item.item_id]
            t = t + timedelta(seconds=rng.uniform(1, 20))
            action = "click"
            if rng.random() < 0.15 * grade:
                action = "purchase" if rng.random() < 0.5 else "add_to_cart"
            sess.events.append(
                (
                    "click",
                    sess.session_id,
                    {
                        "event_id": self._next_id("ev"),
                        "ts": t.isoformat(),
                        "session_id": sess.session_id,
                        "search_id": search_id,
                        "item_id": item.item_id,
                        "position": pos,
                        "action": action,
                        "dwell_ms": int(rng.lognormvariate(8 + 0.6 * grade, 0.6)),
                    },
                )
            )
            if action == "purchase" and rng.random() < 0.5:
                sess.events.append(("review", item.item_id, self.review(item, t)))
        return sess

    def review(self, item: CatalogItem, ts: datetime) -> dict[str, Any]:
        """A review whose rating follows the item's hidden quality and whose text fits it."""
        rng = self.rng
        quality = item.quality + self._quality_shift
        rating = max(1, min(5, round(1 + 4 * quality + rng.gauss(0, 0.8))))
        templates = _POSITIVE if rating >= 4 else _NEGATIVE if rating <= 2 else _NEUTRAL
        noun = item.title.split()[-3] if len(item.title.split()) >= 3 else item.title
        return {
            "event_id": self._next_id("ev"),
            "ts": ts.isoformat(),
            "item_id": item.item_id,
            "rating": rating,
            "title": "",
            "text": rng.choice(templates).format(noun=noun),
        }

    def catalog_change(self, ts: datetime | None = None) -> tuple[str, str, dict[str, Any]]:
        """A price change (90%) or a delete (10%) of a random item."""
        ts = ts or utc_now()
        item = self.rng.choice(self.catalog)
        if self.rng.random() < 0.1:
            doc = {
                "event_id": self._next_id("item"),
                "ts": ts.isoformat(),
                "op": "delete",
                "item_id": item.item_id,
            }
        else:
            doc = item.upsert(
                self._next_id("item"), ts, price=round(item.price * self.rng.uniform(0.8, 1.2), 2)
            )
        return ("item", item.item_id, doc)

    def malformed(self) -> tuple[str, str, bytes]:
        """A bad record of a random kind: broken JSON, wrong types, missing fields, oversize."""
        rng = self.rng
        kind = rng.choice(["item", "search", "click", "review"])
        choice = rng.randrange(4)
        ev = self._next_id("bad")
        if choice == 0:
            return kind, ev, b'{"event_id": "' + ev.encode() + b'", "ts": '
        if choice == 1:
            bad: dict[str, Any] = {
                "event_id": ev,
                "ts": utc_now().isoformat(),
                "item_id": "x",
                "rating": "five",
                "op": 3,
                "session_id": 7,
            }
            return kind, ev, json.dumps(bad).encode()
        if choice == 2:
            return kind, ev, json.dumps({"event_id": ev}).encode()
        return kind, ev, b'{"padding": "' + b"x" * 70_000 + b'"}'

    def bot_session(self, ts: datetime | None = None) -> Session:
        """An automated session: one search, then every result clicked within seconds."""
        ts = ts or utc_now()
        target = self.rng.choice(self.catalog)
        sess = Session(self._next_id("bot"), self.query_for(target), target.item_id)
        search_id = self._next_id("search")
        shown = self.rng.sample(self.catalog, self.n_impressions)
        sess.events.append(self._search_event(sess, search_id, shown, ts))
        for pos, item in enumerate(shown):
            sess.events.append(
                (
                    "click",
                    sess.session_id,
                    {
                        "event_id": self._next_id("ev"),
                        "ts": (ts + timedelta(milliseconds=300 * pos)).isoformat(),
                        "session_id": sess.session_id,
                        "search_id": search_id,
                        "item_id": item.item_id,
                        "position": pos,
                        "action": "click",
                        "dwell_ms": self.rng.randint(40, 250),
                    },
                )
            )
        return sess

    def stream(
        self,
        malformed_rate: float = 0.02,
        change_rate: float = 0.05,
        bot_rate: float = 0.01,
        *,
        in_event_time: bool = False,
    ) -> Iterator[tuple[str, str, bytes]]:
        """An endless stream of (kind, key, payload) records: sessions, catalog changes,
        malformed records and a few bot sessions.

        A session is generated whole, its clicks and reviews seconds to a minute after its
        search. By default they are sent at once (ahead of their event time, like a replayed
        log); ``in_event_time`` holds each record until the wall clock reaches its event
        time, as live traffic arrives (the demo uses it, so event-time merges downstream see
        every input move forward together).
        """
        held: list[tuple[datetime, int, tuple[str, str, bytes]]] = []
        order = itertools.count()
        for kind, key, doc in self._records(malformed_rate, change_rate, bot_rate):
            record = (kind, key, doc if isinstance(doc, bytes) else json.dumps(doc).encode())
            if not in_event_time or isinstance(doc, bytes):
                yield record
                continue
            now = utc_now()
            ts = datetime.fromisoformat(doc["ts"])
            if ts <= now:
                yield record
            else:
                heapq.heappush(held, (ts, next(order), record))
            while held and held[0][0] <= now:
                yield heapq.heappop(held)[2]

    def _records(
        self, malformed_rate: float, change_rate: float, bot_rate: float
    ) -> Iterator[tuple[str, str, dict[str, Any] | bytes]]:
        while True:
            roll = self.rng.random()
            if roll < malformed_rate:
                yield self.malformed()
            elif roll < malformed_rate + bot_rate:
                yield from self.bot_session().events
            elif roll < malformed_rate + bot_rate + change_rate:
                yield self.catalog_change()
            else:
                yield from self.session().events
