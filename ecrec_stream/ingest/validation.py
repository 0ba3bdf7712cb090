"""Turn raw input records into typed events or dead letters. No Kafka here: records come in as
bytes plus their source position, and the caller routes the two outcomes to topics."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ecrec_stream.contracts.events import (
    EVENT_MODELS,
    SUPPORTED_VERSIONS,
    AnyEvent,
    DeadLetter,
    DeadLetterReason,
    SourcePosition,
    utc_now,
)
from ecrec_stream.ingest.isolation import describe

MAX_ERROR_CHARS = 2_000
PREVIEW_CHARS = 512


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record as read from a topic."""

    value: bytes | None
    position: SourcePosition
    key: bytes | None = None


@dataclass(slots=True)
class ValidationOutcome:
    """The result of validating a micro-batch: accepted events (with where each was read) and
    dead letters, in input order."""

    valid: list[AnyEvent] = field(default_factory=list)
    positions: list[SourcePosition] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class _NotStrictJson(ValueError):
    """JSON that Python's parser accepts but the contract does not (NaN, duplicate keys)."""


def _reject_constant(name: str) -> float:
    raise _NotStrictJson(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Parsers disagree on which duplicate wins, so a duplicated key is ambiguous input.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _NotStrictJson(f"duplicate key {dup!r}")
    return doc


def parse_json(raw: bytes) -> object:
    """Parse strict JSON: no NaN/Infinity, no duplicate keys. Raises ``ValueError`` (which
    includes ``UnicodeDecodeError`` and ``JSONDecodeError``) or ``RecursionError``.

    >>> parse_json(b'{"a": 1}')
    {'a': 1}
    >>> parse_json(b'{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    ecrec_stream.ingest.validation._NotStrictJson: duplicate key 'a'
    """
    return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)


def dead_letter_id(position: SourcePosition, event_id: str | None = None) -> str:
    """A deterministic id, so a redelivered bad record yields the same dead letter. Records
    inside a batch message (the label agents' input) add the event's id.

    >>> dead_letter_id(SourcePosition(topic="ecrec.items", partition=2, offset=7))
    'dlq:ecrec.items:2:7'
    >>> dead_letter_id(SourcePosition(topic="ecrec.valid.reviews", partition=0, offset=3), "r9")
    'dlq:ecrec.valid.reviews:0:3:r9'
    """
    base = f"dlq:{position.topic}:{position.partition}:{position.offset}"
    return f"{base}:{event_id}" if event_id else base


def make_dead_letter(
    record: RawRecord,
    kind: str,
    reason: DeadLetterReason,
    error: str,
    *,
    max_raw_bytes: int,
    event_id: str | None = None,
) -> DeadLetter:
    """Build the dead letter for ``record``, truncating the stored payload to ``max_raw_bytes``."""
    raw = record.value or b""
    kept = raw[:max_raw_bytes]
    return DeadLetter(
        dead_letter_id=dead_letter_id(record.position, event_id),
        ts=utc_now(),
        kind=kind,
        reason=reason,
        error=error[:MAX_ERROR_CHARS],
        source=record.position,
        key=record.key.decode("utf-8", "backslashreplace") if record.key is not None else None,
        raw_b64=base64.b64encode(kept).decode("ascii"),
        raw_preview=kept[:PREVIEW_CHARS].decode("utf-8", "backslashreplace"),
        raw_size=len(raw),
        raw_truncated=len(kept) < len(raw),
    )


def summarise_errors(exc: ValidationError) -> str:
    """A validation error in one line: each failing field with its message."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_one(
    kind: str, record: RawRecord, *, max_payload_bytes: int, max_raw_bytes: int
) -> AnyEvent | DeadLetter:
    """Validate one raw record as an event of ``kind``; never raises on bad input.

    Anything that goes wrong while parsing one record's bytes (invalid UTF-8, a number past
    Python's 4,300-digit limit, nesting past the recursion limit, ...) makes it a dead letter.

    >>> pos = SourcePosition(topic="ecrec.reviews", partition=0, offset=3)
    >>> out = validate_one("review", RawRecord(b'{"oops', pos), max_payload_bytes=1024,
    ...                    max_raw_bytes=64)
    >>> out.reason.value, out.raw_size
    ('malformed_json', 6)
    """
    model = EVENT_MODELS[kind]
    raw = record.value

    def dead(reason: DeadLetterReason, error: str) -> DeadLetter:
        return make_dead_letter(record, kind, reason, error, max_raw_bytes=max_raw_bytes)

    if not raw:
        return dead(DeadLetterReason.EMPTY, "empty payload")
    if len(raw) > max_payload_bytes:
        return dead(
            DeadLetterReason.OVERSIZED,
            f"payload of {len(raw)} bytes exceeds the limit of {max_payload_bytes}",
        )
    try:
        # json.loads first: it separates "not JSON" from "JSON of the wrong shape" cleanly.
        doc = parse_json(raw)
    except (ValueError, RecursionError) as exc:
        return dead(DeadLetterReason.MALFORMED_JSON, describe(exc))
    if not isinstance(doc, dict):
        return dead(
            DeadLetterReason.NOT_AN_OBJECT, f"expected a JSON object, got {type(doc).__name__}"
        )
    version = doc.get("schema_version", 1)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        return dead(
            DeadLetterReason.UNSUPPORTED_VERSION,
            f"schema_version {version!r} is not supported (this build reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
        )
    try:
        return model.model_validate_json(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        return dead(DeadLetterReason.SCHEMA_VIOLATION, summarise_errors(exc))
    except (ValueError, RecursionError) as exc:  # the JSON parser disagreeing with json.loads
        return dead(DeadLetterReason.MALFORMED_JSON, describe(exc))


def validate_many(
    kind: str, records: Iterable[RawRecord], *, max_payload_bytes: int, max_raw_bytes: int
) -> ValidationOutcome:
    """Validate a micro-batch; one bad record never affects its neighbours, and nothing raises:
    an unexpected error on a record makes it a ``processing_error`` dead letter."""
    outcome = ValidationOutcome()
    for record in records:
        try:
            result = validate_one(
                kind, record, max_payload_bytes=max_payload_bytes, max_raw_bytes=max_raw_bytes
            )
        except Exception as exc:
            result = make_dead_letter(
                record,
                kind,
                DeadLetterReason.PROCESSING_ERROR,
                describe(exc),
                max_raw_bytes=max_raw_bytes,
            )
        if isinstance(result, DeadLetter):
            outcome.dead.append(result)
        else:
            outcome.valid.append(result)
            outcome.positions.append(record.position)
    return outcome
