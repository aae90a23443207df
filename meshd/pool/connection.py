"""One upstream HTTP/1.1 connection: one request at a time, its response read by the HTTP/1 codec.

How this works: `send()` writes the request head (with whatever body is already buffered) and
attaches the request body so the rest streams as it arrives; it returns a future that resolves
with the `Response` as soon as the response head is parsed. The response body is then fed from
`data_received`. When BOTH the request body has been fully written and the response has fully
arrived, the connection goes back to its pool — reusable only if the upstream kept it alive.

Parsing is the codec's (meshd/http/codec.py `ResponseCodec`, the same code that reads requests
on the listener's side): this class turns its events into the exchange's state. Interim 1xx
responses are skipped there (meshd answers `100 Continue` to clients itself), and the response
to a HEAD ends with its head.
A connection lost before any response byte on a *reused* connection is reported as `stale`, so
the caller may transparently send the request again on a fresh connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final, cast

from mypy_extensions import mypyc_attr

from meshd.clock import MONOTONIC, Clock, Timer
from meshd.errors import MeshdError, ResponseHeadTimeout, UpstreamFailed
from meshd.http.body import Body, Trailers
from meshd.http.codec import EndOfMessage, Event, ParseError, ResponseCodec
from meshd.http.framing import Framing, encode_chunk, encode_last_chunk, request_framing
from meshd.http.messages import Request, Response
from meshd.tls.reasons import describe

#: the default limit on a response's status line and headers (`client.maxResponseHeaderBytes`)
DEFAULT_MAX_HEAD_BYTES: Final = 64 * 1024
#: the default for `client.responseIdleTimeoutMs`, as Envoy's stream idle timeout
DEFAULT_RESPONSE_IDLE_TIMEOUT_S: Final = 300.0
#: the default for `client.responseHeadTimeoutMs`, as nginx's `proxy_read_timeout` (60 s)
DEFAULT_RESPONSE_HEAD_TIMEOUT_S: Final = 60.0
#: the default for `client.maxResponseHeaders`, as Envoy's `max_headers_count`
DEFAULT_MAX_HEADERS: Final = 100
#: uvloop timers have millisecond resolution and may fire a hair early (see listener.py)
_TIMER_SLACK_S: Final = 0.005
_EMPTY_BODY: Final = Body.empty()
_EMPTY_BODY_0: Final = Body.empty(0)


class StaleConnection(UpstreamFailed):
    """A reused keep-alive connection was closed by the upstream before any response byte."""


ReleaseCallback = Callable[["UpstreamConnection", bool], None]


@mypyc_attr(allow_interpreted_subclasses=True)
class HeadReceiver:
    """Told of an exchange's outcome instead of a future (`send_to`, used by meshd/fastpath.py).

    `head_received` is called once the read that brought the response head has been parsed to
    its end (so a small response's body has ended by then, as for the future's awaiter, which
    runs after that read too); `head_failed` when the exchange failed before its head, after the
    connection has been released. Exactly one of them is called, unless `abort()` came first.

    A base class rather than a `Protocol`: the compiled connection calls it through mypyc's vtable
    (a C call), not a Python method lookup, once per request."""

    __slots__ = ()

    def head_received(self, response: Response) -> None:
        raise NotImplementedError

    def head_failed(self, error: MeshdError) -> None:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class ConnectionOwner:
    """The pool a connection belongs to, told when the connection's exchange is over (`release`).

    When a connection is given one (`owner=`, as `Pool` does), it calls `release` through mypyc's
    vtable (a C call) on every request's end instead of the `on_release` callable (a Python
    call); a connection made without one (tests) calls `on_release`."""

    __slots__ = ()

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        raise NotImplementedError


class UpstreamConnection(asyncio.Protocol):
    def __init__(
        self,
        label: str,
        on_release: ReleaseCallback,
        on_lost_idle: Callable[[UpstreamConnection], None],
        *,
        owner: ConnectionOwner | None = None,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        response_idle_timeout_s: float | None = DEFAULT_RESPONSE_IDLE_TIMEOUT_S,
        response_head_timeout_s: float | None = DEFAULT_RESPONSE_HEAD_TIMEOUT_S,
        max_headers: int = DEFAULT_MAX_HEADERS,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.label = label
        # the timers' clock (meshd.clock); `now` read once (for the production clock it is
        # `time.monotonic` itself), the timers called only on the lazy timer paths
        self._timers: Clock = clock
        self._now: Callable[[], float] = clock.now
        self._idle_timeout_s = response_idle_timeout_s
        # The idle timer runs only while the exchange waits on the upstream in the middle of a
        # message: a response body still arriving after the read that brought its head (a small
        # response never arms it), or a request body the upstream stopped reading (meshd's writes
        # paused). `_last_rx` is the last progress in either direction; re-armed lazily.
        self._idle_timer: Timer | None = None
        self._last_rx = 0.0
        self._reading_paused = False
        self._writing_paused = False
        # The response-head timer: armed once per connection and re-armed only when it fires
        # (per request only `_sent_at` changes, when the request has been fully written).
        self._head_timeout_s = response_head_timeout_s
        self._head_timer: Timer | None = None
        self._sent_at = 0.0
        self._on_release = on_release
        #: when given: told of the release instead of `on_release` (a direct call)
        self._owner = owner
        self._on_lost_idle = on_lost_idle
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._codec = ResponseCodec(label, max_head_bytes=max_head_bytes, max_headers=max_headers, producer=self)
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self._busy = False
        self._future: asyncio.Future[Response] | None = None
        #: instead of `_future` (`send_to`): told of the head, or of the failure before it
        self._receiver: HeadReceiver | None = None
        #: a head for the receiver, delivered once the read that brought it is parsed
        self._ready: Response | None = None
        self._request: Request | None = None
        self._got_bytes = False
        self._request_done = True
        self._response_done = True
        self._response: Response | None = None
        self._keep_alive = True

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    @property
    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._idle_timer is not None:
            self._last_rx = self._now()
        failed = self._apply(self._codec.feed(data))
        if self._ready is not None:
            self._deliver()
        if failed:
            return
        if (
            self._idle_timer is None
            and self._idle_timeout_s is not None
            and self._response is not None
            and not self._response_done
        ):
            self._last_rx = now = self._now()
            self._idle_timer = self._timers.call_at(now + self._idle_timeout_s, self._on_response_idle)

    def _apply(self, events: list[Event]) -> bool:
        """Act on the codec's events; True when the exchange failed (nothing more to do)."""
        for event in events:
            if isinstance(event, Response):
                self._on_response(event)
            elif isinstance(event, bytes):
                response = self._response
                if response is not None:
                    response.body.feed(event)
            elif isinstance(event, EndOfMessage):
                self._message_complete(event.trailers)
            elif isinstance(event, ParseError):
                self._fail(event.error)
                return True
        return False

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)
        # then no cycle is left for the garbage collector (ResponseCodec.detach): the codec has
        # read its last (an until-close body ends here)
        self._codec.detach()

    def _lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if not self._busy:
            if not was_closed:
                self._on_lost_idle(self)
            return
        receiver = self._receiver
        if receiver is not None or (self._future is not None and not self._future.done()):
            tls_error = _tls_alert(exc, self._transport) if not self._got_bytes else None
            if tls_error is not None:
                # TLS 1.3 delivers the server's verdict on meshd's certificate after the
                # handshake, as an alert on the first read (no client certificate, unknown CA)
                error: MeshdError = UpstreamFailed(f"TLS with {self.label} failed: {describe(tls_error)}")
            elif not self._got_bytes and self.uses > 1:
                error = StaleConnection(f"{self.label} closed an idle keep-alive connection")
            elif not self._got_bytes and _is_tls(self._transport):
                error = UpstreamFailed(
                    f"{self.label} closed the connection before responding, right after the TLS handshake "
                    "(as a server does that refuses meshd's client certificate, or requires one and got none)"
                )
            else:
                error = UpstreamFailed(f"{self.label} closed the connection before responding")
            if receiver is not None:
                self._receiver = None
                self._finish(reusable=False)
                receiver.head_failed(error)
                return
            assert self._future is not None
            self._future.set_exception(error)
            self._finish(reusable=False)
            return
        response = self._response
        if response is not None and not self._response_done:
            if exc is None and self._codec.until_close:
                self._apply(self._codec.eof())
                if self._ready is not None:
                    self._deliver()
                return
            response.body.fail(UpstreamFailed(f"{self.label} reset the connection mid-response"))
            self._response_done = True
        self._finish(reusable=False)

    def pause_writing(self) -> None:
        # The upstream is not reading what meshd writes. While a request body is still being
        # sent, that is the upstream holding it: the idle timer bounds how long.
        self._writing_paused = True
        request = self._request
        if request is not None:
            request.body.pause_producing()
            if not self._request_done and self._idle_timeout_s is not None:
                self._last_rx = now = self._now()
                if self._idle_timer is None:
                    self._idle_timer = self._timers.call_at(now + self._idle_timeout_s, self._on_response_idle)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._request is not None:
            self._last_rx = self._now()  # the upstream read: progress
            self._request.body.resume_producing()

    # -- FlowControl for the response body ---------------------------------------------------
    def pause_reading(self) -> None:
        # The client reads slower than the upstream sends: the silence that follows is ours, and
        # does not count against the upstream's response idle timeout.
        self._reading_paused = True
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        self._last_rx = self._now()
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def _on_response_idle(self) -> None:
        self._idle_timer = None
        timeout = self._idle_timeout_s
        if timeout is None or not self._busy or self.closed:
            return
        receiving = self._response is not None and not self._response_done
        held = self._writing_paused and not self._request_done
        if not (receiving or held):
            return
        now = self._now()
        if self._reading_paused:
            self._last_rx = now  # the client is not reading: the silence is not the upstream's
        deadline = self._last_rx + timeout
        if now + _TIMER_SLACK_S < deadline:
            self._idle_timer = self._timers.call_at(deadline, self._on_response_idle)
            return
        if receiving:
            message = f"{self.label} sent nothing of the response body for {timeout * 1000:.0f} ms"
        else:
            message = f"{self.label} read nothing of the request body for {timeout * 1000:.0f} ms"
        self._fail(UpstreamFailed(message + " (responseIdleTimeoutMs)"))

    def _arm_head_timer(self) -> None:
        """The request is fully written: the response head is due within the head timeout."""
        self._sent_at = now = self._now()
        if self._head_timer is None and self._head_timeout_s is not None:
            self._head_timer = self._timers.call_at(now + self._head_timeout_s, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        timeout = self._head_timeout_s
        if timeout is None or not self._busy or self.closed or not self._request_done or self._response is not None:
            return  # not waiting for a head now: the next fully written request arms it again
        deadline = self._sent_at + timeout
        if self._now() + _TIMER_SLACK_S < deadline:
            self._head_timer = self._timers.call_at(deadline, self._on_head_timeout)
            return
        self._fail(ResponseHeadTimeout(
            f"{self.label} sent no response head within {timeout * 1000:.0f} ms of the request "
            "(responseHeadTimeoutMs)"
        ))

    # -- sending ------------------------------------------------------------------------------
    def send(self, request: Request, head: bytes) -> asyncio.Future[Response]:
        """Write `request` (head already serialised); the future resolves with the response head."""
        future: asyncio.Future[Response] = self._loop.create_future()
        self._future = future
        self._write(request, head)
        return future

    def send_to(self, request: Request, head: bytes, receiver: HeadReceiver) -> None:
        """As `send`, with no future: `receiver` is told of the head or of the failure (the fast
        path, meshd/fastpath.py)."""
        self._receiver = receiver
        self._write(request, head)

    def _write(self, request: Request, head: bytes) -> None:
        transport = self._transport
        assert transport is not None and not self._busy
        self._busy = True
        self.uses += 1
        self._request = request
        self._got_bytes = False
        self._response = None
        self._response_done = False
        self._keep_alive = True
        self._codec.expect(request.method)
        body = request.body
        if body is _EMPTY_BODY or body is _EMPTY_BODY_0:  # a GET: nothing to frame or attach
            self._request_done = True
            transport.write(head)
            self._arm_head_timer()
            return
        framing = request_framing(body)
        if body.is_empty or framing is Framing.NONE:
            self._request_done = True
            transport.write(head)
            self._arm_head_timer()
            return
        self._request_done = False
        chunked = framing is Framing.CHUNKED
        buffered = body.take_buffered()
        if buffered:
            head += encode_chunk(buffered) if chunked else buffered
        transport.write(head)
        body.attach(_RequestWriter(self, chunked))

    def _request_body_done(self) -> None:
        self._request_done = True
        if self._response_done and self._busy:
            self._finish(reusable=self._keep_alive)
        elif self._response is None and self._busy:
            self._arm_head_timer()  # a long upload is not cut: the head timeout starts now

    def _request_body_failed(self, exc: BaseException) -> None:
        # The client's body broke (client gone, malformed chunk): this upstream exchange cannot
        # complete, and the connection holds a partial request.
        self._request_done = True
        error = exc if isinstance(exc, MeshdError) else UpstreamFailed(f"request body failed: {exc}")
        self._fail(error)

    def abort(self) -> None:
        """Give up on the exchange in flight (caller cancelled); the connection is not reused."""
        self._receiver = None
        self._ready = None
        if self._transport is not None:
            self._transport.abort()
        self.closed = True

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # -- codec events -----------------------------------------------------------------------
    def _on_response(self, response: Response) -> None:
        """The response head arrived: the caller's future resolves now; the body follows."""
        self._keep_alive = self._codec.keep_alive
        body = response.body
        if not body.ended:
            body.set_canceller(self.abort)
        self._response = response
        if self._receiver is not None:
            self._ready = response  # told once this read is parsed (`_deliver`)
            return
        future = self._future
        if future is not None and not future.done():
            future.set_result(response)

    def _deliver(self) -> None:
        response = self._ready
        receiver = self._receiver
        self._ready = None
        self._receiver = None
        if receiver is not None and response is not None:
            receiver.head_received(response)

    def _message_complete(self, trailers: Trailers | None) -> None:
        response = self._response
        if response is None or self._response_done:
            return
        self._response_done = True
        if not response.body.ended:
            response.body.end(trailers)
        if self._request_done:
            self._finish(reusable=self._keep_alive)
        elif not self._keep_alive:
            # The upstream answered before reading the whole request and will close: stop sending.
            request = self._request
            if request is not None:
                request.body.detach()
            self._finish(reusable=False)

    # -- internals ----------------------------------------------------------------------------
    def _fail(self, error: MeshdError) -> None:
        receiver = self._receiver if self._ready is None else None
        if receiver is not None:
            self._receiver = None  # told below, once the connection is released
        future = self._future
        if receiver is not None:
            pass
        elif future is not None and not future.done():
            future.set_exception(error)
        elif self._response is not None and not self._response_done:
            self._response.body.fail(error)
        self._response_done = True
        if self._transport is not None:
            self._transport.abort()
        self.closed = True
        if self._busy:
            self._finish(reusable=False)
        if receiver is not None:
            receiver.head_failed(error)

    def _finish(self, *, reusable: bool) -> None:
        if not self._busy:
            return
        self._busy = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._reading_paused = False
        request = self._request
        self._request = None
        self._future = None
        self._response = None
        if request is not None and not self._request_done:
            request.body.detach()
            reusable = False
        owner = self._owner
        if owner is not None:
            owner.release(self, reusable and not self.closed)
        else:
            self._on_release(self, reusable and not self.closed)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._busy else "idle")
        return f"<UpstreamConnection {self.label} {state} uses={self.uses}>"


class _RequestWriter:
    __slots__ = ("_conn", "_transport", "_chunked")

    def __init__(self, conn: UpstreamConnection, chunked: bool) -> None:
        self._conn = conn
        transport = conn._transport
        assert transport is not None
        self._transport = transport
        self._chunked = chunked

    def on_data(self, data: bytes) -> None:
        if data and not self._conn.closed:
            self._transport.write(encode_chunk(data) if self._chunked else data)

    def on_end(self, trailers: Trailers | None) -> None:
        if self._chunked and not self._conn.closed:
            self._transport.write(encode_last_chunk(trailers))
        self._conn._request_body_done()

    def on_error(self, exc: BaseException) -> None:
        self._conn._request_body_failed(exc)


def _tls_alert(exc: Exception | None, transport: asyncio.Transport | None) -> ssl.SSLError | None:
    """The TLS error that ended a connection, if one did (an error path only): the loop passes
    it to `connection_lost`, or the connection's SSLObject kept it (meshd/tls/contexts.py)."""
    if isinstance(exc, ssl.SSLError):
        return exc
    if transport is None:
        return None
    kept = getattr(transport.get_extra_info("ssl_object"), "meshd_error", None)
    return kept if isinstance(kept, ssl.SSLError) else None


def _is_tls(transport: asyncio.Transport | None) -> bool:
    return transport is not None and transport.get_extra_info("ssl_object") is not None
