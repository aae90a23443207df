"""Listener: one asyncio.Protocol per downstream connection; bytes in via the HTTP/1 codec, responses out in order.

How this works:
- The codec (meshd/http/codec.py `RequestCodec`, shared with the upstream side) turns each read
  into events: a `Request` head (its streaming `Body` is then fed here as body bytes arrive), the
  end of a message with its trailers, or a `ParseError`. It owns every parsing rule (smuggling
  shapes, limits, hop-by-hop fields, trailers, 505 and 501); this class owns the connection:
  ordering, timers, back-pressure, and writing responses.
- Requests are answered strictly in order. The first request runs at once; pipelined ones queue
  behind it (their bodies buffer up to the body high-water mark, then reading pauses). A parse
  error queues a 400 after the requests before it and closes the connection after it.
- Some errors are only found after the request's head was accepted (a bad chunk size, a
  Transfer-Encoding llhttp refuses after the head, an Upgrade). That request is then abandoned
  and the error answers it instead, unless its response has already begun. The connection's task
  (one per connection, see `_serve`) has been handed that request but has not run yet when the
  error is in the same read as the head (the usual case): it is cancelled, so nothing of the
  request reaches an upstream.
- Back-pressure both ways: a request body pauses this transport when its consumer (the upstream
  connection) cannot keep up; a full write buffer here pauses the response body's producer.
- Timers: an idle timer runs while no request is in progress (keep-alive idle timeout); a header
  timer runs from the first byte of a request until its head is complete (slow-header defence);
  a body timer bounds the silence between two reads while a request body is still arriving
  (slow-body defence; time with reading paused by back-pressure excluded). They read the
  listener's clock (meshd.clock: `MONOTONIC` by default) and are armed on it, so a test's fake
  clock drives them to the exact instant.
- A client that leaves (FIN or reset) before its request's response has begun cancels it: the
  connection's task is cancelled (aborting the attempt in flight or a retry's backoff), requests
  pipelined after it are dropped, and it is counted under 499 (see `eof_received`).
- Drain: `begin_drain()` closes idle connections now and makes busy ones close after their
  current response.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import monotonic
from typing import Final, Protocol, cast

from mypy_extensions import mypyc_attr

from meshd.admission import Admission
from meshd.clock import MONOTONIC, Clock, Timer
from meshd.errors import (
    BadRequest,
    BodyTimeout,
    HeaderTimeout,
    MeshdError,
    RequestTimeout,
)
from meshd.http.body import Body, Trailers
from meshd.http.codec import EndOfMessage, ParseError, RequestCodec
from meshd.http.framing import (
    Framing,
    encode_chunk,
    encode_last_chunk,
    reason_phrase,
    response_framing,
    serialize_response_head,
)
from meshd.http.headers import (
    append_via,
)
from meshd.http.messages import Headers, Request, Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Service
from meshd.pipeline.stats import RecentRequests, RouterStats
from meshd.pipeline.tracing import end_request, trace_id_header

log = logging.getLogger("meshd.listener")

#: the service label of responses to requests that were never identified (parse errors, ...)
UNIDENTIFIED: Final = "_unidentified"
#: the name of each downstream connection's task (see `ServerProtocol._serve`)
CONNECTION_TASK: Final = "meshd connection"
#: how long a drain waits for the first request of a connection that has sent nothing yet
DRAIN_GRACE_S: Final = 1.0
#: the status a request is counted under when its client left before the response began (nginx's 499)
CLIENT_CLOSED_REQUEST: Final = 499

_VIA: Final = (b"Via", b"1.1 meshd")
#: uvloop timers have millisecond resolution and may fire a hair before their deadline; a lazily
#: re-armed timer treats anything this close to its deadline as due, rather than re-arming.
_TIMER_SLACK_S: Final = 0.005



@dataclass(frozen=True, slots=True)
class ListenerLimits:
    max_header_bytes: int = 64 * 1024
    #: request header fields (trailer fields included) per request
    max_headers: int = 100
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    #: the longest silence between two reads of a request body (time reading is paused excluded)
    body_idle_timeout_s: float = 60.0
    replay_limit: int = 64 * 1024


Observe = Callable[[str, int, float], None]


def _ignore(name: str, status: int, seconds: float) -> None:
    pass


class ConnectionClosed(Exception):
    """The downstream client went away before its request or response finished."""


@mypyc_attr(allow_interpreted_subclasses=True)
class FastPlanner:
    """The fast path (meshd/fastpath.py), seen from the listener: `plan` is offered each request
    whose body has arrived whole; True when it took the request (it then finishes it with
    `ServerProtocol.fast_done`, or hands it over with `ServerProtocol.hand_over`).

    A base class rather than a `Protocol`, so that the compiled listener calls `plan` through
    mypyc's vtable (a C call) instead of a Python method lookup and call per request."""

    __slots__ = ()

    def plan(self, conn: ServerProtocol, request: Request) -> bool:
        raise NotImplementedError


