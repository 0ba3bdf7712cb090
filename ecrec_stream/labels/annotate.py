"""Routing examples to a slow label function (the LLM annotator) within a budget.

The stream never waits for it: :meth:`Annotator.offer` only appends to a bounded queue (the
oldest entry is dropped, and counted, when it is full), and whoever drains it
(:meth:`Annotator.take`, then :meth:`Annotator.annotate` in its own thread) is held to a token
bucket of ``rate_per_s`` texts. The votes come back as ``(example, vote)`` pairs for the
labeler, which revises those examples (:meth:`~ecrec_stream.labels.examples._Labeler.revise`).
A token bucket and a deque are a few lines; no library offers this pair without an event loop
of its own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecrec_stream.config import AnnotatorSettings, LabelSettings
from ecrec_stream.contracts.examples import TrainingExample
from ecrec_stream.labels.base import (
    ABSTAIN,
    LabelFunction,
    RelevanceCandidate,
    SentimentCandidate,
    Vote,
)
from ecrec_stream.labels.examples import RelevanceLabeler, SentimentLabeler, _Labeler, in_sample
from ecrec_stream.llm import CausalLM


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up.

    >>> b = TokenBucket(2.0, 4, now=0.0)
    >>> b.take(10, now=0.0), b.take(10, now=1.0), b.take(10, now=1.0)
    (4, 2, 0)
    """

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, wanted: int, *, now: float | None = None) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were taken."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        got = min(wanted, int(self.tokens))
        self.tokens -= got
        return got


def route_reason(
    example: TrainingExample,
    fast_functions: Sequence[str],
    *,
    min_voters: int,
    sample_share: float,
) -> str | None:
    """Why ``example`` goes to the annotator (``disagree``, ``few_votes``, ``sample``) or
    ``None``; augmented copies never go (their source does, and a consumer revises the copies
    with it).

    >>> ex = TrainingExample(example_id="ex-1", task="sentiment", text="ok", item_id="i",
    ...     label=1, confidence=0.6, weight=0.6, votes={"a": 1, "b": 0, "llm": -1},
    ...     source_event_ids=["e"])
    >>> route_reason(ex, ["a", "b"], min_voters=2, sample_share=0.0)
    'disagree'
    """
    if example.augmented_from is not None:
        return None
    voted = [example.votes[n] for n in fast_functions if example.votes.get(n, ABSTAIN) != ABSTAIN]
    if len(set(voted)) > 1:
        return "disagree"
    if len(voted) < min_voters:
        return "few_votes"
    if sample_share > 0 and in_sample(example.example_id, sample_share):
        return "sample"
    return None


def candidate_of(example: TrainingExample) -> RelevanceCandidate | SentimentCandidate:
    """The candidate a label function votes on, rebuilt from the example."""
    if example.task == "relevance":
        return RelevanceCandidate(
            example.source_event_ids[0],
            "",
            example.text,
            example.item_id,
            0,
            item_title=example.text_pair,
        )
    return SentimentCandidate(example.source_event_ids[0], example.item_id, example.text)


@dataclass
class AnnotatorStats:
    """Counts shown on the worker's stats page (all since start)."""

    routed: Counter[str] = field(default_factory=Counter)  # by reason
    dropped: int = 0  # the queue was full: the oldest went
    in_flight: int = 0  # taken, being annotated
    annotated: int = 0
    abstained: int = 0
    failed: int = 0
    busy_s: float = 0.0

    def as_dict(self, backlog: int) -> dict[str, Any]:
        return {
            "routed": dict(self.routed),
            "backlog": backlog,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "annotated": self.annotated,
            "abstained": self.abstained,
            "failed": self.failed,
            "seconds_per_text": round(self.busy_s / self.annotated, 4) if self.annotated else None,
        }


class Annotator:
    """A bounded queue of examples waiting for a slow label function per task, and a budget."""

    def __init__(
        self,
        functions: Mapping[str, LabelFunction[Any]],
        settings: AnnotatorSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.functions = dict(functions)
        self.settings = settings
        self.clock = clock
        self.bucket = TokenBucket(settings.rate_per_s, settings.batch_size, now=clock())
        self.queue: deque[TrainingExample] = deque()
        self.stats = AnnotatorStats()
        self._lock = threading.Lock()

    @property
    def backlog(self) -> int:
        return len(self.queue)

    def offer(self, examples: Sequence[TrainingExample], fast_functions: Sequence[str]) -> int:
        """Queue the examples that need the annotator; never blocks. Returns how many."""
        routed = 0
        with self._lock:
            for ex in examples:
                if ex.task not in self.functions:
                    continue
                reason = route_reason(
                    ex,
                    fast_functions,
                    min_voters=self.settings.min_voters,
                    sample_share=self.settings.sample_share,
                )
                if reason is None:
                    continue
                self.stats.routed[reason] += 1
                self.queue.append(ex)
                routed += 1
                if len(self.queue) > self.settings.queue_size:
                    self.queue.popleft()
                    self.stats.dropped += 1
        return routed

    def take(self) -> list[TrainingExample]:
        """The next examples the budget allows (at most one batch; maybe none)."""
        with self._lock:
            if not self.queue:
                return []
            n = self.bucket.take(min(len(self.queue), self.settings.batch_size), now=self.clock())
            self.stats.in_flight += n
            return [self.queue.popleft() for _ in range(n)]

    def annotate(self, examples: Sequence[TrainingExample]) -> list[tuple[TrainingExample, Vote]]:
        """Votes of the task's function on ``examples`` taken from the queue (the slow call:
        run it off the loop). An error counts them as failed and propagates."""
        out: list[tuple[TrainingExample, Vote]] = []
        started = time.perf_counter()
        try:
            for task, function in self.functions.items():
                mine = [e for e in examples if e.task == task]
                if mine:
                    votes = function.vote_many([candidate_of(e) for e in mine])
                    out += list(zip(mine, votes, strict=True))
        except Exception:
            self.stats.failed += len(examples)
            raise
        finally:
            self.stats.in_flight -= len(examples)
            self.stats.busy_s += time.perf_counter() - started
        self.stats.annotated += len(out)
        self.stats.abstained += sum(v.abstained for _, v in out)
        return out


def build_annotator(
    settings: LabelSettings,
    relevance: RelevanceLabeler,
    sentiment: SentimentLabeler,
    lm: CausalLM | None = None,
) -> Annotator:
    """Add the LLM annotator's late label function to the labelers of
    ``settings.annotator.tasks`` (before they label anything) and return the annotator that
    feeds them. ``lm`` defaults to the configured model."""
    from ecrec_stream.labels.llm import LLMRelevance, LLMSentiment

    cfg = settings.annotator
    lm = lm or CausalLM.from_settings(cfg.llm)
    functions: dict[str, LabelFunction[Any]] = {}
    labelers: list[tuple[_Labeler, type[LLMRelevance | LLMSentiment]]] = [
        (relevance, LLMRelevance),
        (sentiment, LLMSentiment),
    ]
    for labeler, function_class in labelers:
        if labeler.task in cfg.tasks:
            function = function_class(
                lm, abstain_band=cfg.abstain_band, max_chars=cfg.max_text_chars
            )
            labeler.add_function(function)
            functions[labeler.task] = function
    return Annotator(functions, cfg)
