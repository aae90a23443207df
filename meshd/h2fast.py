"""The HTTP/2 fast path: a unary call driven by codec events, no task, future or coroutine per stream.

The slow path (meshd/h2server.py `_serve`) runs each stream in a task of its own, awaiting the
router's service: the timeouts stage's coroutine (every gRPC request enters it), the retry loop's,
the client's attempt, the pool's `send` and the upstream stream's future. The fast path serves the
common unary call with plain calls instead, making the same decisions with the same code, as
meshd/fastpath.py does for HTTP/1.1:

1. `H2FastPath.plan` - called by the server connection once the read that brought a stream's
   head has been handled, for a stream whose request is complete by then (END_STREAM seen: a
   unary call's HEADERS and DATA usually come in one read). Admission, the `RouteContext`, the
   router's filters, the binding cache, the name's service state and its classifier, the
   choice of destination, the balancer's pick, a connection of the endpoint's HTTP/2 pool that
   can take a stream now (`H2Pool.try_stream`), the attempt's start and header block
   (`Client.begin`, `Client.h2_headers`), and the stream (`H2Upstream.open_stream`, with this
   exchange as the receiver of the response head instead of a future). To an HTTP/1.1 upstream
   (a client with `protocol: http`, e.g. an incoming router's local service): an idle pooled
   connection and the write, as meshd/fastpath.py does (`Pool.try_acquire_idle`,
   `Client.head_for`, `UpstreamConnection.send_to`); a pooled connection found stale before
   anything came back is handed over to be sent again on a fresh one (`Client.resend_on`).
2. `H2Exchange.head_received` - called by the upstream connection once the read that brought the
   response head has been handled whole (a small answer's DATA and trailers have reached its
   body by then). The client settles the attempt (`Client.settle`: classification by
   grpc-status, failure accrual, Peak EWMA); an answer the retry loop would pass on as it is (a
   status below 500 for HTTP classifiers; for the gRPC ones, grpc-status OK in a trailers-only
   head or in trailers that have already come) is the retry stage's success (budget deposit,
   `l5d-success-class`), and the connection records and writes it (`H2ServerProtocol.fast_done`).

Everything else falls back to the coroutine path, from the step where the fast path stopped,
with the same `RouteContext` (`H2ServerProtocol.hand_over`: the stream gets its task, which
awaits `H2Exchange.resume()`), so nothing is done twice and no request is sent twice:

- a request still streaming when its head's read was handled (client streaming, bidi, a large
  body): never offered; it gets its task at once, as before;
- a filter raised: the error is raised in the task; the routing file has rules or the binding is
  not cached: from `bind`;
- the name's service is not the plain chain (a total timeout, an access log, folded), or the
  request carries a deadline (`l5d-ctx-deadline`, or `grpc-timeout` on a router that carries
  gRPC): from the service's chain (classify, timeouts, retries);
- from the retry stage (`Resumable`: its loop takes the first attempt's outcome as its own):
  the client has an attempt timeout or a full circuit breaker; no connection of the picked
  endpoint can take a stream now, or it has no idle HTTP/1.1 connection (the attempt goes on in
  `Client.attempt_on`, which waits or dials); the attempt failed (`Client.failed` counted it; the loop decides on a retry); the
  answer is anything but a success the loop would pass on at once (a 5xx, a non-OK grpc-status,
  an answer whose trailers have not come yet: the loop holds it or retries it).

A client that resets the stream (or leaves) while the fast path owns it (`H2Exchange.abandon`)
is handled as a cancelled task would be: the upstream stream is reset (CANCEL), the attempt
counted as cancelled, admission left.

The switch: `MESHD_FAST_PATH=0` turns this fast path off with the HTTP/1.1 one (meshd/fastpath.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from time import monotonic
from typing import Final

from meshd.admission import Admission
from meshd.errors import MeshdError, NoEndpoints, NoSuchService
from meshd.fastpath import (
    RESUME_BIND,
    RESUME_RAISE,
    RESUME_RETRY_CLIENT,
    RESUME_RETRY_ERROR,
    RESUME_RETRY_RESPONSE,
    RESUME_RETRY_STALE,
    RESUME_SERVICE,
    FirstAttempt,
    resume_from,
)
from meshd.grpc.classifiers import GrpcClassifier
from meshd.grpc.status import is_grpc_request, status_of
from meshd.grpc.timeout import HEADER as GRPC_TIMEOUT
from meshd.h2server import H2ServerProtocol, H2Stream
from meshd.http.headers import L5D_SUCCESS_CLASS
from meshd.http.messages import Response
from meshd.listener import ConnectionClosed
from meshd.pipeline.context import RouteContext
from meshd.pipeline.dispatch import can_resend
from meshd.pipeline.stack import Service
from meshd.pool.connection import StaleConnection
from meshd.retry.classifiers import ResponseClass
from meshd.retry.deadline import HEADER as DEADLINE_HEADER
from meshd.router import Router

_GRPC_TIMEOUT_LEN: Final = len(GRPC_TIMEOUT)


def has_grpc_timeout(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request carries a `grpc-timeout` field at all (well-formed or not: the timeouts
    stage reads it, and counts a malformed one)."""
    for name, _ in headers:
        if len(name) == _GRPC_TIMEOUT_LEN and name.lower() == GRPC_TIMEOUT:
            return True
    return False


