"""Label synthesis and augmentation, measured.

1. Sentiment on real reviews (../shared/data/womens_clothing_reviews, CC0): macro-F1 of each
   text label function and of the label model **with the rating function masked out**, against
   the real star rating (4-5 positive, 1-2 negative, 3-star reviews left out), on a fixed split;
   once fitted on the masked rows alone, once as the live labeler fits it (its sample also
   holds other reviews with their stars); then on more seeded splits and class balances.
2. EDA-style experiment: a logistic-regression classifier on MiniLM embeddings trained on
   N=500 rating-labelled reviews, with vs without augmentation, macro-F1 on the test split.
3. Relevance labels from simulated sessions vs the simulator's hidden ground truth.
4. Throughput against baselines measured in the same run: rule-based parts vs a raw Faust
   passthrough; model-backed parts vs a plain batched ``encode`` of the same texts.

    python -m bench.labels [--test 3000] [--seeds 2000] [--sessions 3000]
                           [--only all|relevance|sentiment|label-model]
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from bench.common import SHARED_DATA, report
from ecrec_stream.augment import EdaAugmenter, MeaningFilter, TypoAugmenter
from ecrec_stream.config import LabelSettings
from ecrec_stream.contracts.events import ClickEvent, SearchEvent
from ecrec_stream.embedding import CachedEncoder, SentenceTransformerEncoder
from ecrec_stream.labels.base import ABSTAIN, SentimentCandidate
from ecrec_stream.labels.examples import RelevanceLabeler, SentimentLabeler, vote_matrix
from ecrec_stream.labels.model import LabelModel, OnlineLabelModel
from ecrec_stream.labels.relevance import ClickRelevance, ExposureRelevance, behaviour_grade
from ecrec_stream.labels.sentiment import (
    LexiconSentiment,
    PrototypeSentiment,
    RatingSentiment,
    SeedClassifierSentiment,
)
from ecrec_stream.labels.sessions import add_event, new_session, relevance_candidates
from workers.simulate import ShopSimulator, synthetic_catalog

REVIEWS = SHARED_DATA / "womens_clothing_reviews"


def load_reviews(path: Path, seed: int = 0) -> list[SentimentCandidate]:
    with open(path / "reviews.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Review Text"].strip() and r["Rating"] != "3"]
    random.Random(seed).shuffle(rows)
    return [
        SentimentCandidate(
            f"r{i}",
            r["Clothing ID"],
            ". ".join(p for p in (r["Title"].strip(), r["Review Text"].strip()) if p),
            int(r["Rating"]),
        )
        for i, r in enumerate(rows)
    ]


def truth(cands: list[SentimentCandidate]) -> np.ndarray:
    return np.array([1 if (c.rating or 0) >= 4 else 0 for c in cands])


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_score(y, pred, average="macro"))


def stream_fit_predict(
    text_lfs: list[Any], rated: list[SentimentCandidate], cases: list[SentimentCandidate]
) -> np.ndarray:
    """Label the rating-masked ``cases`` as the live labeler would (``OnlineLabelModel``): its
    sample also holds reviews *with* stars (``rated``), whose rating votes tell the label model
    what the text functions' votes mean, and its held-out check (rated reviews with their stars
    masked) decides between the fit and majority vote."""
    rating = RatingSentiment()
    rated_votes = np.hstack([vote_matrix([rating], rated), vote_matrix(text_lfs, rated)])
    masked = np.hstack(
        [np.full((len(cases), 1), ABSTAIN, dtype=np.int64), vote_matrix(text_lfs, cases)]
    )
    rows = np.vstack([rated_votes, masked])
    model = OnlineLabelModel(rows.shape[1], capacity=len(rows), min_rows=1, reference=0)
    proba = model.label_many(rows)
    STREAM_FITS.append(model.last_fallback)
    return np.asarray(proba[len(rated) :].argmax(axis=1))


STREAM_FITS: list[str | None] = []  # each stream fit's fallback reason (None: the fit labels)


def sentiment_section(
    encoder: CachedEncoder,
    train: list[SentimentCandidate],
    test: list[SentimentCandidate],
    rated: list[SentimentCandidate],
) -> tuple[list[list[Any]], dict[str, Any]]:
    y = truth(test)
    seed = SeedClassifierSentiment(encoder).fit([c.text for c in train], truth(train).tolist())
    text_lfs = [LexiconSentiment(), PrototypeSentiment(encoder), seed]
    votes = vote_matrix(text_lfs, test)
    rows, data = [], {}
    for j, lf in enumerate(text_lfs):
        covered = votes[:, j] != ABSTAIN
        f1 = macro_f1(y[covered], votes[covered, j])
        rows.append(
            [
                f"text LF: {lf.name}",
                f"{covered.mean():.1%}",
                f1,
                float((votes[covered, j] == y[covered]).mean()),
            ]
        )
        data[lf.name] = {"coverage": float(covered.mean()), "macro_f1_covered": f1}
    model = LabelModel().fit(votes)
    pred = model.predict_proba(votes).argmax(axis=1)
    any_vote = (votes != ABSTAIN).any(axis=1)
    lm_f1 = macro_f1(y, pred)
    rows.append(
        [
            "label model (rating masked), all test reviews",
            f"{any_vote.mean():.1%}",
            lm_f1,
            float((pred == y).mean()),
        ]
    )
    proba = model.predict_proba(votes)
    balanced = (proba / model.fitted.priors).argmax(axis=1)  # type: ignore[union-attr]
    rows.append(
        [
            "label model, class-balanced decision (posterior / prior)",
            f"{any_vote.mean():.1%}",
            macro_f1(y, balanced),
            float((balanced == y).mean()),
        ]
    )
    data["label_model_balanced_macro_f1"] = macro_f1(y, balanced)
    live = stream_fit_predict(text_lfs, rated, test)
    rows.append(
        [
            f"label model as in the stream (sample also holds {len(rated):,} rated reviews)",
            f"{any_vote.mean():.1%}",
            macro_f1(y, live),
            float((live == y).mean()),
        ]
    )
    data["label_model_stream_fit_macro_f1"] = macro_f1(y, live)
    majority = _majority(votes)
    rows.append(
        [
            "majority vote of the same functions (reference)",
            f"{any_vote.mean():.1%}",
            macro_f1(y, majority),
            float((majority == y).mean()),
        ]
    )
    rows.append(
        ["always 'positive' (reference)", "100%", macro_f1(y, np.ones_like(y)), float(y.mean())]
    )
    data["label_model"] = {
        "macro_f1": lm_f1,
        "estimated_accuracy": dict(
            zip([f.name for f in text_lfs], model.accuracies.round(3).tolist(), strict=True)
        ),
    }
    data["majority_vote_macro_f1"] = macro_f1(y, majority)
    return rows, data


def lexicon_labels(texts: list[str]) -> list[int]:
    """The lexicon function's votes on bare texts: the meaning filter's flip check."""
    lexicon = LexiconSentiment()
    return [v.label for v in lexicon.vote_many([SentimentCandidate("", "", t) for t in texts])]


def classifier_macro_f1(
    encoder: CachedEncoder,
    texts: list[str],
    labels: list[int],
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> float:
    """Macro-F1 on the test embeddings of a logistic regression on ``texts``' embeddings."""
    clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=0)
    clf.fit(encoder.encode(texts), labels)
    return macro_f1(y_test, clf.predict(x_test))


