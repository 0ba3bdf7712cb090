"""Real Apache Kafka for the test suite: combined broker+controller nodes in KRaft mode on free
loopback ports (one, or a three-node cluster for broker faults), storage formatted in a
temporary directory, stopped by PID.

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
    """Start Apache Kafka (KRaft) on loopback: one combined broker+controller node, or a
    cluster of ``nodes`` of them (every node a broker and a voter; topics then default to a
    replication factor of 3 and ``min.insync.replicas`` 2). ``url`` and ``bootstrap`` like
    :class:`streams.broker.EmbeddedBroker`, so a fixture can yield either."""

    def __init__(
        self,
        *,
        version: str = DEFAULT_VERSION,
        host: str = "127.0.0.1",
        nodes: int = 1,
        start_timeout_s: float = 90.0,
    ) -> None:
        self.version = version
        self.host = host
        self.nodes = nodes
        self.start_timeout_s = start_timeout_s
        self.ports: dict[int, int] = {}  # node id -> client port
        self._controllers: dict[int, int] = {}  # node id -> controller port
        self._dir: Path | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def port(self) -> int | None:
        return self.ports.get(1)

    @property
    def bootstrap(self) -> str:
        if not self.ports:
            raise KafkaUnavailable("broker not started")
        return ",".join(f"{self.host}:{port}" for port in self.ports.values())

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path:
        return self.node_log(1)

    def node_log(self, node: int) -> Path:
        assert self._dir is not None
        return self._dir / f"kafka-{node}.log"

    def _properties(self, node: int) -> str:
        assert self._dir is not None
        voters = ",".join(f"{n}@{self.host}:{c}" for n, c in self._controllers.items())
        port, controller = self.ports[node], self._controllers[node]
        replicas = min(self.nodes, 3)
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://{self.host}:{port},CONTROLLER://{self.host}:{controller}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self._dir / f'data-{node}'}",
                "num.partitions=4",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={max(1, replicas - 1)}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=8",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={max(1, replicas - 1)}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.flush.interval.messages=10000",
                # a killed leader is replaced within seconds, not the 18 s default
                "broker.session.timeout.ms=6000",
                "broker.heartbeat.interval.ms=1000",
                "",
            ]
        )

    def _java(self) -> list[str]:
        log4j = f"-Dlog4j.configuration=file:{KAFKA_DIR / 'log4j.properties'}"
        return ["java", "-Xmx768m", log4j, "-cp", f"{kafka_libs(self.version)}/*"]

    def start(self) -> KafkaBroker:
        self._dir = Path(tempfile.mkdtemp(prefix="ecrec-kafka-"))
        for node in range(1, self.nodes + 1):
            self.ports[node], self._controllers[node] = free_port(self.host), free_port(self.host)
        cluster = _cluster_id()
        for node in self.ports:
            props = self._dir / f"server-{node}.properties"
            props.write_text(self._properties(node))
            formatted = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster,
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if formatted.returncode != 0:
                raise KafkaUnavailable(f"kafka-storage format failed: {formatted.stderr[-2000:]}")
        for node in self.ports:
            self.start_node(node)
        deadline = time.monotonic() + self.start_timeout_s
        from confluent_kafka.admin import AdminClient

        while time.monotonic() < deadline:
            for node, proc in self._procs.items():
                if proc.poll() is not None:
                    log = self.node_log(node).read_text()[-3000:]
                    raise KafkaUnavailable(f"Kafka node {node} exited: {log}")
            try:
                metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
                if len(metadata.brokers) == self.nodes:
                    return self
            except Exception:  # KafkaException until the brokers answer
                pass
            time.sleep(0.5)
        self.stop()
        raise KafkaUnavailable(f"Kafka did not answer within {self.start_timeout_s:.0f} s")

    def start_node(self, node: int) -> None:
        """Start one node (again, after :meth:`kill_node`) on its ports and storage."""
        assert self._dir is not None
        with open(self.node_log(node), "ab") as log:
            self._procs[node] = subprocess.Popen(
                [*self._java(), "kafka.Kafka", str(self._dir / f"server-{node}.properties")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # no orphaned broker if pytest is killed
            )

    def kill_node(self, node: int) -> None:
        """SIGKILL one node: no shutdown, no leadership handed over."""
        proc = self._procs.pop(node)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """The node leading ``topic``'s ``partition`` now."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(topic, timeout=10)
        return int(metadata.topics[topic].partitions[partition].leader)

    def stop(self, timeout_s: float = 30.0) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs = {}
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with "-" (the storage tool would read it as an option, 1 start in 64; Kafka's own
    ``Uuid.randomUuid`` skips those too)."""
    import base64

    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster
