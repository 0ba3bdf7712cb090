"""Index freshness: event -> searchable latency through the real broker, worker and replica.

Items are produced at a steady rate with ``ts`` = send time. For each one the bench records
when it reached the validated topic (its own reader) and when it became searchable (the
replica's ``indexed_at``, set after the FAISS write that searches see). Then it steps the rate
up to find the highest rate the replica sustains without falling behind. Baselines measured in
the same run: the transport floor (produce -> validated by the Faust worker) and the embedding
ceiling (plain batched ``encode`` of the same titles, titles/s, in this process).

    python -m bench.freshness [--rate 100] [--seconds 30] [--ramp 100,200,400,800]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import SHARED_DATA, percentile, proc_peak_rss_mb, report
from ecrec_stream.config import Settings
from ecrec_stream.contracts.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, partition_reader
from workers.processes import indexer_process, wait_until, worker_process
from workers.simulate import synthetic_catalog

TOPICS = Settings().topics


class ValidatedClock(threading.Thread):
    """Records when each item id first appears on the validated items topic."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.consumer = partition_reader(bootstrap, [TOPICS.valid_items], name="bench")
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(500, timeout=0.05):
                if msg.error() is None:
                    now = time.time()
                    for event in json.loads(msg.value())["events"]:
                        self.seen.setdefault(event["item_id"], now)
        self.consumer.close()


def _upsert(item_id: str, title: str, ts: str, category: str) -> bytes:
    """An item upsert as a shop service would send it."""
    doc = {
        "event_id": f"ev-{item_id}",
        "ts": ts,
        "op": "upsert",
        "item_id": item_id,
        "title": title,
        "category_path": [category],
        "price": 1.0,
    }
    return json.dumps(doc).encode()