class Handoff(Protocol):
    """A request the fast path took: in flight on an upstream connection, or handed over to the
    connection's task, which then awaits `resume()` (the slow path from where the fast one
    stopped). `abandon()` gives it up (the client left) before `resume()` was called."""

    ctx: RouteContext
    started: float
    admitted_at: float
    #: the admission it entered (the listener's may have changed since, with a reload)
    admission: Admission

    def resume(self) -> Awaitable[Response]: ...

    def abandon(self) -> None: ...


class Connection(Protocol):
    """What a listener keeps of each downstream connection: HTTP/1's `ServerProtocol` here, or
    HTTP/2's (meshd/h2server.py)."""

    def drain(self) -> None: ...

    def abort(self) -> None: ...


class Listener:
    """The shared state of one listening socket: the service, limits, and live connections."""

    def __init__(
        self,
        service: Service,
        limits: ListenerLimits,
        *,
        label: str = "",
        observe: Observe | None = None,
        clock: Clock = MONOTONIC,
        admission: Admission | None = None,
        peer_identity: Callable[[asyncio.BaseTransport], str] | None = None,
        recent: RecentRequests | None = None,
        stats: RouterStats | None = None,
    ) -> None:
        self.service = service
        #: the router's stats: when given, they are `observe` and `recent` (called directly, a C
        #: call in the compiled build, where a `Callable` attribute is a Python call)
        self.stats = stats
        if stats is not None:
            observe = stats.observe
            recent = stats.recent
        #: the router's ring of recent requests (the dashboard's list), recorded beside `observe`
        self.recent = recent
        #: on a TLS listener that verifies client certificates: reads the client's identity from
        #: its connection (once per connection; meshd/tls/identity.py)
        self.peer_identity = peer_identity
        #: connections refused because they began with a TLS handshake on this plaintext port
        self.tls_on_plaintext = 0
        self.limits = limits
        self.label = label
        #: the timers' clock (meshd.clock): `now` is read where a timestamp changes, its timers
        #: armed lazily; a test passes the fake one and advances it.
        self.clock = clock
        #: called with (logical name, status, seconds from request head to response head) for
        #: every response this listener writes, meshd's own errors included (the router's stats)
        #: the router's admission control (meshd/admission.py), shared by its listeners
        self.admission = admission if admission is not None else Admission(label, clock=clock)
        self.observe: Observe = observe or _ignore
        self.connections: set[Connection] = set()
        #: the fast path (meshd/fastpath.py), None when off (`MESHD_FAST_PATH=0`, or a test)
        self.fast: FastPlanner | None = None
        self.draining = False
        self._all_closed: asyncio.Event | None = None
        self.accepted = 0

    def protocol_factory(self) -> ServerProtocol:
        return ServerProtocol(self)

    def begin_drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    async def wait_closed(self) -> None:
        if not self.connections:
            return
        self._all_closed = asyncio.Event()
        await self._all_closed.wait()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    def _forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()


