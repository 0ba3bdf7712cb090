"""Augmenters: deterministic, meaning-preserving by construction or by the filter."""

from __future__ import annotations

from typing import Any

import pytest

from ecrec_stream.augment import (
    EdaAugmenter,
    MeaningFilter,
    QueryRewriteAugmenter,
    TypoAugmenter,
)
from ecrec_stream.augment.base import AugmentedText
from ecrec_stream.augment.rewrite import toggle_plural

TEXTS = [
    ("e1", "organic whole milk 32 oz"),
    ("e2", "Love this sweater, so soft and comfy"),
    ("e3", "chocolate chip cookies family size"),
    ("e4", "gala apples 3 lb"),
]
AUGMENTERS = [
    EdaAugmenter(variants=2),
    TypoAugmenter(variants=2),
    QueryRewriteAugmenter(variants=2),
]


@pytest.mark.parametrize("augmenter", AUGMENTERS, ids=lambda a: a.name)
def test_conformance(augmenter: Any) -> None:
    out = augmenter.augment_many(TEXTS, seed=5)
    assert out, "changes at least some texts"
    assert out == augmenter.augment_many(TEXTS, seed=5)  # deterministic
    assert out != augmenter.augment_many(TEXTS, seed=6)  # the seed matters
    # one item at a time gives the same as the batch (no hidden state across items)
    assert out == [a for item in TEXTS for a in augmenter.augment_many([item], seed=5)]
    sources = dict(TEXTS)
    for a in out:
        assert a.text.strip().lower() != sources[a.source_id].strip().lower()
        assert a.augmenter == augmenter.name


def test_query_rewrites() -> None:
    rewrite = QueryRewriteAugmenter(variants=6)
    texts = {a.text for a in rewrite.augment_many([("q", "organic whole milk 32 oz")], seed=1)}
    assert texts & {
        "organic whole milk 32oz",
        "org whole milk 32 oz",
        "organic whole milk 32 ounce",
    }
    assert toggle_plural("cookies") == "cookie" and toggle_plural("dress") == "dresses"


def test_meaning_filter_drops_changed_meaning_and_sentiment_flips(minilm: Any) -> None:
    sources = {"a": "red summer dress", "b": "I love this jacket, great quality"}
    augmented = [
        AugmentedText("a", "typo", 0, "red sumemr dress"),
        AugmentedText("a", "eda", 0, "dog food for puppies"),
        AugmentedText("b", "eda", 0, "I hate this jacket, terrible quality"),
    ]

    def lexicon(texts: list[str]) -> list[int]:
        return [0 if "hate" in t else 1 for t in texts]

    filt = MeaningFilter(minilm, min_similarity=0.6)
    kept = filt.filter_many(augmented, sources, label_of=lexicon)
    assert [a.text for a, _ in kept] == ["red sumemr dress"]
    counts = filt.counts.as_dict()
    assert counts["typo"]["kept"] == 1
    assert counts["eda"]["dropped_similarity"] + counts["eda"]["dropped_flip"] == 2


def test_meaning_filter_drops_a_sentiment_flip_that_passes_on_similarity(minilm: Any) -> None:
    # A threshold of -1 admits every variant on similarity, so only the flip check can drop.
    sources = {"b": "I love this jacket, great quality"}
    augmented = [
        AugmentedText("b", "eda", 0, "I love this jacket, good quality"),
        AugmentedText("b", "eda", 1, "I hate this jacket, terrible quality"),
    ]

    def lexicon(texts: list[str]) -> list[int]:
        return [0 if "hate" in t else 1 for t in texts]

    filt = MeaningFilter(minilm, min_similarity=-1.0)
    kept = filt.filter_many(augmented, sources, label_of=lexicon)
    assert [a.variant for a, _ in kept] == [0]
    assert filt.counts.as_dict()["eda"] == {
        "kept": 1,
        "dropped_similarity": 0,
        "dropped_flip": 1,
    }


def test_query_rewrite_pluralises_only_the_head_noun() -> None:
    rewrite = QueryRewriteAugmenter(variants=10)
    queries = [("a", "kitchen cart"), ("b", "husky shelving"), ("c", "adidas pants")]
    texts = {a.text for a in rewrite.augment_many(queries, seed=3)}
    texts |= {a.text for s in range(20) for a in rewrite.augment_many(queries, seed=s)}
    assert "kitchen carts" in texts
    for wrong in (
        "kitchens cart",
        "huskies shelving",
        "husky shelvings",
        "adida pants",
        "adidas pant",
    ):
        assert wrong not in texts


def test_perturbations_change_one_thing_and_units_split_only_real_units() -> None:
    from ecrec_stream.augment.perturb import PERTURBATIONS, perturb

    assert perturb("san francisco 49ers", "units") == "san francisco 49ers"  # not "49 ers"
    assert perturb("oat milk 32oz", "units") == "oat milk 32 oz"
    assert perturb("Kitchen Cart", "plural") == "kitchen carts"
    for kind in PERTURBATIONS:  # deterministic per query, kind and seed
        assert perturb("organic whole milk 32 oz", kind, 3) == perturb(
            "organic whole milk 32 oz", kind, 3
        )
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb("milk", "leetspeak")
