"""The stream worker's int8 encoder (ONNX Runtime) against the real packaged MiniLM in float32,
on real reviews."""

from __future__ import annotations

import csv
import sys
import threading
import weakref
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from ecrec_stream.config import EmbeddingSettings
from ecrec_stream.exceptions import ConfigError
from tests.conftest import SHARED_DATA

REVIEWS = SHARED_DATA / "womens_clothing_reviews" / "reviews.csv"
pytestmark = pytest.mark.skipif(not REVIEWS.exists(), reason="no shared data")


FLOAT32_MODELS: list[weakref.ref[Any]] = []  # the float32 models the int8 fixture loaded


@pytest.fixture(scope="module")
def int8() -> Any:
    import ecrec_stream.embedding as embedding
    from ecrec_stream.embedding.int8 import Int8Encoder

    load = embedding.SentenceTransformerEncoder.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        load(self, *args, **kwargs)
        FLOAT32_MODELS.append(weakref.ref(self._model))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedding.SentenceTransformerEncoder, "__init__", recording)
        return Int8Encoder(EmbeddingSettings(pass_threads=2))


def test_the_float32_model_is_freed_once_exported(int8: Any) -> None:
    """Its reference cycles were frozen (gc.freeze) with torch's objects: ~86 MB kept."""
    assert len(FLOAT32_MODELS) == 1 and FLOAT32_MODELS[0]() is None


@pytest.fixture(scope="module")
def reviews() -> list[dict[str, str]]:
    with open(REVIEWS, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Review Text"].strip()]
    return rows[:320]


def test_int8_vectors_are_close_to_float32_on_real_reviews(
    int8: Any, minilm: Any, reviews: list[dict[str, str]]
) -> None:
    texts = [r["Review Text"] for r in reviews[:128]]
    ours, theirs = int8.encode(texts), minilm.encode(texts)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = np.einsum("ij,ij->i", ours, theirs)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95  # measured: 0.992 and 0.984
    # never served from a cache for the float32 model's vectors, or the other way round
    assert int8.version == f"{minilm.version}+int8"
    assert (int8.precision, int8.device, int8.pass_threads) == ("int8", "cpu", 2)
    assert int8.encode([]).shape == (0, 384)


def test_int8_passes_split_across_threads_give_the_same_vectors(
    int8: Any, reviews: list[dict[str, str]]
) -> None:
    """A helper thread runs some of a call's passes; the passes are the same as on one thread
    (the activations are quantised per pass), so the vectors are too."""
    texts = [r["Review Text"] for r in reviews[:40]] + [r["Title"] or "ok" for r in reviews[:40]]
    session = int8._session
    ran_on: set[str] = set()

    class Recording:
        def run(self, *args: Any) -> Any:
            ran_on.add(threading.current_thread().name)
            return session.run(*args)

    helpers = int8._helpers
    try:
        int8._session = Recording()
        split = int8.encode(texts)
        assert len(ran_on) == 2  # the caller and a helper
        int8._helpers = None
        alone = int8.encode(texts)
    finally:
        int8._session, int8._helpers = session, helpers
    assert np.array_equal(split, alone)


def test_int8_sentiment_labels_agree_with_float32_on_real_reviews(
    int8: Any, minilm: Any, reviews: list[dict[str, str]]
) -> None:
    """The default sentiment labelers, fed the same 320 real reviews with each encoder: the
    labels agree (measured offline on 3,000: 99.5%), and are as accurate against the reviewers'
    own "recommended" flag."""
    from ecrec_stream.config import LabelSettings
    from ecrec_stream.contracts.events import ReviewEvent, utc_now
    from ecrec_stream.labels.examples import build_labelers
    from ecrec_stream.labels.stages import ReviewLabelStage

    start = utc_now()
    events = [
        ReviewEvent(
            event_id=f"r{i}",
            ts=start + timedelta(seconds=i),
            item_id=r["Clothing ID"],
            rating=int(r["Rating"]),
            title=r["Title"],
            text=r["Review Text"],
            user_id=f"u{i}",
        )
        for i, r in enumerate(reviews)
    ]
    recommended = {f"r{i}": int(r["Recommended IND"]) for i, r in enumerate(reviews)}
    labels: dict[str, dict[str, int]] = {}
    for name, encoder in (("float32", minilm), ("int8", int8)):
        _, sentiment = build_labelers(LabelSettings(), encoder)
        stage = ReviewLabelStage(sentiment, on_error="stop")
        examples = [
            e
            for i in range(0, len(events), 64)
            for e in stage.label_many(events[i : i + 64], augment=False).examples
        ]
        labels[name] = {e.source_event_ids[0]: e.label for e in examples}
    both = labels["float32"].keys() & labels["int8"].keys()
    assert len(both) >= 0.95 * len(events)
    agree = np.mean([labels["float32"][k] == labels["int8"][k] for k in both])
    assert agree >= 0.97
    accuracy = {name: np.mean([labels[name][k] == recommended[k] for k in both]) for name in labels}
    assert accuracy["int8"] >= accuracy["float32"] - 0.02


def test_int8_is_a_cpu_setting_and_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from ecrec_stream.embedding.int8 import Int8Encoder

    with pytest.raises(ValidationError, match="runs on the CPU"):
        EmbeddingSettings(device="cuda", worker_quantization="int8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"ecrec-stream\[int8\]"):
        Int8Encoder()


def test_an_int8_model_that_strays_from_float32_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe check at load: a quantised model whose vectors are not close to float32's
    (here: a bar no model can pass) is a ModelLoadError, not a worker that labels with it."""
    from ecrec_stream.embedding import int8
    from ecrec_stream.exceptions import ModelLoadError

    monkeypatch.setattr(int8, "MIN_PROBE_COSINE", 1.01)
    with pytest.raises(ModelLoadError, match="other vectors than float32"):
        int8.Int8Encoder(EmbeddingSettings(pass_threads=1))
