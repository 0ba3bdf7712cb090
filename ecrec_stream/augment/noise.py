"""Typo and keyboard noise: what shoppers type on phones."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ecrec_stream.augment.base import AugmentedText, make_variants, rng_for

_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = [_row[i] for i in (_c - 1, _c + 1) if 0 <= i < len(_row)]
        for _rr in (_r - 1, _r + 1):
            if 0 <= _rr < len(_ROWS):
                near += [_ROWS[_rr][i] for i in (_c - 1, _c, _c + 1) if 0 <= i < len(_ROWS[_rr])]
        NEIGHBOURS[_ch] = "".join(near)


def typo(word: str, rng: random.Random) -> str:
    """One keyboard slip in ``word``: a neighbouring key, a dropped, doubled or swapped letter."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if len(letters) < 3:
        return word
    i = rng.choice(letters[1:])  # keep the first letter, as people mostly do
    kind = rng.randrange(4)
    ch = word[i].lower()
    if kind == 0 and ch in NEIGHBOURS:
        return word[:i] + rng.choice(NEIGHBOURS[ch]) + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    if i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word


class TypoAugmenter:
    """Puts a typo into about ``rate`` of the words (at least one)."""

    name = "typo"

    def __init__(self, *, rate: float = 0.15, variants: int = 1) -> None:
        self.rate = rate
        self.variants = variants

    def augment_one(self, source_id: str, text: str, variant: int, seed: int) -> str:
        rng = rng_for(source_id, self.name, variant, seed)
        words = text.split()
        eligible = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
        if not eligible:
            return text
        n = max(1, round(self.rate * len(eligible)))
        for i in rng.sample(eligible, min(n, len(eligible))):
            words[i] = typo(words[i], rng)
        return " ".join(words)

    def augment_many(self, items: Sequence[tuple[str, str]], *, seed: int) -> list[AugmentedText]:
        return make_variants(self.name, self.variants, items, seed, self.augment_one)
