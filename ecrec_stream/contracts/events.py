"""Event contracts: what may travel on ecrec-stream's topics. JSON on the wire.

Rules every event follows:

* ``event_id`` is the idempotency key; a redelivered event keeps its id.
* ``ts`` is event time and must carry a timezone; it is normalised to UTC.
* ``schema_version`` is ``2`` (``1`` is still read: version 2 only added click actions and
  the click's ``surface``); a consumer rejects versions it does not know.
* Unknown fields are **rejected** (``extra="forbid"``): a typo in a producer fails loudly in
  the dead-letter topic instead of silently dropping data.
* Types are **strict**: ``"5"`` is not a rating and ``"9.99"`` is not a price.
* Every string and list has an upper bound, prices are finite and non-negative.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# 2 added the click actions "view" and "remove_from_cart" and the click's ``surface``; every
# version-1 event is a valid version-2 event, so both are read.
SCHEMA_VERSION: Literal[2] = 2
SUPPORTED_VERSIONS = (1, 2)
SchemaVersion = Literal[1, 2]
Surface = Literal["search", "recommendation", "browse"]
ClickAction = Literal["view", "click", "add_to_cart", "remove_from_cart", "purchase"]

EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")
]
EntityId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=300)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]
Query = Annotated[str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(max_length=10_000)]
CategoryLevel = Annotated[str, StringConstraints(min_length=1, max_length=100)]
AttrKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttrValue = Annotated[str, StringConstraints(max_length=256)]

MAX_IMPRESSIONS = 200
MAX_CATEGORY_DEPTH = 8
MAX_ATTRIBUTES = 50


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: EventId
    ts: AwareDatetime
    schema_version: SchemaVersion = SCHEMA_VERSION

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)


class ItemEvent(_Event):
    """A catalog change: ``upsert`` carries the full item, ``delete`` only its id.

    >>> ItemEvent.model_validate_json(
    ...     '{"event_id":"e1","ts":"2026-01-01T00:00:00Z","op":"delete","item_id":"sku-1"}'
    ... ).op
    'delete'
    """

    type: Literal["item"] = "item"
    op: Literal["upsert", "delete"]
    item_id: EntityId
    title: Title | None = None
    description: LongText = ""
    category_path: list[CategoryLevel] = Field(default_factory=list, max_length=MAX_CATEGORY_DEPTH)
    brand: ShortText = ""
    price: float | None = Field(None, ge=0, le=10_000_000, allow_inf_nan=False)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    attributes: dict[AttrKey, AttrValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)

    @model_validator(mode="after")
    def _upsert_needs_title(self) -> ItemEvent:
        if self.op == "upsert" and not self.title:
            raise ValueError("an upsert needs a non-empty title")
        return self

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"


class SearchEvent(_Event):
    """A query and the ranked item ids shown for it (position 0 first)."""

    type: Literal["search"] = "search"
    search_id: EntityId
    session_id: EntityId
    user_id: EntityId | None = None
    query: Query
    impressions: list[EntityId] = Field(default_factory=list, max_length=MAX_IMPRESSIONS)


class ClickEvent(_Event):
    """An interaction with an item: a product view, a click on a result, a cart change or a
    purchase. ``surface`` says where it happened (a search result page, a recommendation, or
    browsing); ``search_id`` ties it to a search, ``position`` is its rank on that surface."""

    type: Literal["click"] = "click"
    session_id: EntityId
    search_id: EntityId | None = None
    user_id: EntityId | None = None
    item_id: EntityId
    position: int | None = Field(None, ge=0, lt=MAX_IMPRESSIONS)
    action: ClickAction = "click"
    dwell_ms: int | None = Field(None, ge=0, le=86_400_000)
    surface: Surface | None = None


class ReviewEvent(_Event):
    """A product review with its star rating."""

    type: Literal["review"] = "review"
    item_id: EntityId
    user_id: EntityId | None = None
    rating: int = Field(ge=1, le=5)
    title: ShortText = ""
    text: LongText = ""


AnyEvent = ItemEvent | SearchEvent | ClickEvent | ReviewEvent
EventKind = Literal["item", "search", "click", "review"]

EVENT_MODELS: dict[str, type[_Event]] = {
    "item": ItemEvent,
    "search": SearchEvent,
    "click": ClickEvent,
    "review": ReviewEvent,
}


class DeadLetterReason(str, Enum):
    OVERSIZED = "oversized"
    EMPTY = "empty"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_VERSION = "unsupported_version"
    PROCESSING_ERROR = "processing_error"  # valid input that a processing stage raised on


class SourcePosition(BaseModel):
    """Where a record was read: topic, partition, offset."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class DeadLetter(BaseModel):
    """An input record that could not be accepted, with the reason and the raw payload.

    ``raw_b64`` holds at most ``dlq_max_raw_bytes`` of the original payload; ``raw_size`` is
    the original length and ``raw_truncated`` says whether bytes were cut.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["dead_letter"] = "dead_letter"
    dead_letter_id: str
    ts: datetime
    kind: str
    reason: DeadLetterReason
    error: str
    source: SourcePosition
    key: str | None = None
    raw_b64: str
    raw_preview: str
    raw_size: int
    raw_truncated: bool
    schema_version: Literal[1] = 1


class EventBatch(BaseModel):
    """Validated events of one kind from one input partition: the ``valid_*`` topics' message.

    One message per micro-batch instead of one per event keeps Faust's per-send cost off the
    hot path (docs/broker.md: ~30% of a Faust worker's CPU goes to ``Topic.send``). The batch
    goes to the same partition number it came from, so per-key order is kept end to end.
    """

    model_config = ConfigDict(frozen=True)

    kind: EventKind
    source: SourcePosition  # offset of the first record of the batch
    last_offset: int
    events: list[Annotated[AnyEvent, Field(discriminator="type")]]
