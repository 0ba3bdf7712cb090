"""The label-function protocol and the candidates label functions vote on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

ABSTAIN = -1
Task = Literal["relevance", "sentiment"]

# Relevance labels: 0 not relevant, 1 relevant. Sentiment labels: 0 negative, 1 positive.
NEGATIVE, POSITIVE = 0, 1


@dataclass(frozen=True, slots=True)
class Vote:
    """A label function's answer for one candidate: a label (or ``ABSTAIN``) and a confidence."""

    label: int
    confidence: float = 1.0

    @property
    def abstained(self) -> bool:
        return self.label == ABSTAIN


ABSTAIN_VOTE = Vote(ABSTAIN, 0.0)


@dataclass(frozen=True, slots=True)
class RelevanceCandidate:
    """One (query, shown item) pair of a search, with what the shopper did with it."""

    search_event_id: str
    session_id: str
    query: str
    item_id: str
    position: int
    item_title: str | None = None
    action: Literal["none", "click", "add_to_cart", "purchase"] = "none"
    dwell_ms: int | None = None
    skipped_above_click: bool = False  # shown above a clicked item but not clicked
    click_event_ids: tuple[str, ...] = ()
    user_id: str | None = None
    event_ts: float | None = None  # the search's event time (epoch seconds)

    @property
    def source_event_ids(self) -> tuple[str, ...]:
        return (self.search_event_id, *self.click_event_ids)


@dataclass(frozen=True, slots=True)
class SentimentCandidate:
    """One review: its text and (for the rating function) its stars."""

    event_id: str
    item_id: str
    text: str
    rating: int | None = None
    user_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    event_ts: float | None = None  # the review's event time (epoch seconds)


C = TypeVar("C", contravariant=True)


@runtime_checkable
class LabelFunction(Protocol[C]):
    """Votes a label, or abstains, for each candidate of a micro-batch."""

    @property
    def name(self) -> str: ...

    @property
    def task(self) -> Task: ...

    def vote_many(self, candidates: Sequence[C]) -> list[Vote]: ...
