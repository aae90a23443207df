"""Workers: `meshd run --workers N` forks N proxy processes sharing the listen ports (SO_REUSEPORT).

Python runs one core per process, so this is how meshd uses several cores, as Envoy's workers do:
the kernel spreads new connections over the workers; each has its own balancer state, pools and
retry budgets. The supervising process does no proxying. It serves the admin port: `/metrics`
sums every worker's counters (each worker serves its own metrics on a Unix socket in a private
run directory), `/admin/ready` is ready when every worker is, and the other admin pages are
answered by worker 0 (with `/admin/endpoints`, `/admin/requests` and `/admin/replicas` listing
every worker). A worker that dies is restarted; SIGTERM/SIGINT is passed on to all workers,
which drain, and the supervisor exits 0 when they all exited 0.

Liveness: the supervisor sends each worker a heartbeat (`/admin/ping` on its socket) every
`HEARTBEAT_S`, and exports `meshd_worker_up{worker}` (1 while the last answer is at most
`DOWN_AFTER_S` old), `meshd_worker_heartbeat_age_seconds{worker}` and
`meshd_worker_restarts_total{worker}` beside the workers' summed metrics. A worker whose event
loop is stuck still has a process, and only the heartbeat shows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import random
import signal
import time
from collections.abc import Callable, Iterator
from typing import Final

import httptools

from meshd.admin import web
from meshd.admin.metrics import METRICS
from meshd.config.model import MeshdConfig
from meshd.exposition import CONTENT_TYPE, Family, parse, render

log = logging.getLogger("meshd.workers")


def run_workers(
    config: MeshdConfig, base_dir: pathlib.Path, count: int, *, config_path: pathlib.Path | None = None
) -> int:
    rundir = _private_dir("meshd-workers-", room=len(f"/worker-{count - 1}.sock"))
    sockets = [rundir / f"worker-{i}.sock" for i in range(count)]
    pids: dict[int, int] = {}
    for index in range(count):
        pids[_spawn(config, base_dir, sockets[index], index, config_path)] = index
    import uvloop

    try:
        return uvloop.run(_supervise(config, base_dir, sockets, pids, config_path))
    finally:
        _remove_private_dir(rundir)


#: the longest path a Unix socket may have (sun_path is 108 bytes with the terminating NUL)
UNIX_PATH_MAX: Final = 107


def _private_dir(prefix: str, *, room: int = 0) -> pathlib.Path:
    """A new directory only this user can enter, in $TMPDIR (else $TEMP, $TMP, /tmp), as
    `tempfile.mkdtemp` makes one: tempfile imports shutil, and shutil zlib, bz2 and lzma (0.5 MB
    of RSS in the supervisor and every worker; docs/benchmarks-memory.md).

    `room`: the bytes a Unix socket's name needs after the directory's path. When $TMPDIR is too
    long for that (a socket path must fit in 107 bytes), the directory goes in /tmp instead, with
    a warning: before, the workers could not bind their sockets and were restarted forever."""
    base = next((value for key in ("TMPDIR", "TEMP", "TMP") if (value := os.environ.get(key))), "/tmp")
    longest = len(os.fsencode(pathlib.Path(base).absolute() / f"{prefix}{'0' * 12}")) + room
    if room and longest > UNIX_PATH_MAX and base != "/tmp":
        log.warning("$TMPDIR (%s) is too long for the workers' Unix sockets (%d bytes, at most %d): using /tmp",
                    base, longest, UNIX_PATH_MAX)
        base = "/tmp"
    for _ in range(100):
        path = pathlib.Path(base) / f"{prefix}{os.urandom(6).hex()}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path.absolute()
    raise FileExistsError(f"no unused name for a directory {prefix}* in {base}")


def _remove_private_dir(path: pathlib.Path) -> None:
    """Remove the supervisor's run directory and the workers' sockets left in it (best effort:
    what cannot be removed is left, and the exit goes on)."""
    try:
        for entry in path.iterdir():
            entry.unlink(missing_ok=True)
        path.rmdir()
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _spawn(
    config: MeshdConfig,
    base_dir: pathlib.Path,
    socket_path: pathlib.Path,
    index: int,
    config_path: pathlib.Path | None = None,
) -> int:
    pid = os.fork()
    if pid:
        return pid
    # -- in the worker ------------------------------------------------------------------------
    code = 1
    try:
        import uvloop

        from meshd.daemon import Daemon
        from meshd.runtime import Runtime

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM drains
        if config_path is not None and index >= 0:
            # A worker restarted after a crash starts from the file as it is now, so that it runs
            # what its siblings reloaded (SIGHUP); a file that no longer loads keeps the old config.
            from meshd.config.errors import ConfigError
            from meshd.daemon import load_config_path

            try:
                config = load_config_path(config_path)
            except ConfigError as exc:
                logging.getLogger("meshd").error("worker %d: %s; starting with the config it had", index, exc)
        daemon = Daemon(
            config,
            Runtime(base_dir=base_dir, rng=random.Random()),
            reuse_port=True,
            admin=False,
            admin_unix_path=str(socket_path),
            tune_gc=True,
            config_path=config_path,
        )
        uvloop.run(daemon.run_until_signalled())
        code = 0
    except BaseException:
        logging.getLogger("meshd").exception("worker %d failed", index)
    finally:
        os._exit(code)


async def _supervise(
    config: MeshdConfig,
    base_dir: pathlib.Path,
    sockets: list[pathlib.Path],
    pids: dict[int, int],
    config_path: pathlib.Path | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def reload_workers() -> None:
        # each worker reloads the file itself (and refuses a bad one itself)
        log.info("SIGHUP: passing it on to %d workers", len(pids))
        for pid in list(pids):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    loop.add_signal_handler(signal.SIGHUP, reload_workers)
    supervisor = Supervisor(sockets)
    heartbeats = [loop.create_task(supervisor.heartbeat(i), name=f"heartbeat-{i}") for i in range(len(sockets))]
    admin = await web.serve_tcp(supervisor.app(), config.admin.ip, config.admin.port)
    log.info("supervising %d workers; admin on %s:%d", len(sockets), config.admin.ip, config.admin.port)
    exit_code = 0
    while not stopping.is_set():
        reaped = await _reap(stopping)
        for pid, status in reaped:
            index = pids.pop(pid, None)
            if index is None:
                continue
            log.error("worker %d (pid %d) exited with status %d; restarting it", index, pid, status)
            pids[_spawn(config, base_dir, sockets[index], index, config_path)] = index
            supervisor.restarted(index)
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    while pids:
        pid, status = await loop.run_in_executor(None, os.wait)
        if pids.pop(pid, None) is not None and os.waitstatus_to_exitcode(status) != 0:
            exit_code = 1
    for task in heartbeats:
        task.cancel()
    await asyncio.gather(*heartbeats, return_exceptions=True)
    await admin.close()
    return exit_code


async def _reap(stopping: asyncio.Event) -> list[tuple[int, int]]:
    """Workers that exited, without blocking; returns promptly when `stopping` is set."""
    reaped: list[tuple[int, int]] = []
    while not reaped and not stopping.is_set():
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid:
            reaped.append((pid, os.waitstatus_to_exitcode(status)))
            continue
        try:
            await asyncio.wait_for(stopping.wait(), timeout=0.5)
        except TimeoutError:
            pass
    return reaped


#: how often the supervisor sends each worker a heartbeat, and how old the last answer may be
#: before the worker counts as down (a stuck event loop answers nothing)
HEARTBEAT_S = 1.0
DOWN_AFTER_S = 3.0
#: the families the supervisor itself exports (the workers' texts carry them empty)
_SUPERVISOR_FAMILIES = ("meshd_worker_up", "meshd_worker_heartbeat_age_seconds", "meshd_worker_restarts_total")


class Supervisor:
    """The supervisor's admin server: aggregates the workers' admin endpoints, and watches the
    workers' liveness with heartbeats."""

    def __init__(self, sockets: list[pathlib.Path], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sockets = sockets
        self._clock = clock
        now = clock()
        #: per worker: when it was (re)started, when it last answered a heartbeat, its restarts
        self.started = [now] * len(sockets)
        self.last_beat: list[float | None] = [None] * len(sockets)
        self.restarts = [0] * len(sockets)

    def restarted(self, index: int) -> None:
        """Worker `index` died and a new one was forked: its heartbeats start over."""
        self.restarts[index] += 1
        self.started[index] = self._clock()
        self.last_beat[index] = None

    async def beat(self, index: int) -> bool:
        """One heartbeat: whether worker `index` answered `/admin/ping` within DOWN_AFTER_S."""
        status, _, _ = await self._fetch(index, "/admin/ping", timeout_s=DOWN_AFTER_S)
        if status == 200:
            self.last_beat[index] = self._clock()
            return True
        return False

    async def heartbeat(self, index: int) -> None:
        """Heartbeats to worker `index` every HEARTBEAT_S, until cancelled (a cadence, not a limit)."""
        while True:
            await self.beat(index)
            await asyncio.sleep(HEARTBEAT_S)

    def liveness(self) -> list[tuple[bool, float]]:
        """Per worker: up, and seconds since its last heartbeat answer (or since it started)."""
        now = self._clock()
        out = []
        for started, beat in zip(self.started, self.last_beat, strict=True):
            age = now - (beat if beat is not None else started)
            out.append((beat is not None and age <= DOWN_AFTER_S, max(age, 0.0)))
        return out

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/admin/ping", self.ping),
                web.get("/admin/ready", self.ready),
                web.get("/admin/endpoints", self.endpoints),
                web.get("/admin/requests", self.requests),
                web.get("/admin/replicas", self.replicas),
                web.get("/{tail:.*}", self.forward),
            ]
        )
        return app

    async def _get(self, index: int, path: str) -> tuple[int, str]:
        status, body, _ = await self._fetch(index, path)
        return status, body.decode("utf-8", "replace")

    async def _fetch(self, index: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes, str]:
        try:
            return await asyncio.wait_for(web.fetch_unix(str(self.sockets[index]), path), timeout_s)
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            return 503, f"worker {index} unavailable: {exc}".encode(), "text/plain"

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong\n")

    async def ready(self, request: web.Request) -> web.Response:
        results = await asyncio.gather(*(self._get(i, "/admin/ready") for i in range(len(self.sockets))))
        if all(status == 200 for status, _ in results):
            return web.Response(text="ready\n")
        return web.Response(text="not ready\n", status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        results = await asyncio.gather(*(self._get(i, "/metrics") for i in range(len(self.sockets))))
        texts = [text for status, text in results if status == 200]
        families = [*_Merged(texts).collect(), *_Liveness(self.liveness(), self.restarts).collect()]
        return web.Response(body=render(families), headers={"Content-Type": CONTENT_TYPE})

    async def endpoints(self, request: web.Request) -> web.Response:
        results = await asyncio.gather(*(self._get(i, "/admin/endpoints") for i in range(len(self.sockets))))
        out = [
            {"worker": i, "routers": json.loads(text) if status == 200 else {"error": text}}
            for i, (status, text) in enumerate(results)
        ]
        return web.Response(text=json.dumps(out, indent=2) + "\n", content_type="application/json")

    async def requests(self, request: web.Request) -> web.Response:
        """Every worker's recent requests, per router, newest first, each tagged with its worker."""
        results = await asyncio.gather(*(self._get(i, request.path_qs) for i in range(len(self.sockets))))
        routers: dict[str, dict[str, object]] = {}
        rows: dict[str, list[dict[str, object]]] = {}
        for index, (status, text) in enumerate(results):
            if status != 200:
                continue
            for r in json.loads(text):
                merged = routers.setdefault(r["router"], {"router": r["router"], "recorded": 0})
                merged["recorded"] = int(str(merged["recorded"])) + r["recorded"]
                rows.setdefault(r["router"], []).extend({**row, "worker": index} for row in r["requests"])
        out = []
        for label, merged in routers.items():
            merged["requests"] = sorted(rows[label], key=lambda row: str(row["time"]), reverse=True)
            out.append(merged)
        return web.Response(text=json.dumps(out, indent=2) + "\n", content_type="application/json")

    async def replicas(self, request: web.Request) -> web.Response:
        """Every worker's per-replica history, each endpoint tagged with its worker."""
        results = await asyncio.gather(*(self._get(i, "/admin/replicas") for i in range(len(self.sockets))))
        merged: dict[str, object] = {}
        endpoints: list[dict[str, object]] = []
        for index, (status, text) in enumerate(results):
            if status != 200:
                continue
            data = json.loads(text)
            merged.update({k: v for k, v in data.items() if k != "endpoints"})
            endpoints.extend({**e, "worker": index} for e in data["endpoints"])
        merged["endpoints"] = endpoints
        return web.Response(text=json.dumps(merged, indent=2) + "\n", content_type="application/json")

    async def forward(self, request: web.Request) -> web.Response:
        """Other admin pages (and the dashboard's files) come from worker 0, content type included."""
        status, body, content_type = await self._fetch(0, request.path_qs)
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})


