"""Hostile input through the real broker: every record is accounted for, the worker stays up.

Generates mutations of valid events of every kind (byte flips, truncation, type swaps, extra
and missing fields, odd unicode) plus hand-picked hostile records (5,000-digit integers, deep
nesting, invalid UTF-8, NaN/Infinity, duplicate keys, multi-MB payloads), sends them to an
isolated stream worker on the embedded broker, and reads the valid and dead-letter topics until
every sent record is accounted for: inside a valid batch, or a dead letter with a reason. The
baseline, measured in the same run on the same worker, is as many unmutated valid events.

    python -m bench.fuzz [--inputs 10000] [--seed 7] [--labels]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import proc_cpu_seconds, proc_peak_rss_mb, report
from ecrec_stream.config import TopicNames
from ecrec_stream.contracts.events import utc_now
from streams.broker import EmbeddedBroker, free_port
from streams.kafka import all_topics, ensure_topics, new_producer, partition_reader
from workers.processes import wait_until, worker_process

PARTITIONS = 4
KINDS = ("item", "search", "click", "review")
ODD_UNICODE = ["\u200b", "\u202e", "\ufeff", "\x00", "\U0001f600", "\u0301", "\uffff", "\\ud800"]


def valid_doc(kind: str, i: int, tag: str) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": f"{tag}-{kind}-{i}", "ts": utc_now().isoformat()}
    if kind == "item":
        return base | {
            "op": "upsert",
            "item_id": f"sku-{i % 997}",
            "title": f"Organic whole milk {i} oz",
            "category_path": ["dairy", "milk"],
            "brand": "Acme",
            "price": 3.99,
            "attributes": {"size": "1 gal"},
        }
    if kind == "search":
        return base | {
            "search_id": f"q-{i}",
            "session_id": f"s-{i % 301}",
            "query": "whole milk",
            "impressions": [f"sku-{j}" for j in range(10)],
        }
    if kind == "click":
        return base | {
            "session_id": f"s-{i % 301}",
            "search_id": f"q-{i}",
            "item_id": f"sku-{i % 997}",
            "position": i % 10,
            "action": "click",
            "dwell_ms": 12_000,
        }
    return base | {"item_id": f"sku-{i % 997}", "rating": 1 + i % 5, "text": "Soft and warm."}


def _swap_type(value: Any, rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 1e308, "", "x" * 50, [], {}, [value], {"v": value}])


def mutate(doc: dict[str, Any], rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``doc``: its name and the bytes to send."""
    raw = json.dumps(doc).encode()
    how = rng.choice(
        ["flip", "truncate", "swap_type", "extra_field", "missing_field", "unicode", "valid"]
    )
    if how == "flip":
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return how, bytes(data)
    if how == "truncate":
        return how, raw[: rng.randrange(len(raw))]
    if how == "swap_type":
        key = rng.choice(sorted(doc))
        return how, json.dumps({**doc, key: _swap_type(doc[key], rng)}).encode()
    if how == "extra_field":
        return how, json.dumps({**doc, f"x{rng.randrange(99)}": rng.random()}).encode()
    if how == "missing_field":
        key = rng.choice(sorted(doc))
        return how, json.dumps({k: v for k, v in doc.items() if k != key}).encode()
    if how == "unicode":
        key = rng.choice([k for k, v in doc.items() if isinstance(v, str)])
        odd = "".join(rng.choice(ODD_UNICODE) for _ in range(rng.randint(1, 5)))
        text = json.dumps({**doc, key: doc[key] + "@@ODD@@"}, ensure_ascii=rng.random() < 0.5)
        return how, text.replace("@@ODD@@", odd).encode("utf-8", "surrogatepass")
    return how, raw


