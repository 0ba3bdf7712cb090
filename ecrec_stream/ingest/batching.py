"""Bound output messages by bytes.

A micro-batch becomes one message (docs/broker.md: few large sends are what makes Faust fast), but a
backlog can make a batch larger than the producer's request limit (1 MiB by default), and a
send that fails on size stops the agent. So every batch message is packed here: the items'
JSON is split into consecutive runs, each under ``max_bytes`` with its envelope, keeping order.
An item too large to travel alone is returned separately for the caller to dead-letter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from ecrec_stream.contracts.events import AnyEvent, EventBatch, SourcePosition

# Room kept for the envelope around the items ({"kind":...,"source":{...},"events":[...]}).
ENVELOPE_BYTES = 512


@dataclass(frozen=True, slots=True)
class Packed:
    """Runs of consecutive item indices that fit, and the indices of items too large alone."""

    runs: list[range]
    oversized: list[int]


def pack_by_bytes(
    sizes: Sequence[int], max_bytes: int, *, envelope: int = ENVELOPE_BYTES
) -> Packed:
    """Split items of the given serialised ``sizes`` into consecutive runs whose JSON array
    (items, commas, envelope) stays within ``max_bytes``.

    >>> pack_by_bytes([300, 300, 300, 2000, 10], 1200, envelope=100)
    Packed(runs=[range(0, 3), range(4, 5)], oversized=[3])
    """
    budget = max_bytes - envelope
    if budget <= 0:
        raise ValueError(f"max_bytes {max_bytes} leaves no room beside a {envelope}-byte envelope")
    runs: list[range] = []
    oversized: list[int] = []
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if size > budget:
            if i > start:
                runs.append(range(start, i))
            oversized.append(i)
            start, used = i + 1, 0
            continue
        cost = size + (1 if i > start else 0)  # the comma before every item but the first
        if used + cost > budget:
            runs.append(range(start, i))
            start, used = i, size
        else:
            used += cost
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return Packed(runs, oversized)


def json_array_messages(
    parts: Sequence[bytes],
    max_bytes: int,
    envelope: Callable[[range], tuple[bytes, bytes]],
) -> tuple[list[tuple[range, bytes]], list[int]]:
    """Messages ``prefix + b",".join(parts[run]) + suffix`` within ``max_bytes`` each.

    ``envelope(run)`` gives the prefix and suffix of one run (they may name its first and last
    item). Returns ``(run, message)`` pairs and the indices of parts too large to send.
    """
    packed = pack_by_bytes([len(p) for p in parts], max_bytes)
    messages = []
    for run in packed.runs:
        prefix, suffix = envelope(run)
        body = prefix + b",".join(parts[i] for i in run) + suffix
        if len(body) > max_bytes:  # an unusually long envelope: fall back to one item each
            for i in run:
                p, s = envelope(range(i, i + 1))
                messages.append((range(i, i + 1), p + parts[i] + s))
        else:
            messages.append((run, body))
    return messages, packed.oversized


def list_envelope(empty: BaseModel, field: str) -> tuple[bytes, bytes]:
    """Prefix and suffix around the items of ``empty``'s list ``field`` (written empty), as the
    model itself serialises them, so packed messages parse with the model.

    >>> list_envelope(EventBatch(kind="item", source=SourcePosition(topic="t", partition=0,
    ...     offset=1), last_offset=1, events=[]), "events")[1]
    b']}'
    """
    prefix, _, suffix = empty.model_dump_json().rpartition(f'"{field}":[]')
    return (prefix + f'"{field}":[').encode(), ("]" + suffix).encode()


def event_batch_messages(
    kind: str,
    events: Sequence[AnyEvent],
    positions: Sequence[SourcePosition],
    max_bytes: int,
) -> tuple[list[tuple[SourcePosition, bytes]], list[int]]:
    """``EventBatch`` messages for validated ``events`` read at ``positions``, each within
    ``max_bytes``; returns ``(first position, message)`` pairs and oversized event indices.

    Each event is serialised once; the envelope is written to match
    ``EventBatch.model_dump_json()`` so consumers parse it with the model as before.
    """
    parts = [e.model_dump_json().encode() for e in events]

    def envelope(run: range) -> tuple[bytes, bytes]:
        empty = EventBatch(
            kind=kind,
            source=positions[run.start],
            last_offset=positions[run.stop - 1].offset,
            events=[],
        )
        return list_envelope(empty, "events")

    messages, oversized = json_array_messages(parts, max_bytes, envelope)
    return [(positions[run.start], body) for run, body in messages], oversized
