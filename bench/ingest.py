"""Ingest throughput: the stream worker (validate + route + batch) vs a raw Faust passthrough.

Both run as separate processes against the same embedded broker in the same run, on the same
backlog of review events (1% malformed), each reading one 4-partition input topic. The clock
starts when the backlog is produced (after the consumer group has formed and a warm-up record
went through) and stops when the bench's reader has seen every output.

    python -m bench.ingest [--events 40000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import proc_cpu_seconds, proc_peak_rss_mb, report
from ecrec_stream.config import TopicNames
from ecrec_stream.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, partition_reader
from workers.processes import worker_process

PARTITIONS = 4


def _payloads(n: int, tag: str, bad_rate: float, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    now = utc_now().isoformat()
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
                            "text": "Fits well, soft fabric, "
                            "true to size. Would buy again in another colour.",
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

    def poll(self, timeout: float = 0.1) -> int:
        for msg in self.consumer.consume(1000, timeout=timeout):
            if msg.error() is not None:
                continue
            if self.batches and msg.topic().endswith("valid.reviews"):
                self.count += json.loads(msg.value())["events"].__len__()
            else:
                self.count += 1
        return self.count

    def wait(self, target: int, timeout_s: float, pid: int) -> float:
        deadline = time.monotonic() + timeout_s
        while self.poll() < target:
            if not Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"process {pid} exited; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {self.count} of {target} outputs")
        return time.monotonic()


def _run(
    name: str,
    bootstrap: str,
    source: str,
    counter: OutputCounter,
    pid: int,
    payloads: list[tuple[bytes, bytes]],
) -> dict[str, Any]:
    producer = new_producer(bootstrap)
    producer.produce(source, key=b"warm", value=payloads[0][1])
    producer.flush(30)
    counter.wait(1, timeout_s=120, pid=pid)  # group formed, pipeline warm
    cpu0 = proc_cpu_seconds(pid)
    start = time.monotonic()
    for key, value in payloads:
        producer.produce(source, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    end = counter.wait(1 + len(payloads), timeout_s=600, pid=pid)
    cpu = proc_cpu_seconds(pid) - cpu0
    seconds = end - start
    return {
        "name": name,
        "events": len(payloads),
        "seconds": seconds,
        "events_per_s": len(payloads) / seconds,
        "cpu_us_per_event": cpu / len(payloads) * 1e6,
        "peak_rss_mb": proc_peak_rss_mb(pid),
    }


def run_passthrough(bootstrap: str, events: int, bad_rate: float, workdir: Path) -> dict[str, Any]:
    """The baseline: a raw Faust passthrough process on its own topics, measured like ours."""
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
            _payloads(events, tag, bad_rate),
        )
    finally:
        base.terminate()
        base.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--bad-rate", type=float, default=0.01)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-ingest-"))
    results = []
    with EmbeddedBroker() as broker:
        results.append(run_passthrough(broker.bootstrap, args.events, args.bad_rate, workdir))
        # ecrec-stream ingest worker on its own topics and consumer group
        tag = f"bi{uuid.uuid4().hex[:6]}"
        names = TopicNames(**{f: f"{tag}.{v}" for f, v in TopicNames().model_dump().items()})
        ensure_topics(broker.bootstrap, all_topics(names), PARTITIONS)
        env = {f"ECREC_TOPICS__{f.upper()}": v for f, v in names.model_dump().items()}
        # ingest alone, like the baseline: the label agents are measured by bench.labels
        env.update(
            ECREC_APP_ID=tag,
            ECREC_PARTITIONS=str(PARTITIONS),
            ECREC_LABELS__ENABLED="false",
            ECREC_DRIFT__ENABLED="false",
        )
        port = free_port()
        worker = worker_process(broker.url, workdir, port, extra_env=env).start()
        try:
            worker.wait_http(f"http://127.0.0.1:{port}/ecrec/stats")
            assert worker.proc is not None
            results.append(
                _run(
                    "ecrec-stream ingest (validate + DLQ + batch)",
                    broker.bootstrap,
                    names.reviews,
                    OutputCounter(broker.bootstrap, [names.valid_reviews, names.dlq], batches=True),
                    worker.proc.pid,
                    _payloads(args.events, tag, args.bad_rate),
                )
            )
        finally:
            worker.stop()
    baseline = results[0]["events_per_s"]
    for r in results:
        r["vs_baseline"] = r["events_per_s"] / baseline
    report(
        "ingest",
        f"Ingest throughput, {args.events:,} review events, {args.bad_rate:.0%} "
        "malformed, embedded broker, same run",
        ["runtime", "events/s", "x baseline", "CPU µs/event", "peak RSS MB", "seconds"],
        [
            [
                r["name"],
                r["events_per_s"],
                r["vs_baseline"],
                r["cpu_us_per_event"],
                r["peak_rss_mb"],
                r["seconds"],
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
