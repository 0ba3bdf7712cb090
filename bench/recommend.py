"""Recommendation quality on real baskets and real view sessions, and its cost.

``python -m bench.recommend [--only quality|cost] [--cost-items 50000,1000000]``

Quality, through the code an index replica runs (:class:`ecrec_stream.recommend.Recommender`
fed :class:`ClickEvent` objects, content neighbours from :meth:`LiveItemIndex.neighbours` over
the packaged MiniLM's vectors):

* ``instacart_orders``: orders split by a hash of their id (80% train, 20% test); the training
  baskets are replayed as add-to-cart events (session = order, in ``add_to_cart_order``); for
  each test basket and position, the products already in the cart are the anchors (as
  ``POST /recommend`` with those ids) and the next product is the target.
* ``diginetica_sessions``: sessions of the earlier days (last view before 2016-05-03) are
  replayed as views in time order; each later session's next view of an item it has not viewed
  yet is the target (consecutive repeats dropped first).

HR@10, HR@20, MRR@20 overall and for cold targets (never in a training session), with a 95%
bootstrap interval over test sessions, against popularity, plain item-to-item co-occurrence
and content-only neighbours computed on the same training data in the same run. The fusion
weights are chosen on a dev split of the training sessions (15%, by hash) of both data sets,
then the model is refitted on all training sessions.

Cost: update cost per click event, ``recommend`` latency p50/p99 at 50k and 1M items (random
384-d unit vectors in a flat FAISS index, a Zipf click stream), and memory per item.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import random
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from bench.common import SHARED_DATA, cached_encoder, console, percentile, report
from ecrec_stream.config import EmbeddingSettings, IndexSettings, RecommendSettings
from ecrec_stream.contracts.events import ClickEvent, ItemEvent
from ecrec_stream.recommend import Recommender

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
KS = (10, 20)


def _bucket(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16**8


@dataclass
class DataSet:
    name: str
    train: list[list[str]]  # sessions of item ids, in order
    test: list[list[str]]
    action: str
    titles: dict[str, str]  # item -> title (empty: no content)
    categories: dict[str, str]  # item -> top-level category
    leaves: dict[str, str]  # item -> leaf category path (the category flow's unit)


def instacart() -> DataSet:
    baskets: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(SHARED_DATA / "instacart_orders" / "order_items.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            baskets[row["order_id"]].append(
                (int(row["add_to_cart_order"]), f"ic-{row['product_id']}")
            )
    ordered = {
        o: [i for _, i in sorted(rows)]
        for o, rows in sorted(baskets.items(), key=lambda kv: int(kv[0]))
    }
    train = [b for o, b in ordered.items() if _bucket(o) < 0.8]
    test = [b for o, b in ordered.items() if _bucket(o) >= 0.8]
    from workers.simulate import load_instacart_catalog

    catalog = load_instacart_catalog(SHARED_DATA / "instacart_catalog")
    titles = {c.item_id: c.title for c in catalog}
    categories = {c.item_id: c.category_path[0] for c in catalog}
    leaves = {c.item_id: " > ".join(c.category_path) for c in catalog}
    return DataSet("instacart_orders", train, test, "add_to_cart", titles, categories, leaves)


def diginetica(cut: str = "2016-05-03") -> DataSet:
    views: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    with open(SHARED_DATA / "diginetica_sessions" / "item_views.csv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            views[row["session_id"]].append(
                (row["eventdate"], int(row["timeframe"]), f"dg-{row['item_id']}")
            )
    train, test = [], []
    for rows in sorted(views.values(), key=lambda r: (min(r)[0], min(r)[1])):
        rows.sort()
        items = [i for i, _ in itertools.groupby(i for _, _, i in rows)]  # consecutive repeats
        (test if max(d for d, _, _ in rows) >= cut else train).append(items)
    return DataSet("diginetica_sessions", train, test, "view", {}, {}, {})


def clicks_of(sessions: list[list[str]], action: str, prefix: str) -> list[ClickEvent]:
    """Training sessions as click events, one second apart, sessions in order."""
    out = []
    t = T0
    for s, items in enumerate(sessions):
        for n, item in enumerate(items):
            t += timedelta(seconds=1)
            out.append(
                ClickEvent(
                    event_id=f"{prefix}-{s}-{n}",
                    ts=t,
                    session_id=f"{prefix}-{s}",
                    item_id=item,
                    action=action,  # type: ignore[arg-type]
                )
            )
        # sessions are told apart by their ids; event time runs on one second a click, so the
        # decay (a half-life of days) does not weigh early training sessions down
    return out


Method = Callable[[list[str], int], list[str]]


def evaluate(method: Method, sessions: list[list[str]], seen: set[str]) -> dict[str, Any]:
    """Per test session: hits at 10 and 20, reciprocal rank at 20, for every target and for
    cold ones (never in training)."""
    per_session = []
    for items in sessions:
        rows = []
        for p in range(1, len(items)):
            anchors, target = items[:p], items[p]
            if target in anchors:
                continue
            ranked = method(anchors, 20)
            rank = ranked.index(target) + 1 if target in ranked else 0
            rows.append((rank, target not in seen))
        if rows:
            per_session.append(rows)
    return summarise(per_session)


def summarise(per_session: list[list[tuple[int, bool]]], seed: int = 0) -> dict[str, Any]:
    def metrics(groups: list[list[tuple[int, bool]]], cold: bool) -> dict[str, float]:
        ranks = [r for rows in groups for r, c in rows if c or not cold]
        n = len(ranks)
        if not n:
            return {"n": 0, "hr@10": float("nan"), "hr@20": float("nan"), "mrr@20": float("nan")}
        return {
            "n": n,
            "hr@10": sum(0 < r <= 10 for r in ranks) / n,
            "hr@20": sum(0 < r <= 20 for r in ranks) / n,
            "mrr@20": sum(1 / r for r in ranks if r) / n,
        }

    rng = random.Random(seed)
    boots = []
    for _ in range(300):
        sample = [per_session[rng.randrange(len(per_session))] for _ in per_session]
        boots.append(metrics(sample, False)["hr@20"])
    return {
        "all": metrics(per_session, False),
        "cold": metrics(per_session, True),
        "hr@20_ci95": [percentile(boots, 2.5), percentile(boots, 97.5)],
        "ranks": per_session,
    }


def paired_difference(
    ours: list[list[tuple[int, bool]]], base: list[list[tuple[int, bool]]], seed: int = 1
) -> dict[str, Any]:
    """HR@20 and MRR@20 of ``ours`` minus ``base`` on the same targets, with a paired bootstrap
    95% interval over test sessions."""

    def gains(a: list[tuple[int, bool]], b: list[tuple[int, bool]]) -> tuple[float, float, int]:
        hit = sum((0 < x <= 20) - (0 < y <= 20) for (x, _), (y, _) in zip(a, b, strict=True))
        rr = sum(
            (1 / x if x else 0) - (1 / y if y else 0) for (x, _), (y, _) in zip(a, b, strict=True)
        )
        return hit, rr, len(a)

    per = [gains(a, b) for a, b in zip(ours, base, strict=True)]

    def mean(rows: list[tuple[float, float, int]]) -> tuple[float, float]:
        n = sum(r[2] for r in rows)
        return sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n

    rng = random.Random(seed)
    boots = [mean([per[rng.randrange(len(per))] for _ in per]) for _ in range(1000)]
    hr, mrr = mean(per)
    return {
        "hr@20": hr,
        "hr@20_ci95": [
            percentile([b[0] for b in boots], 2.5),
            percentile([b[0] for b in boots], 97.5),
        ],
        "mrr@20": mrr,
        "mrr@20_ci95": [
            percentile([b[1] for b in boots], 2.5),
            percentile([b[1] for b in boots], 97.5),
        ],
    }


def popularity_method(train: list[list[str]]) -> Method:
    counts = Counter(i for items in train for i in items)
    top = [i for i, _ in counts.most_common(200)]

    def method(anchors: list[str], k: int) -> list[str]:
        banned = set(anchors)
        return [i for i in top if i not in banned][:k]

    return method


def cooccurrence_method(train: list[list[str]]) -> Method:
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    for items in train:
        distinct = list(dict.fromkeys(items))
        for a, b in itertools.permutations(distinct, 2):
            pairs[a][b] += 1

    def method(anchors: list[str], k: int) -> list[str]:
        scores: Counter[str] = Counter()
        for a in anchors:
            scores.update(pairs.get(a, {}))
        banned = set(anchors)
        return [
            i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if i not in banned
        ][:k]

    return method


def fit_recommender(
    data: DataSet, train: list[list[str]], live: Any, settings: RecommendSettings
) -> Recommender:
    rec = Recommender(
        settings,
        category_of=data.categories.get,
        leaf_of=data.leaves.get,
        available=(lambda item: item in data.titles) if data.titles else None,
        content=live.neighbours if live is not None else None,
    )
    events = clicks_of(train, data.action, data.name)
    for start in range(0, len(events), 500):
        rec.observe_many(events[start : start + 500])
    return rec


def recommender_method(rec: Recommender) -> Method:
    def method(anchors: list[str], k: int) -> list[str]:
        return [r.item_id for r in rec.recommend(anchors, k, kind="next")]

    return method


def content_index(data: DataSet) -> Any:
    """A live index of the data set's titles embedded with the packaged MiniLM."""
    if not data.titles:
        return None
    from ecrec_stream.embedding import SentenceTransformerEncoder, item_text
    from ecrec_stream.index import LiveItemIndex

    events = [
        ItemEvent(
            event_id=f"i-{i}",
            ts=T0,
            op="upsert",
            item_id=i,
            title=t,
            category_path=[data.categories.get(i, "")] if data.categories.get(i) else [],
        )
        for i, t in data.titles.items()
    ]
    started = time.perf_counter()
    live = LiveItemIndex(
        cached_encoder(
            "recommend",
            SentenceTransformerEncoder(EmbeddingSettings()),
            [item_text(e) for e in events],
        ),
        IndexSettings(lexical=False, search_mode="dense"),
    )
    for start in range(0, len(events), 1024):
        live.apply_many(events[start : start + 1024])
    console.print(
        f"{data.name}: indexed {len(live):,} titles in {time.perf_counter() - started:.0f} s"
    )
    return live


