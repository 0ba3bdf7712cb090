"""Drift detection, measured on streams built from real text.

* False alarms: streams without a shift (real Instacart product names as queries, real clothing
  reviews with their item churn, a steady click-through rate), several seeds; alerts and
  drifted windows per 10,000 events, for each calibration method. And shopping sessions of the
  real Crowdflower queries in random order (no shift; impressions the packaged model's top 10,
  clicks from the human judgments through a position-biased cascade, bench.crowdflower),
  several seeds of tens of thousands of sessions: false alarms per 10,000 events per detector.
* Detection delay (a detector's own observations after the shift until its alert would fire)
  for: an abrupt department switch, a gradual vocabulary shift, a click-through drop, reviews
  turning negative.
* Cost: CPU microseconds per observation of each detector (and the encoder's, for reference).

Runs the domain library in process (no broker): ``python -m bench.drift [--seeds 3]``. The
drift agent's effect on the worker's throughput is measured by ``--worker`` (with the broker).
"""

from __future__ import annotations

import argparse
import csv
import functools
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np

from bench.common import SHARED_DATA, cached_vectors, report
from ecrec_stream.config import DriftSettings
from ecrec_stream.contracts.events import AnyEvent, ClickEvent, ReviewEvent, SearchEvent
from ecrec_stream.drift import DriftMonitor
from ecrec_stream.embedding import Encoder, SentenceTransformerEncoder

DATA = SHARED_DATA


def load_products() -> tuple[list[dict[str, str]], dict[str, str]]:
    base = DATA / "instacart_catalog"
    with open(base / "departments.csv", encoding="utf-8") as fh:
        departments = {r["department_id"]: r["department"] for r in csv.DictReader(fh)}
    with open(base / "products.csv", encoding="utf-8") as fh:
        products = [
            {
                "id": f"p{r['product_id']}",
                "name": r["product_name"],
                "dept": departments[r["department_id"]],
            }
            for r in csv.DictReader(fh)
        ]
    return products, {p["id"]: p["dept"] for p in products}


def load_reviews(limit: int, seed: int = 0) -> list[dict[str, Any]]:
    with open(DATA / "womens_clothing_reviews" / "reviews.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Review Text"].strip() and r["Department Name"]]
    random.Random(seed).shuffle(rows)
    return [
        {
            "item": f"c{r['Clothing ID']}",
            "dept": r["Department Name"],
            "title": r["Title"],
            "text": r["Review Text"],
            "rating": int(r["Rating"]),
        }
        for r in rows[:limit]
    ]


def _ts(i: int) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + i, tz=timezone.utc)


def churned(items: list[Any], key: Any, n: int, rng: random.Random, spread: float) -> list[Any]:
    """``n`` draws from ``items`` in a time order with realistic churn: each group (``key``:
    an item, a product) is "launched" at a random time and its draws cluster around it
    (normal, ``spread`` of the stream's length)."""
    groups: dict[Any, list[Any]] = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    launch = {g: rng.random() for g in groups}
    draws = [rng.choice(items) for _ in range(n)]
    return sorted(draws, key=lambda it: launch[key(it)] + rng.gauss(0, spread))


def search_events(
    queries: list[dict[str, str]], rng: random.Random, ctr: list[float], start: int = 0
) -> Iterator[AnyEvent]:
    """A search per product drawn (query = its real name, top impression = it), then a click
    on it with probability ``ctr[i]``."""
    for i, p in enumerate(queries):
        n = start + i
        yield SearchEvent(
            event_id=f"s{n}",
            ts=_ts(n),
            search_id=f"q{n}",
            session_id=f"u{n}",
            query=p["name"],
            impressions=[p["id"]],
        )
        if rng.random() < ctr[i]:
            yield ClickEvent(
                event_id=f"c{n}",
                ts=_ts(n),
                session_id=f"u{n}",
                search_id=f"q{n}",
                item_id=p["id"],
                position=0,
            )


