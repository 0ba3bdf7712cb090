"""Drift detection on the live streams: embedding MMD, category-mix Jensen-Shannon and River
rate detectors behind one protocol, calibrated on the stream's own time structure, and the
monitor that turns their windows into retraining alerts."""

from ecrec_stream.drift.base import DriftDetector, DriftResult, gamma_threshold
from ecrec_stream.drift.categories import CategoryMixJS
from ecrec_stream.drift.embedding import EmbeddingMMD, mmd2
from ecrec_stream.drift.monitor import (
    DriftMonitor,
    MonitorStep,
    RetrainingAlert,
    alert_id,
)
from ecrec_stream.drift.rates import RiverRate

__all__ = [
    "CategoryMixJS",
    "DriftDetector",
    "DriftMonitor",
    "DriftResult",
    "EmbeddingMMD",
    "MonitorStep",
    "RetrainingAlert",
    "RiverRate",
    "alert_id",
    "gamma_threshold",
    "mmd2",
]
