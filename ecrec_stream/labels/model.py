"""A label model that learns how reliable each label function is from their agreements alone.

It is the Dawid-Skene model fitted by EM, the idea at the core of Snorkel's label model: each
function ``j`` has a confusion matrix ``P(vote = v | true label = c, j votes)``, abstentions
carry no information, and class priors are learnt too. Per-class matrices (rather than one
accuracy per function) matter on skewed data: a function that says "positive" to almost
everything is right 90% of the time on reviews that are 90% positive, yet says little.
Snorkel itself is not used: its last release (2024) pins an older stack than this project's,
and the model is ~80 lines of numpy that the tests check against known accuracies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ecrec_stream.labels.base import ABSTAIN

SMOOTHING = 1.0  # Dirichlet pseudo-count per confusion-matrix cell (keeps rare cells finite)


@dataclass(frozen=True, slots=True)
class LabelModelFit:
    """Fitted parameters: per-function confusion matrices (m x k x k, rows = true class) and
    class priors (k)."""

    confusion: np.ndarray
    priors: np.ndarray
    iterations: int

    @property
    def accuracies(self) -> np.ndarray:
        """P(vote right | function votes), averaged over classes by the priors."""
        diag = np.diagonal(self.confusion, axis1=1, axis2=2)  # (m, k)
        return np.asarray(diag @ self.priors)


class LabelModel:
    """Combine votes ``L`` (n x m ints, ``ABSTAIN`` = -1) into class probabilities.

    >>> rng = np.random.default_rng(42)
    >>> y = rng.integers(0, 2, 4000)
    >>> def lf(acc):  # votes right with probability acc, abstains 30% of the time
    ...     v = np.where(rng.random(4000) < acc, y, 1 - y)
    ...     return np.where(rng.random(4000) < 0.3, ABSTAIN, v)
    >>> L = np.stack([lf(0.9), lf(0.75), lf(0.6)], axis=1)
    >>> model = LabelModel(cardinality=2).fit(L)
    >>> [round(float(a), 1) for a in model.accuracies]
    [0.9, 0.8, 0.6]
    """

    def __init__(self, cardinality: int = 2, *, max_iter: int = 200, tol: float = 1e-6) -> None:
        if cardinality < 2:
            raise ValueError("cardinality must be at least 2")
        self.k = cardinality
        self.max_iter = max_iter
        self.tol = tol
        self.fitted: LabelModelFit | None = None

    @property
    def accuracies(self) -> np.ndarray:
        if self.fitted is None:
            raise RuntimeError("fit the label model first")
        return self.fitted.accuracies

    def _check(self, votes: np.ndarray) -> np.ndarray:
        array = np.asarray(votes, dtype=np.int64)
        if array.ndim != 2:
            raise ValueError(f"votes must be a 2-D array, got shape {array.shape}")
        if ((array < ABSTAIN) | (array >= self.k)).any():
            raise ValueError(f"votes must be in [-1, {self.k - 1}]")
        return array

    def _posterior(
        self, votes: np.ndarray, confusion: np.ndarray, priors: np.ndarray
    ) -> np.ndarray:
        log_conf = np.log(confusion)  # (m, k_true, k_vote)
        log_p = np.tile(np.log(priors), (votes.shape[0], 1))
        for j in range(votes.shape[1]):
            voted = votes[:, j] != ABSTAIN
            log_p[voted] += log_conf[j][:, votes[voted, j]].T
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def _m_step(self, votes: np.ndarray, post: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = votes.shape[1]
        counts = np.full((m, self.k, self.k), SMOOTHING)
        for j in range(m):
            for v in range(self.k):
                counts[j, :, v] += post[votes[:, j] == v].sum(axis=0)
        confusion = counts / counts.sum(axis=2, keepdims=True)
        priors = post.mean(axis=0) + 1e-6
        return confusion, priors / priors.sum()

    def fit(self, votes: np.ndarray) -> LabelModel:
        """Estimate confusion matrices and priors by EM, starting from majority vote."""
        array = self._check(votes)
        # majority-vote start (ties and all-abstain rows spread evenly)
        start = np.full((array.shape[0], self.k), 1e-3)
        for c in range(self.k):
            start[:, c] += (array == c).sum(axis=1)
        post = start / start.sum(axis=1, keepdims=True)
        confusion, priors = self._m_step(array, post)
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007 - reported in the fit
            post = self._posterior(array, confusion, priors)
            new_conf, new_priors = self._m_step(array, post)
            delta = np.abs(new_conf - confusion).max() + np.abs(new_priors - priors).max()
            confusion, priors = new_conf, new_priors
            if delta < self.tol:
                break
        self.fitted = LabelModelFit(confusion, priors, it)
        return self

    def predict_proba(self, votes: np.ndarray) -> np.ndarray:
        """Class probabilities (n x k); rows where every function abstained get the priors."""
        if self.fitted is None:
            raise RuntimeError("fit the label model first")
        return self._posterior(self._check(votes), self.fitted.confusion, self.fitted.priors)


def symmetric_fit(n_functions: int, k: int, accuracy: float = 0.7) -> LabelModelFit:
    """Fixed parameters: every function right with ``accuracy`` (a weighted majority vote)."""
    conf = np.full((n_functions, k, k), (1 - accuracy) / (k - 1))
    for j in range(n_functions):
        np.fill_diagonal(conf[j], accuracy)
    return LabelModelFit(conf, np.full(k, 1.0 / k), 0)


class OnlineLabelModel:
    """A label model refitted on a bounded reservoir of recent and older vote rows.

    Each micro-batch is added to the reservoir (uniform reservoir sampling, seeded), the model is
    refitted on it (EM over at most ``capacity`` rows takes milliseconds), and the batch is
    labelled with the refreshed fit. Until ``min_rows`` rows were seen, it uses fixed accuracies
    of 0.7 (a weighted majority vote).
    """

    def __init__(
        self,
        n_functions: int,
        cardinality: int = 2,
        *,
        capacity: int = 20_000,
        min_rows: int = 200,
        seed: int = 0,
    ) -> None:
        self.model = LabelModel(cardinality)
        self.n_functions = n_functions
        self.capacity = capacity
        self.min_rows = min_rows
        self._rows: list[np.ndarray] = []
        self._seen = 0
        self._rng = random.Random(seed)

    def _remember(self, votes: np.ndarray) -> None:
        for row in votes:
            self._seen += 1
            if len(self._rows) < self.capacity:
                self._rows.append(row)
            else:
                j = self._rng.randrange(self._seen)
                if j < self.capacity:
                    self._rows[j] = row

    def label_many(self, votes: np.ndarray) -> np.ndarray:
        """Remember ``votes``, refit, and return their class probabilities."""
        array = np.asarray(votes, dtype=np.int64).reshape(-1, self.n_functions)
        self._remember(array)
        if self._seen >= self.min_rows:
            self.model.fit(np.stack(self._rows))
        else:
            self.model.fitted = symmetric_fit(self.n_functions, self.model.k)
        return self.model.predict_proba(array)

    @property
    def warm(self) -> bool:
        """Whether the fit comes from data (at least ``min_rows`` rows seen)."""
        return self._seen >= self.min_rows

    @property
    def accuracies(self) -> np.ndarray | None:
        """Fitted accuracies, or ``None`` while warming up."""
        return self.model.fitted.accuracies if self.warm and self.model.fitted else None
