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


def _run_table_app(env: dict[str, str], until: str, timeout_s: float = 120.0) -> int:
    """Run tests/table_app.py until it prints ``until <n>``; stop it cleanly; return n."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.table_app"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            found = re.search(until + r" (\d+)", line)  # Faust logs what its app prints
            if found:
                return int(found.group(1))
        raise AssertionError(f"no {until} line in {timeout_s} s:\n" + "".join(seen[-40:]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.integration
def test_a_table_is_recovered_to_the_last_record_of_its_changelog(
    broker: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A Faust table written in many-record producer batches, rebuilt from its changelog into
    an empty data dir, holds every key. On Tansu the changelog's reported end falls short by
    the last batch's other records and Faust's own recovery stops there; the worker's fix
    (streams.app.recover_tables_to_the_last_record) reads that batch to its end."""
    from streams.broker import free_port
    from streams.capabilities import end_offsets, last_record_ends
    from streams.kafka import ensure_topics
    from tests.helpers import produce, read_topic, unique

    on_tansu = request.config.getoption("--broker") == "tansu"
    tag = unique("table")
    source, changelog, n = f"{tag}-in", f"{tag}-keys-changelog", 3000
    ensure_topics(broker.bootstrap, [source], 1)
    produce(broker.bootstrap, [(source, f"k{i}", f"k{i}".encode()) for i in range(n)])
    env = {
        "TABLE_APP_BOOTSTRAP": broker.bootstrap,
        "TABLE_APP_ID": tag,
        "TABLE_APP_TOPIC": source,
        "TABLE_APP_KEYS": str(n),
        "TABLE_APP_PORT": str(free_port()),
        "TABLE_APP_PATCHED": "1",
    }
    filled = _run_table_app(
        {**env, "TABLE_APP_MODE": "fill", "TABLE_APP_DATADIR": str(tmp_path / "fill")}, "FILLED"
    )
    assert filled == n
    written = read_topic(broker.bootstrap, changelog, done=lambda ms: len(ms) >= n)
    assert len(written) == n  # one changelog record per key, every one sent
    reported = end_offsets(broker.bootstrap, [changelog])[changelog][0]
    assert last_record_ends(broker.bootstrap, {(changelog, 0): reported}) == {(changelog, 0): n}
    if on_tansu:
        assert reported < n, "the changelog's last batch held one record: nothing was tested"
    else:
        assert reported == n

    def recovered(patched: bool, data_dir: str) -> int:
        count_env = {**env, "TABLE_APP_MODE": "count", "TABLE_APP_PATCHED": str(int(patched))}
        return _run_table_app({**count_env, "TABLE_APP_DATADIR": str(tmp_path / data_dir)}, "KEYS")

    assert recovered(True, "count") == n
    if on_tansu:  # without the fix, Faust stops at the reported end: the test can fail
        unpatched = recovered(False, "count-unpatched")
        print(f"changelog of {n}: end reported {reported}, unpatched recovery {unpatched} keys")
        assert unpatched < n


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
        ours = {key for key in env if key.startswith("ECREC_")}
        assert ours <= valid, f"{name}: {sorted(ours - valid)} are not settings"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service.get("volumes"), f"{name} keeps its state on a volume"
        assert service["command"] == [name]
    # the replicas read the models the trainer publishes from one object store (no shared
    # directory: they may run on other hosts), which has a healthcheck and a bucket made first
    keys = ("ECREC_TRAINING__REGISTRY_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")
    store = {key: services["trainer"]["environment"][key] for key in keys}
    assert all(services["indexer"]["environment"][key] == store[key] for key in keys)
    assert store["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "healthcheck" in services["minio"]
    bucket = store["ECREC_TRAINING__REGISTRY_URL"].removeprefix("s3://").split("/")[0]
    assert f"store/{bucket}" in " ".join(services["buckets"]["command"])
    for name in ("indexer", "trainer"):
        needs = services[name]["depends_on"]["buckets"]["condition"]
        assert needs == "service_completed_successfully"
        assert not any("models" in v for v in services[name]["volumes"])
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == store["AWS_ACCESS_KEY_ID"]
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


@pytest.mark.integration
def test_the_durable_embedded_broker_survives_a_kill_and_consumers_resume(
    request: pytest.FixtureRequest, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """``ecrec-stream broker --storage s3://...`` on the S3 emulator: Tansu itself is SIGKILLed
    after a consumer committed part of a topic; the restarted broker still has every record,
    and the consumer group resumes at its committed offsets (nothing lost, nothing twice)."""
    import os
    import signal
    import subprocess
    import sys

    from confluent_kafka import Consumer

    from streams.broker import free_port, wait_for_port
    from streams.kafka import consumer_config, ensure_topics
    from tests.helpers import produce, unique, wait_until

    if request.config.getoption("--broker") == "kafka":
        pytest.skip("the embedded broker's own storage; the Kafka leg has nothing to add")
    port = free_port()
    env = {**os.environ, **s3_env}
    command = [sys.executable, "-m", "workers.cli", "broker", "--port", str(port)]
    command += ["--storage", f"s3://{s3_env['BUCKET']}/"]

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "broker.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert wait_for_port("127.0.0.1", port, 60), (tmp_path / "broker.log").read_text()
        return proc

    def tansu_of(cli: subprocess.Popen[bytes]) -> int:
        children = Path(f"/proc/{cli.pid}/task/{cli.pid}/children").read_text().split()
        assert len(children) == 1
        return int(children[0])

    bootstrap, topic, group = f"127.0.0.1:{port}", unique("durable"), unique("g")
    cli = start()
    try:
        ensure_topics(bootstrap, [topic], 2)
        produce(bootstrap, [(topic, f"k{n}", str(n).encode()) for n in range(1000)])
        first = _consume(Consumer(consumer_config(bootstrap, group)), topic, 600)
        os.kill(tansu_of(cli), signal.SIGKILL)  # the broker process itself, no clean stop
        wait_until(lambda: cli.poll() is not None, timeout_s=10)  # its supervisor notices
        assert cli.returncode == 1
        cli = start()
        rest = _consume(Consumer(consumer_config(bootstrap, group)), topic, 1000 - len(first))
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=30)
    assert sorted(first + rest) == list(range(1000))  # every record once: no loss, no replay


def _consume(consumer: Any, topic: str, count: int, timeout_s: float = 90.0) -> list[int]:
    """Read ``count`` records of ``topic`` in the consumer's group, commit, close."""
    import time

    consumer.subscribe([topic])
    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=count - len(got), timeout=0.5):
                if message.error() is None:
                    got.append(int(message.value()))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert len(got) == count, f"read {len(got)} of {count}"
    return got


