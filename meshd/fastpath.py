"""The fast path: the common HTTP/1.1 request driven by protocol callbacks, no future, task or coroutine.

The request path as written (meshd/pipeline/__init__.py) runs each request in the downstream
connection's task, awaiting the router's service: the retry stage's coroutine, the client's
coroutine and the upstream connection's future. That costs two futures, two task wake-ups and
a few coroutine frames per request. The fast path serves the common case with plain calls
instead, and with the same code for every decision:

1. `FastPath.plan` - called by the listener (`ServerProtocol._start`) for a request whose body
   has arrived whole. Admission (`Admission.enter`), the `RouteContext`, the router's filters
   (trace, hygiene, identity, identify, authorize: the same closures the slow path runs), the
   binding cache, the name's service state (`Router.fast_service`), the classifier, the choice
   of destination (`Router.fast_client`), the balancer's pick (`Client.pick`), an idle pooled
   connection (`Pool.try_acquire_idle`), the attempt's start and head (`Client.begin`,
   `Client.head_for`), and the write (`UpstreamConnection.send_to`, with this exchange as the
   receiver of the response head instead of a future). To an HTTP/2 upstream (a client with
   `protocol: h2`, e.g. the other node's meshd): a stream on a connection that can take one now
   (`H2Pool.try_stream`, `H2Upstream.open_stream` with `Client.h2_headers`), as meshd/h2fast.py
   opens them.
2. `FastExchange.head_received` - called by the upstream connection once the read that brought
   the response head is parsed (a small response's body has ended by then). The client settles
   the attempt (classification, failure accrual, Peak EWMA, the endpoint's stats:
   `Client.settle`); a status below 500 is the retry stage's success (budget deposit,
   `l5d-success-class`), and the listener records and writes the response
   (`ServerProtocol.fast_done`: stats, the recent-requests ring, the span, admission's sampler).

Everything else falls back to the coroutine path, from the step where the fast path stopped,
with the same `RouteContext` (`ServerProtocol.hand_over`; the connection's task then awaits
`FastExchange.resume()`), so nothing is done twice and nothing is sent twice:

- a filter raised (a 400, a 403): the error is raised in the task, answered as the slow path does;
- the routing file has rules (match, fault, mirror), or the binding is not cached: from `bind`;
- the name's service has an access log, a total timeout, is a folded one, or the request carries
  a deadline (`l5d-ctx-deadline`): from the service's chain (classify, timeouts, retries);
- from the retry stage (`Resumable`: its loop takes the first attempt's outcome as its own):
  the client has an attempt timeout or a full circuit breaker (the client's whole attempt is
  the first one); the picked node has no idle connection, or no HTTP/2 connection that can take
  a stream now (the attempt goes on in `Client.attempt_on` with that node, waiting for a
  connection or dialling); the pooled connection was
  stale (`Client.resend_on`, before anything came back: sent again on a fresh connection, as the
  client does); the attempt failed (`Client.failed` counted it; the loop decides on a retry);
  the response is a 5xx (`Client.settle` counted it; the loop classifies it and may retry).

A client that leaves while the fast path owns its request (`FastExchange.abandon`) is handled
as a cancelled task would be: the upstream connection is aborted, the attempt counted as
cancelled, admission left.

The switch: `MESHD_FAST_PATH=0` in the environment turns the fast path off (every request takes
the coroutine path); the test suite runs a representative set of proxy tests both ways.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from time import monotonic
from typing import Final

from balancers.base import Node
from meshd.admission import Admission
from meshd.client import Client, Endpoint
from meshd.errors import MeshdError, NoEndpoints
from meshd.http.headers import L5D_SUCCESS_CLASS
from meshd.http.messages import Request, Response
from meshd.listener import ConnectionClosed, FastPlanner, ServerProtocol
from meshd.pipeline.context import RouteContext
from meshd.pipeline.dispatch import can_resend
from meshd.pipeline.stack import Service
from meshd.pool.connection import HeadReceiver, StaleConnection, UpstreamConnection
from meshd.pool.h2 import H2Upstream, UpStream
from meshd.retry.deadline import HEADER as DEADLINE_HEADER
from meshd.router import FastService, Router
from meshd.tracing.spans import Span

#: the environment variable that turns the fast path off when set to 0
SWITCH: Final = "MESHD_FAST_PATH"

# Where a handed-over request goes on (`FastExchange.resume`, `resume_from`; meshd/h2fast.py too).
RESUME_RAISE: Final = 1  # raise `error` (a filter refused the request)
RESUME_BIND: Final = 2  # the router's bind step
RESUME_SERVICE: Final = 3  # the logical name's service chain
RESUME_RETRY_CLIENT: Final = 4  # the retry loop, its first attempt the client's whole attempt
RESUME_RETRY_PICKED: Final = 5  # ... the client's attempt on the node already picked
RESUME_RETRY_STALE: Final = 6  # ... sent again on a fresh connection
RESUME_RETRY_RESPONSE: Final = 7  # ... the first attempt's response (settled)
RESUME_RETRY_ERROR: Final = 8  # ... the first attempt's error (counted)


def enabled() -> bool:
    """Whether the fast path is on: unless `MESHD_FAST_PATH=0`."""
    return os.environ.get(SWITCH, "1").strip() not in ("0", "false", "no", "off")


class FastPath(FastPlanner):
    """One router's fast path, the `FastPlanner` its HTTP/1.1 listeners are given."""

    __slots__ = ("router", "filters", "cache", "taken", "handed_over")

    def __init__(self, router: Router) -> None:
        self.router = router
        self.filters = router.filters
        #: the binding cache (cleared in place when bindings may change, never replaced)
        self.cache = router.binder.cache
        #: requests the fast path took, and those of them it handed over to the slow path
        #: (plain counters, read by tests)
        self.taken = 0
        self.handed_over = 0

    def plan(self, conn: ServerProtocol, request: Request) -> bool:
        filters = self.filters
        if filters is None:
            return False
        admission = conn._listener.admission
        started = monotonic()
        if not admission.enter():
            return False  # queued or refused: the slow path decides, from the start
        self.taken += 1
        ctx = RouteContext(request, conn._peer_identity)
        conn._route = ctx
        conn._served_since = started
        ex = FastExchange(self, conn, ctx, started, admission)
        conn._fast = ex
        try:
            for f in filters:
                f(ctx)
        except Exception as exc:
            ex.error = exc
            ex.hand_over(RESUME_RAISE)
            return True
        router = self.router
        path = ctx.logical_path
        if path is None or router.rules_active:
            ex.hand_over(RESUME_BIND)
            return True
        chooser = self.cache.get((path, ctx.local_dtab))
        if chooser is None:
            ex.hand_over(RESUME_BIND)
            return True
        ctx.chooser = chooser
        state = router.fast_service(path)
        fast = state.fast
        l5d = request.l5d
        if fast is None or (l5d and DEADLINE_HEADER in l5d):
            ex.service = state.service
            ex.hand_over(RESUME_SERVICE)
            return True
        ctx.classifier = fast.classifier
        ex.fast = fast
        # the retry stage's first attempt, counted as its loop counts it
        ctx.attempts = 1
        target = router.fast_client(ctx)
        if not isinstance(target, Client):  # a native type test (NoSuchService is interpreted)
            ex.error = target
            ex.hand_over(RESUME_RETRY_ERROR)
            return True
        client = target
        ex.client = client
        if not client.fast or client.full():
            ex.hand_over(RESUME_RETRY_CLIENT)
            return True
        try:
            node = client.pick(ctx)
        except NoEndpoints as exc:
            ex.error = exc
            ex.hand_over(RESUME_RETRY_ERROR)
            return True
        kind = ex.start(ctx, client, node)
        if kind:
            ex.hand_over(kind)
        return True