def review_events(reviews: list[dict[str, Any]], start: int = 0) -> Iterator[AnyEvent]:
    for i, r in enumerate(reviews):
        n = start + i
        yield ReviewEvent(
            event_id=f"r{n}",
            ts=_ts(n),
            item_id=r["item"],
            rating=r["rating"],
            title=r["title"],
            text=r["text"],
        )


def embed_all(encoder: Encoder, texts: list[str]) -> tuple[Any, float]:
    """Embed ``texts`` once (reusing ``bench/.cache`` from an earlier run of the same texts and
    model: 17k texts take minutes here) and return a lookup ``encode`` for the monitor, plus
    the CPU microseconds per text of a fresh encode of 300 of them (measured every run)."""
    sample = texts[:300]
    t0 = time.process_time()
    encoder.encode(sample)
    per_text_us = (time.process_time() - t0) / len(sample) * 1e6
    vectors = cached_vectors("embeddings", encoder.version, texts, encoder.encode)
    table = dict(zip(texts, vectors, strict=True))
    return (lambda batch: np.stack([table[t] for t in batch])), per_text_us


def run_monitor(
    settings: DriftSettings,
    events: list[AnyEvent],
    encode: Any,
    category_of: dict[str, str],
    batch: int = 100,
) -> tuple[DriftMonitor, list[Any], dict[str, float]]:
    """Feed ``events`` in micro-batches; returns the monitor, every closed window's result and
    CPU seconds spent per detector (update calls only)."""
    monitor = DriftMonitor(
        settings, encode=encode, category_of=category_of.get, model_version="bench"
    )
    results = []
    cost: dict[str, float] = defaultdict(float)
    original = {n: d.update for n, d in monitor.detectors.items()}

    def timed(name: str) -> Any:
        def update(rows: Any) -> Any:
            t0 = time.process_time()
            out = original[name](rows)
            cost[name] += time.process_time() - t0
            return out

        return update

    for name, det in monitor.detectors.items():
        det.update = timed(name)  # type: ignore[method-assign]
    for i in range(0, len(events), batch):
        step = monitor.observe(events[i : i + batch])
        results.extend(step.results)
    return monitor, results, cost


def first_alertable(results: list[Any], detector: str, after_ts: float, needed: int) -> Any:
    """The first window of ``detector`` ending after ``after_ts`` that completes ``needed``
    consecutive drifted windows (counting from ``after_ts``)."""
    run = 0
    for r in results:
        if r.detector != detector or r.window_end < after_ts:
            continue
        run = run + 1 if r.drifted else 0
        if run >= needed:
            return r
    return None


SHIFT_AT = 3000
SWITCH_TO = ("babies", "pets", "personal care")
GRADUAL_TO = ("frozen", "bakery")


def scenario_events(
    name: str, products: list[dict[str, str]], reviews: list[dict[str, Any]], seed: int, n: int
) -> list[AnyEvent]:
    """A stream of ``n`` searches (and their clicks) and ``n`` reviews; ``name`` picks the
    change at ``SHIFT_AT`` (``none`` for none)."""
    rng = random.Random(seed)
    queries = churned(products, lambda p: p["id"], n, rng, spread=0.05)
    revs = churned(reviews, lambda r: r["item"], n, rng, spread=0.05)
    ctr = [0.4] * n
    if name == "department switch":
        target = [p for p in products if p["dept"] in SWITCH_TO]
        queries = queries[:SHIFT_AT] + [rng.choice(target) for _ in range(n - SHIFT_AT)]
    elif name == "gradual vocabulary shift":
        target = [p for p in products if p["dept"] in GRADUAL_TO]
        for i in range(SHIFT_AT, n):
            if rng.random() < min(1.0, (i - SHIFT_AT) / 1000):
                queries[i] = rng.choice(target)
    elif name == "click-through drop":
        ctr = [0.4] * SHIFT_AT + [0.2] * (n - SHIFT_AT)
    elif name == "reviews turn negative":
        negative = [r for r in reviews if r["rating"] <= 2]
        revs = revs[:SHIFT_AT] + [rng.choice(negative) for _ in range(n - SHIFT_AT)]
    events = list(search_events(queries, rng, ctr)) + list(review_events(revs))
    return sorted(events, key=lambda e: (e.ts, e.type))


