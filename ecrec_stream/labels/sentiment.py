"""Sentiment label functions: the star rating, a lexicon, embedding prototypes, and a small
classifier fitted on confident seed labels."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ecrec_stream.embedding import Encoder
from ecrec_stream.labels.base import (
    ABSTAIN_VOTE,
    NEGATIVE,
    POSITIVE,
    SentimentCandidate,
    Vote,
)


class RatingSentiment:
    """Stars: 4-5 positive, 1-2 negative, 3 abstains.

    >>> [v.label for v in RatingSentiment().vote_many(
    ...     [SentimentCandidate("e", "i", "", r) for r in (1, 3, 5)])]
    [0, -1, 1]
    """

    name = "rating"
    task: Literal["sentiment"] = "sentiment"

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        votes = []
        for c in candidates:
            if c.rating is None or c.rating == 3:
                votes.append(ABSTAIN_VOTE)
            else:
                votes.append(Vote(POSITIVE if c.rating >= 4 else NEGATIVE, 1.0))
        return votes


_POSITIVE_WORDS = frozenset(
    [
        "love",
        "loved",
        "loves",
        "lovely",
        "great",
        "perfect",
        "perfectly",
        "beautiful",
        "gorgeous",
        "comfortable",
        "comfy",
        "soft",
        "flattering",
        "excellent",
        "amazing",
        "awesome",
        "fantastic",
        "favorite",
        "favourite",
        "nice",
        "cute",
        "happy",
        "pleased",
        "recommend",
        "recommended",
        "best",
        "wonderful",
        "fits",
        "flatters",
        "stunning",
        "classy",
        "elegant",
        "quality",
        "delicious",
        "fresh",
        "tasty",
        "compliments",
        "versatile",
        "pretty",
        "glad",
        "impressed",
        "sturdy",
    ]
)
_NEGATIVE_WORDS = frozenset(
    [
        "return",
        "returned",
        "returning",
        "disappointed",
        "disappointing",
        "disappointment",
        "poor",
        "poorly",
        "cheap",
        "cheaply",
        "terrible",
        "awful",
        "horrible",
        "worst",
        "bad",
        "ugly",
        "itchy",
        "scratchy",
        "unflattering",
        "sheer",
        "boxy",
        "huge",
        "tight",
        "shapeless",
        "wrong",
        "broke",
        "broken",
        "damaged",
        "stale",
        "defective",
        "unfortunately",
        "sadly",
        "flimsy",
        "wasted",
        "waste",
        "refund",
        "frumpy",
        "weird",
        "odd",
        "uncomfortable",
        "smelled",
        "smells",
        "shrank",
        "ripped",
        "tore",
        "torn",
        "hate",
        "hated",
    ]
)
_NEGATORS = frozenset(
    ["not", "no", "never", "isn't", "wasn't", "doesn't", "didn't", "don't", "won't", "hardly"]
)
_WORD = re.compile(r"[a-z']+")


class LexiconSentiment:
    """Counts positive and negative words (a negator within two words flips one) and votes
    when one side leads by ``margin`` or more.

    >>> [v.label for v in LexiconSentiment().vote_many([
    ...     SentimentCandidate("a", "i", "Love it, so soft and flattering"),
    ...     SentimentCandidate("b", "i", "Not flattering at all, returning it"),
    ...     SentimentCandidate("c", "i", "It is a shirt")])]
    [1, 0, -1]
    """

    name = "lexicon"
    task: Literal["sentiment"] = "sentiment"

    def __init__(self, margin: int = 1) -> None:
        self.margin = margin

    def score(self, text: str) -> int:
        words = _WORD.findall(text.lower())
        total = 0
        for i, word in enumerate(words):
            polarity = (word in _POSITIVE_WORDS) - (word in _NEGATIVE_WORDS)
            if polarity and any(w in _NEGATORS for w in words[max(0, i - 2) : i]):
                polarity = -polarity
            total += polarity
        return total

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        votes = []
        for c in candidates:
            s = self.score(c.text)
            if abs(s) < self.margin:
                votes.append(ABSTAIN_VOTE)
            else:
                votes.append(Vote(POSITIVE if s > 0 else NEGATIVE, min(1.0, 0.5 + 0.1 * abs(s))))
        return votes


POSITIVE_PROTOTYPES = (
    "I love this, it is perfect and fits beautifully.",
    "Great quality, very comfortable, highly recommend.",
    "Excellent product, exactly as described, would buy again.",
)
NEGATIVE_PROTOTYPES = (
    "Very disappointed, poor quality, I am returning it.",
    "Terrible fit and cheap material, not worth the money.",
    "It broke quickly and looks nothing like the picture.",
)


class PrototypeSentiment:
    """Cosine to the mean of positive vs negative prototype sentences; votes when the
    difference exceeds ``margin``."""

    name = "prototype"
    task: Literal["sentiment"] = "sentiment"

    def __init__(self, encoder: Encoder, *, margin: float = 0.05) -> None:
        self.encoder = encoder
        self.margin = margin
        protos = encoder.encode([*POSITIVE_PROTOTYPES, *NEGATIVE_PROTOTYPES])
        n = len(POSITIVE_PROTOTYPES)
        self._direction = protos[:n].mean(axis=0) - protos[n:].mean(axis=0)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts)) @ self._direction)

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        votes = []
        for c, s in zip(candidates, self.scores([c.text for c in candidates]), strict=True):
            if not c.text.strip() or abs(s) < self.margin:
                votes.append(ABSTAIN_VOTE)
            else:
                votes.append(Vote(POSITIVE if s > 0 else NEGATIVE, min(1.0, 0.5 + float(abs(s)))))
        return votes


class SeedClassifierSentiment:
    """Logistic regression on encoder embeddings, fitted on confident seed labels (e.g. the
    rating function's votes). Abstains until fitted and where its probability is within
    ``abstain_band`` of 0.5. Thread-safe: the stream refits it while it labels."""

    name = "seed_classifier"
    task: Literal["sentiment"] = "sentiment"
    stateful = True  # its votes depend on what it was fitted on so far

    def __init__(self, encoder: Encoder, *, abstain_band: float = 0.2, seed: int = 0) -> None:
        self.encoder = encoder
        self.abstain_band = abstain_band
        self.seed = seed
        self._clf: object | None = None
        self._lock = threading.Lock()

    @property
    def fitted(self) -> bool:
        return self._clf is not None

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> SeedClassifierSentiment:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels)
        if len(set(y.tolist())) < 2:
            return self  # one class only: nothing to learn yet
        clf = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=self.seed)
        clf.fit(self.encoder.encode(list(texts)), y)
        with self._lock:
            self._clf = clf
        return self

    def state_dict(self) -> dict[str, Any]:
        """The fitted logistic regression's parameters (``None`` until fitted)."""
        with self._lock:
            clf: Any = self._clf
        if clf is None:
            return {"fitted": None}
        return {"fitted": {"coef": clf.coef_, "intercept": clf.intercept_, "classes": clf.classes_}}

    def load_state(self, state: dict[str, Any]) -> None:
        from sklearn.linear_model import LogisticRegression

        fitted = state["fitted"]
        clf: Any = None
        if fitted is not None:
            clf = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=self.seed)
            clf.coef_ = np.asarray(fitted["coef"], dtype=np.float64)
            clf.intercept_ = np.asarray(fitted["intercept"], dtype=np.float64)
            clf.classes_ = np.asarray(fitted["classes"])
            clf.n_features_in_ = clf.coef_.shape[1]
        with self._lock:
            self._clf = clf

    def reset_state(self) -> None:
        with self._lock:
            self._clf = None

    def vote_many(self, candidates: Sequence[SentimentCandidate]) -> list[Vote]:
        with self._lock:
            clf = self._clf
        if clf is None or not candidates:
            return [ABSTAIN_VOTE] * len(candidates)
        proba = clf.predict_proba(  # type: ignore[attr-defined]
            self.encoder.encode([c.text for c in candidates])
        )[:, 1]
        votes = []
        for c, p in zip(candidates, proba, strict=True):
            if not c.text.strip() or abs(p - 0.5) < self.abstain_band:
                votes.append(ABSTAIN_VOTE)
            else:
                votes.append(Vote(POSITIVE if p > 0.5 else NEGATIVE, float(max(p, 1 - p))))
        return votes