class FirstAttempt(HeadReceiver):
    """The retry stage's first attempt as both fast paths make it (`FastExchange` here,
    `H2Exchange` in meshd/h2fast.py), over whichever protocol the client speaks to its upstreams:
    written to an idle pooled HTTP/1.1 connection, or opened as a stream on an HTTP/2 connection
    that can take one now. The exchange is the receiver of the response head either way."""

    __slots__ = ("error", "fast", "client", "node", "node_started", "attempt", "head", "upstream", "h2upstream", "up")

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.fast: FastService | None = None
        self.client: Client | None = None
        self.node: Node[Endpoint] | None = None
        self.node_started = 0.0
        self.attempt: Span | None = None
        #: the HTTP/1.1 head written (sent again on a fresh connection if that one was stale)
        self.head = b""
        #: the pooled HTTP/1.1 connection the request was written on, while its head is awaited
        self.upstream: UpstreamConnection | None = None
        #: or the HTTP/2 connection and the stream it went on
        self.h2upstream: H2Upstream | None = None
        self.up: UpStream | None = None

    def start(self, ctx: RouteContext, client: Client, node: Node[Endpoint]) -> int:
        """Begin the attempt on `node` and send it: 0 when sent, else where the slow path goes on
        (no connection can take it now: `RESUME_RETRY_PICKED`; the stream failed to open:
        `RESUME_RETRY_ERROR`, counted)."""
        self.node = node
        endpoint = node.member
        request = ctx.request
        h2pool = endpoint.h2
        if h2pool is not None:
            # an HTTP/2 client (`protocol: h2`: a gRPC service, another node's meshd)
            on = h2pool.try_stream()
            if on is None:
                return RESUME_RETRY_PICKED
            self.node_started, self.attempt = client.begin(ctx, node)
            try:
                self.up = on.open_stream(request, client.h2_headers(ctx, self.attempt), self)
            except MeshdError as exc:
                client.failed(node, self.node_started, False, self.attempt, exc)
                self.error = exc
                return RESUME_RETRY_ERROR
            self.h2upstream = on
            return 0
        conn = endpoint.pool.try_acquire_idle()
        if conn is None:
            return RESUME_RETRY_PICKED
        self.node_started, self.attempt = client.begin(ctx, node)
        self.head = head = client.head_for(ctx, self.attempt)
        self.upstream = conn
        conn.send_to(request, head, self)
        return 0

    def settled(self) -> None:
        """The connection told of the head (or of the failure): it holds the attempt no more."""
        self.upstream = None
        self.h2upstream = None
        self.up = None

    def drop(self) -> bool:
        """The client left while the attempt was in flight: the HTTP/1.1 connection is aborted (it
        cannot drop one request, so it is not reused), the HTTP/2 stream reset (CANCEL; the
        connection serves others). Whether an attempt was in flight."""
        upstream = self.upstream
        h2upstream = self.h2upstream
        up = self.up
        self.settled()
        if upstream is not None:
            upstream.abort()
            return True
        if h2upstream is not None and up is not None:
            h2upstream.abandon(up)
            return True
        return False

    def resend(self, ctx: RouteContext) -> Awaitable[Response]:
        """After a stale pooled HTTP/1.1 connection: the same attempt sent again on a fresh one, as
        the client does (`Client.resend_on`), in the retry loop."""
        client = self.client
        node = self.node
        fast = self.fast
        assert client is not None and node is not None and fast is not None
        return fast.retry(ctx, client.resend_on(ctx, node, self.node_started, self.attempt, self.head))


