"""Position bias estimated from the traffic: a position-based click model (PBM) fitted by EM.

PBM: ``P(click | query q, item d, position k) = theta_k * gamma_qd``, with ``theta_k`` the
probability that position ``k`` is examined and ``gamma_qd`` the attractiveness of ``d`` for
``q`` (Chuklin, Markov and de Rijke, *Click Models for Web Search*, 2015, ch. 3 and 4).
``theta`` is identifiable only from pairs shown at more than one position: ranking changes over
time, or a small share of randomised swaps (Joachims et al., 2017) provide them. Until enough
such observations arrive, :meth:`PositionBiasModel.propensity` falls back to
``1 / (k + 1) ** eta``.

Written here rather than taken from a library: the maintained click-model packages (PyClick,
ULTRA) are research code for offline logs; this is ~60 lines of numpy over aggregated counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecrec_stream.labels.relevance import ips_weight
from ecrec_stream.labels.reservoir import Reservoir
from ecrec_stream.state import TakenState

CONVERGED = 1e-6  # EM stops once no probability moves more than this in an iteration


@dataclass(frozen=True, slots=True)
class Observation:
    """One impression: ``item`` shown for ``query`` at 0-based ``position``, clicked or not."""

    query: str
    item: str
    position: int
    clicked: bool


@dataclass(frozen=True)
class PositionFit:
    """What one EM fit found (see :meth:`PositionBiasModel.fit_sample`); its state is also the
    fitted part of :meth:`PositionBiasModel.state_dict`."""

    theta: np.ndarray | None  # the examination curve (theta[0] = 1); None: not identifiable yet
    attractiveness: dict[tuple[str, str], tuple[float, int]]  # (query, item) -> (gamma, shown)
    pairs_at_several_positions: int

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta,
            "pairs_at_several_positions": self.pairs_at_several_positions,
            "attractiveness": _attractiveness_columns(self.attractiveness),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PositionFit:
        theta = state["theta"]
        return cls(
            None if theta is None else np.asarray(theta, dtype=np.float64),
            _attractiveness_from(state["attractiveness"]),
            int(state["pairs_at_several_positions"]),
        )


def _attractiveness_columns(
    attractiveness: dict[tuple[str, str], tuple[float, int]],
) -> dict[str, Any]:
    # columns, not a row per pair: a checkpoint of ~500,000 pairs took 1.4 s as rows
    return {
        "query": [q for q, _ in attractiveness],
        "item": [i for _, i in attractiveness],
        "gamma": np.fromiter(
            (g for g, _ in attractiveness.values()), np.float64, len(attractiveness)
        ),
        "shown": np.fromiter(
            (n for _, n in attractiveness.values()), np.int64, len(attractiveness)
        ),
    }


def _attractiveness_from(pairs: Any) -> dict[tuple[str, str], tuple[float, int]]:
    rows: Iterable[tuple[Any, ...]]
    if isinstance(pairs, dict):  # columns
        rows = zip(pairs["query"], pairs["item"], pairs["gamma"], pairs["shown"], strict=True)
    else:  # a row per pair, as states saved before the columns were
        rows = (tuple(row) for row in pairs)
    return {(q, i): (float(g), int(n)) for q, i, g, n in rows}


class PositionBiasModel:
    """Fit examination probabilities ``theta`` (``theta[0] = 1``) from impressions and clicks.

    >>> import random
    >>> rng = random.Random(3)
    >>> true_theta = [1.0, 0.6, 0.4, 0.3, 0.2]
    >>> model = PositionBiasModel(max_position=5, min_pairs=50)
    >>> obs = []
    >>> for q in range(400):
    ...     gammas = [rng.random() for _ in range(5)]
    ...     for _ in range(6):  # each query seen 6 times, its items in shuffled order
    ...         order = rng.sample(range(5), 5)
    ...         for pos, d in enumerate(order):
    ...             clicked = rng.random() < true_theta[pos] * gammas[d]
    ...             obs.append(Observation(f"q{q}", f"d{d}", pos, clicked))
    >>> model.observe_many(obs)
    >>> [round(float(t), 1) for t in model.fit()]
    [1.0, 0.6, 0.4, 0.3, 0.2]
    """

    def __init__(
        self,
        max_position: int = 20,
        *,
        eta: float = 1.0,
        capacity: int = 500_000,
        min_pairs: int = 200,
        iterations: int = 100,
        seed: int = 0,
    ) -> None:
        self.max_position = max_position
        self.eta = eta
        self.min_pairs = min_pairs
        self.iterations = iterations
        self.sample: Reservoir[Observation] = Reservoir(capacity, seed)
        self.theta: np.ndarray | None = None
        self.pairs_at_several_positions = 0  # as of the last fit() call
        # attractiveness (gamma) and impression count per (query, item), as of the last fit
        self.attractiveness: dict[tuple[str, str], tuple[float, int]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The state protocol: the impression reservoir (columns of strings, positions and
        clicks), the fitted examination curve and attractiveness per pair."""
        return self.take_state()()

    def take_state(self) -> TakenState:
        """:meth:`state_dict` in two steps (:class:`~ecrec_stream.state.TakesState`): a copy of
        the sample's list now (~3 ms at 500,000 impressions), its columns and the fit's when
        called (~0.1 s). A fit's ``theta`` and ``attractiveness`` are replaced, never changed
        in place, so the fit is taken as it is."""

        def pack(items: list[Observation]) -> dict[str, Any]:
            return {
                "query": [o.query for o in items],
                "item": [o.item for o in items],
                "position": np.asarray([o.position for o in items], dtype=np.int64),
                "clicked": np.asarray([o.clicked for o in items], dtype=np.int8),
            }

        fitted = PositionFit(self.theta, self.attractiveness, self.pairs_at_several_positions)
        sample = self.sample.take_state(pack)
        return lambda: {"sample": sample(), **fitted.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        def unpack(packed: dict[str, Any]) -> list[Observation]:
            return [
                Observation(q, i, int(p), bool(c))
                for q, i, p, c in zip(
                    packed["query"],
                    packed["item"],
                    packed["position"],
                    packed["clicked"],
                    strict=True,
                )
            ]

        self.sample.load_state(state["sample"], unpack)
        fitted = PositionFit.from_state(state)
        self.theta = fitted.theta  # None too: as saved, unlike install()
        self.attractiveness = fitted.attractiveness
        self.pairs_at_several_positions = fitted.pairs_at_several_positions

    def observe_many(self, observations: Iterable[Observation]) -> None:
        """Remember impressions (a uniform reservoir of at most ``capacity``)."""
        limit = self.max_position
        self.sample.add_many(ob for ob in observations if 0 <= ob.position < limit)

    def _arrays(
        self, obs: Sequence[Observation]
    ) -> tuple[dict[tuple[str, str], int], np.ndarray, np.ndarray, np.ndarray]:
        """Pair ids and, per observation, its pair id, position and click (0/1)."""
        pair_ids: dict[tuple[str, str], int] = {}
        pair = np.array([pair_ids.setdefault((o.query, o.item), len(pair_ids)) for o in obs])
        pos = np.array([o.position for o in obs])
        click = np.array([o.clicked for o in obs], dtype=np.float64)
        return pair_ids, pair, pos, click

    def _count_multi_position(self, pair: np.ndarray, pos: np.ndarray) -> int:
        distinct = np.unique(pair * self.max_position + pos) // self.max_position
        return int(np.count_nonzero(np.bincount(distinct) > 1))

    def multi_position_pairs(self) -> int:
        """How many (query, item) pairs were seen at more than one position."""
        if not self.sample.items:
            return 0
        _, pair, pos, _ = self._arrays(self.sample.items)
        return self._count_multi_position(pair, pos)

    def fit(self) -> np.ndarray | None:
        """Fit by EM on the sample, install the fit and return ``theta``. While fewer than
        ``min_pairs`` pairs were seen at more than one position (``theta`` would not be
        identifiable), only the attractiveness is fitted, with ``theta`` held at the fixed
        curve, and ``None`` is returned (``self.theta`` unchanged)."""
        if not self.sample.items:
            return None
        found = self.fit_sample(self.sample.items)
        self.install(found)
        return found.theta

    def install(self, found: PositionFit) -> None:
        """Use ``found`` from now on (``theta`` stays where it was not identifiable)."""
        self.pairs_at_several_positions = found.pairs_at_several_positions
        self.attractiveness = found.attractiveness
        if found.theta is not None:
            self.theta = found.theta

    def fit_sample(self, sample: Sequence[Observation]) -> PositionFit:
        """Fit by EM on ``sample`` (a copy of the reservoir's items) and change nothing:
        thread-safe, so a fit can run beside the labelling that goes on with the last one."""
        if not sample:
            return PositionFit(None, {}, 0)
        pair_ids, pair, pos, click = self._arrays(sample)
        several = self._count_multi_position(pair, pos)
        learn_theta = several >= self.min_pairs
        n_pos = self.max_position
        theta = 1.0 / (np.arange(n_pos) + 1.0) ** self.eta
        gamma = np.full(len(pair_ids), 0.5)
        shown = np.bincount(pos, minlength=n_pos).astype(np.float64)
        shown_pair = np.bincount(pair, minlength=len(pair_ids)).astype(np.float64)
        for _ in range(self.iterations):
            t, g = theta[pos], gamma[pair]
            denom = np.maximum(1.0 - t * g, 1e-12)
            examined = click + (1 - click) * t * (1 - g) / denom  # E[examined | data]
            attractive = click + (1 - click) * (1 - t) * g / denom  # E[attractive | data]
            new_gamma = np.bincount(pair, weights=attractive, minlength=len(pair_ids)) / shown_pair
            moved = float(np.abs(new_gamma - gamma).max())
            gamma = new_gamma
            if learn_theta:
                new_theta = np.bincount(pos, weights=examined, minlength=n_pos) / np.maximum(
                    shown, 1
                )
                new_theta[shown == 0] = theta[shown == 0]
                new_theta = np.clip(new_theta, 1e-6, 1.0)
                moved = max(moved, float(np.abs(new_theta - theta).max()))
                theta = new_theta
            if moved < CONVERGED:
                break  # converged
        # gamma is P(click | examined): the click model's relevance estimate of each pair
        attractiveness = {key: (float(gamma[i]), int(shown_pair[i])) for key, i in pair_ids.items()}
        return PositionFit(theta / theta[0] if learn_theta else None, attractiveness, several)

    def propensity(self, position: int) -> float:
        """P(examined) at ``position`` relative to the top: the fit, or the fixed curve."""
        if self.theta is not None and 0 <= position < len(self.theta):
            return float(self.theta[position])
        return float(1.0 / (position + 1.0) ** self.eta)

    def weight(self, position: int, clip: float) -> float:
        """Inverse propensity weight of a click at ``position``, clipped to ``clip``: from the
        fit (``theta`` >= 1e-6), or :func:`ips_weight` of the fixed curve."""
        if self.theta is not None and 0 <= position < len(self.theta):
            return float(min(clip, 1.0 / self.theta[position]))
        return ips_weight(position, self.eta, clip)