SCENARIO_DETECTORS = {
    "department switch": ("search_category", "click_category", "query_embedding"),
    "gradual vocabulary shift": ("search_category", "click_category", "query_embedding"),
    "click-through drop": ("click_through",),
    "reviews turn negative": ("rating", "review_embedding", "review_category"),
}


def mmd_cost(devices: list[str], reference_size: int, window: int, windows: int = 50) -> None:
    """Cost of the embedding-drift detector alone, per device: calibration and one window's
    test, with the reference's kernel mean reused (as the detector does) and recomputed for
    every window (as it did before), through the same ``update`` path, in one run. Vectors are
    random unit vectors of MiniLM's width: an MMD's cost does not depend on their values."""
    import torch

    from ecrec_stream.drift.embedding import EmbeddingMMD

    class Recomputing(EmbeddingMMD):
        def statistic(self, reference: Any, window: Any) -> float:
            self._reference_memo = None
            return super().statistic(reference, window)

    rng = np.random.default_rng(0)
    n = reference_size + windows * window
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    reference = [(float(i), v) for i, v in enumerate(vectors[:reference_size])]
    stream = [(float(i), v) for i, v in enumerate(vectors[reference_size:], reference_size)]
    rows, data = [], {}

    def timed(device: str, work: Any) -> tuple[float, Any]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    for device in devices:
        name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        EmbeddingMMD("warm", device=device, reference_size=4 * window, window_events=window).update(
            reference[: 5 * window]
        )
        cells: dict[str, Any] = {"device": name}
        for label, cls in (("reused", EmbeddingMMD), ("recomputed", Recomputing)):
            detector = cls("q", device=device, reference_size=reference_size, window_events=window)
            calibrate, _ = timed(device, lambda d=detector: d.update(reference))
            seconds, results = timed(device, lambda d=detector: d.update(stream))
            cells[f"calibration_ms_{label}"] = calibrate * 1e3
            cells[f"window_ms_{label}"] = seconds * 1e3 / max(1, len(results))
        rows.append(
            [name]
            + [
                f"{cells[k]:,.2f}"
                for k in (
                    "calibration_ms_reused",
                    "window_ms_reused",
                    "calibration_ms_recomputed",
                    "window_ms_recomputed",
                )
            ]
        )
        data[device] = cells
    report(
        "drift_mmd_cost",
        f"Embedding MMD detector: reference {reference_size:,}, windows of {window} (384-d), "
        "reference kernel mean reused vs recomputed per window",
        [
            "device",
            "calibration ms",
            "ms / window",
            "calibration ms (recomputed)",
            "ms / window (recomputed)",
        ],
        rows,
        data,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--events", type=int, default=6000, help="searches (and reviews)")
    parser.add_argument("--reviews", type=int, default=8000, help="review pool")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DriftSettings field (repeatable), e.g. --set reference_size=2000",
    )
    parser.add_argument("--methods", default="holdout,blocks,permutation")
    parser.add_argument(
        "--cf-sessions", type=int, default=30_000, help="Crowdflower sessions per seed"
    )
    parser.add_argument(
        "--mmd-cost", action="store_true", help="only the MMD statistic's cost, per device"
    )
    parser.add_argument(
        "--quantization",
        choices=("none", "int8"),
        default="none",
        help="the encoder as the worker's EMBEDDING__WORKER_QUANTIZATION gives it (int8: "
        "results under drift_*_int8, impressions of the Crowdflower sessions ranked by it too)",
    )
    args = parser.parse_args()
    suffix = "" if args.quantization == "none" else f"_{args.quantization}"
    if args.mmd_cost:
        import torch

        base = DriftSettings(**dict(kv.split("=", 1) for kv in args.set))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        mmd_cost(devices, base.reference_size, base.window_events)
        return
    products, category_of = load_products()
    reviews = load_reviews(args.reviews)
    category_of.update({r["item"]: r["dept"] for r in reviews})
    encoder: Encoder = SentenceTransformerEncoder()
    if args.quantization == "int8":
        from ecrec_stream.embedding.int8 import Int8Encoder

        encoder = Int8Encoder()
    t0 = time.perf_counter()
    texts = [p["name"] for p in products] + [
        ". ".join(x for x in (r["title"], r["text"]) if x.strip()) for r in reviews
    ]
    encode, encode_cpu_us = embed_all(encoder, texts)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s")

    base = DriftSettings(**dict(kv.split("=", 1) for kv in args.set))
    methods = tuple(args.methods.split(","))
    fa_rows, fa_data = [], {}
    costs: dict[str, list[float]] = defaultdict(list)
    for method in methods:
        settings = replace_settings(base, calibration=method)
        alerts = events_total = 0
        drifted: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for seed in range(args.seeds):
            events = scenario_events("none", products, reviews, seed, args.events)
            monitor, results, cost = run_monitor(settings, events, encode, category_of)
            alerts += monitor.counts["alerts"]
            events_total += len(events)
            for r in results:
                drifted[r.detector][0] += r.drifted
                drifted[r.detector][1] += 1
            if method == "holdout":
                for name, seconds in cost.items():
                    costs[name].append(seconds / max(1, _observations(monitor, name)))
        per10k = alerts / events_total * 10_000
        fa_rows.append(
            [method, events_total, alerts, per10k]
            + [f"{drifted[d][0]}/{drifted[d][1]}" for d in base.detectors]
        )
        fa_data[method] = {
            "events": events_total,
            "alerts": alerts,
            "alerts_per_10k_events": per10k,
            "drifted_windows": {d: drifted[d] for d in base.detectors},
        }
    cf_rows, cf_data = crowdflower_no_shift(base, encoder, args.seeds, args.cf_sessions)
    report(
        "drift_false_alarms_sessions" + suffix,
        f"No shift: {args.cf_sessions:,} shopping sessions of real Crowdflower queries per seed "
        f"({args.seeds} seeds), position-biased clicks from human judgments",
        ["detector", "events", "windows", "drifted windows", "alerts", "alerts / 10k events"],
        cf_rows,
        cf_data,
    )
    report(
        "drift_false_alarms" + suffix,
        f"No shift ({args.seeds} seeds, real product names and reviews with item churn): "
        "alerts and drifted windows per calibration",
        ["calibration", "events", "alerts", "alerts / 10k events", *base.detectors],
        fa_rows,
        fa_data,
    )

    delay_rows, delay_data = [], {}
    for scenario, detectors in SCENARIO_DETECTORS.items():
        for method in methods:
            settings = replace_settings(base, calibration=method)
            events = scenario_events(scenario, products, reviews, 100, args.events)
            monitor, results, _ = run_monitor(settings, events, encode, category_of)
            shift_ts = _ts(SHIFT_AT).timestamp()
            pre = sum(1 for a in monitor.alerts if a.window_end.timestamp() < shift_ts)
            cells = []
            for d in detectors:
                needed = 1 if monitor.detectors[d].sequential else settings.confirm_windows
                hit = first_alertable(results, d, shift_ts, needed)
                delay = None if hit is None else int(hit.window_end - shift_ts)
                cells.append(f"{d}: {'missed' if delay is None else delay}")
                delay_data[f"{scenario}|{method}|{d}"] = delay
            first = next((a for a in monitor.alerts if a.window_end.timestamp() >= shift_ts), None)
            delay_rows.append(
                [
                    scenario,
                    method,
                    "; ".join(cells),
                    "none"
                    if first is None
                    else f"{first.detector} +{int(first.window_end.timestamp() - shift_ts)}",
                    pre,
                ]
            )
    report(
        "drift_delay" + suffix,
        f"Detection delay: events of the changed stream after the change at {SHIFT_AT} "
        "until the detector's alert would fire",
        ["scenario", "calibration", "delay per detector", "first alert", "alerts before"],
        delay_rows,
        delay_data,
    )

    cost_rows = [[name, f"{np.mean(v) * 1e6:,.1f}"] for name, v in sorted(costs.items())] + [
        [
            "(encoder, per new text; shared with the label agents for reviews)",
            f"{encode_cpu_us:,.0f}",
        ]
    ]
    report(
        "drift_cost" + suffix,
        "CPU cost per observation (holdout calibration, no-shift streams, incl. calibration)",
        ["detector", "CPU µs / observation"],
        cost_rows,
        {n: float(np.mean(v) * 1e6) for n, v in costs.items()} | {"encoder": encode_cpu_us},
    )


