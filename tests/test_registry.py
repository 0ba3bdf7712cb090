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


# -- an object store shared by hosts that share no directory ----------------------------------
def test_hosts_share_models_through_an_object_store_and_verify_what_they_download(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    import boto3

    from ecrec_stream.training.stores import S3Store

    url = f"s3://{s3_env['BUCKET']}/shop-a"
    trainer_host = ModelRegistry(tmp_path / "trainer-cache", S3Store(url))
    replica_host = ModelRegistry(tmp_path / "replica-cache", S3Store(url))
    base = tiny_sentence_model(tmp_path / "base")
    v1 = trainer_host.publish(base, name="tiny", metrics={"ndcg@10": 0.5})
    with torch.no_grad():
        next(base.parameters()).add_(0.01)
    v2 = trainer_host.publish(base, name="tiny", parent_version=v1.version)

    assert replica_host.current() == v2.version and replica_host.has(v1.version)
    assert [m.version for m in replica_host.versions()] == [v1.version, v2.version]
    assert not (tmp_path / "replica-cache" / v2.version).exists()  # nothing fetched yet
    loaded = replica_host.load(v2.version)  # downloaded, verified, hashed to the version
    texts = ["oat milk", "dog food"]
    assert np.allclose(loaded.encode(texts), base.encode(texts), atol=1e-5)
    replica_host.set_current(v1.version)  # a rollback from any host is seen by every host
    assert trainer_host.current() == v1.version

    # What a store serves is verified like a local directory: a changed object, an added
    # pickle, a manifest under another name and a key that leaves the cache are all refused.
    s3 = boto3.client("s3")
    bucket, prefix = s3_env["BUCKET"], "shop-a/"
    weights = next(k for k in S3Store(url).list_keys(v2.version) if k.endswith(".safetensors"))
    body = bytearray(s3.get_object(Bucket=bucket, Key=prefix + weights)["Body"].read())
    body[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=prefix + weights, Body=bytes(body))
    with pytest.raises(ArtifactError, match="checksum"):
        ModelRegistry(tmp_path / "fresh-1", S3Store(url)).load(v2.version)
    s3.put_object(Bucket=bucket, Key=f"{prefix}{v1.version}/extra.pt", Body=b"\x80\x04")
    with pytest.raises(ArtifactError, match="extra"):
        ModelRegistry(tmp_path / "fresh-2", S3Store(url)).verify(v1.version)
    manifest = s3.get_object(Bucket=bucket, Key=f"{prefix}{v1.version}/manifest.json")["Body"]
    s3.put_object(Bucket=bucket, Key=f"{prefix}{'a' * 16}/manifest.json", Body=manifest.read())
    with pytest.raises(ArtifactError, match="names"):
        ModelRegistry(tmp_path / "fresh-3", S3Store(url)).versions()
    s3.put_object(Bucket=bucket, Key=f"{prefix}{'b' * 16}/manifest.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key=f"{prefix}{'b' * 16}/../../escape", Body=b"x")
    with pytest.raises(ArtifactError):
        ModelRegistry(tmp_path / "fresh-4", S3Store(url)).verify("b" * 16)
    assert not (tmp_path / "escape").exists()
    with pytest.raises(ArtifactError, match="not a version name"):
        ModelRegistry(tmp_path / "fresh-5", S3Store(url)).verify("../../etc")


def test_registry_url_is_checked_and_an_unreachable_store_says_so(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from ecrec_stream.config import load_settings
    from ecrec_stream.training.registry import open_registry
    from ecrec_stream.training.stores import StoreError

    with pytest.raises(ValidationError, match="registry_url"):
        load_settings(training={"registry_url": "ftp://models"})
    settings = load_settings(
        data_dir=str(tmp_path), training={"registry_url": "s3://models/shop-a"}
    )
    registry = open_registry(settings)
    assert registry.location == "s3://models/shop-a" and registry.root == tmp_path / "models"
    import os

    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens there
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "x")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        with pytest.raises(StoreError, match="s3://models/shop-a"):
            open_registry(settings).current()
    finally:
        del os.environ["AWS_ENDPOINT_URL"]