@pytest.mark.integration
def test_lag_is_read_from_watermarks_where_the_broker_has_them(
    broker: Any, worker: Any, indexer: str, request: pytest.FixtureRequest
) -> None:
    """Capabilities are measured, not assumed: Kafka's end offsets are high watermarks, so lag
    is read from them (a reader 10 records into a 25-record partition is 15 behind) and the
    worker's and replica's stats and metrics show it; Tansu's are not, so lag is unknown there
    and says why. Kafka also describes topic configs: the worker's table changelogs are
    compacted. The worker runs on uvloop by default and says so."""
    import httpx
    from confluent_kafka.admin import AdminClient, ConfigResource

    from ecrec_stream.config import TopicNames
    from streams.capabilities import LagMonitor, probe_capabilities
    from streams.kafka import ensure_topics
    from tests.helpers import produce, unique, wait_until

    on_kafka = request.config.getoption("--broker") == "kafka"
    capabilities = probe_capabilities(broker.bootstrap)
    assert capabilities.exact_end_offsets is on_kafka
    assert capabilities.topic_configs is on_kafka
    topic = unique("lag")
    ensure_topics(broker.bootstrap, [topic], 2)
    produce(broker.bootstrap, [(topic, f"k{n}", b"x") for n in range(25)])
    monitor = LagMonitor(broker.bootstrap, [topic], lambda: {topic: {0: 10}}, reader="test")
    worker_port = worker.env["ECREC_WORKER_WEB_PORT"]
    stats = httpx.get(f"http://127.0.0.1:{worker_port}/ecrec/stats", timeout=10).json()
    replica = httpx.get(f"{indexer}/stats", timeout=10).json()
    assert stats["broker"] == replica["broker"] == capabilities.as_dict()
    assert stats["event_loop"] == "uvloop"  # the default (ECREC_EVENT_LOOP)
    # the collector's pauses per generation (counted from the app's start: a young collection
    # comes every ECREC_GC_YOUNG_THRESHOLD net allocations, so a short run may have none yet)
    assert set(stats["gc"]) == {"gen0", "gen1", "gen2"}
    assert all(g["collections"] >= 0 and g["total_s"] >= 0 for g in stats["gc"].values())
    if not on_kafka:
        monitor.start()
        wait_until(lambda: monitor.reason is not None, timeout_s=10)
        assert monitor.latest is None and "high watermarks" in (monitor.reason or "")
        wait_until(lambda: httpx.get(f"{indexer}/stats").json()["lag"]["reason"] is not None, 30)
        return
    behind = monitor.read_once()[topic]
    assert sum(behind.values()) == 25 - 10 and behind[0] <= 15  # partition 0 read up to 10
    # both processes are caught up with the session's traffic: their lag comes down to 0
    for url in (f"{indexer}/stats", f"http://127.0.0.1:{worker_port}/ecrec/stats"):
        last: dict[str, Any] = {}

        def caught_up(url: str = url, last: dict[str, Any] = last) -> bool:
            last.update(httpx.get(url, timeout=10).json()["lag"])
            return last["total"] == 0

        try:
            wait_until(caught_up, 60)
        except AssertionError:
            still = {
                f"{t}[{p}]": n
                for t, ps in (last["partitions"] or {}).items()
                for p, n in ps.items()
                if n
            }
            raise AssertionError(f"{url}: still behind after 60 s: {still}") from None
    # the group's lag is over the topics its agents read; the catalog cache reads valid items
    # without a group, so they are not the group's lag (they would never come down)
    names = TopicNames()
    assert set(last["partitions"]) == {
        names.items,
        names.searches,
        names.clicks,
        names.reviews,
        names.valid_searches,
        names.valid_clicks,
        names.valid_reviews,
        names.models,
    }
    metrics = httpx.get(f"{indexer}/metrics", timeout=10, follow_redirects=True).text
    assert 'ecrec_consumer_lag{partition="0",reader="replica:indexer"' in metrics
    worker_metrics = httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text
    assert 'reader="group:ecrec"' in worker_metrics
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    changelogs = [t for t in admin.list_topics(timeout=10).topics if t.endswith("-changelog")]
    assert changelogs, "the worker's tables have changelog topics"
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in changelogs]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result(10)["cleanup.policy"].value == "compact", resource
