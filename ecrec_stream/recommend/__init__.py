"""Recommendations from live behaviour: decayed co-visitation, next item for a session,
bought together, content neighbours and popularity, fused."""

from ecrec_stream.recommend.covisit import CoVisitation
from ecrec_stream.recommend.popularity import DecayedPopularity
from ecrec_stream.recommend.recommender import (
    ACTION_WEIGHT,
    ObserveStep,
    Recommendation,
    Recommender,
)
from ecrec_stream.recommend.sessions import LiveSession, SessionTracker

__all__ = [
    "ACTION_WEIGHT",
    "CoVisitation",
    "DecayedPopularity",
    "LiveSession",
    "ObserveStep",
    "Recommendation",
    "Recommender",
    "SessionTracker",
]