def hostile(doc: dict[str, Any], rng: random.Random) -> list[tuple[str, bytes]]:
    """The hand-picked hostile records, built around ``doc``."""
    raw = json.dumps(doc).encode()
    depth = rng.choice([100, 1_000, 50_000])
    return [
        ("huge_integer", raw[:-1] + b', "n": 1' + b"0" * 5_000 + b"}"),
        ("deep_nesting", raw[:-1] + b', "d": ' + b"[" * depth + b"]" * depth + b"}"),
        ("invalid_utf8", raw.replace(b'"event_id": "', b'"event_id": "\xc3\x28')),
        ("nan", raw[:-1] + b', "price": NaN}'),
        ("infinity", raw[:-1] + b', "rating": Infinity}'),
        ("duplicate_keys", raw[:-1] + b', "event_id": "dup"}'),
        ("multi_mb", raw[:-1] + b', "pad": "' + b"z" * rng.choice([70_000, 2_500_000]) + b'"}'),
    ]


def generate(n: int, seed: int, tag: str) -> list[tuple[str, str, bytes]]:
    """``n`` (kind, mutation, bytes) inputs: random mutations, and in 5% of draws the seven
    hand-picked hostile records (about a quarter of all inputs)."""
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes]] = []
    i = 0
    while len(out) < n:
        kind = KINDS[i % 4]
        doc = valid_doc(kind, i, tag)
        if rng.random() < 0.05:
            out += [(kind, how, data) for how, data in hostile(doc, rng)]
        else:
            out.append((kind, *mutate(doc, rng)))
        i += 1
    return out[:n]


def _topic(names: TopicNames, kind: str) -> str:
    return names.routes()[kind][0]  # type: ignore[index]  # kinds come from KINDS


def send(bootstrap: str, names: TopicNames, inputs: list[tuple[str, str, bytes]]) -> set[Any]:
    """Produce the inputs; return the (topic, partition, offset) of each."""
    producer = new_producer(bootstrap, **{"message.max.bytes": 8_000_000})
    positions: set[Any] = set()

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            raise RuntimeError(f"produce failed: {err}")
        positions.add((msg.topic(), msg.partition(), msg.offset()))

    for n, (kind, _, data) in enumerate(inputs):
        producer.produce(
            _topic(names, kind), key=f"k{n % 211}".encode(), value=data, on_delivery=delivered
        )
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("records left unsent")
    return positions


class Accountant:
    """Reads the valid and dead-letter topics and maps every input position to its fate."""

    def __init__(self, bootstrap: str, names: TopicNames) -> None:
        self.names = names
        valid = [v for _, v in names.routes().values()]
        self.consumer = partition_reader(bootstrap, [*valid, names.dlq], name="fuzz")
        self.valid_ranges: list[tuple[str, int, int, int]] = []  # topic, partition, first, last
        self.valid_events = 0
        self.dead: dict[Any, str] = {}
        self.max_message = 0

    def poll(self) -> None:
        for msg in self.consumer.consume(1000, timeout=0.2):
            if msg.error() is not None:
                continue
            self.max_message = max(self.max_message, len(msg.value()))
            doc = json.loads(msg.value())
            if msg.topic() == self.names.dlq:
                src = doc["source"]
                assert doc["reason"] and doc["error"], doc
                self.dead[(src["topic"], src["partition"], src["offset"])] = doc["reason"]
            else:
                src = doc["source"]
                self.valid_ranges.append(
                    (src["topic"], src["partition"], src["offset"], doc["last_offset"])
                )
                self.valid_events += len(doc["events"])

    def accounted(self) -> int:
        return self.valid_events + len(self.dead)


