"""A label function loaded by the worker through ``ECREC_LABELS__EXTRA_FUNCTIONS`` in the
integration tests: it raises on one planted review, as a buggy user function would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ecrec_stream.labels.base import ABSTAIN_VOTE, SentimentCandidate, Task, Vote

PLANTED = "EXPLODE"


class ExplodingSentiment:
    """Abstains on every review, except that it raises on one containing ``PLANTED``."""

    name = "exploding"
    task: Task = "sentiment"

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        for c in candidates:
            if PLANTED in c.text:
                raise ValueError(f"planted failure on {c.event_id}")
        return [ABSTAIN_VOTE] * len(candidates)


def exploding_sentiment(settings: Any) -> ExplodingSentiment:
    return ExplodingSentiment()
