"""A real Apache Kafka broker for the test suite: one combined broker+controller node in KRaft
mode on free loopback ports, its storage formatted in a temporary directory, stopped by PID.

The jars come from Maven Central through ``tests/kafka/pom.xml`` (fetched once into
``tests/kafka/libs``; Java 17 and Maven must be on the PATH). Never a download at run time of
anything else, and never a stand-in: if Kafka cannot be fetched or started, this raises.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from streams.broker import RunsInTheBackground, _die_with_parent, free_port

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
DEFAULT_VERSION = "3.9.0"  # what docker-compose.yml runs; tests/kafka/pom.xml's default


def libs_dir(version: str) -> Path:
    return KAFKA_DIR / ("libs" if version == DEFAULT_VERSION else f"libs-{version}")


class KafkaUnavailable(RuntimeError):
    """Apache Kafka could not be fetched or started (the message says why)."""


def kafka_libs(version: str = DEFAULT_VERSION) -> Path:
    """The jars of Kafka ``version``, fetched with Maven on first use."""
    libs = libs_dir(version)
    if not any(libs.glob(f"kafka_2.13-{version}.jar")):
        mvn = shutil.which("mvn")
        if mvn is None or shutil.which("java") is None:
            raise KafkaUnavailable("the Kafka leg needs java (17+) and mvn on the PATH")
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_DIR / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            f"-Dkafka.version={version}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise KafkaUnavailable(
                f"mvn could not fetch Kafka: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    return libs


class KafkaBroker(RunsInTheBackground):
    """Start Apache Kafka (KRaft, one node) on loopback; ``url`` and ``bootstrap`` like
    :class:`streams.broker.EmbeddedBroker`, so a fixture can yield either."""

    def __init__(
        self,
        *,
        version: str = DEFAULT_VERSION,
        host: str = "127.0.0.1",
        start_timeout_s: float = 90.0,
    ) -> None:
        self.version = version
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise KafkaUnavailable("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "kafka.log"

    def _properties(self, port: int, controller: int, data: Path) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{self.host}:{controller}",
                f"listeners=PLAINTEXT://{self.host}:{port},CONTROLLER://{self.host}:{controller}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=4",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.flush.interval.messages=10000",
                "",
            ]
        )

    def start(self) -> KafkaBroker:
        libs = kafka_libs(self.version)
        self._dir = Path(tempfile.mkdtemp(prefix="ecrec-kafka-"))
        port, controller = free_port(self.host), free_port(self.host)
        props = self._dir / "server.properties"
        props.write_text(self._properties(port, controller, self._dir / "data"))
        java = ["java", "-Xmx768m", f"-Dlog4j.configuration=file:{KAFKA_DIR / 'log4j.properties'}"]
        classpath = ["-cp", f"{libs}/*"]
        formatted = subprocess.run(
            [
                *java,
                *classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(),
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if formatted.returncode != 0:
            raise KafkaUnavailable(f"kafka-storage format failed: {formatted.stderr[-2000:]}")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [*java, *classpath, "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # no orphaned broker if pytest is killed
            )
        self.port = port
        deadline = time.monotonic() + self.start_timeout_s
        from confluent_kafka.admin import AdminClient

        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise KafkaUnavailable(f"Kafka exited: {self.log_path.read_text()[-3000:]}")
            try:
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
                return self
            except Exception:  # KafkaException until the broker answers
                time.sleep(0.5)
        self.stop()
        raise KafkaUnavailable(f"Kafka did not answer within {self.start_timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
