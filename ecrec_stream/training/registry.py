"""The model registry: versioned, checksummed model directories, on disk or in an object store.

Layout under the registry root (a directory, or a bucket prefix: ``ECREC_TRAINING__REGISTRY_URL``
names an S3-compatible store, and the directory is then this host's verified cache)::

    CURRENT                      the serving version (replaced atomically; rollback = rewrite it)
    CURRENT_FUSION               the serving learned fusion of hybrid search, if any
    <version>/                   one published model (version = content digest of its weights)
        manifest.json            version, name, parent version, training window, metrics,
                                 sha256 of every other file
        model.safetensors, config.json, tokenizer files, modules.json ...

Weights are safetensors only: a directory holding a pickle-based weight file (``*.bin``,
``*.pt``, ``*.pkl``) is refused at publication and at load. A version is written into a
temporary directory and renamed into place, so a crash leaves no half-published model; a
loader verifies every checksum (and that the loaded weights hash to the version) before the
model may serve. With a store, a version is uploaded file by file with its manifest last (a
version without a manifest is not published), and a host downloads it into a temporary directory
of its cache and verifies it there exactly as a local one: nothing is trusted because it came
from the store. Pure domain code: torch, sentence-transformers and boto3 are imported when they
are needed, never Kafka.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ecrec_stream.exceptions import EcrecError

if TYPE_CHECKING:
    from ecrec_stream.config import EmbeddingSettings, Settings
    from ecrec_stream.embedding import SentenceTransformerEncoder
    from ecrec_stream.index.ranker import LearnedFusion
    from ecrec_stream.training.stores import ObjectStore

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
CURRENT_FUSION = "CURRENT_FUSION"
FUSION_FILE = "fusion.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactError(EcrecError):
    """A model artifact is missing, tampered with, or not loadable safely."""


class ModelManifest(BaseModel):
    """What the registry knows about one published version."""

    model_config = ConfigDict(frozen=True)

    version: str
    name: str
    artifact: Literal["encoder", "fusion"] = "encoder"
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
    """Publish, verify, list, load and roll back model versions under ``root``, and in
    ``store`` when one is given (``root`` is then this host's cache of it)."""

    def __init__(self, root: Path, store: ObjectStore | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store

    @property
    def location(self) -> str:
        """Where versions are published (the store's URL, or the directory)."""
        return self.store.url if self.store is not None else str(self.root)

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
        self._upload(version)
        if make_current:
            self.set_current(version)
        return manifest

    def set_current(self, version: str) -> None:
        """Make ``version`` the serving one of its kind, encoder or fusion (verified first);
        this is also the rollback."""
        pointer = CURRENT_FUSION if self.verify(version).artifact == "fusion" else CURRENT
        tmp = self.root / f".{pointer}.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / pointer)
        if self.store is not None:
            self.store.put_bytes(pointer, version.encode())

    def publish_fusion(
        self,
        fusion: LearnedFusion,
        *,
        parent_version: str | None = None,
        training_window: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        make_current: bool = True,
    ) -> ModelManifest:
        """Publish a learned fusion (its JSON, version = its digest) like a model."""
        version = fusion.version
        if not (self.root / version).exists():
            tmp = self.root / f".tmp-{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / FUSION_FILE).write_text(fusion.to_json())
            manifest = ModelManifest(
                version=version,
                name="learned-fusion",
                artifact="fusion",
                parent_version=parent_version,
                training_window=training_window or {},
                metrics=metrics or {},
                files={FUSION_FILE: _sha256(tmp / FUSION_FILE)},
            )
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            os.replace(tmp, self.root / version)
        self._upload(version)
        if make_current:
            self.set_current(version)
        return self.manifest(version)

    def load_fusion(self, version: str) -> LearnedFusion:
        """The verified learned fusion ``version`` (its weights must hash to the version)."""
        from ecrec_stream.index.ranker import LearnedFusion

        manifest = self.verify(version)
        if manifest.artifact != "fusion":
            raise ArtifactError(f"{version} is an {manifest.artifact}, not a fusion")
        try:
            return LearnedFusion.from_json((self.root / version / FUSION_FILE).read_text())
        except (ValueError, KeyError) as exc:
            raise ArtifactError(f"{version}: not a loadable fusion: {exc}") from exc

    def current_fusion(self) -> str | None:
        """The serving learned fusion's version, if one was published."""
        if self.store is not None:
            data = self.store.get_bytes(CURRENT_FUSION)
            return data.decode().strip() if data else None
        path = self.root / CURRENT_FUSION
        return path.read_text().strip() if path.exists() else None

    def _upload(self, version: str) -> None:
        """Copy a local version to the store: its files, then its manifest (which publishes
        it); a version the store already has is left as it is (versions are immutable)."""
        if self.store is None or self.store.get_bytes(f"{version}/{MANIFEST}") is not None:
            return
        directory = self.root / version
        for path in _files(directory):
            self.store.put_file(f"{version}/{path.relative_to(directory).as_posix()}", path)
        self.store.put_file(f"{version}/{MANIFEST}", directory / MANIFEST)

    def _fetch(self, version: str) -> None:
        """Bring a published version from the store into the cache (every object under it,
        so an added file is seen by :meth:`verify`); a cached version is kept."""
        final = self.root / version
        if self.store is None or (final / MANIFEST).exists():
            return
        if not _is_version_name(version):
            raise ArtifactError(f"not a version name: {version!r}")
        if self.store.get_bytes(f"{version}/{MANIFEST}") is None:
            raise ArtifactError(f"no published version {version!r} in {self.store.url}")
        tmp = self.root / f".fetch-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for key in self.store.list_keys(f"{version}/"):
                rel = Path(key[len(version) + 1 :])
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise ArtifactError(f"{version}: unsafe object name {key!r} in the store")
                self.store.get_file(key, tmp / rel)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------
    def current(self) -> str | None:
        if self.store is not None:
            data = self.store.get_bytes(CURRENT)
            return data.decode().strip() if data else None
        path = self.root / CURRENT
        return path.read_text().strip() if path.exists() else None

    def has(self, version: str) -> bool:
        """Whether ``version`` is published here (not verified: :meth:`verify` does that)."""
        if (self.root / version / MANIFEST).exists():
            return True
        return (
            self.store is not None
            and _is_version_name(version)
            and self.store.get_bytes(f"{version}/{MANIFEST}") is not None
        )

    def manifest(self, version: str) -> ModelManifest:
        self._fetch(version)
        path = self.root / version / MANIFEST
        if not path.exists():
            raise ArtifactError(f"no published version {version!r} under {self.location}")
        return _parse_manifest(version, path.read_bytes())

    def versions(self) -> list[ModelManifest]:
        """Every published version, oldest first."""
        if self.store is not None:
            found = []
            for key in self.store.list_keys():
                version, _, name = key.partition("/")
                data = self.store.get_bytes(key) if name == MANIFEST else None
                if data is not None and _is_version_name(version):
                    found.append(_parse_manifest(version, data))
        else:
            found = [
                self.manifest(p.name)
                for p in self.root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
            ]
        return sorted(found, key=lambda m: m.created_at)

    def verify(self, version: str) -> ModelManifest:
        """Check every file against the manifest: none missing, none changed, none added, no
        pickle-based weights. Raises :class:`ArtifactError`."""
        manifest = self.manifest(version)  # fetched from the store first, if there is one
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

        if self.verify(version).artifact != "encoder":
            raise ArtifactError(f"{version} is a fusion, not an encoder")
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

        if self.verify(version).artifact != "encoder":
            raise ArtifactError(f"{version} is a fusion, not an encoder")
        model = SentenceTransformer(str(self.root / version), device=device)
        if weights_digest(model) != version:
            raise ArtifactError(f"{version}: loaded weights do not hash to the version")
        return model


def _is_version_name(name: str) -> bool:
    """Version names are content digests: hex, nothing that could leave the cache directory."""
    return bool(name) and all(c in "0123456789abcdef" for c in name)


def _parse_manifest(version: str, data: bytes) -> ModelManifest:
    try:
        manifest = ModelManifest.model_validate_json(data)
    except ValueError as exc:
        raise ArtifactError(f"unreadable manifest of {version!r}: {exc}") from exc
    if manifest.version != version:
        raise ArtifactError(f"the manifest under {version!r} names {manifest.version!r}")
    return manifest


def open_registry(settings: Settings) -> ModelRegistry:
    """The registry ``settings`` name: ``training.registry_url`` (an object store, cached in
    the registry directory) or the registry directory alone."""
    url = settings.training.registry_url
    if url is None:
        return ModelRegistry(settings.registry_dir)
    from ecrec_stream.training.stores import open_store

    return ModelRegistry(settings.registry_dir, open_store(url))
