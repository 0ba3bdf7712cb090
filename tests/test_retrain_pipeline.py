"""The retraining loop on the real broker: examples and a retrain request on Kafka, the
trainer publishes a fine-tuned model, an index replica verifies it, re-embeds in the
background and swaps while it keeps answering; a restarted replica serves the new version
from its snapshot; a tampered artifact is refused and the old model keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from ecrec_stream.config import load_settings
from ecrec_stream.contracts import ModelPublication, RetrainRejected, RetrainRequest, parse_alert
from ecrec_stream.contracts.events import EventBatch, ItemEvent
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.labels.examples import ExampleBatch
from ecrec_stream.training.registry import ModelRegistry
from streams.kafka import all_topics, ensure_topics
from tests.helpers import (
    at,
    isolated_env,
    produce,
    read_topic,
    tiny_sentence_model,
    toy_relevance,
    unique,
    wait_until,
)
from workers.indexer import IndexReplica, serving_encoder
from workers.trainer import TrainerWorker


def _settings(tmp_path: Path, names: Any, base: Path) -> Any:
    return load_settings(
        topics=names.model_dump(),
        partitions=2,
        data_dir=str(tmp_path / "data"),
        embedding={"model": str(base)},
        index={"data_dir": str(tmp_path / "index"), "snapshot_interval_s": 0.5},
        training={
            "epochs": 3,
            "learning_rate": 1e-3,
            "batch_size": 32,
            "min_examples": 50,
            "min_eval_queries": 5,
            "device": "cpu",
            "min_interval_s": 0,
        },
    )


def _items_batch(catalog: dict[str, str]) -> bytes:
    events = [
        ItemEvent(event_id=f"e-{i}", ts=at(0), op="upsert", item_id=i, title=t)
        for i, t in catalog.items()
    ]
    return (
        EventBatch(
            kind="item",
            source={"topic": "test", "partition": 0, "offset": 0},
            last_offset=0,
            events=events,
        )
        .model_dump_json()
        .encode()
    )


def test_alert_to_new_model_serving_then_restart_and_a_refused_artifact(
    broker: Any, tmp_path: Path
) -> None:
    names, _ = isolated_env(unique("retrain"))
    ensure_topics(broker.bootstrap, all_topics(names), 2)
    base_dir = tmp_path / "base-model"
    tiny_sentence_model(tmp_path / "hf").save(str(base_dir))
    settings = _settings(tmp_path, names, base_dir)

    catalog, examples = toy_relevance(1200)
    produce(broker.bootstrap, [(names.valid_items, "items", _items_batch(catalog))])
    batches = [examples[i : i + 200] for i in range(0, len(examples), 200)]
    produce(
        broker.bootstrap,
        [
            (
                names.examples,
                f"k{n}",
                ExampleBatch(task="relevance", examples=b).model_dump_json().encode(),
            )
            for n, b in enumerate(batches + batches[:2])  # two redelivered batches
        ],
    )

    live = LiveItemIndex(serving_encoder(settings), settings.index)
    base_version = live.serving.version
    replica = IndexReplica(settings, broker.bootstrap, live)
    replica.start()
    wait_until(lambda: len(live) == len(catalog), timeout_s=60)

    trainer = TrainerWorker(settings, broker.bootstrap)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    searched: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                results = live.search("seven dog", 5)
                assert len(results) == 5 and len({r.model_version for r in results}) == 1
                searched.append(results[0].model_version)
            except BaseException as exc:  # any failure fails the test below
                errors.append(exc)

    searcher = threading.Thread(target=keep_searching, daemon=True)
    searcher.start()
    try:
        wait_until(lambda: trainer.buffer.counts["added"] == len(examples), timeout_s=60)
        request = RetrainRequest.new("test")
        produce(
            broker.bootstrap,
            [(names.alerts, request.alert_id, request.model_dump_json().encode())],
        )
        published = read_topic(
            broker.bootstrap, names.models, done=lambda m: len(m) >= 1, timeout_s=180
        )
        publication = ModelPublication.model_validate_json(published[0].value())
        assert request.alert_id in (publication.trigger or "")
        wait_until(lambda: live.serving.version == publication.version, timeout_s=120)
        # keep searching until one search was answered by the new pair (a loaded machine may
        # not schedule the searcher between the swap and the stop)
        wait_until(lambda: bool(searched) and searched[-1] == publication.version, timeout_s=30)
    finally:
        stop.set()
        searcher.join(timeout=10)
        trainer.stop_event.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert searched[0] == base_version and searched[-1] == publication.version
    assert trainer.buffer.counts["duplicates"] == 400
    assert trainer.stats["published"] == 1 and trainer.stats["triggers"] == 1
    registry = ModelRegistry(settings.registry_dir)
    assert registry.current() == publication.version
    assert registry.manifest(publication.version).parent_version == base_version
    # the fine-tuned model finds the hidden mapping: "seven dog" -> apple (0) grey (7)
    assert live.search("seven dog", 1)[0].item.item_id == "toy-0-6"
    assert live.stats()["swaps"] == 1

    wait_until(lambda: replica.offsets[names.models], timeout_s=10)
    replica.stop(final_snapshot=True)
    # A restarted replica serves the new version from its snapshot, re-embedding nothing.
    encoder = serving_encoder(settings)
    assert encoder.version == publication.version
    restarted_live = LiveItemIndex(encoder, settings.index)
    restarted = IndexReplica(settings, broker.bootstrap, restarted_live)
    restarted.start()
    try:
        assert restarted.restored_from_snapshot and restarted_live.items_embedded == 0
        assert restarted_live.serving.version == publication.version

        # A tampered artifact is refused; the published model keeps serving.
        model = registry.load(publication.version)
        with torch.no_grad():
            next(model.parameters()).add_(0.05)
        bad = registry.publish(model, name="tiny", make_current=False)
        weights = next((registry.root / bad.version).glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
        produce(
            broker.bootstrap,
            [(names.models, "tiny", ModelPublication.of(bad).model_dump_json().encode())],
        )
        wait_until(lambda: restarted.model_stats["refused"] == 1, timeout_s=60)
        assert "checksum" in str(restarted.model_stats["last_error"])
        assert restarted_live.serving.version == publication.version
        assert restarted_live.search("seven dog", 1)[0].model_version == publication.version
    finally:
        restarted.stop(final_snapshot=False)


def test_a_trigger_without_enough_pairs_waits_for_more_examples_then_is_rejected(
    broker: Any, tmp_path: Path
) -> None:
    """A drift alert right after a shift finds the new traffic's labels still arriving: the
    trainer keeps the trigger, retries once the buffer has grown, and rejects it (with a
    ``retrain_rejected`` alert) only after ``defer_max_s``."""
    names, _ = isolated_env(unique("defer"))
    ensure_topics(broker.bootstrap, all_topics(names), 2)
    base_dir = tmp_path / "base-model"
    tiny_sentence_model(tmp_path / "hf").save(str(base_dir))
    settings = _settings(tmp_path, names, base_dir)
    waiting = settings.model_copy(
        update={"training": settings.training.model_copy(update={"min_examples": 500})}
    )
    _, examples = toy_relevance(400)
    trainer = TrainerWorker(waiting, broker.bootstrap)
    trainer.buffer.add(examples[:200])
    trigger = RetrainRequest(alert_id="drift-1", reason="test")

    outcome = trainer.retrain_now([trigger])
    assert outcome.insufficient_data and not outcome.accepted and outcome.fine_tune is None
    assert trainer.pending == [trigger] and trainer.stats["deferred"] == 1
    assert trainer.stats["rejected"] == 0 and not trainer.outcomes
    assert trainer.status()["deferred"]["triggers"] == ["drift-1"]
    assert not trainer._ready_to_retry()  # nothing new to try with
    trainer.buffer.add(examples[200:])
    assert trainer._ready_to_retry()

    trainer.schedule.defer_max_s = 0.0  # the wait is over
    trainer.pending = []
    outcome = trainer.retrain_now([trigger])
    assert not outcome.accepted and trainer.stats["rejected"] == 1 and not trainer.pending
    assert "waited" in outcome.reasons[-1] and trainer.status()["deferred"] is None
    rejections = [
        parse_alert(m.value())
        for m in read_topic(broker.bootstrap, names.alerts, done=lambda ms: len(ms) >= 1)
    ]
    assert [r.kind for r in rejections] == ["retrain_rejected"]
    assert isinstance(rejections[0], RetrainRejected) and rejections[0].trigger == "drift-1"
