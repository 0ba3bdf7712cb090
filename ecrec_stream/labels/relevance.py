"""Relevance label functions: from behaviour (clicks, carts, purchases, skips) and from content
(query-title similarity), plus position-bias correction."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ecrec_stream.embedding import Encoder
from ecrec_stream.labels.base import (
    ABSTAIN_VOTE,
    NEGATIVE,
    POSITIVE,
    RelevanceCandidate,
    Vote,
)

# A product view after a search is a click-through; a removal from the cart is no evidence of
# relevance (the session folding skips it).
ACTION_GRADE = {"view": 1, "click": 1, "add_to_cart": 2, "purchase": 3}


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


def threshold_vote(score: float, high: float, low: float) -> Vote:
    """A score at least ``high`` votes relevant (confidence = score), at most ``low`` not
    (confidence = 1 - score), in between or NaN abstains: the rule of every score-based
    relevance function.

    >>> [threshold_vote(s, 0.6, 0.4).label for s in (0.9, 0.5, 0.1, float("nan"))]
    [1, -1, 0, -1]
    """
    if math.isnan(score) or low < score < high:  # math: np.isnan is ~10x slower on a float
        return ABSTAIN_VOTE
    if score >= high:
        return Vote(POSITIVE, float(score))
    return Vote(NEGATIVE, float(1.0 - score))


class ClickRelevance:
    """The raw click signal, read with the cascade model: a clicked (or carted, or bought) item
    is relevant; an item skipped above a clicked one is not. This is the behavioural evidence an
    example needs (see :class:`~ecrec_stream.labels.examples.RelevanceLabeler`)."""

    name = "clicks"
    task: Literal["relevance"] = "relevance"

    def vote_one(self, c: RelevanceCandidate) -> Vote:
        if c.action in ("add_to_cart", "purchase"):
            return Vote(POSITIVE, 1.0)
        if c.action == "click":
            return Vote(POSITIVE, 0.8)
        if c.skipped_above_click:
            return Vote(NEGATIVE, 0.8)
        return ABSTAIN_VOTE

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        return [self.vote_one(c) for c in candidates]


class DwellRelevance:
    """How long a click stuck: shorter than ``bounce_ms`` (straight back to the results) not
    relevant, at least ``long_ms`` relevant, in between (and unclicked items) abstain."""

    name = "dwell"
    task: Literal["relevance"] = "relevance"

    def __init__(self, bounce_ms: int = 5_000, long_ms: int = 30_000) -> None:
        self.bounce_ms = bounce_ms
        self.long_ms = long_ms

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        votes = []
        for c in candidates:
            if c.action == "none" or c.dwell_ms is None:
                votes.append(ABSTAIN_VOTE)
            elif c.dwell_ms < self.bounce_ms:
                votes.append(Vote(NEGATIVE, 0.7))
            elif c.dwell_ms >= self.long_ms:
                votes.append(Vote(POSITIVE, 0.8))
            else:
                votes.append(ABSTAIN_VOTE)
        return votes


class ClickModelRelevance:
    """The click model's attractiveness of a (query, item) pair, pooled over every session that
    showed it and corrected for position (``gamma`` of
    :class:`~ecrec_stream.labels.position.PositionBiasModel`): at least ``high`` relevant, at
    most ``low`` not, abstain in between or with fewer than ``min_impressions`` impressions.

    Stateful (it improves as traffic arrives), so it never decides which examples exist.
    """

    name = "click_model"
    task: Literal["relevance"] = "relevance"
    stateful = True

    def __init__(
        self, model: Any, *, high: float = 0.6, low: float = 0.4, min_impressions: int = 5
    ) -> None:
        self.model = model
        self.high = high
        self.low = low
        self.min_impressions = min_impressions

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        votes = []
        table = self.model.attractiveness
        for c in candidates:
            gamma, shown = table.get((c.query, c.item_id), (float("nan"), 0))
            votes.append(
                ABSTAIN_VOTE
                if shown < self.min_impressions
                else threshold_vote(gamma, self.high, self.low)
            )
        return votes


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


_TOKEN = re.compile(r"[a-z0-9]+(?:[./-][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an and the for of in on with to by from or at as is are this that it its x".split()
)


# Titles and queries repeat (every impression of an item, every search of a popular query):
# at 1,000 session events/s tokenizing them anew was ~3% of the worker's GIL time. On the
# bench's 243,700 session candidates the lexical vote took 26.0 us each uncached, 9.6 cached
# (41 MB for the 46,195 entries it held; at most 16,384 entries: 12.6 us, 15 MB).
@functools.lru_cache(maxsize=65_536)
def content_tokens(text: str) -> frozenset[str]:
    """Lower-cased word tokens without stop words, plural ``s`` stripped; sizes and model numbers
    (``3/4``, ``1.5``, ``xr-200``) stay whole.

    >>> sorted(content_tokens("Kids' Running Shoes, size 3/4 - XR-200"))
    ['3/4', 'kid', 'running', 'shoe', 'size', 'xr-200']
    """
    out = set()
    for token in _TOKEN.findall(text.lower()):
        if token in _STOPWORDS:
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        out.add(token)
    return frozenset(out)


class LexicalRelevance:
    """Share of the query's words found in the item's title: at least ``high`` relevant, at
    most ``low`` not, in between abstain. Candidates without a known title abstain.

    This is the default content function because it does not come from the model being trained:
    the impressions are the serving encoder's own top results, so scoring them with that encoder
    votes "relevant" on nearly all of them and teaches the model its own mistakes.

    >>> lex = LexicalRelevance()
    >>> [v.label for v in lex.vote_many([
    ...     RelevanceCandidate("s", "u", "red shoes", "i", 0, item_title="Red running shoe"),
    ...     RelevanceCandidate("s", "u", "red shoes", "j", 1, item_title="Garden hose"),
    ...     RelevanceCandidate("s", "u", "red shoes", "k", 2, item_title="Red dress")])]
    [1, 0, -1]
    """

    name = "lexical"
    task: Literal["relevance"] = "relevance"

    def __init__(self, *, high: float = 0.75, low: float = 0.0) -> None:
        self.high = high
        self.low = low

    def coverage(self, query: str, title: str) -> float:
        words = content_tokens(query)
        return len(words & content_tokens(title)) / len(words) if words else float("nan")

    def vote_many(self, candidates: Sequence[RelevanceCandidate]) -> list[Vote]:
        return [
            threshold_vote(
                self.coverage(c.query, c.item_title) if c.item_title else float("nan"),
                self.high,
                self.low,
            )
            for c in candidates
        ]


class ContentRelevance:
    """Query-title cosine similarity from an encoder: above ``high`` relevant, below ``low``
    not, in between abstain. Candidates without a known title abstain. Give it a frozen
    reference encoder, never the serving model being fine-tuned (see :class:`LexicalRelevance`).
    """

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
        return [threshold_vote(sim, self.high, self.low) for sim in self.similarities(candidates)]
