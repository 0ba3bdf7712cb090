"""The trainer's domain parts with real torch and a tiny BERT built from a config: the
replay buffer, incremental fine-tuning, the evaluation gate and publication."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecrec_stream.config import EmbeddingSettings, TrainingSettings
from ecrec_stream.embedding import weights_digest
from ecrec_stream.training import BufferSplit, ReplayBuffer, Retrainer, query_bucket
from ecrec_stream.training.evaluate import (
    EmbeddedCatalog,
    logged_rerank_metrics,
    retrieval_metrics,
)
from ecrec_stream.training.registry import ModelRegistry
from tests.helpers import tiny_sentence_model, toy_relevance

FAST = TrainingSettings(
    epochs=3,
    learning_rate=1e-3,
    batch_size=32,
    min_examples=50,
    min_eval_queries=5,
    device="cpu",
)


def test_buffer_drops_duplicates_balances_its_reservoir_and_holds_back_the_newest() -> None:
    _, positives = toy_relevance(300, seed=1)
    _, more = toy_relevance(300, seed=2, start=300)
    negatives = [e.model_copy(update={"label": 0, "example_id": e.example_id + "n"}) for e in more]
    buffer = ReplayBuffer(recent_size=100, reservoir_size=40, seed=0)
    assert buffer.add(positives + negatives) == 600
    assert buffer.add(positives[:50]) == 0 and buffer.counts["duplicates"] == 50
    assert len(buffer.recent) == 100 and len(buffer) == 140
    assert {k: len(v) for k, v in buffer.reservoir.items()} == {0: 20, 1: 20}
    # the reservoir samples the whole past, not just the latest evictions
    assert min(int(e.example_id.split("-")[-1]) for e in buffer.reservoir[1].items) < 150

    split = buffer.split(holdout_recent=0.2, holdout_older=0.3)
    newest = sorted(buffer.recent, key=lambda e: e.ts)[-20:]
    assert split.recent_eval == newest
    held = {e.example_id for e in split.recent_eval + split.older_eval}
    assert not held & {e.example_id for e in split.train}
    assert all(query_bucket(e.text) < 0.3 for e in split.older_eval)
    assert all(query_bucket(e.text) >= 0.3 for e in split.train)
    assert max(e.ts for e in split.train) < min(e.ts for e in split.recent_eval)


def test_buffer_survives_a_restart(tmp_path: Path) -> None:
    _, examples = toy_relevance(250)
    buffer = ReplayBuffer(recent_size=100, reservoir_size=60)
    buffer.add(examples)
    buffer.offsets = {"ecrec.examples": {0: 17, 3: 4}}
    buffer.save(tmp_path / "buffer.state")
    back = ReplayBuffer(recent_size=100, reservoir_size=60)
    assert back.load(tmp_path / "buffer.state")
    assert back.offsets == buffer.offsets
    assert list(back.recent) == list(buffer.recent)
    assert {k: (r.items, r.seen) for k, r in back.reservoir.items()} == {
        k: (r.items, r.seen) for k, r in buffer.reservoir.items()
    }
    assert back.add(examples[:10]) == 0  # ids seen before the restart are still duplicates
    assert not ReplayBuffer().load(tmp_path / "missing.state")


def _retrainer(tmp_path: Path, **overrides: object) -> tuple[Retrainer, ModelRegistry, str]:
    registry = ModelRegistry(tmp_path / "models")
    base = registry.publish(tiny_sentence_model(tmp_path / "base"), name="tiny").version
    settings = FAST.model_copy(update=overrides)
    return Retrainer(settings, registry, EmbeddingSettings(model="tiny")), registry, base


def test_fine_tuning_improves_retrieval_and_the_gate_rejects_a_harmful_update(
    tmp_path: Path,
) -> None:
    retrainer, registry, base = _retrainer(tmp_path)
    catalog, examples = toy_relevance(1500)
    buffer = ReplayBuffer(recent_size=1000, reservoir_size=400)
    buffer.add(examples)
    split = buffer.split(0.15, 0.15)

    good = retrainer.retrain(split, catalog, trigger="test")
    assert good.accepted, good.reasons
    assert good.manifest is not None and registry.current() == good.manifest.version != base
    assert good.manifest.parent_version == base
    served, tuned = good.decision.serving, good.decision.candidate  # type: ignore[union-attr]
    assert served["recent"]["ndcg@10"] < 0.3 and tuned["recent"]["ndcg@10"] > 0.8
    assert tuned["older"]["recall@10"] > served["older"]["recall@10"]
    assert set(good.timings) == {"buffer", "train", "evaluate", "publish"}
    assert good.counts["mined_negatives"] > 0  # hard negatives from the serving index

    # Shuffled labels: trained on, judged on the same held-back (true) data -> rejected.
    _, shuffled = toy_relevance(1500, seed=5, shuffled=True)
    bad_buffer = ReplayBuffer(recent_size=1000, reservoir_size=400)
    bad_buffer.add(shuffled)
    harmful = BufferSplit(bad_buffer.split(0.15, 0.15).train, split.recent_eval, split.older_eval)
    bad = retrainer.retrain(harmful, catalog, trigger="harmful")
    assert not bad.accepted and bad.manifest is None
    assert any(r.startswith("recent") and "may be worse" in r for r in bad.reasons), bad.reasons
    assert bad.summary()["differences"]["recent"]["high"] < 0  # worse, and the interval says so
    assert registry.current() == good.manifest.version  # the old model keeps serving
    assert len(registry.versions()) == 2


def test_warm_up_trains_a_copy_and_leaves_the_serving_model_alone(tmp_path: Path) -> None:
    retrainer, registry, base = _retrainer(tmp_path)
    assert retrainer.warm_up() > 0
    version, model = retrainer.serving()
    assert version == base == weights_digest(model) and registry.current() == base


def test_too_little_data_is_refused_before_training(tmp_path: Path) -> None:
    retrainer, registry, base = _retrainer(tmp_path, min_examples=500)
    catalog, examples = toy_relevance(200)
    buffer = ReplayBuffer()
    buffer.add(examples)
    outcome = retrainer.retrain(buffer.split(0.15, 0.15), catalog, trigger="test")
    assert not outcome.accepted and outcome.insufficient_data and "need 500" in outcome.reasons[0]
    assert outcome.fine_tune is None and registry.current() == base


def test_lora_adapters_are_merged_into_a_plain_publishable_model(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    retrainer, registry, base = _retrainer(tmp_path, lora=True, learning_rate=2e-2, epochs=4)
    catalog, examples = toy_relevance(1500)
    buffer = ReplayBuffer(recent_size=1000, reservoir_size=400)
    buffer.add(examples)
    outcome = retrainer.retrain(buffer.split(0.15, 0.15), catalog, trigger="lora")
    assert outcome.candidate_version not in (None, base)
    assert outcome.fine_tune is not None and outcome.fine_tune.steps > 0
    assert outcome.decision is not None
    served, tuned = outcome.decision.serving, outcome.decision.candidate
    assert tuned["recent"]["ndcg@10"] > served["recent"]["ndcg@10"]
    assert outcome.accepted, outcome.reasons
    # merged: the registry's copy loads as a plain model whose weights hash to the version
    loaded = registry.load(outcome.candidate_version or "")
    assert weights_digest(loaded) == outcome.candidate_version
    assert not any("lora" in k for k in loaded.state_dict())


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path: Path) -> None:
    import torch

    from ecrec_stream.training.finetune import FineTuneConfig, TrainPair, _transformer, fine_tune

    catalog, examples = toy_relevance(300)
    pairs = [TrainPair(e.text, catalog[e.item_id]) for e in examples if e.label == 1]
    initial = tiny_sentence_model(tmp_path / "initial", seed=0).state_dict()
    trained = []
    for checkpointing in (False, True):
        model = tiny_sentence_model(tmp_path / f"m{checkpointing}", seed=0)
        assert _transformer(model) is not None  # a Hugging Face model that can checkpoint
        config = FineTuneConfig(epochs=1, batch_size=16, gradient_checkpointing=checkpointing)
        assert fine_tune(model, pairs, config).steps > 0
        assert not _transformer(model).is_gradient_checkpointing  # off again for serving
        trained.append(model.state_dict())
    moved = [k for k in initial if not torch.equal(initial[k], trained[1][k])]
    assert moved  # it trained
    for key in moved:  # dropout masks replayed in the recomputation: the same gradients
        torch.testing.assert_close(trained[0][key], trained[1][key], atol=1e-5, rtol=1e-4)


def test_logged_rerank_does_not_favour_the_model_that_chose_the_logged_items() -> None:
    # The serving model showed b then a; the shopper judged a relevant, b not. A candidate
    # that ranks a above b but retrieves two never-shown (unjudged) items first loses on
    # catalog retrieval, where unjudged counts as irrelevant, and wins on re-ranking what
    # was logged.
    ids = ["a", "b", "c", "d"]
    serving = EmbeddedCatalog(
        "s", ids, np.array([[0.8, 0.6, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    )
    candidate = EmbeddedCatalog(
        "c", ids, np.array([[0, 1, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 0, 1]], dtype=np.float32)
    )
    judged = {"milk": {"a": 1.0, "b": 0.0}}

    def serving_query(q: list[str]) -> np.ndarray:
        return np.array([[1, 0, 0]] * len(q), dtype=np.float32)

    def candidate_query(q: list[str]) -> np.ndarray:
        return np.array([[0, 0.6, 0.8]] * len(q), dtype=np.float32)

    assert serving.top_k(serving_query(["milk"]), 2) == [["b", "a"]]
    catalog_s = retrieval_metrics(serving_query, serving, judged, 2)["ndcg@2"]
    catalog_c = retrieval_metrics(candidate_query, candidate, judged, 2)["ndcg@2"]
    assert catalog_c == 0.0 < catalog_s < 1.0
    rerank_s = logged_rerank_metrics(serving_query, serving, judged, 2)["ndcg@2"]
    rerank_c = logged_rerank_metrics(candidate_query, candidate, judged, 2)["ndcg@2"]
    assert rerank_s == pytest.approx(catalog_s) and rerank_c == 1.0
    # a query whose logged items all have one gain says nothing about order
    only_positive = {"milk": {"a": 1.0, "b": 1.0}}
    assert logged_rerank_metrics(serving_query, serving, only_positive, 2)["queries"] == 0


def test_the_retrain_schedule_defers_until_new_examples_and_gives_up_after_the_wait() -> None:
    from ecrec_stream.contracts import RetrainRequest
    from ecrec_stream.training.schedule import RetrainSchedule

    now = [1000.0]
    schedule = RetrainSchedule(min_interval_s=60, defer_max_s=300, clock=lambda: now[0])
    first, second = (RetrainRequest(alert_id=f"r{i}", reason="t") for i in (1, 2))
    schedule.add(first)
    assert schedule.take_due(caught_up=False, examples_added=0) == []  # still reading
    assert schedule.take_due(caught_up=True, examples_added=0) == [first]
    assert schedule.defer([first], "too few pairs", examples_added=100)
    schedule.add(second)
    now[0] += 61
    assert schedule.take_due(caught_up=True, examples_added=100) == []  # nothing new
    assert schedule.take_due(caught_up=True, examples_added=150) == [first, second]
    now[0] += 300
    assert schedule.waited_s([first, second]) == 361
    assert not schedule.defer([first, second], "too few pairs", examples_added=150)
    schedule.finished([first, second])
    assert schedule.deferral is None and schedule.pending == []
    schedule.add(second)
    assert schedule.take_due(caught_up=True, examples_added=150) == []  # min interval
    now[0] += 60
    assert schedule.take_due(caught_up=True, examples_added=150) == [second]
