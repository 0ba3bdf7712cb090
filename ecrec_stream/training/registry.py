"""The model registry: versioned, checksummed model directories on disk.

Layout under the registry root::

    CURRENT                      the serving version (replaced atomically; rollback = rewrite it)
    <version>/                   one published model (version = content digest of its weights)
        manifest.json            version, name, parent version, training window, metrics,
                                 sha256 of every other file
        model.safetensors, config.json, tokenizer files, modules.json ...

Weights are safetensors only: a directory holding a pickle-based weight file (``*.bin``,
``*.pt``, ``*.pkl``) is refused at publication and at load. A version is written into a
temporary directory and renamed into place, so a crash leaves no half-published model; a
loader verifies every checksum (and that the loaded weights hash to the version) before the
model may serve. Pure domain code: torch and sentence-transformers are imported when a model is
saved or loaded, never Kafka.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ecrec_stream.exceptions import EcrecError

if TYPE_CHECKING:
    from ecrec_stream.config import EmbeddingSettings
    from ecrec_stream.embedding import SentenceTransformerEncoder

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactError(EcrecError):
    """A model artifact is missing, tampered with, or not loadable safely."""


class ModelManifest(BaseModel):
    """What the registry knows about one published version."""

    model_config = ConfigDict(frozen=True)

    version: str
    name: str
    parent_version: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # the training data: topic -> partition -> [first, last] offsets, and event-time bounds
    training_window: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


class ModelRegistry:
    """Publish, verify, list, load and roll back model versions under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- publication ---------------------------------------------------------------------
    def publish(
        self,
        model: Any,
        *,
        name: str,
        parent_version: str | None = None,
        training_window: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        make_current: bool = True,
    ) -> ModelManifest:
        """Save a sentence-transformers ``model`` as a new version (safetensors), with its
        manifest; returns it. Publishing the same weights twice returns the existing version."""
        from ecrec_stream.embedding import weights_digest

        version = weights_digest(model)
        final = self.root / version
        if final.exists():
            manifest = self.verify(version)
        else:
            tmp = self.root / f".tmp-{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save(str(tmp), safe_serialization=True)
            unsafe = [p.name for p in _files(tmp) if p.suffix in PICKLE_SUFFIXES]
            if unsafe:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ArtifactError(f"refusing to publish pickle-based files: {unsafe}")
            manifest = ModelManifest(
                version=version,
                name=name,
                parent_version=parent_version,
                training_window=training_window or {},
                metrics=metrics or {},
                files={str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)},
            )
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            os.replace(tmp, final)
        if make_current:
            self.set_current(version)
        return manifest

    def set_current(self, version: str) -> None:
        """Make ``version`` the serving one (verified first); this is also the rollback."""
        self.verify(version)
        tmp = self.root / f".{CURRENT}.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / CURRENT)

    # -- reading -------------------------------------------------------------------------
    def current(self) -> str | None:
        path = self.root / CURRENT
        return path.read_text().strip() if path.exists() else None

    def manifest(self, version: str) -> ModelManifest:
        path = self.root / version / MANIFEST
        if not path.exists():
            raise ArtifactError(f"no published version {version!r} under {self.root}")
        try:
            return ModelManifest.model_validate_json(path.read_text())
        except ValueError as exc:
            raise ArtifactError(f"unreadable manifest of {version!r}: {exc}") from exc

    def versions(self) -> list[ModelManifest]:
        """Every published version, oldest first."""
        found = [
            self.manifest(p.name)
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        ]
        return sorted(found, key=lambda m: m.created_at)

    def verify(self, version: str) -> ModelManifest:
        """Check every file against the manifest: none missing, none changed, none added, no
        pickle-based weights. Raises :class:`ArtifactError`."""
        manifest = self.manifest(version)
        directory = self.root / version
        present = {str(p.relative_to(directory)): p for p in _files(directory)}
        if set(present) != set(manifest.files):
            extra = sorted(set(present) - set(manifest.files))
            missing = sorted(set(manifest.files) - set(present))
            raise ArtifactError(f"{version}: files differ (extra {extra}, missing {missing})")
        for rel, digest in manifest.files.items():
            if Path(rel).suffix in PICKLE_SUFFIXES:
                raise ArtifactError(f"{version}: pickle-based file {rel} is not loaded")
            if _sha256(present[rel]) != digest:
                raise ArtifactError(f"{version}: checksum mismatch in {rel}")
        return manifest

    def load_encoder(self, version: str, settings: EmbeddingSettings) -> SentenceTransformerEncoder:
        """A serving encoder for ``version``, verified (files and weights digest)."""
        from ecrec_stream.embedding import SentenceTransformerEncoder

        self.verify(version)
        encoder = SentenceTransformerEncoder(
            settings.model_copy(
                update={"model": str(self.root / version), "allow_downloads": False}
            )
        )
        if encoder.version != version:
            raise ArtifactError(f"{version}: loaded weights hash to {encoder.version}")
        return encoder

    def load(self, version: str, device: str = "cpu") -> Any:
        """The verified sentence-transformers model of ``version`` (its loaded weights must
        hash to the version, too)."""
        from sentence_transformers import SentenceTransformer

        from ecrec_stream.embedding import weights_digest

        self.verify(version)
        model = SentenceTransformer(str(self.root / version), device=device)
        if weights_digest(model) != version:
            raise ArtifactError(f"{version}: loaded weights do not hash to the version")
        return model
