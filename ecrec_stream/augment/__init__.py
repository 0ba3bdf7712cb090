"""Text augmenters (a batch in, a batch out, deterministic per example id and seed) and the
meaning filter every augmented text must pass."""

from ecrec_stream.augment.base import AugmentedText, Augmenter, rng_for
from ecrec_stream.augment.eda import EdaAugmenter
from ecrec_stream.augment.filter import MeaningFilter
from ecrec_stream.augment.noise import TypoAugmenter
from ecrec_stream.augment.rewrite import QueryRewriteAugmenter

__all__ = [
    "AugmentedText",
    "Augmenter",
    "EdaAugmenter",
    "MeaningFilter",
    "QueryRewriteAugmenter",
    "TypoAugmenter",
    "rng_for",
]
