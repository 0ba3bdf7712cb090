"""Settings from ECREC_* variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ecrec_stream.config import Settings, bootstrap_servers, load_settings
from ecrec_stream.exceptions import ConfigError


def test_env_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECREC_BROKER", "kafka://k1:9092,k2:9093")
    monkeypatch.setenv("ECREC_INDEX__BATCH_MAX", "32")
    monkeypatch.setenv("ECREC_TOPICS__ITEMS", "shop.items")
    monkeypatch.setenv("ECREC_EMBEDDING__MODEL", "/srv/models/e5")
    settings = load_settings()
    assert not settings.uses_embedded_broker
    assert bootstrap_servers(settings.broker) == "k1:9092,k2:9093"
    assert settings.index.batch_max == 32 and settings.topics.items == "shop.items"
    assert settings.embedding.model == "/srv/models/e5"
    with pytest.raises(ValidationError):
        settings.partitions = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("url", ["http://x:1", "kafka://", "kafka://host", "host:port"])
def test_bad_broker_urls_are_rejected(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError):
        bootstrap_servers(url)
    monkeypatch.setenv("ECREC_BROKER", url)
    with pytest.raises((ConfigError, ValidationError)):
        Settings()


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECREC_INDEX__BATCH_MAX", "0")
    with pytest.raises(ValidationError):
        Settings()