def eda_section(
    encoder: CachedEncoder, train: list[SentimentCandidate], test: list[SentimentCandidate], n: int
) -> tuple[list[list[Any]], dict[str, Any]]:
    small = train[:n]
    y_small, y_test = truth(small), truth(test)
    x_test = encoder.encode([c.text for c in test])
    items = [(c.event_id, c.text) for c in small]
    label_of = dict(zip([c.event_id for c in small], y_small.tolist(), strict=True))
    augmented = [
        a
        for aug in (EdaAugmenter(variants=2), TypoAugmenter(variants=2))
        for a in aug.augment_many(items, seed=13)
    ]
    filt = MeaningFilter(encoder, min_similarity=LabelSettings().min_similarity)
    kept = filt.filter_many(augmented, dict(items), label_of=lexicon_labels)
    rows, data = [], {}
    variants = {
        "no augmentation": ([c.text for c in small], y_small.tolist()),
        "EDA + typo, all": (
            [c.text for c in small] + [a.text for a in augmented],
            y_small.tolist() + [label_of[a.source_id] for a in augmented],
        ),
        "EDA + typo, meaning-filtered": (
            [c.text for c in small] + [a.text for a, _ in kept],
            y_small.tolist() + [label_of[a.source_id] for a, _ in kept],
        ),
    }
    for name, (texts, labels) in variants.items():
        f1 = classifier_macro_f1(encoder, texts, labels, x_test, y_test)
        rows.append([f"N={n} {name}", len(texts), f1])
        data[name] = {"train_texts": len(texts), "macro_f1": f1}
    data["filter"] = filt.counts.as_dict()
    return rows, data


