"""``ecrec.examples``: weakly labelled training examples, one message per micro-batch."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecrec_stream.contracts.events import utc_now


class TrainingExample(BaseModel):
    """One weakly labelled example on ``ecrec.examples``.

    Relevance: ``text`` is the query, ``text_pair`` the item title, ``label`` 1 relevant / 0 not,
    ``grade`` the behavioural grade (3 purchase ... 0 skipped). Sentiment: ``text`` is the
    review, ``label`` 1 positive / 0 negative. ``ts`` is the source event's time (the search's,
    the review's), so a trainer can hold back the newest. ``weight`` = label-model confidence
    x position-bias correction (relevance) x meaning similarity (augmented copies).
    ``revision`` counts late votes folded in (the LLM annotator's): a consumer replaces a copy
    of the same id by one of a higher revision.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    example_id: str
    task: Literal["relevance", "sentiment"]
    text: str
    text_pair: str | None = None
    item_id: str
    label: int
    grade: int | None = None
    confidence: float
    weight: float
    votes: dict[str, int]
    source_event_ids: list[str]
    augmented_from: str | None = None
    augmenter: str | None = None
    user_key: str | None = None
    ts: datetime = Field(default_factory=utc_now)
    revision: int = Field(0, ge=0)
    schema_version: Literal[1] = 1


class ExampleBatch(BaseModel):
    """The ``ecrec.examples`` message: the examples of one micro-batch (or of one part of it,
    when it would not fit in one message)."""

    model_config = ConfigDict(frozen=True)

    task: Literal["relevance", "sentiment"]
    examples: list[TrainingExample]
