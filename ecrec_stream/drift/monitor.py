"""The drift monitor: turns validated events into each detector's observations, runs the
detectors, and decides retraining alerts (confirmation over consecutive windows, cooldown,
deterministic ids). Pure domain code: the stream agent feeds it and sends what it returns."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter

from ecrec_stream.config import DriftDetectorName, DriftSettings
from ecrec_stream.contracts.alerts import MovedCategory, RetrainingAlert
from ecrec_stream.contracts.drift import DriftReport
from ecrec_stream.contracts.events import AnyEvent, ClickEvent, ReviewEvent, SearchEvent
from ecrec_stream.drift.base import DriftResult, WindowedTwoSample
from ecrec_stream.drift.categories import CategoryMixJS
from ecrec_stream.drift.embedding import EmbeddingMMD
from ecrec_stream.drift.rates import RiverRate
from ecrec_stream.ingest.eventtime import ReorderBuffer
from ecrec_stream.ingest.quality import BoundedSeen

STATE_KIND = "drift_monitor"
STATE_VERSION = 3  # 1 was a pickle; 3: rate detectors keep the reference's squares
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Annotated[AnyEvent, Field(discriminator="type")])
# searches waiting for their click-through horizon; beyond this the oldest is resolved early
MAX_OPEN_SEARCHES = 200_000
# clicks that came before their search (same timestamp, or reordered), kept for it
MAX_EARLY_CLICKS = 10_000
TEXT_DETECTORS = {"query_embedding", "review_embedding"}


def alert_id(model_version: str, detector: str, window: int, window_start: float) -> str:
    """A stable id for the alert raised on ``window`` of ``detector``: the same window of the
    same events (a redelivery) gets the same id; window numbers restarting from scratch (a
    worker without its snapshot, another run) do not collide, as the event-time start differs.

    >>> alert_id("m1", "click_category", 7, 1.5e9) == alert_id("m1", "click_category", 7, 1.5e9)
    True
    >>> alert_id("m1", "click_category", 7, 1.5e9) == alert_id("m1", "click_category", 7, 1.6e9)
    False
    """
    key = f"{model_version}|{detector}|{window}|{window_start:.6f}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass
class MonitorStep:
    """What one call of :meth:`DriftMonitor.observe` produced."""

    results: list[DriftResult] = field(default_factory=list)
    alerts: list[RetrainingAlert] = field(default_factory=list)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts if math.isfinite(ts) else 0.0, tz=timezone.utc)


class DriftMonitor:
    """All configured detectors over the search, click and review streams.

    ``encode`` embeds texts (the worker's cached encoder; ``None`` disables the embedding
    detectors), ``category_of`` maps an item id to its top-level category (``None`` when
    unknown: the observation is skipped), ``model_version`` names the serving model (the
    reference until a model is published; :meth:`rebase` starts a new reference), ``inputs``
    the sources (topic:partition) whose events are merged in event-time order.
    ``encoder_version`` names what ``encode`` embeds with (its weights, ``+int8`` when
    quantised): a saved state whose embeddings came from another encoder restores all but the
    embedding detectors, whose references start again (windows of one encoder are never
    tested against another's reference).
    """

    def __init__(
        self,
        settings: DriftSettings,
        *,
        encode: Callable[[list[str]], np.ndarray] | None,
        category_of: Callable[[str], str | None],
        model_version: str,
        encoder_version: str | None = None,
        inputs: tuple[str, ...] = (),
        click_inputs: tuple[str, ...] = (),
        dedupe_capacity: int = 200_000,
    ) -> None:
        self.settings = settings
        self.encoder_version = encoder_version
        # the inputs (of ``inputs``) that carry clicks: a search's click-through is decided
        # once they have been received past its horizon (ReorderBuffer.progress)
        self.click_inputs = click_inputs
        self.encode = encode
        self.category_of = category_of
        self.model_version = model_version
        self.detectors: dict[str, Any] = {
            name: self._build(name)
            for name in settings.detectors
            if encode is not None or name not in TEXT_DETECTORS
        }
        self.latest: dict[str, DriftResult] = {}
        self.consecutive: dict[str, int] = defaultdict(int)
        self.last_alert_ts = -math.inf
        self.alerts: deque[RetrainingAlert] = deque(maxlen=20)
        self.samples: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=5))
        self.seen = BoundedSeen(dedupe_capacity)
        self.newest_ts = -math.inf  # event time of the newest observed event (lateness)
        self.reorder = ReorderBuffer(
            settings.max_lag_s, inputs=inputs, max_idle_s=settings.max_idle_s
        )
        self.counts: dict[str, int] = defaultdict(int)
        # search id -> [event time, interacted]: click-through is observed per search, once
        # ``ctr_horizon_s`` of event time has passed, so it does not depend on how the search
        # and click topics interleave (a 0 per search and a 1 per click did, under load)
        self.open_searches: OrderedDict[str, list[Any]] = OrderedDict()
        self.early_clicks: OrderedDict[str, None] = OrderedDict()

    def _build(self, name: DriftDetectorName) -> Any:
        s = self.settings
        common: dict[str, Any] = {
            "window_events": s.window_events,
            "window_s": s.window_s,
            "reference_size": s.reference_size,
        }
        if name in TEXT_DETECTORS:
            return EmbeddingMMD(
                name, calibration=s.calibration, alpha=s.alpha, device=s.device, **common
            )
        if name.endswith("_category"):
            return CategoryMixJS(name, calibration=s.calibration, alpha=s.alpha, **common)
        return RiverRate(
            name,
            method=s.rate_method,
            delta=s.rate_delta,
            clock=s.rate_clock,
            alpha=s.alpha,
            **common,
        )

    # -- observations -----------------------------------------------------------------------
    def _observations(
        self, events: Sequence[AnyEvent], resolve_all: bool = False
    ) -> dict[str, list[tuple[float, Any]]]:
        """Each detector's observations of ``events``; ``resolve_all``: also the click-through
        of every search still open (end of a finite stream)."""
        obs: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        texts: dict[str, list[tuple[float, str, str]]] = defaultdict(list)  # ts, text, event id
        # clicks received so far (released or still waiting): a search is resolved only once
        # the click inputs are past its horizon, however the topics were read
        clicks_received = self.reorder.progress(self.click_inputs)
        for ev in events:
            ts = ev.ts.timestamp()
            if isinstance(ev, SearchEvent):
                texts["query_embedding"].append((ts, ev.query, ev.event_id))
                if ev.impressions and (cat := self.category_of(ev.impressions[0])):
                    obs["search_category"].append((ts, cat))
                clicked = ev.search_id in self.early_clicks
                self.early_clicks.pop(ev.search_id, None)
                self.open_searches[ev.search_id] = [ts, clicked]
            elif isinstance(ev, ClickEvent):
                if cat := self.category_of(ev.item_id):
                    obs["click_category"].append((ts, cat))
                entry = self.open_searches.get(ev.search_id or "")
                if entry is not None:
                    entry[1] = True
                elif ev.search_id is None:
                    self.counts["clicks_without_search"] += 1
                else:  # its search is still to come, or was resolved already (a late click)
                    self.early_clicks[ev.search_id] = None
                    if len(self.early_clicks) > MAX_EARLY_CLICKS:
                        self.early_clicks.popitem(last=False)
                        self.counts["clicks_without_search"] += 1
            elif isinstance(ev, ReviewEvent):
                text = ". ".join(p for p in (ev.title, ev.text) if p.strip())
                if text:
                    texts["review_embedding"].append((ts, text, ev.event_id))
                if cat := self.category_of(ev.item_id):
                    obs["review_category"].append((ts, cat))
                obs["rating"].append((ts, (ev.rating - 1) / 4))
            obs["click_through"].extend(self._resolve_searches(min(ts, clicks_received)))
        if resolve_all:
            obs["click_through"].extend(self._resolve_searches(math.inf))
        wanted = [
            (n, self._sample(n, rows)) for n, rows in texts.items() if n in self.detectors and rows
        ]
        if wanted and self.encode is not None:
            flat = [t for _, rows in wanted for _, t, _ in rows]
            vectors = np.asarray(self.encode(flat), dtype=np.float32)
            i = 0
            for name, rows in wanted:
                obs[name] = [(ts, vectors[i + k]) for k, (ts, _, _) in enumerate(rows)]
                self.samples[name].extend(t for _, t, _ in rows[-5:])
                i += len(rows)
        return {n: rows for n, rows in obs.items() if n in self.detectors}

    def _sample(
        self, name: str, rows: list[tuple[float, str, str]]
    ) -> list[tuple[float, str, str]]:
        """At most ``embed_max_per_batch`` of a batch's ``rows`` (time, text, event id), in
        order: those whose event ids hash lowest, a uniform sample that a redelivery repeats.
        Embedding is the drift agent's whole cost, and a two-sample test needs a window of
        texts, not every text: at 1,000 events/s a 200-query window still closes every second.

        >>> m = DriftMonitor(DriftSettings(embed_max_per_batch=2), encode=None,
        ...     category_of=str, model_version="m1")
        >>> [r[2] for r in m._sample("q", [(1.0, "a", "e1"), (2.0, "b", "e2"), (3.0, "c", "e3")])]
        ['e1', 'e3']
        >>> m.counts["q_sampled_out"]
        1
        """
        cap = self.settings.embed_max_per_batch
        if cap is not None and len(rows) > cap:
            keys = [hashlib.blake2b(e.encode(), digest_size=8).digest() for _, _, e in rows]
            kept = sorted(sorted(range(len(rows)), key=keys.__getitem__)[:cap])
            self.counts[f"{name}_sampled_out"] += len(rows) - cap
            rows = [rows[i] for i in kept]
        self.counts[f"{name}_embedded"] += len(rows)
        return rows

    def _resolve_searches(self, now: float) -> list[tuple[float, float]]:
        """Click-through observations (search time, 1.0 if it was clicked) of the searches
        whose horizon has passed at event time ``now`` (all of them when ``now`` is inf)."""
        horizon = self.settings.ctr_horizon_s
        out = []
        while self.open_searches:
            ts, clicked = next(iter(self.open_searches.values()))
            if ts + horizon > now and len(self.open_searches) <= MAX_OPEN_SEARCHES:
                break
            self.open_searches.popitem(last=False)
            out.append((ts, 1.0 if clicked else 0.0))
        return out

    def observe(self, events: Sequence[AnyEvent], source: str = "events") -> MonitorStep:
        """Feed validated events read from ``source`` (a topic and partition: inputs are merged
        in event-time order, see :class:`ReorderBuffer`; duplicates by event id are dropped);
        returns the windows this closed and the alerts they raised."""
        return self.observe_many([(source, events)])

    def observe_many(self, batches: Sequence[tuple[str, Sequence[AnyEvent]]]) -> MonitorStep:
        """:meth:`observe` for a micro-batch of ``(source, events)``: what they release is
        observed at once (one ``encode`` call, one sample per detector)."""
        released: list[AnyEvent] = []
        for source, events in batches:
            released += self.reorder.add(source, [(ev.ts.timestamp(), ev) for ev in events])  # type: ignore[arg-type]
        return self._observe_ordered(released)

    def tick(self) -> MonitorStep:
        """Observe the events whose slower inputs have gone idle (wall clock; call from a
        timer, so a burst followed by silence is not held back)."""
        return self._observe_ordered(self.reorder.release())  # type: ignore[arg-type]

    def flush(self) -> MonitorStep:
        """Observe every event still waiting for slower inputs, and the click-through of every
        open search (end of a finite stream)."""
        return self._observe_ordered(self.reorder.flush(), resolve_all=True)  # type: ignore[arg-type]

    def _observe_ordered(
        self, events: Sequence[AnyEvent], resolve_all: bool = False
    ) -> MonitorStep:
        fresh = []
        for ev in events:
            if not self.seen.add(ev.event_id):
                self.counts["duplicate_events"] += 1
                continue
            ts = ev.ts.timestamp()
            if ts < self.newest_ts - self.settings.window_s:
                self.counts["late_events"] += 1  # still observed: drift does not need order
            self.newest_ts = max(self.newest_ts, ts)
            fresh.append(ev)
        step = MonitorStep()
        for name, rows in self._observations(fresh, resolve_all).items():
            step.results.extend(self.detectors[name].update(rows))
        step.results.sort(key=lambda r: (r.window_end, r.detector))
        for result in step.results:
            alert = self._decide(result)
            if alert is not None:
                step.alerts.append(alert)
        self.counts["events"] += len(fresh)
        self.counts["windows"] += len(step.results)
        self.counts["alerts"] += len(step.alerts)
        return step

    # -- alert policy -----------------------------------------------------------------------
    def _decide(self, result: DriftResult) -> RetrainingAlert | None:
        """An alert when ``result``'s detector has drifted in ``confirm_windows`` consecutive
        windows (one for River's sequential detectors), outside the cooldown."""
        name = result.detector
        self.latest[name] = result
        self.consecutive[name] = self.consecutive[name] + 1 if result.drifted else 0
        needed = 1 if self.detectors[name].sequential else self.settings.confirm_windows
        if self.consecutive[name] < needed:
            return None
        if result.window_end - self.last_alert_ts < self.settings.cooldown_s:
            return None
        self.last_alert_ts = result.window_end
        moved = sorted(
            (
                MovedCategory(detector=r.detector, **m)
                for r in self.latest.values()
                for m in r.details.get("moved", [])
            ),
            key=lambda m: -abs(m.after - m.before),
        )[:5]
        alert = RetrainingAlert(
            alert_id=alert_id(self.model_version, name, result.window, result.window_start),
            detector=name,
            reason=(
                f"{name}: {result.statistic:.4g} over threshold {result.threshold:.4g} in "
                f"{self.consecutive[name]} consecutive window(s)"
                if not self.detectors[name].sequential
                else f"{name}: {self.settings.rate_method} signalled a change "
                f"(now {result.details['estimate']:.3f}, reference "
                f"{result.details['reference_mean']:.3f})"
            ),
            model_version=self.model_version,
            window_start=_utc(result.window_start),
            window_end=_utc(result.window_end),
            evidence=[DriftReport(**r.as_dict()) for r in self.latest.values()],
            moved_categories=moved,
            samples=list(self.samples.get(name, []))
            or [s for d in TEXT_DETECTORS for s in self.samples.get(d, [])][:5],
        )
        self.alerts.append(alert)
        return alert

    # -- reference, state, status -------------------------------------------------------------
    def rebase(self, model_version: str) -> None:
        """Start new references (call after a model is published)."""
        self.model_version = model_version
        for detector in self.detectors.values():
            detector.rebase()
        self.latest.clear()
        self.consecutive.clear()

    def state_dict(self) -> dict[str, Any]:
        """The state protocol (:mod:`ecrec_stream.state`): detectors, alert policy, the
        event-time merge's waiting events, open searches and the dedupe window."""
        return {
            "model_version": self.model_version,
            "encoder_version": self.encoder_version,
            "detectors": {n: d.state_dict() for n, d in self.detectors.items()},
            "latest": {n: r.as_dict() for n, r in self.latest.items()},
            "consecutive": dict(self.consecutive),
            "last_alert_ts": self.last_alert_ts,
            "alerts": [a.model_dump(mode="json") for a in self.alerts],
            "samples": {n: list(s) for n, s in self.samples.items()},
            "seen": self.seen.state_dict(),
            "newest_ts": self.newest_ts,
            "counts": dict(self.counts),
            "reorder": self.reorder.state_dict(lambda ev: ev.model_dump_json()),  # type: ignore[attr-defined]
            "open_searches": [
                [sid, ts, clicked] for sid, (ts, clicked) in self.open_searches.items()
            ],
            "early_clicks": list(self.early_clicks),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model_version = state["model_version"]
        for name, det_state in state["detectors"].items():
            if name in self.detectors:
                self.detectors[name].load_state(det_state)
        self.latest = {n: DriftResult(**r) for n, r in state["latest"].items()}
        self.consecutive = defaultdict(int, state["consecutive"])
        self.last_alert_ts = float(state["last_alert_ts"])
        self.alerts = deque((RetrainingAlert.model_validate(a) for a in state["alerts"]), maxlen=20)
        self.samples = defaultdict(lambda: deque(maxlen=5))
        for name, texts in state["samples"].items():
            self.samples[name].extend(texts)
        self.seen.load_state(state["seen"])
        self.newest_ts = float(state["newest_ts"])
        self.counts = defaultdict(int, state["counts"])
        self.reorder.load_state(state["reorder"], EVENT_ADAPTER.validate_json)
        self.open_searches = OrderedDict(
            (sid, [float(ts), bool(clicked)]) for sid, ts, clicked in state["open_searches"]
        )
        self.early_clicks = OrderedDict.fromkeys(state["early_clicks"])
        saved_encoder = state.get("encoder_version")  # absent in states before it was kept
        if saved_encoder is not None and saved_encoder != self.encoder_version:
            for name in TEXT_DETECTORS & self.detectors.keys():
                self.detectors[name].rebase()
                self.latest.pop(name, None)
                self.consecutive.pop(name, None)
            self.counts["embedding_references_restarted"] += 1

    def reset_state(self) -> None:
        """As newly built with the same settings and model version."""
        self.rebase(self.model_version)
        self.last_alert_ts = -math.inf
        self.alerts.clear()
        self.samples.clear()
        self.seen.reset_state()
        self.newest_ts = -math.inf
        self.counts.clear()
        self.reorder.reset_state()
        self.open_searches.clear()
        self.early_clicks.clear()

    def status(self) -> dict[str, Any]:
        """Each detector's reference progress and latest statistic against its threshold, and
        the recent alerts (JSON-ready)."""
        detectors = {}
        for name, det in self.detectors.items():
            latest = self.latest.get(name)
            progress = len(det.reference) if isinstance(det, WindowedTwoSample) else det.ref_n
            detectors[name] = {
                "ready": det.ready,
                "reference": f"{min(progress, det.reference_size)}/{det.reference_size}",
                "windows": det.windows,
                "statistic": None if latest is None else latest.statistic,
                "threshold": None if latest is None else _finite(latest.threshold),
                "drifted": None if latest is None else latest.drifted,
                "consecutive": self.consecutive.get(name, 0),
                "sequential": det.sequential,
            }
        return {
            "model_version": self.model_version,
            "detectors": detectors,
            "alerts": [a.model_dump(mode="json") for a in self.alerts],
            "counts": dict(self.counts),
            # how far the monitor has got: events held for slower inputs (event-time merge)
            # and the event time of the newest observed event
            "waiting": len(self.reorder),
            "observed_until": _utc(self.newest_ts).isoformat() if self.counts["events"] else None,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
