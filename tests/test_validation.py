"""Raw records -> events or dead letters with the right reason."""

from __future__ import annotations

import base64
import json

import pytest

from ecrec_stream.contracts.events import DeadLetter, DeadLetterReason, ReviewEvent, SourcePosition
from ecrec_stream.ingest.validation import RawRecord, validate_many, validate_one

POS = SourcePosition(topic="ecrec.reviews", partition=3, offset=41)
GOOD = json.dumps(
    {"event_id": "r1", "ts": "2026-01-01T00:00:00Z", "item_id": "a", "rating": 5, "text": "great"}
).encode()


def _check(raw: bytes | None, **limits: int) -> ReviewEvent | DeadLetter:
    opts = {"max_payload_bytes": 1024, "max_raw_bytes": 64, **limits}
    return validate_one("review", RawRecord(raw, POS, key=b"a"), **opts)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, DeadLetterReason.EMPTY),
        (b"", DeadLetterReason.EMPTY),
        (b"{not json", DeadLetterReason.MALFORMED_JSON),
        (b"\xff\xfe\x00", DeadLetterReason.MALFORMED_JSON),
        (b"[1, 2]", DeadLetterReason.NOT_AN_OBJECT),
        (b'{"schema_version": 9}', DeadLetterReason.UNSUPPORTED_VERSION),
        (GOOD.replace(b'"rating": 5', b'"rating": "5"'), DeadLetterReason.SCHEMA_VIOLATION),
        (GOOD.replace(b'"rating": 5', b'"rating": 7'), DeadLetterReason.SCHEMA_VIOLATION),
        (b'{"event_id": "x"}', DeadLetterReason.SCHEMA_VIOLATION),
        (b'{"pad": "' + b"x" * 2000 + b'"}', DeadLetterReason.OVERSIZED),
    ],
)
def test_reasons(raw: bytes | None, reason: DeadLetterReason) -> None:
    out = _check(raw)
    assert isinstance(out, DeadLetter)
    assert out.reason is reason
    assert out.source == POS and out.key == "a" and out.kind == "review"
    assert out.error


def test_dead_letter_keeps_a_bounded_copy_of_the_payload() -> None:
    raw = b'{"pad": "' + b"y" * 2000 + b'"}'
    out = _check(raw)
    assert isinstance(out, DeadLetter)
    assert out.raw_size == len(raw) and out.raw_truncated
    assert base64.b64decode(out.raw_b64) == raw[:64]
    small = _check(b"{bad")
    assert isinstance(small, DeadLetter) and not small.raw_truncated
    assert base64.b64decode(small.raw_b64) == b"{bad"


def test_schema_errors_name_the_field() -> None:
    out = _check(GOOD.replace(b'"rating": 5', b'"rating": 7'))
    assert isinstance(out, DeadLetter) and out.error.startswith("rating:")


def test_valid_record_becomes_an_event() -> None:
    out = _check(GOOD)
    assert isinstance(out, ReviewEvent) and out.rating == 5


def test_bad_records_never_cost_their_neighbours() -> None:
    records = [
        RawRecord(r, SourcePosition(topic="t", partition=0, offset=i))
        for i, r in enumerate([GOOD, b"{", GOOD.replace(b"r1", b"r2"), b"[]"])
    ]
    outcome = validate_many("review", records, max_payload_bytes=1024, max_raw_bytes=64)
    assert [e.event_id for e in outcome.valid] == ["r1", "r2"]
    assert [d.source.offset for d in outcome.dead] == [1, 3]
    # deterministic: a redelivered bad record gets the same dead-letter id
    again = validate_many("review", records, max_payload_bytes=1024, max_raw_bytes=64)
    assert [d.dead_letter_id for d in again.dead] == [d.dead_letter_id for d in outcome.dead]
