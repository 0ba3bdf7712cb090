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

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecrec_stream.labels.base import ABSTAIN
from ecrec_stream.labels.reservoir import Reservoir, refit_due
from ecrec_stream.state import TakenState


@dataclass(frozen=True, slots=True)
class LabelModelFit:
    """Fitted parameters: per-function confusion matrices (m x k x k, rows = true class,
    columns = vote, given that the function votes), class priors (k), which functions' votes
    depend on the class (``informative``), and ``fallback``: why the data fit was replaced by
    a weighted majority vote, or ``None``."""

    confusion: np.ndarray
    priors: np.ndarray
    iterations: int
    informative: np.ndarray | None = None
    fallback: str | None = None
    # decide by posterior / prior (each class as if equally common): what macro-F1 rewards on a
    # skewed stream, where the plain posterior sides with the common class
    balanced: bool = False
    # class probabilities of rows without any vote (None: the priors)
    silent: np.ndarray | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "confusion": self.confusion,
            "priors": self.priors,
            "iterations": self.iterations,
            "informative": self.informative,
            "fallback": self.fallback,
            "balanced": self.balanced,
            "silent": self.silent,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelModelFit:
        informative = state["informative"]
        return cls(
            np.asarray(state["confusion"]),
            np.asarray(state["priors"]),
            int(state["iterations"]),
            None if informative is None else np.asarray(informative),
            state["fallback"],
            bool(state.get("balanced", False)),
            None if state.get("silent") is None else np.asarray(state["silent"]),
        )

    @property
    def accuracies(self) -> np.ndarray:
        """P(vote right | function votes), averaged over classes by the priors."""
        diag = np.diagonal(self.confusion, axis1=1, axis2=2)  # (m, k)
        return np.asarray(diag @ self.priors)


