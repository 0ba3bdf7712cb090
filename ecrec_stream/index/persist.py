"""Crash-safe snapshots of a live index: vectors, id map, item store and consumed offsets.

Layout under the replica's data directory::

    CURRENT                    name of the newest complete snapshot (replaced atomically)
    snap-000000000042/
        manifest.json          model, dimension, counts, offsets, sha256 of each file
        index.faiss            serialised FAISS index
        items.jsonl            one stored item per line
        tombstones.json        item id -> event time of its delete
        lexical.sqlite         the lexical (FTS5) index, serialised (absent if it is off)

A snapshot is written into ``snap-N.tmp``, fsynced, renamed to ``snap-N`` and only then named
in ``CURRENT`` (write-then-rename twice), so a crash at any point leaves the previous snapshot
intact. Offsets are the *next* offsets to read, per topic and partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ecrec_stream.contracts.events import ItemEvent
from ecrec_stream.exceptions import SnapshotError

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.jsonl"
TOMBSTONES_FILE = "tombstones.json"
LEXICAL_FILE = "lexical.sqlite"
CORE_FILES = {INDEX_FILE, ITEMS_FILE, TOMBSTONES_FILE, LEXICAL_FILE}
FORMAT_VERSION = 1

Offsets = dict[str, dict[int, int]]


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """What a snapshot holds, in memory (``model``: the encoder's version, a content digest)."""

    model: str
    index_blob: bytes
    index_meta: dict[str, Any]
    items: list[tuple[ItemEvent, datetime]]
    tombstones: dict[str, datetime]
    offsets: Offsets
    created_at: datetime
    lexical_blob: bytes | None = None  # None: no lexical index (off, or an older snapshot)
    # other stages' state taken at the same offsets (file name -> bytes), e.g. the recommender
    extras: dict[str, bytes] = field(default_factory=dict)


def _fsync_file(path: Path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(data_dir: Path, snap: SnapshotData, *, keep: int = 2) -> Path:
    """Write ``snap`` atomically under ``data_dir`` and prune all but the newest ``keep``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = _snapshot_dirs(data_dir)
    seq = (int(existing[-1].name.split("-")[1]) + 1) if existing else 1
    final = data_dir / f"snap-{seq:012d}"
    tmp = data_dir / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    items_blob = "".join(
        json.dumps({"item": item.model_dump(mode="json"), "indexed_at": at.isoformat()}) + "\n"
        for item, at in snap.items
    ).encode("utf-8")
    tomb_blob = json.dumps({k: v.isoformat() for k, v in snap.tombstones.items()}).encode()
    files = {
        INDEX_FILE: _fsync_file(tmp / INDEX_FILE, snap.index_blob),
        ITEMS_FILE: _fsync_file(tmp / ITEMS_FILE, items_blob),
        TOMBSTONES_FILE: _fsync_file(tmp / TOMBSTONES_FILE, tomb_blob),
    }
    if snap.lexical_blob is not None:
        files[LEXICAL_FILE] = _fsync_file(tmp / LEXICAL_FILE, snap.lexical_blob)
    for name, blob in snap.extras.items():
        if name in files or name == MANIFEST or "/" in name:
            raise SnapshotError(f"snapshot extra {name!r} clashes with a snapshot file")
        files[name] = _fsync_file(tmp / name, blob)
    manifest = {
        "format": FORMAT_VERSION,
        "created_at": snap.created_at.isoformat(),
        "model": snap.model,
        "index_meta": snap.index_meta,
        "n_items": len(snap.items),
        "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in snap.offsets.items()},
        "sha256": files,
    }
    _fsync_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    pointer_tmp = data_dir / f"{CURRENT}.tmp"
    _fsync_file(pointer_tmp, final.name.encode())
    os.replace(pointer_tmp, data_dir / CURRENT)
    _fsync_dir(data_dir)
    for old in _snapshot_dirs(data_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _snapshot_dirs(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("snap-*") if p.is_dir() and not p.name.endswith(".tmp"))


def snapshot_model(data_dir: Path) -> str | None:
    """The model version (content digest) of the newest snapshot's vectors, read from its
    manifest alone; ``None`` when there is no readable snapshot."""
    pointer = data_dir / CURRENT
    try:
        manifest = json.loads((data_dir / pointer.read_text().strip() / MANIFEST).read_text())
        return str(manifest["model"])
    except (OSError, ValueError, KeyError):
        return None


def read_snapshot(data_dir: Path) -> SnapshotData | None:
    """Load the snapshot named in ``CURRENT``; ``None`` when there is none yet."""
    pointer = data_dir / CURRENT
    if not pointer.exists():
        return None
    snap_dir = data_dir / pointer.read_text().strip()
    try:
        manifest = json.loads((snap_dir / MANIFEST).read_text())
        blobs = {name: (snap_dir / name).read_bytes() for name in manifest["sha256"]}
    except (OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"snapshot {snap_dir} is unreadable: {exc}") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise SnapshotError(f"snapshot {snap_dir} has unknown format {manifest.get('format')}")
    for name, digest in manifest["sha256"].items():
        if hashlib.sha256(blobs[name]).hexdigest() != digest:
            raise SnapshotError(f"snapshot file {snap_dir / name} fails its checksum")
    items = []
    for line in blobs[ITEMS_FILE].decode("utf-8").splitlines():
        row = json.loads(line)
        items.append(
            (
                ItemEvent.model_validate(row["item"], strict=False),
                datetime.fromisoformat(row["indexed_at"]),
            )
        )
    tombstones = {
        k: datetime.fromisoformat(v) for k, v in json.loads(blobs[TOMBSTONES_FILE]).items()
    }
    offsets = {
        t: {int(p): int(o) for p, o in parts.items()} for t, parts in manifest["offsets"].items()
    }
    return SnapshotData(
        model=manifest["model"],
        index_blob=blobs[INDEX_FILE],
        index_meta=manifest["index_meta"],
        items=items,
        tombstones=tombstones,
        offsets=offsets,
        created_at=datetime.fromisoformat(manifest["created_at"]),
        lexical_blob=blobs.get(LEXICAL_FILE),
        extras={n: b for n, b in blobs.items() if n not in CORE_FILES},
    )


__all__ = ["Offsets", "SnapshotData", "read_snapshot", "snapshot_model", "write_snapshot"]