class FastExchange(FirstAttempt):
    """One request the fast path took: the receiver of its response head, and what the slow path
    needs to carry it on (`resume`)."""

    __slots__ = ("path", "conn", "ctx", "started", "admitted_at", "admission", "kind", "service", "response")

    def __init__(
        self, path: FastPath, conn: ServerProtocol, ctx: RouteContext, started: float, admission: Admission
    ) -> None:
        super().__init__()
        self.path = path
        self.conn = conn
        self.ctx = ctx
        self.started = started
        self.admitted_at = started
        #: the admission it entered: left when it ends (the listener's may change with a reload)
        self.admission = admission
        #: where a handed-over request goes on (0: not handed over)
        self.kind = 0
        self.service: Service | None = None
        self.response: Response | None = None

    # -- the upstream connection's callbacks (HeadReceiver) -------------------------------------
    def head_received(self, response: Response) -> None:
        self.settled()
        client = self.client
        node = self.node
        fast = self.fast
        assert client is not None and node is not None and fast is not None
        ctx = self.ctx
        status = response.status
        if status < 500 and response.body.ended and not fast.reads_trailers:
            # `Client.settle`'s common case without its classifier lookups: a success for the
            # node (every classifier calls anything but a 5xx one), its body already whole
            client.settle_class(node, self.node_started, False, self.attempt, status, False)
        else:
            client.settle(ctx, node, self.node_started, False, self.attempt, response)
        if status >= 500:
            self.response = response
            self.hand_over(RESUME_RETRY_RESPONSE)  # the retry loop classifies it, and may retry
            return
        # the retry stage's success: the budget's deposit (every request makes one) and the header
        fast.budget.deposit()
        if fast.add_success_class:
            response.headers.append((L5D_SUCCESS_CLASS, b"1.0"))
        self.admission.leave()
        self.conn.fast_done(ctx, response, self.started, self.admitted_at, self.admission)

    def head_failed(self, error: MeshdError) -> None:
        self.settled()
        if isinstance(error, StaleConnection) and can_resend(self.ctx.request):
            self.hand_over(RESUME_RETRY_STALE)
            return
        client = self.client
        node = self.node
        assert client is not None and node is not None
        client.failed(node, self.node_started, False, self.attempt, error)
        self.error = error
        self.hand_over(RESUME_RETRY_ERROR)

    # -- the slow path (Handoff) ------------------------------------------------------------------
    def hand_over(self, kind: int) -> None:
        self.kind = kind
        self.path.handed_over += 1
        self.conn.hand_over(self)

    def resume(self) -> Awaitable[Response]:
        """The rest of the request as the slow path runs it, from where the fast path stopped
        (called by the connection's task, inside its error responder)."""
        response = self.response
        self.response = None
        if self.kind == RESUME_RETRY_STALE:
            return self.resend(self.ctx)
        return resume_from(
            self.kind, self.ctx, self.path.router, self.error, self.service, self.fast, self.client, self.node, response
        )

    def abandon(self) -> None:
        """The client left (or its request was abandoned) while the fast path owned it: as a
        cancelled task would, the attempt in flight is aborted and counted cancelled."""
        kind = self.kind
        client = self.client
        node = self.node
        if (self.drop() or kind == RESUME_RETRY_STALE) and client is not None and node is not None:
            client.cancelled(node, self.node_started, False, self.attempt)
        response = self.response
        self.response = None
        if response is not None and not response.body.ended:
            response.body.cancel(ConnectionClosed("client disconnected"))
        self.admission.leave()


