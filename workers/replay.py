"""Feed JSONL or CSV files into a topic."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecrec_stream.config import Settings
from streams.kafka import new_producer

DEFAULT_KEYS = {
    "item": "item_id",
    "review": "item_id",
    "search": "session_id",
    "click": "session_id",
}


def topic_for(name: str, settings: Settings) -> tuple[str, str | None]:
    """Map an input kind (``item``...) to its topic; any other name is taken as a topic."""
    kinds = {kind: raw for kind, (raw, _) in settings.topics.routes().items()}
    if name in kinds:
        return kinds[name], name
    kind_of = {v: k for k, v in kinds.items()}
    return name, kind_of.get(name)


def _cell(value: str) -> Any:
    """CSV cells: JSON literals (numbers, lists, objects, true/false) are decoded, the rest kept
    as strings, so a CSV can carry ``category_path`` as ``["a","b"]``."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def read_records(path: Path) -> Iterator[bytes]:
    """Raw payloads: JSONL lines are passed through untouched, CSV rows become JSON objects."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                doc = {k: _cell(v) for k, v in row.items() if k and v != ""}
                yield json.dumps(doc).encode()
    else:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip(b"\r\n")


def _key(payload: bytes, field: str | None) -> bytes | None:
    if field is None:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    value = doc.get(field) if isinstance(doc, dict) else None
    return str(value).encode() if value is not None else None


def replay_file(
    path: Path, topic: str, settings: Settings, bootstrap: str, *, key_field: str | None = None
) -> int:
    """Send every record of ``path`` to ``topic``; returns how many were sent."""
    topic_name, kind = topic_for(topic, settings)
    field = key_field or (DEFAULT_KEYS.get(kind) if kind else None)
    producer = new_producer(bootstrap)
    sent = 0
    for payload in read_records(path):
        producer.produce(topic_name, value=payload, key=_key(payload, field))
        sent += 1
        if sent % 10_000 == 0:
            producer.flush()
        else:
            producer.poll(0)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} records were not acknowledged by the broker")
    return sent