def _majority(votes: np.ndarray) -> np.ndarray:
    return np.array(
        [np.bincount(r[r >= 0], minlength=2).argmax() if (r >= 0).any() else 1 for r in votes]
    )


def paired_difference_ci(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 1000
) -> tuple[float, float]:
    """95% paired-bootstrap interval of ``macro_f1(y, a) - macro_f1(y, b)`` (same resampled
    reviews for both), by ``scipy.stats.bootstrap``."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (y, a, b),
        lambda yy, aa, bb: macro_f1(yy, aa) - macro_f1(yy, bb),
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        method="percentile",
        random_state=0,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _with_negative_share(cases: list[SentimentCandidate], share: float) -> list[SentimentCandidate]:
    pos = [c for c in cases if (c.rating or 0) >= 4]
    neg = [c for c in cases if (c.rating or 0) < 4]
    return pos + neg[: int(len(pos) * share / (1 - share))]


def sentiment_robustness(
    encoder: CachedEncoder, pool: list[SentimentCandidate], splits: int = 3
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Label model vs majority vote of the same text functions (rating masked) on several
    seeded splits of ``pool``, at the natural class balance and with negatives subsampled to
    7% and 5% (another shop's reviews were 6.7% negative)."""
    rows, data = [], {}
    for split in range(splits):
        shuffled = pool[:]
        random.Random(100 + split).shuffle(shuffled)
        train, test, rest = shuffled[:2000], shuffled[2000:5000], shuffled[5000:]
        seed = SeedClassifierSentiment(encoder).fit([c.text for c in train], truth(train).tolist())
        lfs = [LexiconSentiment(), PrototypeSentiment(encoder), seed]
        for balance, share in (("natural", None), ("7% negative", 0.07), ("5% negative", 0.05)):
            cases = test if share is None else _with_negative_share(test, share)
            rated = rest if share is None else _with_negative_share(rest, share)
            y = truth(cases)
            votes = vote_matrix(lfs, cases)
            lm = LabelModel().fit(votes).predict_proba(votes).argmax(axis=1)
            majority, live = _majority(votes), stream_fit_predict(lfs, rated, cases)
            lm_f1, mv_f1, live_f1 = macro_f1(y, lm), macro_f1(y, majority), macro_f1(y, live)
            low, high = paired_difference_ci(y, live, majority)
            differ = live != majority
            rows.append(
                [
                    f"split {split}, {balance}",
                    len(cases),
                    f"{1 - y.mean():.1%}",
                    lm_f1,
                    live_f1,
                    mv_f1,
                    f"{live_f1 - mv_f1:+.3f} [{low:+.3f}, {high:+.3f}]",
                    f"{int(differ.sum())}: {int((live[differ] == y[differ]).sum())} / "
                    f"{int((majority[differ] == y[differ]).sum())}",
                    "majority (check)" if STREAM_FITS[-1] else "fit",
                ]
            )
            data[f"split{split}_{balance}"] = {
                "n": len(cases),
                "negative_share": float(1 - y.mean()),
                "label_model_macro_f1": lm_f1,
                "label_model_stream_fit_macro_f1": live_f1,
                "majority_vote_macro_f1": mv_f1,
                "stream_fit_minus_majority_ci95": [low, high],
                "disagreements": int(differ.sum()),
                "disagreements_right_label_model": int((live[differ] == y[differ]).sum()),
                "disagreements_right_majority": int((majority[differ] == y[differ]).sum()),
                "label_model_stream_fit_accuracy": float((live == y).mean()),
                "majority_vote_accuracy": float((majority == y).mean()),
                "stream_fit_fallback": STREAM_FITS[-1],
            }
    return rows, data