class CachedContent:
    """Content neighbours memoised per anchor tuple (the grid asks the same ones again)."""

    def __init__(self, live: Any) -> None:
        self.live = live
        self.cache: dict[tuple[tuple[str, ...], int], list[tuple[str, float]]] = {}

    def neighbours(self, anchors: Sequence[str], k: int) -> list[tuple[str, float]]:
        key = (tuple(anchors), k)
        if key not in self.cache:
            self.cache[key] = self.live.neighbours(anchors, k)
        return self.cache[key]


GRID = {
    "flow_weight": [0.0, 0.5, 1.0, 2.0, 4.0],
    "content_weight": [0.0, 0.2, 0.5],
    "popularity_weight": [0.05, 0.2, 0.5],
    "covisit_mix": [0.5, 2.0],
    "recency": [0.0, 1.0],
}
DEV_SESSIONS = 150  # dev sessions per data set the grid is scored on


def cold_slots_on_dev(
    sets: list[DataSet], cached: dict[str, Any], weights: dict[str, float]
) -> dict[str, dict[str, dict[str, float]]]:
    """HR@20 overall and on cold targets of every dev session, for 0-3 cold slots."""
    out: dict[str, dict[str, dict[str, float]]] = {str(n): {} for n in range(4)}
    for data in sets:
        fit = [s for n, s in enumerate(data.train) if _bucket(f"{data.name}-{n}") < 0.85]
        dev = [s for n, s in enumerate(data.train) if _bucket(f"{data.name}-{n}") >= 0.85]
        seen = {i for s in fit for i in s}
        rec = fit_recommender(data, fit, cached[data.name], RecommendSettings())
        for n in range(4):
            rec.settings = RecommendSettings(**weights, cold_slots=n)
            result = evaluate(recommender_method(rec), [s for s in dev if len(s) > 1], seen)
            out[str(n)][data.name] = {
                "hr@20": result["all"]["hr@20"],
                "cold_hr@20": result["cold"]["hr@20"],
            }
    return out


