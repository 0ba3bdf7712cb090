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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Literal, TypeVar

from ecrec_stream.contracts.events import ReviewEvent
from ecrec_stream.ingest.isolation import Failure, isolate_failures
from ecrec_stream.ingest.quality import BoundedSeen, near_duplicate_key
from ecrec_stream.labels.base import RelevanceCandidate, SentimentCandidate
from ecrec_stream.labels.examples import RelevanceLabeler, SentimentLabeler, TrainingExample
from ecrec_stream.labels.sessions import BotRules, bot_reason, relevance_candidates
from ecrec_stream.state import TakenState

LOG = logging.getLogger(__name__)
OnError = Literal["dead_letter", "stop"]
BUDGET_WINDOW_S = 10.0  # the busy budget saves up at most this many seconds' worth
Route = TypeVar("Route")


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
        return self.take_state()()

    def take_state(self) -> TakenState:
        """:meth:`state_dict` in two steps (:class:`~ecrec_stream.state.TakesState`)."""
        labeler = self.labeler.take_state()
        seen = {
            "seen_reviews": self.seen_reviews.state_dict(),
            "seen_texts": self.seen_texts.state_dict(),
        }
        return lambda: {"labeler": labeler(), **seen}

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
            candidates.extend(relevance_candidates(session, self.title_of))
        step.examples, step.failed_candidates = isolate_failures(
            partial(self.labeler.label_many, augment=augment), candidates, self.on_error
        )
        return step

    def state_dict(self) -> dict[str, Any]:
        return self.take_state()()

    def take_state(self) -> TakenState:
        """:meth:`state_dict` in two steps (:class:`~ecrec_stream.state.TakesState`)."""
        labeler = self.labeler.take_state()
        return lambda: {"labeler": labeler()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labeler.load_state(state["labeler"])

    def reset_state(self) -> None:
        self.labeler.reset_state()


@dataclass
class _Waiting(Generic[Route]):
    due: float  # shed after this time
    examples: deque[TrainingExample]
    route: Route


@dataclass
class AugmentChunk(Generic[Route]):
    """A few waiting examples of one micro-batch (``route``: where the runner sends their
    variants), taken by :meth:`TrailingAugmentation.next_chunk`."""

    examples: list[TrainingExample]
    route: Route


@dataclass
class AugmentStep(Generic[Route]):
    """The variants of one chunk, and the examples an augmenter raised on (``failed``)."""

    variants: list[TrainingExample]
    route: Route
    failed: list[Failure[TrainingExample]] = field(default_factory=list)


class TrailingAugmentation(Generic[Route]):
    """Variants made after their originals were sent, when the model has nothing more urgent.

    Augmentation (above all the meaning filter's embeddings of every variant) is most of a
    label agent's cost; made inline, it decides how fast the originals go out, and a worker at
    its limit fell behind before shedding any of it. Here the runner sends a micro-batch's
    originals first and :meth:`offer` s them; when its agents are idle and caught up it takes
    the oldest few with :meth:`next_chunk` and makes their variants with :meth:`augment_many`.
    While they are busy, it may still take a chunk within ``busy_share`` of the wall time
    (a budget the runner :meth:`charge` s with each such chunk's seconds), so a worker under
    steady load still augments a sample of its examples instead of none.
    An example that waited longer than ``max_wait_s``, or that more than ``capacity`` newer
    ones pushed out, is shed: counted in its labeler's ``augment_shed``, never silently.

    Not part of the checkpoint: a crash loses the waiting variants (their originals were
    sent), as shedding does. :meth:`offer` and :meth:`next_chunk` are bookkeeping for one
    thread (the event loop); :meth:`augment_many` is the model work.

    >>> from ecrec_stream.config import LabelSettings
    >>> from ecrec_stream.labels.base import SentimentCandidate
    >>> from ecrec_stream.augment import TypoAugmenter
    >>> labeler = SentimentLabeler(None, LabelSettings(), [TypoAugmenter()])
    >>> originals = labeler.label_many(
    ...     [SentimentCandidate(f"r{i}", "i", "Love it, so soft", 5) for i in range(3)],
    ...     augment=False)
    >>> trailing = TrailingAugmentation(labeler, max_wait_s=10, capacity=100, chunk=2)
    >>> trailing.offer(originals, "partition 0", now=0.0)
    >>> chunk = trailing.next_chunk(now=1.0)
    >>> len(chunk.examples), trailing.waiting
    (2, 1)
    >>> step = trailing.augment_many(chunk)
    >>> {v.augmented_from for v in step.variants} == {e.example_id for e in chunk.examples}
    True
    >>> trailing.next_chunk(now=11.0) is None, labeler.counts["augment_shed"]  # waited too long
    (True, 1)

    Busy, within the budget (5% of the wall time: 0.5 s of model time earned in 10 s):

    >>> trailing = TrailingAugmentation(labeler, max_wait_s=100, capacity=100, chunk=1,
    ...                                 busy_share=0.05)
    >>> trailing.offer(originals, "partition 0", now=0.0)
    >>> trailing.next_chunk(now=0.0, busy=True) is None  # nothing earned yet
    True
    >>> chunk = trailing.next_chunk(now=10.0, busy=True)
    >>> trailing.charge(0.6)  # took 0.6 s: 0.1 s owed
    >>> [trailing.next_chunk(now=t, busy=True) is None for t in (11.0, 13.0)]  # repaid by 13
    [True, False]
    """

    def __init__(
        self,
        labeler: RelevanceLabeler | SentimentLabeler,
        *,
        max_wait_s: float,
        capacity: int,
        chunk: int = 8,
        on_error: OnError = "dead_letter",
        busy_share: float = 0.0,
    ) -> None:
        if not 0 <= busy_share < 1:
            raise ValueError("busy_share must be in [0, 1)")
        self.labeler = labeler
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.chunk = chunk
        self.on_error = on_error
        self.busy_share = busy_share
        self._queue: deque[_Waiting[Route]] = deque()
        self.waiting = 0  # examples in the queue
        # The busy budget, a token bucket of model seconds (a few lines; no library needed):
        # busy_share of each second is earned, up to BUDGET_WINDOW_S worth; a chunk may run
        # while any is left, and its cost may overdraw it (repaid before the next one).
        self._credit = 0.0
        self._credit_at: float | None = None

    def offer(self, examples: Sequence[TrainingExample], route: Route, *, now: float) -> None:
        """Queue the augmentable ``examples`` of one micro-batch; shed the oldest waiting ones
        beyond ``capacity``."""
        wanted = self.labeler.augmentable(examples)
        if not wanted:
            return
        self._queue.append(_Waiting(now + self.max_wait_s, deque(wanted), route))
        self.waiting += len(wanted)
        while self.waiting > self.capacity:
            head = self._queue[0]
            head.examples.popleft()
            self._shed(1)
            if not head.examples:
                self._queue.popleft()

    def next_chunk(self, *, now: float, busy: bool = False) -> AugmentChunk[Route] | None:
        """Up to ``chunk`` of the oldest waiting examples of one micro-batch (those that
        waited too long shed first); ``None`` when nothing waits or, ``busy`` (the label
        agents are), when the busy budget is spent."""
        self.expire(now=now)
        if self._credit_at is not None:
            earned = (now - self._credit_at) * self.busy_share
            self._credit = min(self._credit + earned, self.busy_share * BUDGET_WINDOW_S)
        self._credit_at = now
        if not self._queue or (busy and self._credit <= 0):
            return None
        head = self._queue[0]
        taken = [head.examples.popleft() for _ in range(min(self.chunk, len(head.examples)))]
        self.waiting -= len(taken)
        if not head.examples:
            self._queue.popleft()
        return AugmentChunk(taken, head.route)

    def charge(self, seconds: float) -> None:
        """Spend ``seconds`` of the busy budget: what a chunk taken while busy took, from
        taking it to its variants (the wait for the model thread included: the agents wait
        as long; charging only the model work let a worker at its limit fall behind)."""
        self._credit -= seconds

    def expire(self, *, now: float) -> None:
        """Shed the examples that have waited longer than ``max_wait_s``."""
        while self._queue and self._queue[0].due < now:
            self._shed(len(self._queue.popleft().examples))

    def augment_many(self, chunk: AugmentChunk[Route]) -> AugmentStep[Route]:
        """The chunk's variants; an example an augmenter (or the filter) raises on is isolated
        (``on_error="stop"``: the error propagates)."""
        variants, failed = isolate_failures(
            self.labeler.augment_many, chunk.examples, self.on_error
        )
        return AugmentStep(variants, chunk.route, failed)

    def _shed(self, n: int) -> None:
        self.waiting -= n
        self.labeler.counts["augment_shed"] += n