def resume_from(
    kind: int,
    ctx: RouteContext,
    router: Router,
    error: Exception | None,
    service: Service | None,
    fast: FastService | None,
    client: Client | None,
    node: Node[Endpoint] | None,
    response: Response | None,
) -> Awaitable[Response]:
    """Where a request the fast path handed over goes on, as the slow path runs it: the step
    `kind` names, with what the fast path had done before it. Shared by the HTTP/1.1 fast path
    and the HTTP/2 one (meshd/h2fast.py); `RESUME_RETRY_STALE` is HTTP/1.1's own."""
    if kind == RESUME_RAISE:
        assert error is not None
        return _raising(error)
    if kind == RESUME_BIND:
        return router.bind(ctx)
    if kind == RESUME_SERVICE:
        assert service is not None
        return service(ctx)
    assert fast is not None
    first: Awaitable[Response]
    if kind == RESUME_RETRY_ERROR:
        assert error is not None
        first = _raising(error)
    elif kind == RESUME_RETRY_RESPONSE:
        assert response is not None
        first = _returning(response)
    elif kind == RESUME_RETRY_CLIENT:
        assert client is not None
        first = _attempt(client, ctx)
    else:
        assert kind == RESUME_RETRY_PICKED and client is not None and node is not None
        first = client.attempt_on(ctx, node)
    return fast.retry(ctx, first)


async def _raising(error: Exception) -> Response:
    raise error


async def _returning(response: Response) -> Response:
    return response


async def _attempt(client: Client, ctx: RouteContext) -> Response:
    # the client's breakers and pick raise at call time: inside this coroutine, so inside the
    # retry loop's try, as when the loop calls it
    return await client(ctx)