def quality() -> dict[str, Any]:
    sets = [instacart(), diginetica()]
    lives = {d.name: content_index(d) for d in sets}
    cached = {n: CachedContent(live) if live is not None else None for n, live in lives.items()}
    # 1. choose the fusion on dev splits of the training sessions of both data sets
    dev_scores: dict[tuple[float, ...], list[float]] = defaultdict(list)
    for data in sets:
        fit = [s for n, s in enumerate(data.train) if _bucket(f"{data.name}-{n}") < 0.85]
        dev = [s for n, s in enumerate(data.train) if _bucket(f"{data.name}-{n}") >= 0.85]
        dev = [s for s in dev if len(s) > 1][:DEV_SESSIONS]
        seen = {i for s in fit for i in s}
        rec = fit_recommender(data, fit, cached[data.name], RecommendSettings())
        for combo in itertools.product(*GRID.values()):
            rec.settings = RecommendSettings(**dict(zip(GRID, combo, strict=True)), cold_slots=0)
            result = evaluate(recommender_method(rec), dev, seen)["all"]
            dev_scores[combo].append(result["hr@20"] + result["mrr@20"])
    best = max(dev_scores, key=lambda c: (sum(dev_scores[c]) / len(dev_scores[c]), c))
    weights = dict(zip(GRID, best, strict=True))
    console.print(f"fusion chosen on dev: {weights}")
    # 2. cold slots, on all dev sessions: the most whose dev HR@20 stays within 0.001 of none
    cold_dev = cold_slots_on_dev(sets, cached, weights)
    console.print(f"cold slots on dev: {cold_dev}")
    none = cold_dev["0"]
    slots = max(
        int(n)
        for n, rows in cold_dev.items()
        if all(none[d]["hr@20"] - r["hr@20"] <= 0.001 + 1e-9 for d, r in rows.items())
    )
    chosen = RecommendSettings(**weights, cold_slots=slots)
    no_cold = chosen.model_copy(update={"cold_slots": 0})
    # 2. test: every method on the same training sessions
    rows, data_out, diffs = [], {}, []
    for data in sets:
        seen = {i for s in data.train for i in s}
        methods: dict[str, Method] = {
            "popularity": popularity_method(data.train),
            "co-occurrence (plain counts)": cooccurrence_method(data.train),
        }
        if lives[data.name] is not None:
            live = lives[data.name]
            methods["content neighbours only"] = lambda a, k, live=live: [
                i for i, _ in live.neighbours(a, k)
            ]
        behaviour_only = chosen.model_copy(
            update={"content_weight": 0, "popularity_weight": 0, "flow_weight": 0}
        )
        flow_only = chosen.model_copy(
            update={"content_weight": 0, "popularity_weight": 0, "behaviour_weight": 0}
        )
        variants = [("ecrec: behaviour only", behaviour_only)]
        if data.leaves:
            variants.append(("ecrec: category flow only", flow_only))
        for label, settings in [
            *variants,
            ("ecrec: fused (dev-chosen)", chosen),
            ("ecrec: fused, no cold slots", no_cold),
        ]:
            rec = fit_recommender(data, data.train, lives[data.name], settings)
            methods[label] = recommender_method(rec)
        data_out[data.name] = {
            "train_sessions": len(data.train),
            "test_sessions": len(data.test),
            "methods": {},
        }
        ranks: dict[str, list[list[tuple[int, bool]]]] = {}
        for label, method in methods.items():
            started = time.perf_counter()
            result = evaluate(method, data.test, seen)
            elapsed = time.perf_counter() - started
            ranks[label] = result.pop("ranks")
            data_out[data.name]["methods"][label] = result
            a, c = result["all"], result["cold"]
            lo, hi = result["hr@20_ci95"]
            rows.append(
                [
                    data.name,
                    label,
                    a["n"],
                    a["hr@10"],
                    a["hr@20"],
                    f"{lo:.3f}-{hi:.3f}",
                    a["mrr@20"],
                    c["n"],
                    c["hr@20"],
                    c["mrr@20"],
                    f"{1000 * elapsed / max(a['n'], 1):.2f}",
                ]
            )
        baselines = [m for m in methods if not m.startswith("ecrec")]
        rival = max(baselines, key=lambda m: data_out[data.name]["methods"][m]["all"]["hr@20"])
        ours = "ecrec: fused (dev-chosen)"
        diff = paired_difference(ranks[ours], ranks[rival])
        data_out[data.name]["vs_best_baseline"] = {"baseline": rival, **diff}
        diffs.append(
            f"{data.name}: {ours} - {rival}: HR@20 {diff['hr@20']:+.4f} "
            f"(95% CI {diff['hr@20_ci95'][0]:+.4f} to {diff['hr@20_ci95'][1]:+.4f}), "
            f"MRR@20 {diff['mrr@20']:+.4f} "
            f"(95% CI {diff['mrr@20_ci95'][0]:+.4f} to {diff['mrr@20_ci95'][1]:+.4f})"
        )
    for line in diffs:
        console.print(line)
    report(
        "recommend_quality",
        "Next item on real data: test targets after the training sessions "
        "(95% bootstrap CI over sessions)",
        [
            "data",
            "method",
            "targets",
            "HR@10",
            "HR@20",
            "HR@20 95% CI",
            "MRR@20",
            "cold targets",
            "cold HR@20",
            "cold MRR@20",
            "ms/request",
        ],
        rows,
        {
            "chosen": chosen.model_dump(),
            "cold_slots_dev": cold_dev,
            "defaults_match_chosen": RecommendSettings() == chosen,
            "grid": {str(k): v for k, v in dev_scores.items()},
            "results": data_out,
        },
    )
    return data_out