def run_phase(
    bootstrap: str, names: TopicNames, inputs: list[tuple[str, str, bytes]], acct: Accountant
) -> dict[str, Any]:
    start_events, start_dead = acct.valid_events, len(acct.dead)
    t0 = time.perf_counter()
    positions = send(bootstrap, names, inputs)
    want = acct.accounted() + len(inputs)
    deadline = time.monotonic() + 600
    while acct.accounted() < want and time.monotonic() < deadline:
        acct.poll()
    elapsed = time.perf_counter() - t0
    valid = acct.valid_events - start_events
    dead = len(acct.dead) - start_dead
    in_a_batch = {
        pos
        for pos in positions
        if pos not in acct.dead
        and any(
            t == pos[0] and p == pos[1] and first <= pos[2] <= last
            for t, p, first, last in acct.valid_ranges
        )
    }
    dead_positions = positions & set(acct.dead)
    return {
        "inputs": len(inputs),
        "valid": valid,
        "dead_letters": dead,
        "unaccounted": len(positions - dead_positions - in_a_batch),
        "seconds": elapsed,
        "records_per_s": len(inputs) / elapsed,
        "reasons": dict(Counter(acct.dead[p] for p in dead_positions)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--labels", action="store_true", help="run the label and drift agents too")
    args = parser.parse_args()
    tag = f"fuzz{uuid.uuid4().hex[:6]}"
    names = TopicNames(**{f: f"{tag}.{v}" for f, v in TopicNames().model_dump().items()})
    env = {f"ECREC_TOPICS__{f.upper()}": v for f, v in names.model_dump().items()}
    # --labels runs the worker's model-backed agents (label and drift) too
    model_agents = str(args.labels).lower()
    env |= {
        "ECREC_APP_ID": tag,
        "ECREC_LABELS__ENABLED": model_agents,
        "ECREC_DRIFT__ENABLED": model_agents,
    }
    fuzz = generate(args.inputs, args.seed, tag)
    baseline = [
        (KINDS[i % 4], "valid", json.dumps(valid_doc(KINDS[i % 4], i, f"{tag}b")).encode())
        for i in range(args.inputs)
    ]
    workdir = Path(tempfile.mkdtemp(prefix="ecrec-bench-fuzz-"))
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, all_topics(names), PARTITIONS)
        port = free_port()
        worker = worker_process(broker.url, workdir, port, extra_env=env).start()
        acct = Accountant(broker.bootstrap, names)
        try:
            worker.wait_http(f"http://127.0.0.1:{port}/ecrec/stats", timeout_s=180)
            import httpx

            wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{port}/ecrec/stats").json()["assigned"],
                timeout_s=60,
            )
            assert worker.proc is not None
            cpu0 = proc_cpu_seconds(worker.proc.pid)
            clean = run_phase(broker.bootstrap, names, baseline, acct)
            cpu1 = proc_cpu_seconds(worker.proc.pid)
            hostile_run = run_phase(broker.bootstrap, names, fuzz, acct)
            cpu2 = proc_cpu_seconds(worker.proc.pid)
            alive = worker.alive()
            rss = proc_peak_rss_mb(worker.proc.pid)
        finally:
            worker.stop()
    clean["worker_cpu_us_per_record"] = (cpu1 - cpu0) / clean["inputs"] * 1e6
    hostile_run["worker_cpu_us_per_record"] = (cpu2 - cpu1) / hostile_run["inputs"] * 1e6
    mutations = Counter(how for _, how, _ in fuzz)
    rows = [
        [
            name,
            p["inputs"],
            p["valid"],
            p["dead_letters"],
            p["unaccounted"],
            p["records_per_s"],
            p["worker_cpu_us_per_record"],
        ]
        for name, p in (("baseline: unmutated valid events", clean), ("fuzzed inputs", hostile_run))
    ]
    report(
        "fuzz",
        f"Hostile input through the real broker (worker alive at the end: {alive}; largest "
        f"output message {acct.max_message:,} B)",
        ["phase", "inputs", "valid", "dead letters", "unaccounted", "records/s", "CPU µs/record"],
        rows,
        {
            "baseline": clean,
            "fuzz": hostile_run,
            "mutations": dict(mutations),
            "worker_alive": alive,
            "worker_peak_rss_mb": rss,
            "largest_output_message_bytes": acct.max_message,
            "labels": args.labels,
            "seed": args.seed,
        },
    )
    print("dead-letter reasons:", hostile_run["reasons"])
    print("mutations:", dict(mutations))
    if not alive or hostile_run["unaccounted"] or clean["unaccounted"]:
        raise SystemExit("FAILED: a record is unaccounted for or the worker died")


if __name__ == "__main__":
    main()