def crowdflower_no_shift(
    settings: DriftSettings, encoder: Encoder, seeds: int, sessions: int
) -> tuple[list[list[Any]], dict[str, Any]]:
    """False alarms on stationary shopping sessions of real queries (bench.crowdflower):
    searches and clicks read from two inputs, as the worker reads two topics."""
    from bench import crowdflower as cf

    judg = cf.load()
    titles = cached_vectors("embeddings", encoder.version, judg.titles, encoder.encode)
    queries = cached_vectors("embeddings", encoder.version, judg.queries, encoder.encode)
    ranks = cf.top_k(titles, queries, 10)
    rankings = {q: list(map(int, r)) for q, r in zip(judg.queries, ranks, strict=True)}
    table = dict(zip(judg.queries, queries, strict=True))
    detectors = ("query_embedding", "click_through")
    chosen = replace_settings(settings, detectors=detectors)
    totals: dict[str, list[int]] = {d: [0, 0, 0, 0] for d in detectors}  # events, windows...
    for seed in range(seeds):
        monitor = DriftMonitor(
            chosen,
            encode=lambda batch: np.stack([table[q] for q in batch]),
            category_of=lambda item: None,
            model_version="bench",
            inputs=("searches:0", "clicks:0"),
            click_inputs=("clicks:0",),
        )
        results: list[Any] = []
        alerts: list[str] = []
        take = functools.partial(_collect, results, alerts)
        searches: list[AnyEvent] = []
        clicks: list[AnyEvent] = []
        for search, session_clicks in cf.session_events(judg, rankings, sessions, seed=seed):
            searches.append(search)
            clicks.extend(session_clicks)
            if len(searches) == 50:
                take(monitor.observe(searches, "searches:0"))
                take(monitor.observe(clicks, "clicks:0"))
                searches, clicks = [], []
        take(monitor.observe(searches, "searches:0"))
        take(monitor.observe(clicks, "clicks:0"))
        take(monitor.flush())
        for d in detectors:
            mine = [r for r in results if r.detector == d]
            totals[d][0] += monitor.counts["events"]
            totals[d][1] += len(mine)
            totals[d][2] += sum(r.drifted for r in mine)
            totals[d][3] += alerts.count(d)
        print(f"crowdflower sessions seed {seed}: {monitor.counts['events']:,} events, {alerts}")
    rows = [
        [d, t[0], t[1], t[2], t[3], t[3] / t[0] * 10_000 if t[0] else float("nan")]
        for d, t in totals.items()
    ]
    data = {
        "sessions_per_seed": sessions,
        "seeds": seeds,
        "settings": chosen.model_dump(mode="json"),
        "detectors": {
            d: {"events": t[0], "windows": t[1], "drifted_windows": t[2], "alerts": t[3]}
            for d, t in totals.items()
        },
    }
    return rows, data


def _collect(results: list[Any], alerts: list[str], step: Any) -> None:
    results.extend(step.results)
    alerts.extend(a.detector for a in step.alerts)


def replace_settings(settings: DriftSettings, **changes: Any) -> DriftSettings:
    return DriftSettings(**{**settings.model_dump(), **changes})


def _observations(monitor: DriftMonitor, name: str) -> int:
    det = monitor.detectors[name]
    if hasattr(det, "ref_n"):
        return int(det.ref_n + det.windows * det.window_events)
    return len(det.reference) + det.windows * det.window_events


if __name__ == "__main__":
    main()
