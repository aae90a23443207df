"""Starts the programmable upstream (`bench/upstream.py`) from the bench and talks to its replicas."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.processes import LOOPBACK, ManagedProcess, Supervisor, read_line
from bench.upstream import InstanceSpec, InstanceStats, spec_json

READY_TIMEOUT_SECS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Replica:
    """One upstream replica as the bench addresses it."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamProcess:
    process: ManagedProcess
    replicas: tuple[Replica, ...]

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def stats(self) -> dict[str, InstanceStats]:
        return {r.name: read_stats(r) for r in self.replicas}

    def reset(self) -> None:
        for replica in self.replicas:
            _post(replica, "/_bench/reset")

    def stall(self, name: str, *, after_secs: float, for_secs: float, latency_ms: float) -> None:
        _post(self.replica(name), f"/_bench/stall?afterSecs={after_secs:.6f}&forSecs={for_secs:g}&latencyMs={latency_ms:g}")


def start_upstream(
    supervisor: Supervisor,
    specs: Sequence[InstanceSpec],
    *,
    workdir: Path,
    max_lifetime_secs: float,
    name: str = "upstream",
) -> UpstreamProcess:
    argv = [
        sys.executable,
        "-m",
        "bench.upstream",
        "--spec",
        spec_json(list(specs)),
        "--max-lifetime-secs",
        f"{max_lifetime_secs:g}",
    ]
    process = supervisor.start(
        name, argv, cwd=_source_root(), log_path=workdir / f"{name}.log", stdout_pipe=True, env=bench_env()
    )
    line = read_line(process, READY_TIMEOUT_SECS)
    try:
        ports = json.loads(line)["ready"]
    except (ValueError, KeyError, TypeError) as exc:
        raise process.fail(f"bad ready line {line!r}") from exc
    replicas = tuple(Replica(spec.name, LOOPBACK, int(ports[spec.name])) for spec in specs)
    return UpstreamProcess(process=process, replicas=replicas)


def read_stats(replica: Replica) -> InstanceStats:
    with urllib.request.urlopen(f"http://{replica.address}/_bench/stats", timeout=5.0) as response:
        data = json.loads(response.read())
    return InstanceStats(
        name=str(data["name"]),
        requests=int(data["requests"]),
        failures=int(data["failures"]),
        stalled=int(data["stalled"]),
    )


def _post(replica: Replica, path: str) -> None:
    request = urllib.request.Request(f"http://{replica.address}{path}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5.0) as response:
        response.read()


def _source_root() -> Path:
    """The directory holding the `bench` package, so `python -m bench.x` works from a source tree."""
    return Path(__file__).resolve().parent.parent


def bench_env() -> dict[str, str]:
    """The environment for our Python children: the source tree first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(_source_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