class H2FastPath:
    """One router's HTTP/2 fast path, the `H2Planner` its HTTP/2 connections are given."""

    __slots__ = ("router", "filters", "cache", "carries_grpc", "taken", "handed_over")

    def __init__(self, router: Router) -> None:
        self.router = router
        self.filters = router.filters
        #: the binding cache (cleared in place when bindings may change, never replaced)
        self.cache = router.binder.cache
        #: the router's timeouts stage reads `grpc-timeout` (a router that carries gRPC)
        self.carries_grpc = router.grpc_stats is not None
        #: streams the fast path took, and those of them it handed over (read by tests)
        self.taken = 0
        self.handed_over = 0

    def retarget(self, router: Router) -> None:
        """Serve `router` from now on (a reload built a new one for the same label): connections
        keep this object, so their next streams take the new router, as the slow path's
        `listener.service` does; streams already planned keep theirs."""
        self.router = router
        self.filters = router.filters
        self.cache = router.binder.cache
        self.carries_grpc = router.grpc_stats is not None

    def plan(self, conn: H2ServerProtocol, stream: H2Stream) -> bool:
        filters = self.filters
        request = stream.request
        if filters is None or request is None:
            return False
        admission = conn.listener.admission
        started = monotonic()
        if not admission.enter():
            return False  # queued or refused: the slow path decides, from the start
        self.taken += 1
        ctx = RouteContext(request, conn.peer_identity)
        stream.ctx = ctx
        stream.served_since = started
        ex = H2Exchange(self, conn, stream, ctx, admission)
        stream.fast = ex
        try:
            for f in filters:
                f(ctx)
        except Exception as exc:
            ex.error = exc
            ex.hand_over(RESUME_RAISE)
            return True
        router = self.router
        ex.router = router
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
        if self.carries_grpc and is_grpc_request(request.headers):
            if has_grpc_timeout(request.headers):
                ex.service = state.service
                ex.hand_over(RESUME_SERVICE)
                return True
            ctx.grpc = True  # what the timeouts stage marks (no deadline: nothing else to do)
        ctx.classifier = fast.classifier
        ex.fast = fast
        # the retry stage's first attempt, counted as its loop counts it
        ctx.attempts = 1
        target = router.fast_client(ctx)
        if isinstance(target, NoSuchService):
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
        # a stream to an HTTP/2 upstream, or an idle connection to an HTTP/1.1 one (`client.protocol:
        # http`, e.g. an incoming router's local service): meshd/fastpath.py `FirstAttempt.start`
        kind = ex.start(ctx, client, node)
        if kind:
            ex.hand_over(kind)
        return True


