"""Prometheus and promtool for tests (Debian's `prometheus` package), as real processes.

`find_program(name)` returns the program's path; a missing one fails the test under CI and
skips it elsewhere, naming the package to install. `Prometheus` runs a server on a free
loopback port with its own TSDB directory and a config the test writes, and waits (polling
`/-/ready` with a deadline) until it serves queries; `query()` is the HTTP API's instant query.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import pytest
import yaml

from tests.support.nats_server import free_ports
from tests.support.waiting import wait_until

MISSING: Final = "install Prometheus and promtool: apt-get install prometheus"


def find_program(name: str) -> str:
    """`prometheus` or `promtool`; a missing one fails the test under CI and skips it elsewhere."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


class Prometheus:
    """One Prometheus server: `async with Prometheus(workdir, config) as prom:`; `prom.query(expr)`."""

    def __init__(self, workdir: pathlib.Path, config: Mapping[str, object], files: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self._config = config
        self._files = dict(files or {})
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self.log_path = workdir / "prometheus.log"

    async def __aenter__(self) -> Prometheus:
        binary = find_program("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, text in self._files.items():
            (self.workdir / name).write_text(text)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(dict(self._config), sort_keys=False))
        (self.port,) = free_ports(1)
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{self.port}")
        await wait_until(self._ready, timeout=30, interval=0.1, message=f"Prometheus ready (log: {self.log_path})")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _ready(self) -> bool:
        assert self._process is not None and self._session is not None
        if self._process.returncode is not None:
            raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n{self.log_path.read_text()}")
        try:
            async with self._session.get("/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def api(self, path: str, **params: str) -> Any:
        """`data` of a successful API answer (anything else raises, with Prometheus's error)."""
        assert self._session is not None
        async with self._session.get(f"/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value an instant query returns, or None when it returns nothing."""
        result = await self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])
