"""The live sentiment labeler on real review streams, judged by the reviewers' own
"recommended" flag (a human judgment the labeler never sees).

Each of ``--slices`` disjoint slices of ``--reviews`` real clothing reviews is labelled from a
fresh state, stars and all, as a worker would (calls of 64, as the review agent makes them), by
three labelers: the default (a review's stars are its label where they speak, the label model
labels the rest), the same with the stars also clamped in the label model's fit, and the
labeler as it was before (the stars one vote among four). Beside them, from the same run: the
stars alone (where they speak), a majority vote of the same functions' votes, and "everything
recommended". Accuracy and macro-F1 on all reviews, on those whose stars speak (1-2, 4-5) and
on 3-star reviews (where the text functions decide), with 95% bootstrap intervals, and paired
bootstrap intervals of the default's accuracy minus each other labeler's.

    python -m bench.sentiment_live [--reviews 3000] [--slices 3]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from bench.common import clothing_review_events, clothing_review_rows, report
from bench.encode import CALL
from ecrec_stream.config import LabelSettings
from ecrec_stream.contracts.events import ReviewEvent
from ecrec_stream.contracts.examples import TrainingExample
from ecrec_stream.embedding import CachedEncoder, Encoder, SentenceTransformerEncoder
from ecrec_stream.labels.base import ABSTAIN, POSITIVE, SentimentCandidate
from ecrec_stream.labels.examples import SentimentLabeler, build_labelers
from ecrec_stream.labels.model import macro_f1, majority_labels
from ecrec_stream.labels.stages import ReviewLabelStage

DEFAULT = "label model, stars overrule it (default)"
IN_FIT = "label model, stars also clamped in its fit"
BEFORE = "label model, stars one vote (before)"


class StarsOneVote(SentimentLabeler):
    """The sentiment labeler as it was: the stars one vote among four, never overruling the
    label model (for comparison only)."""

    def _overrule(self, votes: np.ndarray, proba: np.ndarray) -> np.ndarray:
        return proba


class StarsClampedInFit(SentimentLabeler):
    """The default labeler with the stars also clamped in the label model's fit (anchors), so
    the text functions' confusions are learnt from the stars as if supervised (tried, not
    kept)."""

    def _anchors(self, candidates: Sequence[SentimentCandidate]) -> np.ndarray:
        return np.array([v.label for v in self.rating.vote_many(candidates)], dtype=np.int64)

    def _example_anchor(self, example: TrainingExample) -> int:
        return example.votes.get(self.rating.name, ABSTAIN)


def label_reviews(
    labeler: SentimentLabeler, events: list[ReviewEvent]
) -> dict[str, TrainingExample]:
    """Each review's example, keyed by event id, in calls of ``CALL`` from a fresh state."""
    stage = ReviewLabelStage(labeler, on_error="stop")
    out = {}
    for i in range(0, len(events), CALL):
        for example in stage.label_many(events[i : i + CALL], augment=False).examples:
            out[example.source_event_ids[0]] = example
    return out


