"""Label functions, the label model and the labelers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from ecrec_stream.augment import TypoAugmenter
from ecrec_stream.config import LabelSettings
from ecrec_stream.labels.base import ABSTAIN, RelevanceCandidate, SentimentCandidate
from ecrec_stream.labels.examples import (
    RelevanceLabeler,
    SentimentLabeler,
    example_id,
    vote_matrix,
)
from ecrec_stream.labels.model import LabelModel, OnlineLabelModel
from ecrec_stream.labels.relevance import (
    ClickRelevance,
    ContentRelevance,
    DwellRelevance,
    ExposureRelevance,
    behaviour_grade,
)
from ecrec_stream.labels.sentiment import (
    LexiconSentiment,
    PrototypeSentiment,
    SeedClassifierSentiment,
)
from tests.helpers import HashEncoder


def _cand(
    pos: int,
    action: str = "none",
    skipped: bool = False,
    dwell: int | None = None,
    title: str | None = None,
    query: str = "trail running shoes",
) -> RelevanceCandidate:
    return RelevanceCandidate(
        "s1",
        "u1",
        query,
        f"i{pos}",
        pos,
        item_title=title,
        action=action,
        dwell_ms=dwell,  # type: ignore[arg-type]
        skipped_above_click=skipped,
    )


def test_behaviour_votes_and_grades() -> None:
    cands = [
        _cand(0, skipped=True),
        _cand(1, "click", dwell=1_000),
        _cand(2, "click", dwell=40_000),
        _cand(3, "purchase"),
        _cand(4),
        _cand(9),
    ]
    assert [v.label for v in ClickRelevance().vote_many(cands)] == [
        0,
        1,
        1,
        1,
        ABSTAIN,
        ABSTAIN,
    ]
    # a bounce (1 s) is a negative, a long stay (40 s) a positive
    assert [v.label for v in DwellRelevance(5_000, 30_000).vote_many(cands)] == [
        ABSTAIN,
        0,
        1,
        ABSTAIN,
        ABSTAIN,
        ABSTAIN,
    ]
    # weak negative only within 3 positions of the deepest click (3): position 4 yes, 9 no
    assert [v.label for v in ExposureRelevance(depth=3).vote_many(cands)] == [
        ABSTAIN,
        ABSTAIN,
        ABSTAIN,
        ABSTAIN,
        0,
        ABSTAIN,
    ]
    assert [behaviour_grade(c) for c in cands] == [0, 1, 1, 3, None, None]


def test_content_relevance_with_minilm(minilm: Any) -> None:
    lf = ContentRelevance(minilm)
    votes = lf.vote_many(
        [
            _cand(0, title="Trail running shoes, waterproof, men"),
            _cand(1, title="Stainless steel saucepan 2 qt"),
            _cand(2),
        ]
    )
    assert [v.label for v in votes] == [1, 0, ABSTAIN]


def test_lexicon_handles_negation() -> None:
    lf = LexiconSentiment()
    texts = ["I love it", "I do not love it", "not bad at all, great", "meh"]
    assert [v.label for v in lf.vote_many([SentimentCandidate("e", "i", t) for t in texts])] == [
        1,
        0,
        1,
        ABSTAIN,
    ]


def test_prototype_and_seed_classifier_with_minilm(minilm: Any) -> None:
    proto = PrototypeSentiment(minilm)
    cands = [
        SentimentCandidate("a", "i", "Absolutely love this dress, beautiful and comfy"),
        SentimentCandidate("b", "i", "Cheap fabric, fell apart, sending it back"),
    ]
    assert [v.label for v in proto.vote_many(cands)] == [1, 0]
    clf = SeedClassifierSentiment(minilm, abstain_band=0.01)  # 6 seeds: weak but right
    assert [v.label for v in clf.vote_many(cands)] == [ABSTAIN, ABSTAIN]  # not fitted yet
    clf.fit(
        [
            "great, love it",
            "perfect fit, so soft",
            "wonderful quality",
            "terrible, returned it",
            "poor quality, ripped",
            "awful fit, disappointed",
        ],
        [1, 1, 1, 0, 0, 0],
    )
    assert [v.label for v in clf.vote_many(cands)] == [1, 0]


@pytest.mark.parametrize("prior", [0.5, 0.85])
def test_label_model_recovers_known_accuracies(prior: float) -> None:
    rng = np.random.default_rng(7)
    n = 6000
    y = (rng.random(n) < prior).astype(int)
    true_acc = [0.92, 0.8, 0.7, 0.62]
    cols = []
    for acc in true_acc:
        votes = np.where(rng.random(n) < acc, y, 1 - y)
        cols.append(np.where(rng.random(n) < 0.25, ABSTAIN, votes))
    L = np.stack(cols, axis=1)
    model = LabelModel().fit(L)
    np.testing.assert_allclose(model.accuracies, true_acc, atol=0.04)
    assert abs(model.fitted.priors[1] - prior) < 0.04  # type: ignore[union-attr]
    pred = model.predict_proba(L).argmax(axis=1)
    majority = (np.where(L == ABSTAIN, 0, 2 * L - 1).sum(axis=1) > 0).astype(int)
    assert (pred == y).mean() >= (majority == y).mean()  # no worse than majority vote


def test_label_model_rejects_bad_votes() -> None:
    with pytest.raises(ValueError):
        LabelModel().fit(np.array([[0, 2]]))
    with pytest.raises(RuntimeError):
        LabelModel().predict_proba(np.array([[0, 1]]))


def test_online_label_model_is_bounded_and_warms_up() -> None:
    online = OnlineLabelModel(2, capacity=50, min_rows=20)
    p = online.label_many(np.array([[1, 1], [0, -1]]))
    assert p.shape == (2, 2) and not online.warm and online.accuracies is None
    for _ in range(30):
        online.label_many(np.array([[1, 1], [0, 0], [1, -1]]))
    assert online.warm and len(online.sample) == 50 and online.accuracies is not None


def test_online_label_model_refits_on_schedule_and_a_warm_start_finds_the_same_fit() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 6000)

    def lf(acc: float) -> np.ndarray:
        v = np.where(rng.random(len(y)) < acc, y, 1 - y)
        return np.where(rng.random(len(y)) < 0.3, ABSTAIN, v)

    votes = np.stack([lf(0.9), lf(0.75), lf(0.65)], axis=1)
    online = OnlineLabelModel(3, capacity=20_000, min_rows=200, refit_every=1000)
    for start in range(0, len(votes), 100):
        online.label_many(votes[start : start + 100])
    # first fit at 200 rows, then after 1,000 new rows (1,200), then once half the sample is
    # new: 2,400 and 4,800
    assert online.fits == 4
    cold = LabelModel().fit(votes)
    warm = LabelModel().fit(votes, init=online.model.fitted)
    assert np.allclose(warm.accuracies, cold.accuracies, atol=1e-3)
    assert warm.fitted is not None and cold.fitted is not None
    assert warm.fitted.iterations <= cold.fitted.iterations
    with pytest.raises(ValueError):
        OnlineLabelModel(3, refit_every=0)


def test_once_the_sample_is_full_a_refit_waits_for_half_of_it_to_be_new() -> None:
    """Past its capacity the reservoir takes ever fewer of the rows seen: refits wait for half
    of the *sample* to be new, so they come geometrically further apart (by e ** 0.5 in rows
    seen), not every half-capacity of rows seen, which would refit on nearly the same rows."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40_000)
    votes = np.stack(
        [np.where(rng.random(len(y)) < acc, y, 1 - y) for acc in (0.9, 0.75, 0.65)], axis=1
    )
    online = OnlineLabelModel(3, capacity=2_000, min_rows=200, refit_every=500)
    fitted_at = []
    for start in range(0, len(votes), 100):
        online.label_many(votes[start : start + 100])
        if online.fits > len(fitted_at):
            fitted_at.append(online.sample.seen)
    # 200, 1,200 (1,000 new), 2,200 (the sample full at 2,000), then x1.65 in rows seen
    # 200, then 500 new rows, then half the sample new: while the sample fills, every row
    # seen is new (700, 1,400, 2,500); once it is full, x1.65 in rows seen each time
    assert fitted_at[:4] == [200, 700, 1_400, 2_500], fitted_at
    ratios = [b / a for a, b in itertools.pairwise(fitted_at[3:])]
    assert len(fitted_at) == 9 and all(1.55 < r < 1.75 for r in ratios), fitted_at
    assert online.accuracies is not None
    assert np.allclose(online.accuracies, [0.9, 0.75, 0.65], atol=0.05)
    # a state saved before ``entered`` was kept: counted in rows seen, as it was then
    state = online.state_dict()
    del state["fitted_entered"], state["sample"]["entered"]
    state["fitted_at"] = fitted_at[-1]  # what those states held: rows seen at the last fit
    restored = OnlineLabelModel(3, capacity=2_000, min_rows=200, refit_every=500)
    restored.load_state(state)
    assert restored.sample.entered == restored.sample.seen == 40_000
    assert restored._fitted_entered == fitted_at[-1]


