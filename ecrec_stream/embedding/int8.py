"""The encoder quantised to int8 for CPU inference: the stream worker's label and drift agents
embed every review, and on a 2-core CPU the float32 forward pass is their whole cost.

ONNX Runtime does the quantisation (``quantize_dynamic``: int8 weights per output channel,
activations quantised per call) and runs the graph; torch's own dynamic quantisation gave
vectors at cosine 0.973 to float32's against ONNX Runtime's 0.992 on real reviews (7-bit
activations on x86), and it is deprecated. The sentence-transformers model is exported with
its pooling and normalisation, so any model the float32 path loads works here too; the
export and quantisation take a few seconds at load and are not cached.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ecrec_stream.config import EmbeddingSettings
from ecrec_stream.device import pass_threads
from ecrec_stream.embedding import (
    TRACE_PROBE,
    PassThreadedEncoder,
    SentenceTransformerEncoder,
    helper_pool,
    plan_passes,
    run_split,
    token_table,
)
from ecrec_stream.exceptions import ConfigError, ModelLoadError

LOG = logging.getLogger(__name__)
# Lowest cosine to float32's vectors on the probe texts that the quantised model may give:
# real reviews gave 0.984 at the least (docs/benchmarks.md, session 25); far below means the export
# or the quantisation went wrong, and the worker should not label with it.
MIN_PROBE_COSINE = 0.95
# quantize_dynamic's advice on the root logger; its pre-processing (symbolic shape inference)
# fails on this graph ("Incomplete symbolic shape inference", onnxruntime 1.32)
NO_PREPROCESS_HINT = "Please consider to run pre-processing before quantization"


class Int8Encoder(PassThreadedEncoder):
    """A sentence-transformers model quantised to int8 by ONNX Runtime, on the CPU. Its
    ``version`` is the float32 model's with ``+int8``, so no cache serves one's vectors for the
    other's. Thread-safe; one call's passes run on ``pass_threads`` threads at once, as
    :class:`~ecrec_stream.embedding.SentenceTransformerEncoder`'s do.

    ``threads``: ONNX Runtime's threads per pass (the worker gives torch's inference threads).
    """

    def __init__(self, settings: EmbeddingSettings | None = None, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as exc:
            raise ConfigError(
                "embedding.worker_quantization=int8 needs onnxruntime and onnx: "
                "pip install 'ecrec-stream[int8]'"
            ) from exc
        settings = (settings or EmbeddingSettings()).model_copy(
            update={"device": "cpu", "precision": "float32", "torchscript": False}
        )
        reference = SentenceTransformerEncoder(settings.model_copy(update={"pass_threads": 1}))
        model = reference._model
        if getattr(model.tokenizer, "padding_side", "right") != "right":
            raise ConfigError(
                f"embedding.worker_quantization=int8: {settings.model!r}'s tokenizer pads on the "
                "left, which the int8 encoder's batches do not support; leave it at none"
            )
        with tempfile.TemporaryDirectory(prefix="ecrec-int8-") as tmp:
            exported, quantised = Path(tmp) / "model.onnx", Path(tmp) / "model-int8.onnx"
            export(model, exported)
            with _quiet_root(NO_PREPROCESS_HINT):
                quantize_dynamic(exported, quantised, weight_type=QuantType.QInt8, per_channel=True)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # no spinning between passes: the worker's event loop needs the core back
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(
                str(quantised), options, providers=["CPUExecutionProvider"]
            )
        self._tokenizer_source = _TokenizerOnly(model.tokenizer, model.max_seq_length)
        self._dim = reference.dim
        self._name = reference.name
        self._version = f"{reference.version}+int8"
        self._batch_size = settings.batch_size
        self._helpers = helper_pool(self, pass_threads(settings.pass_threads, "cpu"))
        self._count_lock = threading.Lock()
        self.texts_encoded = 0
        agreement = float(
            np.einsum("ij,ij->i", reference.encode(TRACE_PROBE), self.encode(TRACE_PROBE)).min()
        )
        self.texts_encoded = 0
        # The float32 model is garbage now, but SentenceTransformerEncoder froze it with
        # torch's objects (gc.freeze), and its reference cycles would stay: ~86 MB of RSS.
        del reference, model
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        if agreement < MIN_PROBE_COSINE:
            raise ModelLoadError(
                f"encoder {self._name!r} quantised to int8 gives other vectors than float32 "
                f"(cosine {agreement:.3f} < {MIN_PROBE_COSINE}); set "
                "ECREC_EMBEDDING__WORKER_QUANTIZATION=none"
            )
        LOG.info("encoder %s quantised to int8 (probe cosine %.4f)", self._name, agreement)

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        return "int8"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors, in passes of
        similar length (:func:`~ecrec_stream.embedding.plan_passes`)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        table = token_table(self._tokenizer_source, texts)
        passes, widths = plan_passes(table, self._batch_size)

        def run(indices: list[int]) -> None:
            for i in indices:
                batch = table.batch(passes[i], width=widths[i])
                feeds = {name: tensor.numpy() for name, tensor in batch.items()}
                vectors = self._session.run(None, feeds)[0]
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                out[passes[i]] = vectors / np.maximum(norms, 1e-12)

        run_split(run, passes, widths, self._helpers)
        with self._count_lock:
            self.texts_encoded += len(texts)
        return out


@contextlib.contextmanager
def _quiet_root(prefix: str) -> Iterator[None]:
    """Drop the root logger's records that start with ``prefix`` for the block."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class _TokenizerOnly:
    """What :func:`~ecrec_stream.embedding.token_table` reads of a model, without its weights
    (the float32 model is dropped once exported)."""

    def __init__(self, tokenizer: Any, max_seq_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length


def export(model: Any, path: Path) -> None:
    """``model`` (sentence-transformers, CPU) to ONNX at ``path``: token ids and attention mask
    in, its sentence embedding out, batch and sequence length free."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.model(features)["sentence_embedding"]

    example = torch.ones((2, 16), dtype=torch.long)
    free = {0: "batch", 1: "tokens"}
    # the tracer warns of shapes it takes as constants: the pooling's mask check, which
    # holds for every input here (the probe in Int8Encoder checks other shapes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceEmbedding().eval(),
            (example, example),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": free,
                "attention_mask": free,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript too
        )
