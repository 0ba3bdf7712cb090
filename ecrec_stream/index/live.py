"""A live, searchable item index: apply catalog events in micro-batches, search, snapshot,
and swap to a new encoder without a pause in search.

Embedding happens outside the lock (it is the slow part and releases the GIL); FAISS and the
store change under the lock, so a search sees a batch either entirely or not at all. The
encoder and the FAISS index built with it are one immutable :class:`ServingPair`, replaced in
one assignment: a search reads the pair once and uses it from start to end, so it never embeds
with one model and searches vectors of another.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np

from ecrec_stream.config import IndexSettings, SearchMode
from ecrec_stream.contracts.events import ItemEvent, utc_now
from ecrec_stream.embedding import Encoder, encode_items, item_text
from ecrec_stream.exceptions import IndexError_
from ecrec_stream.index.faiss_index import FaissItemIndex, SearchHit
from ecrec_stream.index.fusion import fuse
from ecrec_stream.index.lexical import Fts5Index, LexicalDoc
from ecrec_stream.index.persist import Offsets, SnapshotData, read_snapshot, write_snapshot
from ecrec_stream.index.ranker import LearnedFusion
from ecrec_stream.index.store import ItemStore, StoredItem, plan_batch

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
    """One search result: ``score`` is the mode's (cosine, BM25 or fused); the ranks (1-based)
    and scores in the dense and lexical lists say which retriever found it."""

    item: ItemEvent
    score: float
    model_version: str = ""
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None


def lexical_doc(item: ItemEvent) -> LexicalDoc:
    """The fields the lexical index holds: title, brand, category path."""
    return LexicalDoc(item.title or "", item.brand, " ".join(item.category_path))


@dataclass(frozen=True, slots=True)
class ServingPair:
    """An encoder and the index of vectors it made; replaced whole, never mixed."""

    encoder: Encoder
    index: FaissItemIndex

    @property
    def version(self) -> str:
        return self.encoder.version


@dataclass
class RebuildProgress:
    """A background re-embedding in progress (shown on ``/stats``)."""

    version: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    changed: set[str] = field(default_factory=set)  # items changed since the rebuild began

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "done": self.done,
            "total": self.total,
            "seconds": round(time.monotonic() - self.started, 3),
        }


# A rebuild's last catch-up (items changed during it) runs under the lock when at most this
# many are left: writers wait for that many embeddings at most; more are caught up outside it.
CATCH_UP_UNDER_LOCK = 64


class LiveItemIndex:
    """FAISS vectors + item store + freshness accounting for one index replica."""

    snapshot_extras: dict[str, bytes]  # what the loaded snapshot held beside the index

    def __init__(self, encoder: Encoder, settings: IndexSettings | None = None) -> None:
        self.settings = settings or IndexSettings()
        self.snapshot_extras = {}
        self._pair = ServingPair(encoder, self._new_faiss(encoder.dim))
        self.store = ItemStore()
        # Lexical matches do not depend on the model: one lexical index outlives every swap.
        self.lexical: Fts5Index | None = self._new_lexical()
        self._lock = threading.RLock()
        self._lags_s: deque[tuple[float, float]] = deque(maxlen=FRESHNESS_WINDOW)
        self._rebuild: RebuildProgress | None = None
        self.applied_events = 0
        self.items_embedded = 0
        self.swaps = 0
        self.ivf_retrains = 0
        # the hybrid fusion learned from the shop's clicks, once the trainer published one
        self.learned_fusion: LearnedFusion | None = None
        self.last_applied_at: datetime | None = None

    def _new_faiss(self, dim: int) -> FaissItemIndex:
        return FaissItemIndex(
            dim,
            backend=self.settings.backend,
            nlist=self.settings.ivf_nlist,
            nprobe=self.settings.ivf_nprobe,
            ivf_min_items=self.settings.ivf_min_items,
        )

    def _new_lexical(self) -> Fts5Index | None:
        return Fts5Index(self.settings.lexical_weights) if self.settings.lexical else None

    @property
    def serving(self) -> ServingPair:
        return self._pair

    @property
    def encoder(self) -> Encoder:
        return self._pair.encoder

    @property
    def index(self) -> FaissItemIndex:
        return self._pair.index

    def __len__(self) -> int:
        return len(self._pair.index)

    def apply_many(self, events: Sequence[ItemEvent]) -> ApplyStats:
        """Apply a micro-batch of upserts and deletes (idempotent under redelivery)."""
        while True:
            with self._lock:
                plan, stale = plan_batch(events, self.store)
                pair = self._pair
            upserts = [e for e in plan.values() if not e.is_delete]
            deletes = [e for e in plan.values() if e.is_delete]
            vectors = encode_items(pair.encoder, [item_text(e) for e in upserts])
            with self._lock:
                if self._pair is not pair:
                    continue  # swapped while embedding: embed again with the new model
                # One writer (the replica's consumer thread) plans and applies, so the plan
                # made above is still valid here; searches only ever see whole batches.
                now = utc_now()
                pair.index.upsert_many([e.item_id for e in upserts], vectors)
                for event in upserts:
                    self.store.put(event, now)
                    self._lags_s.append((time.monotonic(), (now - event.ts).total_seconds()))
                pair.index.delete_many([e.item_id for e in deletes])
                if self.lexical is not None:
                    self.lexical.upsert_many(
                        [e.item_id for e in upserts], [lexical_doc(e) for e in upserts]
                    )
                    self.lexical.delete_many([e.item_id for e in deletes])
                for event in deletes:
                    self.store.remove(event.item_id, event.ts)
                if self._rebuild is not None:  # the rebuild catches these up before its swap
                    self._rebuild.changed.update(plan)
                self.applied_events += len(events)
                self.items_embedded += len(upserts)
                self.last_applied_at = now
            return ApplyStats(len(upserts), len(deletes), stale, len(upserts))

    def resolve_mode(self, mode: str | None) -> SearchMode:
        """``mode``, or ``settings.search_mode`` when ``None``, checked against what this
        index holds (raises :class:`IndexError_` with the reason)."""
        mode = mode or self.settings.search_mode
        if mode not in get_args(SearchMode):
            raise IndexError_(f"unknown search mode {mode!r} (hybrid, dense or lexical)")
        if mode != "dense" and self.lexical is None:
            raise IndexError_(f"search mode {mode!r} needs the lexical index (index.lexical)")
        return mode  # type: ignore[return-value]  # checked against SearchMode above

    def search(self, query: str, k: int, mode: SearchMode | None = None) -> list[ItemResult]:
        """The ``k`` best items for ``query``, best first: by the vectors (``dense``), BM25
        (``lexical``) or both fused (``hybrid``); default ``settings.search_mode``. Dense
        results all come from one model version."""
        return self.search_many([query], k, mode)[0]

    def search_many(
        self, queries: Sequence[str], k: int, mode: SearchMode | None = None
    ) -> list[list[ItemResult]]:
        """:meth:`search` for each of ``queries``, the queries embedded in one encoder call
        and searched in one FAISS call (what a batch caller, such as the robustness miner,
        saves over one search per query). All results come from one model version."""
        mode = self.resolve_mode(mode)
        if not queries:
            return []
        depth = k if mode != "hybrid" else max(k, self.settings.hybrid_depth)
        pair = self._pair
        vectors = pair.encoder.encode(list(queries)) if mode != "lexical" else None
        learned = self.learned_fusion if self.settings.learned_fusion else None
        out: list[list[ItemResult]] = []

        def title_of(item_id: str) -> str | None:
            stored = self.store.get(item_id)
            return None if stored is None else stored.item.title

        with self._lock:
            dense_lists: list[list[SearchHit]] = (
                [[] for _ in queries] if vectors is None else pair.index.search(vectors, depth)
            )
            for query, dense in zip(queries, dense_lists, strict=True):
                lexical = (
                    self.lexical.search(query, depth) if mode != "dense" and self.lexical else []
                )
                if learned is not None and mode == "hybrid":
                    fused = fuse(
                        dense, lexical, k, method="learned", scorer=learned.scorer(query, title_of)
                    )
                else:
                    fused = fuse(
                        dense,
                        lexical,
                        k,
                        method=self.settings.fusion,
                        rrf_k=self.settings.rrf_k,
                        dense_weight=self.settings.dense_weight,
                    )
                results = []
                for hit in fused:
                    stored = self.store.get(hit.item_id)
                    if stored is None:
                        continue
                    # a single-list mode reports that list's own score (cosine or BM25)
                    own = {"dense": hit.dense_score, "lexical": hit.lexical_score}.get(mode)
                    results.append(
                        ItemResult(
                            stored.item,
                            hit.score if own is None else own,
                            pair.version,
                            hit.dense_rank,
                            hit.dense_score,
                            hit.lexical_rank,
                            hit.lexical_score,
                        )
                    )
                out.append(results)
        return out

    def set_fusion(self, fusion: LearnedFusion | None) -> None:
        """Serve hybrid searches with ``fusion`` from the next search on (``None``: the
        fixed fusion of the settings)."""
        with self._lock:
            self.learned_fusion = fusion

    @property
    def fusion(self) -> str:
        """The fusion hybrid searches use now: a learned fusion's version, or the fixed one."""
        learned = self.learned_fusion if self.settings.learned_fusion else None
        return self.settings.fusion if learned is None else f"learned {learned.version}"

    def search_ids(
        self, queries: Sequence[str], k: int, mode: SearchMode | None = None
    ) -> list[list[str]]:
        """The item ids of :meth:`search_many`'s results (what an evaluation or the
        robustness miner compares with the items it expects)."""
        return [[r.item.item_id for r in results] for results in self.search_many(queries, k, mode)]

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            return self.store.get(item_id)

    def neighbours(self, item_ids: Sequence[str], k: int) -> list[tuple[str, float]]:
        """Content neighbours of ``item_ids``: the items nearest to the mean of their stored
        vectors (cosine; the anchors themselves left out), best first. Items not indexed are
        ignored; none indexed gives none. Nothing is embedded: an item is recommendable by
        its content from the moment it is indexed."""
        with self._lock:
            index = self._pair.index
            vectors = [index.vector(i) for i in item_ids if i in index]
            if not vectors:
                return []
            query = np.mean(vectors, axis=0, keepdims=True)
            norm = float(np.linalg.norm(query))
            if norm > 0:
                query /= norm
            hits = index.search(query, k + len(item_ids))[0]
        anchors = set(item_ids)
        return [(h.item_id, h.score) for h in hits if h.item_id not in anchors][:k]

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

    # -- swapping the model ---------------------------------------------------------------
    def swap_encoder(self, encoder: Encoder, batch_size: int = 256) -> int:
        """Re-embed the catalog with ``encoder`` while the current pair keeps serving, then
        swap. Blocking: run it in a background thread. Item changes applied meanwhile (by
        :meth:`apply_many` on the old pair) are caught up from the store before the swap, so
        nothing is lost and no deleted item comes back. Returns the items embedded."""
        with self._lock:
            if self._rebuild is not None:
                raise RuntimeError(f"a rebuild to {self._rebuild.version} is running")
            items = [s.item for s in self.store]
            progress = RebuildProgress(encoder.version, total=len(items))
            self._rebuild = progress
        try:
            fresh = self._new_faiss(encoder.dim)
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                fresh.upsert_many(
                    [i.item_id for i in chunk], encode_items(encoder, [item_text(i) for i in chunk])
                )
                progress.done += len(chunk)
            if (lists := fresh.retrain_target()) is not None:  # serve the new model as an IVF
                fresh = fresh.retrained(lists)
            embedded = len(items)
            while True:
                with self._lock:
                    changed, progress.changed = progress.changed, set()
                    if len(changed) <= CATCH_UP_UNDER_LOCK:
                        embedded += self._catch_up(fresh, encoder, changed)
                        self._pair = ServingPair(encoder, fresh)
                        self.items_embedded += embedded
                        self.swaps += 1
                        return embedded
                embedded += self._catch_up(fresh, encoder, changed)
        finally:
            with self._lock:
                self._rebuild = None

    def _catch_up(self, fresh: FaissItemIndex, encoder: Encoder, item_ids: set[str]) -> int:
        """Make ``fresh`` agree with the store for ``item_ids`` (what the store holds now is
        the truth: upserted items re-embedded, deleted ones removed)."""
        with self._lock:
            present = [s.item for i in sorted(item_ids) if (s := self.store.get(i)) is not None]
        gone = sorted(item_ids - {i.item_id for i in present})
        if present:
            fresh.upsert_many(
                [i.item_id for i in present], encode_items(encoder, [item_text(i) for i in present])
            )
        fresh.delete_many(gone)
        return len(present)

    @property
    def rebuilding(self) -> bool:
        """A re-embedding or an IVF build is running."""
        return self._rebuild is not None

    def retrain_due(self) -> bool:
        """The ``auto`` backend wants a (new) IVF and no rebuild is running."""
        with self._lock:
            return self._rebuild is None and self._pair.index.retrain_target() is not None

    def retrain_index(self, chunk: int = 20_000) -> bool:
        """Move the serving vectors into the IVF the ``auto`` backend asks for, while the
        current index keeps serving and taking changes. Blocking: run it in a background
        thread (the replica's model thread). The lock is held only to read a sample, each
        chunk of vectors and the last catch-up; items changed meanwhile are copied from the
        serving index before the swap. False when nothing was due, or an encoder swap
        superseded the index being copied."""
        with self._lock:
            pair = self._pair
            lists = pair.index.retrain_target()
            if self._rebuild is not None or lists is None:
                return False
            sample = pair.index.training_sample(lists)
            ids = pair.index.item_ids()
            progress = RebuildProgress(f"ivf:{lists} lists", total=len(ids))
            self._rebuild = progress
        try:
            fresh = pair.index.empty_trained_ivf(sample, lists)  # k-means, off the lock
            del sample
            for start in range(0, len(ids), chunk):
                with self._lock:
                    part = [i for i in ids[start : start + chunk] if i in pair.index]
                    vectors = pair.index.vectors(part)
                fresh.upsert_many(part, vectors)
                progress.done += len(part)
            while True:
                with self._lock:
                    if self._pair is not pair:
                        return False
                    changed, progress.changed = progress.changed, set()
                    present = [i for i in sorted(changed) if i in pair.index]
                    gone = sorted(changed - set(present))
                    vectors = pair.index.vectors(present)
                    if len(changed) <= CATCH_UP_UNDER_LOCK:
                        fresh.upsert_many(present, vectors)
                        fresh.delete_many(gone)
                        self._pair = ServingPair(pair.encoder, fresh)
                        self.ivf_retrains += 1
                        return True
                fresh.upsert_many(present, vectors)
                fresh.delete_many(gone)
        finally:
            with self._lock:
                self._rebuild = None

    def reembed_all(self, batch_size: int = 256) -> int:
        """Re-embed every stored item with the current encoder into a fresh index, then swap."""
        return self.swap_encoder(self.encoder, batch_size)

    # -- snapshots ----------------------------------------------------------------------
    def save_snapshot(
        self, data_dir: Path, offsets: Offsets, extras: dict[str, bytes] | None = None
    ) -> Path:
        """Persist everything needed to resume at ``offsets`` without re-embedding, with
        ``extras`` (other stages' state at the same offsets) beside it."""
        with self._lock:
            pair = self._pair
            blob, meta = pair.index.to_state()
            snap = SnapshotData(
                model=pair.version,
                index_blob=blob,
                index_meta=meta,
                items=[(s.item, s.indexed_at) for s in self.store],
                tombstones=self.store.tombstones,
                offsets={t: dict(p) for t, p in offsets.items()},
                created_at=utc_now(),
                lexical_blob=None if self.lexical is None else self.lexical.to_state(),
                extras=dict(extras or {}),
            )
        return write_snapshot(data_dir, snap, keep=self.settings.snapshot_keep)

    def load_snapshot(self, data_dir: Path) -> Offsets | None:
        """Restore from the newest snapshot; returns its offsets, or ``None`` if there is none.

        If the snapshot's vectors came from another model version (content digest) or
        dimension, the stored items are re-embedded with the current encoder instead.
        """
        snap = read_snapshot(data_dir)
        if snap is None:
            return None
        self.snapshot_extras = snap.extras
        with self._lock:
            self.store = ItemStore()
            self.store.restore_tombstones(snap.tombstones)
            for item, indexed_at in snap.items:
                self.store.put(item, indexed_at)
            self.lexical = self._restore_lexical(snap)
            encoder = self._pair.encoder
            same_model = snap.model == encoder.version and snap.index_meta.get("dim") == encoder.dim
            if same_model:
                index = FaissItemIndex.from_state(snap.index_blob, snap.index_meta)
                cfg = self.settings
                index.configure(cfg.backend, cfg.ivf_nprobe, cfg.ivf_min_items)
            else:
                index = self._new_faiss(encoder.dim)
            self._pair = ServingPair(encoder, index)
        if not same_model:
            self.reembed_all()
        return snap.offsets

    def _restore_lexical(self, snap: SnapshotData) -> Fts5Index | None:
        """The snapshot's lexical index, or one built from its items (a snapshot written
        with the lexical index off, or before it existed)."""
        if not self.settings.lexical:
            return None
        if snap.lexical_blob is not None:
            return Fts5Index.from_state(snap.lexical_blob, self.settings.lexical_weights)
        lexical = Fts5Index(self.settings.lexical_weights)
        lexical.upsert_many(
            [item.item_id for item, _ in snap.items], [lexical_doc(item) for item, _ in snap.items]
        )
        return lexical

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pair = self._pair
            return {
                "items": len(pair.index),
                "tombstones": len(self.store.tombstones),
                "applied_events": self.applied_events,
                "items_embedded": self.items_embedded,
                "last_applied_at": self.last_applied_at.isoformat()
                if self.last_applied_at
                else None,
                "backend": "ivf" if pair.index.is_trained_ivf else "flat",
                "configured_backend": pair.index.backend,
                "ivf_lists": pair.index.nlist if pair.index.is_trained_ivf else None,
                "ivf_retrains": self.ivf_retrains,
                "model": pair.encoder.name,
                "model_version": pair.version,
                "swaps": self.swaps,
                "lexical_items": None if self.lexical is None else len(self.lexical),
                "search_mode": self.settings.search_mode,
                "fusion": self.fusion,
                "rebuild": None if self._rebuild is None else self._rebuild.as_dict(),
            }
