"""The operator console: one page at ``/console`` on an index replica, plots of the whole loop.

A sampler thread reads, every ``sample_interval_s``: this replica (index size, freshness,
search and recommendation latency, lag, a rebuild's progress), the stream workers' pages
(``/ecrec/stats``: events per topic, dead letters by reason, the group's lag, label-function
accuracies; ``/ecrec/drift``: each detector's statistic against its threshold, the alerts),
the trainer's ``status.json`` (buffer, retrains with the gate's figures and verdict, serving
model) and the model registry. It keeps the last ``history`` samples of every series; the page
polls ``/console/data`` and draws them with uPlot (vendored under workers/static: MIT, 50 KB,
no build step and nothing fetched at run time; chosen over Chart.js for its size and its
time-series focus). Rollback is shown as the ``ecrec-stream models --use`` command: the page
changes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ecrec_stream.config import Settings

LOG = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_ALERTS = 50


class LatencyWindow:
    """Durations recorded since the last :meth:`take` (thread-safe, bounded)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._values: deque[float] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def take(self) -> list[float]:
        with self._lock:
            values, self._values = list(self._values), deque(maxlen=self._values.maxlen)
        return values


def _quantiles_ms(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return float(p50), float(p99)


class ConsoleState:
    """Time series (name -> points), the alert list and the latest tables, thread-safe.

    >>> state = ConsoleState(history=3)
    >>> for t in range(5):
    ...     state.record(float(t), {"index.items": t * 10})
    >>> state.as_dict()["series"]["index.items"]
    [[2.0, 20], [3.0, 30], [4.0, 40]]
    """

    def __init__(self, history: int) -> None:
        self.history = history
        self.series: dict[str, deque[tuple[float, float | None]]] = {}
        self.alerts: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, Any] = {}
        self.sources: dict[str, str] = {}  # source -> "ok" or why it could not be read
        self.samples = 0
        self._lock = threading.Lock()

    def record(self, t: float, values: dict[str, float | None]) -> None:
        with self._lock:
            for name, value in values.items():
                self.series.setdefault(name, deque(maxlen=self.history)).append((t, value))
            self.samples += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "samples": self.samples,
                "series": {k: [list(p) for p in v] for k, v in self.series.items()},
                "alerts": sorted(self.alerts.values(), key=lambda a: a.get("raised_at", "")),
                "tables": dict(self.tables),
                "sources": dict(self.sources),
            }


