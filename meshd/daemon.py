"""Daemon: builds everything from a validated config, starts it, and drains it on SIGTERM.

Start order: namers (each does its first scan/list), routers (with their routing files loaded —
an invalid routing file at start-up is an error), listeners, then the admin server; readiness
turns on last. Stop order is the reverse: readiness off, stop accepting, let in-flight requests
finish up to the drain timeout (idle keep-alive connections are closed at once, busy ones after
their response), abort what is left, then close clients, namers and the admin server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from meshd.admin.app import start_admin, start_admin_unix, stop_admin
from meshd.config.model import MeshdConfig, ServerTlsConfig
from meshd.discovery.base import Namer
from meshd.listener import Listener
from meshd.reload import RoutesWatcher
from meshd.router import Router
from meshd.runtime import Runtime
from meshd.tls.contexts import TlsFiles, TlsSide, server_context
from meshd.tls.identity import peer_identity
from routing.path import Path

log = logging.getLogger("meshd")


@dataclass(slots=True)
class Bound:
    """A listening socket: which router, which server entry, and the port actually bound."""

    router: str
    index: int
    ip: str
    port: int
    listener: Listener
    server: asyncio.base_events.Server


def _tune_gc() -> None:
    """Move start-up objects out of the collector's sight and collect young objects less often.

    The proxy path allocates many short-lived containers per request; with CPython's default
    gen-0 threshold (700) the cyclic collector runs thousands of times a second and re-scans the
    long-lived config, routers and modules each time. Freezing them and raising the threshold
    cut the collector's share of CPU from about 5% to well under 1% in the throughput benchmark.
    Reference counting still frees almost everything at once; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def raise_open_file_limit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to the hard limit; return the result.

    Every downstream connection, upstream connection and file read takes a descriptor, and the
    usual soft limit (1,024) is far below what one meshd can serve; Envoy and nginx advise
    raising it. An unlimited hard limit is capped at 1,048,576 (Linux's default `nr_open`). If
    the raise is refused, the soft limit stays as it was. Called once at start (`meshd run`),
    before worker processes are forked, so they inherit it.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _UNLIMITED_NOFILE_CAP
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    log.info("open-file limit (RLIMIT_NOFILE): %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


#: the soft limit used when the hard limit is unlimited (Linux's default fs.nr_open)
_UNLIMITED_NOFILE_CAP = 1024 * 1024


class Daemon:
    def __init__(
        self,
        config: MeshdConfig,
        runtime: Runtime,
        *,
        reuse_port: bool = False,
        admin: bool = True,
        admin_unix_path: str | None = None,
        tune_gc: bool = False,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self._reuse_port = reuse_port
        self._with_admin = admin
        self._admin_unix_path = admin_unix_path
        self._tune_gc = tune_gc
        self.namers: dict[Path, Namer] = {}
        self.routers: list[Router] = []
        self.routes_watchers: dict[str, RoutesWatcher] = {}
        self.bound: list[Bound] = []
        self.ready = False
        self.admin_port: int | None = None
        self._admin_runner: object | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        #: the servers' TLS files (the clients' are their routers'), polled for rotation every second
        self.tls_files: list[TlsFiles] = []
        #: each TLS server's side: handshake metering (its handshakes under way, for tests)
        self.tls_sides: list[TlsSide] = []

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> None:
        for namer_config in self.config.namers:
            namer = namer_config.build(self.runtime)
            await namer.start()
            self.namers[namer.prefix] = namer
        for router_config in self.config.routers:
            router = Router(router_config, self.runtime, self.namers)
            self.routers.append(router)
            if router_config.routes:
                watcher = RoutesWatcher(
                    self.runtime.resolve_path(router_config.routes),
                    router.set_routes_dtab,
                    max_bytes=router_config.routes_max_bytes,
                    clock=self.runtime.clock,
                    on_routes=router.set_routes,
                )
                watcher.load_initial()
                await watcher.start()
                self.routes_watchers[router.label] = watcher
        loop = asyncio.get_running_loop()
        for router in self.routers:
            for index, server_config in enumerate(router.config.servers):
                tls = server_config.tls
                listener = Listener(
                    router.service, router.listener_limits(index), label=router.label, observe=router.stats.observe,
                    clock=self.runtime.clock, peer_identity=peer_identity if tls is not None and tls.ca_path else None,
                )
                # TLS (docs/tls.md): the loop's own TLS under the same listener; the context it is
                # given makes each connection from the files' current context (rotation)
                context = self._server_tls(router.label, tls).context if tls is not None else None
                server = await loop.create_server(
                    listener.protocol_factory,
                    server_config.ip,
                    server_config.port,
                    reuse_address=True,
                    reuse_port=self._reuse_port,
                    backlog=2048,
                    family=socket.AF_INET6 if ":" in server_config.ip else socket.AF_INET,
                    ssl=context,
                    ssl_handshake_timeout=tls.handshake_timeout_ms / 1000.0 if tls is not None else None,
                )
                port = server.sockets[0].getsockname()[1]
                self.bound.append(Bound(router.label, index, server_config.ip, port, listener, server))
                log.info(
                    "router %s listening on %s:%d%s", router.label, server_config.ip, port, " (TLS)" if tls is not None else ""
                )
        # the admin server reads the daemon through meshd.admin.view.MeshdView, which this class
        # satisfies (mypy checks it here); the admin package never imports this module
        if self._with_admin:
            self._admin_runner, self.admin_port = await start_admin(
                self, self.runtime.registry, self.config.admin.ip, self.config.admin.port
            )
            log.info("admin listening on %s:%d", self.config.admin.ip, self.admin_port)
        elif self._admin_unix_path is not None:
            self._admin_runner = await start_admin_unix(self, self.runtime.registry, self._admin_unix_path)
        self._sweeper = loop.create_task(self._sweep(), name="pool-sweeper")
        if self._tune_gc:
            _tune_gc()
        self.ready = True

    def _server_tls(self, label: str, tls: ServerTlsConfig) -> TlsSide:
        resolve = self.runtime.resolve_path
        cert, key = resolve(tls.cert_path), resolve(tls.key_path)
        ca = resolve(tls.ca_path) if tls.ca_path else None
        paths = {"certPath": cert, "keyPath": key} | ({"caPath": ca} if ca is not None else {})
        files = TlsFiles(paths, lambda: server_context(cert, key, ca, tls.require_client_cert), self.runtime.tls)
        self.tls_files.append(files)
        side = TlsSide(
            files, self.runtime.tls, server=True, router=label,
            handshake_timeout_s=tls.handshake_timeout_ms / 1000.0, now=self.runtime.clock.now,
        )
        self.tls_sides.append(side)
        return side

    def poll_tls_files(self) -> None:
        """Re-read every TLS file set; a changed, usable one is used from the next handshake."""
        for files in self.tls_files:
            files.poll()
        for router in self.routers:
            for files in router.tls_files.values():
                files.poll()

    def port_of(self, router: str, index: int = 0) -> int:
        for b in self.bound:
            if b.router == router and b.index == index:
                return b.port
        raise KeyError(f"no listener {router}[{index}]")

    def listeners_of(self, router: str) -> list[Listener]:
        return [b.listener for b in self.bound if b.router == router]

    def router(self, label: str) -> Router:
        for router in self.routers:
            if router.label == label:
                return router
        raise KeyError(label)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for router in self.routers:
                router.sweep()
            self.poll_tls_files()

    # -- stop -----------------------------------------------------------------------------------
    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to the drain timeout), then close all."""
        if drain_timeout_s is None:
            drain_timeout_s = self.config.drain_timeout_ms / 1000.0
        self.ready = False
        for b in self.bound:
            b.server.close()
        for b in self.bound:
            b.listener.begin_drain()
        try:
            async with self.runtime.clock.timeout(drain_timeout_s):
                await asyncio.gather(*(b.listener.wait_closed() for b in self.bound))
        except TimeoutError:
            open_count = sum(len(b.listener.connections) for b in self.bound)
            log.warning("drain timeout (%.1f s) reached; aborting %d connections", drain_timeout_s, open_count)
            for b in self.bound:
                b.listener.abort_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for watcher in self.routes_watchers.values():
            await watcher.close()
        for router in self.routers:
            router.close()
        for namer in self.namers.values():
            await namer.close()
        if self._admin_runner is not None:
            await stop_admin(self._admin_runner)
        self._stopped.set()

    async def run_until_signalled(self) -> None:
        """Start, then serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: draining (up to %d ms)", self.config.drain_timeout_ms)
        await self.shutdown()
