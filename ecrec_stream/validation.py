"""Turn raw input records into typed events or dead letters. No Kafka here: records come in as
bytes plus their source position, and the caller routes the two outcomes to topics."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ecrec_stream.events import (
    EVENT_MODELS,
    AnyEvent,
    DeadLetter,
    DeadLetterReason,
    SourcePosition,
    utc_now,
)

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
    """The result of validating a micro-batch: accepted events and dead letters, in input order."""

    valid: list[AnyEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def dead_letter_id(position: SourcePosition) -> str:
    """A deterministic id, so a redelivered bad record yields the same dead letter.

    >>> dead_letter_id(SourcePosition(topic="ecrec.items", partition=2, offset=7))
    'dlq:ecrec.items:2:7'
    """
    return f"dlq:{position.topic}:{position.partition}:{position.offset}"


def make_dead_letter(
    record: RawRecord,
    kind: str,
    reason: DeadLetterReason,
    error: str,
    *,
    max_raw_bytes: int,
) -> DeadLetter:
    """Build the dead letter for ``record``, truncating the stored payload to ``max_raw_bytes``."""
    raw = record.value or b""
    kept = raw[:max_raw_bytes]
    return DeadLetter(
        dead_letter_id=dead_letter_id(record.position),
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


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_one(
    kind: str, record: RawRecord, *, max_payload_bytes: int, max_raw_bytes: int
) -> AnyEvent | DeadLetter:
    """Validate one raw record as an event of ``kind``; never raises on bad input.

    >>> pos = SourcePosition(topic="ecrec.reviews", partition=0, offset=3)
    >>> out = validate_one("review", RawRecord(b'{"oops', pos), max_payload_bytes=1024,
    ...                    max_raw_bytes=64)
    >>> out.reason.value, out.raw_size
    ('malformed_json', 6)
    """
    model = EVENT_MODELS[kind]
    raw = record.value
    if not raw:
        return make_dead_letter(
            record, kind, DeadLetterReason.EMPTY, "empty payload", max_raw_bytes=max_raw_bytes
        )
    if len(raw) > max_payload_bytes:
        return make_dead_letter(
            record,
            kind,
            DeadLetterReason.OVERSIZED,
            f"payload of {len(raw)} bytes exceeds the limit of {max_payload_bytes}",
            max_raw_bytes=max_raw_bytes,
        )
    try:
        # json.loads first: it separates "not JSON" from "JSON of the wrong shape" cleanly.
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return make_dead_letter(
            record, kind, DeadLetterReason.MALFORMED_JSON, str(exc), max_raw_bytes=max_raw_bytes
        )
    if not isinstance(doc, dict):
        return make_dead_letter(
            record,
            kind,
            DeadLetterReason.NOT_AN_OBJECT,
            f"expected a JSON object, got {type(doc).__name__}",
            max_raw_bytes=max_raw_bytes,
        )
    version = doc.get("schema_version", 1)
    if version != 1:
        return make_dead_letter(
            record,
            kind,
            DeadLetterReason.UNSUPPORTED_VERSION,
            f"schema_version {version!r} is not supported (this build reads 1)",
            max_raw_bytes=max_raw_bytes,
        )
    try:
        return model.model_validate_json(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        return make_dead_letter(
            record,
            kind,
            DeadLetterReason.SCHEMA_VIOLATION,
            _summarise(exc),
            max_raw_bytes=max_raw_bytes,
        )


def validate_many(
    kind: str, records: Iterable[RawRecord], *, max_payload_bytes: int, max_raw_bytes: int
) -> ValidationOutcome:
    """Validate a micro-batch; one bad record never affects its neighbours."""
    outcome = ValidationOutcome()
    for record in records:
        result = validate_one(
            kind, record, max_payload_bytes=max_payload_bytes, max_raw_bytes=max_raw_bytes
        )
        if isinstance(result, DeadLetter):
            outcome.dead.append(result)
        else:
            outcome.valid.append(result)
    return outcome
