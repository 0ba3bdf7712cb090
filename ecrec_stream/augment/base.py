"""The augmenter protocol and its deterministic randomness."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class AugmentedText:
    """One augmented variant of the text of example ``source_id``."""

    source_id: str
    augmenter: str
    variant: int
    text: str


def rng_for(source_id: str, augmenter: str, variant: int, seed: int) -> random.Random:
    """A generator seeded by (example id, augmenter, variant, seed): a redelivered example
    yields exactly the same augmented texts.

    >>> rng_for("ex1", "eda", 0, 7).random() == rng_for("ex1", "eda", 0, 7).random()
    True
    """
    digest = hashlib.blake2b(
        f"{source_id}\x1f{augmenter}\x1f{variant}\x1f{seed}".encode(), digest_size=8
    ).digest()
    return random.Random(int.from_bytes(digest, "little"))


@runtime_checkable
class Augmenter(Protocol):
    """Maps (example id, text) pairs to augmented variants; must be deterministic."""

    name: str

    def augment_many(
        self, items: Sequence[tuple[str, str]], *, seed: int
    ) -> list[AugmentedText]: ...


def tokens(text: str) -> list[str]:
    return text.split()


def make_variants(
    name: str,
    variants: int,
    items: Sequence[tuple[str, str]],
    seed: int,
    augment_one: Callable[[str, str, int, int], str],
) -> list[AugmentedText]:
    """Run ``augment_one(source_id, text, variant, seed)`` for each item and variant, keeping
    only outputs that differ from their source."""
    out = []
    for source_id, text in items:
        seen = {text.strip().lower()}
        for v in range(variants):
            new = augment_one(source_id, text, v, seed)
            if new.strip() and new.strip().lower() not in seen:
                seen.add(new.strip().lower())
                out.append(AugmentedText(source_id, name, v, new))
    return out