def test_example_ids_are_deterministic() -> None:
    a = example_id("relevance", ["s", "c"], "i", ["clicks", "content"])
    assert a == example_id("relevance", ["c", "s"], "i", ["content", "clicks"])
    assert a != example_id("relevance", ["c", "s"], "i", ["clicks", "content"], "typo")
    assert a != example_id("relevance", ["c", "s"], "j", ["clicks", "content"])


def test_relevance_labeler_grades_a_session() -> None:
    settings = LabelSettings(augment_variants=0)
    labeler = RelevanceLabeler(HashEncoder(), settings)
    cands = [
        _cand(0, skipped=True, title="steel saucepan"),
        _cand(1, skipped=True, title="baby shampoo"),
        _cand(2, "purchase", dwell=30_000, title="trail running shoes waterproof"),
        _cand(3, title="garden hose"),
    ]
    examples = {e.item_id: e for e in labeler.label_many(cands)}
    assert examples["i2"].label == 1 and examples["i2"].grade == 3
    assert examples["i0"].label == 0 and examples["i0"].grade == 0
    assert examples["i1"].label == 0
    assert examples["i2"].weight > examples["i2"].confidence  # position-bias correction
    assert examples["i2"].votes["clicks"] == 1
    assert examples["i2"].source_event_ids == ["s1"]
    again = {e.example_id for e in labeler.label_many(cands)}
    assert again == {e.example_id for e in examples.values()}


