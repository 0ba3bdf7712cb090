"""FAISS vectors keyed by string item ids, with replace-on-upsert and delete.

FAISS keys vectors by int64 labels; this module keeps the item id <-> label map. Backends:

* ``flat``: ``IndexIDMap2(IndexFlatIP)``: exact inner product (= cosine on unit vectors),
  supports ``remove_ids`` and ``reconstruct``. Exact, but a search scans every vector: ~15 ms
  at 100k items, ~170 ms at 1M on 2 cores (docs/benchmarks.md).
* ``ivf``: starts flat and, once it holds ``39 * nlist`` vectors (FAISS's minimum training
  size per centroid), trains an ``IndexIVFFlat`` on them and moves over, inline. Its direct
  map is a hashtable, which is what lets IVF remove and reconstruct by arbitrary id.
* ``auto`` (the default): flat while small; from ``ivf_min_items`` on, :meth:`retrain_target`
  asks for an IVF with about sqrt(items) lists, and again each time the catalog has grown
  enough for twice the lists. The owner builds it off the serving path and swaps it in
  (``LiveItemIndex.retrain_index``: the sample and the vectors are read under its lock,
  :meth:`FaissItemIndex.empty_trained_ivf` trains outside it), so searches and upserts never
  wait for a training.

HNSW is deliberately absent: it cannot remove vectors, and a live catalog deletes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from ecrec_stream.exceptions import IndexError_

TRAIN_POINTS_PER_CENTROID = 39
# k-means sees at most this many points per list (FAISS's own default cap is 256)
TRAIN_SAMPLE_PER_CENTROID = 256
Backend = Literal["auto", "flat", "ivf"]


def ivf_lists_for(items: int) -> int:
    """Inverted lists for ``items`` vectors: the power of two nearest sqrt(items) (FAISS's
    rule of thumb is 4-16 x sqrt; sqrt measured recall@10 0.97-0.98 at nprobe 16 on real
    titles at 100k and 1M, docs/benchmarks.md), with at least 39 training points per list.

    >>> ivf_lists_for(50_000), ivf_lists_for(100_000), ivf_lists_for(1_000_000)
    (256, 256, 1024)
    """
    lists = 2 ** round(np.log2(max(items, 1)) / 2)
    while lists > 1 and lists * TRAIN_POINTS_PER_CENTROID > items:
        lists //= 2
    return int(lists)


@dataclass(frozen=True, slots=True)
class SearchHit:
    item_id: str
    score: float


class FaissItemIndex:
    """Unit vectors of dimension ``dim`` keyed by item id.

    >>> idx = FaissItemIndex(dim=2)
    >>> idx.upsert_many(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    >>> idx.upsert_many(["a"], np.array([[0.6, 0.8]], dtype=np.float32))
    >>> [(h.item_id, round(h.score, 2)) for h in idx.search(np.array([[0, 1]], "float32"), 2)[0]]
    [('b', 1.0), ('a', 0.8)]
    >>> idx.delete_many(["b", "zzz"]), len(idx)
    (1, 1)
    """

    def __init__(
        self,
        dim: int,
        *,
        backend: Backend = "flat",
        nlist: int = 256,
        nprobe: int = 16,
        ivf_min_items: int = 50_000,
    ) -> None:
        if dim <= 0:
            raise IndexError_(f"dimension must be positive, got {dim}")
        if backend not in ("auto", "flat", "ivf"):
            raise IndexError_(f"unknown index backend {backend!r} (auto, flat or ivf)")
        self.dim = dim
        self.backend = backend
        self.nlist = nlist  # auto: the lists of the IVF trained last (none until then)
        self.nprobe = nprobe
        self.ivf_min_items = ivf_min_items
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._is_ivf = False
        self._label_of: dict[str, int] = {}
        self._item_of: dict[int, str] = {}
        self._next_label = 0

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    @property
    def is_trained_ivf(self) -> bool:
        return self._is_ivf

    def set_nprobe(self, nprobe: int) -> None:
        """Lists an IVF search visits (more: closer to exact, slower); kept for a later move to
        IVF while the index is still flat."""
        if nprobe < 1:
            raise IndexError_(f"nprobe must be positive, got {nprobe}")
        self.nprobe = nprobe
        if self._is_ivf:
            self._index.nprobe = nprobe

    def _check(self, vectors: np.ndarray, n: int) -> np.ndarray:
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape != (n, self.dim):
            raise IndexError_(f"expected vectors of shape ({n}, {self.dim}), got {array.shape}")
        return array

    def upsert_many(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``item_ids`` (ids must be unique in one call)."""
        if len(set(item_ids)) != len(item_ids):
            raise IndexError_("duplicate item ids in one upsert batch")
        array = self._check(vectors, len(item_ids))
        if not item_ids:
            return
        self._remove_labels([self._label_of[i] for i in item_ids if i in self._label_of])
        labels = np.arange(self._next_label, self._next_label + len(item_ids), dtype=np.int64)
        self._next_label += len(item_ids)
        for item_id, label in zip(item_ids, labels.tolist(), strict=True):
            self._label_of[item_id] = label
            self._item_of[label] = item_id
        self._index.add_with_ids(array, labels)
        self._maybe_train_ivf()

    def delete_many(self, item_ids: Sequence[str]) -> int:
        """Remove ``item_ids``; unknown ids are ignored. Returns how many were removed."""
        labels = [self._label_of.pop(i) for i in set(item_ids) if i in self._label_of]
        for label in labels:
            del self._item_of[label]
        self._remove_labels(labels)
        return len(labels)

    def _remove_labels(self, labels: list[int]) -> None:
        if labels:
            self._index.remove_ids(np.asarray(labels, dtype=np.int64))

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id`` (KeyError if absent)."""
        return np.asarray(self._index.reconstruct(self._label_of[item_id]), dtype=np.float32)

    def configure(self, backend: Backend, nprobe: int, ivf_min_items: int) -> None:
        """Adopt settings other than the ones this index was saved with (a snapshot restored
        under a changed configuration): an IVF asked to be ``flat`` becomes exact again, a
        ``flat`` one asked to be ``ivf`` trains if it is large enough; ``auto`` takes the
        index as it is and builds what :meth:`retrain_target` asks for later."""
        if backend not in ("auto", "flat", "ivf"):
            raise IndexError_(f"unknown index backend {backend!r} (auto, flat or ivf)")
        self.backend, self.ivf_min_items = backend, ivf_min_items
        self.set_nprobe(nprobe)
        if backend == "flat" and self._is_ivf:
            ids = self.item_ids()
            labels = np.asarray([self._label_of[i] for i in ids], dtype=np.int64)
            exact = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            if ids:
                exact.add_with_ids(self.vectors(ids), labels)
            self._index, self._is_ivf = exact, False
        elif backend == "ivf":
            self._maybe_train_ivf()

    def item_ids(self) -> list[str]:
        """Every item id held, in the order first inserted."""
        return list(self._label_of)

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``item_ids`` as one ``(n, dim)`` array (KeyError if absent)."""
        if not item_ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        labels = np.asarray([self._label_of[i] for i in item_ids], dtype=np.int64)
        return np.asarray(self._index.reconstruct_batch(labels), dtype=np.float32)

    def retrain_target(self) -> int | None:
        """``auto`` only: the lists of the IVF to build now, or None. Due once the index holds
        ``ivf_min_items`` and, after that, whenever the catalog has grown (about 4x) enough for
        twice the lists of the IVF serving."""
        if self.backend != "auto" or len(self) < self.ivf_min_items:
            return None
        lists = ivf_lists_for(len(self))
        if self._is_ivf and lists < 2 * self.nlist:
            return None
        return lists

    def retrained(self, nlist: int, chunk: int = 50_000) -> FaissItemIndex:
        """A copy of this index as an IVF of ``nlist`` lists (for an owner that nobody else
        writes to meanwhile, such as an index being rebuilt before its swap)."""
        fresh = self.empty_trained_ivf(self.training_sample(nlist), nlist)
        ids = self.item_ids()
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            fresh.upsert_many(part, self.vectors(part))
        return fresh

    def training_sample(self, nlist: int, seed: int = 0) -> np.ndarray:
        """Up to 256 vectors per list, drawn at random, to train ``nlist`` lists on."""
        ids = self.item_ids()
        size = min(len(ids), nlist * TRAIN_SAMPLE_PER_CENTROID)
        if size < nlist * TRAIN_POINTS_PER_CENTROID:
            raise IndexError_(
                f"{len(ids)} vectors are too few to train {nlist} lists "
                f"(at least {nlist * TRAIN_POINTS_PER_CENTROID})"
            )
        chosen = np.random.default_rng(seed).choice(len(ids), size=size, replace=False)
        return self.vectors([ids[i] for i in np.sort(chosen)])

    def empty_trained_ivf(self, sample: np.ndarray, nlist: int) -> FaissItemIndex:
        """An empty index of this one's settings with an IVF of ``nlist`` lists trained on
        ``sample`` (k-means; seconds at 1024 lists)."""
        fresh = FaissItemIndex(
            self.dim,
            backend=self.backend,
            nlist=nlist,
            nprobe=self.nprobe,
            ivf_min_items=self.ivf_min_items,
        )
        fresh._index = _ivf(self.dim, nlist, self.nprobe, self._check(sample, len(sample)))
        fresh._is_ivf = True
        return fresh

    def search(self, queries: np.ndarray, k: int) -> list[list[SearchHit]]:
        """Top-``k`` items per query row, best first."""
        array = np.ascontiguousarray(queries, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise IndexError_(f"expected queries of shape (n, {self.dim}), got {array.shape}")
        if k <= 0:
            raise IndexError_(f"k must be positive, got {k}")
        if len(self) == 0:
            return [[] for _ in range(array.shape[0])]
        scores, labels = self._index.search(array, min(k, len(self)))
        # Equal scores (items with one vector) in item id order, not FAISS's label order, which
        # follows insertion and differs between replicas.
        return [
            sorted(
                (
                    SearchHit(self._item_of[int(label)], float(score))
                    for score, label in zip(row_scores, row_labels, strict=True)
                    if label >= 0
                ),
                key=lambda hit: (-hit.score, hit.item_id),
            )
            for row_scores, row_labels in zip(scores, labels, strict=True)
        ]

    def _maybe_train_ivf(self) -> None:
        if self.backend != "ivf" or self._is_ivf:
            return
        if len(self) < TRAIN_POINTS_PER_CENTROID * self.nlist:
            return
        labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, len(self))
        ivf = _ivf(self.dim, self.nlist, self.nprobe, vectors)
        ivf.add_with_ids(vectors, labels)
        self._index = ivf
        self._is_ivf = True

    # -- persistence --------------------------------------------------------------------
    def to_state(self) -> tuple[bytes, dict[str, Any]]:
        """Serialised FAISS index plus the id map, for snapshots."""
        blob = faiss.serialize_index(self._index).tobytes()
        meta = {
            "dim": self.dim,
            "backend": self.backend,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ivf_min_items": self.ivf_min_items,
            "is_ivf": self._is_ivf,
            "next_label": self._next_label,
            "labels": self._label_of,
        }
        return blob, meta

    @classmethod
    def from_state(cls, blob: bytes, meta: dict[str, Any]) -> FaissItemIndex:
        index = cls(
            int(meta["dim"]),
            backend=meta["backend"],
            nlist=meta["nlist"],
            nprobe=meta["nprobe"],
            ivf_min_items=int(meta.get("ivf_min_items", 50_000)),
        )
        index._index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        index._is_ivf = bool(meta["is_ivf"])
        if index._is_ivf:
            index._index.nprobe = index.nprobe
        index._next_label = int(meta["next_label"])
        index._label_of = {str(k): int(v) for k, v in meta["labels"].items()}
        index._item_of = {v: k for k, v in index._label_of.items()}
        if len(index._label_of) != len(index):
            raise IndexError_(
                f"id map holds {len(index._label_of)} ids but the FAISS index {len(index)}"
            )
        return index


def _ivf(dim: int, nlist: int, nprobe: int, training: np.ndarray) -> Any:
    """An empty ``IndexIVFFlat`` (inner product, hashtable direct map) trained on ``training``."""
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(training)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    ivf.nprobe = nprobe
    return ivf
