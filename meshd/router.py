"""Router: one listener's worth of meshd — identifier, dtab, services per logical name, clients per bound name.

The router owns three levels of state, as linkerd's does (see docs/architecture.md):
- router level: the assembled request pipeline, request stats, the binder and its cache;
- service level, one per logical name (`/svc/accounts`): total timeout, retries and their budget;
- client level, one per bound name (`/#/fs/accounts`): balancer, failure accrual, endpoint pools.
Services and clients are created on first use. Clients follow their namer's address set.

The service table is bounded, because a client can invent logical names (any Host header). The
first `MAX_SERVICES` names (the ones the request stats label, see meshd/pipeline/stats.py) are
*named* services: each has its own counters, exported under its name, and is never dropped for
room (only when idle, below). Every later name is a *folded* service: its counters are shared by all folded
services (exported under `_other`), it counts its requests in flight, and when the table holds
`MAX_SERVICE_STATES` services the least recently used folded ones with nothing in flight are
dropped, `EVICT_BATCH` at a time. A dropped name that comes back gets a fresh retry budget; no
count is lost, and a named service (a real one, unless invented names came first) never loses
its budget.

Lifecycles (`bindingCache.idleTtlSecs`, 600 s by default). Every sweep (about once a second)
notes when its tick began; every `_scan_interval` seconds (10 s) the sweep drops what was not used for
the idle time: folded services with nothing in flight, named services (their pipeline goes; their
budget and counters stay in `named`, still exported, and are taken up again when the name comes
back), the binder's cached bindings of the dropped names, and clients with nothing under way. A
dropped client drains its pools, unsubscribes from its address set and releases it: through the
transformers (`Transformer.release`) down to the namer (`Namer.release`), which closes its watch
when no client of any router holds it. What "used" means costs one attribute store per request
(the service) and per attempt (the client): the current sweep tick.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from meshd.adaptive import GradientLimit
from meshd.admission import Admission
from meshd.client import Client, ClientSettings
from meshd.config.model import ClientConfig, ClientOverride, ClientTlsConfig, RouterConfig, server_name_for
from meshd.discovery.addr import Addr, Address, Bound, Failed
from meshd.discovery.base import Namer
from meshd.errors import NoSuchService
from meshd.grpc.stats import GrpcStats
from meshd.http.messages import Response
from meshd.http2.backends import fallback_reason as h2_fallback_reason
from meshd.http2.codec import H2Settings
from meshd.http2.factory import backend_name as h2_backend_name
from meshd.http2.guard import H2Stats
from meshd.listener import ListenerLimits
from meshd.observable import Observable
from meshd.pipeline.access_log import AccessLog
from meshd.pipeline.assemble import SERVICE_ROLES, retries_for, router_stack, service_stack
from meshd.pipeline.authorize import Authorization
from meshd.pipeline.bind import Binder, bind_service
from meshd.pipeline.context import RouteContext
from meshd.pipeline.hygiene import RequestIds, TrustPolicy
from meshd.pipeline.mirror import Mirroring
from meshd.pipeline.retries import Resumable, RetryCounters
from meshd.pipeline.stack import Filter, Service
from meshd.pipeline.stats import OVERFLOW_SERVICE, RouterStats
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.pool.dialer import Dialer, TcpDialer, TlsDialer
from meshd.pool.h2 import H2PoolSettings
from meshd.pool.pool import PoolLimits
from meshd.retry.budget import RetryBudget
from meshd.retry.classifiers import ResponseClassifier
from meshd.retry.deadline import WALL_CLOCK_NS
from meshd.runtime import Runtime
from meshd.tls.contexts import TlsFiles, TlsSide, client_context
from meshd.transformers import Transformer
from routing.delegate import Chooser
from routing.dtab import Dtab
from routing.match import MatchRule, MatchRules
from routing.namer import BoundName, inet_address
from routing.nametree import Empty, Fail
from routing.parser import parse_dtab
from routing.path import Path
from routing.rules import Routes

log = logging.getLogger("meshd.router")

#: Service-level states a router keeps (named and folded together); past this, folded ones are dropped.
MAX_SERVICE_STATES: Final = 10_000
#: Folded services dropped by one eviction: it then runs once per this many new names, not per name.
EVICT_BATCH: Final = 1_000
#: The longest time between two scans for idle services and clients (shorter for short idle times).
IDLE_SCAN_INTERVAL_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class FastService:
    """What the fast path (meshd/fastpath.py) needs of a logical name whose service chain is
    exactly classify, timeouts (no total timeout) and retries (no access log): the classifier,
    the retry budget, whether to add `l5d-success-class`, and the service's own retry stage over
    the choice of destination, to hand a request over to after its first attempt."""

    classifier: ResponseClassifier
    budget: RetryBudget
    add_success_class: bool
    retry: Resumable
    #: the classifier's `reads_trailers` (gRPC), read once here rather than per response
    reads_trailers: bool = False


@dataclass(slots=True)
class ServiceState:
    """One logical name's service-level state: its pipeline, retry budget and counters.

    `label` is the `service` label its series are exported under: its name, or `_other` for a
    folded service (whose `retries` and `timeouts` are then the router's shared folded counters).
    """

    name: str
    label: str
    service: Service
    budget: RetryBudget
    retries: RetryCounters
    timeouts: TimeoutCounters
    folded: bool
    #: the router's sweep tick (about one a second) when this service last took a request
    used: int = 0
    #: requests inside this service's pipeline now (counted for folded services only)
    in_flight: int = 0
    #: set when the fast path may serve this name's requests (see `FastService`)
    fast: FastService | None = None


class Router:
    def __init__(
        self,
        config: RouterConfig,
        runtime: Runtime,
        namers: Mapping[Path, Namer],
        *,
        dialer: Dialer | None = None,
    ) -> None:
        self.config = config
        self.label = config.label
        self.runtime = runtime
        self._rng: random.Random = runtime.rng
        self._namers = dict(namers)
        self.stats = RouterStats(config.label)
        #: admission control, shared by this router's listeners (meshd/admission.py)
        self.admission = Admission(
            config.label,
            max_concurrent=config.max_concurrent_requests,
            max_pending=config.max_pending_requests,
            pending_timeout_s=config.pending_timeout_ms / 1000.0,
            clock=runtime.clock,
        )
        #: the adaptive concurrency limit (meshd/adaptive.py), None unless configured: the
        #: listener samples each request's latency into it
        self.adaptive: GradientLimit | None = None
        adaptive = config.adaptive_concurrency
        if adaptive is not None:
            self.adaptive = GradientLimit(
                self.admission,
                initial_limit=adaptive.initial_limit,
                min_limit=adaptive.min_limit,
                tolerance=adaptive.tolerance,
                window_ms=adaptive.window_ms,
                min_samples=adaptive.min_samples,
                min_latency_interval_s=float(adaptive.min_latency_interval_secs),
                min_latency_samples=adaptive.min_latency_samples,
            )
        self.own_dtab = parse_dtab(config.dtab)
        #: the effective base dtab: the router's own dtab followed by the routes file's entries
        self.dtab: Observable[Dtab] = Observable(self.own_dtab)
        self.binder = Binder(
            self.dtab,
            self._namers,
            [n.version for n in self._namers.values()],
            binding_timeout_s=config.binding_timeout_ms / 1000.0,
            clock=runtime.clock,
        )
        self._dialer = dialer
        self.transformers = [t.build(runtime, self._namers) for t in config.transformers]
        self.services: dict[Path, ServiceState] = {}
        #: the named services by name, at most MAX_SERVICES of them, never forgotten: one dropped
        #: from `services` while idle stays here with its budget and counters (no pipeline)
        self.named: dict[str, ServiceState] = {}
        #: the counters every folded service shares (exported under `_other`)
        self.folded_retries = RetryCounters()
        self.folded_timeouts = TimeoutCounters()
        #: folded services created, and dropped from the table, since start
        self.folded_created = 0
        self.evicted = 0
        self._tick = 0
        #: MAX_SERVICE_STATES and EVICT_BATCH (attributes so that tests can use small ones)
        self.max_service_states = MAX_SERVICE_STATES
        self.evict_batch = EVICT_BATCH
        self.clients: dict[Path, Client] = {}
        #: idle eviction: the idle time, when the next scan runs, and when each recent tick began
        self.idle_ttl_s = float(config.binding_cache.idle_ttl_secs)
        self._scan_interval = min(IDLE_SCAN_INTERVAL_S, self.idle_ttl_s / 4)
        self._next_scan = runtime.clock.now() + self._scan_interval
        self._tick_starts: deque[tuple[int, float]] = deque([(0, runtime.clock.now())])
        #: services and clients dropped for being idle, since start
        self.idle_evicted_services = 0
        self.idle_evicted_clients = 0
        #: attempts that evicted clients sent to a forwarding meshd (their share of the counter)
        self.evicted_forwarded = 0
        #: the policy in force (the routes file's `authorization`, else the config's) on a router
        #: with a TLS server or an `authorization` section (docs/tls.md); None: no authorize filter
        #: at all (a plaintext router pays nothing; it has no identities to authorize anyway)
        self.config_policy = config.authorization.build() if config.authorization is not None else None
        self.authorization: Authorization | None = None
        if config.authorization is not None or any(s.tls is not None for s in config.servers):
            self.authorization = Authorization(self.config_policy)
        #: the client-side TLS files, one per distinct `tls` section of the clients (rotation polls them)
        #: (keyed by the section and the ALPN protocols offered, which follow the client's protocol)
        self.tls_files: dict[tuple[ClientTlsConfig, tuple[str, ...]], TlsFiles] = {}
        sections: list[ClientConfig | ClientOverride] = [config.client, *config.clients]
        for section in sections:
            tls = section.tls
            if tls is not None:
                # loaded at start: unusable files are a start-up error, not a request's
                self._tls_files(tls, _client_alpn(section.protocol or config.client.protocol or config.protocol))
        #: HTTP/2 counters of this router's servers and upstream pools (docs/http2.md)
        self.h2_stats = H2Stats()
        #: gRPC counters (`grpc-timeout`, calls by grpc-status) on a router that can carry gRPC
        #: (`protocol: h2`; docs/grpc.md); None on HTTP/1-only routers, which never look for gRPC
        self.grpc_stats: GrpcStats | None = GrpcStats(self.stats.label_for) if config.protocol == "h2" else None
        #: the SETTINGS of the upstream pools that speak HTTP/2 (a router with `protocol: h2`, or
        #: clients with `protocol: h2`): the router's `h2` section
        h2 = config.h2
        self._h2_settings = H2Settings(
            max_concurrent_streams=h2.max_concurrent_streams,
            initial_window_size=h2.initial_window_size,
            max_frame_size=h2.max_frame_size,
            max_header_list_size=h2.max_header_list_size,
        )
        if config.speaks_h2:
            # chosen now, so a MESHD_H2_CODEC naming a codec that is not there stops the start
            codec = h2_backend_name()
            why = h2_fallback_reason() if codec == "h2ref" else None  # None: nghttp2 is there, h2ref forced
            log.info("router %s: HTTP/2 codec: %s%s", self.label, codec, f" ({why})" if why else "")
        self.stack = router_stack(
            trust=TrustPolicy(config.trusted_sources),
            ids=RequestIds(),
            identifier=config.identifier.build(),
            identity=any(s.tls is not None and s.tls.ca_path for s in config.servers),
            authorization=self.authorization,
            tracer=runtime.tracer,
            label=config.label,
        )
        #: the routing file's rules with `match:` (empty: the request path tests this and goes on)
        self.match_rules = MatchRules()
        #: `match_rules.active`, kept in this native object: the fast paths test it per request
        self.rules_active = False
        #: the routing file's mirror rules' copies, and their counts (meshd/pipeline/mirror.py)
        self.mirroring = Mirroring(self.binder, self, rng=self._rng, clock=runtime.clock)
        #: the terminal router-level step (bind, then the name's service): where the fast path
        #: hands a request over after running the filters itself
        self.bind: Service = bind_service(
            self.binder, self, self.match_rules, rng=self._rng, clock=runtime.clock, mirroring=self.mirroring
        )
        self.service: Service = self.stack.build(self.bind)
        #: the router-level filters, run as plain calls by the fast path (meshd/fastpath.py)
        self.filters: tuple[Filter, ...] | None = self.stack.filters()

    # -- limits for this router's listeners ----------------------------------------------------
    def listener_limits(self, index: int) -> ListenerLimits:
        server = self.config.servers[index]
        return ListenerLimits(
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            header_timeout_s=server.header_timeout_ms / 1000.0,
            idle_timeout_s=server.idle_timeout_ms / 1000.0,
            body_idle_timeout_s=server.body_idle_timeout_ms / 1000.0,
            # bodies are buffered for replay by the listener, before the service is known: keep
            # the largest buffer any service of this router may use
            replay_limit=max(
                [self.config.service.replay_buffer_bytes]
                + [o.replay_buffer_bytes for o in self.config.services if o.replay_buffer_bytes is not None]
            ),
        )

    # -- routing-file support ---------------------------------------------------------------
    def set_routes_dtab(self, routes: Dtab) -> None:
        """Install the routes file's entries after the router's own dtab (so they take precedence)."""
        self.dtab.set(self.own_dtab + routes)

    def set_match_rules(
        self, rules: tuple[MatchRule, ...], faults: tuple[MatchRule, ...] = (), mirrors: tuple[MatchRule, ...] = ()
    ) -> None:
        """Install the routing file's rules with `match:`, its fault rules and its mirror rules
        (applied per request; see routing.match). Fault injection is announced loudly: one
        warning per rule on; mirroring with one info line per rule."""
        self.match_rules.set(rules, faults, mirrors)
        self.rules_active = self.match_rules.active
        for rule in mirrors:
            assert rule.mirror is not None
            when = f" when {rule.match.show()}" if rule.match.show() else ""
            log.info("router %s: mirroring: rule %s: %s under %s%s",
                     self.label, rule.name, rule.mirror.show(), rule.prefix.show(), when)
        for rule in faults:
            assert rule.fault is not None
            when = f" when {rule.match.show()}" if rule.match.show() else ""
            log.warning(
                "router %s: FAULT INJECTION ON: rule %s: %s under %s%s",
                self.label, rule.name, rule.fault.show(), rule.prefix.show(), when,
            )

    def set_routes(self, routes: Routes) -> None:
        """The rest of an applied routes file: its `authorization` replaces the config's policy
        (a file without one puts the config's back)."""
        if self.authorization is not None:
            self.authorization.set(routes.authorization if routes.authorization is not None else self.config_policy)
        elif routes.authorization is not None:
            log.warning(
                "router %s: the routes file's authorization section is ignored: the router has no TLS server "
                "and no authorization section of its own (docs/tls.md)", self.label,
            )

    # -- service level ------------------------------------------------------------------------
    def service_for(self, path: Path) -> Service:
        state = self.services.get(path)
        if state is None:
            state = self._new_service(path)
        state.used = self._tick  # one store per request: what eviction calls "recently used"
        return state.service

    def _new_service(self, path: Path) -> ServiceState:
        config = self.config.service_for(path)
        name = path.show()
        label = self.stats.label_for(name)
        folded = label == OVERFLOW_SERVICE
        retained = None if folded else self.named.get(name)
        if retained is not None:
            # a named service dropped while idle: the same budget and counters, a new pipeline
            budget, counters, timeouts = retained.budget, retained.retries, retained.timeouts
        elif folded:
            budget = config.retries.budget.build(self.runtime.clock.now)
            counters, timeouts = self.folded_retries, self.folded_timeouts
        else:
            budget = config.retries.budget.build(self.runtime.clock.now)
            counters, timeouts = RetryCounters(), TimeoutCounters()
        classifier = config.response_classifier.build()
        access_log = AccessLog(self.label, self.runtime.clock) if self.config.access_log else None
        retries = retries_for(
            config=config, classifier=classifier, budget=budget, retry_counters=counters, timeouts=timeouts,
            rng=self._rng, access_log=access_log, clock=self.runtime.clock,
        )
        stack = service_stack(
            config=config,
            classifier=classifier,
            budget=budget,
            retry_counters=counters,
            wall=WALL_CLOCK_NS,
            timeouts=timeouts,
            rng=self._rng,
            access_log=access_log,
            clock=self.runtime.clock,
            grpc=self.grpc_stats.timeouts if self.grpc_stats is not None else None,
            retries=retries,
        )
        state = ServiceState(name, label, stack.build(self._dispatch_choice), budget, counters, timeouts, folded)
        if not folded and not config.total_timeout_ms and tuple(stack.roles()) == SERVICE_ROLES:
            # the fast path's service (meshd/fastpath.py): the same retry stage, over the same step
            state.fast = FastService(
                classifier, budget, config.add_success_class_header, retries(self._dispatch_choice),
                classifier.reads_trailers,
            )
        if folded:
            # only folded services lose their budget when dropped, so only they pay for knowing
            # what is in flight (a named one dropped while idle keeps its budget and counters,
            # which a request still inside its old pipeline goes on using)
            state.service = _counting_in_flight(state, state.service)
            self.folded_created += 1
        else:
            self.named[name] = state
        if len(self.services) >= self.max_service_states:
            self._evict(self.evict_batch)
        self.services[path] = state
        return state

    def _evict(self, count: int) -> None:
        """Drop up to `count` folded services: the least recently used first (oldest first among
        equals), never one with a request in flight. Named services are not dropped here, so the
        table can outgrow MAX_SERVICE_STATES only by folded services that all have requests in
        flight. A dropped service's requests still in its pipeline (none, by the rule above)
        would finish unaffected; the name's next request builds a new state."""
        idle = [(path, state) for path, state in self.services.items() if state.folded and state.in_flight == 0]
        idle.sort(key=_last_used)  # stable: dict (creation) order among services used in the same tick
        for path, _ in idle[:count]:
            del self.services[path]
        self.evicted += min(count, len(idle))

    def _dispatch_choice(self, ctx: RouteContext) -> Awaitable[Response]:
        """Pick this attempt's destination and return its client's coroutine (a tail call)."""
        chooser: Chooser | None = ctx.chooser
        assert chooser is not None
        choice = chooser.single
        if choice is None:
            choice = chooser.choose(self._rng)
        if isinstance(choice, BoundName):
            client = self.clients.get(choice.id)
            if client is None:
                client = self.client_for(choice.id)
            client.used = self._tick  # one store per attempt: what idle eviction calls "used"
            return client(ctx)
        raise self.unbound(choice, ctx)

    def fast_client(self, ctx: RouteContext) -> Client | NoSuchService:
        """The fast path's `_dispatch_choice` (meshd/fastpath.py): this attempt's client, marked
        used, or the error the slow path would raise."""
        chooser: Chooser | None = ctx.chooser
        assert chooser is not None
        choice = chooser.single
        if choice is None:
            choice = chooser.choose(self._rng)
        if isinstance(choice, BoundName):
            client = self.clients.get(choice.id)
            if client is None:
                client = self.client_for(choice.id)
            client.used = self._tick
            return client
        return self.unbound(choice, ctx)

    def fast_service(self, path: Path) -> ServiceState:
        """`service_for`'s state (created on first use, marked used), for the fast path."""
        state = self.services.get(path)
        if state is None:
            state = self._new_service(path)
        state.used = self._tick
        return state

    def unbound(self, choice: object, ctx: RouteContext) -> NoSuchService:
        """The error for a logical name the chooser bound to no client (rare path)."""
        if isinstance(choice, Fail):
            why = "the dtab says it fails (!)"
        elif isinstance(choice, Empty):
            why = "the dtab binds it to nothing ($)"
        else:
            why = self._negative_reasons(ctx) or "no dtab entry or namer knows it"
        return NoSuchService(
            f"No hosts are available for {ctx.logical_name}: {why}; "
            f"Dtab.base=[{self.binder.base_dtab.show()}], Dtab.local=[{ctx.local_dtab}]",
            written=False,
        )

    def _negative_reasons(self, ctx: RouteContext) -> str:
        """On the error path only: bind again with a trace and ask the namers why they said no."""
        path = ctx.logical_path
        if path is None:
            return ""
        return self.binder.negative_reasons(path, ctx.local_dtab)

    # -- client level -------------------------------------------------------------------------
    def mirror_client(self, id: Path) -> Client:
        """The client of a bound name for a mirrored copy (meshd/pipeline/mirror.py), marked used."""
        client = self.clients.get(id)
        if client is None:
            client = self.client_for(id)
        client.used = self._tick
        return client

    def client_for(self, id: Path) -> Client:
        client = self.clients.get(id)
        if client is None:
            config = self.config.client_for(id)
            pool = config.pool
            settings = ClientSettings(
                balancer=config.load_balancer,
                accrual=config.failure_accrual,
                pool=PoolLimits(
                    max_connections=pool.max_connections,
                    max_waiters=pool.max_waiters,
                    idle_time_s=pool.idle_time_ms / 1000.0,
                    max_response_head_bytes=config.max_response_header_bytes,
                    response_idle_timeout_s=config.response_idle_timeout_ms / 1000.0,
                    queue_timeout_s=pool.queue_timeout_ms / 1000.0,
                    response_head_timeout_s=config.response_head_timeout_ms / 1000.0,
                    max_response_headers=config.max_response_headers,
                ),
                attempt_timeout_ms=config.request_attempt_timeout_ms,
                max_ejection_percent=config.max_ejection_percent,
                panic_threshold_percent=config.panic_threshold_percent,
                max_requests=config.circuit_breakers.max_requests,
                max_pending_requests=config.circuit_breakers.max_pending_requests,
                max_retries=config.circuit_breakers.max_retries,
                h2=self._h2_pool_settings(config),
                h2_stats=self.h2_stats,
            )
            dialer = self._dialer or self._dialer_for(
                id, config.tls, pool.connect_timeout_ms / 1000.0, _client_alpn(self.config.upstream_protocol(config))
            )
            addr, release = self.acquire_addr(id)
            client = Client(id, addr, settings, self.runtime, dialer, release=release)
            client.used = self._tick
            self.clients[id] = client
        return client

    def _h2_pool_settings(self, config: ClientConfig) -> H2PoolSettings | None:
        """HTTP/2 to the upstreams of a client whose protocol is `h2` (its own `protocol`, else the
        router's: meshd/pool/h2.py); None: HTTP/1.1."""
        if self.config.upstream_protocol(config) != "h2":
            return None
        pool = config.pool
        return H2PoolSettings(
            settings=self._h2_settings,
            max_connections=pool.max_connections,
            idle_time_s=pool.idle_time_ms / 1000.0,
            queue_timeout_s=pool.queue_timeout_ms / 1000.0,
            ping_interval_s=self.config.h2.ping_interval_ms / 1000.0,
            ping_timeout_s=self.config.h2.ping_timeout_ms / 1000.0,
            response_head_timeout_s=config.response_head_timeout_ms / 1000.0,
            response_idle_timeout_s=config.response_idle_timeout_ms / 1000.0,
            scheme=b"https" if config.tls is not None else b"http",
        )

    def _tls_files(self, tls: ClientTlsConfig, alpn: tuple[str, ...]) -> TlsFiles:
        files = self.tls_files.get((tls, alpn))
        if files is None:
            files = self.tls_files[(tls, alpn)] = client_tls_files(tls, self.runtime, alpn)
        return files

    def _dialer_for(
        self, id: Path, tls: ClientTlsConfig | None, connect_timeout_s: float, alpn: tuple[str, ...]
    ) -> Dialer:
        if tls is None:
            return TcpDialer(connect_timeout_s, self.runtime.clock)
        files = self._tls_files(tls, alpn)
        side = TlsSide(
            files, self.runtime.tls, server=False, router=self.label, client=id.show(),
            handshake_timeout_s=tls.handshake_timeout_ms / 1000.0,
        )
        try:
            name = server_name_for(tls.server_name, id) if tls.server_name is not None else None
        except ValueError as exc:
            raise NoSuchService(f"cannot dial {id.show()}: client tls serverName {exc}", written=False) from None
        return TlsDialer(
            side.context, name, connect_timeout_s=connect_timeout_s,
            handshake_timeout_s=tls.handshake_timeout_ms / 1000.0, clock=self.runtime.clock, count=side.count,
        )

    def acquire_addr(self, id: Path) -> tuple[Observable[Addr], Callable[[], None]]:
        """The address set a client uses: the namer's, through the router's transformers in order;
        and the function that gives it back (each transformer's mapping, then the namer's watch)."""
        addr, release_source = self._namer_addr(id)
        layers: list[tuple[Transformer, Observable[Addr]]] = []
        for transformer in self.transformers:
            addr = transformer.transform(id, addr)
            layers.append((transformer, addr))
        if not layers:
            return addr, release_source

        def release() -> None:
            for transformer, output in reversed(layers):
                transformer.release(id, output)
            release_source()

        return addr, release

    def addr_of(self, id: Path) -> Observable[Addr]:
        """The namer's address set of `id` as it is now, for a look (delegator, admin): it holds
        no watch open (the namer is told at once that this caller is done with it)."""
        addr, release = self._namer_addr(id)
        release()
        return addr

    def _namer_addr(self, id: Path) -> tuple[Observable[Addr], Callable[[], None]]:
        """The address set of `id` from its namer (or the system namer for `/$/inet`), and the
        function that releases it."""
        fixed: Addr
        if len(id) >= 1 and id[0] == "$":
            # the system namer binds only inet ids (`/$/inet/...`, `/$/fixedinet/...`; rinet -> inet)
            host_port = inet_address(id)
            if host_port is None:
                fixed = Failed(f"{id.show()} is not an address (/$/inet/<host>/<port> or /$/inet/<port>)")
            else:
                fixed = Bound(frozenset({Address(*host_port)}))
            return Observable(fixed), _nothing
        best: Namer | None = None
        for prefix, namer in self._namers.items():
            if id.starts_with(prefix) and (best is None or len(prefix) > len(best.prefix)):
                best = namer
        if best is None:
            fixed = Failed(f"no namer serves {id.show()}")
            return Observable(fixed), _nothing
        chosen = best
        return chosen.addr(id), lambda: chosen.release(id)

    def sweep(self) -> None:
        """Expire idle pooled connections, advance the use tick, and now and then drop what was
        idle for `bindingCache.idleTtlSecs` (called about once a second)."""
        self._tick += 1
        now = self.runtime.clock.now()
        self._tick_starts.append((self._tick, now))
        for client in self.clients.values():
            client.sweep(now)
        if now >= self._next_scan:
            self._next_scan = now + self._scan_interval
            self.evict_idle(now)

    def evict_idle(self, now: float) -> None:
        """Drop the services and clients not used since `now - idle_ttl_s` (see the module docstring)."""
        horizon = now - self.idle_ttl_s
        starts = self._tick_starts
        while len(starts) >= 2 and starts[1][1] <= horizon:
            starts.popleft()
        if starts[0][1] > horizon:
            return  # meshd has not run for the idle time yet
        # used during a tick before `cutoff`, i.e. before `cutoff` began, at or before the horizon
        cutoff = starts[0][0]
        dropped = 0
        for path, state in list(self.services.items()):
            if state.used >= cutoff or state.in_flight:
                continue
            del self.services[path]
            if not state.folded:
                # keep its budget and counters (exported under its name); let the pipeline go
                state.service = _dropped_service
            dropped += 1
        if dropped:
            self.idle_evicted_services += dropped
            self.binder.retain(self.services)
        for id, client in list(self.clients.items()):
            if client.used >= cutoff or client.busy():
                continue
            del self.clients[id]
            self.evicted_forwarded += client.forwarded
            client.close()
            self.idle_evicted_clients += 1

    def close(self) -> None:
        self.binder.close()
        self.mirroring.close()
        for client in self.clients.values():
            client.close()
        for transformer in self.transformers:
            close = getattr(transformer, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return f"<Router {self.label} clients={len(self.clients)}>"


def _nothing() -> None:
    pass


def _client_alpn(protocol: str) -> tuple[str, ...]:
    """What meshd offers upstreams it speaks `protocol` to by ALPN: `h2` for HTTP/2 (gRPC servers
    require it over TLS), else the default (`http/1.1`)."""
    return ("h2",) if protocol == "h2" else ()


def client_tls_files(tls: ClientTlsConfig, runtime: Runtime, alpn: tuple[str, ...] = ()) -> TlsFiles:
    """The files of a client `tls` section, loaded (and re-read on rotation) into a client context."""
    ca = runtime.resolve_path(tls.ca_path) if tls.ca_path else None
    cert = runtime.resolve_path(tls.cert_path) if tls.cert_path else None
    key = runtime.resolve_path(tls.key_path) if tls.key_path else None
    paths = {role: p for role, p in (("certPath", cert), ("keyPath", key), ("caPath", ca)) if p is not None}
    return TlsFiles(paths, lambda: client_context(ca, cert, key, alpn), runtime.tls)


def _dropped_service(ctx: RouteContext) -> Awaitable[Response]:
    """The pipeline of a named service dropped while idle (never called: the table no longer
    refers to it; only its budget and counters are kept, in `Router.named`)."""
    raise AssertionError("a dropped service's pipeline was called")


def _last_used(item: tuple[Path, ServiceState]) -> int:
    return item[1].used


def _counting_in_flight(state: ServiceState, service: Service) -> Service:
    """`service`, counting in `state.in_flight` the requests inside it (a folded service's pipeline)."""

    async def counted(ctx: RouteContext) -> Response:
        state.in_flight += 1
        try:
            return await service(ctx)
        finally:
            state.in_flight -= 1

    return counted
