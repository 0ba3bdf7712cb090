"""One state protocol for every stateful stage, checked the same way for each (River's
``check_estimator`` idea): a state saved to disk and loaded into a fresh stage gives the same
outputs as the stage that never stopped; the same seed gives the same outputs; an empty batch
is fine; ``reset_state`` is a fresh start; no state file holds a pickle."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecrec_stream.config import DriftSettings, LabelSettings, RecommendSettings
from ecrec_stream.contracts.events import ClickEvent, ReviewEvent, SearchEvent
from ecrec_stream.drift import CategoryMixJS, DriftMonitor, EmbeddingMMD, RiverRate
from ecrec_stream.drift.stage import DriftRecord, DriftStage
from ecrec_stream.labels.examples import RelevanceLabeler, SentimentLabeler, TrainingExample
from ecrec_stream.labels.sessions import BotRules, add_event, new_session
from ecrec_stream.labels.stages import LabelStep, ReviewLabelStage, SessionLabelStage
from ecrec_stream.recommend import Recommender
from ecrec_stream.state import StateError, Stateful, TakesState, load_state, save_state
from ecrec_stream.training import ReplayBuffer
from tests.helpers import HashEncoder, relevant_pair

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
WORDS = "oat milk organic whole wheat bread dark roast coffee beans green tea".split()
POSITIVE = ["love it", "great taste", "excellent quality", "works well, recommend"]
NEGATIVE = ["terrible", "broke after a day", "awful smell", "would not buy again"]


def _reviews(n: int, seed: int) -> list[ReviewEvent]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rating = rng.choice([1, 2, 3, 4, 5, 5])
        words = rng.sample(POSITIVE if rating > 3 else NEGATIVE, 2)
        text = f"{' and '.join(words)} {rng.choice(WORDS)} {i}"
        out.append(
            ReviewEvent(
                event_id=f"r{seed}-{i}",
                ts=T0 + timedelta(seconds=i),
                item_id=f"i{i % 7}",
                rating=rating,
                text=text,
            )
        )
    return out


def _sessions(n: int, seed: int) -> list[dict[str, Any]]:
    """Closed sessions as the session table holds them: a search with 10 impressions and
    clicks drawn with position bias."""
    rng = random.Random(seed)
    out = []
    for s in range(n):
        sid = f"s{seed}-{s}"
        state = new_session(sid, 0)
        query = " ".join(rng.sample(WORDS, 2))
        ts = T0 + timedelta(minutes=s)
        items = [f"item-{rng.randrange(40)}" for _ in range(10)]
        search = SearchEvent(
            event_id=f"{sid}-q",
            ts=ts,
            search_id=f"{sid}-q",
            session_id=sid,
            query=query,
            impressions=items,
        )
        add_event(state, search, max_clicks=100)
        for pos, item in enumerate(items):
            if rng.random() < 0.5 / (pos + 1):
                action = rng.choice(["click", "click", "add_to_cart", "purchase"])
                click = ClickEvent(
                    event_id=f"{sid}-c{pos}",
                    ts=ts + timedelta(seconds=5 + pos),
                    session_id=sid,
                    search_id=f"{sid}-q",
                    item_id=item,
                    position=pos,
                    action=action,  # type: ignore[arg-type]
                    dwell_ms=rng.choice([800, 15_000, 60_000]),
                )
                add_event(state, click, max_clicks=100)
        out.append(state)
    return out


def _examples_out(examples: list[TrainingExample]) -> list[tuple[Any, ...]]:
    return [(e.example_id, e.label, e.confidence, e.weight) for e in examples]


def _step_out(step: LabelStep) -> list[Any]:
    assert isinstance(step, LabelStep)
    return [_examples_out(step.examples), dict(step.counts), len(step.failed_candidates)]


LABELS = LabelSettings(
    augment_variants=0, seed_min=20, seed_refit_every=40, position_bias_min_pairs=5
)


def _review_stage() -> ReviewLabelStage:
    return ReviewLabelStage(SentimentLabeler(HashEncoder(dim=24), LABELS), dedupe_capacity=500)


def _session_stage(background_fit: bool = True) -> SessionLabelStage:
    settings = LABELS.model_copy(
        update={"position_bias_refit_every": 50, "position_bias_background_fit": background_fit}
    )
    labeler = RelevanceLabeler(None, settings)
    return SessionLabelStage(labeler, BotRules(), lambda item: f"{item} {WORDS[len(item) % 9]}")


def _monitor() -> DriftMonitor:
    settings = DriftSettings(window_events=100, reference_size=400, cooldown_s=0)
    return DriftMonitor(
        settings,
        encode=HashEncoder(dim=16).encode,
        category_of=lambda item: item.split("-")[0],
        model_version="m1",
    )


def _drift_events(n: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    events: list[Any] = []
    for i in range(n):
        cats = "abc" if i < n // 2 else "xy"
        item = f"{rng.choice(cats)}-{rng.randrange(20)}"
        ts = T0 + timedelta(seconds=seed * n + i)
        events.append(
            SearchEvent(
                event_id=f"d{seed}-s{i}",
                ts=ts,
                search_id=f"d{seed}-q{i}",
                session_id="u",
                query=rng.choice(WORDS),
                impressions=[item],
            )
        )
        if rng.random() < 0.3:
            events.append(
                ClickEvent(
                    event_id=f"d{seed}-c{i}",
                    ts=ts,
                    session_id="u",
                    search_id=f"d{seed}-q{i}",
                    item_id=item,
                )
            )
    return events


def _f(value: float) -> float | None:
    """NaN (an uncalibrated threshold) as None: NaN is never equal to itself."""
    return None if value != value else value


def _monitor_out(step: Any) -> list[Any]:
    return [
        [(r.detector, r.window, _f(r.statistic), _f(r.threshold), r.drifted) for r in step.results],
        [a.alert_id for a in step.alerts],
    ]


def _click_stream(n: int, seed: int) -> list[ClickEvent]:
    rng = random.Random(seed)
    actions = ["view", "view", "click", "add_to_cart", "remove_from_cart", "purchase"]
    return [
        ClickEvent(
            event_id=f"k{seed}-{i}",
            ts=T0 + timedelta(seconds=seed * n + i),
            session_id=f"u{rng.randrange(6)}",
            item_id=f"{rng.choice('abc')}-{rng.randrange(12)}",
            action=rng.choice(actions),  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


def _recommend_out(rec: Recommender, batch: list[ClickEvent]) -> list[Any]:
    step = rec.observe_many(batch)
    answers = [
        [(r.item_id, r.score, r.source) for r in rec.recommend([f"a-{i}"], 5, kind=kind)]
        for i in range(3)
        for kind in ("next", "similar", "bought_together")
    ]
    sessions = [rec.for_session(f"u{i}", 5) for i in range(6)]
    return [dict(step.counts), answers, [[r.item_id for r in s] if s else None for s in sessions]]


def _buffer_examples(n: int, seed: int) -> list[TrainingExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = f"item-{rng.randrange(50)}"
        query = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        ts = T0 + timedelta(seconds=seed * n + i)
        pair = relevant_pair(f"b{seed}-{i}", query, f"{item} title", item, [f"e{seed}-{i}"], ts)
        out.append(pair.model_copy(update={"label": rng.choice([0, 1])}))
    return out


def _buffer_out(buffer: ReplayBuffer, batch: list[TrainingExample]) -> list[Any]:
    added = buffer.add(batch)
    split = buffer.split(0.15, 0.15)
    return [added, [e.example_id for e in split.train], [e.example_id for e in split.older_eval]]


def _rate_stream(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [
        (seed * n + float(i), float(rng.random() < (0.5 if seed < 3 else 0.15))) for i in range(n)
    ]


def _vectors(n: int, seed: int) -> list[tuple[float, Any]]:
    rng = np.random.default_rng(seed)
    shift = 0.0 if seed < 3 else 1.5
    return [(seed * n + float(i), rng.normal(shift, 1, 8).astype(np.float32)) for i in range(n)]


def _categories(n: int, seed: int) -> list[tuple[float, Any]]:
    rng = random.Random(seed)
    return [(seed * n + float(i), rng.choice("abcd" if seed < 3 else "ab")) for i in range(n)]


def _detector_out(results: list[Any]) -> list[Any]:
    return [(r.window, _f(r.statistic), _f(r.threshold), r.drifted, r.n) for r in results]


@dataclass
class Case:
    """A stage, its input batches (6, deterministic), and its verb as comparable output."""

    name: str
    build: Callable[[], Any]
    batch: Callable[[int], Any]
    run: Callable[[Any, Any], Any]
    empty: Any


CASES = [
    Case(
        "review_label_stage",
        _review_stage,
        # batch 1 repeats batch 0's reviews: the dedupe window is part of the state
        lambda k: _reviews(60, k if k != 1 else 0),
        lambda stage, batch: _step_out(stage.label_many(batch)),
        [],
    ),
    Case(
        "session_label_stage",
        _session_stage,
        lambda k: _sessions(40, k),
        lambda stage, batch: _step_out(stage.label_many(batch)),
        [],
    ),
    Case(
        "drift_monitor",
        _monitor,
        lambda k: _drift_events(250, k),
        lambda m, batch: _monitor_out(m.observe(batch)),
        [],
    ),
    Case(
        "drift_stage",
        lambda: DriftStage(_monitor()),
        # each batch also redelivers the previous one: skipped by offset, also after a restart
        lambda k: [
            DriftRecord("t", 0, k - 1, _drift_events(250, k - 1)),
            DriftRecord("t", 0, k, _drift_events(250, k)),
        ],
        lambda stage, batch: [_monitor_out(step := stage.observe_many(batch)), dict(step.counts)],
        [],
    ),
    Case(
        "recommender",
        lambda: Recommender(
            RecommendSettings(neighbours=5, session_items=5),
            category_of=lambda item: item.split("-")[0],
            content=lambda anchors, k: [(f"cold-{a}", 0.5) for a in anchors][:k],
        ),
        lambda k: _click_stream(80, k),
        _recommend_out,
        [],
    ),
    Case(
        "replay_buffer",
        lambda: ReplayBuffer(60, 40, dedupe_capacity=200, seed=3),
        lambda k: _buffer_examples(50, k),
        _buffer_out,
        [],
    ),
    Case(
        "river_rate",
        lambda: RiverRate("ctr", window_events=100, reference_size=400, delta=0.01),
        lambda k: _rate_stream(170, k),
        lambda d, batch: _detector_out(d.update(batch)),
        [],
    ),
    Case(
        "embedding_mmd",
        lambda: EmbeddingMMD("emb", window_events=50, reference_size=200),
        lambda k: _vectors(90, k),
        lambda d, batch: _detector_out(d.update(batch)),
        [],
    ),
    Case(
        "category_mix",
        lambda: CategoryMixJS("cat", window_events=50, reference_size=200),
        lambda k: _categories(90, k),
        lambda d, batch: _detector_out(d.update(batch)),
        [],
    ),
]
IDS = [c.name for c in CASES]


def _run_all(case: Case, stage: Any, ks: range) -> list[Any]:
    return [case.run(stage, case.batch(k)) for k in ks]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_saved_and_loaded_state_gives_the_same_outputs(case: Case, tmp_path: Path) -> None:
    whole = case.build()
    expected = _run_all(case, whole, range(6))
    first = case.build()
    assert isinstance(first, Stateful)
    assert _run_all(case, first, range(3)) == expected[:3]
    path = tmp_path / f"{case.name}.state"
    if isinstance(first, TakesState):  # taken now, built after the stage went on
        taken = first.take_state()
        _run_all(case, first, range(3, 5))
        state = taken()
    else:
        state = first.state_dict()
    save_state(path, state, kind=case.name, version=1)
    assert b"\x80\x04" not in path.read_bytes()  # no pickle protocol header anywhere
    resumed = case.build()
    saved = load_state(path, kind=case.name, version=1)
    assert saved is not None
    resumed.load_state(saved)
    assert _run_all(case, resumed, range(3, 6)) == expected[3:]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_same_seed_gives_the_same_outputs_and_reset_starts_afresh(case: Case) -> None:
    expected = _run_all(case, case.build(), range(6))
    assert _run_all(case, case.build(), range(6)) == expected
    used = case.build()
    _run_all(case, used, range(4))
    used.reset_state()
    assert _run_all(case, used, range(6)) == expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_an_empty_batch_is_a_no_op(case: Case) -> None:
    stage = case.build()
    case.run(stage, case.empty)
    assert _run_all(case, stage, range(6)) == _run_all(case, case.build(), range(6))


def test_the_label_stages_learn_something_worth_resuming() -> None:
    """The state the round trip carries is real: a fitted label model, an estimated
    examination curve and a fitted seed classifier."""
    reviews, sessions = _review_stage(), _session_stage()
    for k in range(6):
        reviews.label_many(_reviews(60, k))
        sessions.label_many(_sessions(40, k))
    assert reviews.labeler.model.fits >= 1 and reviews.labeler.model.accuracies is not None
    assert reviews.labeler.seed_classifier is not None and reviews.labeler.seed_classifier.fitted
    assert sessions.labeler.position_bias.theta is not None
    assert sessions.labeler.model.fits >= 1


def test_a_position_refit_in_the_background_gives_the_labels_of_an_inline_one(
    tmp_path: Path,
) -> None:
    """The position model's refit runs on a thread of its own and is installed a fixed number
    of impressions later: the labels are those of the same refit run inline, also across a
    checkpoint taken while a refit is under way. Small batches (~40 impressions), so that
    point falls several batches after the refit starts."""
    batches = [b for k in range(8) for s in [_sessions(40, k)] for b in _chunks(s, 4)]
    inline, background = _session_stage(background_fit=False), _session_stage()
    pending_at = []
    expected, got = [], []
    for n, batch in enumerate(batches):
        expected.append(_step_out(inline.label_many(batch)) + _position_fit(inline))
        got.append(_step_out(background.label_many(batch)) + _position_fit(background))
        if background.labeler._refit is not None:
            pending_at.append(n)
            background.labeler.wait_for_refit()  # the fastest fit: done before the next batch
            assert background.labeler._refit.done()
    assert got == expected
    # refits were under way across several batches: not just installed at the next one
    assert len(pending_at) >= 10, pending_at
    assert background.labeler.position_bias.theta is not None
    # a checkpoint while a refit is under way: the restored stage installs it at the same point
    first, cut = _session_stage(), pending_at[len(pending_at) // 2]
    for batch in batches[: cut + 1]:
        first.label_many(batch)
    assert first.labeler._refit is not None
    save_state(tmp_path / "s.state", first.state_dict(), kind="s", version=1)
    resumed = _session_stage()
    saved = load_state(tmp_path / "s.state", kind="s", version=1)
    assert saved is not None
    resumed.load_state(saved)
    assert [
        _step_out(resumed.label_many(b)) + _position_fit(resumed) for b in batches[cut + 1 :]
    ] == expected[cut + 1 :]


def test_a_checkpoint_waiting_for_a_refit_that_a_reset_cancelled_goes_on() -> None:
    """A checkpoint waits for a running position refit (``wait_for_refit``); if a reset
    cancelled that refit before it started, the wait ends at once instead of raising."""
    from concurrent.futures import Future

    stage = _session_stage()
    cancelled: Future[Any] = Future()
    assert cancelled.cancel()
    stage.labeler._refit = cancelled  # what the checkpoint's wait saw before the reset
    stage.labeler.wait_for_refit()
    stage.reset_state()
    assert stage.labeler._refit is None


def _position_fit(stage: SessionLabelStage) -> list[Any]:
    """The fit a stage's labels use: its curve and how many pairs it holds."""
    model = stage.labeler.position_bias
    theta = None if model.theta is None else [round(float(t), 9) for t in model.theta]
    return [theta, len(model.attractiveness), model.pairs_at_several_positions]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_a_position_model_saved_with_a_row_per_pair_still_loads(tmp_path: Path) -> None:
    """States written before the pairs' attractiveness was saved as columns load the same."""
    sessions = _session_stage()
    for k in range(3):
        sessions.label_many(_sessions(40, k))
    model = sessions.labeler.position_bias
    assert model.attractiveness
    state = model.state_dict()
    columns = state["attractiveness"]
    rows = [
        [q, i, float(g), int(n)]
        for q, i, g, n in zip(
            columns["query"], columns["item"], columns["gamma"], columns["shown"], strict=True
        )
    ]
    save_state(tmp_path / "old.state", {**state, "attractiveness": rows}, kind="pbm", version=1)
    for saved in (state, load_state(tmp_path / "old.state", kind="pbm", version=1)):
        restored = _session_stage().labeler.position_bias
        assert saved is not None
        restored.load_state(saved)
        assert restored.attractiveness == model.attractiveness


