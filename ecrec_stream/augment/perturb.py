"""Query perturbations for robustness checks: one kind of change at a time (a typo, another
word order, the head noun's number, unit spelling, an abbreviation, a synonym), deterministic
per query, kind and seed. They reuse the augmenters' rules; what differs from augmentation is
that each kind is applied alone, so a drop in retrieval quality can be pinned on it."""

from __future__ import annotations

import random
from collections.abc import Callable

from ecrec_stream.augment.base import rng_for
from ecrec_stream.augment.eda import _synonym
from ecrec_stream.augment.noise import TypoAugmenter
from ecrec_stream.augment.rewrite import _abbreviate, _plural, _reorder, _rewrite_units


def _typo(query: str, rng: random.Random) -> str:
    return TypoAugmenter(rate=0.15).augment_one("", query, 0, rng.randrange(2**31))


def _one_synonym(query: str, rng: random.Random) -> str:
    return " ".join(_synonym(query.split(), rng, 1))


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "typo": _typo,
    "word_order": _reorder,
    "plural": _plural,
    "units": _rewrite_units,
    "abbreviation": _abbreviate,
    "synonym": _one_synonym,
}


def perturb(query: str, kind: str, seed: int = 0) -> str:
    """``query`` (lower-cased) changed by one perturbation ``kind``; unchanged when the kind
    does not apply (no unit, no countable head noun, no known synonym...).

    >>> perturb("oat milk 32 oz", "units")
    'oat milk 32oz'
    >>> perturb("kitchen cart", "plural")
    'kitchen carts'
    >>> perturb("oat milk", "word_order")
    'milk oat'
    """
    try:
        rule = PERTURBATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown perturbation {kind!r} ({', '.join(PERTURBATIONS)})") from None
    text = query.lower().strip()
    return rule(text, rng_for(text, kind, 0, seed))