def test_a_query_gets_the_same_variants_in_every_example_and_each_is_embedded_once() -> None:
    """Relevance variants are drawn per query, not per example: examples of one query share
    them, so the meaning filter embeds each distinct variant once."""
    encoder = HashEncoder()
    encoded: list[str] = []
    inner = encoder.encode
    encoder.encode = lambda texts: (encoded.extend(texts), inner(texts))[1]  # type: ignore[method-assign]
    from ecrec_stream.augment import EdaAugmenter, MeaningFilter, TypoAugmenter

    augmenters = [EdaAugmenter(), TypoAugmenter()]
    filter_all = MeaningFilter(encoder, min_similarity=-1.0)
    labeler = RelevanceLabeler(encoder, LabelSettings(), augmenters, filter_all)
    cands = [_cand(0, skipped=True), _cand(1, "purchase", dwell=30_000), _cand(2, "click")]
    cands.append(_cand(3, "purchase", dwell=30_000, query="oat milk"))
    examples = labeler.label_many(cands)
    variants = [e for e in examples if e.augmented_from]
    by_query: dict[str, set[str]] = {}
    parents = {e.example_id: e for e in examples}
    for v in variants:
        by_query.setdefault(parents[v.augmented_from].text, set()).add(v.text)
    trail = [v for v in variants if parents[v.augmented_from].text == "trail running shoes"]
    trail_parents = {v.augmented_from for v in trail}
    assert len(trail_parents) >= 2  # several examples of the query were augmented
    assert len(trail) == 2 * len(trail_parents) and len(by_query["trail running shoes"]) == 2
    assert len(by_query["oat milk"]) == 2
    assert len({v.example_id for v in variants}) == len(variants)  # one id per example
    for text in by_query["trail running shoes"]:
        assert encoded.count(text) == 1


