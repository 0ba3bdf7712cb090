"""Shared test helpers: fake encoder for pure units, topic readers for integration tests."""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ecrec_stream.contracts.events import ItemEvent, utc_now
from workers.processes import wait_until

__all__ = ["wait_until"]  # re-exported for the tests

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def item(
    item_id: str, title: str = "", ts: float = 0.0, op: str = "upsert", **fields: Any
) -> ItemEvent:
    return ItemEvent(
        event_id=f"e-{item_id}-{ts}-{op}",
        ts=at(ts),
        op=op,
        item_id=item_id,
        title=(title or f"item {item_id}") if op == "upsert" else None,
        **fields,
    )


class HashEncoder:
    """Deterministic bag-of-words vectors: a unit with no external part needs no real model.
    Texts sharing words get similar vectors, so search order is meaningful."""

    def __init__(self, dim: int = 32, name: str = "hash-encoder", salt: str = "") -> None:
        self._dim = dim
        self._name = name
        self._salt = salt  # another salt embeds differently: a different "model version"
        self.texts_encoded = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return hashlib.sha1(f"{self._name}|{self._dim}|{self._salt}".encode()).hexdigest()[:16]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                digest = hashlib.sha1((self._salt + word).encode()).digest()
                h = int.from_bytes(digest[:4], "little")
                out[row, h % self._dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        self.texts_encoded += len(texts)
        return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read_topic(
    bootstrap: str, topic: str, *, done: Callable[[list[Any]], bool], timeout_s: float = 60.0
) -> list[Any]:
    """Read every partition of ``topic`` from the beginning until ``done(messages)``."""
    from streams.kafka import partition_reader

    consumer = partition_reader(bootstrap, [topic], name="test-reader")
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(messages):
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    messages.append(msg)
    finally:
        consumer.close()
    return messages


def batch_events(messages: list[Any]) -> list[dict[str, Any]]:
    """Events inside ``EventBatch`` messages, in topic order per partition."""
    return [e for m in messages for e in json.loads(m.value())["events"]]


# Harmless records for read_to_end: an EventBatch with no events, an ExampleBatch with none.
EMPTY_EVENT_BATCH = json.dumps(
    {
        "kind": "review",
        "source": {"topic": "sentinel", "partition": 0, "offset": 0},
        "last_offset": 0,
        "events": [],
    }
).encode()
EMPTY_EXAMPLE_BATCH = json.dumps({"task": "sentiment", "examples": []}).encode()


def read_to_end(bootstrap: str, topic: str, sentinel: bytes, timeout_s: float = 60.0) -> list[Any]:
    """Everything on ``topic`` written before this call, proven complete rather than waited
    for: a sentinel record is appended to every partition, and the topic is read until each
    partition's sentinel has arrived (Tansu's high watermark cannot be trusted). Sentinels are
    left out of the result. ``sentinel`` must be a value the topic's consumers accept."""
    from streams.kafka import new_producer, topic_partitions

    marker = unique("sentinel").encode()
    partitions = topic_partitions(bootstrap, topic)
    producer = new_producer(bootstrap)
    for p in partitions:
        producer.produce(topic, key=marker, value=sentinel, partition=p)
    assert producer.flush(30) == 0

    def all_sentinels(msgs: list[Any]) -> bool:
        return {m.partition() for m in msgs if m.key() == marker} == set(partitions)

    messages = read_topic(bootstrap, topic, done=all_sentinels, timeout_s=timeout_s)
    if not all_sentinels(messages):
        raise AssertionError(f"sentinels not all read back from {topic} in {timeout_s}s")
    # every test's sentinels, not only this call's: an earlier call's must not count as data
    return [m for m in messages if not (m.key() or b"").startswith(b"sentinel-")]


def isolated_env(tag: str) -> tuple[Any, dict[str, str]]:
    """Own topics and consumer group, so a test's worker shares nothing with the session's."""
    from ecrec_stream.config import TopicNames

    names = TopicNames(**{f: f"{tag}.{v}" for f, v in TopicNames().model_dump().items()})
    env = {f"ECREC_TOPICS__{f.upper()}": v for f, v in names.model_dump().items()}
    env["ECREC_APP_ID"] = tag
    return names, env


def isolated_settings(bootstrap: str, tag: str, data_dir: Path, **overrides: Any) -> Any:
    """Settings on topics of their own (created, 2 partitions) with ``data_dir``, for a test
    that runs a trainer or a replica in process."""
    from ecrec_stream.config import load_settings
    from streams.kafka import all_topics, ensure_topics

    names, _ = isolated_env(unique(tag))
    ensure_topics(bootstrap, all_topics(names), 2)
    return load_settings(
        topics=names.model_dump(), partitions=2, data_dir=str(data_dir), **overrides
    )


def produce(bootstrap: str, records: list[tuple[str, str, bytes]]) -> list[tuple[int, int]]:
    """Send (topic, key, value) records; return (partition, offset) of each, in order."""
    from streams.kafka import new_producer

    producer = new_producer(bootstrap)
    positions: list[tuple[int, int] | None] = [None] * len(records)

    def report(i: int) -> Any:
        def _cb(err: Any, msg: Any) -> None:
            assert err is None, err
            positions[i] = (msg.partition(), msg.offset())

        return _cb

    for i, (topic, key, value) in enumerate(records):
        producer.produce(topic, key=key.encode(), value=value, on_delivery=report(i))
    assert producer.flush(30) == 0
    return [p for p in positions if p is not None]


def tiny_sentence_model(directory: Path, seed: int = 0) -> Any:
    """A tiny random BERT sentence encoder built from a config (the packaged MiniLM's
    tokenizer, 1 layer of width 32): real torch and sentence-transformers, nothing downloaded."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ecrec_stream.embedding import resolve_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    word = Transformer(str(directory), max_seq_length=64)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[word, pool, Normalize()], device="cpu")


TOY_QUERY_NOUNS = "dog cat horse cow sheep goat duck hen fox wolf bear deer".split()
TOY_QUERY_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
TOY_TITLE_NOUNS = "apple banana cherry grape lemon mango olive peach pear plum kiwi melon".split()
TOY_TITLE_COLOURS = "red blue green black white pink brown grey gold silver orange purple".split()


def toy_relevance(
    n_examples: int, seed: int = 0, *, shuffled: bool = False, start: float = 0.0
) -> tuple[dict[str, str], list[Any]]:
    """A retrieval task no untrained encoder solves: 144 items titled "<fruit> <colour>",
    queries "<number> <animal>" with a fixed hidden mapping (no shared words). Returns the
    catalog (item id -> title) and relevance examples, one second apart in event time;
    ``shuffled`` pairs every query with a random item (a harmful update)."""
    rng = random.Random(seed)
    catalog = {
        f"toy-{a}-{b}": f"{TOY_TITLE_NOUNS[a]} {TOY_TITLE_COLOURS[b]}"
        for a in range(12)
        for b in range(12)
    }
    ids = list(catalog)
    examples = []
    for n in range(n_examples):
        a, b = rng.randrange(12), rng.randrange(12)
        item_id = rng.choice(ids) if shuffled else f"toy-{a}-{b}"
        examples.append(
            relevant_pair(
                f"toy-{seed}-{shuffled}-{n}",
                f"{TOY_QUERY_NUMBERS[b]} {TOY_QUERY_NOUNS[a]}",
                catalog[item_id],
                item_id,
                [f"search-{seed}-{n}"],
                at(start + n),
                votes={"clicks": 1},
            )
        )
    return catalog, examples


def relevant_pair(
    example_id: str,
    query: str,
    title: str | None,
    item_id: str,
    source_event_ids: list[str],
    ts: datetime,
    *,
    votes: dict[str, int] | None = None,
) -> Any:
    """A relevance example labelled relevant (grade 1, full confidence and weight): toy
    tasks, and the raw-clicks baseline of the benchmarks."""
    from ecrec_stream.labels.examples import TrainingExample

    return TrainingExample(
        example_id=example_id,
        task="relevance",
        text=query,
        text_pair=title,
        item_id=item_id,
        label=1,
        grade=1,
        confidence=1.0,
        weight=1.0,
        votes=votes or {},
        source_event_ids=source_event_ids,
        ts=ts,
    )


REVIEW_WORDS = ["lovely soft", "great fitting", "awful scratchy", "cheap flimsy", "perfect warm"]


def souring_reviews(topic: str, tag: str, n: int) -> list[tuple[str, str, bytes]]:
    """Reviews of 29 items one second apart; ratings sour half-way (a drift the ``rating``
    detector sees)."""
    start = utc_now()
    out = []
    for i in range(n):
        good = i < n // 2
        doc = {
            "event_id": f"{tag}-{i}",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "item_id": f"item-{i % 29}",
            "rating": (5, 4, 5, 4, 5)[i % 5] if good else (1, 2, 1, 1, 2)[i % 5],
            "text": f"A {REVIEW_WORDS[i % 5]} sweater, review number {i}",
        }
        out.append((topic, doc["item_id"], json.dumps(doc).encode()))
    return out