def interval(*samples: np.ndarray, statistic: Any) -> tuple[float, float]:
    ci = bootstrap(
        samples, statistic, paired=len(samples) > 1, n_resamples=1000, random_state=0,
        vectorized=False, method="percentile",
    ).confidence_interval  # fmt: skip
    return float(ci.low), float(ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=3000, help="reviews per slice")
    parser.add_argument("--slices", type=int, default=3)
    args = parser.parse_args()
    encoder: Encoder = CachedEncoder(SentenceTransformerEncoder(), capacity=200_000)
    rows = clothing_review_rows()
    step = len(rows) // args.slices
    if step < args.reviews:
        parser.error(f"{len(rows)} reviews do not hold {args.slices} slices of {args.reviews}")

    table: list[list[Any]] = []
    data: dict[str, Any] = {"reviews_per_slice": args.reviews, "slices": {}}
    for s in range(args.slices):
        offset = s * step
        chunk = rows[offset : offset + args.reviews]
        events = clothing_review_events(chunk, offset)
        truth = {e.event_id: int(r["Recommended IND"]) for e, r in zip(events, chunk, strict=True)}
        stars = {e.event_id: e.rating for e in events}
        settings = LabelSettings()
        _, default = build_labelers(settings, encoder)
        parts = (encoder, settings, default.augmenters, default.meaning_filter)
        labelers = {
            DEFAULT: default,
            IN_FIT: StarsClampedInFit(*parts),
            BEFORE: StarsOneVote(*parts),
        }
        got = {name: label_reviews(labeler, events) for name, labeler in labelers.items()}
        ids = sorted(set.intersection(*(set(g) for g in got.values())))
        predictions = {name: [g[k].label for k in ids] for name, g in got.items()}
        predictions |= {
            # ties and reviews without a vote to positive, the common class
            "majority vote of the same functions": majority_labels(
                np.array([[got[BEFORE][k].votes[n] for n in default.names] for k in ids]),
                tie=POSITIVE,
                silent=POSITIVE,
            ).tolist(),
            "stars alone (where they speak)": [
                ABSTAIN if stars[k] in (None, 3) else int((stars[k] or 0) >= 4) for k in ids
            ],
            "everything recommended": [POSITIVE] * len(ids),
        }
        y = np.array([truth[k] for k in ids])
        groups = {
            "all": np.ones(len(ids), dtype=bool),
            "stars speak": np.array([stars[k] not in (None, 3) for k in ids]),
            "3 stars": np.array([stars[k] == 3 for k in ids]),
        }
        slice_data: dict[str, Any] = {"offset": offset, "labelled": len(ids)}
        for name, pred in predictions.items():
            p = np.array(pred)
            for g, mask in groups.items():
                m = mask & (p != ABSTAIN)
                if not m.any() or (g == "all" and not (p != ABSTAIN).all()):
                    continue  # the stars alone: their own group only
                correct = (p[m] == y[m]).astype(float)
                low, high = interval(correct, statistic=np.mean)
                f1 = macro_f1(y[m], p[m])
                table.append([f"slice {s}", g, name, int(m.sum()), correct.mean(),
                              f"[{low:.3f}, {high:.3f}]", f1])  # fmt: skip
                slice_data.setdefault(name, {})[g] = {
                    "n": int(m.sum()), "accuracy": float(correct.mean()), "ci95": [low, high],
                    "macro_f1": f1,
                }  # fmt: skip
        right = {n: (np.array(predictions[n]) == y).astype(float) for n in labelers}
        for other in (BEFORE, IN_FIT):
            a, b = right[DEFAULT], right[other]
            low, high = interval(a, b, statistic=lambda u, v: np.mean(u) - np.mean(v))
            three = groups["3 stars"]
            slice_data[f"default_minus {other}"] = {
                "accuracy": float(a.mean() - b.mean()), "ci95": [low, high],
                "labelled_differently": int(np.sum(a != b)),
                "right_by_default": int(np.sum(a > b)), "right_by_other": int(np.sum(b > a)),
                "macro_f1_3_stars": macro_f1(y[three], np.array(predictions[DEFAULT])[three])
                - macro_f1(y[three], np.array(predictions[other])[three]),
            }  # fmt: skip
            print(
                f"slice {s}: default - {other}: accuracy {a.mean() - b.mean():+.4f} "
                f"[{low:+.4f}, {high:+.4f}], {int(np.sum(a != b))} labelled differently "
                f"({int(np.sum(a > b))} right by the default, {int(np.sum(b > a))} by the "
                "other)",
                flush=True,
            )
        fits = default.model
        slice_data["default_decision"] = fits.decision
        slice_data["default_check"] = fits.last_check
        data["slices"][f"slice {s}"] = slice_data
    report(
        "sentiment_live",
        f"Live sentiment labels vs the reviewers' 'recommended' flag: {args.slices} slices of "
        f"{args.reviews:,} real reviews, each labelled from a fresh state",
        ["slice", "reviews", "labels", "n", "accuracy", "95% bootstrap", "macro-F1"],
        table,
        data,
    )


if __name__ == "__main__":
    main()