def cost(sizes: list[int], dim: int = 384, clicks: int = 200_000, seed: int = 0) -> None:
    from ecrec_stream.index import LiveItemIndex
    from ecrec_stream.index.faiss_index import FaissItemIndex
    from ecrec_stream.index.live import ServingPair

    rows, out = [], {}
    for n in sizes:
        rng = np.random.default_rng(seed)
        live = LiveItemIndex(_NoEncoder(dim), IndexSettings(lexical=False, search_mode="dense"))
        index = FaissItemIndex(dim)
        ids = [f"it-{i}" for i in range(n)]
        for start in range(0, n, 100_000):
            block = rng.standard_normal((min(100_000, n - start), dim)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            index.upsert_many(ids[start : start + len(block)], block)
        live._pair = ServingPair(live._pair.encoder, index)  # vectors only: nothing embedded
        # a Zipf click stream over the catalog, sessions of ~8 interactions
        ranks = np.minimum(rng.zipf(1.2, clicks), n) - 1
        actions = rng.choice(
            ["view", "click", "add_to_cart", "purchase"], clicks, p=[0.5, 0.3, 0.15, 0.05]
        )
        events = [
            ClickEvent(
                event_id=f"c{j}",
                ts=T0 + timedelta(seconds=j),
                session_id=f"s{j // 8}",
                item_id=ids[int(r)],
                action=str(a),
            )  # type: ignore[arg-type]
            for j, (r, a) in enumerate(zip(ranks, actions, strict=True))
        ]
        tracemalloc.start()  # memory on one build, time on another (tracing slows it)
        traced = Recommender(RecommendSettings(), **_categories())
        for start in range(0, len(events), 500):
            traced.observe_many(events[start : start + 500])
        model_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del traced
        rec = Recommender(RecommendSettings(), content=live.neighbours, **_categories())
        started = time.perf_counter()
        for start in range(0, len(events), 500):
            rec.observe_many(events[start : start + 500])
        update_us = 1e6 * (time.perf_counter() - started) / len(events)
        items_with_links = len(rec.covisit)
        latencies = []
        sessions = [f"s{j}" for j in rng.integers(0, clicks // 8, 400)]
        answered = 0
        for sid in sessions:
            started = time.perf_counter()
            answer = rec.for_session(sid, 20)
            latencies.append(1000 * (time.perf_counter() - started))
            answered += bool(answer) and len(answer or []) == 20
        if answered < len(sessions) * 0.9:
            raise RuntimeError(f"only {answered} of {len(sessions)} requests got 20 results")
        rec.settings = RecommendSettings(content_weight=0.0)  # the same model, no FAISS call
        no_content = []
        for sid in sessions:
            started = time.perf_counter()
            rec.for_session(sid, 20)
            no_content.append(1000 * (time.perf_counter() - started))
        row = {
            "items": n,
            "clicks": clicks,
            "update_us_per_click": update_us,
            "recommend_p50_ms": percentile(latencies, 50),
            "recommend_p99_ms": percentile(latencies, 99),
            "behaviour_only_p50_ms": percentile(no_content, 50),
            "behaviour_only_p99_ms": percentile(no_content, 99),
            "items_with_links": items_with_links,
            "answered": answered,
            "model_bytes": model_bytes,
            "bytes_per_linked_item": model_bytes / max(items_with_links, 1),
            "links": rec.covisit.entries() + rec.follows.entries() + rec.bought.entries(),
        }
        out[str(n)] = row
        rows.append(
            [
                f"{n:,}",
                f"{update_us:.1f}",
                f"{row['recommend_p50_ms']:.2f}",
                f"{row['recommend_p99_ms']:.2f}",
                f"{row['behaviour_only_p50_ms']:.2f}",
                f"{row['behaviour_only_p99_ms']:.2f}",
                f"{items_with_links:,}",
                f"{row['bytes_per_linked_item']:,.0f}",
            ]
        )
    report(
        "recommend_cost",
        f"Recommender cost ({clicks:,} Zipf clicks; for_session(k=20), "
        "content from a flat FAISS index)",
        [
            "catalog items",
            "update µs/click",
            "p50 ms",
            "p99 ms",
            "p50 ms, no content",
            "p99 ms, no content",
            "items with links",
            "bytes per linked item",
        ],
        rows,
        {"results": out},
    )


def _categories(top: int = 20, leaves: int = 1_000) -> dict[str, Any]:
    """The cost run's catalog tree: item ``it-N`` in department ``N % top``, leaf ``N % leaves``
    (parsed from the id, so a 1M-item catalog needs no table)."""

    def category_of(item: str) -> str:
        return f"d{int(item[3:]) % top}"

    def leaf_of(item: str) -> str:
        n = int(item[3:])
        return f"d{n % top} > a{n % leaves}"

    return {"category_of": category_of, "leaf_of": leaf_of}


class _NoEncoder:
    """The cost run never embeds: content neighbours use the stored vectors."""

    def __init__(self, dim: int) -> None:
        self.dim, self.name, self.version = dim, "none", "none"

    def encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - never called
        raise RuntimeError("the cost run does not embed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["quality", "cost"])
    parser.add_argument("--cost-items", default="50000,1000000")
    args = parser.parse_args()
    if args.only in (None, "quality"):
        quality()
    if args.only in (None, "cost"):
        cost([int(n) for n in args.cost_items.split(",")])


if __name__ == "__main__":
    main()
