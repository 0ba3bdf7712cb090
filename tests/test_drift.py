"""Drift detectors and the monitor: no shift no alarm, a clear shift an alarm within a bound,
state round trips, time-structured calibration on churning streams, alert policy."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ecrec_stream.config import DriftSettings, load_settings
from ecrec_stream.contracts.events import ClickEvent, ReviewEvent, SearchEvent
from ecrec_stream.drift import (
    CategoryMixJS,
    DriftMonitor,
    EmbeddingMMD,
    RiverRate,
)
from ecrec_stream.drift.monitor import STATE_KIND, STATE_VERSION
from ecrec_stream.state import load_state, save_state
from tests.helpers import HashEncoder


def gaussian_stream(n: int, shift_at: int | None, seed: int, dim: int = 16) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mean = 0.8 if shift_at is not None and i >= shift_at else 0.0
        v = rng.normal(0, 1, dim).astype(np.float32)
        v[0] += mean * 3
        out.append((float(i), v))
    return out


def churning_categories(n: int, seed: int, memory: float) -> list[tuple[float, str]]:
    """A category mix that fluctuates around a stable one with memory (a mean-reverting walk
    on 12 categories' log-weights, correlation time ~``memory`` events): no shift, but not
    i.i.d. either, like real week-to-week churn."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, 12)
    wander = np.zeros(12)
    out = []
    for i in range(n):
        wander += -wander / memory + rng.normal(0, math.sqrt(2 / memory) * 0.5, 12)
        logits = base + wander
        p = np.exp(logits) / np.exp(logits).sum()
        out.append((float(i), f"cat{rng.choice(12, p=p)}"))
    return out


def test_mmd_no_shift_no_alarm_and_clear_shift_alarms_within_two_windows() -> None:
    quiet = EmbeddingMMD("emb", window_events=100, reference_size=600, device="cpu")
    results = quiet.update(gaussian_stream(3000, None, seed=1))
    assert results and not any(r.drifted for r in results)

    det = EmbeddingMMD("emb", window_events=100, reference_size=600, device="cpu")
    results = det.update(gaussian_stream(3000, 1500, seed=2))
    before = [r for r in results if r.window_end < 1500]
    after = [r for r in results if r.window_start >= 1500]
    assert not any(r.drifted for r in before)
    assert after[0].drifted and after[1].drifted  # the first two full windows after the shift
    assert after[0].statistic > 3 * after[0].threshold


def test_category_mix_reports_what_moved() -> None:
    det = CategoryMixJS("cats", window_events=100, reference_size=400)
    rng = random.Random(0)
    det.update([(float(i), rng.choice("abc")) for i in range(400)])
    (result,) = det.update([(400.0 + i, "z" if i % 2 else "a") for i in range(100)])
    assert result.drifted
    moved = {m["category"]: m for m in result.details["moved"]}
    assert moved["z"]["before"] == 0.0 and moved["z"]["after"] == 0.5


def test_windows_close_by_event_time_when_half_full() -> None:
    det = CategoryMixJS("cats", window_events=100, reference_size=400, window_s=60.0)
    det.update([(float(i), "a") for i in range(400)])
    assert det.update([(400.0 + i, "a") for i in range(40)]) == []  # 40 events, 39 s
    # 70 more over 70 s: the window spans > 60 s once it holds >= 50 events
    results = det.update([(440.0 + i, "a") for i in range(70)])
    assert len(results) == 1 and 50 <= results[0].n < 100
    assert results[0].window_end - results[0].window_start < 60.0


@pytest.mark.parametrize("make", ["mmd", "categories", "rate"])
def test_state_round_trip_gives_the_same_results(make: str) -> None:
    def build():
        if make == "mmd":
            return EmbeddingMMD("d", window_events=50, reference_size=200, device="cpu")
        if make == "categories":
            return CategoryMixJS("d", window_events=50, reference_size=200)
        return RiverRate("d", window_events=50, reference_size=200)

    rng = random.Random(3)
    if make == "mmd":
        stream = gaussian_stream(700, 450, seed=3)
    elif make == "categories":
        stream = [(float(i), rng.choice("abcd" if i < 450 else "ab")) for i in range(700)]
    else:
        stream = [(float(i), float(rng.random() < (0.5 if i < 450 else 0.1))) for i in range(700)]
    whole = build()
    expected = whole.update(stream)
    first = build()
    got = first.update(stream[:333])  # mid-window, after the reference
    resumed = build()
    resumed.load_state(first.state_dict())
    got += resumed.update(stream[333:])
    assert [(r.window, r.statistic, r.drifted) for r in got] == [
        (r.window, r.statistic, r.drifted) for r in expected
    ]
    assert any(r.drifted for r in expected)


def test_time_structured_calibration_holds_its_target_where_permutation_does_not() -> None:
    """On a churning (not i.i.d.) stream without a shift, the shuffled-reference threshold
    flags most windows; the holdout calibration flags few, and two consecutive flagged windows
    (what raises an alert by default) stay at the per-window target alpha = 0.01."""
    flagged, confirmed = {}, {}
    for method in ("holdout", "permutation"):
        drifted = pairs = total = 0
        for seed in range(4):
            det = CategoryMixJS(
                "cats", window_events=200, reference_size=2000, calibration=method, alpha=0.01
            )
            results = det.update(churning_categories(12_000, seed, memory=100))
            flags = [r.drifted for r in results]
            drifted += sum(flags)
            pairs += sum(a and b for a, b in itertools.pairwise(flags))
            total += len(results)
        flagged[method], confirmed[method] = drifted / total, pairs / total
    assert flagged["holdout"] <= 0.05 and confirmed["holdout"] <= 0.01
    assert flagged["permutation"] >= 0.3 and confirmed["permutation"] >= 0.1


def test_river_rate_quiet_then_catches_a_drop() -> None:
    rng = random.Random(5)
    det = RiverRate("ctr", window_events=200, reference_size=1000)
    quiet = det.update([(float(i), float(rng.random() < 0.3)) for i in range(20_000)])
    assert not any(r.drifted for r in quiet)
    after = det.update([(20_000.0 + i, float(rng.random() < 0.15)) for i in range(1000)])
    first = next(r for r in after if r.drifted)
    assert first.window_end - 20_000 < 600
    assert first.details["window_mean"] < first.details["reference_mean"]


# -- the monitor ------------------------------------------------------------------------------


def _ts(i: int) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + i, tz=timezone.utc)


