"""A live, searchable item index: apply catalog events in micro-batches, search, snapshot.

Embedding happens outside the lock (it is the slow part and releases the GIL); FAISS and the
store change under the lock, so a search sees a batch either entirely or not at all.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ecrec_stream.config import IndexSettings
from ecrec_stream.embedding import Encoder, item_text
from ecrec_stream.events import ItemEvent, utc_now
from ecrec_stream.index.faiss_index import FaissItemIndex
from ecrec_stream.index.persist import Offsets, SnapshotData, read_snapshot, write_snapshot
from ecrec_stream.index.store import ItemStore, StoredItem

FRESHNESS_WINDOW = 2_000  # at most this many recent upserts...
FRESHNESS_WINDOW_S = 30.0  # ...applied in the last 30 s


@dataclass(frozen=True, slots=True)
class ApplyStats:
    """What one :meth:`LiveItemIndex.apply_many` call did."""

    upserted: int
    deleted: int
    stale_skipped: int
    embedded: int


@dataclass(frozen=True, slots=True)
class ItemResult:
    item: ItemEvent
    score: float


def plan_batch(events: Sequence[ItemEvent], store: ItemStore) -> tuple[dict[str, ItemEvent], int]:
    """Collapse a batch to the last effective event per item, skipping stale ones.

    An event older (by event time) than what the store or an earlier event of the same batch
    already applied is stale: redelivered or reordered data never goes back in time.
    """
    latest: dict[str, ItemEvent] = {}
    stale = 0
    for event in events:
        seen = latest.get(event.item_id)
        if (seen is not None and event.ts < seen.ts) or (
            seen is None and store.is_stale(event.item_id, event.ts)
        ):
            stale += 1
            continue
        latest[event.item_id] = event
    return latest, stale


class LiveItemIndex:
    """FAISS vectors + item store + freshness accounting for one index replica."""

    def __init__(self, encoder: Encoder, settings: IndexSettings | None = None) -> None:
        self.settings = settings or IndexSettings()
        self.encoder = encoder
        self.index = self._new_faiss()
        self.store = ItemStore()
        self._lock = threading.RLock()
        self._lags_s: deque[tuple[float, float]] = deque(maxlen=FRESHNESS_WINDOW)
        self.applied_events = 0
        self.items_embedded = 0
        self.last_applied_at: datetime | None = None

    def _new_faiss(self) -> FaissItemIndex:
        return FaissItemIndex(
            self.encoder.dim,
            backend=self.settings.backend,
            nlist=self.settings.ivf_nlist,
            nprobe=self.settings.ivf_nprobe,
        )

    def __len__(self) -> int:
        return len(self.index)

    def apply_many(self, events: Sequence[ItemEvent]) -> ApplyStats:
        """Apply a micro-batch of upserts and deletes (idempotent under redelivery)."""
        with self._lock:
            plan, stale = plan_batch(events, self.store)
        upserts = [e for e in plan.values() if not e.is_delete]
        deletes = [e for e in plan.values() if e.is_delete]
        vectors = self.encoder.encode([item_text(e) for e in upserts])
        with self._lock:
            # One writer (the replica's consumer thread) plans and applies, so the plan made
            # above is still valid here; searches only ever see whole batches.
            now = utc_now()
            self.index.upsert_many([e.item_id for e in upserts], vectors)
            for event in upserts:
                self.store.put(event, now)
                self._lags_s.append((time.monotonic(), (now - event.ts).total_seconds()))
            self.index.delete_many([e.item_id for e in deletes])
            for event in deletes:
                self.store.remove(event.item_id, event.ts)
            self.applied_events += len(events)
            self.items_embedded += len(upserts)
            self.last_applied_at = now
        return ApplyStats(len(upserts), len(deletes), stale, len(upserts))

    def search(self, query: str, k: int) -> list[ItemResult]:
        """The ``k`` items closest to ``query``, best first."""
        vector = self.encoder.encode([query])
        with self._lock:
            hits = self.index.search(vector, k)[0]
            results = []
            for hit in hits:
                stored = self.store.get(hit.item_id)
                if stored is not None:
                    results.append(ItemResult(stored.item, hit.score))
        return results

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            return self.store.get(item_id)

    def freshness(self, window_s: float = FRESHNESS_WINDOW_S) -> dict[str, float | int | None]:
        """Event-time to searchable lag of the upserts applied in the last ``window_s``
        seconds (at most the last 2,000), in seconds."""
        since = time.monotonic() - window_s
        with self._lock:
            lags = np.asarray([lag for at, lag in self._lags_s if at >= since], dtype=np.float64)
        if lags.size == 0:
            return {"n": 0, "p50_s": None, "p99_s": None, "max_s": None}
        return {
            "n": int(lags.size),
            "p50_s": float(np.percentile(lags, 50)),
            "p99_s": float(np.percentile(lags, 99)),
            "max_s": float(lags.max()),
        }

    # -- snapshots ----------------------------------------------------------------------
    def save_snapshot(self, data_dir: Path, offsets: Offsets) -> Path:
        """Persist everything needed to resume at ``offsets`` without re-embedding."""
        with self._lock:
            blob, meta = self.index.to_state()
            snap = SnapshotData(
                model=self.encoder.name,
                index_blob=blob,
                index_meta=meta,
                items=[(s.item, s.indexed_at) for s in self.store],
                tombstones=self.store.tombstones,
                offsets={t: dict(p) for t, p in offsets.items()},
                created_at=utc_now(),
            )
        return write_snapshot(data_dir, snap, keep=self.settings.snapshot_keep)

    def load_snapshot(self, data_dir: Path) -> Offsets | None:
        """Restore from the newest snapshot; returns its offsets, or ``None`` if there is none.

        If the snapshot was made with another model or dimension, the stored items are
        re-embedded with the current encoder instead of loading the old vectors.
        """
        snap = read_snapshot(data_dir)
        if snap is None:
            return None
        with self._lock:
            self.store = ItemStore()
            self.store.restore_tombstones(snap.tombstones)
            for item, indexed_at in snap.items:
                self.store.put(item, indexed_at)
            same_model = (
                snap.model == self.encoder.name and snap.index_meta.get("dim") == self.encoder.dim
            )
            if same_model:
                self.index = FaissItemIndex.from_state(snap.index_blob, snap.index_meta)
            else:
                self.index = self._new_faiss()
        if not same_model:
            self.reembed_all()
        return snap.offsets

    def reembed_all(self, batch_size: int = 256) -> int:
        """Re-embed every stored item with the current encoder into a fresh index, then swap."""
        with self._lock:
            items = [s.item for s in self.store]
        fresh = self._new_faiss()
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            fresh.upsert_many(
                [i.item_id for i in chunk], self.encoder.encode([item_text(i) for i in chunk])
            )
        with self._lock:
            self.index = fresh
            self.items_embedded += len(items)
        return len(items)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "items": len(self.index),
                "tombstones": len(self.store.tombstones),
                "applied_events": self.applied_events,
                "items_embedded": self.items_embedded,
                "last_applied_at": self.last_applied_at.isoformat()
                if self.last_applied_at
                else None,
                "backend": "ivf" if self.index.is_trained_ivf else "flat",
                "model": self.encoder.name,
            }
