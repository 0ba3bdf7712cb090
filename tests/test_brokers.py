"""The brokers the project runs on: the integration tests use the one asked for (a Kafka leg
that silently ran on Tansu would prove nothing), Kafka's watermarks are right where Tansu's are
not (docs/broker.md), and docker-compose.yml runs what the tests run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecrec_stream.config import load_settings, setting_variables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_integration_tests_run_on_the_broker_asked_for(
    broker: Any, request: pytest.FixtureRequest
) -> None:
    from confluent_kafka.admin import AdminClient

    wanted = request.config.getoption("--broker")
    assert type(broker).__name__ == {"kafka": "KafkaBroker", "tansu": "EmbeddedBroker"}[wanted]
    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert metadata.brokers and metadata.topics


@pytest.mark.integration
def test_high_watermarks_count_every_record(broker: Any, request: pytest.FixtureRequest) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka import ensure_topics, new_producer
    from tests.helpers import unique

    if request.config.getoption("--broker") != "kafka":
        pytest.skip("Tansu's ListOffsets(latest) is the last batch's base offset (docs/broker.md)")
    topic = unique("watermarks")
    ensure_topics(broker.bootstrap, [topic], 1)
    producer = new_producer(broker.bootstrap, **{"linger.ms": 200})
    for n in range(25):
        producer.produce(topic, key=b"k", value=str(n).encode(), partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("wm")})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 25)


def _kafka_version_of_the_tests() -> str:
    pom = (ROOT / "tests" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match
    return match.group(1)


def test_docker_compose_runs_what_the_tests_run() -> None:
    """No Docker engine here: the compose file is checked for structure instead."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker", "indexer", "trainer"} <= set(services)
    assert services["kafka"]["image"] == f"apache/kafka:{_kafka_version_of_the_tests()}"
    assert "healthcheck" in services["kafka"]
    valid = set(setting_variables())
    for name in ("worker", "indexer", "trainer"):
        service = services[name]
        env = service["environment"]
        assert env["ECREC_BROKER"] == "kafka://kafka:9092", name
        assert set(env) <= valid, f"{name}: {sorted(set(env) - valid)} are not settings"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service.get("volumes"), f"{name} keeps its state on a volume"
        assert service["command"] == [name]
    # the replicas read the models the trainer publishes: the same volume, read-only for them
    indexer_mounts = services["indexer"]["volumes"]
    trainer_mounts = services["trainer"]["volumes"]
    assert "models:/models:ro" in indexer_mounts and "models:/models" in trainer_mounts
    assert (
        services["indexer"]["environment"]["ECREC_TRAINING__REGISTRY_DIR"]
        == services["trainer"]["environment"]["ECREC_TRAINING__REGISTRY_DIR"]
        == "/models"
    )
    for name in ("worker", "indexer", "trainer"):  # every service's settings load
        load_settings(**_overrides(services[name]["environment"]))


def _overrides(env: dict[str, str]) -> dict[str, Any]:
    """ECREC_* variables as load_settings keyword overrides (nested by ``__``)."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        parts = key.removeprefix("ECREC_").lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
