"""MeshdProcess: `python -m meshd run` as a subprocess, for tests of signals, exit codes and memory use.

The config listens on port 0 (router and admin alike), so no test ever races another for a port:
meshd logs the ports it bound (`router <label> listening on <ip>:<port>`, `admin listening on
<ip>:<port>`) and the helper reads them from the process's log file, then waits for
`/admin/ready`. The fs namer's directory is `disco/` next to the config; `register()` writes a
service's file there atomically and meshd's own polling picks it up.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Final

import yaml

from tests.support.client import RawConnection
from tests.support.waiting import wait_until

_ROOT: Final = pathlib.Path(__file__).resolve().parents[2]
_ROUTER_PORT: Final = re.compile(r"router (\S+) listening on \S+:(\d+)")
_ADMIN_PORT: Final = re.compile(r"admin listening on \S+:(\d+)")


def process_config(router: Mapping[str, object] | None = None, **top: object) -> dict[str, object]:
    """A whole meshd config: router `outgoing` on port 0 over an fs namer; keys in `router` and `top` win."""
    router_config: dict[str, object] = {
        "label": "outgoing",
        "servers": [{"ip": "127.0.0.1", "port": 0}],
        "dtab": "/svc => /#/fs;",
    }
    router_config.update(router or {})
    config: dict[str, object] = {
        "admin": {"ip": "127.0.0.1", "port": 0},
        "namers": [{"kind": "fs", "rootDir": "./disco", "pollIntervalMs": 50}],
        "routers": [router_config],
    }
    config.update(top)
    return config


class MeshdProcess:
    """One meshd subprocess: `async with MeshdProcess(workdir, config) as mesh:` runs it, then kills it."""

    def __init__(
        self,
        workdir: pathlib.Path,
        config: Mapping[str, object],
        *,
        log_level: str = "info",
        args: Sequence[str] = (),
        name: str = "meshd",
    ) -> None:
        self.workdir = workdir
        self.disco = workdir / "disco"
        self.config_path = workdir / "meshd.yaml"
        self.log_path = workdir / f"{name}.log"
        self._args = tuple(args)
        self._config = config
        self._log_level = log_level
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.admin_port = 0

    async def __aenter__(self) -> MeshdProcess:
        try:
            await self.start()
        except BaseException:
            await self.kill()  # a meshd that never got ready must not outlive the test either
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def start(self, *, timeout: float = 30.0) -> None:
        self.disco.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(self._config), sort_keys=False))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshd",
                "run",
                "-c",
                str(self.config_path),
                "--log-level",
                self._log_level,
                *self._args,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await wait_until(self._read_ports, timeout=timeout, message=f"meshd to listen (log: {self.log_path})")
        await wait_until(self.is_ready, timeout=timeout, message="meshd /admin/ready")

    def _read_ports(self) -> bool:
        if self.returncode is not None:
            raise RuntimeError(f"meshd exited with {self.returncode} while starting:\n{self.log_text()}")
        text = self.log_text()
        router = _ROUTER_PORT.search(text)
        admin = _ADMIN_PORT.search(text)
        if router is None or admin is None:
            return False
        self.port, self.admin_port = int(router.group(2)), int(admin.group(1))
        return True

    async def is_ready(self) -> bool:
        try:
            conn = await RawConnection.open(self.admin_port)
        except OSError:
            return False
        try:
            return (await conn.request("GET", "/admin/ready", host="127.0.0.1")).status == 200
        finally:
            await conn.close()

    def register(self, service: str, *lines: str) -> None:
        """Write the fs namer file for `service` atomically (`host port [weight]` lines)."""
        tmp = self.disco / f".{service}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(self.disco / service)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def memory_kib(self, field: str = "VmHWM") -> int:
        """A memory figure from /proc/<pid>/status, in KiB: `VmHWM` (peak RSS) or `VmRSS` (now)."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
        raise KeyError(field)

    def send_signal(self, sig: signal.Signals) -> None:
        assert self._process is not None, "not started"
        self._process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit code, once meshd has exited (TimeoutError if it takes longer than `timeout`)."""
        assert self._process is not None, "not started"
        return await asyncio.wait_for(self._process.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL meshd and, first, every process it forked (`--workers`): a supervisor killed
        outright cannot pass the signal on, and its workers would outlive the test."""
        process = self._process
        if process is not None and process.returncode is None:
            for child in _descendants(process.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.kill()
            await process.wait()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first listed, then theirs), from /proc."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        try:
            children = pathlib.Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found
