"""The `k8s` namer: Kubernetes service discovery from EndpointSlices (or core Endpoints), in the
manner of linkerd 1's `io.l5d.k8s`.

Names are `/#/k8s/<namespace>/<port-name-or-number>/<service>[/residual]`; the bound id is the
prefix plus the first three labels, lower-cased. One `ServiceWatch` per (namespace, service)
lists and watches that service's endpoint objects and its Service, shared by every port and
every client using it. `lookup()` is pending until both first lists completed, then NEG (no such
service or port) or a Leaf; `addr(id)` is the live set of ready endpoints. Each `addr()` call
takes a reference and each `release()` drops one; a watch nobody references and nobody looked up
for `idleTtlSecs` is closed (and `version` bumped, since lookups would now be pending again).

kubernetes_asyncio (~40 MB RSS) is imported only when the namer first connects.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pathlib
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from meshd.clock import Timer
from meshd.discovery.addr import Addr, Failed
from meshd.discovery.base import Freshness
from meshd.discovery.k8s_config import SERVICE_ACCOUNT_DIR, K8sNamerConfig
from meshd.discovery.k8s_config import K8sBackoffConfig as K8sBackoffConfig  # re-exported
from meshd.discovery.k8s_informer import MALFORMED, Informer, KubeApiError
from meshd.discovery.k8s_model import (
    MalformedObject,
    parse_endpoint_slice,
    parse_endpoints,
    parse_service_name,
)
from meshd.discovery.k8s_watch import ServiceWatch, Sources, WatchStats
from meshd.exposition import Counter, Registry
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG, Leaf, NameTree
from routing.path import Path

if TYPE_CHECKING:
    from meshd.discovery.k8s_client import KubeClient

# -- metrics: one block, so that they can move to meshd/admin/metrics.py as they are ------------


@dataclass(frozen=True, slots=True)
class K8sMetrics:
    watch_events: Counter
    watch_restarts: Counter
    api_errors: Counter

    @classmethod
    def on(cls, registry: Registry) -> K8sMetrics:
        """The metrics registered on `registry` (once, however many k8s namers share it)."""
        metrics = _METRICS.get(registry)
        if metrics is None:
            metrics = cls(
                watch_events=Counter(
                    "meshd_k8s_watch_events_total",
                    "Kubernetes watch events received (MALFORMED: objects or lines that were skipped)",
                    ["namespace", "service", "type"], registry=registry),
                watch_restarts=Counter(
                    "meshd_k8s_watch_restarts_total",
                    "Kubernetes watches that ended and were started again (eof, expired, error)",
                    ["namespace", "service", "reason"], registry=registry),
                api_errors=Counter(
                    "meshd_k8s_api_errors_total",
                    "Failed Kubernetes API calls by HTTP status or unreachable/timeout/invalid_json/config",
                    ["code"], registry=registry),
            )
            _METRICS[registry] = metrics
        return metrics


_METRICS: Final[weakref.WeakKeyDictionary[Registry, K8sMetrics]] = weakref.WeakKeyDictionary()

# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class K8sNamerStats:
    connected: bool
    source: str | None
    watches: tuple[WatchStats, ...]


class K8sNamer:
    """The namer (see the module docstring). Build it with `K8sNamerConfig.build(runtime)`."""

    def __init__(
        self,
        config: K8sNamerConfig,
        runtime: Runtime,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        environ: Mapping[str, str] = os.environ,
        service_account_dir: pathlib.Path = SERVICE_ACCOUNT_DIR,
    ) -> None:
        self._config = config
        self._runtime = runtime
        self._prefix = Path.read(config.prefix)
        # backoff sleeps: the runtime's clock's (a test may record them instead with `sleep`)
        self._sleep = sleep or runtime.clock.sleep
        self._environ = environ
        self._service_account_dir = service_account_dir
        self._log = runtime.log.getChild("k8s")
        self._metrics = K8sMetrics.on(runtime.registry)
        self._backoff = config.backoff.build(runtime.rng)
        self._version: Observable[int] = Observable(0)
        self._watches: dict[tuple[str, str], ServiceWatch] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._timers: dict[tuple[str, str], Timer] = {}
        self._client: KubeClient | None = None
        self._client_lock = asyncio.Lock()
        self._use_slices: bool | None = config.use_endpoint_slices
        self._closed = False

    # -- Namer protocol ---------------------------------------------------------------------------

    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def version(self) -> Observable[int]:
        return self._version

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        name = parse_service_name(path)
        if name is None:
            return NEG
        if self._closed:
            return None
        watch = self._watch(name.namespace, name.service)
        watch.touch()
        answer = watch.answer(name.port)
        if answer == "pending":
            return None
        if answer == "neg":
            return NEG
        bound_id = self._prefix.concat(Path.of(name.namespace, name.port, name.service))
        return Leaf(BoundName(id=bound_id, residual=path.drop(3)))

    def why(self, path: Path) -> str | None:
        """Why `lookup(path)` is negative or pending now (for `l5d-err`), or None when it is bound."""
        name = parse_service_name(path)
        if name is None:
            return "not a k8s name: expected /<namespace>/<port>/<service>"
        watch = self._watches.get((name.namespace, name.service))
        if watch is None:
            return None
        reason = watch.why(name.port)
        return f"service {name.namespace}/{name.service}: {reason}" if reason is not None else None

    def addr(self, id: Path) -> Observable[Addr]:
        rest = id.drop(len(self._prefix)) if id.starts_with(self._prefix) else None
        name = parse_service_name(rest) if rest is not None and len(rest) == 3 else None
        if name is None:
            return Observable[Addr](Failed(f"not a k8s namer id: {id.show()}"))
        if self._closed:
            return Observable[Addr](Failed("the k8s namer is closed"))
        watch = self._watch(name.namespace, name.service)
        watch.refcount += 1
        watch.touch()
        return watch.addr(name.port)

    def release(self, id: Path) -> None:
        rest = id.drop(len(self._prefix)) if id.starts_with(self._prefix) else None
        name = parse_service_name(rest) if rest is not None else None
        watch = self._watches.get((name.namespace, name.service)) if name is not None else None
        if watch is None or watch.refcount == 0:
            return
        watch.refcount -= 1
        watch.touch()
        if watch.refcount == 0:
            self._schedule_idle_check((watch.namespace, watch.service), self._config.idle_ttl_secs)

    async def start(self) -> None:
        """Load the client configuration now, so a broken kubeconfig stops meshd at startup."""
        await self._ensure_client()

    async def close(self) -> None:
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values()) + list(self._stopping)
        self._watches.clear()
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- ConfigMaps (a router's routes) ------------------------------------------------------------

    async def watch_config_map(self, namespace: str, name: str, on_change: Callable[[ConfigMapState], None]) -> None:
        """List and watch one ConfigMap through this namer's API connection until cancelled.

        `on_change` is called on the event loop after every list, every change and every failed
        call, with the object as the API last gave it (None once a list or watch says it does
        not exist). Failures are retried with the namer's backoff and never raise out of here:
        the last state received stays in force (see `Informer`). Counted in the namer's metrics
        with `service="configmap:<name>"`.
        """
        delays = self._backoff.delays()
        while True:  # connecting (loading the client configuration) is retried too
            try:
                client = await self._ensure_client()
                break
            except KubeApiError as exc:
                self._metrics.api_errors.labels(exc.code).inc()
                on_change(ConfigMapState(False, None, f"{exc.code}: {exc}", "backoff", None))
                await self._sleep(next(delays))
        informer: Informer[Mapping[str, object]] | None = None

        def changed() -> None:
            assert informer is not None
            failing = informer.state == "backoff"
            obj = informer.items.get(name)
            error = informer.last_error if failing else None
            on_change(ConfigMapState(informer.synced, obj, error, informer.state, informer.resource_version))

        informer = Informer(
            client.config_maps(namespace, name),
            parse=_config_map_object,
            on_change=changed,
            hooks=_WatchHooks(self._metrics, namespace, f"configmap:{name}"),
            backoff=self._backoff,
            clock=self._runtime.clock,
            log=self._log,
            sleep=self._sleep,
        )
        await informer.run()

    # -- introspection ----------------------------------------------------------------------------

    def statistics(self) -> K8sNamerStats:
        source = None if self._use_slices is None else ("endpointslices" if self._use_slices else "endpoints")
        watches = tuple(w.statistics() for _, w in sorted(self._watches.items()))
        return K8sNamerStats(connected=self._client is not None, source=source, watches=watches)

    def freshness(self) -> list[Freshness]:
        """Each watched service (`namespace/service`): current while its watches are healthy."""
        now = self._runtime.clock.now()
        out = []
        for (namespace, service), watch in sorted(self._watches.items()):
            confirmed_at, stale = watch.freshness(now)
            out.append(Freshness(f"{namespace}/{service}", confirmed_at, stale))
        return out

    def state_dump(self) -> dict[str, object]:
        """`statistics()` as plain JSON-able data, for /admin."""
        return {"prefix": self._prefix.show(), **asdict(self.statistics())}

    def __repr__(self) -> str:
        return f"<K8sNamer {self._prefix.show()} watches={len(self._watches)}>"

    # -- internals --------------------------------------------------------------------------------

    def _watch(self, namespace: str, service: str) -> ServiceWatch:
        key = (namespace, service)
        watch = self._watches.get(key)
        if watch is None:
            watch = ServiceWatch(
                namespace,
                service,
                open_sources=lambda: self._open_sources(namespace, service),
                hooks=_WatchHooks(self._metrics, namespace, service),
                backoff=self._backoff,
                clock=self._runtime.clock,
                log=self._log,
                on_answers_changed=self._bump_version,
                sleep=self._sleep,
            )
            self._watches[key] = watch
            task = asyncio.get_running_loop().create_task(watch.run(), name=f"k8s watch {namespace}/{service}")
            self._tasks[key] = task
            self._schedule_idle_check(key, self._config.idle_ttl_secs)
        return watch

    def _schedule_idle_check(self, key: tuple[str, str], delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self._runtime.clock.call_later(max(delay, 0.0), functools.partial(self._idle_check, key))

    def _idle_check(self, key: tuple[str, str]) -> None:
        """Close the watch if nobody holds it and nobody looked it up for idleTtlSecs."""
        self._timers.pop(key, None)
        watch = self._watches.get(key)
        if watch is None or watch.refcount > 0:
            return
        left = watch.last_used + self._config.idle_ttl_secs - self._runtime.clock.now()
        if left > 0:
            self._schedule_idle_check(key, left)
            return
        del self._watches[key]
        task = self._tasks.pop(key)
        task.cancel()
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        self._log.debug("k8s %s/%s: idle for %ss, watch closed", key[0], key[1], self._config.idle_ttl_secs)
        if watch.has_answers:
            self._bump_version()

    def _bump_version(self) -> None:
        self._version.set(self._version.get() + 1)

    async def _open_sources(self, namespace: str, service: str) -> Sources:
        client = await self._ensure_client()
        if self._use_slices is None:
            self._use_slices = await client.serves_endpoint_slices()
            if not self._use_slices:
                self._log.warning("k8s: discovery.k8s.io/v1 EndpointSlices are not served; using core/v1 Endpoints")
        if self._use_slices:
            return Sources(client.endpoint_slices(namespace, service), parse_endpoint_slice,
                           client.services(namespace, service), "endpointslices")
        return Sources(client.endpoints(namespace, service), parse_endpoints,
                       client.services(namespace, service), "endpoints")

    async def _ensure_client(self) -> KubeClient:
        async with self._client_lock:
            if self._client is None:
                from meshd.discovery.k8s_client import ConnectionSettings, KubeClient

                cfg = self._config
                kubeconfig = str(self._runtime.resolve_path(cfg.kubeconfig)) if cfg.kubeconfig else None
                settings = ConnectionSettings(
                    mode=cfg.connection_mode(self._environ, self._service_account_dir),
                    api_url=cfg.api_url,
                    kubeconfig=kubeconfig,
                    context=cfg.context,
                    watch_timeout_secs=cfg.watch_timeout_secs,
                    request_timeout_secs=cfg.request_timeout_secs,
                    service_account_dir=str(self._service_account_dir),
                    environ=self._environ,
                )
                self._client = await KubeClient.connect(settings)
                self._log.info("k8s: using %s", _describe(settings.mode, cfg, kubeconfig))
            return self._client


class _WatchHooks:
    """Counts one service's watch activity into the shared metrics."""

    __slots__ = ("_metrics", "_namespace", "_service")

    def __init__(self, metrics: K8sMetrics, namespace: str, service: str) -> None:
        self._metrics = metrics
        self._namespace = namespace
        self._service = service

    def event(self, event_type: str) -> None:
        label = event_type if event_type in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK") else MALFORMED
        self._metrics.watch_events.labels(self._namespace, self._service, label).inc()

    def restart(self, reason: str) -> None:
        self._metrics.watch_restarts.labels(self._namespace, self._service, reason).inc()

    def api_error(self, code: str) -> None:
        self._metrics.api_errors.labels(code).inc()