def label_model_cost(n: int = 20_000, batch: int = 50) -> tuple[list[list[Any]], dict[str, Any]]:
    """Seconds to fit the label model on ``n`` planted vote rows (5 functions, known
    accuracies), cold and warm-started, and to label them online in micro-batches of ``batch``
    rows refitting on every micro-batch (``refit_every=1``) vs the default schedule."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)

    def lf(acc: float, abstain: float) -> np.ndarray:
        v = np.where(rng.random(n) < acc, y, 1 - y)
        return np.where(rng.random(n) < abstain, ABSTAIN, v)

    votes = np.stack(
        [lf(0.9, 0.5), lf(0.8, 0.3), lf(0.7, 0.2), lf(0.6, 0.6), lf(0.75, 0.4)], axis=1
    )
    rows, data = [], {}
    t0 = time.perf_counter()
    cold = LabelModel().fit(votes)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = LabelModel().fit(votes, init=cold.fitted)
    warm_s = time.perf_counter() - t0
    for name, model, secs in (("cold", cold, cold_s), ("warm-started", warm, warm_s)):
        its = model.fitted.iterations  # type: ignore[union-attr]
        rows.append([f"fit {n:,} rows, {name}", f"{secs:.3f}", its])
        data[f"fit_{name}"] = {"s": secs, "iterations": its}
    default_every = OnlineLabelModel(5).refit_every
    for every in (1, default_every):
        online = OnlineLabelModel(5, capacity=n, refit_every=every)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            online.label_many(votes[start : start + batch])
        secs = time.perf_counter() - t0
        label = f"online, {n // batch} micro-batches of {batch}, refit every {every} rows"
        rows.append([label, f"{secs:.2f}", f"{online.fits} fits"])
        data[f"online_refit_every_{every}"] = {
            "s": secs,
            "fits": online.fits,
            "accuracies": online.accuracies.round(3).tolist()
            if online.accuracies is not None
            else None,
        }
    data["true_accuracies"] = [0.9, 0.8, 0.7, 0.6, 0.75]
    return rows, data


def simulated_candidates(n_sessions: int, seed: int) -> tuple[list[Any], np.ndarray]:
    """Relevance candidates (with titles) of simulated sessions and their true grades."""
    catalog = synthetic_catalog(2000, seed=3)
    titles = {i.item_id: i.title for i in catalog}
    sim = ShopSimulator(catalog, seed=seed)
    cands, grades = [], []
    for _ in range(n_sessions):
        session = sim.session()
        state = new_session(session.session_id, 0)
        for kind, _key, doc in session.events:
            if kind in ("search", "click"):
                model = SearchEvent if kind == "search" else ClickEvent
                add_event(state, model.model_validate(doc, strict=False), max_clicks=500)
        for c in relevance_candidates(state):
            cands.append(replace(c, item_title=titles[c.item_id]))
            grades.append(session.relevance[c.item_id])
    return cands, np.array(grades)


def relevance_section(
    encoder: CachedEncoder, n_sessions: int
) -> tuple[list[list[Any]], dict[str, Any]]:
    cands, g = simulated_candidates(n_sessions, seed=5)
    relevant = g >= 2  # the target, or its category sharing a query word
    labeler = RelevanceLabeler(encoder, LabelSettings(augment_variants=0))
    examples = labeler.label_many(cands)
    by_key = {(e.source_event_ids[0], e.item_id): e for e in examples}
    rows, data = [], {"candidates": len(cands), "examples": len(examples)}

    def add(row_name: str, key: str, mask: np.ndarray, want: np.ndarray) -> None:
        """Precision of the rows in ``mask`` and recall of ``want``, as a table row."""
        precision = float(want[mask].mean()) if mask.any() else float("nan")
        recall = float((mask & want).sum() / max(want.sum(), 1))
        rows.append([row_name, int(mask.sum()), precision, recall])
        data[key] = {"n": int(mask.sum()), "precision": precision, "recall": recall}

    grades = [behaviour_grade(c) for c in cands]
    for grade in (3, 2, 1, 0):
        mask = np.array([gr == grade for gr in grades])
        if not mask.any():
            continue
        name = {3: "purchase", 2: "add_to_cart", 1: "click", 0: "skipped above a click"}[grade]
        add(
            f"behaviour grade {grade} ({name})",
            f"grade_{grade}",
            mask,
            relevant if grade >= 1 else ~relevant,
        )
    labels = np.array(
        [
            by_key[(c.search_event_id, c.item_id)].label
            if (c.search_event_id, c.item_id) in by_key
            else -1
            for c in cands
        ]
    )
    for label, want in ((1, relevant), (0, ~relevant)):
        add(
            f"label model: label {label} ({'relevant' if label else 'not'})",
            f"label_{label}",
            labels == label,
            want,
        )
    data["estimated_accuracy"] = (
        dict(zip(labeler.names, labeler.model.accuracies.round(3).tolist(), strict=True))
        if labeler.model.accuracies is not None
        else None
    )
    return rows, data


def crowdflower_section(
    encoder: CachedEncoder, n_sessions: int, seed: int = 5
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Relevance labels from sessions simulated from real human judgments, against them."""
    from bench import crowdflower as cf
    from ecrec_stream.labels.relevance import ContentRelevance

    judg = cf.load()
    ranks = cf.top_k(encoder.encode(judg.titles), encoder.encode(judg.queries), 10)
    rankings = {q: list(map(int, r)) for q, r in zip(judg.queries, ranks, strict=True)}
    sim = cf.simulate(judg, rankings, n_sessions, seed=seed)
    cands, judged, rel = sim.candidates, sim.judged, sim.relevant
    notrel = ~rel
    rows: list[list[Any]] = []
    data: dict[str, Any] = {
        "sessions": n_sessions,
        "impressions": len(cands),
        "judged_impressions": int(judged.sum()),
        "relevant_base_rate": float(rel[judged].mean()),
        "not_relevant_base_rate": float(notrel[judged].mean()),
    }

    def add(name: str, key: str, label1: np.ndarray | None, label0: np.ndarray | None) -> None:
        row: list[Any] = [name]
        data[key] = {}
        for label, mask, want in ((1, label1, rel), (0, label0, notrel)):
            if mask is None:
                row += ["-", "-", "-"]
                continue
            pr = cf.precision_recall(mask, want, judged)
            data[key][f"label_{label}"] = pr
            row += [pr["n"], pr["precision"], pr["recall"]]
        covered = np.zeros(len(cands), dtype=bool)
        for m in (label1, label0):
            if m is not None:
                covered |= m
        data[key]["examples_per_session"] = float(covered.sum() / n_sessions)
        rows.append([*row, covered.sum() / n_sessions])

    never_clicked: dict[str, list[tuple[str, str]]] = defaultdict(list)  # run -> pairs

    def run_labeler(labeler: RelevanceLabeler, run: str = "main") -> np.ndarray:
        """Label in stream-sized micro-batches (50 sessions); -1 where no example. Negatives
        of pairs never clicked across sessions go to ``never_clicked[run]``."""
        by_key: dict[tuple[str, str], int] = {}
        batch: list[Any] = []
        last_session = None
        sessions_in_batch = 0
        for c in [*cands, None]:
            if c is None or (c.session_id != last_session and sessions_in_batch == 50):
                for e in labeler.label_many(batch):
                    if e.source_event_ids[0].startswith("never-clicked:"):
                        never_clicked[run].append((e.text, e.item_id))
                    else:
                        by_key[(e.source_event_ids[0], e.item_id)] = e.label
                batch, sessions_in_batch = [], 0
            if c is None:
                break
            if c.session_id != last_session:
                sessions_in_batch += 1
                last_session = c.session_id
            batch.append(c)
        return np.array([by_key.get((c.search_event_id, c.item_id), -1) for c in cands])

    settings = LabelSettings(augment_variants=0)
    labeler = RelevanceLabeler(None, settings)
    labels = run_labeler(labeler)
    votes = vote_matrix(labeler.functions, cands)
    names = labeler.names
    clicked = np.array([c.action != "none" for c in cands])
    skipped = np.array([c.skipped_above_click for c in cands])
    add("raw clicks (clicked = 1, skipped above a click = 0)", "raw_clicks", clicked, skipped)
    mv = _majority(votes)
    any_vote = (votes != ABSTAIN).any(axis=1)
    add(
        "majority vote of the same functions",
        "majority_vote",
        any_vote & (mv == 1),
        any_vote & (mv == 0),
    )
    for j, name in enumerate(names):
        add(f"single function: {name}", f"lf_{name}", votes[:, j] == 1, votes[:, j] == 0)
    grades = [behaviour_grade(c) for c in cands]
    for grade, gname in ((3, "purchase"), (2, "add to cart"), (1, "click")):
        add(
            f"behaviour grade {grade} ({gname})",
            f"grade_{grade}",
            np.array([g == grade for g in grades]),
            None,
        )
    add(
        "**label model** (examples only with behavioural evidence)",
        "label_model",
        labels == 1,
        labels == 0,
    )
    # negatives from many sessions, per (query, item) pair, scored by the pair's judgment
    pairs = never_clicked["main"]
    judged_pairs = [(q, int(i[1:])) for q, i in pairs if (q, int(i[1:])) in judg.relevance]
    wrong = sum(judg.relevance[p] >= 3 for p in judged_pairs)
    pair_precision = 1 - wrong / len(judged_pairs) if judged_pairs else float("nan")
    rows.append(
        [
            "never clicked across sessions (one negative per query-item pair)",
            "-", "-", "-", len(pairs), pair_precision, "-", len(pairs) / n_sessions,
        ]
    )  # fmt: skip
    lm0 = (labels == 0) & judged
    right0 = int((lm0 & notrel).sum()) + len(judged_pairs) - wrong
    rows.append(
        [
            "**label model + never-clicked pairs** (label 0 of both)",
            "-", "-", "-", int((labels == 0).sum()) + len(pairs),
            right0 / max(int(lm0.sum()) + len(judged_pairs), 1), "-",
            (int((labels >= 0).sum()) + len(pairs)) / n_sessions,
        ]
    )  # fmt: skip
    data["never_clicked_pairs"] = {
        "n": len(pairs),
        "judged": len(judged_pairs),
        "precision": pair_precision,
        "combined_label0_precision": right0 / max(int(lm0.sum()) + len(judged_pairs), 1),
        "conflicting": labeler.counts["conflicting_aggregate"],
    }
    data["label_model_fallbacks"] = labeler.model.fallbacks
    data["label_model_fits"] = labeler.model.fits
    data["label_model_last_fallback"] = labeler.model.last_fallback
    data["estimated_accuracy"] = (
        dict(zip(names, labeler.model.accuracies.round(3).tolist(), strict=True))
        if labeler.model.accuracies is not None
        else None
    )
    theta = labeler.position_bias.fit()
    data["position_bias"] = {
        "estimated": None if theta is None else theta.round(3).tolist(),
        "simulated": [round(1 / (k + 1) ** cf.EXAMINATION_EXPONENT, 3) for k in range(10)],
        "fixed_default": [round(1 / (k + 1) ** settings.ips_eta, 3) for k in range(10)],
        "pairs_at_several_positions": labeler.position_bias.pairs_at_several_positions,
    }
    # The circular setup the issue measured: content scored by the serving encoder itself.
    circular = RelevanceLabeler(
        encoder, LabelSettings(augment_variants=0, content="reference_encoder")
    )
    content = ContentRelevance(encoder).vote_many(cands)
    content_votes = np.array([v.label for v in content])
    add(
        "single function: content from the serving encoder (circular)",
        "lf_serving_content",
        content_votes == 1,
        content_votes == 0,
    )
    labels_c = run_labeler(circular)
    add(
        "label model with serving-encoder content instead of lexical",
        "label_model_circular",
        labels_c == 1,
        labels_c == 0,
    )
    return rows, data


