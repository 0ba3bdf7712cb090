"""Rate drift (click-through, mean rating): each window's mean against the reference's, on the
same false-alarm budget as the two-sample detectors; River's change detector only decides when
a window closes early."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from river import drift as river_drift

from ecrec_stream.drift.base import DriftResult, Window, WindowCutter

RateMethod = Literal["adwin", "page_hinkley"]
# River's detectors keep their window in compiled objects that only pickle can save; a restart
# rebuilds the detector instead by replaying what it holds: ADWIN's last ``width``
# observations, Page-Hinkley's since its last signal (it starts again at a signal), at most
# this many (older ones only refine ADWIN's estimate of a stable rate).
REPLAY_LIMIT = 20_000


class RiverRate:
    """A rate's observations (0/1 or values in [0, 1]) in windows (:class:`WindowCutter`),
    each tested against the first ``reference_size`` observations: the statistic is ``|window
    mean - reference mean|`` and the threshold ``z(1 - alpha / 2) * sd * sqrt(1/n + 1/n_ref)``
    (the reference's standard deviation; the normal approximation of a two-sample test of
    means), so a window drifts with probability ``alpha`` when nothing changed, the budget of
    the other detectors, and the monitor confirms it over consecutive windows like theirs.

    A River detector (ADWIN by default, Page-Hinkley as an option; ``delta``) watches the
    stream too: when it signals a change, the current window closes at once (if it holds half
    a window) so the change is tested without waiting for the window to fill. Its signal alone
    decides nothing: over a long stream ADWIN's per-check bound adds up to false alarms (8 on
    17,817 stationary sessions of a shop's traffic, each with a few dozen searches in its
    window).

    >>> import random
    >>> rng = random.Random(0)
    >>> d = RiverRate("ctr", window_events=200, reference_size=400)
    >>> before = [(float(i), float(rng.random() < 0.3)) for i in range(2000)]
    >>> any(r.drifted for r in d.update(before))
    False
    >>> after = [(2000.0 + i, float(rng.random() < 0.1)) for i in range(600)]
    >>> any(r.drifted for r in d.update(after))
    True
    """

    sequential = False

    def __init__(
        self,
        name: str,
        *,
        method: RateMethod = "adwin",
        delta: float = 0.002,
        clock: int = 32,
        window_events: int = 200,
        window_s: float = 3600.0,
        reference_size: int = 1000,
        alpha: float = 0.01,
    ) -> None:
        from scipy.stats import norm

        self.name = name
        self.alpha = alpha
        self.z = float(norm.ppf(1 - alpha / 2))
        self.method = method
        self.delta = delta
        self.clock = clock
        self.window_events = window_events
        self.window_s = window_s
        self.reference_size = reference_size
        self.rebase()

    def _new_detector(self) -> Any:
        if self.method == "adwin":
            return river_drift.ADWIN(delta=self.delta, clock=self.clock)
        return river_drift.PageHinkley(delta=self.delta, threshold=20.0, mode="both")

    @property
    def ready(self) -> bool:
        return self.ref_n >= self.reference_size

    def rebase(self) -> None:
        self.detector = self._new_detector()
        self._recent: deque[float] = deque(maxlen=REPLAY_LIMIT)
        self._since_signal = 0
        self.ref_sum = 0.0
        self.ref_sq = 0.0
        self.ref_n = 0
        self.windows = 0
        self.last_change = math.nan
        self._cutter: WindowCutter[float] = WindowCutter(self.window_events, self.window_s)
        self._signalled = False

    def update(self, batch: Sequence[tuple[float, float]]) -> list[DriftResult]:
        results: list[DriftResult] = []
        for ts, value in batch:
            before = self.detector.estimation if self.method == "adwin" else math.nan
            self.detector.update(value)
            self._recent.append(value)
            self._since_signal = 0 if self.detector.drift_detected else self._since_signal + 1
            if self.detector.drift_detected and self.ready:
                self._signalled = True
                if self.method == "adwin":
                    self.last_change = abs(self.detector.estimation - before)
            if not self.ready:
                self.ref_sum += value
                self.ref_sq += value * value
                self.ref_n += 1
                continue
            results.extend(self._close(w) for w in self._cutter.add(ts, value))
            half = len(self._cutter.current.values) >= self.window_events // 2
            if self._signalled and half:  # test the change now, not at the window's end
                results.extend(self._close(w) for w in self._cutter.cut())
        return results

    def _close(self, window: Window[float]) -> DriftResult:
        self.windows += 1
        n = len(window.values)
        mean = sum(window.values) / n
        ref_mean = self.ref_sum / self.ref_n
        variance = max(self.ref_sq / self.ref_n - ref_mean**2, 0.0)
        # a reference with no spread (all 0 or all 1) would make any change infinitely
        # significant: floor it at one observation's worth of the other value
        variance = max(variance, 1.0 / (self.ref_n + 1))
        threshold = self.z * math.sqrt(variance * (1 / n + 1 / self.ref_n))
        statistic = abs(mean - ref_mean)
        result = DriftResult(
            detector=self.name,
            statistic=statistic,
            threshold=threshold,
            drifted=statistic > threshold,
            window=self.windows,
            window_start=window.start,
            window_end=window.end,
            n=n,
            details={
                "window_mean": mean,
                "reference_mean": ref_mean,
                "method": self.method,
                "signalled": self._signalled,  # River saw a change in this window
                "last_change": self.last_change,
                # ADWIN's own estimate: the mean of the recent stretch it kept after a change
                "estimate": self.detector.estimation if self.method == "adwin" else mean,
            },
        )
        self._signalled = False
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "replay": np.asarray(self._held(), dtype=np.float64),
            "ref_sum": self.ref_sum,
            "ref_sq": self.ref_sq,
            "ref_n": self.ref_n,
            "windows": self.windows,
            "last_change": self.last_change,
            "window": self._cutter.state_dict(),
            "signalled": self._signalled,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.rebase()
        replay = np.asarray(state["replay"], dtype=np.float64).tolist()
        for value in replay:
            self.detector.update(value)  # a signal while replaying was signalled before
            self._recent.append(value)
        self._since_signal = len(replay)
        self.ref_sum, self.ref_n = float(state["ref_sum"]), int(state["ref_n"])
        self.ref_sq = float(state["ref_sq"])
        self.windows = int(state["windows"])
        self.last_change = float(state["last_change"])
        self._cutter.load_state(state["window"])
        self._signalled = bool(state["signalled"])

    def reset_state(self) -> None:
        self.rebase()

    def _held(self) -> list[float]:
        """The observations the detector's window holds now (the newest ones)."""
        held = int(self.detector.width) if self.method == "adwin" else self._since_signal
        return list(self._recent)[-held:] if held else []