_Item = Request | MeshdError


class ServerProtocol(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._loop = asyncio.get_running_loop()
        self._timers: Clock = listener.clock
        #: `now` read once: for the production clock it is `time.monotonic` itself (no wrapper)
        self._clock: Callable[[], float] = listener.clock.now
        #: the timers' clock is `time.monotonic`, the one `_respond` reads: the idle timer's start
        #: can take the time `_respond` read a moment earlier instead of reading it again
        self._monotonic = self._clock is monotonic
        #: when `_respond` last read the clock (-1: not since the idle timer last took it)
        self._responded_at = -1.0
        self._transport: asyncio.Transport | None = None
        limits = listener.limits
        self._codec = RequestCodec(
            max_head_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            replay_limit=limits.replay_limit,
            producer=self,
        )
        self._client_ip = ""
        #: the client's workload identity (TLS with client certificates), "" otherwise
        self._peer_identity = ""
        self._queue: deque[_Item] = deque()
        self._active: Request | None = None
        #: the route context `_serve` made for the active request (None until it runs it)
        self._route: RouteContext | None = None
        self._active_response: Response | None = None
        #: the connection's task (see `_serve`), created with its first request
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[Request] | None = None
        self._next: Request | None = None
        self._closing = False
        self._draining = False
        self._peer_closed = False
        self._read_pauses = 0
        self._write_paused = False
        # Timers are lazy: per request only timestamps change; a timer is armed when none is
        # pending and re-armed on firing if the deadline moved (no call_later per request).
        self._idle_timer: Timer | None = None
        self._header_timer: Timer | None = None
        self._body_timer: Timer | None = None
        self._idle_since: float | None = None
        #: when the request body being read was last read from (or reading last resumed)
        self._body_read_at = 0.0
        #: when `_serve` began running the active request (-1: not yet); for a client that leaves
        self._served_since = -1.0
        #: when the head being read began (-1: a head arriving whole needs no timestamp)
        self._head_started = -1.0
        #: the body of the last request parsed, while it is still arriving
        self._body: Body | None = None
        #: a response was written on this connection (a drain closes it at once when idle)
        self._answered = False
        #: the fast path's exchange while it owns the active request (meshd/fastpath.py)
        self._fast: Handoff | None = None
        #: ...and it has handed the request over to the connection's task (`hand_over`)
        self._handed = False
        #: inside `data_received`, and the request to start at its end (see there)
        self._feeding = False
        self._deferred: Request | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self._codec.client_ip = self._client_ip
        identify_peer = self._listener.peer_identity
        if identify_peer is not None:
            self._peer_identity = identify_peer(transport)
        self._listener.connections.add(self)
        self._listener.accepted += 1
        if self._listener.draining:
            self._draining = True
        self._start_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._feeding = True
        try:
            self._read(data)
        finally:
            self._feeding = False
        deferred = self._deferred
        if deferred is not None and not self._closing:
            # a request that began in this read, its body after its head: started now that the
            # read is parsed, so that the fast path sees a small body whole
            self._deferred = None
            self._run(deferred)

    def _read(self, data: bytes) -> None:
        for event in self._codec.feed(data):
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, bytes):
                body = self._body
                if body is not None:
                    body.feed(event)
            elif isinstance(event, EndOfMessage):
                body = self._body
                self._body = None
                if body is not None and not body.ended:
                    body.end(event.trailers)
            elif isinstance(event, ParseError):
                if data[:2] == b"\x16\x03" and self._active is None and not self._queue:
                    # a TLS ClientHello on this plaintext port: an HTTP 400 would be noise to a
                    # TLS client; close at once, counted (meshd_tls_handshake_failures_total)
                    self._listener.tls_on_plaintext += 1
                    self._close()
                    return
                if event.abandons:
                    self._abandon_last_request()
                self._parse_failed(event.error)
                return
        if self._codec.in_head:
            self._idle_since = None
            if self._header_timer is None or self._head_started < 0.0:
                # A request head arrived in pieces: bound how long the rest may take. The clock is
                # read here, not when the head began: a head that arrives whole (nearly all of
                # them) costs no clock read; one that began in this read began microseconds ago.
                if self._head_started < 0.0:
                    self._head_started = self._clock()
                if self._header_timer is None:
                    self._header_timer = self._timers.call_later(
                        self._head_started + self._limits.header_timeout_s - self._clock(), self._on_header_timeout
                    )
        if self._body is not None:
            # A request body is still arriving after this read: bound the silence until the
            # next one. A body that arrives with its head (or a bodiless request) costs nothing.
            self._body_read_at = self._clock()
            if self._body_timer is None:
                self._body_timer = self._timers.call_later(self._limits.body_idle_timeout_s, self._on_body_timeout)

    def eof_received(self) -> bool | None:
        # The client closed its side. Idle (or in the middle of a head): close, nothing is lost.
        # With a request in progress whose response has not begun, the client has given up on it
        # (`curl -m`, a timed-out caller): as nginx (499) and Envoy do, the request is cancelled
        # (its attempt in flight or its backoff ends, its upstream connection is aborted), the
        # requests pipelined after it are dropped, and the connection closes with nothing written.
        # A response that has begun is finished (a client that only shut down its sending side
        # still reads it; one that closed the socket makes the write fail), then the connection
        # closes.
        self._peer_closed = True
        if self._body is not None and not self._body.ended:
            self._body.fail(ConnectionClosed("client closed the connection in the middle of the body"))
        if self._active is None and not self._queue:
            return False
        self._queue.clear()
        if self._active_response is not None:
            return True
        self._client_left()
        self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._client_left()  # reset by the client (or its host), not closed by meshd
        self._closing = True
        self._cancel_timers()
        self._listener._forget(self)
        lost = ConnectionClosed("client disconnected")
        if self._body is not None and not self._body.ended:
            self._body.fail(lost)
        if self._active is not None and not self._active.body.ended:
            self._active.body.fail(lost)
        if self._active_response is not None and not self._active_response.body.ended:
            self._active_response.body.cancel(lost)
        # let go of the task: a cancelled task keeps its CancelledError, whose traceback holds
        # `_serve`'s frame and so this connection (a cycle if the connection held the task too)
        task, self._task = self._task, None
        self._waiter = None
        if task is not None and not task.done():
            task.cancel()
        self._abandon_fast()
        self._queue.clear()
        self._codec.detach()  # no cycle left for the garbage collector (RequestCodec.detach)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._active_response is not None:
            self._active_response.body.pause_producing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._active_response is not None:
            self._active_response.body.resume_producing()

    # -- FlowControl for request bodies -------------------------------------------------------
    def pause_reading(self) -> None:
        self._read_pauses += 1
        if self._read_pauses == 1 and self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_pauses == 0:
            return
        self._read_pauses -= 1
        if self._read_pauses == 0 and self._transport is not None and not self._closing:
            self._transport.resume_reading()
            if self._body is not None:
                # the time reading was paused (meshd's choice, not the client's) does not count
                self._body_read_at = self._clock()
                if self._body_timer is None:
                    self._body_timer = self._timers.call_later(self._limits.body_idle_timeout_s, self._on_body_timeout)

    # -- codec events ---------------------------------------------------------------------
    def _on_request(self, request: Request) -> None:
        """A request head was parsed: it is queued (or run) at once; its body follows."""
        self._idle_since = None
        self._head_started = -1.0  # the next head that arrives in pieces is timed from its first read
        body = request.body
        if not body.ended:
            self._body = body
            if request.expect_continue:
                body.on_first_attach(self._send_continue)
        self._enqueue(request)

    # -- exchanges ----------------------------------------------------------------------------
    def _enqueue(self, item: _Item) -> None:
        if self._active is None and not self._queue:
            self._start(item)
        else:
            self._queue.append(item)

    def _start(self, item: _Item) -> None:
        if not isinstance(item, Request):  # a native type test first (MeshdError is interpreted)
            self._write_error_and_close(item)
            return
        self._active = item
        if self._feeding and not item.body.ended and self._listener.fast is not None:
            self._deferred = item  # its body may end in this same read (see data_received)
            return
        self._run(item)

    def _run(self, item: Request) -> None:
        fast = self._listener.fast
        if fast is not None and item.body.ended and fast.plan(self, item):
            return  # the fast path took it (meshd/fastpath.py)
        self._wake(item)

    def _wake(self, item: Request) -> None:
        """The connection's task runs `item` next."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set_result(item)
        else:
            # A new task takes it first; a running task still returning from the previous request
            # (whose whole response was written synchronously) takes it next, without waiting.
            self._next = item
            if self._task is None or self._task.done():
                self._task = self._loop.create_task(self._serve(), name=CONNECTION_TASK)

    async def _serve(self) -> None:
        """The connection's one task: runs its requests one after another, in order.

        One task per connection rather than per request: creating an asyncio task (and
        registering it in asyncio's task set) costs about a microsecond per request. Cancelling
        the task (client gone, request abandoned) ends it; the connection closes then anyway.
        """
        listener = self._listener
        peer_identity = self._peer_identity
        request: Request | None = None
        ctx: RouteContext | None = None
        response: Response | None = None
        while True:
            request = self._next
            if request is None:
                self._waiter = waiter = self._loop.create_future()
                request = await waiter
            else:
                self._next = None
            # Read per request, not per connection: a config reload swaps the listener's router
            # (meshd/daemon.py) and a keep-alive connection's next request goes to the new one.
            service = listener.service
            admission = listener.admission
            handoff: Handoff | None = None
            if self._handed:
                # the fast path began this request and handed it over (meshd/fastpath.py): its
                # context, clock and admission carry on from where it stopped
                handoff = self._fast
                self._fast = None
                self._handed = False
            if handoff is not None:
                self._route = ctx = handoff.ctx
                admission = handoff.admission
                started = handoff.started
                admitted = True
                admitted_at = handoff.admitted_at
            else:
                # The pipeline's per-request state (meshd/pipeline/context.py): the one object made
                # per request here; every stage reads and writes it, the wire request inside it.
                self._route = ctx = RouteContext(request, peer_identity)
                self._served_since = started = monotonic()
                # Admission first (meshd/admission.py): one comparison on the common path; past
                # `maxConcurrentRequests` the request waits for a turn or is refused (503).
                admitted = admission.enter()
                admitted_at = started
            # Stats are taken here rather than in a pipeline stage: outermost by construction,
            # and one coroutine frame less per request.
            #
            # This is also the error responder, the one place a MeshdError becomes a response
            # with `l5d-err` (as a stage it would cost a coroutine frame per request): every
            # failure, meshd's own included, is answered with a status and an explanation, and
            # counted.
            try:
                if handoff is not None:
                    response = await handoff.resume()
                else:
                    if not admitted:
                        await admission.wait()
                        admitted = True
                        admitted_at = monotonic()
                    response = await service(ctx)
            except MeshdError as exc:
                if not request.body.ended:
                    # the body will never be read now: the connection is closed after this response
                    request.keep_alive = False
                response = error_response(exc, trace_id=ctx.trace_id)
            except TimeoutError:
                response = error_response(RequestTimeout("request timed out"), trace_id=ctx.trace_id)
            except Exception:
                log.exception("unhandled error in the request pipeline")
                response = error_response(MeshdError("internal error in meshd"), close=True, trace_id=ctx.trace_id)
            finally:
                if admitted:
                    admission.leave()
            self._respond(request, ctx, response, started, admitted_at if admitted else -1.0, admission)
            if self._closing:
                return
            # keep nothing of this exchange while the connection waits for its next request
            request = ctx = response = handoff = None

    def hand_over(self, handoff: Handoff) -> None:
        """The fast path gives the active request to the connection's task (`_serve`), which
        carries it on with `handoff.resume()`."""
        self._fast = handoff
        self._handed = True
        request = self._active
        assert request is not None
        self._wake(request)

    def fast_done(
        self, ctx: RouteContext, response: Response, started: float, admitted_at: float, admission: Admission
    ) -> None:
        """The fast path's request ended with `response` (after `admission.leave()`)."""
        self._fast = None
        self._respond(ctx.request, ctx, response, started, admitted_at, admission)

    def _abandon_fast(self) -> None:
        fast = self._fast
        if fast is not None:
            self._fast = None
            self._handed = False
            fast.abandon()

    def _respond(
        self, request: Request, ctx: RouteContext, response: Response, started: float, admitted_at: float,
        admission: Admission,
    ) -> None:
        """Record a request's response (stats, the recent ring, its span) and write it.
        `admitted_at` < 0: it was never admitted."""
        listener = self._listener
        ended = monotonic()
        self._responded_at = ended
        sampler = admission.sampler
        if admitted_at >= 0.0 and sampler is not None:
            # an adaptive limit (meshd/adaptive.py) learns from the time served, not waited
            sampler.sample(ended - admitted_at, ended)
        seconds = ended - started
        name = ctx.logical_name or UNIDENTIFIED
        stats = listener.stats
        if stats is not None:
            stats.observe(name, response.status, seconds)
        else:
            listener.observe(name, response.status, seconds)
        recent = listener.recent
        if recent is not None:
            recent.record(ctx, name, response.status, started, seconds)
        if ctx.span is not None:  # tracing (meshd/pipeline/tracing.py): a sampled request's span ends
            end_request(ctx, ctx.span, response)
        self._route = None
        if self._closing:
            response.body.cancel(ConnectionClosed("client disconnected"))
            return
        self._write_response(request, response)

    def _write_response(self, request: Request, response: Response) -> None:
        transport = self._transport
        assert transport is not None
        body = response.body
        framing = response_framing(request.method, request.version, response.status, body)
        keep_alive = (
            request.keep_alive
            and response.keep_alive
            and not self._draining
            and request.body.ended
            and framing is not Framing.CLOSE
        )
        headers = response.headers
        if response.has_via:
            append_via(headers, "1.1", b"meshd")
        else:
            headers.append(_VIA)
        if framing is Framing.NONE:
            length = response.content_length
        else:
            length = body.length
        head = serialize_response_head(
            response.status,
            response.reason,
            headers,
            framing,
            length,
            keep_alive=keep_alive,
            client_version=request.version,
        )
        self._active_response = response
        if framing is Framing.NONE:
            transport.write(head)
            if not body.ended:
                body.cancel(ConnectionClosed("response must not carry a body"))
            self._exchange_done(keep_alive)
            return
        buffered = body.take_buffered()
        if buffered:
            head += encode_chunk(buffered) if framing is Framing.CHUNKED else buffered
        if framing is Framing.LENGTH and body.ended and body.error is None:
            # The usual small response: all of it arrived with its head. One write, and no
            # writer to attach (`take_buffered` left nothing to deliver but the end).
            transport.write(head)
            self._exchange_done(keep_alive)
            return
        transport.write(head)
        body.attach(_ResponseWriter(self, framing, keep_alive))
        if self._write_paused:
            body.pause_producing()

    def _exchange_done(self, keep_alive: bool) -> None:
        self._answered = True
        self._active_response = None
        request = self._active
        self._active = None
        self._served_since = -1.0
        if self._closing:
            return
        if not keep_alive or (request is not None and not request.body.ended):
            self._close()
            return
        if self._queue:
            self._start(self._queue.popleft())
        elif self._draining or self._peer_closed:
            self._close()
        elif self._body is None:
            self._start_idle_timer()

    def _response_failed(self, exc: BaseException) -> None:
        # A response already started cannot be replaced by an error: cut the connection so the
        # client sees a truncated message (never a corrupted one).
        log.debug("response body failed: %s", exc)
        self._active_response = None
        self._close()

    def _send_continue(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _parse_failed(self, error: MeshdError) -> None:
        if self._transport is not None:
            self._transport.pause_reading()
        body = self._body
        self._body = None
        if body is not None and not body.ended:
            # The bad bytes were inside the body of the last request parsed: it fails (an upstream
            # exchange already streaming it is aborted) and the error answers it instead.
            body.fail(error)
            self._abandon_last_request()
        self._enqueue(error)

    def _abandon_last_request(self) -> None:
        """Drop the most recently parsed request, unless its response has already begun."""
        queue = self._queue
        if queue:
            if isinstance(queue[-1], Request):
                queue.pop()
        elif self._active is not None and self._active_response is None:
            task, self._task = self._task, None
            self._deferred = None
            self._abandon_fast()
            self._active = None
            self._route = None
            self._next = None
            self._waiter = None
            if task is not None:
                task.cancel()

    def _client_left(self) -> None:
        """The client went away: cancel its request unless the response has begun (see eof_received).

        The request is counted under status 499 (nginx's "client closed request"), with the time
        it had been served; requests pipelined behind it, never started, are not counted.
        """
        self._queue.clear()
        request = self._active
        if request is None or self._active_response is not None:
            return
        since = self._served_since
        ctx = self._route
        self._active = None
        self._route = None
        self._served_since = -1.0
        self._next = None
        self._waiter = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._deferred = None
        self._abandon_fast()
        seconds = monotonic() - since if since >= 0.0 else 0.0
        # the name identify gave it (none if `_serve` had not run it yet)
        name = ctx.logical_name if ctx is not None and ctx.request is request else ""
        if ctx is not None and ctx.span is not None:
            ctx.span.logical_name = name
            ctx.span.end(CLIENT_CLOSED_REQUEST, "cancelled", "the client closed the connection")
        self._listener.observe(name or UNIDENTIFIED, CLIENT_CLOSED_REQUEST, seconds)

    def _write_error_and_close(self, error: MeshdError) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(render_error(error))
            self._listener.observe(UNIDENTIFIED, error.status, 0.0)
        self._close()

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._codec.in_head or self._closing:
            return
        deadline = self._head_started + self._limits.header_timeout_s
        now = self._clock()
        if now + _TIMER_SLACK_S < deadline:  # a new head started since this timer was armed
            self._header_timer = self._timers.call_later(deadline - now, self._on_header_timeout)
            return
        if self._active is None and not self._queue:
            self._write_error_and_close(_header_timeout_error(self._limits.header_timeout_s))
        else:
            self._close()

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self._closing:
            return  # busy now; the timer is armed again when the connection next goes idle
        deadline = since + self._limits.idle_timeout_s
        now = self._clock()
        if now + _TIMER_SLACK_S < deadline:
            self._idle_timer = self._timers.call_later(deadline - now, self._on_idle_timeout)
        elif self._active is None and not self._queue:
            self._close()

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self._body is None or self._closing or self._read_pauses:
            return  # no body being read, or reading paused: armed again when reading resumes
        timeout = self._limits.body_idle_timeout_s
        deadline = self._body_read_at + timeout
        now = self._clock()
        if now + _TIMER_SLACK_S < deadline:  # read since this timer was armed
            self._body_timer = self._timers.call_later(deadline - now, self._on_body_timeout)
            return
        # The body fails (an upstream exchange streaming it is aborted, its connection released)
        # and the 408 answers the request instead, unless its response has begun; then closed.
        self._parse_failed(BodyTimeout(f"request body: nothing received for {timeout * 1000:g} ms (bodyIdleTimeoutMs)"))

    def _start_idle_timer(self) -> None:
        if self._closing:
            return
        now = self._responded_at
        self._responded_at = -1.0
        if now < 0.0 or not self._monotonic:
            now = self._clock()
        self._idle_since = now
        if self._idle_timer is None:
            self._idle_timer = self._timers.call_later(self._limits.idle_timeout_s, self._on_idle_timeout)

    def _cancel_timers(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._cancel_timers()
            if self._transport is not None:
                self._transport.close()

    # -- drain --------------------------------------------------------------------------------
    def drain(self) -> None:
        self._draining = True
        if self._active is None and not self._queue and self._body is None:
            if self._answered or self._codec.in_head:
                self._close()  # idle keep-alive (a client retries on a new connection), or mid-head
            else:
                # Accepted but nothing received yet: the client has sent, or is about to send,
                # its first request (a hand-over or a drain races with its connect). Closing now
                # would lose that request; it is answered (with `Connection: close`) if it
                # arrives within the grace period, else the connection closes then.
                self._timers.call_later(DRAIN_GRACE_S, self._close_if_unused)

    def _close_if_unused(self) -> None:
        if self._active is None and not self._queue and self._body is None and not self._codec.in_head:
            self._close()

    def abort(self) -> None:
        # meshd cuts the connection (a drain that ran out of time): not a client that left
        self._closing = True
        self._cancel_timers()
        if self._transport is not None:
            self._transport.abort()

    @property
    def is_idle(self) -> bool:
        return self._active is None and not self._queue


class _ResponseWriter:
    """Writes a response body to the downstream transport in the chosen framing."""

    __slots__ = ("_conn", "_transport", "_chunked", "_keep_alive")

    def __init__(self, conn: ServerProtocol, framing: Framing, keep_alive: bool) -> None:
        self._conn = conn
        transport = conn._transport
        assert transport is not None
        self._transport = transport
        self._chunked = framing is Framing.CHUNKED
        self._keep_alive = keep_alive

    def on_data(self, data: bytes) -> None:
        if data:
            self._transport.write(encode_chunk(data) if self._chunked else data)

    def on_end(self, trailers: Trailers | None) -> None:
        if self._chunked:
            self._transport.write(encode_last_chunk(trailers))
        self._conn._exchange_done(self._keep_alive)

    def on_error(self, exc: BaseException) -> None:
        self._conn._response_failed(exc)


def render_error(error: MeshdError) -> bytes:
    """The bytes of an error response meshd writes itself, then closes (parse errors, timeouts)."""
    text = error.l5d_err.encode("latin-1", "replace")
    body = text + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nl5d-err: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (error.status, reason_phrase(error.status), _header_safe(text), len(body), body)
    )


def error_response(error: MeshdError, *, close: bool = False, trace_id: str = "") -> Response:
    """A response for a MeshdError raised in the pipeline, carrying `l5d-err` (and, with tracing
    on, `l5d-trace-id`: the request's trace id, docs/errors.md)."""
    text = error.l5d_err.encode("latin-1", "replace")
    body = text + b"\n"
    headers: Headers = [(b"l5d-err", _header_safe(text)), (b"Content-Type", b"text/plain")]
    if trace_id:
        headers.append(trace_id_header(trace_id))
    if error.headers:
        headers += error.headers
    return Response(
        error.status,
        reason_phrase(error.status),
        headers,
        Body.of(body),
        keep_alive=not (close or isinstance(error, BadRequest)),
    )


def _header_safe(text: bytes) -> bytes:
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


def _header_timeout_error(timeout_s: float) -> MeshdError:
    return HeaderTimeout(f"request headers not received within {timeout_s:g} s")
