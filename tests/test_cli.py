"""The command line: help texts, clear refusals, and replay through the real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ecrec_stream.contracts.events import utc_now
from tests.helpers import batch_events, read_topic, unique
from workers.cli import app
from workers.replay import read_records

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    ["demo", "worker", "indexer", "replay", "search", "recommend", "broker", "status", "models"],
)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_worker_without_a_broker_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECREC_")}
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "ecrec-stream broker" in out.stdout


def test_csv_cells_decode_json_literals(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "event_id,ts,op,item_id,title,price,category_path\n"
        'e1,2026-01-01T00:00:00Z,upsert,a,Tea,2.5,"[""drinks"",""tea""]"\n'
    )
    doc = json.loads(next(read_records(path)))
    assert doc["price"] == 2.5 and doc["category_path"] == ["drinks", "tea"]
    assert doc["title"] == "Tea"


@pytest.mark.integration
def test_replay_feeds_the_pipeline(broker: Any, worker: Any, tmp_path: Path) -> None:
    tag = unique("replay")
    now = utc_now().isoformat()
    lines = [
        json.dumps(
            {
                "event_id": f"{tag}-{i}",
                "ts": now,
                "item_id": f"{tag}-item",
                "rating": 5,
                "text": "ok",
            }
        )
        for i in range(3)
    ]
    lines.insert(1, "this is not json")
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "ECREC_BROKER": broker.url}
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "replay", str(path), "--topic", "review"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "sent 4 records" in out.stdout, out.stdout + out.stderr
    msgs = read_topic(
        broker.bootstrap,
        "ecrec.valid.reviews",
        timeout_s=60,
        done=lambda ms: (
            {f"{tag}-{i}" for i in range(3)} <= {e["event_id"] for e in batch_events(ms)}
        ),
    )
    assert {f"{tag}-{i}" for i in range(3)} <= {e["event_id"] for e in batch_events(msgs)}
    dead = read_topic(
        broker.bootstrap,
        "ecrec.dlq",
        timeout_s=60,
        done=lambda ms: any(json.loads(m.value())["raw_preview"] == "this is not json" for m in ms),
    )
    assert any(json.loads(m.value())["reason"] == "malformed_json" for m in dead)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopping_the_broker_command_stops_tansu(how: str) -> None:
    """SIGTERM stops the Tansu child and frees the port; after a SIGKILL of the command (no
    clean-up possible) the child dies with its parent."""
    import signal
    import socket

    from streams.broker import free_port, wait_for_port
    from workers.processes import wait_until

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 30)
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        proc.wait(20)

        def port_closed() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) != 0

        wait_until(port_closed, timeout_s=15)
        if how == "sigterm":
            assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ECREC_")}
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_misspelt_variable_stops_the_cli_in_one_line() -> None:
    out = _cli("config", ECREC_LABELS__ENABELD="false")
    assert out.returncode == 2
    assert "did you mean ECREC_LABELS__ENABLED" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "needs_broker", "what"),
    [
        (["search", "organic whole milk", "--url"], False, "an index replica"),
        (["status", "--url"], False, "a stream worker"),
        (["recommend", "--item", "ic-1", "--url"], False, "an index replica"),
        (["retrain"], True, "the broker"),
        (["replay", "items.jsonl", "--topic", "item"], True, "the broker"),
    ],
)
def test_commands_say_what_they_could_not_reach(
    args: list[str], needs_broker: bool, what: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    if needs_broker:
        (tmp_path / "items.jsonl").write_text("{}\n")
        out = _cli(
            *[str(tmp_path / a) if a.endswith(".jsonl") else a for a in args],
            ECREC_BROKER=f"kafka://{address}",
        )
    else:
        out = _cli(*args, f"http://{address}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot reach {what}" in out.stdout and address in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert len(out.stdout.strip().splitlines()) <= 3  # one line, wrapped at most
