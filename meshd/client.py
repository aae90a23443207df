"""Client: everything meshd keeps for one bound name (a replica set): endpoints, pools, balancer.

A client subscribes to its namer's address set. On every change it keeps the `Endpoint` (and so
the pool and the balancer node with its EWMA, pending count and accrual state) of each replica
that stays, creates endpoints for new replicas, and drains removed ones: their pools stop
handing out connections, idle ones close now, busy ones close when their request finishes.
`Pending` and `Failed` answers keep the last known set (never drop to empty because discovery
hiccuped); `Neg` empties it.

Calling the client with a request's `RouteContext` sends one attempt: pick a node (O(1), avoiding
the context's `last_node`), count it as started, dispatch the wire request on a pooled
connection, and report the outcome to the balancer when the response ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from balancers.base import Node, NoNodesAvailable
from balancers.configs import AccrualConfig
from balancers.membership import Membership
from balancers.registry import BalancerConfig
from meshd.discovery.addr import Addr, Address, Bound, Neg
from meshd.errors import AttemptTimeout, CircuitOpen, MeshdError, NoEndpoints
from meshd.expiry import Expiry
from meshd.grpc import timeout as grpc_timeout
from meshd.grpc.classifiers import GrpcClassifier
from meshd.http.headers import L5D_DST_CLIENT, L5D_DST_SERVICE
from meshd.http.messages import Response
from meshd.http2.codec import Headers
from meshd.http2.convert import H2_VERSION, h2_request_headers
from meshd.http2.guard import H2Stats
from meshd.observable import Observable
from meshd.pipeline.context import RouteContext
from meshd.pipeline.dispatch import can_resend, dispatch, dst_lines, request_head, resend
from meshd.pipeline.stats import MAX_ENDPOINT_SERIES, OVERFLOW_ENDPOINT, AttemptStats
from meshd.pool.connection import StaleConnection
from meshd.pool.dialer import Dialer
from meshd.pool.h2 import H2Pool, H2PoolSettings
from meshd.pool.pool import Pending, Pool, PoolLimits, PoolStatistics
from meshd.runtime import Runtime
from meshd.tracing.spans import Span
from meshd.transformers import is_forwarded
from routing.path import Path


class Endpoint:
    """One replica as a client sees it: its address, its pool; `key`/`weight` for the balancer."""

    __slots__ = ("address", "key", "weight", "pool", "label", "host_line", "forwarded", "stats", "client", "h2")

    def __init__(
        self, address: Address, pool: Pool, stats: AttemptStats, client: Client | None = None, h2: H2Pool | None = None
    ) -> None:
        #: the client this replica belongs to: the retry stage asks its breakers (admits_retry)
        self.client = client
        self.address = address
        self.key = address.key
        self.weight = address.weight
        self.pool = pool
        #: on an HTTP/2 router: the endpoint's multiplexed pool, used instead of `pool`
        self.h2 = h2
        self.label = address.show()
        #: the Host line a request that came without one gets (HTTP/1.0 callers may omit it)
        self.host_line = b"Host: " + self.label.encode("latin-1") + b"\r\n"
        #: another node's meshd, put here by a transformer: attempts to it are counted as forwarded
        self.forwarded = is_forwarded(address)
        #: its attempts' counters: its own, or its client's shared ones past MAX_ENDPOINT_SERIES
        self.stats = stats

    def __repr__(self) -> str:
        return f"<Endpoint {self.label} weight={self.weight}>"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    balancer: BalancerConfig
    accrual: AccrualConfig
    pool: PoolLimits
    attempt_timeout_ms: int | None
    max_ejection_percent: int = 50
    panic_threshold_percent: int = 50
    #: `circuitBreakers`: attempts in flight, waiting for a connection, retries in flight
    max_requests: int = 2048
    max_pending_requests: int = 1024
    max_retries: int = 64
    #: on an HTTP/2 router (`protocol: h2`): the upstream HTTP/2 pools' settings and counters
    h2: H2PoolSettings | None = None
    h2_stats: H2Stats | None = None


class Client:
    def __init__(
        self,
        id: Path,
        addr: Observable[Addr],
        settings: ClientSettings,
        runtime: Runtime,
        dialer: Dialer,
        *,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.id = id
        self.label = id.show()
        self.label_bytes = self.label.encode("latin-1")
        self._settings = settings
        self._runtime = runtime
        self._dialer = dialer
        #: typed as the balancers' native base class (not the `Balancer` protocol): the pick on
        #: every request is a C call in the compiled build
        self.balancer: Membership[Endpoint] = settings.balancer.build(
            runtime.clock.now,
            runtime.rng,
            settings.accrual,
        )
        self.balancer.set_health_limits(
            max_ejection_percent=settings.max_ejection_percent,
            panic_threshold_percent=settings.panic_threshold_percent,
        )
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._addr = addr
        # circuit breakers (`client.circuitBreakers`): attempts and retries in flight, and the
        # attempts waiting for a connection in any of the pools (counted by the pools)
        self.inflight = 0
        self.retrying = 0
        self._max_requests = settings.max_requests
        self._max_retries = settings.max_retries
        self.pending = Pending(self.label, settings.max_pending_requests)
        #: attempts refused by each breaker (a counter per limit)
        self.overflows_requests = 0
        self.overflows_retries = 0
        self._attempt_timeout_s = settings.attempt_timeout_ms / 1000.0 if settings.attempt_timeout_ms else None
        self.last_addr: Addr = addr.get()
        #: attempts sent to a forwarding meshd (meshd_daemonset_forwarded_total)
        self.forwarded = 0
        self._dst_lines: dict[str, bytes] = {}
        #: queue timeouts of endpoints since removed (the counter never goes back)
        self._removed_queue_timeouts = 0
        #: per-replica attempt counters (meshd_client_*, meshd_endpoint_*): each endpoint has its
        #: own up to `max_endpoint_series`, later ones share `stats_other`; a removed endpoint's
        #: counts move to `stats_removed`, so the client's totals never go back
        self.stats_other = AttemptStats()
        self.stats_removed = AttemptStats()
        self.max_endpoint_series = MAX_ENDPOINT_SERIES
        self._labelled = 0
        #: attempts that were retries (meshd_client_retries_total)
        self.retries = 0
        #: the router's sweep tick when an attempt last went through this client (for idle eviction)
        self.used = 0
        #: called once the client is closed: releases the namer's watch (and transformers' mappings)
        self._release = release
        self._unsubscribe = addr.subscribe(self._on_addr)

    # -- discovery -------------------------------------------------------------------------
    def _on_addr(self, addr: Addr) -> None:
        self.last_addr = addr
        if isinstance(addr, Bound):
            addresses = addr.addresses
        elif isinstance(addr, Neg):
            addresses = frozenset()
        else:
            return  # Pending / Failed: keep serving the last known set
        current = self._endpoints
        fresh: dict[tuple[str, int], Endpoint] = {}
        for address in addresses:
            endpoint = current.get(address.key)
            if endpoint is None:
                pool = Pool(
                    address.host,
                    address.port,
                    dialer=self._dialer,
                    limits=self._settings.pool,
                    clock=self._runtime.clock,
                    pending=self.pending,
                )
                if self._labelled < self.max_endpoint_series:
                    self._labelled += 1
                    stats = AttemptStats()
                else:
                    stats = self.stats_other
                h2 = self._settings.h2
                h2pool = None
                if h2 is not None:
                    h2pool = H2Pool(
                        address.host, address.port, dialer=self._dialer, settings=h2, clock=self._runtime.clock,
                        stats=self._settings.h2_stats or H2Stats(), pending=self.pending,
                    )
                endpoint = Endpoint(address, pool, stats, self, h2pool)
            else:
                endpoint.address = address
                endpoint.weight = address.weight
                endpoint.forwarded = is_forwarded(address)
            fresh[address.key] = endpoint
        self._endpoints = fresh
        for removed in self.balancer.update(list(fresh.values())):
            removed.pool.close()  # fails its waiters as removed: its queue timeouts are final
            if removed.h2 is not None:
                removed.h2.close()
            self._removed_queue_timeouts += removed.pool.queue_timeouts
            if removed.stats is not self.stats_other and removed.stats is not self.stats_removed:
                self._labelled -= 1
                self.stats_removed.add(removed.stats)
                removed.stats = self.stats_removed  # attempts still out are counted there

    # -- one attempt ------------------------------------------------------------------------
    def __call__(self, ctx: RouteContext) -> Awaitable[Response]:
        """One attempt: the breakers and the pick here (raising at call time, inside the
        caller's await), the rest in `attempt_on`'s coroutine."""
        retry = ctx.attempts > 1
        if self.inflight >= self._max_requests or (retry and self.retrying >= self._max_retries):
            raise self._overflow(retry)
        return self.attempt_on(ctx, self.pick(ctx))

    def pick(self, ctx: RouteContext) -> Node[Endpoint]:
        """The balancer's pick for this attempt (avoiding `ctx.last_node`, then stored there)."""
        try:
            node = self.balancer.pick(ctx.last_node)
        except NoNodesAvailable:
            raise NoEndpoints(f"no endpoints available for {self.label}", written=False) from None
        ctx.last_node = node
        return node

    @property
    def fast(self) -> bool:
        """Whether an attempt may take a fast path (meshd/fastpath.py, meshd/h2fast.py): a client
        without an attempt timeout (a timeout needs a task to cancel), over either protocol."""
        return self._attempt_timeout_s is None

    def full(self) -> bool:
        """Whether a first attempt would be refused by `circuitBreakers.maxRequests` now."""
        return self.inflight >= self._max_requests

    def begin(self, ctx: RouteContext, node: Node[Endpoint]) -> tuple[float, Span | None]:
        """An attempt starts on `node`: counted, and (sampled) given a span. Returns the node's
        start instant and the span."""
        endpoint = node.member
        if endpoint.forwarded:
            self.forwarded += 1
        started = node.start()
        self.inflight += 1
        if ctx.attempts > 1:
            self.retrying += 1
            self.retries += 1
        # tracing (docs/tracing.md): a sampled request's attempt gets a span of its own, which the
        # upstream sees as its parent in `traceparent`; one attribute test otherwise
        attempt = ctx.span.child(self.label, endpoint.label, ctx.attempts) if ctx.span is not None else None
        return started, attempt

    def head_for(self, ctx: RouteContext, attempt: Span | None) -> bytes:
        """The HTTP/1.1 request head of this attempt (to `ctx.last_node`), `l5d-dst-*` (and
        `traceparent`) added."""
        request = ctx.request
        dst = self._dst_headers(ctx.logical_name)
        if request.host is None:
            if ctx.last_node is not None:
                # an HTTP/1.0 request without Host: the upstream speaks HTTP/1.1, where Host is
                # required, so it gets the endpoint's address (as nginx's default $proxy_host)
                endpoint: Endpoint = ctx.last_node.member
                dst += endpoint.host_line
        elif request.version == H2_VERSION:
            # an HTTP/2 request has `:authority` (kept as `host`), never a Host field: HTTP/1.1 needs one
            dst += b"Host: %s\r\n" % request.host.encode("latin-1")
        if attempt is None:
            return request_head(request, dst)
        return request_head(request, dst + attempt.traceparent_line())

    async def attempt_on(self, ctx: RouteContext, node: Node[Endpoint]) -> Response:
        endpoint = node.member
        request = ctx.request
        retry = ctx.attempts > 1
        started, attempt = self.begin(ctx, node)
        try:
            if ctx.grpc and ctx.deadline is not None:
                # the time left, as the upstream sees it: a chain of gRPC services never works
                # past the caller's deadline (docs/grpc.md, "Deadlines")
                grpc_timeout.set_timeout(
                    request.headers, grpc_timeout.downstream_value(ctx.deadline - self._runtime.clock.now())
                )
            h2pool = endpoint.h2
            if h2pool is None:
                head = self.head_for(ctx, attempt)
                conn = endpoint.pool.try_acquire_idle()
                if self._attempt_timeout_s is None and conn is not None:
                    # The common case inline: a warm pooled connection and no attempt timeout (one
                    # coroutine frame less per request than going through dispatch()).
                    try:
                        response = await conn.send(request, head)
                    except StaleConnection:
                        if not can_resend(request):
                            raise
                        response = None  # sent again below: never await inside `except` (docs/architecture.md)
                    except asyncio.CancelledError:
                        conn.abort()
                        raise
                    if response is None:
                        response = await resend(endpoint.pool, request, head)
                elif self._attempt_timeout_s is None:
                    response = await dispatch(endpoint.pool, request, head, conn)
                else:
                    # bounded on the runtime's clock (meshd.clock): a timer cancels this task at the limit
                    task = asyncio.current_task()
                    assert task is not None
                    expiry = Expiry(task)
                    timer = self._runtime.clock.call_later(self._attempt_timeout_s, expiry.fire)
                    try:
                        response = await dispatch(endpoint.pool, request, head, conn)
                    except asyncio.CancelledError:
                        if not expiry.caused():
                            raise
                        raise AttemptTimeout(
                            f"attempt to {endpoint.label} exceeded requestAttemptTimeoutMs "
                            f"({self._settings.attempt_timeout_ms} ms)"
                        ) from None
                    finally:
                        timer.cancel()
            else:
                # HTTP/2 upstream (meshd/pool/h2.py): one stream on a multiplexed connection
                response = await self._send_h2(h2pool, ctx, attempt)
        except MeshdError as exc:
            self.failed(node, started, retry, attempt, exc)
            raise
        except BaseException:
            self.cancelled(node, started, retry, attempt)
            raise
        return self.settle(ctx, node, started, retry, attempt, response)

    async def resend_on(
        self, ctx: RouteContext, node: Node[Endpoint], started: float, attempt: Span | None, head: bytes
    ) -> Response:
        """The rest of an attempt the fast path began whose pooled connection turned out stale:
        sent again on a fresh connection, as `attempt_on` does."""
        retry = ctx.attempts > 1
        try:
            response = await resend(node.member.pool, ctx.request, head)
        except MeshdError as exc:
            self.failed(node, started, retry, attempt, exc)
            raise
        except BaseException:
            self.cancelled(node, started, retry, attempt)
            raise
        return self.settle(ctx, node, started, retry, attempt, response)

    def failed(self, node: Node[Endpoint], started: float, retry: bool, attempt: Span | None, exc: MeshdError) -> None:
        """The attempt failed with meshd's error (a failure for the node)."""
        self._finish(node, started, True, retry)
        if attempt is not None:
            attempt.end(exc.status, exc.kind, exc.l5d_err)

    def cancelled(self, node: Node[Endpoint], started: float, retry: bool, attempt: Span | None) -> None:
        """The attempt was given up by the caller (not the upstream's failure)."""
        self._finish(node, started, False, retry)
        if attempt is not None:
            attempt.end(0, "cancelled")

    def settle(
        self, ctx: RouteContext, node: Node[Endpoint], started: float, retry: bool, attempt: Span | None,
        response: Response,
    ) -> Response:
        """The attempt's response head arrived: classified for the node, which learns the outcome
        when the body ends (now, for a response that came whole)."""
        status = response.status
        if attempt is not None:
            attempt.end(status)
        classifier = ctx.classifier
        if classifier is not None and classifier.reads_trailers:
            return self._judge_grpc(response, cast(GrpcClassifier, classifier), node, started, retry)
        if status < 500:
            failure = False  # every classifier calls anything but a 5xx a success
        elif classifier is not None:
            failure = classifier.classify_response(ctx.request.method, status, False).is_failure
        else:
            failure = True
        body = response.body
        if body.ended:
            self._finish(node, started, failure, retry)
        else:
            # Only the upstream's own errors (MeshdErrors: reset, closed mid-body) count against the
            # endpoint; a body cancelled by the caller hanging up or by a retry discarding it does not.
            body.add_done_callback(
                lambda error: self._finish(node, started, failure or isinstance(error, MeshdError), retry)
            )
        return response

    def settle_class(
        self, node: Node[Endpoint], started: float, retry: bool, attempt: Span | None, status: int, failure: bool
    ) -> None:
        """`settle` for a response that came whole and that the caller has classified already (the
        HTTP/2 fast path reads grpc-status once for both the retry decision and failure accrual)."""
        if attempt is not None:
            attempt.end(status)
        self._finish(node, started, failure, retry)

    def _judge_grpc(
        self, response: Response, classifier: GrpcClassifier, node: Node[Endpoint], started: float, retry: bool
    ) -> Response:
        """Failure accrual for the `grpc.*` classifiers: `grpc-status` of a trailers-only head, or of
        the trailers when the body ends (docs/grpc.md, "Classifiers")."""
        decided = classifier.classify_head(response.status, response.headers)
        body = response.body
        if decided is not None:
            failure = decided.is_failure
            if body.ended:
                self._finish(node, started, failure, retry)
            else:
                body.add_done_callback(
                    lambda error: self._finish(node, started, failure or isinstance(error, MeshdError), retry)
                )
            return response

        def judged(error: BaseException | None) -> None:
            if error is None:
                self._finish(node, started, classifier.classify_trailers(body.trailers).is_failure, retry)
            else:
                self._finish(node, started, isinstance(error, MeshdError), retry)

        body.add_done_callback(judged)
        return response

    async def _send_h2(self, pool: H2Pool, ctx: RouteContext, attempt: Span | None) -> Response:
        """One attempt as a stream on the endpoint's HTTP/2 pool, within the attempt timeout."""
        request = ctx.request
        headers = self.h2_headers(ctx, attempt)
        if self._attempt_timeout_s is None:
            return await pool.send(request, headers)
        task = asyncio.current_task()
        assert task is not None
        expiry = Expiry(task)
        timer = self._runtime.clock.call_later(self._attempt_timeout_s, expiry.fire)
        timed_out = False
        try:
            return await pool.send(request, headers)
        except asyncio.CancelledError:
            if not expiry.caused():
                raise
            timed_out = True
        finally:
            timer.cancel()
        assert timed_out
        raise AttemptTimeout(
            f"attempt to {pool.label} exceeded requestAttemptTimeoutMs ({self._settings.attempt_timeout_ms} ms)"
        )

    def h2_headers(self, ctx: RouteContext, attempt: Span | None) -> Headers:
        """The HTTP/2 header block of this attempt, `l5d-dst-*` (and `traceparent`) added."""
        h2 = self._settings.h2
        assert h2 is not None
        extra = [(L5D_DST_SERVICE, ctx.logical_name.encode("latin-1")), (L5D_DST_CLIENT, self.label_bytes)]
        if attempt is not None:
            extra.append((b"traceparent", attempt.traceparent_value()))
        request = ctx.request
        if request.host is None and ctx.last_node is not None:
            # an HTTP/1.0 request without Host: `:authority` is the endpoint's address, as `head_for` does
            endpoint: Endpoint = ctx.last_node.member
            return h2_request_headers(request, h2.scheme, extra, endpoint.label)
        return h2_request_headers(request, h2.scheme, extra)

    def _finish(self, node: Node[Endpoint], started: float, failure: bool, retry: bool) -> None:
        """One attempt ended (its response body too): the node learns it, the breakers free a place,
        and its endpoint's counters take the round-trip time the node measured."""
        node.member.stats.observe(node.finish(started, failure=failure), failure)
        self.inflight -= 1
        if retry:
            self.retrying -= 1

    def admits_retry(self, own_retry: bool) -> bool:
        """Whether a retry of the attempt whose response is still open would pass the breakers.

        That attempt is still counted in flight (and among retries when `own_retry`), but it
        ends before its retry starts, so it is left out. A refusal is counted as the attempt's
        own check would count it."""
        if self.inflight - 1 >= self._max_requests:
            self.overflows_requests += 1
            return False
        if self.retrying - (1 if own_retry else 0) >= self._max_retries:
            self.overflows_retries += 1
            return False
        return True

    def _overflow(self, retry: bool) -> CircuitOpen:
        if self.inflight >= self._max_requests:
            self.overflows_requests += 1
            return CircuitOpen(
                f"circuit breaker of {self.label}: {self._max_requests} requests already in flight "
                "(circuitBreakers.maxRequests)"
            )
        self.overflows_retries += 1
        return CircuitOpen(
            f"circuit breaker of {self.label}: {self._max_retries} retries already in flight "
            "(circuitBreakers.maxRetries)"
        )

    def _dst_headers(self, logical_name: str) -> bytes:
        """`l5d-dst-service` and `l5d-dst-client` lines for a request to this client, serialised
        once per logical name rather than per attempt."""
        lines = self._dst_lines.get(logical_name)
        if lines is None:
            if len(self._dst_lines) >= 1000:
                self._dst_lines.clear()  # bounded: one entry per logical name routed here
            lines = self._dst_lines[logical_name] = dst_lines(logical_name, self.label_bytes)
        return lines

    # -- lifecycle and state ----------------------------------------------------------------
    def sweep(self, now: float) -> None:
        for endpoint in self._endpoints.values():
            endpoint.pool.sweep(now)
            if endpoint.h2 is not None:
                endpoint.h2.sweep(now)

    def close(self) -> None:
        """Stop following the address set, release it, and drain every pool (idle connections
        close now, busy ones when their response ends)."""
        self._unsubscribe()
        release, self._release = self._release, None
        if release is not None:
            release()
        for endpoint in self._endpoints.values():
            endpoint.pool.close()
            if endpoint.h2 is not None:
                endpoint.h2.close()

    def busy(self) -> bool:
        """Whether anything is under way here: an attempt pending on a node, or a pool with a busy
        or dialing connection or a waiter. A busy client is never evicted."""
        for node in self.balancer.nodes():
            if node.pending:
                return True
        for endpoint in self._endpoints.values():
            s = endpoint.pool.statistics()
            if s.busy or s.dialing or s.waiters:
                return True
            if endpoint.h2 is not None:
                s = endpoint.h2.statistics()
                if s.busy or s.dialing or s.waiters:
                    return True
        return False

    async def wait_drained(self) -> None:
        await asyncio.gather(*(e.pool.wait_drained() for e in self._endpoints.values()))
        await asyncio.gather(*(e.h2.wait_drained() for e in self._endpoints.values() if e.h2 is not None))

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def pool_statistics(self) -> PoolStatistics:
        idle = busy = dialing = waiters = opened = closed = 0
        queue_timeouts = self._removed_queue_timeouts
        for endpoint in self._endpoints.values():
            s = endpoint.h2.statistics() if endpoint.h2 is not None else endpoint.pool.statistics()
            idle += s.idle
            busy += s.busy
            dialing += s.dialing
            waiters += s.waiters
            opened += s.opened
            closed += s.closed
            queue_timeouts += s.queue_timeouts
        return PoolStatistics(idle, busy, dialing, waiters, opened, closed, queue_timeouts)

    def attempt_totals(self) -> AttemptStats:
        """The client's attempt counters: its endpoints', the folded ones' and the removed ones'."""
        total = AttemptStats()
        total.add(self.stats_removed)
        total.add(self.stats_other)
        for endpoint in self._endpoints.values():
            if endpoint.stats is not self.stats_other:
                total.add(endpoint.stats)
        return total

    def endpoint_stats(self) -> list[tuple[str, AttemptStats]]:
        """Each labelled endpoint's counters by its label, then `_other`'s once it has any."""
        out = [(e.label, e.stats) for e in self._endpoints.values() if e.stats is not self.stats_other]
        if self.stats_other.requests:
            out.append((OVERFLOW_ENDPOINT, self.stats_other))
        return out

    def to_json(self) -> dict[str, object]:
        stats = self.balancer.statistics()
        return {
            "client": self.label,
            "balancer": stats.kind,
            "addr": type(self.last_addr).__name__.lower(),
            "statistics": {
                "live": stats.live,
                "ejected": stats.ejected,
                "probing": stats.probing,
                "ejections": stats.ejections,
                "allEjectedPicks": stats.all_ejected_picks,
                "panic": stats.panic,
                "panicPicks": stats.panic_picks,
                "ejectionsPrevented": stats.ejections_prevented,
            },
            "endpoints": [
                {
                    "address": node.member.label,
                    "weight": node.weight,
                    "pending": node.pending,
                    "ewmaSeconds": node.ewma_seconds,
                    "cost": node.cost,
                    "state": node.state,
                    "ejections": node.ejections,
                    "pool": _pool_json(_endpoint_pool(node.member).statistics()),
                }
                for node in self.balancer.nodes()
            ],
        }

    def __repr__(self) -> str:
        return f"<Client {self.label} endpoints={len(self._endpoints)}>"


def _endpoint_pool(endpoint: Endpoint) -> Pool | H2Pool:
    return endpoint.h2 if endpoint.h2 is not None else endpoint.pool


def _pool_json(s: PoolStatistics) -> dict[str, int]:
    return {"idle": s.idle, "busy": s.busy, "dialing": s.dialing, "waiters": s.waiters}