class LabelModel:
    """Combine votes ``L`` (n x m ints, ``ABSTAIN`` = -1) into class probabilities.

    Plain Dawid-Skene is unidentifiable when functions are one-sided (only ever vote one class)
    or mostly abstain, and EM then collapses: every row one class, or a function "right"
    whatever the class. This model takes what Snorkel does against that, and a fallback:

    * **accuracy prior**: ``prior_strength`` pseudo-votes per class and function, a share
      ``prior_accuracy`` of them on the diagonal (MAP-EM instead of maximum likelihood);
    * **class balance**: fixed ``class_balance`` if given, else learnt with a Dirichlet prior;
    * **better than chance**: a vote value that the fit makes evidence *against* its own class
      is made uninformative instead (its likelihood ratio is set to 1);
    * **anchors**: rows whose class is known (a purchase is relevant) are clamped in EM;
    * **degenerate fit detection**: when no function's votes depend on the class, or the fit
      puts (almost) every voted row in one class while a majority vote does not, the fit is
      replaced by a weighted majority vote and ``fitted.fallback`` says why.

    >>> rng = np.random.default_rng(42)
    >>> y = rng.integers(0, 2, 4000)
    >>> def lf(acc):  # votes right with probability acc, abstains 30% of the time
    ...     v = np.where(rng.random(4000) < acc, y, 1 - y)
    ...     return np.where(rng.random(4000) < 0.3, ABSTAIN, v)
    >>> L = np.stack([lf(0.9), lf(0.75), lf(0.6)], axis=1)
    >>> model = LabelModel(cardinality=2).fit(L)
    >>> [round(float(a), 1) for a in model.accuracies], model.fitted.fallback
    ([0.9, 0.8, 0.6], None)
    """

    def __init__(
        self,
        cardinality: int = 2,
        *,
        prior_accuracy: float = 0.7,
        prior_strength: float = 10.0,
        class_balance: np.ndarray | list[float] | None = None,
        min_dependence: float = 0.05,
        min_class_share: float = 0.01,
        max_iter: int = 200,
        tol: float = 1e-6,
    ) -> None:
        if cardinality < 2:
            raise ValueError("cardinality must be at least 2")
        if not 1.0 / cardinality < prior_accuracy < 1.0:
            raise ValueError("prior_accuracy must be above chance and below 1")
        self.k = cardinality
        self.prior_accuracy = prior_accuracy
        self.prior_strength = prior_strength
        self.class_balance = (
            None if class_balance is None else np.asarray(class_balance, dtype=np.float64)
        )
        if self.class_balance is not None and (
            self.class_balance.shape != (cardinality,)
            or not np.isclose(self.class_balance.sum(), 1)
        ):
            raise ValueError("class_balance must be k shares summing to 1")
        self.min_dependence = min_dependence
        self.min_class_share = min_class_share
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

    def _check_anchors(self, anchors: np.ndarray | None, n: int) -> np.ndarray:
        if anchors is None:
            return np.full(n, ABSTAIN, dtype=np.int64)
        array = np.asarray(anchors, dtype=np.int64)
        if array.shape != (n,) or ((array < ABSTAIN) | (array >= self.k)).any():
            raise ValueError(f"anchors must be {n} values in [-1, {self.k - 1}]")
        return array

    def _one_hot(self, votes: np.ndarray) -> np.ndarray:
        """``votes`` as n x (m * k) indicators, function-major (all zero where a function
        abstained): EM's two steps become one matrix product each."""
        n, m = votes.shape
        return np.asarray(
            (votes[:, :, None] == np.arange(self.k)).reshape(n, m * self.k), dtype=np.float64
        )

    def _posterior(
        self, votes: np.ndarray, confusion: np.ndarray, priors: np.ndarray
    ) -> np.ndarray:
        return self._posterior_hot(self._one_hot(votes), confusion, priors)

    def _posterior_hot(
        self, hot: np.ndarray, confusion: np.ndarray, priors: np.ndarray
    ) -> np.ndarray:
        # log P(votes | class) = sum over voting functions of log confusion[j, class, vote]
        m = confusion.shape[0]
        log_conf = np.log(confusion).transpose(0, 2, 1).reshape(m * self.k, self.k)
        log_p = np.log(priors) + hot @ log_conf
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def _clamp(self, post: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        anchored = anchors != ABSTAIN
        if anchored.any():
            post = post.copy()
            post[anchored] = np.eye(self.k)[anchors[anchored]]
        return post

    def _prior_counts(self, m: int) -> np.ndarray:
        off = (1 - self.prior_accuracy) / (self.k - 1)
        row = np.full((self.k, self.k), off) + np.eye(self.k) * (self.prior_accuracy - off)
        return np.tile(row * self.prior_strength, (m, 1, 1))

    def _m_step(
        self, hot: np.ndarray, post: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        m = hot.shape[1] // self.k
        if weights is not None:  # rows stand for ``weights`` identical rows each
            post = post * weights[:, None]
        observed = (hot.T @ post).reshape(m, self.k, self.k).transpose(0, 2, 1)  # m x c x v
        counts = self._prior_counts(m) + observed
        confusion = counts / counts.sum(axis=2, keepdims=True)
        # Better than chance: a vote for v must not be likelier under another class than
        # under v itself; where the fit says so, that vote value carries no evidence.
        for j in range(m):
            for v in range(self.k):
                if confusion[j, v, v] < confusion[j, :, v].max():
                    confusion[j, :, v] = confusion[j, :, v].mean()
        if self.class_balance is not None:
            return confusion, self.class_balance
        priors = post.sum(axis=0) + self.prior_strength / self.k
        return confusion, priors / priors.sum()

    def fit(
        self,
        votes: np.ndarray,
        anchors: np.ndarray | None = None,
        init: LabelModelFit | None = None,
    ) -> LabelModel:
        """Estimate confusion matrices and priors by MAP-EM, starting from majority vote, or
        from ``init`` (a previous fit on similar data: a warm start converges in a few
        iterations instead of dozens).

        ``anchors`` (n ints, ``ABSTAIN`` where unknown) clamps rows whose class is known.
        """
        array = self._check(votes)
        anchor = self._check_anchors(anchors, array.shape[0])
        majority = self._majority(array)
        warm = (
            init is not None
            and init.fallback is None
            and init.confusion.shape == (array.shape[1], self.k, self.k)
        )
        # EM runs on the distinct (votes, anchor) rows weighted by their counts: identical
        # rows have identical posteriors, and a few functions with a few values each make at
        # most a few hundred distinct rows however many there are (a fit of 20,000 rows was
        # half of a worker's CPU on session traffic; bench.throughput).
        both = np.column_stack([array, anchor]) + 1  # values 0..k
        codes = both @ (self.k + 1) ** np.arange(both.shape[1], dtype=np.int64)
        _, first, counts = np.unique(codes, return_index=True, return_counts=True)
        rows, row_anchor = array[first], anchor[first]
        weights = counts.astype(np.float64)
        hot = self._one_hot(rows)
        if warm:
            assert init is not None
            post = self._clamp(self._posterior_hot(hot, init.confusion, init.priors), row_anchor)
        else:
            post = self._clamp(self._majority(rows), row_anchor)
        confusion, priors = self._m_step(hot, post, weights)
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007 - reported in the fit
            post = self._clamp(self._posterior_hot(hot, confusion, priors), row_anchor)
            new_conf, new_priors = self._m_step(hot, post, weights)
            delta = np.abs(new_conf - confusion).max() + np.abs(new_priors - priors).max()
            confusion, priors = new_conf, new_priors
            if delta < self.tol:
                break
        informative = np.ptp(confusion, axis=1).max(axis=1) >= self.min_dependence
        fallback = self._degenerate(array, majority, confusion, priors, informative)
        if fallback is not None:
            sym = symmetric_fit(array.shape[1], self.k)
            self.fitted = LabelModelFit(sym.confusion, sym.priors, it, informative, fallback)
        else:
            self.fitted = LabelModelFit(confusion, priors, it, informative, None)
        return self

    def _majority(self, array: np.ndarray) -> np.ndarray:
        start = np.full((array.shape[0], self.k), 1e-3)  # ties and all-abstain rows: even
        for c in range(self.k):
            start[:, c] += (array == c).sum(axis=1)
        return start / start.sum(axis=1, keepdims=True)

    def _degenerate(
        self,
        array: np.ndarray,
        majority: np.ndarray,
        confusion: np.ndarray,
        priors: np.ndarray,
        informative: np.ndarray,
    ) -> str | None:
        if not informative.any():
            return "no function's votes depend on the class"
        voted = (array != ABSTAIN).any(axis=1)
        if voted.sum() == 0:
            return None
        labels = self._posterior(array[voted], confusion, priors).argmax(axis=1)
        mv = majority[voted].argmax(axis=1)
        for c in range(self.k):
            share, mv_share = (labels == c).mean(), (mv == c).mean()
            if share < self.min_class_share <= mv_share / 5:
                return (
                    f"the fit labels {share:.1%} of voted rows as class {c}, "
                    f"a majority vote {mv_share:.1%}"
                )
        return None

    def predict_proba(self, votes: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (n x k); rows where every function abstained get the priors,
        anchored rows their anchor."""
        if self.fitted is None:
            raise RuntimeError("fit the label model first")
        array = self._check(votes)
        post = self._posterior(array, self.fitted.confusion, self.fitted.priors)
        voted = (array != ABSTAIN).any(axis=1)
        if self.fitted.balanced and voted.any():
            # rows with evidence as if the classes were equally common; a row without any
            # keeps the priors (the common class), which is what it has to go on
            balanced = post[voted] / self.fitted.priors
            post[voted] = balanced / balanced.sum(axis=1, keepdims=True)
        if self.fitted.silent is not None:
            post[~voted] = self.fitted.silent
        return self._clamp(post, self._check_anchors(anchors, array.shape[0]))


def symmetric_fit(
    n_functions: int,
    k: int,
    accuracy: float = 0.7,
    *,
    tie: int | None = None,
    silent: int | None = None,
) -> LabelModelFit:
    """Fixed parameters: every function right with ``accuracy``, i.e. a majority vote; ties
    go to class ``tie`` (its prior a hair above the others': no vote count is outweighed by
    it) and rows without votes to class ``silent``."""
    conf = np.full((n_functions, k, k), (1 - accuracy) / (k - 1))
    for j in range(n_functions):
        np.fill_diagonal(conf[j], accuracy)
    priors = np.full(k, 1.0)
    if tie is not None:
        priors[tie] += 1e-6
    return LabelModelFit(
        conf,
        priors / priors.sum(),
        0,
        silent=None if silent is None else np.eye(k)[silent] * 0.9 + 0.1 / k,
    )


def macro_f1(truth: np.ndarray, predicted: np.ndarray, k: int = 2) -> float:
    """Mean F1 over the ``k`` classes (a class absent from both scores 0).

    >>> macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    0.7333333333333334
    """
    scores = []
    for c in range(k):
        tp = float(((predicted == c) & (truth == c)).sum())
        denominator = float((predicted == c).sum() + (truth == c).sum())
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def majority_labels(votes: np.ndarray, k: int = 2, tie: int = 0, silent: int = 0) -> np.ndarray:
    """Plain majority vote per row; ties go to class ``tie``, rows without votes to
    ``silent``.

    >>> majority_labels(np.array([[0, 1], [-1, -1], [0, -1]]), tie=0, silent=1)
    array([0, 1, 0])
    """
    counts = np.stack([(votes == c).sum(axis=1) for c in range(k)], axis=1).astype(float)
    counts[:, tie] += 0.5  # wins ties, never a vote
    labels = counts.argmax(axis=1)
    labels[(votes == ABSTAIN).all(axis=1)] = silent
    return np.asarray(labels)


def choose_decision(
    truth: np.ndarray,
    posterior: np.ndarray,
    balanced: np.ndarray,
    majority: np.ndarray,
) -> tuple[str, dict[str, float]]:
    """Which labels rows best by macro-F1 against ``truth``: the ``posterior``'s argmax, the
    class-balanced one (``balanced``: posterior / priors where a function voted) or the
    ``majority`` vote; ties go to the earlier of those. (A ``majority`` of several tie rules
    is the caller's to pick: its best one goes in.)

    >>> truth = np.array([0, 0, 1, 1, 1, 1])  # class 1 common: the posterior says 1 throughout
    >>> post = np.array([[.3, .7], [.35, .65], [.05, .95], [.02, .98], [.04, .96], [.01, .99]])
    >>> choose_decision(truth, post, post / [.1, .9], np.zeros(6, dtype=int))[0]
    'balanced'
    >>> choose_decision(truth, post, post, truth.copy())[0]
    'majority'
    """
    scores = {
        "posterior": macro_f1(truth, posterior.argmax(axis=1), posterior.shape[1]),
        "balanced": macro_f1(truth, balanced.argmax(axis=1), posterior.shape[1]),
        "majority": macro_f1(truth, majority, posterior.shape[1]),
    }
    return max(scores, key=lambda name: scores[name]), scores


class OnlineLabelModel:
    """A label model refitted on a bounded reservoir of recent and older vote rows.

    Each micro-batch is added to the reservoir (uniform reservoir sampling, seeded), the model is
    refitted on it (see ``refit_every`` below), and the batch is
    labelled with the refreshed fit. Until ``min_rows`` rows were seen, it uses fixed accuracies
    of 0.7 (a weighted majority vote). Fits that fell back (see :class:`LabelModel`) are
    counted in ``fallbacks`` with the last reason in ``last_fallback``.

    The model is refitted once ``refit_every`` new rows, and at least half the sample,
    have arrived since the last fit, warm-started from that fit: refitting 20,000 rows from a
    majority vote on every micro-batch of 50 took 0.38 s per batch on a 2-core CPU and held the
    demo's label agents (and the drift agent reading the same topics) minutes behind.

    **Checked on the stream's own truth**: every fifth row whose class is known (the
    ``reference`` function voted, e.g. a review has stars; or, without one, it is anchored, e.g.
    a purchase) is held out of a trial fit, with that vote and its anchor masked, and labelled
    three ways: the
    fit's posterior, the fit's class-balanced decision (posterior / prior) and a majority vote
    of the same functions. The one with the best macro-F1 there labels (``decision``); when it
    is majority vote, the fit is replaced by a weighted majority vote and ``last_fallback`` says
    why. On a stream whose classes are far from even the fit's posterior sides with the common
    class (it maximises accuracy): on another shop's reviews, 93% positive, the label model
    scored 0.584 macro-F1 against majority vote's 0.774.
    """

    def __init__(
        self,
        n_functions: int,
        cardinality: int = 2,
        *,
        capacity: int = 20_000,
        min_rows: int = 200,
        refit_every: int = 500,
        seed: int = 0,
        reference: int | None = None,
        min_check_rows: int = 50,
        **model_options: Any,
    ) -> None:
        if refit_every < 1:
            raise ValueError("refit_every must be at least 1")
        self.model = LabelModel(cardinality, **model_options)
        self._options = model_options
        self.reference = reference
        self.min_check_rows = min_check_rows
        self.last_check: dict[str, float] | None = None  # the held-out check's figures
        self.decision = "posterior"  # what labels: posterior, balanced or majority
        self.common: int | None = None  # the anchors' most frequent class
        self.tie: int | None = None  # where majority vote's ties go (chosen by the check)
        self.n_functions = n_functions
        self.min_rows = min_rows
        self.refit_every = refit_every
        self._fitted_entered = 0  # rows that had entered the sample at the last fit from data
        self.sample: Reservoir[tuple[np.ndarray, int]] = Reservoir(capacity, seed)  # (row, anchor)
        self.fits = 0
        self.fallbacks = 0
        self.last_fallback: str | None = None

    def label_many(self, votes: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
        """Remember ``votes`` (and ``anchors``: known classes, ``ABSTAIN`` elsewhere), refit,
        and return their class probabilities."""
        array = np.asarray(votes, dtype=np.int64).reshape(-1, self.n_functions)
        anchor = (
            np.full(len(array), ABSTAIN, dtype=np.int64)
            if anchors is None
            else np.asarray(anchors, dtype=np.int64)
        )
        self.sample.add_many(zip(array, anchor.tolist(), strict=True))
        # a refit costs time in proportion to the sample: it also waits for half the sample
        # to be new, as the position model does (at 4,000 candidates/s, refits every 500 were
        # the label agent's largest cost; after a quarter, fit and check were still 6.6% of
        # the worker's samples at 1,000 session events/s, bench.throughput --paced --profile)
        new = self.sample.entered - self._fitted_entered
        due = self._fitted_entered == 0 or refit_due(new, len(self.sample), self.refit_every)
        if self.sample.seen >= self.min_rows and due:
            rows, anchors_kept = zip(*self.sample.items, strict=True)
            previous = self.model.fitted if self._fitted_entered else None
            kept_rows, kept_anchors = np.stack(rows), np.asarray(anchors_kept, dtype=np.int64)
            self.model.fit(kept_rows, kept_anchors, previous)
            loses = self._check(kept_rows, kept_anchors, previous)
            fit = self.model.fitted
            if fit is not None and loses is not None:
                sym = symmetric_fit(
                    self.n_functions, self.model.k, tie=self.tie, silent=self.common
                )
                self.model.fitted = dataclasses.replace(
                    sym, iterations=fit.iterations, informative=fit.informative, fallback=loses
                )
            elif fit is not None and self.decision == "balanced":
                self.model.fitted = dataclasses.replace(fit, balanced=True)
            self._fitted_entered = self.sample.entered
            self.fits += 1
            fit = self.model.fitted
            if fit is not None and fit.fallback is not None:
                self.fallbacks += 1
                self.last_fallback = fit.fallback
        elif self.sample.seen < self.min_rows:
            self.model.fitted = symmetric_fit(self.n_functions, self.model.k)
        return self.model.predict_proba(array, anchor)

    def _check(
        self, rows: np.ndarray, anchors: np.ndarray, init: LabelModelFit | None
    ) -> str | None:
        """Why majority vote beats the fit on held-out rows whose class is known (see the class
        docstring), or ``None`` (too few such rows to tell counts as no)."""
        # known: the reference function's vote (the stars of a rated review) when there is
        # one, else the anchor (a purchase)
        known = rows[:, self.reference] if self.reference is not None else anchors
        anchored = np.flatnonzero(known != ABSTAIN)
        held = anchored[::5]
        if len(held) < self.min_check_rows:
            return None
        trial_rows, trial_anchors = rows.copy(), anchors.copy()
        trial_anchors[held] = ABSTAIN
        if self.reference is not None:
            trial_rows[held, self.reference] = ABSTAIN
        trial = LabelModel(self.model.k, **self._options).fit(trial_rows, trial_anchors, init)
        truth = known[held]
        fit = trial.fitted
        if fit is None:
            return None
        self.common = int(np.bincount(known[anchored], minlength=self.model.k).argmax())
        posterior = trial.predict_proba(trial_rows[held])
        trial.fitted = dataclasses.replace(fit, balanced=True)
        balanced = trial.predict_proba(trial_rows[held])
        # majority vote with its ties to whichever class does best here (on a skewed stream,
        # ties to the rare class find more of it); rows without votes to the common class
        by_tie = {
            tie: majority_labels(trial_rows[held], self.model.k, tie, self.common)
            for tie in range(self.model.k)
        }
        self.tie = max(by_tie, key=lambda t: macro_f1(truth, by_tie[t], self.model.k))
        self.decision, scores = choose_decision(truth, posterior, balanced, by_tie[self.tie])
        self.last_check = {"rows": float(len(held)), **scores}
        if self.decision == "majority":
            best = max(scores["posterior"], scores["balanced"])
            return (
                f"majority vote beats the fit on {len(held)} held-out anchored rows "
                f"(macro-F1 {scores['majority']:.3f} vs {best:.3f})"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        """The state protocol (:mod:`ecrec_stream.state`): the reservoir of vote rows with
        their anchors (two arrays), the current fit and the refit bookkeeping."""
        return self.take_state()()

    def take_state(self) -> TakenState:
        """:meth:`state_dict` in two steps (:class:`~ecrec_stream.state.TakesState`): the rows
        are stacked when called (the sample's rows and fits are never changed in place)."""
        n_functions = self.n_functions

        def pack(items: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
            rows = np.stack([r for r, _ in items]) if items else np.zeros((0, n_functions))
            return {"rows": rows.astype(np.int64), "anchors": np.asarray([a for _, a in items])}

        sample, fitted = self.sample.take_state(pack), self.model.fitted
        rest = {
            "fitted_entered": self._fitted_entered,
            "fits": self.fits,
            "fallbacks": self.fallbacks,
            "last_fallback": self.last_fallback,
        }
        return lambda: {
            "sample": sample(),
            "fitted": None if fitted is None else fitted.state_dict(),
            **rest,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        def unpack(packed: dict[str, np.ndarray]) -> list[tuple[np.ndarray, int]]:
            rows = np.asarray(packed["rows"], dtype=np.int64).reshape(-1, self.n_functions)
            return [(row, int(a)) for row, a in zip(rows, packed["anchors"], strict=True)]

        self.sample.load_state(state["sample"], unpack)
        fitted = state["fitted"]
        self.model.fitted = None if fitted is None else LabelModelFit.from_state(fitted)
        # states saved before session 19 hold the rows seen at the last fit ("fitted_at"),
        # and their reservoir counts every row seen as entered, so the two agree there
        self._fitted_entered = int(state.get("fitted_entered", state.get("fitted_at", 0)))
        self.fits, self.fallbacks = int(state["fits"]), int(state["fallbacks"])
        self.last_fallback = state["last_fallback"]

    @property
    def warm(self) -> bool:
        """Whether the fit comes from data (at least ``min_rows`` rows seen)."""
        return self.sample.seen >= self.min_rows

    @property
    def accuracies(self) -> np.ndarray | None:
        """Fitted accuracies, or ``None`` while warming up."""
        return self.model.fitted.accuracies if self.warm and self.model.fitted else None