def shop_events(n: int, shift_at: int, seed: int = 0) -> list:
    """Searches with a click on 40% of them; after ``shift_at`` traffic moves to other
    categories and reviews sour."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        cats = "abcdef" if i < shift_at else "xy"
        item = f"{rng.choice(cats)}-{rng.randrange(50)}"
        events.append(
            SearchEvent(
                event_id=f"s{i}",
                ts=_ts(i),
                search_id=f"q{i}",
                session_id=f"u{i}",
                query="q",
                impressions=[item],
            )
        )
        if rng.random() < 0.4:
            events.append(
                ClickEvent(
                    event_id=f"c{i}", ts=_ts(i), session_id=f"u{i}", search_id=f"q{i}", item_id=item
                )
            )
        if i % 2 == 0:
            good = i < shift_at
            rating = rng.choice([4, 5, 5]) if good else rng.choice([1, 2])
            events.append(
                ReviewEvent(event_id=f"r{i}", ts=_ts(i), item_id=item, rating=rating, text="t")
            )
    return events


def monitor(settings: DriftSettings) -> DriftMonitor:
    return DriftMonitor(
        settings, encode=None, category_of=lambda item: item.split("-")[0], model_version="m1"
    )


SMALL = DriftSettings(window_events=100, reference_size=400, cooldown_s=10_000)


def test_monitor_one_alert_after_the_shift_with_evidence_and_none_before() -> None:
    m = monitor(SMALL)
    alerts = []
    events = shop_events(4000, shift_at=2500)
    for i in range(0, len(events), 97):
        alerts += m.observe(events[i : i + 97]).alerts
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.window_end >= _ts(2500) and alert.window_end <= _ts(2500 + 500)
    assert alert.model_version == "m1"
    # everything changed at once: the quickest detector raises it, the others are evidence
    assert alert.detector in m.detectors
    assert alert.moved_categories and alert.moved_categories[0].before is not None
    assert any(e.drifted for e in alert.evidence)
    assert m.status()["detectors"]["search_category"]["drifted"] is True


STATE = {"kind": STATE_KIND, "version": STATE_VERSION}


def test_monitor_is_deterministic_and_survives_a_restart(tmp_path: Path) -> None:
    events = shop_events(4000, shift_at=2500)
    whole = monitor(SMALL)
    expected = [
        a.alert_id
        for i in range(0, len(events), 50)
        for a in whole.observe(events[i : i + 50]).alerts
    ]
    first = monitor(SMALL)
    got = [a.alert_id for i in range(0, 2600, 50) for a in first.observe(events[i : i + 50]).alerts]
    path = tmp_path / "drift.state"
    save_state(path, {"monitor": first.state_dict(), "offsets": {"t": {"0": 5}}}, **STATE)
    assert b"pickle" not in path.read_bytes()[:8] and path.read_bytes()[8:9] == b"{"
    resumed = monitor(SMALL)
    saved = load_state(path, **STATE)
    assert saved is not None and saved["offsets"] == {"t": {"0": 5}}
    resumed.load_state(saved["monitor"])
    assert resumed.state_dict().keys() == first.state_dict().keys()
    got += [
        a.alert_id
        for i in range(2600, len(events), 50)
        for a in resumed.observe(events[i : i + 50]).alerts
    ]
    assert got == expected and len(expected) == 1


def test_monitor_drops_redelivered_events_and_respects_cooldown() -> None:
    m = monitor(DriftSettings(window_events=100, reference_size=400, cooldown_s=0))
    events = shop_events(4000, shift_at=2500)
    m.observe(events[:1000])
    m.observe(events[:1000])  # redelivered: dropped by event id
    assert m.counts["duplicate_events"] == 1000
    alerts = []
    for i in range(1000, len(events), 100):
        alerts += m.observe(events[i : i + 100]).alerts
    assert len(alerts) > 1  # no cooldown: every confirmed window alerts
    assert len({a.alert_id for a in alerts}) == len(alerts)


def test_rebase_starts_a_new_reference() -> None:
    m = monitor(SMALL)
    m.observe(shop_events(1000, shift_at=10_000))
    assert m.detectors["search_category"].ready
    m.rebase("m2")
    assert not m.detectors["search_category"].ready and m.model_version == "m2"


def test_drift_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="four windows"):
        load_settings(drift={"window_events": 500, "reference_size": 1000})
    with pytest.raises(ValueError):
        load_settings(drift={"alpha": 0})
    assert math.isclose(load_settings(drift={"alpha": 0.05}).drift.alpha, 0.05)


def test_click_through_is_observed_per_search_after_its_horizon() -> None:
    """One observation per search, 1.0 when a click on it came within the horizon: the
    result does not depend on how clicks and searches interleave (a 0 per search and a 1 per
    click did), a click after the horizon does not count, and open searches survive a restart."""
    settings = DriftSettings(
        window_events=100, reference_size=400, ctr_horizon_s=10, detectors=["click_through"]
    )
    searches = [
        SearchEvent(event_id=f"s{i}", ts=_ts(i), search_id=f"q{i}", session_id="u", query="q")
        for i in range(40)
    ]
    clicks = [
        ClickEvent(event_id=f"c{i}", ts=_ts(i + 3), session_id="u", search_id=f"q{i}", item_id="a")
        for i in range(0, 40, 2)
    ] + [ClickEvent(event_id="late", ts=_ts(25), session_id="u", search_id="q1", item_id="a")]
    ordered = sorted(searches + clicks, key=lambda e: e.ts)
    m = monitor(settings)
    first = m._observations(ordered[:30])["click_through"]
    restarted = monitor(settings)
    restarted.load_state(m.state_dict())
    rest = restarted._observations(ordered[30:])["click_through"]
    observed = dict(first + rest)
    # resolved: the searches whose 10 s passed by the newest event time (41, q38's click)
    assert sorted(observed) == [1_700_000_000 + i for i in range(32)]
    assert all(v == (1.0 if (ts - 1_700_000_000) % 2 == 0 else 0.0) for ts, v in observed.items())
    assert list(restarted.early_clicks) == ["q1"]  # q1's click came after its horizon
    # a click delivered before its search (same timestamp) still counts for it
    tie = monitor(settings)._observations([clicks[0], searches[0], searches[39]])
    assert tie["click_through"] == [(1_700_000_000.0, 1.0)]
    # clicks arriving in a burst after later searches (within the horizon) count the same
    wide = settings.model_copy(update={"ctr_horizon_s": 25})
    regular = clicks[:-1]
    in_order = monitor(wide)._observations(sorted(searches + regular, key=lambda e: e.ts))
    burst = monitor(wide)._observations(searches[:20] + regular[:10] + searches[20:] + regular[10:])
    resolved = burst["click_through"]
    assert resolved == in_order["click_through"][: len(resolved)]
    assert len(resolved) == 17 and sum(v for _, v in resolved) == 9  # newest: 41 - 25


def _session_traffic(n: int, ctr: float, seed: int, start: int = 0) -> list:
    """Searches one second apart, each clicked with probability ``ctr`` 1-20 s later."""
    rng = random.Random(seed)
    events: list = []
    for i in range(start, start + n):
        sid = f"q{i}"
        events.append(
            SearchEvent(
                event_id=f"s{i}", ts=_ts(i), search_id=sid, session_id=f"u{i}", query="socks",
                impressions=["a-1"],
            )
        )  # fmt: skip
        if rng.random() < ctr:
            events.append(
                ClickEvent(
                    event_id=f"c{i}", ts=_ts(i + rng.randint(1, 20)), session_id=f"u{i}",
                    search_id=sid, item_id="a-1",
                )
            )  # fmt: skip
    return events


def _click_through_windows(results: list) -> list[tuple[int, float, float, bool]]:
    return [
        (r.n, round(r.statistic, 9), round(r.threshold, 9), r.drifted)
        for r in results
        if r.detector == "click_through"
    ]


def test_click_through_does_not_depend_on_how_the_topics_interleave() -> None:
    """The same searches and clicks, read (a) interleaved in event time and (b) every search
    first, then every click (a backlog of one topic drained before the other's): the same
    click-through windows with the same statistics."""
    events = _session_traffic(1500, ctr=0.3, seed=4)
    searches = [e for e in events if isinstance(e, SearchEvent)]
    clicks = sorted((e for e in events if isinstance(e, ClickEvent)), key=lambda e: e.ts)
    settings = DriftSettings(
        detectors=("click_through",), window_events=100, reference_size=400, max_idle_s=1e9
    )
    inputs = ("searches:0", "clicks:0")

    def run(order: list[tuple[str, list]]) -> list:
        m = DriftMonitor(
            settings, encode=None, category_of=str, model_version="m1",
            inputs=inputs, click_inputs=("clicks:0",),
        )  # fmt: skip
        results = []
        for source, batch in order:
            results += m.observe(batch, source).results
        return results + m.flush().results

    merged = sorted(
        [("searches:0", e) for e in searches] + [("clicks:0", e) for e in clicks],
        key=lambda pair: pair[1].ts,
    )
    interleaved = run([(source, [e]) for source, e in merged])
    backlog = run(
        [("searches:0", searches[i : i + 50]) for i in range(0, len(searches), 50)]
        + [("clicks:0", clicks[i : i + 50]) for i in range(0, len(clicks), 50)]
    )
    windows = _click_through_windows(interleaved)
    assert len(windows) >= 10 and all(n >= 50 for n, *_ in windows)
    assert _click_through_windows(backlog) == windows
    means = [r.details["window_mean"] for r in interleaved]
    assert min(means) > 0.1 and max(means) < 0.5  # no window of searches without their clicks


def test_a_stationary_click_stream_raises_no_alert_however_long() -> None:
    """20,000 searches at a steady 30% click-through: River's ADWIN signals now and then over
    so long a stream, but no window is tested below half its size and none alerts (the rate
    test spends the detectors' false-alarm budget); a drop to 15% alerts."""
    m = monitor(DriftSettings(detectors=("click_through",), window_events=200, reference_size=2000))
    alerts, windows = [], []
    events = _session_traffic(20_000, ctr=0.3, seed=11)
    for i in range(0, len(events), 500):
        step = m.observe(events[i : i + 500])
        alerts += step.alerts
        windows += step.results
    assert not alerts
    assert min(r.n for r in windows) >= 100
    assert sum(r.drifted for r in windows) <= 0.03 * len(windows)  # alpha 0.01 per window
    drop = _session_traffic(3000, ctr=0.15, seed=12, start=20_000)
    for i in range(0, len(drop), 500):
        alerts += m.observe(drop[i : i + 500]).alerts
    assert alerts and alerts[0].detector == "click_through"


def test_a_window_closed_early_is_tested_against_its_own_size() -> None:
    """Slow traffic: one observation a minute, so the hour a window may span closes it at half
    a window. The statistic of a smaller window is larger with no change at all; tested
    against a threshold for its own size, stationary windows stay within the budget."""
    stream = [(60.0 * t, v) for t, (_, v) in enumerate(gaussian_stream(8000, None, seed=9))]
    det = EmbeddingMMD("q", window_events=200, reference_size=2000, window_s=3600.0)
    results = det.update(stream)
    assert results and {r.n for r in results} == {100}
    assert all(r.threshold == det.threshold_for(100) > det.threshold for r in results)
    assert sum(r.drifted for r in results) <= 0.05 * len(results)


def test_embedding_detectors_sample_a_busy_batch_and_still_see_a_query_shift() -> None:
    """Under load the query detector embeds a uniform sample of each micro-batch (at most
    ``embed_max_per_batch`` texts), counted; its windows still fill and a vocabulary shift is
    still detected, with no alarm before it."""
    encoder = HashEncoder(dim=32)
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return encoder.encode(texts)

    settings = DriftSettings(
        detectors=("query_embedding",), window_events=100, reference_size=400,
        embed_max_per_batch=20,
    )  # fmt: skip
    m = DriftMonitor(settings, encode=encode, category_of=str, model_version="m1")
    rng = random.Random(0)
    before = ["fresh milk", "oat milk", "greek yogurt", "cheddar cheese", "butter", "eggs"]
    after = ["cordless drill", "hammer", "screwdriver set", "tape measure", "wrench", "saw"]
    events = [
        SearchEvent(event_id=f"s{i}", ts=_ts(i), search_id=f"q{i}", session_id=f"u{i}",
                    query=rng.choice(before if i < 6000 else after), impressions=[])
        for i in range(9000)
    ]  # fmt: skip
    alerts = []
    for i in range(0, len(events), 100):
        alerts += [(i, a) for a in m.observe(events[i : i + 100]).alerts]
    assert max(calls) == 20 and m.counts["query_embedding_sampled_out"] == 90 * 80
    assert m.detectors["query_embedding"].windows > 0
    assert alerts and all(i >= 6000 for i, _ in alerts)
    assert alerts[0][0] < 6000 + 1000  # within ten batches of the shift


def test_a_state_embedded_by_another_encoder_restarts_only_the_embedding_references() -> None:
    """A worker restarted with another encoder (``+int8``, another model) keeps its category
    and rate detectors, but its embedding references fill again from its own vectors."""

    def encode(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32)

    def built(encoder_version: str) -> DriftMonitor:
        return DriftMonitor(
            SMALL,
            encode=encode,
            category_of=lambda item: item.split("-")[0],
            model_version="m1",
            encoder_version=encoder_version,
        )

    first = built("v1")
    events = shop_events(1000, shift_at=10_000)
    for i in range(0, len(events), 20):  # under embed_max_per_batch texts a step
        first.observe(events[i : i + 20])
    assert first.detectors["search_category"].ready and first.detectors["query_embedding"].ready
    same, other = built("v1"), built("v1+int8")
    same.load_state(first.state_dict())
    other.load_state(first.state_dict())
    assert same.detectors["query_embedding"].ready
    assert other.detectors["search_category"].ready
    assert not other.detectors["query_embedding"].ready
    assert other.counts["embedding_references_restarted"] == 1
    assert other.state_dict()["encoder_version"] == "v1+int8"
