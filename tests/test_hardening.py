"""Hostile input never raises: validation, isolation of failing records, byte-bounded output."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ecrec_stream.config import Settings, load_settings
from ecrec_stream.contracts.events import DeadLetter, EventBatch, ReviewEvent, SourcePosition
from ecrec_stream.ingest.batching import event_batch_messages, pack_by_bytes
from ecrec_stream.ingest.isolation import isolate_failures
from ecrec_stream.ingest.validation import RawRecord, validate_many, validate_one
from ecrec_stream.labels.examples import ExampleBatch, TrainingExample, example_batch_messages

KINDS = ["item", "search", "click", "review"]
LIMITS = {"max_payload_bytes": 65_536, "max_raw_bytes": 16_384}
VALID_REVIEW = {
    "event_id": "r1",
    "ts": "2026-01-01T00:00:00Z",
    "item_id": "sku-1",
    "rating": 4,
    "text": "fine",
}


def _record(value: bytes | None, offset: int = 0) -> RawRecord:
    return RawRecord(value, SourcePosition(topic="in", partition=0, offset=offset))


def _outcome_accounts_for_everything(kind: str, values: list[bytes | None]) -> None:
    records = [_record(v, i) for i, v in enumerate(values)]
    outcome = validate_many(kind, records, **LIMITS)
    assert len(outcome.valid) + len(outcome.dead) == len(records)
    assert len(outcome.positions) == len(outcome.valid)
    for dead in outcome.dead:
        assert dead.reason and dead.error


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), raw=st.binary(max_size=2_000))
def test_arbitrary_bytes_never_raise(kind: str, raw: bytes) -> None:
    result = validate_one(kind, _record(raw), **LIMITS)
    assert isinstance(result, DeadLetter | ReviewEvent) or result.event_id


JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), doc=JSON_TREES)
def test_arbitrary_json_trees_give_an_event_or_a_dead_letter(kind: str, doc: Any) -> None:
    _outcome_accounts_for_everything(kind, [json.dumps(doc).encode()])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(VALID_REVIEW)),
    value=JSON_TREES,
    extra=st.dictionaries(st.text(max_size=8), JSON_TREES, max_size=2),
)
def test_mutated_reviews_give_an_event_or_a_dead_letter(
    field: str, value: Any, extra: dict[str, Any]
) -> None:
    doc = {**VALID_REVIEW, field: value, **extra}
    _outcome_accounts_for_everything("review", [json.dumps(doc).encode()])


POISON = {
    "huge integer": b'{"event_id":"p","ts":"2026-01-01T00:00:00Z","op":"upsert","item_id":"i",'
    b'"title":"t","price":1' + b"0" * 5_000 + b"}",
    "deep nesting": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "invalid utf-8": b'{"event_id":"\xff\xfe"}',
    "NaN": b'{"event_id":"p","ts":"2026-01-01T00:00:00Z","item_id":"i","rating":NaN}',
    "Infinity": b'{"price": Infinity}',
    "duplicate key": json.dumps(VALID_REVIEW)[:-1].encode() + b', "rating": 1}',
    "lone surrogate": b'{"event_id":"p","text":"\\ud800"}',
    "empty": b"",
    "none": None,
}


VALID_ITEM = {
    "event_id": "i1",
    "ts": "2026-01-01T00:00:00Z",
    "op": "upsert",
    "item_id": "sku-1",
    "title": "t",
}


@pytest.mark.parametrize("name", list(POISON))
def test_poison_records_become_dead_letters(name: str) -> None:
    kind, neighbour = ("item", VALID_ITEM) if name == "huge integer" else ("review", VALID_REVIEW)
    records = [_record(POISON[name]), _record(json.dumps(neighbour).encode(), 1)]
    outcome = validate_many(kind, records, **LIMITS)
    assert [d.source.offset for d in outcome.dead] == [0], outcome
    assert [e.event_id for e in outcome.valid] == [neighbour["event_id"]]


def test_huge_integer_is_malformed_json_with_the_reason() -> None:
    dead = validate_one("item", _record(POISON["huge integer"]), **LIMITS)
    assert isinstance(dead, DeadLetter)
    assert dead.reason.value == "malformed_json" and "4300" in dead.error


def test_a_record_that_makes_validation_raise_is_a_processing_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ecrec_stream.ingest.validation as validation

    real = validation.validate_one

    def flaky(kind: str, record: RawRecord, **kw: Any) -> Any:
        if record.position.offset == 1:
            raise MemoryError("simulated")
        return real(kind, record, **kw)

    monkeypatch.setattr(validation, "validate_one", flaky)
    good = json.dumps(VALID_REVIEW).encode()
    outcome = validate_many("review", [_record(good, i) for i in range(3)], **LIMITS)
    assert [p.offset for p in outcome.positions] == [0, 2]
    assert [(d.source.offset, d.reason.value) for d in outcome.dead] == [(1, "processing_error")]
    assert "MemoryError: simulated" in outcome.dead[0].error


def test_isolation_finds_every_poison_item_and_keeps_order() -> None:
    calls = []

    def square_unless_negative(xs: Any) -> list[int]:
        calls.append(len(xs))
        if any(x < 0 for x in xs):
            raise ValueError(f"negative in {list(xs)}")
        return [x * x for x in xs]

    items = list(range(64))
    items[5], items[40] = -5, -40
    out, failed = isolate_failures(square_unless_negative, items)
    assert out == [x * x for x in items if x >= 0]
    assert [f.item for f in failed] == [-5, -40]
    assert all(f.error.startswith("ValueError: negative") for f in failed)
    assert len(calls) < 30  # bisection, not one call per item
    with pytest.raises(ValueError):
        isolate_failures(square_unless_negative, items, "stop")


def test_packing_respects_the_bound_and_keeps_order() -> None:
    sizes = [100, 5_000, 40, 900, 900, 900, 10, 2_000]
    packed = pack_by_bytes(sizes, 2_000, envelope=100)
    assert packed.oversized == [1, 7]
    flat = [i for run in packed.runs for i in run]
    assert flat == [0, 2, 3, 4, 5, 6]
    for run in packed.runs:
        assert sum(sizes[i] for i in run) + len(run) - 1 + 100 <= 2_000


def _reviews(n: int, text_len: int) -> list[ReviewEvent]:
    return [
        ReviewEvent.model_validate_json(
            json.dumps({**VALID_REVIEW, "event_id": f"r{i}", "text": "x" * text_len})
        )
        for i in range(n)
    ]


def test_event_batches_are_split_under_the_limit_and_parse_back() -> None:
    events = _reviews(500, 2_500)  # ~1.3 MB as one message: over Kafka's default 1 MiB
    positions = [SourcePosition(topic="in", partition=3, offset=100 + i) for i in range(500)]
    messages, oversized = event_batch_messages("review", events, positions, 524_288)
    assert oversized == [] and len(messages) == 3
    got = []
    for first, body in messages:
        assert len(body) <= 524_288
        batch = EventBatch.model_validate_json(body)
        assert batch.source == first and batch.kind == "review"
        assert batch.last_offset == 100 + int(batch.events[-1].event_id[1:])
        got += batch.events
    assert got == events
    # the envelope matches what the model itself writes
    whole = EventBatch(kind="review", source=positions[0], last_offset=599, events=events)
    single, _ = event_batch_messages("review", events, positions, 10_000_000)
    assert single[0][1] == whole.model_dump_json().encode()


def test_example_batches_are_split_under_the_limit() -> None:
    examples = [
        TrainingExample(
            example_id=f"ex-{i}",
            task="sentiment",
            text="y" * 3_000,
            item_id="i",
            label=1,
            confidence=0.9,
            weight=0.9,
            votes={"rating": 1},
            source_event_ids=[f"r{i}"],
        )
        for i in range(1_000)
    ]
    messages, oversized = example_batch_messages("sentiment", examples, 524_288)
    assert oversized == [] and len(messages) > 1
    assert all(len(m) <= 524_288 for m in messages)
    ids = [e.example_id for m in messages for e in ExampleBatch.model_validate_json(m).examples]
    assert ids == [e.example_id for e in examples]


def test_settings_overrides_are_validated_like_the_environment() -> None:
    with pytest.raises(ValidationError):
        load_settings(partitions=0)
    with pytest.raises(ValidationError):
        load_settings(index={"port": -1})
    with pytest.raises(ValidationError):  # a message must hold the largest accepted event
        load_settings(max_message_bytes=65_536)
    assert load_settings(index={"port": 0}).index.port == 0


def test_web_port_zero_disables_the_faust_web_server(tmp_path: Any) -> None:
    from streams.app import create_app
    from streams.capabilities import BrokerCapabilities

    s = Settings(worker_web_port=0, data_dir=tmp_path / "not" / "there", labels={"enabled": False})
    app = create_app(
        s, "127.0.0.1:9", BrokerCapabilities(exact_end_offsets=True, topic_configs=True)
    )
    assert app.conf.web_enabled is False
    assert (tmp_path / "not" / "there" / "worker").is_dir()


def test_the_worker_producer_lingers_as_set(tmp_path: Any) -> None:
    """``ECREC_PRODUCER_LINGER_MS`` reaches Faust's producer (5 ms by default; 0 sends at once)."""
    from streams.app import create_app
    from streams.capabilities import BrokerCapabilities

    caps = BrokerCapabilities(exact_end_offsets=True, topic_configs=True)
    for linger_ms, seconds in ((None, 0.005), (0.0, 0.0), (20.0, 0.02)):
        extra = {} if linger_ms is None else {"producer_linger_ms": linger_ms}
        s = Settings(data_dir=tmp_path, labels={"enabled": False}, **extra)
        assert create_app(s, "h:9", caps).conf.producer_linger == pytest.approx(seconds)


def test_roles_can_run_in_processes_of_their_own(tmp_path: Any) -> None:
    """``ECREC_INGEST__ENABLED=false`` leaves ingest to other workers: a drift-only worker
    reads the validated topics and nothing else (its own app id is its consumer group)."""
    from streams.app import create_app
    from streams.capabilities import BrokerCapabilities

    caps = BrokerCapabilities(exact_end_offsets=True, topic_configs=True)
    both = create_app(Settings(data_dir=tmp_path / "a", labels={"enabled": False}), "h:9", caps)
    drift_only = Settings(
        app_id="ecrec-drift", data_dir=tmp_path / "b", ingest={"enabled": False},
        labels={"enabled": False},
    )  # fmt: skip
    app = create_app(drift_only, "h:9", caps)
    topics = {t for agent in app.agents.values() for t in agent.get_topic_names()}
    names = drift_only.topics
    assert names.searches not in topics and names.reviews not in topics
    assert {names.valid_searches, names.valid_clicks, names.valid_reviews} <= topics
    all_topics = {t for agent in both.agents.values() for t in agent.get_topic_names()}
    assert names.searches in all_topics and len(app.agents) < len(both.agents)
