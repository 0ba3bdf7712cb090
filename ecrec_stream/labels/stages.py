"""The two label stages the label agents call, with every rule they apply.

* :class:`ReviewLabelStage`: validated reviews -> dedupe by event id and by near-duplicate text
  -> sentiment candidates -> :class:`~ecrec_stream.labels.examples.SentimentLabeler`.
* :class:`SessionLabelStage`: closed sessions -> bot filter -> one candidate per shown item
  (with the catalog title) -> :class:`~ecrec_stream.labels.examples.RelevanceLabeler`.

Each has one verb, ``label_many(batch) -> LabelStep``, and the state protocol of
:mod:`ecrec_stream.state` (the labeler's models and the dedupe windows), so every rule is
testable without a broker and a restarted worker resumes where it was. A record a rule or a
label function raises on is isolated (:func:`~ecrec_stream.ingest.isolation.isolate_failures`) and
returned as a failure for the runner to dead-letter.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from ecrec_stream.contracts.events import ReviewEvent
from ecrec_stream.ingest.isolation import Failure, isolate_failures
from ecrec_stream.ingest.quality import BoundedSeen, near_duplicate_key
from ecrec_stream.labels.base import RelevanceCandidate, SentimentCandidate
from ecrec_stream.labels.examples import RelevanceLabeler, SentimentLabeler, TrainingExample
from ecrec_stream.labels.sessions import BotRules, bot_reason, relevance_candidates

LOG = logging.getLogger(__name__)
OnError = Literal["dead_letter", "stop"]


@dataclass
class LabelStep:
    """What one ``label_many`` call produced: the examples, the inputs a rule raised on
    (``failed_inputs``), the candidates a label function raised on (``failed_candidates``)
    and what the rules counted (duplicates, bot sessions, ...)."""

    examples: list[TrainingExample] = field(default_factory=list)
    failed_inputs: list[Failure[Any]] = field(default_factory=list)
    failed_candidates: list[Failure[Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class ReviewLabelStage:
    """Reviews to sentiment examples; each review is labelled once per dedupe window.

    >>> from datetime import datetime, timezone
    >>> from ecrec_stream.config import LabelSettings
    >>> stage = ReviewLabelStage(SentimentLabeler(None, LabelSettings(augment_variants=0)))
    >>> now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> review = ReviewEvent(event_id="r1", ts=now, item_id="i", rating=5, text="Love it")
    >>> step = stage.label_many([review, review])
    >>> len(step.examples), step.counts["duplicate_events"]
    (1, 1)
    """

    def __init__(
        self,
        labeler: SentimentLabeler,
        *,
        dedupe_capacity: int = 100_000,
        on_error: OnError = "dead_letter",
    ) -> None:
        self.labeler = labeler
        self.on_error = on_error
        self.seen_reviews = BoundedSeen(dedupe_capacity)
        self.seen_texts = BoundedSeen(dedupe_capacity)

    def _candidates(
        self, reviews: Sequence[ReviewEvent], counts: Counter[str]
    ) -> list[SentimentCandidate]:
        out = []
        for review in reviews:
            if not self.seen_reviews.add(review.event_id):
                counts["duplicate_events"] += 1
                continue
            text = ". ".join(p for p in (review.title, review.text) if p.strip())
            if text and not self.seen_texts.add(near_duplicate_key(text)):
                counts["near_duplicate_reviews"] += 1
                continue
            out.append(
                SentimentCandidate(
                    review.event_id,
                    review.item_id,
                    text,
                    review.rating,
                    review.user_id,
                    event_ts=review.ts.timestamp(),
                )
            )
        return out

    def label_many(self, reviews: Sequence[ReviewEvent], *, augment: bool = True) -> LabelStep:
        """Sentiment examples of ``reviews`` (``augment=False``: without variants)."""
        step = LabelStep()
        step.counts["reviews_read"] += len(reviews)
        candidates, step.failed_inputs = isolate_failures(
            lambda batch: self._candidates(batch, step.counts), reviews, self.on_error
        )
        step.examples, step.failed_candidates = isolate_failures(
            partial(self.labeler.label_many, augment=augment), candidates, self.on_error
        )
        return step

    def state_dict(self) -> dict[str, Any]:
        return {
            "labeler": self.labeler.state_dict(),
            "seen_reviews": self.seen_reviews.state_dict(),
            "seen_texts": self.seen_texts.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.labeler.load_state(state["labeler"])
        self.seen_reviews.load_state(state["seen_reviews"])
        self.seen_texts.load_state(state["seen_texts"])

    def reset_state(self) -> None:
        self.labeler.reset_state()
        self.seen_reviews.reset_state()
        self.seen_texts.reset_state()


class SessionLabelStage:
    """Closed sessions (the session table's states) to relevance examples; sessions that look
    automated (:func:`~ecrec_stream.labels.sessions.bot_reason`) give none. ``title_of`` looks up an
    item's catalog title (``None`` when unknown)."""

    def __init__(
        self,
        labeler: RelevanceLabeler,
        bot_rules: BotRules,
        title_of: Callable[[str], str | None],
        *,
        on_error: OnError = "dead_letter",
    ) -> None:
        self.labeler = labeler
        self.bot_rules = bot_rules
        self.title_of = title_of
        self.on_error = on_error

    def label_many(self, sessions: Sequence[dict[str, Any]], *, augment: bool = True) -> LabelStep:
        """Relevance examples of closed ``sessions`` (``augment=False``: without variants)."""
        step = LabelStep()
        candidates: list[RelevanceCandidate] = []
        for session in sessions:
            reason = bot_reason(session, self.bot_rules)
            if reason:
                step.counts["bot_sessions"] += 1
                LOG.info(
                    "session %s looks automated (%s): no labels", session["session_id"], reason
                )
                continue
            step.counts["sessions_closed"] += 1
            candidates.extend(relevance_candidates(session))
        candidates = [replace(c, item_title=self.title_of(c.item_id)) for c in candidates]
        step.examples, step.failed_candidates = isolate_failures(
            partial(self.labeler.label_many, augment=augment), candidates, self.on_error
        )
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"labeler": self.labeler.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labeler.load_state(state["labeler"])

    def reset_state(self) -> None:
        self.labeler.reset_state()