class Rates:
    """Per-second rates of monotone counters between two samples. A counter that appears after
    the first sample counted from 0 (the worker's counters of an event kind exist once it saw
    one); a restart that resets a counter gives no rate for that step.

    >>> rates = Rates()
    >>> rates.update(0.0, {"a": 10}), rates.update(2.0, {"a": 30, "b": 4})
    ({'a': None}, {'a': 10.0, 'b': 2.0})
    >>> rates.update(3.0, {"a": 5, "b": 4})
    {'a': None, 'b': 0.0}
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        self._previous_t: float | None = None

    def update(self, t: float, counters: dict[str, float]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, value in counters.items():
            last = self._last.get(name)
            if last is None and self._previous_t is not None:
                last = (self._previous_t, 0.0)
            self._last[name] = (t, value)
            ok = last is not None and t > last[0] and value >= last[1]
            out[name] = (value - last[1]) / (t - last[0]) if ok and last else None
        self._previous_t = t
        return out


class ConsoleSampler:
    """Fills a :class:`ConsoleState` every ``interval_s`` on a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        replica_stats: Callable[[], dict[str, Any]],
        latencies: dict[str, LatencyWindow],
        models: Callable[[], list[dict[str, Any]]],
    ) -> None:
        cfg = settings.console
        self.settings = settings
        self.state = ConsoleState(cfg.history)
        self.interval_s = cfg.sample_interval_s
        port = settings.worker_web_port
        self.worker_urls = list(cfg.worker_urls) or ([f"http://127.0.0.1:{port}"] if port else [])
        self.trainer_status = cfg.trainer_status or settings.trainer_dir / "status.json"
        self.replica_stats = replica_stats
        self.latencies = latencies
        self.models = models
        token = settings.api.token
        self.headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.rates = Rates()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)

    def start(self) -> ConsoleSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once(time.time())
            except Exception:  # a console must never take the replica down
                LOG.exception("console sample failed")
            self._stop.wait(self.interval_s)

    def _get(self, url: str) -> dict[str, Any] | None:
        try:
            answer = httpx.get(url, timeout=min(5.0, self.interval_s * 2), headers=self.headers)
            answer.raise_for_status()
            self.state.sources[url] = "ok"
            return dict(answer.json())
        except (httpx.HTTPError, ValueError) as exc:
            self.state.sources[url] = f"unreachable: {exc}"
            return None

    def sample_once(self, now: float) -> None:
        """Read every source once and record what it said."""
        values: dict[str, float | None] = {}
        counters: dict[str, float] = {}
        self._replica(values, counters)
        for url in self.worker_urls:
            self._worker(url, values, counters)
        self._trainer(values)
        try:
            self.state.tables["models"] = self.models()
        except Exception as exc:  # the registry may be remote (S3) and down
            self.state.sources["registry"] = f"unreadable: {exc}"
        for name, rate in self.rates.update(now, counters).items():
            values[f"rate.{name}"] = rate
        self.state.record(now, values)

    def _replica(self, values: dict[str, float | None], counters: dict[str, float]) -> None:
        stats = self.replica_stats()
        fresh = stats.get("freshness", {})
        values["index.items"] = stats.get("items")
        values["index.freshness_p50_s"] = fresh.get("p50_s")
        values["index.freshness_p99_s"] = fresh.get("p99_s")
        lag = stats.get("lag") or {}
        values["lag.replica"] = lag.get("total")
        self.state.tables.setdefault("lag_reasons", {})["replica"] = lag.get("reason")
        for name, window in self.latencies.items():
            values[f"latency.{name}_p50_ms"], values[f"latency.{name}_p99_ms"] = _quantiles_ms(
                window.take()
            )
        self.state.tables["replica"] = {
            "model_version": stats.get("model_version"),
            "backend": stats.get("backend"),
            "fusion": stats.get("fusion"),
            "rebuild": stats.get("rebuild"),  # re-embedding or IVF build in progress
            "swaps": stats.get("swaps"),
        }
        self.state.sources["replica"] = "ok"

    def _worker(
        self, url: str, values: dict[str, float | None], counters: dict[str, float]
    ) -> None:
        stats = self._get(f"{url}/ecrec/stats")
        if stats is not None:
            for kind, n in stats.get("valid", {}).items():
                counters[f"events.{kind}"] = counters.get(f"events.{kind}", 0) + n
            dead = sum(stats.get("dead", {}).values())
            counters["dead_letters"] = counters.get("dead_letters", 0) + dead
            reasons = self.state.tables.setdefault("dead_letter_reasons", {})
            reasons[url] = {
                **stats.get("dead_reasons", {}),
                **{
                    k.removeprefix("dead_letters_"): v
                    for k, v in stats.get("labels", {}).items()
                    if k.startswith("dead_letters_")
                },
            }
            lag = stats.get("lag") or {}
            values[f"lag.worker {url}"] = lag.get("total")
            self.state.tables.setdefault("lag_reasons", {})[f"worker {url}"] = lag.get("reason")
            labels = stats.get("labels", {})
            self.state.tables["label_functions"] = {
                task: labels.get(f"{task}_lf_accuracy") for task in ("sentiment", "relevance")
            }
        drift = self._get(f"{url}/ecrec/drift")
        if drift is not None and drift.get("enabled"):
            for name, det in drift.get("detectors", {}).items():
                values[f"drift.{name}.statistic"] = det.get("statistic")
                values[f"drift.{name}.threshold"] = det.get("threshold")
            for alert in drift.get("alerts", []):
                # seen_at: the wall-clock time the console first saw it, where the page marks it
                # (raised_at may be in the traffic's event time)
                self.state.alerts.setdefault(alert["alert_id"], {**alert, "seen_at": time.time()})
            while len(self.state.alerts) > MAX_ALERTS:
                self.state.alerts.pop(next(iter(self.state.alerts)))

    def _trainer(self, values: dict[str, float | None]) -> None:
        try:
            status = json.loads(Path(self.trainer_status).read_text())
        except (OSError, ValueError) as exc:
            self.state.sources["trainer"] = f"no status at {self.trainer_status}: {exc}"
            return
        self.state.sources["trainer"] = "ok"
        buffer = status.get("buffer", {})
        values["trainer.buffer_recent"] = buffer.get("recent")
        values["trainer.buffer_reservoir"] = sum(buffer.get("reservoir", {}).values())
        self.state.tables["trainer"] = {
            "serving_version": status.get("serving_version"),
            "serving_fusion": status.get("serving_fusion"),
            "pending_triggers": status.get("pending_triggers"),
            "stats": status.get("stats", {}),
            "retrains": [_retrain_row(o) for o in status.get("outcomes", [])],
        }


def _retrain_row(outcome: dict[str, Any]) -> dict[str, Any]:
    """A retrain as the console lists it: trigger, verdict, the gate's before/after."""

    def ndcg(side: dict[str, Any]) -> dict[str, float | None]:
        return {split: (m or {}).get("ndcg@10") for split, m in side.items()}

    verdict = (
        "published"
        if outcome.get("accepted")
        else "too little data"
        if outcome.get("insufficient_data")
        else "rejected by the gate"
    )
    return {
        "trigger": outcome.get("trigger"),
        "verdict": verdict,
        "reasons": outcome.get("reasons", []),
        "serving": ndcg(outcome.get("serving", {})),
        "candidate": ndcg(outcome.get("candidate", {})),
        "candidate_version": outcome.get("candidate_version"),
    }
