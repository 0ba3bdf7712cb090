"""LLM annotator label functions: a causal LM answers a yes/no (or positive/negative)
question about a query-title pair or a review, scored by the answers' next-token probabilities.

Both are ``late``: the labelers never call them on the stream's critical path; the annotator
(:mod:`ecrec_stream.labels.annotate`) calls them on the examples routed to it and its votes
revise those examples. Called directly (benchmarks) they are ordinary label functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ecrec_stream.labels.base import (
    ABSTAIN_VOTE,
    NEGATIVE,
    POSITIVE,
    RelevanceCandidate,
    SentimentCandidate,
    Vote,
)
from ecrec_stream.llm import CausalLM

RELEVANCE_PROMPT = (
    "A shopper searched an online shop for: {query}\n"
    "The shop showed this product: {title}\n"
    "Is this product what the shopper was looking for? Answer yes or no."
)
SENTIMENT_PROMPT = (
    "Here is a customer review of a product.\n"
    "Review: {text}\n"
    "Is the review positive or negative? Answer with one word."
)
YES_NO = (("yes", "Yes", " yes", " Yes"), ("no", "No", " no", " No"))
POSITIVE_NEGATIVE = (
    ("positive", "Positive", " positive", " Positive"),
    ("negative", "Negative", " negative", " Negative"),
)


def _votes(p_positive: np.ndarray, band: float, empty: Sequence[bool]) -> list[Vote]:
    votes = []
    for p, skip in zip(p_positive, empty, strict=True):
        if skip or abs(p - 0.5) < band:
            votes.append(ABSTAIN_VOTE)
        else:
            votes.append(Vote(POSITIVE if p > 0.5 else NEGATIVE, float(max(p, 1 - p))))
    return votes


class _LLMFunction:
    """What both LLM label functions share: the model, the abstain band, the text cut."""

    name = "llm"
    late = True
    stateful = True  # never decides whether an example exists

    def __init__(self, lm: CausalLM, *, abstain_band: float = 0.1, max_chars: int = 1_000):
        self.lm = lm
        self.abstain_band = abstain_band
        self.max_chars = max_chars


class LLMRelevance(_LLMFunction):
    """Relevance of (query, item title) by P("yes") vs P("no"); abstains without a title or
    within ``abstain_band`` of 0.5."""

    task: Literal["relevance"] = "relevance"

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(relevant) per (query, title)."""
        prompts = [
            RELEVANCE_PROMPT.format(query=q[: self.max_chars], title=t[: self.max_chars])
            for q, t in pairs
        ]
        return self.lm.answer_probabilities(prompts, YES_NO)[:, 0]

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        if not candidates:
            return []
        p = self.probabilities([(c.query, c.item_title or "") for c in candidates])
        return _votes(p, self.abstain_band, [not c.item_title for c in candidates])


class LLMSentiment(_LLMFunction):
    """Sentiment of a review by P("positive") vs P("negative"); abstains on empty text or
    within ``abstain_band`` of 0.5."""

    task: Literal["sentiment"] = "sentiment"

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) per review text."""
        prompts = [SENTIMENT_PROMPT.format(text=t[: self.max_chars]) for t in texts]
        return self.lm.answer_probabilities(prompts, POSITIVE_NEGATIVE)[:, 0]

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        if not candidates:
            return []
        p = self.probabilities([c.text for c in candidates])
        return _votes(p, self.abstain_band, [not c.text.strip() for c in candidates])