def test_sentiment_labeler_pseudonymises_and_augments() -> None:
    from ecrec_stream.augment import EdaAugmenter, MeaningFilter, TypoAugmenter

    settings = LabelSettings(min_similarity=0.0)
    enc = HashEncoder()
    labeler = SentimentLabeler(
        enc, settings, [EdaAugmenter(), TypoAugmenter()], MeaningFilter(enc, min_similarity=0.0)
    )
    cands = [
        SentimentCandidate(
            "r1", "i1", "Love this sweater, great quality and so soft", 5, user_id="alice"
        ),
        SentimentCandidate("r2", "i1", "Terrible, cheap fabric, returning it", 1),
    ]
    out = labeler.label_many(cands)
    originals = [e for e in out if e.augmented_from is None]
    assert [e.label for e in originals] == [1, 0]
    assert originals[0].user_key and originals[0].user_key != "alice"
    augmented = [e for e in out if e.augmented_from is not None]
    assert augmented and all(
        a.augmented_from in {o.example_id for o in originals} for a in augmented
    )
    assert {e.example_id for e in labeler.label_many(cands)} == {e.example_id for e in out}
    # without augmentation: the same originals, no variants
    plain = labeler.label_many(cands, augment=False)
    assert [e.example_id for e in plain] == [e.example_id for e in originals]


def test_a_review_whose_stars_speak_is_labelled_by_its_stars() -> None:
    """The stars are clamped: text functions that agree with each other do not outvote them,
    and a 3-star review is labelled from its text."""
    labeler = SentimentLabeler(HashEncoder(), LabelSettings(augment_variants=0))
    cands = [
        SentimentCandidate(f"p{i}", "i", f"Love it, so soft and pretty, number {i}", 5)
        for i in range(300)
    ] + [
        SentimentCandidate(f"n{i}", "i", f"Awful, cheap and itchy, returned it, number {i}", 1)
        for i in range(100)
    ]
    contradicting = [  # loved in words, one star (a late delivery, a wrong size sent)
        SentimentCandidate(f"c{i}", "i", f"Love it, so soft and pretty, pair {i}", 1)
        for i in range(30)
    ]
    three = [SentimentCandidate("t", "i", "Awful, cheap and itchy, returned it", 3)]
    for i in range(0, len(cands), 50):
        labeler.label_many(cands[i : i + 50])
    examples = labeler.label_many(contradicting + three)
    rated, unrated = examples[:-1], examples[-1]
    assert all(e.votes["lexicon"] == 1 for e in rated)  # the words disagree with the stars
    assert [e.label for e in rated] == [0] * len(contradicting)
    assert all(e.confidence == 1.0 for e in rated)
    assert unrated.votes["rating"] == ABSTAIN and unrated.label == 0


def test_trailing_augmentation_makes_the_inline_variants_and_sheds_what_waits_too_long() -> None:
    from ecrec_stream.augment import EdaAugmenter, MeaningFilter, TypoAugmenter
    from ecrec_stream.labels.stages import TrailingAugmentation

    enc = HashEncoder()
    labeler = SentimentLabeler(
        enc,
        LabelSettings(),
        [EdaAugmenter(), TypoAugmenter()],
        MeaningFilter(enc, min_similarity=0.0),
    )
    cands = [
        SentimentCandidate(f"r{i}", "i1", f"Love this sweater number {i}, great and soft", 5)
        for i in range(5)
    ] + [SentimentCandidate("r9", "i1", "Love it, great", 1)]  # stars and words disagree
    inline = labeler.label_many(cands)
    originals = labeler.label_many(cands, augment=False)
    trailing = TrailingAugmentation(labeler, max_wait_s=10, capacity=4, chunk=3)
    trailing.offer(originals, ("p0", "k0"), now=0.0)
    assert trailing.waiting == 4  # 5 augmentable, the oldest pushed out by the capacity
    assert labeler.counts["augment_shed"] == 1
    variants = []
    while (chunk := trailing.next_chunk(now=1.0)) is not None:
        assert chunk.route == ("p0", "k0") and len(chunk.examples) <= 3
        variants += trailing.augment_many(chunk).variants
    made_inline = {e.example_id for e in inline if e.augmented_from is not None}
    shed_parent = originals[0].example_id
    assert {v.example_id for v in variants} == {
        e.example_id for e in inline if e.augmented_from not in (None, shed_parent)
    }
    assert made_inline  # inline and trailing make the same variants, ids and all
    trailing.offer(originals[:2], ("p1", "k1"), now=5.0)
    assert trailing.next_chunk(now=15.1) is None  # waited longer than max_wait_s
    assert labeler.counts["augment_shed"] == 3 and trailing.waiting == 0


