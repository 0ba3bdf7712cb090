"""Helpers shared by the benchmarks: processes, resource readings, output."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from ecrec_stream.contracts.events import ReviewEvent

RESULTS = Path(os.environ.get("ECREC_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
# ../shared/data beside the checkout; ECREC_SHARED_DATA points elsewhere (a GPU machine gets
# a copy inside the working tree)
SHARED_DATA = Path(
    os.environ.get("ECREC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
console = Console(width=150)
CLOTHING_REVIEWS = SHARED_DATA / "womens_clothing_reviews" / "reviews.csv"


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a Linux ``stat`` file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """User + system CPU seconds of a running process's threads, by name (Linux /proc): the
    event loop as ``main``, the worker's model threads by their names (``ecrec-drift``, ...;
    :func:`ecrec_stream.device.name_os_thread`), librdkafka's as ``librdkafka``, the rest by their
    OS names. A thread that ended is missing."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            seconds = _stat_cpu_seconds(task / "stat")
        except OSError:  # ended meanwhile
            continue
        name = (
            "main" if task.name == str(pid) else "librdkafka" if comm.startswith("rdk:") else comm
        )
        out[name] += seconds
    return out


def _proc_status_mb(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_peak_rss_mb(pid: int) -> float:
    return _proc_status_mb(pid, "VmHWM")


def rss_mb() -> float:
    """This process' resident memory now, in MB."""
    return _proc_status_mb("self", "VmRSS")


def instacart_titles() -> list[str]:
    """The product names of the Instacart catalog in ../shared/data (9,288)."""
    from workers.simulate import load_instacart_catalog

    return [item.title for item in load_instacart_catalog(SHARED_DATA / "instacart_catalog")]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def machine() -> dict[str, Any]:
    torch = sys.modules.get("torch")  # only when the benchmark uses it
    gpu = torch.cuda.get_device_name() if torch and torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def report(
    name: str, title: str, columns: list[str], rows: list[list[Any]], data: dict[str, Any]
) -> Path:
    """Print a table and write ``bench/results/<name>.json``."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {path}")
    return path


def cached_vectors(prefix: str, key: str, texts: list[str], encode: Any) -> Any:
    """``encode(texts)``, kept in ``bench/.cache/<prefix>-<digest>.npy`` for the next run
    (``key`` names the model: another model's vectors are never reused)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha1("\n".join([key, *texts]).encode()).hexdigest()[:16]
    path = Path(__file__).resolve().parent / ".cache" / f"{prefix}-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = encode(texts)
    path.parent.mkdir(exist_ok=True)
    np.save(path, vectors)
    return vectors


class TableEncoder:
    """The real encoder's vectors of known texts, looked up (``cached_vectors`` keeps them in
    bench/.cache, so a rerun embeds nothing); any other text raises ``KeyError``."""

    def __init__(self, encoder: Any, table: dict[str, Any]) -> None:
        self.dim, self.name, self.version = encoder.dim, encoder.name, encoder.version
        self.table = table

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        return np.stack([self.table[t] for t in texts])


def cached_encoder(cache: str, encoder: Any, texts: list[str]) -> TableEncoder:
    """A :class:`TableEncoder` of ``texts`` (embedded once, cached under ``cache``)."""
    vectors = cached_vectors(cache, encoder.version, texts, encoder.encode)
    return TableEncoder(encoder, dict(zip(texts, vectors, strict=True)))


def isolated_worker(
    bootstrap: str, prefix: str, partitions: int, *, labels: bool, drift: bool
) -> tuple[Any, dict[str, str]]:
    """Topics (created) and environment of a stream worker of its own: topic names and
    consumer group under a fresh tag, the label and drift agents on or off (a second role
    process on the same topics: the same environment with another ``ECREC_APP_ID``)."""
    import uuid

    from ecrec_stream.config import TopicNames
    from streams.kafka import all_topics, ensure_topics

    tag = f"{prefix}{uuid.uuid4().hex[:6]}"
    names = TopicNames(**{f: f"{tag}.{v}" for f, v in TopicNames().model_dump().items()})
    ensure_topics(bootstrap, all_topics(names), partitions)
    env = {f"ECREC_TOPICS__{f.upper()}": v for f, v in names.model_dump().items()}
    env.update(
        ECREC_APP_ID=tag,
        ECREC_PARTITIONS=str(partitions),
        ECREC_LABELS__ENABLED=str(labels).lower(),
        ECREC_DRIFT__ENABLED=str(drift).lower(),
    )
    return names, env


def clothing_review_rows(limit: int | None = None) -> list[dict[str, str]]:
    """The real clothing reviews (CSV rows) that have a text, in file order."""
    with open(CLOTHING_REVIEWS, encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["Review Text"].strip()][:limit]


def clothing_review_events(rows: list[dict[str, str]], offset: int = 0) -> list[ReviewEvent]:
    """``rows`` as review events a second apart, ids ``r<offset + i>``."""
    from ecrec_stream.contracts.events import ReviewEvent, utc_now

    start = utc_now()
    return [
        ReviewEvent(
            event_id=f"r{offset + i}",
            ts=start + timedelta(seconds=i),
            item_id=r["Clothing ID"],
            rating=int(r["Rating"]),
            title=r["Title"],
            text=r["Review Text"],
            user_id=f"u{offset + i}",
        )
        for i, r in enumerate(rows)
    ]
