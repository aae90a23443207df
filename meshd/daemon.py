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
import pathlib
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from meshd.admin.app import start_admin, start_admin_unix, stop_admin
from meshd.config.errors import ConfigError, ConfigProblem
from meshd.config.loader import load_config, to_yaml_dict
from meshd.config.model import MeshdConfig, RouterConfig, RoutesConfigMapConfig, ServerTlsConfig
from meshd.digest import sha256_hex
from meshd.discovery.base import Namer
from meshd.discovery.start import close_namers, start_namers
from meshd.fastpath import FastPath
from meshd.fastpath import enabled as fast_path_enabled
from meshd.h2fast import H2FastPath
from meshd.h2server import alpn_protocols, h2_protocol, h2_server_config
from meshd.handover import Inherited, Listening, serve_handover
from meshd.listener import Listener
from meshd.reload import ConfigMapRoutesWatcher, RoutesWatcher
from meshd.router import Router
from meshd.runtime import Runtime
from meshd.sockets import serve
from meshd.tls.contexts import TlsFiles, TlsSide, server_context
from meshd.tls.identity import peer_identity
from meshd.tracing.spans import Tracer
from routing.path import Path
from routing.rules import Routes

if TYPE_CHECKING:  # imported when tracing is configured: aiohttp and protobuf cost every process 11 MB
    from meshd.tracing.exporter import Exporter

log = logging.getLogger("meshd")

#: how often the routers are swept (idle pooled connections, the binding cache) and the TLS files polled
SWEEP_INTERVAL_S: Final = 1.0


@dataclass(slots=True)
class Bound:
    """A listening socket: which router, which server entry, and the port actually bound."""

    router: str
    index: int
    ip: str
    port: int
    listener: Listener
    server: asyncio.base_events.Server
    #: the port in the config (0: any free port, so `port` is what the OS chose)
    configured_port: int = 0


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a whole-config reload did: `applied`, `unchanged` or `refused`, and why."""

    result: str
    message: str
    version: str


def config_version(config: MeshdConfig) -> str:
    """A short hash of the effective config (what `/admin/config` shows), the same for the same
    settings whatever the file's layout or comments."""
    return sha256_hex(repr(to_yaml_dict(config)).encode())[:16]


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
    release_free_heap()


def release_free_heap(load: Callable[[], object] | None = None) -> bool:
    """Give the C heap's free pages back to the kernel (glibc's `malloc_trim(0)`); True if done.

    Start-up (imports, compiling the dataclasses' generated methods, parsing the config, the
    collection just before) frees a few MB that glibc keeps: in the middle of its heap it only
    returns pages when asked. Asking once after start-up lowers each worker's RSS by about 0.5 MB
    for good (docs/benchmarks-memory.md); later allocations reuse other free memory first. A C
    library without `malloc_trim` (musl, macOS) leaves everything as it was. `load` returns the C
    library (tests pass their own).
    """
    try:
        if load is None:
            import ctypes  # only here: the rest of meshd never needs it

            libc: object = ctypes.CDLL(None)
        else:
            libc = load()
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return False
    if trim is None:
        return False
    trim(0)
    return True


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


