"""meshd as a target: writes meshd.yaml and one fs-namer file per service, runs `python -m meshd run`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import yaml

from bench.processes import LOOPBACK, Supervisor, free_port, wait_http_ok
from bench.targets.base import Deployment, RunningTarget
from bench.upstream_control import bench_env

READY_TIMEOUT_SECS: Final = 60.0
Balancer = Literal["ewma", "p2c", "roundRobin"]
Protocol = Literal["http", "h2"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshdTarget:
    """One meshd configuration: worker count, balancer kind, retries on or off, and the protocol:
    `http` (HTTP/1.1, named by Host) or `h2` (HTTP/2 h2c for gRPC: identifier `grpc`, classifier
    `grpc.default`)."""

    name: str = "meshd"
    workers: int = 1
    balancer: Balancer = "ewma"
    retries: bool = True
    protocol: Protocol = "http"
    family: str = "meshd"
    #: tracing on at this sample rate (None: off), exporting to `trace_collector`
    tracing_sample_rate: float | None = None
    trace_collector: str = ""

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("meshd") is None or importlib.util.find_spec("meshd.__main__") is None:
            return "meshd is not runnable yet (no meshd/__main__.py)"
        if self.protocol == "h2" and not _speaks_h2():
            return "this meshd has no HTTP/2 router yet (its config refuses `protocol: h2`)"
        return None

    def config(self, deployment: Deployment, *, port: int, admin_port: int, disco: Path) -> dict[str, object]:
        """The meshd.yaml document for this target, as the lead's README describes it."""
        h2 = self.protocol == "h2"
        if self.retries:
            service: dict[str, object] = {
                "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}},
                "responseClassifier": {"kind": "grpc.default" if h2 else "retryableIdempotent5XX"},
            }
        else:
            service = {"retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}}
        router: dict[str, object] = {"label": "outgoing"}
        if h2:
            router["protocol"] = "h2"
        config: dict[str, object] = {
            "admin": {"ip": LOOPBACK, "port": admin_port},
            "namers": [{"kind": "fs", "rootDir": "./" + disco.name}],
            "routers": [
                {
                    **router,
                    "servers": [{"ip": LOOPBACK, "port": port}],
                    "identifier": {"kind": "grpc"} if h2 else {"kind": "header", "header": "host"},
                    "dtab": "/svc => /#/fs;",
                    "service": service,
                    "client": {
                        "loadBalancer": {"kind": self.balancer},
                        "failureAccrual": {"kind": "consecutiveFailures", "failures": 5},
                    },
                }
            ],
        }
        if self.tracing_sample_rate is not None:
            config["tracing"] = {"collector": self.trace_collector, "sampleRate": self.tracing_sample_rate,
                                 "serviceName": "meshd-bench"}
        return config

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        disco = workdir / "disco"
        write_disco(deployment, disco)
        port, admin_port = free_port(), free_port()
        config_path = workdir / "meshd.yaml"
        config_path.write_text(yaml.safe_dump(self.config(deployment, port=port, admin_port=admin_port, disco=disco),
                                              sort_keys=False))
        argv = [sys.executable, "-m", "meshd", "run", "-c", str(config_path), "--workers", str(self.workers)]
        process = supervisor.start(self.name, argv, cwd=workdir, log_path=workdir / "meshd.log", env=bench_env())
        wait_http_ok(process, f"http://{LOOPBACK}:{admin_port}/admin/ready", READY_TIMEOUT_SECS)
        command = "python -m meshd run -c meshd.yaml --workers " + str(self.workers)
        return RunningTarget(name=self.name, addresses=((LOOPBACK, port),), process=process, commands=(command,))


def _speaks_h2() -> bool:
    """Whether this meshd takes `protocol: h2` (the HTTP/2 router): asked of `meshd check`, as the
    bench treats meshd as a program, not a library."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.yaml"
        probe.write_text("routers:\n  - label: probe\n    protocol: h2\n")
        done = subprocess.run([sys.executable, "-m", "meshd", "check", "-c", str(probe)], capture_output=True,
                              text=True, timeout=60, env=bench_env())
    return done.returncode == 0


def write_disco(deployment: Deployment, disco: Path) -> None:
    """One file per service, one "host port" line per replica: the fs namer's format."""
    disco.mkdir(parents=True, exist_ok=True)
    for service in deployment.services:
        lines = "".join(f"{b.host} {b.port}\n" for b in service.backends)
        (disco / service.name).write_text(lines)