def test_never_clicked_pairs_saved_a_row_per_pair_still_load(tmp_path: Path) -> None:
    """States written before the never-clicked tallies were saved as columns load the same,
    in the same order (the oldest pair is the first pushed out)."""
    from ecrec_stream.labels.aggregate import NeverClicked

    sessions = _session_stage()
    for k in range(3):
        sessions.label_many(_sessions(40, k))
    tally = sessions.labeler.never_clicked
    assert tally is not None and len(tally) > 0
    columns = tally.state_dict()["pairs"]
    rows = [
        [q, i, *map(float, t)]
        for q, i, t in zip(columns["query"], columns["item"], columns["tallies"], strict=True)
    ]
    save_state(tmp_path / "old.state", {"pairs": rows}, kind="nc", version=1)
    save_state(tmp_path / "new.state", tally.state_dict(), kind="nc", version=1)
    for name in ("old", "new"):
        saved = load_state(tmp_path / f"{name}.state", kind="nc", version=1)
        assert saved is not None
        restored = NeverClicked(tally.min_examined, tally.capacity)
        restored.load_state(saved)
        assert list(restored._pairs.items()) == list(tally._pairs.items())


def test_a_state_file_of_another_kind_or_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.state"
    save_state(path, {"a": np.arange(3)}, kind="one", version=1)
    with pytest.raises(StateError, match="expected 'two'"):
        load_state(path, kind="two", version=1)
    with pytest.raises(StateError, match="version"):
        load_state(path, kind="one", version=2)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(StateError):
        load_state(path, kind="one", version=1)
    with pytest.raises(StateError, match="not a state value"):
        save_state(path, {"a": object()}, kind="one", version=1)