def throughput_section(
    cands: list[SentimentCandidate], rel_cands: list[Any], raw_encoder: Any, passthrough_eps: float
) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, data = [], {}
    # rule-based: rating + lexicon votes, behaviour votes, label model, EDA/typo augmentation
    t0 = time.perf_counter()
    votes = vote_matrix([RatingSentiment(), LexiconSentiment()], cands)
    LabelModel().fit(votes)
    items = [(c.event_id, c.text) for c in cands]
    EdaAugmenter().augment_many(items, seed=1)
    TypoAugmenter().augment_many(items, seed=1)
    rel_votes = vote_matrix([ClickRelevance(), ExposureRelevance()], rel_cands)
    LabelModel().fit(rel_votes)
    n_events = len(cands) + len(rel_cands)
    rule_eps = n_events / (time.perf_counter() - t0)
    rows.append(
        [
            "rule-based labels + augmenters (in process)",
            rule_eps,
            "raw Faust passthrough",
            passthrough_eps,
            rule_eps / passthrough_eps,
        ]
    )
    data["rule_based"] = {"events_per_s": rule_eps, "baseline_events_per_s": passthrough_eps}
    # model-backed: prototype + seed classifier votes and the meaning filter, fresh cache
    texts = [c.text for c in cands]
    raw_encoder.encode([*texts[:64][::-1], "warm-up"])  # warm the model before either timing
    t0 = time.perf_counter()
    raw_encoder.encode(texts)
    plain_eps = len(texts) / (time.perf_counter() - t0)
    labeler = SentimentLabeler(CachedEncoder(raw_encoder), LabelSettings(augment_variants=0))
    t0 = time.perf_counter()
    labeler.label_many(cands)  # all four functions; fits the seed classifier on the way
    model_eps = len(texts) / (time.perf_counter() - t0)
    rows.append(
        [
            "model-backed sentiment labeler (all 4 functions + label model)",
            model_eps,
            "plain batched encode of the same texts",
            plain_eps,
            model_eps / plain_eps,
        ]
    )
    data["model_backed"] = {"events_per_s": model_eps, "baseline_encode_per_s": plain_eps}
    return rows, data


