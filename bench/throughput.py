"""Worker throughput with every stage on, on two traffic mixes, against ingest only and a raw
Faust passthrough in the same run, with a profile of where the time goes.

    python -m bench.throughput [--mixes sessions,reviews] [--events 12000] [--reviews 600]
                               [--items 50000] [--profile]
    python -m bench.throughput --paced sessions=1000,reviews=100 [--seconds 60]
                               [--split | --workers N] [--profile] [--broker kafka]

Mixes (each a backlog produced as fast as the producer goes, after the catalog was loaded and
the worker had it):

* ``sessions``: shop traffic from :class:`workers.simulate.ShopSimulator` over the real
  Instacart catalog (9,288 products) topped up with synthetic products to ``--items``: a search
  with 10 impressions, clicks by a position-biased click model, add-to-carts and purchases, and
  a review after some purchases (real clothing-review texts, 62 words on average, so the
  embedding cost is a real review's); its share of events is in the results.
* ``reviews``: a backlog of ``--reviews`` real review texts.

Per mix, three processes read the same backlog in turn: a raw Faust passthrough (one topic in,
one out: the per-message floor), the ecrec-stream worker with ingest only, and the worker with
every stage on (labels, augmentation, meaning filter, drift). Per run: the seconds until
ingest has written every event and until the label and drift agents have read every valid one
(from the worker's own ``/ecrec/stats`` and ``/ecrec/drift``); events/s is the backlog over the
slowest of those, the rate the worker sustains (every agent's event time then lags the input
by the time to read one micro-batch); CPU µs per event; peak RSS.

``--paced``: instead of a backlog, each mix sent at its rate for ``--seconds``; each agent's
lag is polled (see :func:`sustained_lags` for when it keeps up). ``--broker kafka``: on Apache
Kafka 3.9 started on this machine instead of the embedded Tansu.

``--profile``: py-spy samples the worker with every stage on while it works the backlog
(``--nonblocking``): a flame graph (SVG) and collapsed stacks under bench/results, and the
table of CPU by stage (each sample counted for the innermost ecrec-stream stage on its stack,
else for the library it is in).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    RESULTS,
    SHARED_DATA,
    console,
    isolated_worker,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    report,
    thread_cpu_seconds,
)
from bench.ingest import OutputCounter, _review_texts, _wait_count, _wait_for, run_passthrough
from ecrec_stream.contracts.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import new_producer
from workers.processes import worker_process
from workers.simulate import ShopSimulator, load_instacart_catalog, synthetic_catalog

PARTITIONS = 4
Record = tuple[str, bytes, bytes]  # kind (items, searches, clicks, reviews), key, value

# Where a profile's samples go: the innermost frame on a stack whose file matches (in order).
STAGES = [
    ("meaning filter (embeds variants)", ("augment/filter",)),
    ("augmentation", ("ecrec_stream/augment/",)),
    ("label model", ("labels/model", "labels/aggregate")),
    ("position model", ("labels/position",)),
    ("label functions", ("labels/relevance", "labels/sentiment")),
    ("session folding", ("labels/sessions", "ingest/eventtime")),
    ("label stage (other)", ("ecrec_stream/labels/",)),
    ("drift statistics", ("ecrec_stream/drift/",)),
    ("validation", ("ingest/validation", "ingest/batching", "ingest/quality", "contracts/")),
    ("embedding (shared cache, no stage above)", ("ecrec_stream/embedding", "streams/catalog")),
]
TORCH = ("torch/", "sentence_transformers/", "transformers/", "tokenizers")
LIBRARIES = [
    ("torch / sentence-transformers (outside a stage)", TORCH),
    ("JSON / pydantic (outside a stage)", ("json/", "pydantic", "orjson")),
    ("Faust / mode / aiokafka", ("faust/", "mode/", "aiokafka/", "kafka/")),
    ("asyncio / threads", ("asyncio/", "threading.py", "concurrent/", "selectors")),
]


def _catalog(n: int) -> list[Any]:
    real = load_instacart_catalog(SHARED_DATA / "instacart_catalog")
    extra = synthetic_catalog(max(0, n - len(real)))
    return real + extra


def session_traffic(
    catalog: list[Any], events: int, tag: str, review_share: float, seed: int = 3
) -> list[Record]:
    """``events`` session events (searches, clicks, reviews), sessions one second apart in
    event time (so sessions older than the 30-minute gap close and are labelled within the
    backlog); reviews kept at ``review_share`` of events, their texts real ones."""
    sim = ShopSimulator(catalog, seed=seed)
    texts = _review_texts()
    rng = random.Random(seed)
    start = utc_now() - timedelta(hours=3)
    out: list[Record] = []
    n = reviews = 0
    while len(out) < events:
        sess = sim.session(start + timedelta(seconds=n))
        n += 1
        for kind, key, doc in sess.events:
            doc["event_id"] = f"{tag}-{doc['event_id']}"
            if kind == "review":
                if reviews >= review_share * (len(out) + 1):
                    continue  # the simulator reviews ~5% of events; shops see ~1-2%
                reviews += 1
                doc["text"] = texts[rng.randrange(len(texts))]
            out.append((f"{kind}s" if kind != "search" else "searches", key.encode(),
                        json.dumps(doc).encode()))  # fmt: skip
    return out[:events]


def nth_review_text(texts: list[str], i: int) -> str:
    """The ``i``-th review text of a stream longer than ``texts``: past the end, each pass
    rotates a text's words by 3 more. The same words and length, so the same embedding cost,
    but not a near-duplicate: a repeated text is dropped by the label agent's dedupe unlabelled
    (7,367 of a 300-s run's 30,000 reviews at 100/s were, so its last minute cost little).

    >>> [nth_review_text(["a b c d e"], i) for i in range(3)]
    ['a b c d e', 'd e a b c', 'b c d e a']
    """
    text = texts[i % len(texts)]
    words = text.split()
    shift = 3 * (i // len(texts)) % max(len(words), 1)
    return " ".join(words[shift:] + words[:shift]) if shift else text


def review_backlog(catalog: list[Any], reviews: int, tag: str, seed: int = 4) -> list[Record]:
    texts = _review_texts()
    rng = random.Random(seed)
    now = utc_now()
    out: list[Record] = []
    for i in range(reviews):
        item = catalog[rng.randrange(len(catalog))]
        doc = {
            "event_id": f"{tag}-r{i}",
            "ts": (now + timedelta(seconds=i)).isoformat(),
            "item_id": item.item_id,
            "rating": rng.randint(1, 5),
            "text": nth_review_text(texts, i),
        }
        out.append(("reviews", item.item_id.encode(), json.dumps(doc).encode()))
    return out


def mix_records(
    mix: str, catalog: list[Any], n: int, tag: str, review_share: float
) -> list[Record]:
    """``n`` events of ``mix``: session traffic (``sessions``) or a review backlog."""
    if mix == "sessions":
        return session_traffic(catalog, n, tag, review_share)
    return review_backlog(catalog, n, tag)


def _produce(
    bootstrap: str,
    topics: dict[str, str],
    records: list[Record],
    rate: float | None = None,
    sent_at: list[float] | None = None,
) -> None:
    """Produce ``records`` as fast as the producer goes, or paced at ``rate`` events/s;
    ``sent_at`` gets each record's ``time.monotonic()`` when it was handed to the producer."""
    producer = new_producer(bootstrap)
    start = time.monotonic()
    for i, (kind, key, value) in enumerate(records):
        # Sleep until it is time (``poll(ahead)`` returns at the first delivery report, and
        # under a millisecond it does not wait at all: it spun a core of this machine away)
        if rate is not None and (ahead := i / rate - (time.monotonic() - start)) > 0:
            time.sleep(ahead)
        producer.produce(topics[kind], key=key, value=value)
        if sent_at is not None:
            sent_at.append(time.monotonic())
        producer.poll(0)
    assert producer.flush(60) == 0


def _sum_counts(docs: list[Any], key: str = "") -> Any:
    """The numbers of several workers' stats documents added up, key by key: the most of
    any worker for a key that is a maximum (``max_s``: the longest pause), the first worker's
    value where a leaf is not a number.

    >>> _sum_counts([{"a": 1, "b": {"c": 2, "max_s": 0.5}, "d": "x"},
    ...              {"a": 2, "b": {"c": 3, "max_s": 0.25}, "d": "y"}])
    {'a': 3, 'b': {'c': 5, 'max_s': 0.5}, 'd': 'x'}
    """
    first = docs[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for d in docs for k in d)
        return {k: _sum_counts([d[k] for d in docs if k in d], k) for k in keys}
    numbers = [d for d in docs if isinstance(d, int | float) and not isinstance(d, bool)]
    if numbers and len(numbers) == len(docs):
        return max(numbers) if key.startswith("max") else sum(numbers)
    return first


def _label_stats(bases: list[str]) -> dict[str, Any]:
    """The label agents' stats of every worker, added up; ``lag_s`` and ``lag_max_s`` are the
    most of any worker."""
    stats = [httpx.get(f"{b}/ecrec/stats", timeout=10).json() for b in bases]
    docs = [doc["labels"] for doc in stats]
    out: dict[str, Any] = _sum_counts(docs)
    # garbage collections stop every thread of a worker: counted and timed per generation
    out["gc"] = _sum_counts([doc.get("gc", {}) for doc in stats])
    full = [doc.get("gc", {}).get("gen2", {}) for doc in stats]
    out["gc_full_collections"] = sum(int(g.get("collections", 0)) for g in full)
    out["gc_full_s"] = round(sum(float(g.get("total_s", 0.0)) for g in full), 3)
    out["gc_full_max_s"] = max((float(g.get("max_s", 0.0)) for g in full), default=0.0)
    for key in ("lag_s", "lag_max_s"):
        merged: dict[str, float] = {}
        for doc in docs:
            for task, lag in doc.get(key, {}).items():
                merged[task] = max(lag, merged.get(task, 0.0))
        out[key] = merged
    return out


def _agents_read(bases: list[str], drift_bases: list[str]) -> dict[str, Any]:
    """Events each agent has read so far: the session and review label agents (from
    ``/ecrec/stats``) and drift (observed, or held by its event-time merge for slower inputs:
    read either way; the merge's hold-back is event time, not work left)."""
    labels = _label_stats(bases)
    drift = _sum_counts([httpx.get(f"{b}/ecrec/drift", timeout=10).json() for b in drift_bases])
    return {
        "sessions": int(labels.get("session_events_read", 0)),
        "reviews": int(labels.get("reviews_read", 0)),
        "drift": int(drift["counts"].get("events", 0)) + int(drift.get("waiting", 0)),
        "label_lag_s": labels.get("lag_s", {}),
        "checkpoints": int(labels.get("checkpoints", 0)),  # when the label state was saved
        "gc_full_s": labels["gc_full_s"],  # and how long full collections stopped the worker
    }


AGENT_KINDS = {"sessions": {"searches", "clicks"}, "reviews": {"reviews"},
               "drift": {"searches", "clicks", "reviews"}}  # fmt: skip


def sustained_lags(
    bases: list[str],
    drift_bases: list[str],
    pids: list[int],
    records: list[Record],
    rate: float,
    producing: threading.Thread,
    sent_at: list[float],
) -> dict[str, Any]:
    """Poll the agents while ``producing`` paces ``records`` at ``rate`` events/s (appending
    each one's send time to ``sent_at``), then until they have read it all. An agent's lag at
    a poll is how long the oldest event of its kinds that it has not read was sent ago (an
    agent reads its events in about the order they were sent); it keeps up when every lag
    stays under 10 s and does not grow over the second half of sending (least-squares slope
    under 0.05 s per s: a lag growing faster crosses 10 s within minutes of a longer run).
    The label agents' own worst lag (batch message written -> labelled, ``lag_max_s``) is
    reported beside it."""
    of_agent = {
        agent: [i for i, (kind, _, _) in enumerate(records) if kind in kinds]
        for agent, kinds in AGENT_KINDS.items()
    }
    wanted = {agent: len(idx) for agent, idx in of_agent.items() if idx}
    start = time.monotonic()
    lags: dict[str, list[float]] = {k: [] for k in wanted}
    polled_at: list[float] = []
    series = []  # per poll: seconds, events read per agent, the label agents' own lags
    while True:
        read = _agents_read(bases, drift_bases)
        now = time.monotonic()
        polled_at.append(now)
        series.append({"t": round(now - start, 2), "sent": len(sent_at), **read})
        for agent, n in wanted.items():
            oldest_unread = of_agent[agent][read[agent]] if read[agent] < n else None
            if oldest_unread is not None and oldest_unread < len(sent_at):
                lags[agent].append(now - sent_at[oldest_unread])
            else:  # read all that was sent
                lags[agent].append(0.0)
        if not producing.is_alive() and all(read[a] >= n for a, n in wanted.items()):
            break
        if gone := [pid for pid in pids if not Path(f"/proc/{pid}").exists()]:
            raise RuntimeError(f"process {gone} exited; see its log")
        if now - start > 3 * len(records) / rate + 600:
            raise TimeoutError(f"agents read {read} of {wanted}")
        time.sleep(0.5)
    labels = _label_stats(bases)
    half = [i for i, t in enumerate(polled_at) if sent_at[len(sent_at) // 2] <= t <= sent_at[-1]]
    growth = {
        a: float(np.polyfit([polled_at[i] for i in half], [v[i] for i in half], 1)[0])
        if len(half) >= 3
        else 0.0
        for a, v in lags.items()
    }
    return {
        "rate": rate,
        "seconds": time.monotonic() - start,
        "sent_s": sent_at[-1] - sent_at[0],
        "max_lag_s": {a: max(v) for a, v in lags.items()},
        "p50_lag_s": {a: sorted(v)[len(v) // 2] for a, v in lags.items()},
        "lag_growth_s_per_s": growth,
        "label_lag_max_s": labels.get("lag_max_s", {}),
        "kept_up": all(max(v) < 10.0 and growth[a] < 0.05 for a, v in lags.items()),
        "series": series,
    }


def _catalog_records(catalog: list[Any], tag: str) -> list[Record]:
    now = utc_now()
    return [
        ("items", c.item_id.encode(), json.dumps(c.upsert(f"{tag}-cat-{i}", now)).encode())
        for i, c in enumerate(catalog)
    ]


class Profiler:
    """py-spy attached to a process (non-blocking): a flame graph and collapsed stacks."""

    def __init__(self, pid: int, name: str) -> None:
        self.svg = RESULTS / f"{name}.svg"
        self.raw = RESULTS / f"{name}.txt"
        RESULTS.mkdir(parents=True, exist_ok=True)
        spy = [sys.executable.replace("python", "py-spy"), "record", "--pid", str(pid),
               "--nonblocking", "--threads", "--rate", "50"]  # fmt: skip
        self.procs = [
            subprocess.Popen([*spy, "-f", "flamegraph", "-o", str(self.svg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([*spy, "-f", "raw", "-o", str(self.raw)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]  # fmt: skip

    def stop(self) -> dict[str, float]:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(60)
        return stage_shares(self.raw)


def stage_shares(raw: Path) -> dict[str, dict[str, float]]:
    """Share of busy samples per stage: py-spy's collapsed stacks (``frame;frame;... count``,
    root first), each counted for its innermost stage frame (so the encoder's time goes to the
    stage that called it, and is also counted as ``in_encoder``), else its library; samples of
    threads waiting (idle) are left out."""
    busy: Counter[str] = Counter()
    in_encoder: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in ("select", "poll", "wait", "sleep", "_worker (concurrent")):
            continue  # a thread blocked, not working
        where = next(  # the stages proper first: the encoder's time goes to its caller
            (name for frame in reversed(frames) for name, keys in STAGES[:-1]
             if any(k in frame for k in keys)),
            None,
        ) or next(
            (name for name, keys in STAGES[-1:] if any(k in f for f in frames for k in keys)),
            None,
        ) or next(
            (name for name, keys in LIBRARIES if any(k in f for f in frames for k in keys)),
            "other",
        )  # fmt: skip
        busy[where] += int(count)
        if any(k in f for f in frames for k in TORCH):
            in_encoder[where] += int(count)
    total = sum(busy.values()) or 1
    return {
        k: {"share": v / total, "in_encoder": in_encoder[k] / total} for k, v in busy.most_common()
    }


def run_worker(
    broker: Any,  # EmbeddedBroker or tests.kafka_broker.KafkaBroker: url and bootstrap
    catalog: list[Any],
    records: list[Record],
    workdir: Path,
    *,
    stages: bool,
    profile: str | None = None,
    rate: float | None = None,
    split: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """The ecrec-stream worker on its own topics: ingest only, or every stage on; a backlog,
    or (``rate``, every stage on) the records paced at that many events/s; ``split``: the
    drift agent in a second worker process (its own consumer group, ingest and labels off);
    ``workers``: that many worker processes in one consumer group (they split the partitions;
    paced runs only)."""
    if workers > 1 and (rate is None or split):
        raise ValueError("several workers: paced runs without --split only")
    names, env = isolated_worker(broker.bootstrap, "tw", PARTITIONS, labels=stages, drift=stages)
    tag = env["ECREC_APP_ID"]
    topics = {"items": names.items, "searches": names.searches, "clicks": names.clicks,
              "reviews": names.reviews}  # fmt: skip
    drift_worker = None
    drift_bases: list[str] = []
    if split:
        drift_port = free_port()
        drift_bases = [f"http://127.0.0.1:{drift_port}"]
        drift_env = {**env, "ECREC_APP_ID": f"{tag}-drift", "ECREC_INGEST__ENABLED": "false",
                     "ECREC_LABELS__ENABLED": "false"}  # fmt: skip
        env = {**env, "ECREC_DRIFT__ENABLED": "false"}
        drift_worker = worker_process(
            broker.url, workdir / f"{tag}-drift", drift_port, extra_env=drift_env
        ).start()
    ports = [free_port() for _ in range(workers)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    drift_bases = drift_bases or bases
    procs = [
        worker_process(broker.url, workdir / (tag if k == 0 else f"{tag}-{k}"), port, extra_env=env)
        for k, port in enumerate(ports)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc, base in zip(procs, bases, strict=True):
            proc.wait_http(f"{base}/ecrec/stats")
        if drift_worker is not None:
            drift_worker.wait_http(f"{drift_bases[0]}/ecrec/stats")
        worker_pids = [proc.proc.pid for proc in procs if proc.proc is not None]
        pid, base = worker_pids[0], bases[0]
        # the catalog first, and (with labels on) until every worker's title cache holds it
        _produce(broker.bootstrap, topics, _catalog_records(catalog, tag))
        valid_topics = [names.valid_searches, names.valid_clicks, names.valid_reviews, names.dlq]
        if stages:
            for b, p in zip(bases, worker_pids, strict=True):
                _wait_count(f"{b}/ecrec/stats", ("labels", "titles_known"), len(catalog), p)
        kinds = Counter(kind for kind, _, _ in records)
        spy = Profiler(pid, profile) if profile else None
        pids = worker_pids + ([drift_worker.proc.pid] if drift_worker and drift_worker.proc else [])
        cpu0, start = sum(map(proc_cpu_seconds, pids)), time.monotonic()
        threads0 = thread_cpu_seconds(pid)
        if rate is not None:
            sent_at: list[float] = []
            producing = threading.Thread(
                target=_produce, args=(broker.bootstrap, topics, records, rate, sent_at)
            )
            producing.start()
            paced = sustained_lags(bases, drift_bases, pids, records, rate, producing, sent_at)
            producing.join()
            result: dict[str, Any] = {
                "name": "ecrec-stream worker: every stage on, paced"
                + (", drift in a second process" if split else "")
                + (f", {workers} worker processes" if workers > 1 else ""),
                "events": len(records),
                "mix": dict(kinds),
                **paced,
            }
        else:
            # reads from the beginning; not made for paced runs (its fetching costs CPU)
            counter = OutputCounter(broker.bootstrap, valid_topics, batches=True)
            _produce(broker.bootstrap, topics, records)
            _wait_for(lambda: _events_out(counter) >= len(records), pid, 900,
                      lambda: f"ingest wrote {counter.count} of {len(records)}")  # fmt: skip
            result = {
                "name": "ecrec-stream worker: " + ("every stage on" if stages else "ingest only"),
                "events": len(records),
                "mix": dict(kinds),
                "ingest_s": time.monotonic() - start,
            }
            if stages:
                sessions_in = kinds["searches"] + kinds["clicks"]
                if sessions_in:
                    _wait_count(f"{base}/ecrec/stats", ("labels", "session_events_read"),
                                sessions_in, pid, timeout_s=3600)  # fmt: skip
                    result["session_labels_s"] = time.monotonic() - start
                if kinds["reviews"]:
                    _wait_count(f"{base}/ecrec/stats", ("labels", "reviews_read"),
                                kinds["reviews"], pid, timeout_s=3600)  # fmt: skip
                    result["review_labels_s"] = time.monotonic() - start
                _wait_count(f"{base}/ecrec/drift", ("counts", "events"), len(records), pid,
                            timeout_s=3600)  # fmt: skip
                result["drift_s"] = time.monotonic() - start
            result["seconds"] = seconds = time.monotonic() - start
            result["events_per_s"] = len(records) / seconds
        cpu = sum(map(proc_cpu_seconds, pids)) - cpu0
        result["cpu_us_per_event"] = cpu / len(records) * 1e6
        # the first worker's CPU by thread: its event loop, each model thread (the stages)
        threads = thread_cpu_seconds(pid)
        threads.subtract(threads0)
        result["thread_cpu_us_per_event"] = {
            name: seconds / len(records) * 1e6 for name, seconds in threads.most_common()
        }
        result["peak_rss_mb"] = sum(map(proc_peak_rss_mb, pids))
        if spy is not None:
            result["profile"] = spy.stop()
            result["flame_graph"] = str(spy.svg)
        if stages:
            result["label_counts"] = _label_stats(bases)
            drift = [httpx.get(f"{b}/ecrec/drift", timeout=10).json() for b in drift_bases]
            result["drift_counts"] = _sum_counts([d["counts"] for d in drift])
            # which detectors raised the (up to 20 most recent) alerts, and why
            result["drift_alerts"] = [
                {"detector": a["detector"], "reason": a["reason"]}
                for d in drift
                for a in d.get("alerts", [])
            ]
        return result
    finally:
        for proc in procs:
            proc.stop()
        if drift_worker is not None:
            drift_worker.stop()


def _events_out(counter: OutputCounter) -> int:
    counter.poll()
    return counter.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default="sessions,reviews")
    parser.add_argument("--events", type=int, default=12_000, help="session-mix events")
    parser.add_argument("--reviews", type=int, default=600, help="review-backlog reviews")
    parser.add_argument("--items", type=int, default=50_000, help="catalog size")
    parser.add_argument("--review-share", type=float, default=0.015, help="of session events")
    parser.add_argument("--profile", action="store_true", help="py-spy the all-stages worker")
    parser.add_argument(
        "--paced",
        metavar="MIX=RATE,...",
        help="instead of backlogs: each mix paced at RATE events/s for --seconds, every stage on "
        "(e.g. sessions=1000,reviews=100); reports each agent's lag",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="of paced traffic")
    parser.add_argument(
        "--split", action="store_true", help="paced: the drift agent in a second worker process"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="paced: worker processes in one consumer group (they split the partitions)",
    )
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="paced: the embedded Tansu, or Apache Kafka 3.9 on this machine (java 17 + mvn, "
        "fetched like the test suite's)",
    )
    args = parser.parse_args()
    if args.paced:
        paced(args)
        return
    catalog = _catalog(args.items)
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-throughput-"))
    rows, results = [], {}
    with EmbeddedBroker() as broker:
        for mix in args.mixes.split(","):
            tag = f"m{uuid.uuid4().hex[:6]}"
            n = args.events if mix == "sessions" else args.reviews
            records = mix_records(mix, catalog, n, tag, args.review_share)
            runs = [
                # the floor: every event, any kind, through one topic in and one out
                run_passthrough(broker.bootstrap, [(k, v) for _, k, v in records], workdir),
                run_worker(broker, catalog, records, workdir, stages=False),
                run_worker(broker, catalog, records, workdir, stages=True,
                           profile=f"throughput-{mix}" if args.profile else None),
            ]  # fmt: skip
            results[mix] = runs
            for r in runs:
                rows.append([mix, r["name"], r["events"], r["events_per_s"],
                             r["events_per_s"] / runs[0]["events_per_s"], r["cpu_us_per_event"],
                             r["peak_rss_mb"], r.get("session_labels_s", "-"),
                             r.get("review_labels_s", "-"), r.get("drift_s", "-")])  # fmt: skip
            if args.profile:
                prof = runs[-1]["profile"]
                report(f"throughput_profile_{mix}",
                       f"Where the worker's busy CPU goes, {mix} mix, every stage on (py-spy)",
                       ["stage", "share of busy samples", "of which in the encoder (torch)"],
                       [[k, f"{v['share']:.1%}", f"{v['in_encoder']:.1%}"]
                        for k, v in prof.items()], {"shares": prof})  # fmt: skip
    report(
        "throughput",
        f"Worker throughput, {args.items:,}-item catalog, embedded broker, same run",
        ["mix", "runtime", "events", "events/s", "x passthrough", "CPU µs/event", "peak RSS MB",
         "session labels s", "review labels s", "drift s"],
        rows,
        {"items": args.items, "results": results, "partitions": PARTITIONS},
    )  # fmt: skip


def paced_broker(kind: str) -> Any:
    """The broker of a paced run: Tansu embedded, or Apache Kafka (what the test suite's Kafka
    leg runs). Both get the worker's producer batching; on Tansu its table recovery reads
    each changelog's last batch to find the end (docs/broker.md)."""
    if kind == "kafka":
        from tests.kafka_broker import KafkaBroker

        return KafkaBroker()
    return EmbeddedBroker()


def paced(args: argparse.Namespace) -> None:
    """The sustained-rate check: each mix at its rate, every stage on, lags per agent."""
    rates = {mix: float(rate) for mix, rate in (kv.split("=") for kv in args.paced.split(","))}
    catalog = _catalog(args.items)
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-throughput-"))
    rows, results = [], {}
    with paced_broker(args.broker) as broker:
        for mix, rate in rates.items():
            tag = f"p{uuid.uuid4().hex[:6]}"
            records = mix_records(mix, catalog, int(rate * args.seconds), tag, args.review_share)
            r = run_worker(broker, catalog, records, workdir, stages=True, rate=rate,
                           profile=f"throughput-paced-{mix}" if args.profile else None,
                           split=args.split, workers=args.workers)  # fmt: skip
            results[mix] = r
            lags = ", ".join(f"{a} {v:.1f}" for a, v in r["max_lag_s"].items())
            counts = [r.get("label_counts", {}).get(f"{t}_counts", {})
                      for t in ("relevance", "sentiment")]  # fmt: skip
            variants = "{} / {}".format(*(sum(c.get(k, 0) for c in counts)
                                          for k in ("augmented", "augment_shed")))  # fmt: skip
            rows.append([mix, args.broker, r["name"].split(": ", 1)[1], rate, r["events"],
                         r["sent_s"], lags, "yes" if r["kept_up"] else "no", variants,
                         r["cpu_us_per_event"], r["peak_rss_mb"]])  # fmt: skip
    report(
        "throughput_sustained",
        f"Worker with every stage on, paced traffic, {args.items:,}-item catalog",
        ["mix", "broker", "worker", "events/s", "events", "sent in s", "max lag s (agent)",
         "kept up (< 10 s)", "variants made / shed", "CPU µs/event", "peak RSS MB"],
        rows,
        {"items": args.items, "seconds": args.seconds, "broker": args.broker, "results": results},
    )  # fmt: skip
    console.print(
        "first worker's CPU µs per event by thread: "
        + "; ".join(
            f"{mix}: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["thread_cpu_us_per_event"].items())
            for mix, r in results.items()
        )
    )
    for mix, r in results.items():
        by_detector = Counter(a["detector"] for a in r.get("drift_alerts", []))
        console.print(f"{mix}: drift alerts by detector: {dict(by_detector) or 'none'}")


if __name__ == "__main__":
    main()
