"""Ingest throughput: the stream worker (validate + route + batch) vs a raw Faust passthrough,
and the same worker with its drift and label agents on (their effect on ingest, and how long
they take to catch up).

All run as separate processes against the same embedded broker in the same run, on the same
backlog of review events (1% malformed; real clothing-review texts from ../shared/data when
present, so the drift agent embeds fresh texts), each reading one 4-partition input topic. The
clock starts when the backlog is produced (after the consumer group has formed and a warm-up
record went through) and stops when the bench's reader has seen every output.

With ``--agents`` the worker also runs with the drift agent, the label agents, and both on;
further clocks stop when ``/ecrec/drift`` and ``/ecrec/stats`` say those agents have read
every valid event (the drift agent reuses the label agents' cached embeddings when both run).

    python -m bench.ingest [--events 40000] [--agents]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import SHARED_DATA, isolated_worker, proc_cpu_seconds, proc_peak_rss_mb, report
from ecrec_stream.contracts.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import ensure_topics, new_producer, partition_reader
from workers.processes import worker_process

PARTITIONS = 4


REVIEWS = SHARED_DATA / "womens_clothing_reviews"
FALLBACK_TEXT = "Fits well, soft fabric, true to size. Would buy again in another colour."


@functools.cache  # one read of the CSV for all runs
def _review_texts() -> list[str]:
    path = REVIEWS / "reviews.csv"
    if not path.exists():
        return [FALLBACK_TEXT]
    with open(path, newline="", encoding="utf-8") as fh:
        return [t for r in csv.DictReader(fh) if (t := r["Review Text"].strip())]


def _payloads(n: int, tag: str, bad_rate: float, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    now = utc_now().isoformat()
    texts = _review_texts()
    out = []
    for i in range(n):
        key = f"item-{rng.randrange(500)}".encode()
        if rng.random() < bad_rate:
            out.append((key, b'{"event_id": "broken'))
        else:
            out.append(
                (
                    key,
                    json.dumps(
                        {
                            "event_id": f"{tag}-{i}",
                            "ts": now,
                            "item_id": key.decode(),
                            "rating": rng.randint(1, 5),
                            "title": "Nice",
                            "text": texts[i % len(texts)],
                        }
                    ).encode(),
                )
            )
    return out


class OutputCounter:
    """Counts records (or events inside batches) on output topics, from the beginning."""

    def __init__(self, bootstrap: str, topics: list[str], *, batches: bool) -> None:
        self.consumer = partition_reader(bootstrap, topics, name="bench")
        self.batches = batches
        self.count = 0
        self.dead_letters = 0

    def poll(self, timeout: float = 0.1) -> int:
        for msg in self.consumer.consume(1000, timeout=timeout):
            if msg.error() is not None:
                continue
            if self.batches and ".valid." in msg.topic():
                self.count += json.loads(msg.value())["events"].__len__()
            else:
                self.count += 1
                self.dead_letters += msg.topic().endswith("dlq")
        return self.count

    def wait(self, target: int, timeout_s: float, pid: int) -> float:
        _wait_for(
            lambda: self.poll() >= target,
            pid,
            timeout_s,
            lambda: f"saw {self.count} of {target} outputs",
        )
        return time.monotonic()


def _wait_for(
    reached: Callable[[], bool],
    pid: int,
    timeout_s: float,
    describe: Callable[[], str],
    interval_s: float = 0.0,
) -> None:
    """Poll ``reached`` until true; fail fast if process ``pid`` exits, or after ``timeout_s``
    with ``describe()`` saying how far it got."""
    deadline = time.monotonic() + timeout_s
    while not reached():
        if not Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"process {pid} exited; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(describe())
        time.sleep(interval_s)


Probe = tuple[str, str, tuple[str, ...]]  # (result field, URL, JSON path to a count)


def _run(
    name: str,
    bootstrap: str,
    source: str,
    counter: OutputCounter,
    pid: int,
    payloads: list[tuple[bytes, bytes]],
    probes: tuple[Probe, ...] = (),
) -> dict[str, Any]:
    producer = new_producer(bootstrap)
    warm = json.loads(next(v for _, v in payloads if v.endswith(b"}")))
    warm["event_id"] = "warm-up"  # its own id: the drift agent drops repeated ids
    producer.produce(source, key=b"warm", value=json.dumps(warm).encode())
    producer.flush(30)
    counter.wait(1, timeout_s=120, pid=pid)  # group formed, pipeline warm
    seen0 = {field: _wait_count(url, path, 1, pid) for field, url, path in probes}
    cpu0 = proc_cpu_seconds(pid)
    start = time.monotonic()
    for key, value in payloads:
        producer.produce(source, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    end = counter.wait(1 + len(payloads), timeout_s=900, pid=pid)
    cpu = proc_cpu_seconds(pid) - cpu0
    seconds = end - start
    result: dict[str, Any] = {
        "name": name,
        "events": len(payloads),
        "seconds": seconds,
        "events_per_s": len(payloads) / seconds,
        "cpu_us_per_event": cpu / len(payloads) * 1e6,
    }
    valid = counter.count - counter.dead_letters - 1
    for field, url, path in probes:  # the agents behind ingest catching up
        _wait_count(url, path, seen0[field] + valid, pid)
        result[f"{field}_caught_up_s"] = time.monotonic() - start
    if probes:
        result["all_caught_up_s"] = time.monotonic() - start
        result["cpu_us_per_event"] = (proc_cpu_seconds(pid) - cpu0) / len(payloads) * 1e6
    result["peak_rss_mb"] = proc_peak_rss_mb(pid)
    return result


def _wait_count(
    url: str, path: tuple[str, ...], want: int, pid: int, timeout_s: float = 1800
) -> int:
    """Wait until the count at ``path`` in the JSON at ``url`` reaches ``want``; return it."""
    seen = 0

    def reached() -> bool:
        nonlocal seen
        doc: Any = httpx.get(url, timeout=10).json()
        for key in path:
            doc = doc.get(key, {})
        seen = int(doc or 0)
        return seen >= want

    _wait_for(reached, pid, timeout_s, lambda: f"{url} {'.'.join(path)}: {seen} of {want}", 0.2)
    return seen


def run_passthrough(
    bootstrap: str, payloads: list[tuple[bytes, bytes]], workdir: Path
) -> dict[str, Any]:
    """The baseline: a raw Faust passthrough process on its own topics (one in, one out),
    measured like ours on ``payloads`` (key, value)."""
    tag = f"bp{uuid.uuid4().hex[:6]}"
    src, dst = f"{tag}.in", f"{tag}.out"
    ensure_topics(bootstrap, [src, dst], PARTITIONS)
    with open(workdir / "passthrough.log", "wb") as log:
        base = subprocess.Popen(
            [sys.executable, "-m", "bench.passthrough", src, dst, bootstrap, tag],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        return _run(
            "raw Faust passthrough (baseline)",
            bootstrap,
            src,
            OutputCounter(bootstrap, [dst], batches=False),
            base.pid,
            payloads,
        )
    finally:
        base.terminate()
        base.wait(30)


def run_worker(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    workdir: Path,
    *,
    labels: bool = False,
    drift: bool = False,
) -> dict[str, Any]:
    """The ecrec-stream worker on its own topics and consumer group, with the label and drift
    agents on or off; the agents' catch-up is read from the worker's own pages."""
    names, env = isolated_worker(broker.bootstrap, "bi", PARTITIONS, labels=labels, drift=drift)
    tag = env["ECREC_APP_ID"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    probes: list[Probe] = []
    if labels:
        probes.append(("labels", f"{base}/ecrec/stats", ("labels", "reviews_read")))
    if drift:
        probes.append(("drift", f"{base}/ecrec/drift", ("counts", "events")))
    agents = " + ".join(["ingest", *(p[0] for p in probes)])
    worker = worker_process(broker.url, workdir / tag, port, extra_env=env).start()
    try:
        worker.wait_http(f"{base}/ecrec/stats")
        assert worker.proc is not None
        return _run(
            f"ecrec-stream worker: {agents}",
            broker.bootstrap,
            names.reviews,
            OutputCounter(broker.bootstrap, [names.valid_reviews, names.dlq], batches=True),
            worker.proc.pid,
            _payloads(args.events, tag, args.bad_rate),
            tuple(probes),
        )
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--bad-rate", type=float, default=0.01)
    parser.add_argument(
        "--agents",
        action="store_true",
        help="also run the worker with the drift agent, the label agents, and both on",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-ingest-"))
    results = []
    with EmbeddedBroker() as broker:
        payloads = _payloads(args.events, "bp", args.bad_rate)
        results.append(run_passthrough(broker.bootstrap, payloads, workdir))
        results.append(run_worker(broker, args, workdir))
        if args.agents:
            results.append(run_worker(broker, args, workdir, drift=True))
            results.append(run_worker(broker, args, workdir, labels=True))
            results.append(run_worker(broker, args, workdir, labels=True, drift=True))
    baseline = results[0]["events_per_s"]
    for r in results:
        r["vs_baseline"] = r["events_per_s"] / baseline
    report(
        "ingest",
        f"Ingest throughput, {args.events:,} review events, {args.bad_rate:.0%} "
        "malformed, embedded broker, same run",
        [
            "runtime",
            "events/s",
            "x baseline",
            "CPU µs/event",
            "peak RSS MB",
            "seconds",
            "labels caught up s",
            "drift caught up s",
        ],
        [
            [
                r["name"],
                r["events_per_s"],
                r["vs_baseline"],
                r["cpu_us_per_event"],
                r["peak_rss_mb"],
                r["seconds"],
                r.get("labels_caught_up_s", "-"),
                r.get("drift_caught_up_s", "-"),
            ]
            for r in results
        ],
        {
            "events": args.events,
            "bad_rate": args.bad_rate,
            "partitions": PARTITIONS,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