@dataclass(frozen=True, slots=True)
class ConfigMapState:
    """What `K8sNamer.watch_config_map` knows of one ConfigMap now.

    `synced`: a list has succeeded (so `obj` None means "does not exist"); `obj`: the raw
    ConfigMap; `error`: the last failed API call while the watch is failing (None when it is
    not); `state`: the informer's state; `resource_version`: the collection's last RV.
    """

    synced: bool
    obj: Mapping[str, object] | None
    error: str | None
    state: str
    resource_version: str | None


def _config_map_object(raw: Mapping[str, object]) -> Mapping[str, object]:
    """A ConfigMap is kept as the API's own dict; only its shape is checked here."""
    for key in ("data", "binaryData"):
        value = raw.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise MalformedObject(f"ConfigMap {key} is not an object")
    return raw


def _describe(mode: str, cfg: K8sNamerConfig, kubeconfig: str | None) -> str:
    if mode == "url":
        return f"API server at {cfg.api_url}"
    if mode == "in_cluster":
        return "in-cluster service account"
    return f"kubeconfig {kubeconfig or '(default)'}" + (f" context {cfg.context}" if cfg.context else "")


__all__ = ["ConfigMapState", "K8sBackoffConfig", "K8sMetrics", "K8sNamer", "K8sNamerConfig", "K8sNamerStats", "KubeApiError"]
