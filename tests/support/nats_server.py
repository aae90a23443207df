"""nats-server for tests: one JetStream node, or a cluster of them on loopback, as real processes.

Each node gets free ports, its own store directory and log file. `start()` waits (with a deadline) until the
node accepts connections; `NatsCluster.wait_ready()` waits until JetStream answers, which on a cluster means
the nodes found each other and elected a meta leader. A missing nats-server fails the test under CI and
skips it elsewhere, naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from tests.support.waiting import wait_until_sync

NATS_SERVER: Final = "nats-server"
MISSING: Final = "install nats-server: apt-get install nats-server"
START_TIMEOUT_SECS: Final = 15.0


def nats_server_binary() -> str:
    """The nats-server to run; a missing one fails the test under CI and skips it elsewhere."""
    found = shutil.which(NATS_SERVER) or next(
        (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(path, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NatsNode:
    """One nats-server process with JetStream on a file store; restartable on the same ports and store."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        name: str,
        port: int,
        *,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.port = port
        self._binary = binary
        self._store = workdir / name / "store"
        self.log_path = workdir / name / "nats.log"
        self._cluster_port = cluster_port
        self._routes = tuple(routes)
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"NatsNode({self.name}, port={self.port})"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        command = [
            self._binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self._store),
            "--server_name",
            self.name,
        ]
        if self._cluster_port is not None:
            command += ["--cluster_name", "meshd-test", "--cluster", f"nats://127.0.0.1:{self._cluster_port}"]
            command += ["--routes", ",".join(f"nats://127.0.0.1:{port}" for port in self._routes)]
        return command

    def start(self) -> None:
        self._store.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )

        def up() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log_text()}")
            return _accepts(self.port)

        wait_until_sync(up, timeout=START_TIMEOUT_SECS, message=f"nats-server {self.name} to listen")

    def kill(self) -> None:
        """SIGKILL: no goodbye to peers or clients, nothing flushed beyond what the store already has."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def single_node(binary: str, workdir: Path) -> NatsNode:
    [port] = free_ports(1)
    return NatsNode(binary, workdir, "n1", port)


def cluster_nodes(binary: str, workdir: Path, size: int = 3) -> list[NatsNode]:
    """`size` nodes routed to each other on loopback (not started)."""
    ports = free_ports(2 * size)
    client_ports, cluster_ports = ports[:size], ports[size:]
    return [
        NatsNode(
            binary,
            workdir,
            f"n{index + 1}",
            client_ports[index],
            cluster_port=cluster_ports[index],
            routes=[port for other, port in enumerate(cluster_ports) if other != index],
        )
        for index in range(size)
    ]
