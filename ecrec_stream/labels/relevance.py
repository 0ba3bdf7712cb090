"""Relevance label functions: from behaviour (clicks, carts, purchases, skips) and from content
(query-title similarity), plus position-bias correction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ecrec_stream.embedding import Encoder
from ecrec_stream.labels.base import (
    ABSTAIN_VOTE,
    NEGATIVE,
    POSITIVE,
    RelevanceCandidate,
    Vote,
)

ACTION_GRADE = {"click": 1, "add_to_cart": 2, "purchase": 3}


def behaviour_grade(candidate: RelevanceCandidate) -> int | None:
    """Graded relevance from behaviour: purchase 3 > add_to_cart 2 > click 1 > skipped above a
    clicked item 0; ``None`` for shown but not clicked (a weak negative at best).

    >>> behaviour_grade(RelevanceCandidate("s", "u", "q", "i", 2, action="purchase"))
    3
    >>> behaviour_grade(RelevanceCandidate("s", "u", "q", "i", 0, skipped_above_click=True))
    0
    """
    if candidate.action != "none":
        return ACTION_GRADE[candidate.action]
    if candidate.skipped_above_click:
        return 0
    return None


def ips_weight(position: int, eta: float, clip: float) -> float:
    """Inverse propensity of examining ``position`` (0-based) under ``P(exam) = 1/(p+1)**eta``,
    clipped to ``clip`` so one deep click cannot dominate a batch.

    >>> ips_weight(0, 1.0, 10.0), ips_weight(3, 1.0, 10.0), ips_weight(50, 1.0, 10.0)
    (1.0, 4.0, 10.0)
    """
    return float(min(clip, (position + 1) ** eta))


class ClickRelevance:
    """Clicks that stick are relevant; items skipped above a click are not (cascade model).

    A click shorter than ``bounce_ms`` (the shopper came straight back) abstains.
    """

    name = "clicks"
    task: Literal["relevance"] = "relevance"

    def __init__(self, bounce_ms: int = 5_000) -> None:
        self.bounce_ms = bounce_ms

    def vote_one(self, c: RelevanceCandidate) -> Vote:
        if c.action in ("add_to_cart", "purchase"):
            return Vote(POSITIVE, 1.0)
        if c.action == "click":
            if c.dwell_ms is not None and c.dwell_ms < self.bounce_ms:
                return ABSTAIN_VOTE
            return Vote(POSITIVE, 0.8)
        if c.skipped_above_click:
            return Vote(NEGATIVE, 0.8)
        return ABSTAIN_VOTE

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        return [self.vote_one(c) for c in candidates]


class ExposureRelevance:
    """Shown near the top but never clicked: a weak negative. Abstains below the examined zone
    (``depth`` positions past the last click, or the top ``depth`` when nothing was clicked)."""

    name = "exposure"
    task: Literal["relevance"] = "relevance"

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        last_click: dict[str, int] = {}
        for c in candidates:
            if c.action != "none":
                last_click[c.search_event_id] = max(
                    last_click.get(c.search_event_id, -1), c.position
                )
        votes = []
        for c in candidates:
            horizon = last_click.get(c.search_event_id, -1) + self.depth
            if c.action == "none" and not c.skipped_above_click and c.position <= horizon:
                votes.append(Vote(NEGATIVE, 0.3))
            else:
                votes.append(ABSTAIN_VOTE)
        return votes


class ContentRelevance:
    """Query-title cosine similarity from the encoder: above ``high`` relevant, below ``low``
    not, in between abstain. Candidates without a known title abstain."""

    name = "content"
    task: Literal["relevance"] = "relevance"

    def __init__(self, encoder: Encoder, *, high: float = 0.55, low: float = 0.25) -> None:
        self.encoder = encoder
        self.high = high
        self.low = low

    def similarities(self, candidates: Sequence[RelevanceCandidate]) -> np.ndarray:
        with_title = [c for c in candidates if c.item_title]
        if not with_title:
            return np.full(len(candidates), np.nan)
        texts = sorted({c.query for c in with_title} | {c.item_title or "" for c in with_title})
        vectors = dict(zip(texts, self.encoder.encode(texts), strict=True))
        return np.array(
            [
                float(vectors[c.query] @ vectors[c.item_title]) if c.item_title else np.nan
                for c in candidates
            ]
        )

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        votes = []
        for sim in self.similarities(candidates):
            if np.isnan(sim) or self.low < sim < self.high:
                votes.append(ABSTAIN_VOTE)
            elif sim >= self.high:
                votes.append(Vote(POSITIVE, float(sim)))
            else:
                votes.append(Vote(NEGATIVE, float(1 - sim)))
        return votes
