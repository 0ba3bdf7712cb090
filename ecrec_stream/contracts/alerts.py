"""``ecrec.alerts``: retraining alerts from the drift monitor, retrain requests from the CLI
and rejections from the trainer, one discriminated union on ``kind``."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ecrec_stream.contracts.drift import DriftReport

ALERT_SCHEMA_VERSION: Literal[1] = 1


class _Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = ALERT_SCHEMA_VERSION
    alert_id: str


class MovedCategory(BaseModel):
    """A category whose share moved between a detector's reference and its window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector: str
    category: str
    before: float
    after: float


class RetrainingAlert(_Alert):
    """A drift detector fired: which one, on which window, with the evidence (every detector's
    latest result), the categories that moved, sample texts from the window and the serving
    model's version. ``alert_id`` is derived from the model version, detector and window, so a
    redelivered window yields the same id."""

    kind: Literal["retrain"] = "retrain"
    detector: str
    reason: str
    model_version: str
    window_start: datetime
    window_end: datetime
    evidence: list[DriftReport]
    moved_categories: list[MovedCategory]
    samples: list[str]


class RetrainRequest(_Alert):
    """``ecrec-stream retrain``: retrain now, whatever the detectors say."""

    kind: Literal["retrain_request"] = "retrain_request"
    reason: str
    requested_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def new(cls, reason: str) -> RetrainRequest:
        return cls(alert_id=f"request-{uuid.uuid4().hex[:16]}", reason=reason)


class RetrainRejected(_Alert):
    """The trainer's answer when a retrain did not publish: the gate's reasons and figures."""

    kind: Literal["retrain_rejected"] = "retrain_rejected"
    reason: str
    trigger: str | None = None
    serving_version: str | None = None
    summary: dict[str, Any] = Field(default_factory=dict)


Alert = Annotated[RetrainingAlert | RetrainRequest | RetrainRejected, Field(discriminator="kind")]
ALERT_ADAPTER: TypeAdapter[RetrainingAlert | RetrainRequest | RetrainRejected] = TypeAdapter(Alert)


def parse_alert(raw: bytes | str) -> RetrainingAlert | RetrainRequest | RetrainRejected:
    """Validate one ``ecrec.alerts`` message (raises ``pydantic.ValidationError``).

    >>> parse_alert(RetrainRequest(alert_id="request-1", reason="manual").model_dump_json()).kind
    'retrain_request'
    """
    return ALERT_ADAPTER.validate_json(raw)
