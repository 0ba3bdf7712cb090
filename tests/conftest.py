"""Fixtures: the real embedded broker, a real stream worker and a real index replica."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="the broker of the integration tests: the embedded Tansu (default) or Apache "
        "Kafka (KRaft, fetched with Maven by tests/kafka/pom.xml; needs java and mvn)",
    )
    parser.addoption(
        "--kafka-version",
        default="3.9.0",
        help="with --broker kafka: the Apache Kafka release (3.9.0, the compose file's, or 4.x)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    broker = config.getoption("--broker")
    if broker == "kafka":
        broker += f" {config.getoption('--kafka-version')}"
    return f"broker for integration tests: {broker}"


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[object]:
    """The broker every integration test talks to: Tansu or Apache Kafka, never a mock."""
    from ecrec_stream.config import Settings
    from streams.broker import EmbeddedBroker
    from streams.kafka import all_topics, ensure_topics

    if request.config.getoption("--broker") == "kafka":
        from tests.kafka_broker import KafkaBroker

        running: Any = KafkaBroker(version=request.config.getoption("--kafka-version"))
    else:
        running = EmbeddedBroker()
    with running:
        ensure_topics(running.bootstrap, all_topics(Settings().topics), 4)
        yield running


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def worker(broker: object, pipeline_dir: Path) -> Iterator[object]:
    """The stream worker (Faust) on the default topics, ready once it owns its partitions."""
    import httpx

    from streams.broker import free_port
    from tests.helpers import wait_until
    from workers.processes import worker_process

    port = free_port()
    proc = worker_process(broker.url, pipeline_dir, port).start()  # type: ignore[attr-defined]
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/ecrec/stats", timeout_s=120)
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/ecrec/stats").json()["assigned"],
            timeout_s=60,
            interval_s=0.2,
        )
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def indexer(broker: object, pipeline_dir: Path) -> Iterator[str]:
    """An index replica; yields its base URL."""
    from streams.broker import free_port
    from workers.processes import indexer_process

    port = free_port()
    proc = indexer_process(broker.url, pipeline_dir, port).start()  # type: ignore[attr-defined]
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def minilm() -> object:
    """The real packaged all-MiniLM-L6-v2 encoder."""
    from ecrec_stream.embedding import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 emulator (moto's server, on a free loopback port): the object store of the
    registry tests and of the durable embedded broker. Yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from streams.broker import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AWS_* variables pointing boto3 (in this process) at the emulator; also returned, for
    child processes. Each test gets a fresh bucket name."""
    import uuid

    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"ecrec-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {**env, "BUCKET": bucket}