class H2Exchange(FirstAttempt):
    """One stream the fast path took: the receiver of its upstream stream's head, and what the
    slow path needs to carry it on (`resume`)."""

    __slots__ = ("path", "router", "conn", "stream", "ctx", "admission", "kind", "service", "response")

    def __init__(
        self, path: H2FastPath, conn: H2ServerProtocol, stream: H2Stream, ctx: RouteContext, admission: Admission
    ) -> None:
        super().__init__()
        self.path = path
        #: the router it was planned on (a reload may retarget the fast path meanwhile)
        self.router = path.router
        self.conn = conn
        self.stream = stream
        self.ctx = ctx
        #: the admission it entered: left when it ends (the listener's may change with a reload)
        self.admission = admission
        #: where a handed-over stream goes on (0: not handed over)
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
        classifier = fast.classifier
        if isinstance(classifier, GrpcClassifier):
            body = response.body
            decided: ResponseClass | None
            if (
                type(classifier) is GrpcClassifier and response.status == 200 and body.ended and body.error is None
                and status_of(body.trailers) == 0 and status_of(response.headers) is None
            ):
                # the common call, decided here as `classify_head` (a 200 head without grpc-status:
                # None) then `classify_trailers` (OK is never a failure) decide it, without their
                # interpreted calls
                decided = ResponseClass.SUCCESS
            else:
                # as the retry loop decides: a trailers-only head at once, else trailers already here
                decided = classifier.classify_head(response.status, response.headers)
                if decided is None and body.ended and body.error is None:
                    decided = classifier.classify_trailers(body.trailers)
            if decided is not None and body.ended:
                # what `settle` would record (its `_judge_grpc`), without reading grpc-status again
                client.settle_class(node, self.node_started, False, self.attempt, response.status, decided.is_failure)
            else:
                client.settle(ctx, node, self.node_started, False, self.attempt, response)
            if decided is not ResponseClass.SUCCESS:
                self.response = response
                self.hand_over(RESUME_RETRY_RESPONSE)  # the retry loop holds, classifies, may retry
                return
        else:
            client.settle(ctx, node, self.node_started, False, self.attempt, response)
            if response.status >= 500:
                self.response = response
                self.hand_over(RESUME_RETRY_RESPONSE)
                return
        # the retry stage's success: the budget's deposit (every request makes one) and the header
        fast.budget.deposit()
        if fast.add_success_class:
            response.headers.append((L5D_SUCCESS_CLASS, b"1.0"))
        self.admission.leave()
        self.conn.fast_done(self.stream, ctx, response)

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

    # -- the slow path (H2Handoff) ----------------------------------------------------------------
    def hand_over(self, kind: int) -> None:
        self.kind = kind
        self.path.handed_over += 1
        self.conn.hand_over(self.stream, self)

    def resume(self) -> Awaitable[Response]:
        """The rest of the request as the slow path runs it, from where the fast path stopped
        (called by the stream's task, inside its error responder): meshd/fastpath.py `resume_from`."""
        response = self.response
        self.response = None
        if self.kind == RESUME_RETRY_STALE:
            return self.resend(self.ctx)  # the HTTP/1.1 connection was stale
        return resume_from(
            self.kind, self.ctx, self.router, self.error, self.service, self.fast, self.client, self.node, response
        )

    def abandon(self) -> None:
        """The client reset the stream (or left) while the fast path owned it: as a cancelled
        task would, the upstream stream is reset (or the HTTP/1.1 connection aborted) and the attempt
        counted cancelled."""
        client = self.client
        node = self.node
        if (self.drop() or self.kind == RESUME_RETRY_STALE) and client is not None and node is not None:
            client.cancelled(node, self.node_started, False, self.attempt)
        response = self.response
        self.response = None
        if response is not None and not response.body.ended:
            response.body.cancel(ConnectionClosed("client reset the stream"))
        self.admission.leave()