def crowdflower_report(encoder: CachedEncoder, n_sessions: int, seed: int = 5) -> None:
    from bench.crowdflower import DATA

    if not DATA.is_dir():
        print(f"skipping the Crowdflower relevance section: {DATA} not found")
        return
    rows, data = crowdflower_section(encoder, n_sessions, seed)
    report(
        "labels_relevance_crowdflower" + ("" if seed == 5 else f"_seed{seed}"),
        f"Relevance labels from {n_sessions} sessions (simulation seed {seed}) simulated from "
        "real human judgments (Crowdflower), against those judgments (relevant = median >= 3, "
        "not = median <= 2)",
        [
            "labels",
            "n label 1",
            "precision",
            "recall",
            "n label 0",
            "precision",
            "recall",
            "examples/session",
        ],
        rows,
        data,
    )
    print(
        "relevant base rate",
        round(data["relevant_base_rate"], 3),
        "not-relevant base rate",
        round(data["not_relevant_base_rate"], 3),
    )
    print("position bias:", data["position_bias"])
    print("label model fallbacks:", data["label_model_fallbacks"], data["estimated_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REVIEWS)
    parser.add_argument("--test", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--eda-n", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--throughput-n", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=8000, help="reviews for the split table")
    parser.add_argument("--cf-sessions", type=int, default=5000)
    parser.add_argument(
        "--cf-seeds", default="5", help="simulation seeds of the Crowdflower table, e.g. 5,11"
    )
    parser.add_argument(
        "--only",
        choices=["all", "relevance", "sentiment", "label-model"],
        default="all",
        help="relevance: the Crowdflower table only; sentiment: the review tables only; "
        "label-model: the label model's fitting cost",
    )
    args = parser.parse_args()
    if args.only in ("all", "label-model"):
        rows, data = label_model_cost()
        report(
            "labels_label_model_cost",
            "Label model fitting cost on planted votes (5 functions, 20,000 rows)",
            ["what", "seconds", "iterations / fits"],
            rows,
            data,
        )
        if args.only == "label-model":
            return
    raw = SentenceTransformerEncoder()
    encoder = CachedEncoder(raw, capacity=100_000)
    if args.only == "relevance":
        for seed in map(int, args.cf_seeds.split(",")):
            crowdflower_report(encoder, args.cf_sessions, seed)
        return
    reviews = load_reviews(args.data)
    train, test = reviews[: args.seeds], reviews[args.seeds : args.seeds + args.test]
    rated = reviews[args.seeds + args.test : args.seeds + args.test + 3000]
    t0 = time.perf_counter()
    encoder.encode([c.text for c in train + test + rated])
    n_embedded = len(train) + len(test) + len(rated)
    print(f"embedded {n_embedded} reviews in {time.perf_counter() - t0:.0f} s")

    rows, data = sentiment_section(encoder, train, test, rated)
    report(
        "labels_sentiment",
        f"Sentiment vs real star ratings: {len(test)} test reviews "
        f"(3-star excluded), seed classifier fitted on {len(train)} others' ratings",
        ["method", "coverage", "macro-F1", "accuracy"],
        rows,
        data,
    )
    rows, data = eda_section(encoder, train, test, args.eda_n)
    report(
        "labels_eda",
        f"EDA-style experiment: classifier on MiniLM embeddings, macro-F1 on "
        f"{len(test)} test reviews",
        ["training set", "texts", "macro-F1"],
        rows,
        data,
    )
    pool = reviews[: args.pool]
    encoder.encode([c.text for c in pool])
    rows, data = sentiment_robustness(encoder, pool)
    report(
        "labels_sentiment_splits",
        "Sentiment, label model vs majority vote (rating masked) on other splits and balances",
        [
            "split",
            "reviews",
            "negative",
            "label model (masked rows only)",
            "label model as in the stream",
            "majority vote",
            "stream fit - majority [95% CI]",
            "reviews labelled differently: right by label model / by majority",
            "stream labels from",
        ],
        rows,
        data,
    )
    if args.only == "sentiment":
        return
    crowdflower_report(encoder, args.cf_sessions)
    rows, data = relevance_section(encoder, args.sessions)
    report(
        "labels_relevance",
        f"Relevance labels from {args.sessions} simulated sessions vs "
        "the simulator's ground truth (relevant = target or same category sharing a query "
        "word)",
        ["labels", "n", "precision", "recall"],
        rows,
        data,
    )

    from bench.ingest import run_passthrough
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        passthrough = run_passthrough(
            broker.bootstrap, 20_000, 0.0, Path(tempfile.mkdtemp(prefix="ecrec-bench-labels-"))
        )
    rel_cands, _ = simulated_candidates(2000, seed=9)
    rows, data = throughput_section(
        reviews[-args.throughput_n :], rel_cands, raw, passthrough["events_per_s"]
    )
    report(
        "labels_throughput",
        "Label synthesis throughput vs baselines measured in this run (events/s)",
        ["stage", "events/s", "baseline", "baseline events/s", "x baseline"],
        rows,
        data,
    )


if __name__ == "__main__":
    main()
