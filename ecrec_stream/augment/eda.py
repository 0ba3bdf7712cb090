"""EDA (Wei & Zou, 2019): synonym replacement, random insertion, random swap, random deletion."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ecrec_stream.augment.base import AugmentedText, make_variants, rng_for, tokens
from ecrec_stream.augment.synonyms import synonyms_of

OPERATIONS = ("synonym", "insert", "swap", "delete")


def _synonym(words: list[str], rng: random.Random, n: int) -> list[str]:
    out = list(words)
    spots = [i for i, w in enumerate(out) if synonyms_of(w.strip(".,!?"))]
    rng.shuffle(spots)
    for i in spots[:n]:
        out[i] = rng.choice(synonyms_of(out[i].strip(".,!?")))
    return out


def _insert(words: list[str], rng: random.Random, n: int) -> list[str]:
    out = list(words)
    candidates = [s for w in words for s in synonyms_of(w.strip(".,!?"))]
    for _ in range(min(n, len(candidates))):
        out.insert(rng.randrange(len(out) + 1), rng.choice(candidates))
    return out


def _swap(words: list[str], rng: random.Random, n: int) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def _delete(words: list[str], rng: random.Random, p: float) -> list[str]:
    if len(words) < 2:
        return list(words)
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


class EdaAugmenter:
    """Each variant applies one EDA operation chosen at random; ``alpha`` sets how much of the
    text changes (the paper's alpha: n = max(1, alpha * words))."""

    name = "eda"

    def __init__(self, *, alpha: float = 0.1, variants: int = 1) -> None:
        self.alpha = alpha
        self.variants = variants

    def augment_one(self, source_id: str, text: str, variant: int, seed: int) -> str:
        rng = rng_for(source_id, self.name, variant, seed)
        words = tokens(text)
        n = max(1, int(self.alpha * len(words)))
        op = rng.choice(OPERATIONS)
        if op == "synonym":
            out = _synonym(words, rng, n)
        elif op == "insert":
            out = _insert(words, rng, n)
        elif op == "swap":
            out = _swap(words, rng, n)
        else:
            out = _delete(words, rng, self.alpha)
        return " ".join(out)

    def augment_many(self, items: Sequence[tuple[str, str]], *, seed: int) -> list[AugmentedText]:
        return make_variants(self.name, self.variants, items, seed, self.augment_one)
