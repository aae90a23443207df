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
from collections.abc import Callable
from dataclasses import dataclass

from balancers.base import Balancer, Node, NoNodesAvailable
from balancers.configs import AccrualConfig
from balancers.registry import BalancerConfig
from meshd.discovery.addr import Addr, Address, Bound, Neg
from meshd.errors import AttemptTimeout, CircuitOpen, MeshdError, NoEndpoints
from meshd.expiry import Expiry
from meshd.http.messages import Response
from meshd.observable import Observable
from meshd.pipeline.context import RouteContext
from meshd.pipeline.dispatch import can_resend, dispatch, dst_lines, request_head, resend
from meshd.pool.connection import StaleConnection
from meshd.pool.dialer import Dialer
from meshd.pool.pool import Pending, Pool, PoolLimits, PoolStatistics
from meshd.runtime import Runtime
from meshd.transformers import is_forwarded
from routing.path import Path


class Endpoint:
    """One replica as a client sees it: its address, its pool; `key`/`weight` for the balancer."""

    __slots__ = ("address", "key", "weight", "pool", "label", "forwarded")

    def __init__(self, address: Address, pool: Pool) -> None:
        self.address = address
        self.key = address.key
        self.weight = address.weight
        self.pool = pool
        self.label = address.show()
        #: another node's meshd, put here by a transformer: attempts to it are counted as forwarded
        self.forwarded = is_forwarded(address)

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
        self.balancer: Balancer[Endpoint] = settings.balancer.build(
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
                endpoint = Endpoint(address, pool)
            else:
                endpoint.address = address
                endpoint.weight = address.weight
                endpoint.forwarded = is_forwarded(address)
            fresh[address.key] = endpoint
        self._endpoints = fresh
        for removed in self.balancer.update(list(fresh.values())):
            removed.pool.close()  # fails its waiters as removed: its queue timeouts are final
            self._removed_queue_timeouts += removed.pool.queue_timeouts

    # -- one attempt ------------------------------------------------------------------------
    async def __call__(self, ctx: RouteContext) -> Response:
        retry = ctx.attempts > 1
        if self.inflight >= self._max_requests or (retry and self.retrying >= self._max_retries):
            raise self._overflow(retry)
        try:
            node = self.balancer.pick(ctx.last_node)
        except NoNodesAvailable:
            raise NoEndpoints(f"no endpoints available for {self.label}", written=False) from None
        ctx.last_node = node
        endpoint = node.member
        if endpoint.forwarded:
            self.forwarded += 1
        request = ctx.request
        started = node.start()
        self.inflight += 1
        if retry:
            self.retrying += 1
        # tracing (docs/tracing.md): a sampled request's attempt gets a span of its own, which the
        # upstream sees as its parent in `traceparent`; one attribute test otherwise
        attempt = ctx.span.child(self.label, endpoint.label, ctx.attempts) if ctx.span is not None else None
        try:
            if attempt is None:
                head = request_head(request, self._dst_headers(ctx.logical_name))
            else:
                head = request_head(request, self._dst_headers(ctx.logical_name) + attempt.traceparent_line())
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
        except MeshdError as exc:
            self._finish(node, started, True, retry)
            if attempt is not None:
                attempt.end(exc.status, exc.kind, exc.l5d_err)
            raise
        except BaseException:
            self._finish(node, started, False, retry)
            if attempt is not None:
                attempt.end(0, "cancelled")
            raise
        status = response.status
        if attempt is not None:
            attempt.end(status)
        if status < 500:
            failure = False  # every classifier calls anything but a 5xx a success
        elif ctx.classifier is not None:
            failure = ctx.classifier.classify_response(request.method, status, False).is_failure
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

    def _finish(self, node: Node[Endpoint], started: float, failure: bool, retry: bool) -> None:
        """One attempt ended (its response body too): the node learns it, the breakers free a place."""
        node.finish(started, failure=failure)
        self.inflight -= 1
        if retry:
            self.retrying -= 1

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

    def close(self) -> None:
        """Stop following the address set, release it, and drain every pool (idle connections
        close now, busy ones when their response ends)."""
        self._unsubscribe()
        release, self._release = self._release, None
        if release is not None:
            release()
        for endpoint in self._endpoints.values():
            endpoint.pool.close()

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
        return False

    async def wait_drained(self) -> None:
        await asyncio.gather(*(e.pool.wait_drained() for e in self._endpoints.values()))

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def pool_statistics(self) -> PoolStatistics:
        idle = busy = dialing = waiters = opened = closed = 0
        queue_timeouts = self._removed_queue_timeouts
        for endpoint in self._endpoints.values():
            s = endpoint.pool.statistics()
            idle += s.idle
            busy += s.busy
            dialing += s.dialing
            waiters += s.waiters
            opened += s.opened
            closed += s.closed
            queue_timeouts += s.queue_timeouts
        return PoolStatistics(idle, busy, dialing, waiters, opened, closed, queue_timeouts)

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
                    "pool": _pool_json(node.member.pool.statistics()),
                }
                for node in self.balancer.nodes()
            ],
        }

    def __repr__(self) -> str:
        return f"<Client {self.label} endpoints={len(self._endpoints)}>"


def _pool_json(s: PoolStatistics) -> dict[str, int]:
    return {"idle": s.idle, "busy": s.busy, "dialing": s.dialing, "waiters": s.waiters}
