"""Rate drift (click-through, relevant-label rate, mean rating) with River's change detectors,
reported per window like the two-sample detectors."""

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
    """Feed a rate's observations (0/1 or values in [0, 1]) to a River detector (ADWIN by
    default, Page-Hinkley as an option); each window (:class:`WindowCutter`) reports its mean,
    the mean of the first ``reference_size`` observations, and whether River signalled a
    change inside it. A window closes early when River signals, so the change is reported (and
    alerted) at once rather than at the window's end.

    River keeps its own evidence across windows (``sequential``), so one signal is enough for
    an alert; ``delta`` sets ADWIN's false-alarm bound. The statistic is ``|window mean -
    reference mean|`` and the threshold the change River's window found at its last signal
    (NaN before one), both for display; ``drifted`` is River's decision.

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

    sequential = True

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
    ) -> None:
        self.name = name
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
                self.ref_n += 1
                continue
            results.extend(self._close(w) for w in self._cutter.add(ts, value))
            if self._signalled:  # report the change now, not at the window's end
                results.extend(self._close(w) for w in self._cutter.cut())
        return results

    def _close(self, window: Window[float]) -> DriftResult:
        self.windows += 1
        mean = sum(window.values) / len(window.values)
        ref_mean = self.ref_sum / self.ref_n
        result = DriftResult(
            detector=self.name,
            statistic=abs(mean - ref_mean),
            threshold=self.last_change,
            drifted=self._signalled,
            window=self.windows,
            window_start=window.start,
            window_end=window.end,
            n=len(window.values),
            details={
                "window_mean": mean,
                "reference_mean": ref_mean,
                "method": self.method,
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
