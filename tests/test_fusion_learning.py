"""The hybrid search's learned fusion: fitted from click examples, gated against the fixed
fusion on held-back queries, published and verified like a model, served by the live index;
and on the broker, the trainer publishes one and a replica serves it (and refuses a tampered
one)."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecrec_stream.config import IndexSettings, TrainingSettings, load_settings
from ecrec_stream.contracts import ModelPublication
from ecrec_stream.contracts.examples import TrainingExample
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.index.faiss_index import SearchHit
from ecrec_stream.index.ranker import FEATURES, LearnedFusion
from ecrec_stream.labels.examples import ExampleBatch
from ecrec_stream.training.buffer import BufferSplit
from ecrec_stream.training.fusion import FusionLearner, logged_rerank
from ecrec_stream.training.registry import ArtifactError, ModelRegistry
from streams.kafka import all_topics, ensure_topics
from tests.helpers import (
    HashEncoder,
    at,
    isolated_env,
    item,
    produce,
    read_topic,
    relevant_pair,
    tiny_sentence_model,
    unique,
    wait_until,
)


def never_clicked(example_id: str, query: str, item_id: str, ts: float) -> TrainingExample:
    """A "not relevant" example from many sessions that saw the pair and never clicked."""
    return TrainingExample(
        example_id=example_id,
        task="relevance",
        text=query,
        text_pair=f"title of {item_id}",
        item_id=item_id,
        label=0,
        grade=0,
        confidence=0.9,
        weight=1.0,
        votes={"never_clicked": 0},
        source_event_ids=[example_id],
        ts=at(ts),
    )


def lexical_wins(n_queries: int, seed: int = 0) -> tuple[list[TrainingExample], dict[str, Any]]:
    """Traffic where BM25 finds what shoppers click and the dense list leads with what they
    never click: per query the clicked item is BM25's first and missing from the dense list,
    which starts with two never-clicked items (ids that sort first, so a tie under RRF goes
    their way)."""
    rng = random.Random(seed)
    examples, lists = [], {}
    for n in range(n_queries):
        query = f"part {n:04d}"
        good, bad = f"z-{n}", [f"a-{n}-{j}" for j in range(2)]
        noise = [f"m-{n}-{j}" for j in range(20)]
        dense = [SearchHit(i, 0.9 - 0.01 * r) for r, i in enumerate(bad + noise)]
        lexical = [SearchHit(good, 12.0)] + [
            SearchHit(i, 3.0 - 0.1 * r) for r, i in enumerate(rng.sample(noise, 5))
        ]
        lists[query] = (dense, lexical)
        examples.append(
            relevant_pair(f"p-{n}", query, None, good, [f"s-{n}"], at(n), votes={"clicks": 1})
        )
        examples += [never_clicked(f"n-{n}-{j}", query, b, n) for j, b in enumerate(bad)]
    return examples, lists


def split_of(examples: list[TrainingExample]) -> BufferSplit:
    """Two thirds to train on, the newest sixth as recent held-back, the rest older."""
    by_query: dict[str, list[TrainingExample]] = {}
    for e in examples:
        by_query.setdefault(e.text, []).append(e)
    groups = list(by_query.values())
    a, b = len(groups) * 2 // 3, len(groups) * 5 // 6
    flat = lambda gs: [e for g in gs for e in g]  # noqa: E731
    return BufferSplit(flat(groups[:a]), flat(groups[b:]), flat(groups[a:b]))


def test_a_fusion_learned_from_clicks_beats_rrf_where_one_list_misleads() -> None:
    examples, lists = lexical_wins(300)
    learner = FusionLearner(TrainingSettings(min_eval_queries=10), IndexSettings())
    outcome = learner.fit_many(split_of(examples), lambda qs: lists, lambda i: None, None)
    assert outcome.accepted, outcome.reasons
    assert outcome.serving == "rrf" and outcome.candidate is not None
    weights = dict(zip(FEATURES, outcome.candidate.weights, strict=True))
    assert weights["lexical_rrank"] > weights["dense_rrank"]
    assert outcome.decision is not None
    # every query judged out of fold: fitted on the other four folds, never on itself
    crossed = outcome.decision.differences["cross_fitted"]
    assert crossed.low > 0 and crossed.queries == 300  # the learned fusion is better, not tied
    assert outcome.decision.candidate["cross_fitted"]["ndcg@10"] == pytest.approx(1.0)
    assert "cross-fitted (5 folds of queries)" in outcome.reasons[0]

    # too few queries to judge an order on: refused, however good the fit
    strict = FusionLearner(TrainingSettings(min_eval_queries=400), IndexSettings())
    few = strict.fit_many(split_of(examples), lambda qs: lists, lambda i: None, None)
    assert not few.accepted and "only 300 queries" in few.reasons[0]

    # the same candidate against itself as the serving fusion: nothing new to publish
    again = learner.fit_many(
        split_of(examples), lambda qs: lists, lambda i: None, outcome.candidate
    )
    assert not again.accepted and "nothing to publish" in again.reasons[0]

    # only clicks, no negatives from many sessions: no pairs, nothing fitted
    only_clicks = [e for e in examples if e.label == 1]
    starved = learner.fit_many(split_of(only_clicks), lambda qs: lists, lambda i: None, None)
    assert not starved.accepted and "only 0" in starved.reasons[0]

    # skips above a click are not "not relevant" evidence for a fusion
    skipped = [
        e.model_copy(update={"votes": {"clicks": 0}}) if e.label == 0 else e for e in examples
    ]
    assert (
        learner.fit_many(split_of(skipped), lambda qs: lists, lambda i: None, None).counts["pairs"]
        == 0
    )


def test_logged_rerank_leaves_out_queries_without_an_order_to_judge() -> None:
    scores = logged_rerank(
        {"q1": {"a": 1.0, "b": 0.0}, "q2": {"c": 1.0}, "q3": {"d": 0.0, "e": 2.0}},
        lambda q: {"q1": ["b", "a"], "q3": ["e"]}[q],
        10,
    )
    assert scores["queries"] == 2 and set(scores.per_query) == {"q1", "q3"}
    assert scores.per_query["q3"] == 1.0 and scores.per_query["q1"] < 1.0


def test_learned_fusion_documents_are_checked_and_versioned_by_content() -> None:
    fusion = LearnedFusion(tuple(float(i) for i in range(len(FEATURES))), trained_on={"pairs": 3})
    again = LearnedFusion.from_json(fusion.to_json())
    assert again == fusion and again.version == fusion.version and len(fusion.version) == 16
    doc = json.loads(fusion.to_json())
    doc["weights"][0] = 5.0  # edited weights no longer match the version they claim
    with pytest.raises(ValueError, match="does not match"):
        LearnedFusion.from_json(json.dumps(doc))
    doc = json.loads(fusion.to_json())
    doc["features"] = doc["features"][:-1]
    doc.pop("version")
    with pytest.raises(ValueError, match="this version scores"):
        LearnedFusion.from_json(json.dumps(doc))


def lexical_only() -> LearnedFusion:
    """A fusion that ranks by BM25 rank alone."""
    return LearnedFusion(tuple(1.0 if f == "lexical_rrank" else 0.0 for f in FEATURES))


def test_the_live_index_serves_hybrid_search_with_a_learned_fusion() -> None:
    live = LiveItemIndex(HashEncoder(), IndexSettings())
    live.apply_many(
        [
            item("cable", "usb cable 3m", 1),
            item("hub", "usb hub", 1),
            item("case", "phone case", 1),
            item("charger", "usb charger 3m fast", 1),
        ]
    )
    lexical = [r.item.item_id for r in live.search("usb 3m", 4, "lexical")]
    assert live.fusion == "rrf"
    live.set_fusion(lexical_only())
    assert live.fusion == f"learned {lexical_only().version}"
    learned = live.search("usb 3m", 4, "hybrid")
    assert [r.item.item_id for r in learned][: len(lexical)] == lexical
    assert live.stats()["fusion"] == live.fusion
    assert [r.item.item_id for r in live.search("usb 3m", 4, "dense")] != []  # unaffected
    off = LiveItemIndex(HashEncoder(), IndexSettings(learned_fusion=False))
    off.set_fusion(lexical_only())
    assert off.fusion == "rrf"


def test_a_fusion_is_published_verified_rolled_back_and_kept_apart_from_encoders(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    first = registry.publish_fusion(lexical_only(), metrics={"recent.ndcg@10": 0.8})
    assert first.artifact == "fusion" and first.version == lexical_only().version
    assert registry.current_fusion() == first.version and registry.current() is None
    assert registry.load_fusion(first.version) == lexical_only()
    second_fusion = LearnedFusion(tuple(1.0 for _ in FEATURES))
    second = registry.publish_fusion(second_fusion, parent_version=first.version)
    assert registry.current_fusion() == second.version
    registry.set_current(first.version)  # rollback
    assert registry.current_fusion() == first.version and registry.current() is None
    with pytest.raises(ArtifactError, match="not an encoder"):
        registry.load(first.version)
    encoder = registry.publish(tiny_sentence_model(tmp_path / "base"), name="tiny")
    with pytest.raises(ArtifactError, match="not a fusion"):
        registry.load_fusion(encoder.version)
    assert registry.current() == encoder.version and registry.current_fusion() == first.version
    path = registry.root / second.version / "fusion.json"
    path.write_text(path.read_text().replace("1.0", "2.0", 1))
    with pytest.raises(ArtifactError, match="checksum"):
        registry.load_fusion(second.version)
    publication = ModelPublication.of(registry.manifest(first.version))
    assert publication.artifact == "fusion"


# -- on the broker: the trainer learns and publishes one, a replica serves it ------------------
def test_trainer_publishes_a_learned_fusion_and_replicas_serve_it(
    broker: Any, tmp_path: Path
) -> None:
    from workers.indexer import IndexReplica, serving_encoder
    from workers.trainer import TrainerWorker

    names, _ = isolated_env(unique("fusion"))
    ensure_topics(broker.bootstrap, all_topics(names), 2)
    base = tmp_path / "base-model"
    tiny_sentence_model(tmp_path / "hf").save(str(base))
    settings = load_settings(
        topics=names.model_dump(),
        partitions=2,
        data_dir=str(tmp_path / "data"),
        embedding={"model": str(base)},
        index={"data_dir": str(tmp_path / "index"), "snapshot_interval_s": 0.5},
        training={
            "device": "cpu",
            "min_eval_queries": 5,
            "fusion_every": 500,
            "fusion_min_pairs": 50,
        },
    )
    # 120 items titled by two random words each; shoppers search a title's words and click
    # that item (BM25's first), and never click two items the dense list shows them
    rng = random.Random(1)
    words = [f"w{i}" for i in range(40)]
    titles = {f"item-{n}": " ".join(rng.sample(words, 2)) + f" sku{n}" for n in range(120)}
    events = [item(i, t, 1) for i, t in titles.items()]
    from ecrec_stream.contracts.events import EventBatch

    batch = EventBatch(
        kind="item",
        source={"topic": "t", "partition": 0, "offset": 0},
        last_offset=0,
        events=events,
    )
    produce(broker.bootstrap, [(names.valid_items, "items", batch.model_dump_json().encode())])
    examples: list[TrainingExample] = []
    ids = list(titles)
    for n in range(200):
        target = ids[n % len(ids)]
        query = f"sku{target.split('-')[1]} {titles[target].split()[0]}"
        examples.append(
            relevant_pair(
                f"p{n}", query, titles[target], target, [f"s{n}"], at(n), votes={"clicks": 1}
            )
        )
        others = rng.sample([i for i in ids if i != target], 2)
        examples += [never_clicked(f"n{n}-{j}", query, o, n) for j, o in enumerate(others)]
    produce(
        broker.bootstrap,
        [
            (
                names.examples,
                f"k{s}",
                ExampleBatch(task="relevance", examples=examples[s : s + 100])
                .model_dump_json()
                .encode(),
            )
            for s in range(0, len(examples), 100)
        ],
    )

    live = LiveItemIndex(serving_encoder(settings), settings.index)
    replica = IndexReplica(settings, broker.bootstrap, live)
    replica.start()
    trainer = TrainerWorker(settings, broker.bootstrap)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    try:
        published = read_topic(
            broker.bootstrap, names.models, done=lambda m: len(m) >= 1, timeout_s=90
        )
        assert published, json.dumps(trainer.status(), default=str)[-3000:]
        publication = ModelPublication.model_validate_json(published[0].value())
        assert publication.artifact == "fusion", publication
        wait_until(lambda: live.fusion == f"learned {publication.version}", timeout_s=60)
        assert trainer.stats["fusions_published"] == 1 and trainer.stats["published"] == 0
        status = trainer.status()
        assert status["serving_fusion"] == publication.version
        assert status["outcomes"][-1]["artifact"] == "fusion"
        wait_until(lambda: len(live) == len(titles), timeout_s=60)
        query = f"sku7 {titles['item-7'].split()[0]}"
        assert live.search(query, 3)[0].item.item_id == "item-7"
    finally:
        trainer.stop_event.set()
        thread.join(timeout=60)
        replica.stop(final_snapshot=True)

    # a restarted replica serves the registry's fusion; a tampered one is refused
    registry = ModelRegistry(settings.registry_dir)
    restarted_live = LiveItemIndex(serving_encoder(settings), settings.index)
    restarted = IndexReplica(settings, broker.bootstrap, restarted_live)
    restarted.start()
    try:
        assert restarted_live.fusion == f"learned {publication.version}"
        bad = registry.publish_fusion(
            LearnedFusion(tuple(np.ones(len(FEATURES)))), make_current=False
        )
        path = registry.root / bad.version / "fusion.json"
        path.write_text(path.read_text() + " ")
        produce(
            broker.bootstrap,
            [(names.models, "fusion", ModelPublication.of(bad).model_dump_json().encode())],
        )
        wait_until(lambda: restarted.model_stats["refused"] == 1, timeout_s=60)
        assert "checksum" in str(restarted.model_stats["last_error"])
        assert restarted_live.fusion == f"learned {publication.version}"
    finally:
        restarted.stop(final_snapshot=False)
