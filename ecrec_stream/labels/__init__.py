"""Weak supervision: label functions vote, a label model combines the votes into training
examples with a confidence used as a training weight."""

from ecrec_stream.labels.base import ABSTAIN, LabelFunction, Vote
from ecrec_stream.labels.model import LabelModel

__all__ = ["ABSTAIN", "LabelFunction", "LabelModel", "Vote"]