def test_labels_from_other_functions_are_not_loaded() -> None:
    state = _review_stage().state_dict()
    other = ReviewLabelStage(SentimentLabeler(None, LABELS))  # no encoder: two functions only
    with pytest.raises(Exception, match="delete the state file"):
        other.load_state(state)


@pytest.mark.integration
def test_a_restarted_worker_resumes_its_label_models_and_dedupe_window(
    broker: Any, tmp_path: Path
) -> None:
    import json

    import httpx

    from streams.broker import free_port
    from streams.kafka import all_topics, ensure_topics, new_producer
    from tests.helpers import isolated_env, unique, wait_until
    from workers.processes import worker_process

    names, env = isolated_env(unique("resume"))
    ensure_topics(broker.bootstrap, all_topics(names), 2)
    env.update(
        {
            "ECREC_DRIFT__ENABLED": "false",
            "ECREC_LABELS__SNAPSHOT_INTERVAL_S": "0.5",
            "ECREC_LABELS__AUGMENT_VARIANTS": "0",
        }
    )
    reviews = _reviews(300, 7)

    def send(batch: list[ReviewEvent]) -> None:
        producer = new_producer(broker.bootstrap)
        for r in batch:
            producer.produce(
                names.reviews, key=r.item_id.encode(), value=r.model_dump_json().encode()
            )
        assert producer.flush(30) == 0

    port = free_port()
    url = f"http://127.0.0.1:{port}/ecrec/stats"

    def labels() -> dict[str, Any]:
        return dict(httpx.get(url, timeout=10).json()["labels"])

    def started() -> Any:
        proc = worker_process(broker.url, tmp_path, port, extra_env=env).start()
        proc.wait_http(url, timeout_s=180)
        wait_until(lambda: httpx.get(url, timeout=5).json()["assigned"] > 0, timeout_s=120)
        return proc

    proc = started()
    try:
        send(reviews)
        wait_until(lambda: labels().get("reviews_read", 0) == len(reviews), timeout_s=120)
        done = labels().get("checkpoints", 0)
        # a checkpoint after the last batch
        wait_until(lambda: labels().get("checkpoints", 0) > done, timeout_s=30)
        before = labels()
    finally:
        assert proc.stop() == 0
    assert before["sentiment_label_model"]["fits"] >= 1 and before["sentiment_lf_accuracy"]
    assert before["checkpoint_hold_max_s"] >= before["checkpoint_hold_s"] >= 0
    assert (tmp_path / "labels" / "labels.state").exists()

    proc = started()
    try:
        after = labels()
        assert after["restored_state"] == 1
        # the label model resumed: same fits and estimated accuracies before any new data
        assert after["sentiment_label_model"] == before["sentiment_label_model"]
        assert after["sentiment_lf_accuracy"] == before["sentiment_lf_accuracy"]
        # the dedupe window resumed: a review seen before the restart is a duplicate now
        marker = _reviews(1, 8)[0]
        send([reviews[0], marker])
        # only the marker is new: one example; every other review read is a duplicate (batches
        # the first run had not committed when it stopped come again: at-least-once)
        wait_until(lambda: labels().get("examples_sentiment", 0) == 1, timeout_s=60)
        now = labels()
        assert now["duplicate_events"] >= 1
        assert now["duplicate_events"] == now["reviews_read"] - 1
        assert json.dumps(labels()["sentiment_counts"])  # still served as JSON
    finally:
        assert proc.stop() == 0
