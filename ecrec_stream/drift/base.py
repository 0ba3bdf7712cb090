"""The drift detector protocol, its typed result, and the windowed two-sample machinery that the
embedding and category detectors share: a reference sample, count- and event-time windows, and
a threshold calibrated on the stream's own time structure."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
from scipy import stats as scipy_stats

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
Calibration = Literal["holdout", "blocks", "permutation"]


@dataclass(frozen=True, slots=True)
class DriftResult:
    """One closed window of one detector: its statistic against its threshold.

    ``window_start``/``window_end`` are event times (epoch seconds) of the window's first and
    last observation; ``window`` counts the detector's closed windows since its reference.
    """

    detector: str
    statistic: float
    threshold: float
    drifted: bool
    window: int
    window_start: float
    window_end: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DriftDetector(Protocol[T_contra]):
    """A detector fed ``(event time, value)`` observations in arrival order.

    ``update`` returns one :class:`DriftResult` per window it closed (usually none or one);
    ``sequential`` detectors (River's) gather evidence across windows themselves, so an alert
    policy should act on their first signal rather than wait for confirmations.
    """

    name: str
    sequential: bool

    def update(self, batch: Sequence[tuple[float, T_contra]]) -> list[DriftResult]: ...

    def rebase(self) -> None:
        """Forget the reference: the next observations build a new one (after a publication)."""

    def state_dict(self) -> dict[str, Any]:
        """The state protocol (:mod:`ecrec_stream.state`): JSON values and arrays only."""
        ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def reset_state(self) -> None:
        """As newly built: the same as :meth:`rebase` for every detector here."""

    @property
    def ready(self) -> bool:
        """Whether the reference is complete and windows are being tested."""


def gamma_threshold(samples: Sequence[float], alpha: float) -> float:
    """The ``1 - alpha`` quantile of a gamma distribution fitted to ``samples`` by moments
    (the classic approximation of a two-sample statistic's null distribution, here fitted to
    null statistics from the stream itself rather than from permutations).

    >>> round(gamma_threshold([1.0, 1.2, 0.8, 1.1, 0.9], 0.01), 3)
    1.404
    """
    values = np.asarray(samples, dtype=np.float64)
    mean, var = float(values.mean()), float(values.var(ddof=1)) if len(values) > 1 else 0.0
    if mean <= 0 or var <= 0:
        return mean * 1.5 + 1e-9
    shape, scale = mean * mean / var, var / mean
    return float(scipy_stats.gamma.ppf(1 - alpha, shape, scale=scale))


@dataclass
class Window(Generic[T]):
    values: list[T] = field(default_factory=list)
    start: float = math.inf
    end: float = -math.inf

    def add(self, ts: float, value: T) -> None:
        self.values.append(value)
        self.start = min(self.start, ts)
        self.end = max(self.end, ts)


class WindowCutter(Generic[T]):
    """Cuts observations into windows, the one rule of every detector: a window closes after
    ``window_events`` observations, or before an observation that would make it span
    ``window_s`` of event time, if it holds at least half that many (a thinner window would be
    tested against a threshold calibrated for full ones).

    >>> cut = WindowCutter(window_events=4, window_s=10.0)
    >>> [w.values for ts in (0, 1, 2, 3, 4, 5) for w in cut.add(float(ts), ts)]
    [[0, 1, 2, 3]]
    >>> cut.add(30.0, 30)  # 4, 5 hold half a window and 30 is 26 s later: closed first
    [Window(values=[4, 5], start=4.0, end=5.0)]
    """

    def __init__(self, window_events: int, window_s: float) -> None:
        self.window_events = window_events
        self.window_s = window_s
        self.current: Window[T] = Window()

    def add(self, ts: float, value: T) -> list[Window[T]]:
        """Add one observation; return the windows it closed (none, one or two), in order."""
        closed: list[Window[T]] = []
        cur = self.current
        if (
            cur.values
            and ts - cur.start >= self.window_s
            and len(cur.values) >= self.window_events // 2
        ):
            closed.append(self._take())
        self.current.add(ts, value)
        if len(self.current.values) >= self.window_events:
            closed.append(self._take())
        return closed

    def cut(self) -> list[Window[T]]:
        """Close the current window now (a sequential detector signalled); none if empty."""
        return [self._take()] if self.current.values else []

    def _take(self) -> Window[T]:
        window, self.current = self.current, Window()
        return window

    def state_dict(self, pack: Callable[[list[T]], Any] = list) -> dict[str, Any]:
        """The open window; ``pack`` turns its values into state values (e.g. one array)."""
        cur = self.current
        return {"values": pack(list(cur.values)), "start": cur.start, "end": cur.end}

    def load_state(self, state: dict[str, Any], unpack: Callable[[Any], list[T]] = list) -> None:
        self.current = Window(unpack(state["values"]), float(state["start"]), float(state["end"]))

    def reset_state(self) -> None:
        self.current = Window()


class WindowedTwoSample(Generic[T]):
    """Compare each window of the stream with a reference sample.

    * **Reference**: the first ``reference_size`` observations (or those after :meth:`rebase`).
    * **Windows**: see :class:`WindowCutter`.
    * **Calibration** (when the reference is complete), to a false-alarm rate ``alpha`` per
      window: ``holdout`` (default) tests windows from the reference's second half against its
      first half, as the live stream later tests windows against the whole reference, so the
      null statistics carry the stream's real week-to-week churn; ``blocks`` tests each
      consecutive block against the rest of the reference; ``permutation`` tests random
      subsets of the shuffled reference (the i.i.d. baseline that real traffic defeats). The
      threshold is the ``1 - alpha`` quantile of a gamma fitted to those statistics, for the
      size of the window tested: a window closed early by event time holds fewer observations,
      and the statistics grow as a window shrinks (a window of 100 queries against a threshold
      calibrated on windows of 200 drifted in 828 of 837 windows of stationary traffic). Sizes
      are rounded down to a tenth of a window (a smaller size has the higher threshold) and
      each size is calibrated once.

    Subclasses provide :meth:`statistic` (larger = more different) and may override
    :meth:`details`.
    """

    sequential = False

    def __init__(
        self,
        name: str,
        *,
        window_events: int = 200,
        window_s: float = 3600.0,
        reference_size: int = 1000,
        calibration: Calibration = "holdout",
        alpha: float = 0.01,
        seed: int = 0,
    ) -> None:
        if reference_size < 4 * window_events:
            raise ValueError("reference_size must hold at least four windows")
        self.name = name
        self.window_events = window_events
        self.window_s = window_s
        self.reference_size = reference_size
        self.calibration = calibration
        self.alpha = alpha
        self.seed = seed
        self.reference: list[T] = []
        self.reference_span: tuple[float, float] = (math.inf, -math.inf)
        self.threshold = math.nan
        self.null_statistics: list[float] = []
        self._thresholds: dict[int, float] = {}  # window size -> threshold (other than full)
        self.windows = 0
        self._cutter: WindowCutter[T] = WindowCutter(window_events, window_s)

    # -- to implement -------------------------------------------------------------------
    def statistic(self, reference: Sequence[T], window: Sequence[T]) -> float:
        raise NotImplementedError

    def details(self, reference: Sequence[T], window: Sequence[T]) -> dict[str, Any]:
        return {}

    # -- protocol ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not math.isnan(self.threshold)

    def update(self, batch: Sequence[tuple[float, T]]) -> list[DriftResult]:
        results: list[DriftResult] = []
        for ts, value in batch:
            if not self.ready:
                self.reference.append(value)
                lo, hi = self.reference_span
                self.reference_span = (min(lo, ts), max(hi, ts))
                if len(self.reference) >= self.reference_size:
                    self._calibrate()
                continue
            results.extend(self._close(w) for w in self._cutter.add(ts, value))
        return results

    def rebase(self) -> None:
        self.reference = []
        self.reference_span = (math.inf, -math.inf)
        self.threshold = math.nan
        self.null_statistics = []
        self._thresholds = {}
        self.windows = 0
        self._cutter = WindowCutter(self.window_events, self.window_s)

    def _pack(self, values: list[T]) -> Any:
        """Observations as state values (categories are strings already; vectors override)."""
        return list(values)

    def _unpack(self, packed: Any) -> list[T]:
        return list(packed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self._pack(list(self.reference)),
            "reference_span": list(self.reference_span),
            "threshold": self.threshold,
            "null_statistics": [float(s) for s in self.null_statistics],
            "windows": self.windows,
            "window": self._cutter.state_dict(self._pack),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.reference = self._unpack(state["reference"])
        lo, hi = state["reference_span"]
        self.reference_span = (float(lo), float(hi))
        self.threshold = float(state["threshold"])
        self.null_statistics = [float(s) for s in state["null_statistics"]]
        self._thresholds = {}  # recalibrated on demand (deterministic)
        self.windows = int(state["windows"])
        self._cutter.load_state(state["window"], self._unpack)

    def reset_state(self) -> None:
        self.rebase()

    # -- internals ----------------------------------------------------------------------------
    def threshold_for(self, n: int) -> float:
        """The threshold of a window of ``n`` observations (see the class docstring)."""
        if n >= self.window_events:
            return self.threshold
        step = max(1, self.window_events // 10)
        size = max(step, n - n % step)
        if size not in self._thresholds:
            self._thresholds[size] = gamma_threshold(self.null_samples(size), self.alpha)
        return self._thresholds[size]

    def _close(self, window: Window[T]) -> DriftResult:
        self.windows += 1
        stat = self.statistic(self.reference, window.values)
        threshold = self.threshold_for(len(window.values))
        return DriftResult(
            detector=self.name,
            statistic=stat,
            threshold=threshold,
            drifted=stat > threshold,
            window=self.windows,
            window_start=window.start,
            window_end=window.end,
            n=len(window.values),
            details=self.details(self.reference, window.values),
        )

    def _calibrate(self) -> None:
        self.null_statistics = self.null_samples()
        self.threshold = gamma_threshold(self.null_statistics, self.alpha)

    def null_samples(self, size: int | None = None) -> list[float]:
        """Statistics of windows (of ``size`` observations; default a full window) that
        contain no shift, taken from the reference."""
        ref, w = self.reference, size or self.window_events
        if self.calibration == "holdout":
            half = len(ref) // 2
            inner, later = ref[:half], ref[half:]
            stride = max(1, w // 4)
            return [
                self.statistic(inner, later[i : i + w])
                for i in range(0, len(later) - w + 1, stride)
            ]
        if self.calibration == "blocks":
            return [
                self.statistic(ref[:i] + ref[i + w :], ref[i : i + w])
                for i in range(0, len(ref) - w + 1, w)
            ]
        rng = random.Random(self.seed)
        out = []
        for _ in range(30):
            shuffled = ref[:]
            rng.shuffle(shuffled)
            out.append(self.statistic(shuffled[w:], shuffled[:w]))
        return out
