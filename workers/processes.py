"""Start and stop ecrec-stream processes as children (used by the demo, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from streams.broker import RunsInTheBackground


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout_s`` passes
    (AssertionError, so tests read naturally)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


class ProcessFailed(RuntimeError):
    """A child process exited or did not become ready."""


class ManagedProcess(RunsInTheBackground):
    """``python -m workers.cli <command>`` with extra environment, logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", *self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout_s: float = 120.0) -> None:
        """Wait until ``url`` answers 200; fail fast if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ProcessFailed(
            f"{self.name} not ready at {url} after {timeout_s}s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the process to stop (SIGTERM), kill it after ``timeout_s``; return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_process(
    broker_url: str, data_dir: Path, web_port: int, *, extra_env: dict[str, str] | None = None
) -> ManagedProcess:
    env = {
        "ECREC_BROKER": broker_url,
        "ECREC_DATA_DIR": str(data_dir),
        "ECREC_WORKER_WEB_PORT": str(web_port),
        **(extra_env or {}),
    }
    return ManagedProcess("worker", ["worker"], env, data_dir / "logs")


def indexer_process(
    broker_url: str,
    data_dir: Path,
    port: int,
    *,
    name: str = "indexer",
    extra_env: dict[str, str] | None = None,
) -> ManagedProcess:
    env = {
        "ECREC_BROKER": broker_url,
        "ECREC_DATA_DIR": str(data_dir),  # the model registry is <data_dir>/models
        "ECREC_INDEX__DATA_DIR": str(data_dir / name),
        "ECREC_INDEX__PORT": str(port),
        "ECREC_INDEX__REPLICA_ID": name,
        **(extra_env or {}),
    }
    return ManagedProcess(name, ["indexer"], env, data_dir / "logs")


def trainer_process(
    broker_url: str, data_dir: Path, *, extra_env: dict[str, str] | None = None
) -> ManagedProcess:
    env = {"ECREC_BROKER": broker_url, "ECREC_DATA_DIR": str(data_dir), **(extra_env or {})}
    return ManagedProcess("trainer", ["trainer"], env, data_dir / "logs")