#: gauges that say which version each worker serves, and since when: the same in every worker
#: once they agree, so the merged value is the largest, not the sum
_NOT_SUMMED = frozenset({"meshd_routes_version", "meshd_routes_loaded_timestamp_seconds"})


class _Merged:
    """Sums the samples of identical series across the workers' exposition texts (instants: the earliest)."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Family]:
        families: dict[str, Family] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for text in self._texts:
            for family in parse(text):
                if family.name in _SUPERVISOR_FAMILIES:
                    continue  # the supervisor's own (empty in the workers' texts)
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Family(family.name, family.documentation, family.type)
                    sums[family.name] = {}
                bucket = sums[family.name]
                keep_max = family.name in _NOT_SUMMED
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if keep_max:
                        bucket[key] = max(bucket.get(key, sample.value), sample.value)
                    elif sample.name.endswith(("_timestamp_seconds", "_created")):
                        # an instant (a certificate's expiry, a config's load, when a namer's counter
                        # was created), not an amount: the earliest of the workers'
                        # (they differ only while a change is being taken up)
                        bucket[key] = min(bucket.get(key, sample.value), sample.value)
                    else:
                        bucket[key] = bucket.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in sums[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


class _Liveness:
    """`meshd_worker_up`, `meshd_worker_heartbeat_age_seconds`, `meshd_worker_restarts_total`."""

    def __init__(self, liveness: list[tuple[bool, float]], restarts: list[int]) -> None:
        self._liveness = liveness
        self._restarts = restarts

    def collect(self) -> Iterator[Family]:
        up = Family("meshd_worker_up", METRICS["meshd_worker_up"], "gauge")
        age = Family("meshd_worker_heartbeat_age_seconds", METRICS["meshd_worker_heartbeat_age_seconds"], "gauge")
        restarts = Family("meshd_worker_restarts_total", METRICS["meshd_worker_restarts_total"], "counter")
        for index, ((alive, seconds), count) in enumerate(zip(self._liveness, self._restarts, strict=True)):
            labels = {"worker": str(index)}
            up.add_sample("meshd_worker_up", labels, 1.0 if alive else 0.0)
            age.add_sample("meshd_worker_heartbeat_age_seconds", labels, round(seconds, 3))
            restarts.add_sample("meshd_worker_restarts_total", labels, float(count))
        yield up
        yield age
        yield restarts
