"""Memory of the processes that hold models: the trainer's retrain of N examples over a catalog
of M items, and an index replica holding the same catalog, each in a process of its own.

    python -m bench.memory [--examples 10000] [--items 50000] [--epochs 1]

Trainer: the trainer's own :class:`Retrainer` with the packaged all-MiniLM-L6-v2 (the
default model), once as it was (no gradient checkpointing, glibc's malloc defaults: the
baseline) and once as ``ecrec-stream trainer`` runs now, on the ``bench.retrain`` workload
(real Instacart titles and size variants of them; relevant (query, item) examples) in a
:class:`ReplayBuffer`; one retrain: buffer split, fine-tuning, the gate's evaluation over the
whole catalog with the serving and the candidate model. Replica: a :class:`LiveItemIndex` (the
default ``auto`` backend, lexical index on) loading the catalog through the packaged model.
Per phase: the process's RSS and its peak so far (``VmRSS`` / ``VmHWM``). The worker's peak
RSS is bench.throughput's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import report


def _rss() -> dict[str, float]:
    """This process's RSS and peak RSS in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out["VmRSS"], "peak_mb": out["VmHWM"]}


def trainer(
    n_examples: int, n_items: int, epochs: int, checkpointing: str, glibc_defaults: bool
) -> list[dict[str, Any]]:
    from bench.retrain import workload
    from ecrec_stream.config import EmbeddingSettings, TrainingSettings
    from ecrec_stream.training import ReplayBuffer, Retrainer
    from ecrec_stream.training.registry import ModelRegistry
    from workers.trainer import return_large_allocations_to_the_os

    if not glibc_defaults:  # as `ecrec-stream trainer` starts
        return_large_allocations_to_the_os()
    phases = [{"phase": "started", **_rss()}]
    catalog, examples = workload(n_items, n_examples)
    phases.append({"phase": f"catalog ({n_items:,}) and examples ({n_examples:,}) built", **_rss()})
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(Path(tmp) / "models")  # the base model is its first version
        settings = TrainingSettings(
            epochs=epochs,
            device="cpu",
            gradient_checkpointing=checkpointing,  # type: ignore[arg-type]
        )
        retrainer = Retrainer(settings, registry, EmbeddingSettings())
        version, model = retrainer.serving()
        buffer = ReplayBuffer(20_000, 0)
        buffer.add(examples)
        phases.append({"phase": "serving model loaded, examples buffered", **_rss()})
        started = time.perf_counter()
        retrainer.embedded_catalog(version, model, catalog)
        phases.append(
            {"phase": "serving catalog embedded", **_rss(), "s": time.perf_counter() - started}
        )
        started = time.perf_counter()
        split = buffer.split(settings.holdout_recent, settings.holdout_older)
        outcome = retrainer.retrain(split, catalog, trigger="bench.memory")
        phases.append(
            {
                "phase": "retrained (fine-tune + gate over the catalog)",
                **_rss(),
                "s": time.perf_counter() - started,
                "published": outcome.manifest is not None,
            }
        )
    return phases


def replica(n_items: int) -> list[dict[str, Any]]:
    from bench.retrain import workload
    from ecrec_stream.contracts.events import ItemEvent, utc_now
    from ecrec_stream.embedding import SentenceTransformerEncoder
    from ecrec_stream.index import LiveItemIndex

    phases = [{"phase": "started", **_rss()}]
    catalog, _ = workload(n_items, 0)
    live = LiveItemIndex(SentenceTransformerEncoder())
    phases.append({"phase": "model loaded", **_rss()})
    now, started = utc_now(), time.perf_counter()
    ids = list(catalog)
    for start in range(0, len(ids), 1024):
        live.apply_many(
            [
                ItemEvent(event_id=f"e{i}", ts=now, op="upsert", item_id=i, title=catalog[i])
                for i in ids[start : start + 1024]
            ]
        )
    if live.retrain_due():
        live.retrain_index()
    phases.append(
        {
            "phase": f"{n_items:,} items embedded and indexed ({live.stats()['backend']})",
            **_rss(),
            "s": time.perf_counter() - started,
        }
    )
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--child", choices=["trainer", "replica"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--glibc-defaults", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "trainer":
        phases = trainer(
            args.examples, args.items, args.epochs, args.checkpointing, args.glibc_defaults
        )
        print(json.dumps(phases))
        return
    if args.child == "replica":
        print(json.dumps(replica(args.items)))
        return
    rows, data = [], {}
    # the trainer as it was (the baseline: no gradient checkpointing, glibc's malloc defaults),
    # then as `ecrec-stream trainer` runs now
    runs = [("trainer, before (baseline)", "trainer", ["--checkpointing", "off",
                                                       "--glibc-defaults"]),
            ("trainer (default)", "trainer", ["--checkpointing", "auto"]),
            ("replica", "replica", [])]  # fmt: skip
    for name, child, options in runs:
        out = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--child", child, "--examples",
             str(args.examples), "--items", str(args.items), "--epochs", str(args.epochs),
             *options],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        data[name] = phases = json.loads(out.stdout.strip().splitlines()[-1])
        rows += [[name, p["phase"], p["rss_mb"], p["peak_mb"], p.get("s", "")] for p in phases]
    report(
        "memory",
        f"RSS by phase: trainer retrain of {args.examples:,} examples over {args.items:,} "
        f"items, replica of {args.items:,} items (all-MiniLM-L6-v2, CPU)",
        ["process", "phase", "RSS MB", "peak RSS MB", "seconds"],
        rows,
        {"examples": args.examples, "items": args.items, "epochs": args.epochs, **data},
    )


if __name__ == "__main__":
    main()
