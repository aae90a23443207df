"""A plain meshd (fs namer, no TLS, no Kubernetes) imports none of the heavy libraries it does not
use, in one process and under `--workers`: aiohttp (11 MB), cryptography (8 MB), dnspython (3 MB),
kubernetes_asyncio (38 MB), prometheus_client (4.3 MB; meshd/exposition.py writes and reads the
metrics text instead, the tests keep it to check that text), the OTLP exporter's protobuf classes
(opentelemetry-proto and google.protobuf, with aiohttp: 11 MB; only when tracing is configured),
RE2 (3 MB; only once a routing file has a regex condition), meshd's own k8s and dns namers, and
standard modules nothing needs after start-up (shutil, encodings.idna, hashlib: 1.5 MB together). Each is imported only by the feature that needs it (the admin server
is meshd/admin/web.py; see docs/benchmarks-analysis.md, "Where the memory goes"), so a later change
cannot add one back to every process without this test saying so.

meshd runs as a real process with `PYTHONPROFILEIMPORTTIME=1`, so every process it forks writes
each import to the log as it happens; the test proxies a request and reads the admin pages first,
so that what they import counts too. Under `--workers` it also reads /proc/<pid>/maps of the
supervisor and each worker for the libraries' shared objects.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys

import yaml

from tests.support.client import RawConnection
from tests.support.nats_server import free_ports
from tests.support.process import MeshdProcess, process_config
from tests.support.waiting import wait_until

HEAVY = ("aiohttp", "cryptography", "dns", "kubernetes_asyncio", "prometheus_client", "opentelemetry", "google",
         "re2")
#: meshd's own modules that only a feature the plain config does not use needs
UNUSED = ("meshd.discovery.k8s", "meshd.discovery.k8s_watch", "meshd.discovery.k8s_informer",
          "meshd.discovery.k8s_model", "meshd.discovery.k8s_client", "meshd.discovery.dns", "meshd.tls.certs",
          "meshd.tracing.exporter", "meshd.tracing.otlp",
          "difflib",
          # the standard library's: shutil (with zlib, bz2, lzma: 0.5 MB) came with argparse's help
          # formatter, encodings.idna (with stringprep, unicodedata: 0.35 MB) with uvloop binding a
          # listener from an address string (meshd/cli.py _HelpFormatter, meshd/sockets.py)
          "shutil", "lzma", "bz2", "encodings.idna", "stringprep", "unicodedata",
          # hashlib's OpenSSL binding (0.55 MB) for two digests (meshd/digest.py)
          "hashlib", "_hashlib")
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|(\s*)(\S+)$", re.MULTILINE)
ADMIN_PAGES = ("/admin/ready", "/metrics", "/admin/config", "/admin/endpoints", "/admin/routes", "/",
               "/dashboard/dashboard.js")
_ROOT = pathlib.Path(__file__).resolve().parents[2]


def imported(log: str) -> set[str]:
    return {match.group(2) for match in _IMPORT_LINE.finditer(log)}


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY or name in UNUSED)


async def _get(port: int, target: str, host: str = "127.0.0.1") -> int:
    conn = await RawConnection.open(port)
    try:
        return (await asyncio.wait_for(conn.request("GET", target, host=host), 5)).status
    finally:
        await conn.close()


async def test_one_process_imports_no_heavy_library(tmp_path: pathlib.Path, make_upstream, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    up = await make_upstream()
    async with MeshdProcess(tmp_path, process_config({"identifier": {"kind": "header", "header": "host"}})) as mesh:
        mesh.register("svc", up.address_line)
        await wait_until(lambda: _ok(mesh.port), timeout=10, message="meshd to proxy to svc")
        for page in ADMIN_PAGES:
            assert await _get(mesh.admin_port, page) == 200, page
        modules = imported(mesh.log_text())
    assert {"uvloop", "meshd.daemon", "meshd.admin.web"} <= modules  # the log was read right
    assert heavy_in(modules) == []


async def _ok(port: int) -> bool:
    return await _get(port, "/", host="svc") == 200


async def test_workers_and_their_supervisor_import_no_heavy_library(tmp_path: pathlib.Path, make_upstream) -> None:
    up = await make_upstream()
    port, admin_port = free_ports(2)
    config = process_config({"servers": [{"ip": "127.0.0.1", "port": port}],
                             "identifier": {"kind": "header", "header": "host"}},
                            admin={"ip": "127.0.0.1", "port": admin_port})
    (tmp_path / "disco").mkdir()
    (tmp_path / "disco" / "svc").write_text(up.address_line + "\n")
    (tmp_path / "meshd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", PYTHONPATH=str(_ROOT))
    log_path = tmp_path / "meshd.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "run", "-c", "meshd.yaml", "--workers", "2",
            cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )
    try:
        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"meshd exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                return await _get(admin_port, "/admin/ready") == 200
            except OSError:
                return False

        await wait_until(ready, timeout=30, message="the supervisor's /admin/ready (every worker ready)")
        await wait_until(lambda: _ok(port), timeout=10, message="the workers to proxy to svc")
        for page in ADMIN_PAGES:  # the supervisor answers some and forwards the others to worker 0
            assert await _get(admin_port, page) == 200, page
        workers = [int(pid) for pid in pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children")
                   .read_text().split()]
        assert len(workers) == 2
        for pid in (process.pid, *workers):
            maps = pathlib.Path(f"/proc/{pid}/maps").read_text()
            assert [name for name in HEAVY if f"/{name}/" in maps] == [], pid
        modules = imported(log_path.read_text(errors="replace"))
        assert {"uvloop", "meshd.workers", "meshd.daemon", "meshd.admin.web"} <= modules
        assert heavy_in(modules) == []
    finally:
        if process.returncode is None:
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 30) == 0
