"""``ecrec.drift``: one report per closed window of one drift detector."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DRIFT_SCHEMA_VERSION: Literal[1] = 1


class DriftReport(BaseModel):
    """A detector's closed window: its statistic against its threshold (NaN before a River
    detector's first signal is sent as ``null``), the window's event-time bounds (epoch
    seconds), its size and detector-specific details, under the serving model's version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = DRIFT_SCHEMA_VERSION
    detector: str
    statistic: float
    threshold: float | None
    drifted: bool
    window: int
    window_start: float
    window_end: float
    n: int
    details: dict[str, Any] = Field(default_factory=dict)
    model_version: str | None = None

    @field_validator("threshold", mode="before")
    @classmethod
    def _nan_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, float) and value != value else value
