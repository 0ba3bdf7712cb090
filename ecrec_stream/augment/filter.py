"""The meaning filter: an augmented text is kept only if it still means what its source meant."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ecrec_stream.augment.base import AugmentedText
from ecrec_stream.embedding import Encoder


@dataclass
class FilterCounts:
    """Kept and dropped augmented texts per augmenter (and why they were dropped)."""

    kept: Counter[str] = field(default_factory=Counter)
    dropped_similarity: Counter[str] = field(default_factory=Counter)
    dropped_flip: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        names = set(self.kept) | set(self.dropped_similarity) | set(self.dropped_flip)
        return {
            n: {
                "kept": self.kept[n],
                "dropped_similarity": self.dropped_similarity[n],
                "dropped_flip": self.dropped_flip[n],
            }
            for n in sorted(names)
        }


class MeaningFilter:
    """Keeps an augmented text when its embedding cosine to the source is at least
    ``min_similarity`` and, when a ``label_of`` function is given (the text-sentiment vote for
    sentiment examples), the label does not flip (an abstaining vote never counts as a flip)."""

    def __init__(self, encoder: Encoder, *, min_similarity: float = 0.8) -> None:
        self.encoder = encoder
        self.min_similarity = min_similarity
        self.counts = FilterCounts()

    def filter_many(
        self,
        augmented: Sequence[AugmentedText],
        sources: dict[str, str],
        *,
        label_of: Callable[[list[str]], list[int]] | None = None,
    ) -> list[tuple[AugmentedText, float]]:
        """The kept texts with their similarity to the source."""
        if not augmented:
            return []
        src = self.encoder.encode([sources[a.source_id] for a in augmented])
        new = self.encoder.encode([a.text for a in augmented])
        sims = np.einsum("ij,ij->i", src, new)
        flips = [False] * len(augmented)
        if label_of is not None:
            before = label_of([sources[a.source_id] for a in augmented])
            after = label_of([a.text for a in augmented])
            flips = [b >= 0 and a >= 0 and a != b for b, a in zip(before, after, strict=True)]
        kept = []
        for aug, sim, flip in zip(augmented, sims, flips, strict=True):
            if sim < self.min_similarity:
                self.counts.dropped_similarity[aug.augmenter] += 1
            elif flip:
                self.counts.dropped_flip[aug.augmenter] += 1
            else:
                self.counts.kept[aug.augmenter] += 1
                kept.append((aug, float(sim)))
        return kept