def load_config_path(path: pathlib.Path) -> MeshdConfig:
    """Read and validate a config file, as `meshd check` does (in a worker thread)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", None, f"cannot read the file: {exc}")], source=str(path)) from exc
    return load_config(text, MeshdConfig, source=str(path))


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
        config_path: pathlib.Path | None = None,
        inherited: Inherited | None = None,
        handover_path: pathlib.Path | None = None,
    ) -> None:
        self.config = config
        #: listening sockets taken over from the meshd this one replaces (meshd/handover.py)
        self._inherited = inherited
        #: where this meshd hands its sockets over to a newer one (`--handover-socket`)
        self._handover_path = handover_path
        self._handover_server: asyncio.AbstractServer | None = None
        self._stop_requested = asyncio.Event()
        #: the file `reload_from_file` reads again (SIGHUP, POST /admin/reload); None: not reloadable
        self.config_path = config_path
        self.config_version = config_version(config)
        #: when the active config was loaded (Unix time, for /admin/config)
        self.config_loaded_at = time.time()
        #: whole-config reloads by result (`meshd_config_file_reloads_total`)
        self.config_reloads: dict[str, int] = {"applied": 0, "unchanged": 0, "refused": 0}
        self.config_last_error: str | None = None
        self._reload_lock = asyncio.Lock()
        #: background tasks of reloads (retiring what a reload replaced, SIGHUP reloads)
        self._retiring: set[asyncio.Task[Any]] = set()
        self.runtime = runtime
        self._reuse_port = reuse_port
        self._with_admin = admin
        self._admin_unix_path = admin_unix_path
        self._tune_gc = tune_gc
        self.namers: dict[Path, Namer] = {}
        self.routers: list[Router] = []
        self.routes_watchers: dict[str, RoutesWatcher | ConfigMapRoutesWatcher] = {}
        #: each HTTP/2 router's fast path (meshd/h2fast.py), by label: made for the router object it serves
        self._h2_fast: dict[str, H2FastPath] = {}
        self.bound: list[Bound] = []
        self.ready = False
        self.admin_port: int | None = None
        self._admin_runner: object | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        #: the servers' TLS files (the clients' are their routers'), polled for rotation every second
        self.tls_files: list[TlsFiles] = []
        #: each TLS server's side: handshake metering (its handshakes under way, for tests)
        self.tls_sides: list[TlsSide] = []
        #: distributed tracing (docs/tracing.md): the tracer the routers use, and the task that
        #: sends its spans; both None while `tracing` has no collector
        self.exporter: Exporter | None = None
        self._tracer: Tracer | None = runtime.tracer
        self._configure_tracing(config)

    def _configure_tracing(self, config: MeshdConfig) -> None:
        """Make the runtime's tracer follow `config.tracing` (its settings change in place at a
        reload; whether it is on at all decides whether routers have the trace filter)."""
        tracing = config.tracing
        if tracing is None or not tracing.enabled:
            self.runtime.tracer = None
            return
        # one tracer for the daemon's life, so that its counters never go back
        tracer = self.runtime.tracer or self._tracer
        if tracer is None:
            tracer = Tracer(tracing.sample_rate, tracing.service_name, tracing.traces_url)
        else:
            tracer.configure(tracing.sample_rate, tracing.service_name, tracing.traces_url)
        self.runtime.tracer = self._tracer = tracer

    def _tracing_on(self) -> bool:
        return self.runtime.tracer is not None

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.runtime.tracer is not None and self.exporter is None:
            self.exporter = self._new_exporter(self.runtime.tracer)
        self.namers = await start_namers(self.config.namers, self.runtime)
        for router_config in self.config.routers:
            router, watcher = self._new_router(router_config, self.namers)
            self.routers.append(router)
            if watcher is not None:
                await watcher.start()
                self.routes_watchers[router.label] = watcher
            elif router_config.routes_config_map is not None:
                await self._watch_config_map(router, router_config.routes_config_map)
        loop = asyncio.get_running_loop()
        for router in self.routers:
            for index in range(len(router.config.servers)):
                self.bound.append(await self._listen(router, index))
        # the admin server reads the daemon through meshd.admin.view.MeshdView, which this class
        # satisfies (mypy checks it here); the admin package never imports this module
        if self._with_admin:
            self._admin_runner, self.admin_port = await start_admin(
                self, self.runtime.registry, self.config.admin.ip, self.config.admin.port
            )
            log.info("admin listening on %s:%d", self.config.admin.ip, self.admin_port)
        elif self._admin_unix_path is not None:
            self._admin_runner = await start_admin_unix(self, self.runtime.registry, self._admin_unix_path)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        if self._handover_path is not None:
            self._handover_server = await serve_handover(self._handover_path, self._listening, self._handed_over)
        if self._tune_gc:
            _tune_gc()
        self.ready = True
        if self._inherited is not None:
            self._inherited.ready()  # the previous meshd drains now
            self._inherited = None

    async def _listen(self, router: Router, index: int) -> Bound:
        """Open the listening socket of `router`'s server `index`."""
        server_config = router.config.servers[index]
        tls = server_config.tls
        listener = Listener(
            router.service, router.listener_limits(index), label=router.label, stats=router.stats,
            clock=self.runtime.clock, admission=router.admission,
            peer_identity=peer_identity if tls is not None and tls.ca_path else None,
        )
        listener.fast = FastPath(router) if fast_path_enabled() else None
        # TLS (docs/tls.md): the loop's own TLS under the same listener; the context it is given
        # makes each connection from the files' current context (rotation)
        alpn = alpn_protocols(router.config)
        context = self._server_tls(router.label, tls, alpn).context if tls is not None else None
        # HTTP/1.1 or HTTP/2 (meshd/h2server.py), decided per connection by the router serving
        # the socket then: a reload that changes `protocol` applies to the next connection
        factory = self._protocol_factory(router.label, listener)
        handshake_timeout_s = tls.handshake_timeout_ms / 1000.0 if tls is not None else None
        loop = asyncio.get_running_loop()
        inherited = (
            self._inherited.take(router.label, index, server_config.ip, server_config.port)
            if self._inherited is not None
            else None
        )
        if inherited is not None:
            # the very socket the previous meshd listened on, accept queue and all
            server = await loop.create_server(
                factory, sock=inherited, backlog=2048, ssl=context,
                ssl_handshake_timeout=handshake_timeout_s,
            )
        else:
            # bound here, not by the loop from an address string (meshd/sockets.py: 0.35 MB)
            server = await serve(
                factory, server_config.ip, server_config.port, reuse_port=self._reuse_port,
                backlog=2048, ssl=context, ssl_handshake_timeout=handshake_timeout_s,
            )
        port = server.sockets[0].getsockname()[1]
        log.info(
            "router %s listening on %s:%d%s", router.label, server_config.ip, port, " (TLS)" if tls is not None else ""
        )
        return Bound(router.label, index, server_config.ip, port, listener, server, server_config.port)

    def _new_router(self, config: RouterConfig, namers: dict[Path, Namer]) -> tuple[Router, RoutesWatcher | None]:
        """A router and its routing-file watcher (loaded: a bad routing file raises here)."""
        router = Router(config, self.runtime, namers)
        watcher = None
        if config.routes:
            watcher = RoutesWatcher(
                self.runtime.resolve_path(config.routes),
                router.set_routes_dtab,
                max_bytes=config.routes_max_bytes,
                clock=self.runtime.clock,
                on_routes=_match_rules_of(router),
            )
            watcher.load_initial()
        return router, watcher

    def _listening(self) -> list[tuple[Listening, int]]:
        """The listening sockets to hand over to a newer meshd, with their descriptors."""
        return [
            (Listening(b.router, b.index, b.ip, b.port, b.configured_port), b.server.sockets[0].fileno())
            for b in self.bound
        ]

    def _handed_over(self) -> None:
        """A newer meshd serves on our sockets: drain and stop, as on SIGTERM."""
        self._stop_requested.set()

    async def _watch_config_map(self, router: Router, cm: RoutesConfigMapConfig) -> None:
        """Start watching a router's routes ConfigMap, and wait (up to the router's
        bindingTimeoutMs) for its first version, so that meshd starts with its rules."""
        from meshd.discovery.k8s import K8sNamer  # loaded only when a k8s namer is configured

        namer = next(
            n for prefix, n in self.namers.items()
            if isinstance(n, K8sNamer) and (cm.namer is None or prefix == Path.read(cm.namer))
        )
        cm_watcher = ConfigMapRoutesWatcher(
            namer, cm.namespace, cm.name, cm.key, router.set_routes_dtab, max_bytes=router.config.routes_max_bytes,
            clock=self.runtime.clock, on_routes=_match_rules_of(router),
        )
        await cm_watcher.start()
        self.routes_watchers[router.label] = cm_watcher
        timeout_s = router.config.binding_timeout_ms / 1000.0
        if not await cm_watcher.wait_first(timeout_s):
            log.warning(
                "router %s: no version of %s within %.1f s (%s); serving the router's own dtab until one arrives",
                router.label, cm_watcher.source, timeout_s, cm_watcher.last_error or "no answer yet",
            )

    def _protocol_factory(self, label: str, listener: Listener) -> Callable[[], asyncio.Protocol]:
        """The protocol of each new connection on a socket of router `label`."""

        def make() -> asyncio.Protocol:
            router = next((r for r in self.routers if r.label == label), None)
            if router is None or router.config.protocol != "h2":
                return listener.protocol_factory()
            return h2_protocol(listener, h2_server_config(router.config.h2), router.h2_stats, router.grpc_stats,
                               self._h2_fast_path(router))

        return make

    def _h2_fast_path(self, router: Router) -> H2FastPath | None:
        """The HTTP/2 fast path of `router` (meshd/h2fast.py), one per router label, retargeted
        to the new router by a reload (connections keep it), None when off (`MESHD_FAST_PATH=0`)."""
        if not fast_path_enabled():
            return None
        fast = self._h2_fast.get(router.label)
        if fast is None:
            fast = self._h2_fast[router.label] = H2FastPath(router)
        elif fast.router is not router:
            fast.retarget(router)  # the connections holding it follow the reload
        return fast

    def _server_tls(self, label: str, tls: ServerTlsConfig, alpn: tuple[str, ...] = ()) -> TlsSide:
        resolve = self.runtime.resolve_path
        cert, key = resolve(tls.cert_path), resolve(tls.key_path)
        ca = resolve(tls.ca_path) if tls.ca_path else None
        paths = {"certPath": cert, "keyPath": key} | ({"caPath": ca} if ca is not None else {})
        files = TlsFiles(paths, lambda: server_context(cert, key, ca, tls.require_client_cert, alpn), self.runtime.tls)
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

    def _sweep(self) -> None:
        """Every `SWEEP_INTERVAL_S`: the routers' sweeps and the TLS files' poll. A timer callback
        rather than a task that sleeps: each wake-up runs no coroutine or future, and is one
        stall less for the requests then in flight (docs/benchmarks-analysis.md, "Tail at 1,000
        req/s, session 9"). A failing sweep is logged and the next one still runs."""
        try:
            for router in self.routers:
                router.sweep()
            self.poll_tls_files()
        except Exception:
            log.exception("the periodic sweep failed")
        finally:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._sweep)

    # -- whole-config reload ----------------------------------------------------------------------
    async def reload_from_file(self) -> ReloadOutcome:
        """Read `config_path` again and apply it (SIGHUP, `POST /admin/reload`); see `reload`.

        The file is read and parsed in a worker thread: a large or slow file never holds the loop.
        """
        if self.config_path is None:
            return self._refused("this meshd was not started from a config file")
        path = self.config_path
        try:
            config = await asyncio.to_thread(load_config_path, path)
        except ConfigError as exc:
            return self._refused(f"{path}: {exc}")
        return await self.reload(config)

    async def reload(self, config: MeshdConfig) -> ReloadOutcome:
        """Apply a new, already validated config without dropping a request.

        Routers whose settings are unchanged (and all of them, if the namers are unchanged) keep
        everything: clients, pools, budgets, counters. A changed router is built anew, with its
        routing file loaded, and takes over its listeners: a server that stays (same address and
        port) keeps its socket and its open connections, whose next request goes to the new
        router; new servers open; removed ones stop accepting and drain. The old router keeps
        serving the requests it had until they are answered (at most `drainTimeoutMs`), then its
        clients close. Changed namers are started anew and every router rebuilt on them. Nothing
        changes unless everything new could be built (a bad routing file, a port in use, a namer
        that cannot start: the reload is refused and the running config keeps serving).
        `admin` cannot change without a restart: a new value is reported and ignored.
        """
        async with self._reload_lock:
            if config == self.config:
                self.config_reloads["unchanged"] += 1
                return ReloadOutcome("unchanged", "the config is unchanged", self.config_version)
            old = self.config
            new_namers: dict[Path, Namer] | None = None
            built: list[tuple[Router, RoutesWatcher | None]] = []
            opened: list[Bound] = []
            kept: dict[str, Router] = {}
            tracing_was_on = self._tracing_on()
            old_tracer = self.runtime.tracer
            self._configure_tracing(config)
            # tracing switched on or off: every router is built again (with or without the filter)
            tracing_switched = self._tracing_on() != tracing_was_on
            try:
                if config.namers != old.namers:
                    new_namers = await start_namers(config.namers, self.runtime)  # closed below if the reload fails
                namers = new_namers if new_namers is not None else self.namers
                current = {r.label: r for r in self.routers}
                for router_config in config.routers:
                    same = current.get(router_config.label)
                    if same is not None and new_namers is None and same.config == router_config and not tracing_switched:
                        kept[router_config.label] = same
                    else:
                        built.append(self._new_router(router_config, namers))
                # sockets for servers that are new (a staying server keeps its socket)
                for router, _ in built:
                    for index in range(len(router.config.servers)):
                        if self._staying(router, index) is None:
                            opened.append(await self._listen(router, index))
            except Exception as exc:
                for b in opened:
                    b.server.close()
                for router, _ in built:
                    router.close()
                await close_namers(new_namers or {})
                self.runtime.tracer = old_tracer
                self._configure_tracing(old)
                return self._refused(f"the new config could not be applied: {exc}")
            await self._switch_exporter()
            self._switch(config, kept, built, opened, new_namers)
            for router, watcher in built:
                if watcher is not None:
                    await watcher.start()
                    self.routes_watchers[router.label] = watcher
                elif router.config.routes_config_map is not None:
                    await self._watch_config_map(router, router.config.routes_config_map)
            if config.admin != old.admin:
                log.warning("config reload: admin settings change only at restart; keeping %s:%d",
                            old.admin.ip, old.admin.port)
            self.config_reloads["applied"] += 1
            self.config_last_error = None
            changed = sorted(r.label for r, _ in built)
            message = f"applied: routers rebuilt: {', '.join(changed) or 'none'}"
            log.info("config reload %s (version %s)", message, self.config_version)
            return ReloadOutcome("applied", message, self.config_version)

    def _staying(self, router: Router, index: int) -> Bound | None:
        """The listening socket the new `router`'s server `index` takes over, if one stays."""
        server = router.config.servers[index]
        for b in self.bound:
            if b.router != router.label or b.ip != server.ip or b.configured_port != server.port:
                continue
            if server.port != 0 or b.index == index:  # port 0 (tests): the same entry by position
                return b
        return None

    def _switch(
        self,
        config: MeshdConfig,
        kept: dict[str, Router],
        built: list[tuple[Router, RoutesWatcher | None]],
        opened: list[Bound],
        new_namers: dict[Path, Namer] | None,
    ) -> None:
        """Swap the new routers in (synchronously: no request sees half of it) and retire the old."""
        retired = [r for r in self.routers if kept.get(r.label) is not r]
        retired_watchers = [w for label, w in self.routes_watchers.items() if label not in kept]
        for label in [label for label in self.routes_watchers if label not in kept]:
            del self.routes_watchers[label]
        bound: list[Bound] = [b for b in self.bound if b.router in kept]
        for router, _ in built:
            for index in range(len(router.config.servers)):
                b = self._staying(router, index)
                if b is not None:
                    listener = b.listener
                    listener.service = router.service
                    listener.limits = router.listener_limits(index)
                    listener.observe = router.stats.observe
                    listener.recent = router.stats.recent
                    listener.admission = router.admission
                    listener.fast = FastPath(router) if fast_path_enabled() else None
                    if router.label in self._h2_fast:
                        self._h2_fast[router.label].retarget(router)
                    b.index = index
                    bound.append(b)
        bound += opened
        dropped = [b for b in self.bound if b not in bound]
        self.bound = bound
        routers = {r.label: r for r in [*kept.values(), *(r for r, _ in built)]}
        self.routers = [routers[rc.label] for rc in config.routers]
        old_namers = None
        if new_namers is not None:
            old_namers, self.namers = self.namers, new_namers
        self.config = config
        self.config_version = config_version(config)
        self.config_loaded_at = time.time()
        task = asyncio.get_running_loop().create_task(
            self._retire(retired, retired_watchers, dropped, old_namers, config.drain_timeout_ms / 1000.0),
            name="config reload: retire",
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(
        self,
        routers: list[Router],
        watchers: list[RoutesWatcher | ConfigMapRoutesWatcher],
        dropped: list[Bound],
        namers: dict[Path, Namer] | None,
        drain_timeout_s: float,
    ) -> None:
        """Drain what a reload replaced: removed listeners, then the old routers once their requests
        are answered (or the drain timeout passes), then the old namers."""
        for watcher in watchers:
            await watcher.close()
        for b in dropped:
            b.server.close()
            b.listener.begin_drain()
        clock = self.runtime.clock
        deadline = clock.now() + drain_timeout_s
        try:
            while clock.now() < deadline and (
                any(r.admission.inflight for r in routers) or any(b.listener.connections for b in dropped)
            ):
                await clock.sleep(0.05)
        finally:  # cancelled by shutdown: close at once
            for b in dropped:
                b.listener.abort_all()
            for router in routers:
                router.close()
            for namer in (namers or {}).values():
                await namer.close()

    async def _switch_exporter(self) -> None:
        """After a reload: an exporter for a tracer that appeared, none for one that went."""
        tracer = self.runtime.tracer
        if self.exporter is not None and self.exporter.tracer is not tracer:
            await self.exporter.close()
            self.exporter = None
        if tracer is not None and self.exporter is None:
            self.exporter = self._new_exporter(tracer)

    def _new_exporter(self, tracer: Tracer) -> Exporter:
        """The OTLP exporter's task, started. Its module (aiohttp, the OTLP protobuf classes: about
        11 MB) is imported only here, so a meshd without tracing never loads it."""
        from meshd.tracing.exporter import Exporter

        exporter = Exporter(tracer, clock=self.runtime.clock)
        exporter.start()
        return exporter

    def _refused(self, reason: str) -> ReloadOutcome:
        self.config_reloads["refused"] += 1
        self.config_last_error = reason
        log.error("config reload refused, the running config keeps serving: %s", reason)
        return ReloadOutcome("refused", reason, self.config_version)

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
            self._sweeper = None
        for task in list(self._retiring):  # a reload still retiring what it replaced
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for watcher in self.routes_watchers.values():
            await watcher.close()
        for router in self.routers:
            router.close()
        for namer in self.namers.values():
            await namer.close()
        if self.exporter is not None:
            await self.exporter.close()  # one last bounded flush of the spans still queued
            self.exporter = None
        if self._admin_runner is not None:
            await stop_admin(self._admin_runner)
        if self._handover_server is not None:
            self._handover_server.close()
        self._stopped.set()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        task = asyncio.get_running_loop().create_task(self.reload_from_file(), name="config reload")
        self._retiring.add(task)  # kept referenced until done
        task.add_done_callback(self._retiring.discard)

    async def run_until_signalled(self) -> None:
        """Start, then serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = self._stop_requested
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
        except BaseException:
            if self._inherited is not None:
                self._inherited.abandon()  # the previous meshd serves on
            raise
        await stop.wait()
        log.info("signal received: draining (up to %d ms)", self.config.drain_timeout_ms)
        await self.shutdown()


def _match_rules_of(router: Router) -> Callable[[Routes], None]:
    """What a routes watcher calls with each version applied: install its rules with `match:` and
    its fault rules, and the rest of it (its `authorization` policy, docs/tls.md)."""

    def applied(routes: Routes) -> None:
        router.set_match_rules(routes.match_rules, routes.fault_rules, routes.mirror_rules)
        router.set_routes(routes)

    return applied