def _phase(
    base: str,
    bootstrap: str,
    clock: ValidatedClock,
    rate: float,
    seconds: float,
    prefix: str,
    titles: list[str],
) -> dict[str, Any]:
    producer = new_producer(bootstrap)
    sent: dict[str, float] = {}
    n = int(rate * seconds)
    start = time.monotonic()
    for i in range(n):
        while time.monotonic() < start + i / rate:
            time.sleep(0.0005)
        item_id = f"{prefix}-{i}"
        ts = utc_now()
        producer.produce(
            TOPICS.items,
            key=item_id.encode(),
            value=_upsert(item_id, titles[i % len(titles)], ts.isoformat(), "bench"),
        )
        producer.poll(0)
        sent[item_id] = ts.timestamp()
    producer.flush(30)
    produced_s = time.monotonic() - start

    def indexed_at(item_id: str) -> float | None:
        r = httpx.get(f"{base}/items/{item_id}", timeout=10)
        return (
            datetime.fromisoformat(r.json()["indexed_at"]).timestamp()
            if r.status_code == 200
            else None
        )

    last = f"{prefix}-{n - 1}"
    wait_until(lambda: indexed_at(last), timeout_s=300, interval_s=0.2)
    with httpx.Client() as client:
        searchable = {}
        for item_id in sent:
            r = client.get(f"{base}/items/{item_id}", timeout=10)
            if r.status_code == 200:
                searchable[item_id] = datetime.fromisoformat(r.json()["indexed_at"]).timestamp()
    lags = [searchable[i] - sent[i] for i in sent if i in searchable]
    transport = [clock.seen[i] - sent[i] for i in sent if i in clock.seen]
    tail = lags[-max(1, len(lags) // 4) :]
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": n,
        "achieved_send_rate": n / produced_s,
        "indexed": len(lags),
        "searchable_p50_s": percentile(lags, 50),
        "searchable_p99_s": percentile(lags, 99),
        "searchable_max_s": max(lags) if lags else float("nan"),
        "validated_p50_s": percentile(transport, 50),
        "validated_p99_s": percentile(transport, 99),
        "last_quarter_p50_s": percentile(tail, 50),
    }


def _bulk(base: str, bootstrap: str, titles: list[str], prefix: str) -> dict[str, Any]:
    """Send a whole catalog at once, as a bulk load does, and watch it become searchable."""
    producer = new_producer(bootstrap)
    sent: dict[str, float] = {}
    start = time.time()
    for i, title in enumerate(titles):
        item_id = f"{prefix}-{i}"
        ts = utc_now()
        producer.produce(
            TOPICS.items,
            key=item_id.encode(),
            value=_upsert(item_id, title, ts.isoformat(), "bulk"),
        )
        producer.poll(0)
        sent[item_id] = ts.timestamp()
    producer.flush(60)
    before = httpx.get(f"{base}/stats", timeout=10).json()["items"]
    progress: list[tuple[float, int]] = []  # (seconds since start, items searchable)
    deadline = time.monotonic() + 1_800
    while time.monotonic() < deadline:
        n = httpx.get(f"{base}/stats", timeout=10).json()["items"] - before
        progress.append((time.time() - start, n))
        if n >= len(titles):
            break
        time.sleep(0.25)
    with httpx.Client() as client:
        searchable = {}
        for item_id in list(sent)[:: max(1, len(sent) // 2_000)]:  # a sample of ~2,000
            r = client.get(f"{base}/items/{item_id}", timeout=10)
            if r.status_code == 200:
                searchable[item_id] = datetime.fromisoformat(r.json()["indexed_at"]).timestamp()
    lags = [searchable[i] - sent[i] for i in searchable]
    done_s = progress[-1][0]

    def reached(share: float) -> float:
        return next((t for t, n in progress if n >= share * len(titles)), float("nan"))

    jumps = [b[1] - a[1] for a, b in itertools.pairwise(progress)]
    return {
        "items": len(titles),
        "items_per_s": len(titles) / done_s,
        "seconds_to_10pct": reached(0.1),
        "seconds_to_50pct": reached(0.5),
        "seconds_to_all": done_s,
        "largest_step_items": max(jumps, default=0),
        "searchable_p50_s": percentile(lags, 50),
        "searchable_p99_s": percentile(lags, 99),
        "progress": progress,
    }


def _bulk_titles(n: int) -> tuple[list[str], str]:
    """Real Instacart product names when ../shared/data is beside the checkout, else generated."""
    folder = SHARED_DATA / "instacart_catalog"
    if folder.is_dir():
        from workers.simulate import load_instacart_catalog

        items = load_instacart_catalog(folder)
        titles = [i.title for i in items]
        source = f"Instacart catalog ({len(titles):,} real product names)"
    else:
        titles, source = [], "generated titles"
    while len(titles) < n:
        titles += [f"{i.title} {len(titles)}" for i in synthetic_catalog(5000, seed=len(titles))]
    return titles[:n], source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--ramp",
        default="100,200,300,400,600",
        help="rates tried, 10 s each, to find the highest sustained one",
    )
    parser.add_argument(
        "--bulk",
        type=int,
        default=20_000,
        help="items sent at once in the bulk-load phase (0: skip)",
    )
    args = parser.parse_args()
    titles = [i.title for i in synthetic_catalog(5000, seed=3)]
    bulk_titles, bulk_source = _bulk_titles(args.bulk)
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-fresh-"))

    from ecrec_stream.embedding import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder()
    encoder.encode(titles[:64])
    t0 = time.perf_counter()
    encoder.encode(titles[:2048])
    encode_rate = 2048 / (time.perf_counter() - t0)
    sample = bulk_titles[:4096]
    t0 = time.perf_counter()
    if sample:
        encoder.encode(sample)
    bulk_encode_rate = len(sample) / (time.perf_counter() - t0) if sample else float("nan")
    del encoder

    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, all_topics(TOPICS), Settings().partitions)
        wport, iport = free_port(), free_port()
        worker = worker_process(broker.url, workdir, wport).start()
        indexer = indexer_process(broker.url, workdir, iport).start()
        base = f"http://127.0.0.1:{iport}"
        clock = ValidatedClock(broker.bootstrap)
        clock.start()
        try:
            indexer.wait_http(f"{base}/healthz", timeout_s=180)
            worker.wait_http(f"http://127.0.0.1:{wport}/ecrec/stats")
            wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{wport}/ecrec/stats").json()["assigned"],
                timeout_s=60,
            )
            _phase(base, broker.bootstrap, clock, 50, 2, "warm", titles)  # warm-up, not reported
            steady = _phase(
                base, broker.bootstrap, clock, args.rate, args.seconds, "steady", titles
            )
            ramp = []
            for rate in [float(r) for r in args.ramp.split(",") if r]:
                phase = _phase(base, broker.bootstrap, clock, rate, 10, f"ramp{int(rate)}", titles)
                phase["sustained"] = phase["last_quarter_p50_s"] < 1.0
                ramp.append(phase)
                if not phase["sustained"]:
                    break
            bulk = _bulk(base, broker.bootstrap, bulk_titles, "bulk") if bulk_titles else None
            assert indexer.proc is not None and worker.proc is not None
            rss = {
                "indexer_peak_rss_mb": proc_peak_rss_mb(indexer.proc.pid),
                "worker_peak_rss_mb": proc_peak_rss_mb(worker.proc.pid),
            }
        finally:
            clock.stop.set()
            indexer.stop()
            worker.stop()
    sustained = [p["rate"] for p in ramp if p.get("sustained")]
    rows = [
        [
            f"steady {args.rate:.0f}/s x {args.seconds:.0f}s",
            steady["sent"],
            steady["validated_p50_s"] * 1000,
            steady["validated_p99_s"] * 1000,
            steady["searchable_p50_s"] * 1000,
            steady["searchable_p99_s"] * 1000,
            "-",
        ]
    ]
    rows += [
        [
            f"ramp {p['rate']:.0f}/s x 10s",
            p["sent"],
            p["validated_p50_s"] * 1000,
            p["validated_p99_s"] * 1000,
            p["searchable_p50_s"] * 1000,
            p["searchable_p99_s"] * 1000,
            "yes" if p["sustained"] else "no",
        ]
        for p in ramp
    ]
    if bulk is not None:
        rows.append(
            [
                f"bulk load, all at once ({bulk['items_per_s']:,.0f} items/s = "
                f"{bulk['items_per_s'] / bulk_encode_rate:.2f}x a plain encode of the same "
                f"titles; 10%/50%/all searchable after {bulk['seconds_to_10pct']:.1f}/"
                f"{bulk['seconds_to_50pct']:.1f}/{bulk['seconds_to_all']:.1f} s; largest "
                f"step {bulk['largest_step_items']:,} items)",
                bulk["items"],
                "-",
                "-",
                bulk["searchable_p50_s"] * 1000,
                bulk["searchable_p99_s"] * 1000,
                "-",
            ]
        )
    rows.append(
        [
            f"baseline: plain batched encode ({encode_rate:,.0f} titles/s; bulk titles "
            f"{bulk_encode_rate:,.0f}/s)",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]
    )
    report(
        "freshness",
        "Index freshness through the real broker (ms; validated = transport "
        "floor via the Faust worker, searchable = end to end)",
        [
            "phase",
            "items",
            "validated p50",
            "validated p99",
            "searchable p50",
            "searchable p99",
            "sustained",
        ],
        rows,
        {
            "steady": steady,
            "ramp": ramp,
            "max_sustained_rate": max(sustained, default=None),
            "encode_titles_per_s": encode_rate,
            "bulk": bulk,
            "bulk_source": bulk_source,
            "bulk_encode_titles_per_s": bulk_encode_rate,
            **rss,
        },
    )


if __name__ == "__main__":
    main()
