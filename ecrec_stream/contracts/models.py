"""``ecrec.models``: a model version was published (or rolled back to) and now serves."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ecrec_stream.training.registry import ModelManifest

MODELS_SCHEMA_VERSION: Literal[1] = 1


class ModelPublication(BaseModel):
    """The ``ecrec.models`` message: a version was published and is now the serving one:
    the encoder, or the hybrid search's learned fusion (``artifact``). Replicas load it from
    their registry by ``version`` and verify it there; the message itself is never trusted
    for the weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = MODELS_SCHEMA_VERSION
    kind: Literal["published", "rollback"] = "published"
    artifact: Literal["encoder", "fusion"] = "encoder"
    version: str
    name: str
    parent_version: str | None = None
    published_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    metrics: dict[str, float] = Field(default_factory=dict)
    trigger: str | None = None

    @classmethod
    def of(
        cls,
        manifest: ModelManifest,
        trigger: str | None = None,
        kind: Literal["published", "rollback"] = "published",
    ) -> ModelPublication:
        return cls(
            kind=kind,
            artifact=manifest.artifact,
            version=manifest.version,
            name=manifest.name,
            parent_version=manifest.parent_version,
            metrics=manifest.metrics,
            trigger=trigger,
        )