def _planted(n: int, rng: np.random.Generator, pos_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Votes shaped like relevance traffic: a good two-sided function, a one-sided one that only
    votes 0 (exposure), one that votes 1 on almost everything (content on the serving model's
    own results), and heavy abstention."""
    y = (rng.random(n) < pos_rate).astype(int)
    good = np.where(rng.random(n) < 0.85, y, 1 - y)
    good = np.where(rng.random(n) < 0.4, ABSTAIN, good)
    only_zero = np.where((y == 0) & (rng.random(n) < 0.5) | (rng.random(n) < 0.1), 0, ABSTAIN)
    yes_man = np.where(rng.random(n) < 0.9, 1, ABSTAIN)
    return np.stack([good, only_zero, yes_man], axis=1), y


@pytest.mark.parametrize("pos_rate", [0.15, 0.6, 0.9])
def test_label_model_does_not_collapse_on_one_sided_functions(pos_rate: float) -> None:
    rng = np.random.default_rng(7)
    votes, y = _planted(6_000, rng, pos_rate)
    model = LabelModel().fit(votes)
    labels = model.predict_proba(votes).argmax(axis=1)
    voted = votes[:, 0] != ABSTAIN
    # neither class swallows the other, and where the good function votes the labels follow it
    assert 0.02 < labels.mean() < 0.98
    assert (labels[voted] == y[voted]).mean() >= 0.8
    # Either the fit stands and the always-"relevant" function carries (almost) no evidence,
    # or (one informative function only: unidentifiable) it was caught and fell back.
    fit = model.fitted
    assert fit is not None
    if fit.fallback is None:
        assert abs(fit.confusion[2, 1, 1] - fit.confusion[2, 0, 1]) < 0.2
    else:
        assert "class 0" in fit.fallback or "no function" in fit.fallback


def test_label_model_falls_back_when_no_function_depends_on_the_class() -> None:
    votes = np.array([[1, 0]] * 300 + [[1, ABSTAIN]] * 300)  # yes-man and no-man only
    model = LabelModel().fit(votes)
    assert model.fitted is not None and model.fitted.fallback is not None


def test_anchors_fix_the_class_semantics() -> None:
    rng = np.random.default_rng(3)
    votes, y = _planted(3_000, rng, 0.5)
    anchors = np.where((y == 1) & (rng.random(3_000) < 0.2), 1, ABSTAIN)
    proba = LabelModel().fit(votes, anchors).predict_proba(votes, anchors)
    assert (proba[anchors == 1, 1] == 1.0).all()


def test_a_purchase_is_never_labelled_not_relevant() -> None:
    labeler = RelevanceLabeler(None, LabelSettings(augment_variants=0, content="off"))
    # Many sessions where purchases sit among skipped items and exposure-only impressions,
    # the shape that made plain Dawid-Skene label everything 0 at confidence 0.99999.
    cands = []
    for s in range(300):
        for pos in range(6):
            action = "purchase" if pos == 3 else "none"
            cands.append(
                RelevanceCandidate(
                    f"s{s}",
                    f"u{s}",
                    "q",
                    f"i{s}-{pos}",
                    pos,
                    action=action,  # type: ignore[arg-type]
                    dwell_ms=60_000 if action != "none" else None,
                    skipped_above_click=pos < 3,
                )
            )
    examples = [e for i in range(0, len(cands), 60) for e in labeler.label_many(cands[i : i + 60])]
    bought = [e for e in examples if e.grade == 3]
    assert len(bought) == 300 and all(e.label == 1 for e in bought)


def test_an_impression_with_only_a_content_vote_yields_no_example() -> None:
    labeler = RelevanceLabeler(None, LabelSettings(augment_variants=0))  # lexical content
    cands = [
        _cand(5, title="trail running shoes"),  # lexical says relevant; nobody clicked
        _cand(0, "click", dwell=40_000, title="trail running shoes, blue"),
    ]
    votes = dict(zip(labeler.names, vote_matrix(labeler.functions, cands)[0], strict=True))
    assert votes["lexical"] == 1 and votes["clicks"] == ABSTAIN
    examples = labeler.label_many(cands)
    assert [e.item_id for e in examples] == ["i0"]
    assert labeler.counts["no_evidence"] == 1 and labeler.counts["all_abstained"] == 0


def test_a_skip_contradicted_by_the_content_function_yields_no_example() -> None:
    labeler = RelevanceLabeler(None, LabelSettings(augment_variants=0))  # lexical content
    cands = [
        _cand(0, skipped=True, title="trail running shoes"),  # skipped, but the title matches
        _cand(1, skipped=True, title="garden hose"),  # skipped, and nothing matches
        _cand(2, "click", dwell=40_000, title="trail running shoes, blue"),
    ]
    examples = labeler.label_many(cands)
    assert sorted(e.item_id for e in examples) == ["i1", "i2"]
    assert labeler.counts["conflicting_skip"] == 1 and labeler.counts["no_evidence"] == 0
    # with the content function off, the skip is the evidence and gives an example
    plain = RelevanceLabeler(None, LabelSettings(augment_variants=0, content="off"))
    assert sorted(e.item_id for e in plain.label_many(cands)) == ["i0", "i1", "i2"]


def test_the_label_model_is_checked_against_majority_vote_on_held_out_anchors() -> None:
    """Rated reviews are the stream's own truth: every fifth is held out of a trial fit with
    its rating masked, and the decision with the best macro-F1 there labels: the fit's
    posterior, its class-balanced decision or majority vote."""
    from ecrec_stream.labels.model import OnlineLabelModel, macro_f1, majority_labels

    def stream(positive: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        n = 4000
        y = (rng.random(n) < positive).astype(np.int64)

        def lf(right: float, coverage: float, positive_bias: float = 0.0) -> np.ndarray:
            vote = np.where(rng.random(n) < right, y, 1 - y)
            vote = np.where(rng.random(n) < positive_bias, 1, vote)  # "positive" regardless
            return np.where(rng.random(n) < coverage, vote, ABSTAIN)

        rating = np.where(rng.random(n) < 0.3, y, ABSTAIN)  # 30% of reviews rated
        votes = np.stack([rating, lf(0.9, 0.8), lf(0.6, 0.9, 0.8), lf(0.6, 0.9, 0.8)], axis=1)
        return y, votes

    def run(y: np.ndarray, votes: np.ndarray, **options: Any) -> tuple[Any, float, float]:
        model = OnlineLabelModel(4, capacity=len(y), min_rows=1, reference=0, **options)
        proba = model.label_many(votes)  # the rating votes; the check holds some of them out
        unrated = votes[:, 0] == ABSTAIN
        ours = macro_f1(y[unrated], proba[unrated].argmax(axis=1))
        return model, ours, macro_f1(y[unrated], majority_labels(votes[unrated]))

    # 93% positive, two functions that say "positive" to nearly everything: the posterior
    # sides with the common class; the check picks what holds up on the held-out rated rows
    skewed, ours, majority = run(*stream(0.93, seed=3))
    assert skewed.decision != "posterior" and skewed.last_check is not None
    assert skewed.last_check[skewed.decision] >= skewed.last_check["majority"]
    assert ours >= majority - 0.01
    # even classes: the fit trusts the accurate function over the two noisy ones and labels
    even, ours, majority = run(*stream(0.5, seed=4))
    assert even.decision != "majority" and even.last_fallback is None
    assert ours > majority


def test_a_pair_shown_in_many_sessions_and_never_clicked_is_one_negative() -> None:
    """Across sessions: "wool socks" shows the same junk item first every time and nobody
    clicks it, while another item is clicked: after three expected examinations the junk item
    is one negative example, the same example id however the sessions were batched (so
    redelivery and restarts give duplicates, not new data); the clicked one never is."""

    def sessions(n: int) -> list[RelevanceCandidate]:
        out = []
        for s in range(n):
            out += [
                RelevanceCandidate(f"s{s}", f"u{s}", "wool socks", "junk", 0, item_title="ice"),
                RelevanceCandidate(
                    f"s{s}", f"u{s}", "wool socks", "sock", 1, item_title="merino wool socks",
                    action="click", dwell_ms=60_000,
                ),
            ]  # fmt: skip
        return out

    def negatives(batches: list[list[RelevanceCandidate]]) -> list[Any]:
        labeler = RelevanceLabeler(None, LabelSettings(), [TypoAugmenter()])
        found = [
            e
            for b in batches
            for e in labeler.label_many(b, augment=False)
            if "never_clicked" in e.votes
        ]
        assert labeler.counts["aggregate_negatives"] == len(found)
        assert labeler.augmentable(found) == []  # not the label functions' votes: no variants
        return found

    cands = sessions(6)
    one_by_one = negatives([cands[i : i + 2] for i in range(0, len(cands), 2)])
    all_at_once = negatives([cands])
    assert len(one_by_one) == len(all_at_once) == 1
    negative = one_by_one[0]
    assert (negative.item_id, negative.label, negative.grade) == ("junk", 0, 0)
    assert negative.example_id == all_at_once[0].example_id
    assert negative.confidence == pytest.approx(1 - 0.5**3)
    assert negatives([sessions(2)]) == []  # two examinations are not yet enough


def test_tallies_taken_before_a_checkpoint_repeat_a_negative_under_its_id_after_a_restore() -> None:
    """The worker takes the never-clicked tallies just before its checkpoint's hold
    (``take_aggregate_state``), so the saved tallies can be older than the rest. A pair that
    became a negative in between becomes one again after a restore, under the same example id;
    a later state without a fresh take has the tallies as they are then."""

    def shown(session: int) -> list[RelevanceCandidate]:
        return [
            RelevanceCandidate(f"s{session}", f"u{session}", "wool socks", "junk", 0,
                               item_title="ice"),
            RelevanceCandidate(f"s{session}", f"u{session}", "wool socks", "sock", 1,
                               item_title="merino wool socks", action="click", dwell_ms=60_000),
        ]  # fmt: skip

    def negatives(labeler: RelevanceLabeler, sessions: range) -> list[str]:
        out = labeler.label_many([c for s in sessions for c in shown(s)], augment=False)
        return [e.example_id for e in out if "never_clicked" in e.votes]

    labeler = RelevanceLabeler(None, LabelSettings(), [])
    assert negatives(labeler, range(2)) == []
    labeler.take_aggregate_state()  # two examinations so far
    crossed = negatives(labeler, range(2, 3))  # the third: a negative, sent
    assert len(crossed) == 1
    saved = labeler.state_dict()  # the rest as of now, the tallies as taken
    restored = RelevanceLabeler(None, LabelSettings(), [])
    restored.load_state(saved)
    assert negatives(restored, range(2, 3)) == crossed  # again, under the same id
    now = labeler.state_dict()["never_clicked"]["pairs"]["tallies"]
    assert not np.array_equal(now, saved["never_clicked"]["pairs"]["tallies"])  # taken once
    restored.load_state(labeler.state_dict())
    assert negatives(restored, range(3, 4)) == []  # as of now: given already


def test_a_taken_state_is_the_state_at_the_take_whatever_is_labelled_after() -> None:
    """The label checkpoint holds both label agents only while it takes copies
    (``take_state``) and builds the document after it, while labelling goes on: the document is
    the state as of the take, also where full reservoirs replace their items meanwhile."""

    def plain(doc: Any) -> Any:  # a state document in comparable values
        if isinstance(doc, dict):
            return {k: plain(v) for k, v in doc.items()}
        if isinstance(doc, list | tuple):
            return [plain(v) for v in doc]
        if isinstance(doc, np.ndarray):
            return (str(doc.dtype), doc.shape, doc.tolist())
        return doc

    def session(n: int) -> list[RelevanceCandidate]:
        clicked = n % 3
        return [
            RelevanceCandidate(
                f"s{n}",
                f"u{n}",
                f"query {n % 7}",
                f"item{(n + p) % 11}",
                p,
                item_title=f"query {p} item",
                action="click" if p == clicked else "none",
                dwell_ms=40_000 if p == clicked else None,
            )
            for p in range(4)
        ]

    def review(n: int) -> SentimentCandidate:
        text = "great, love it" if n % 2 else "awful, it broke"
        return SentimentCandidate(f"r{n}", f"i{n % 5}", f"{text} {n}", rating=5 if n % 2 else 1)

    relevance = RelevanceLabeler(None, LabelSettings(), [])
    sentiment = SentimentLabeler(None, LabelSettings(), [])
    for labeler in (relevance, sentiment):
        labeler.model.sample.capacity = 30  # full: new rows replace old ones in place
    relevance.position_bias.sample.capacity = 50
    relevance.label_many([c for n in range(40) for c in session(n)], augment=False)
    sentiment.label_many([review(n) for n in range(60)], augment=False)
    for labeler, more in (
        (relevance, lambda: [c for n in range(40, 200) for c in session(n)]),
        (sentiment, lambda: [review(n) for n in range(60, 300)]),
    ):
        then = plain(labeler.state_dict())
        taken = labeler.take_state()
        for _ in range(3):
            labeler.label_many(more(), augment=False)
        assert plain(labeler.state_dict()) != then  # it moved on
        assert plain(taken()) == then


def test_label_model_fit_on_distinct_rows_equals_the_row_by_row_fit() -> None:
    # Golden figures from the row-by-row MAP-EM (the implementation before EM ran on the
    # distinct (votes, anchor) rows weighted by their counts): the two must agree exactly.
    rng = np.random.default_rng(5)
    n = 600
    y = rng.integers(0, 2, n)

    def lf(acc: float, abstain: float) -> np.ndarray:
        v = np.where(rng.random(n) < acc, y, 1 - y)
        return np.where(rng.random(n) < abstain, ABSTAIN, v)

    votes = np.stack([lf(0.9, 0.3), lf(0.7, 0.5), lf(0.6, 0.2)], axis=1)
    anchors = np.where(rng.random(n) < 0.05, y, ABSTAIN)
    fit = LabelModel().fit(votes, anchors).fitted
    assert fit is not None and fit.iterations == 55
    golden = [
        [[0.760171, 0.239829], [0.227328, 0.772672]],
        [[0.739469, 0.260531], [0.19907, 0.80093]],
        [[0.712277, 0.287723], [0.336835, 0.663165]],
    ]
    np.testing.assert_allclose(fit.confusion, golden, atol=1e-6)
    np.testing.assert_allclose(fit.priors, [0.519674, 0.480326], atol=1e-6)


def test_the_review_agent_joins_consecutive_messages_up_to_a_call_size() -> None:
    from types import SimpleNamespace

    from streams.labels import _review_calls

    sizes = [1, 2, 70, 3, 60, 1]
    messages = [(n, SimpleNamespace(events=[None] * n)) for n in sizes]
    calls = [[n for n, _ in call] for call in _review_calls(messages, 64)]  # type: ignore[arg-type]
    # in order; a message larger than a call is one of its own
    assert calls == [[1, 2], [70], [3, 60, 1]]
    assert list(_review_calls([], 64)) == []


def test_trailing_augmentation_under_load_takes_chunks_within_its_budget() -> None:
    from ecrec_stream.augment import TypoAugmenter
    from ecrec_stream.labels.stages import BUDGET_WINDOW_S, TrailingAugmentation

    labeler = SentimentLabeler(None, LabelSettings(), [TypoAugmenter()])
    originals = labeler.label_many(
        [SentimentCandidate(f"r{i}", "i", f"Love it, so soft {i}", 5) for i in range(40)],
        augment=False,
    )
    trailing = TrailingAugmentation(labeler, max_wait_s=1e6, capacity=100, busy_share=0.1)
    trailing.offer(originals, "p0", now=0.0)
    assert trailing.next_chunk(now=0.0, busy=True) is None  # nothing earned yet
    busy = trailing.next_chunk(now=5.0, busy=True)  # 0.5 s earned
    assert busy is not None and len(busy.examples) == 8
    assert trailing.augment_many(busy).variants
    trailing.charge(0.6)  # 0.1 s overdrawn
    assert trailing.next_chunk(now=5.5, busy=True) is None
    idle = trailing.next_chunk(now=5.5)  # idle and caught up: no budget needed
    assert idle is not None and len(idle.examples) == 8
    # the budget saves up at most BUDGET_WINDOW_S worth: after an hour, one window's worth
    trailing.charge(0.0)
    assert trailing.next_chunk(now=3600.0, busy=True) is not None
    trailing.charge(0.1 * BUDGET_WINDOW_S)
    assert trailing.next_chunk(now=3600.0, busy=True) is None
    # no share, no busy chunks
    never = TrailingAugmentation(labeler, max_wait_s=1e6, capacity=100)
    never.offer(originals, "p0", now=0.0)
    assert never.next_chunk(now=1e5, busy=True) is None
    with pytest.raises(ValueError):
        TrailingAugmentation(labeler, max_wait_s=1, capacity=1, busy_share=1.0)
