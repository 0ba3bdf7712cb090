"""The model registry with a real (tiny) sentence-transformers model: publish, verify, refuse
tampered or pickle-based artifacts, list, roll back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecrec_stream.embedding import weights_digest
from ecrec_stream.training.registry import ArtifactError, ModelRegistry
from tests.helpers import tiny_sentence_model


def test_publish_load_list_and_roll_back(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    base = tiny_sentence_model(tmp_path / "base")
    v1 = registry.publish(base, name="tiny", metrics={"ndcg@10": 0.5})
    assert v1.version == weights_digest(base) and registry.current() == v1.version
    assert any(f.endswith(".safetensors") for f in v1.files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in v1.files)

    with torch.no_grad():  # a "fine-tune": same name, other weights, another version
        next(base.parameters()).add_(0.01)
    v2 = registry.publish(
        base,
        name="tiny",
        parent_version=v1.version,
        training_window={"ecrec.examples": {"0": [0, 99]}},
    )
    assert v2.version != v1.version and v2.parent_version == v1.version
    assert registry.current() == v2.version
    assert [m.version for m in registry.versions()] == [v1.version, v2.version]
    assert registry.publish(base, name="tiny").version == v2.version  # idempotent

    loaded = registry.load(v2.version)
    texts = ["oat milk", "dog food"]
    assert np.allclose(loaded.encode(texts), base.encode(texts), atol=1e-5)

    registry.set_current(v1.version)  # rollback is one call
    assert registry.current() == v1.version


def test_tampered_or_pickled_artifacts_are_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    manifest = registry.publish(tiny_sentence_model(tmp_path / "base"), name="tiny")
    directory = tmp_path / "models" / manifest.version
    weights = next(directory.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        registry.load(manifest.version)
    with pytest.raises(ArtifactError):
        registry.set_current(manifest.version)

    other = registry.publish(tiny_sentence_model(tmp_path / "b2", seed=1), name="tiny")
    (tmp_path / "models" / other.version / "extra.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match="extra"):
        registry.verify(other.version)
    with pytest.raises(ArtifactError, match="no published version"):
        registry.load("0" * 16)


def test_models_command_lists_versions_and_rolls_back(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workers.cli import app

    registry = ModelRegistry(tmp_path / "models")
    base = tiny_sentence_model(tmp_path / "base")
    v1 = registry.publish(base, name="tiny", metrics={"ndcg@10": 0.41})
    with torch.no_grad():
        next(base.parameters()).add_(0.01)
    v2 = registry.publish(base, name="tiny", parent_version=v1.version)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "--registry", str(registry.root)])
    assert listed.exit_code == 0, listed.output
    as_json = runner.invoke(app, ["models", "--registry", str(registry.root), "--json"])
    rows = json.loads(as_json.output)
    assert [(r["version"], r["serving"]) for r in rows] == [(v1.version, False), (v2.version, True)]
    assert rows[0]["metrics"] == {"ndcg@10": 0.41} and rows[1]["parent_version"] == v1.version
    rolled = runner.invoke(app, ["models", "--registry", str(registry.root), "--use", v1.version])
    assert rolled.exit_code == 0 and registry.current() == v1.version
    refused = runner.invoke(app, ["models", "--registry", str(registry.root), "--use", "nope"])
    assert refused.exit_code == 1 and registry.current() == v1.version
