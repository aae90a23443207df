"""The HTTP/2 server side: one protocol object per downstream connection, each stream a request.

How this works: `H2ServerProtocol` owns the connection's codec (meshd/http2/factory.py) and its
streams. Each stream's header block becomes the same wire `Request` the HTTP/1 codec builds
(meshd/http2/convert.py), with a streaming `Body` fed by DATA frames; the stream's task makes a
`RouteContext` and awaits the router's service exactly as the HTTP/1 listener does, with the
listener's stats (`observe`), admission and error responder (`error_response`): it is the same
`Listener` object, only the per-connection protocol differs. Many streams run at once, one task
each.

Flow control, end to end:
- request bodies: received DATA is acknowledged (`codec.consumed`, which reopens the client's
  window) as soon as the body has passed it on. When the body's consumer (an upstream
  connection) pauses it, acknowledgements stop, so the client's window closes and it stops
  sending: meshd holds at most one window (`initialWindowSize`) plus the body's 64 KiB buffer
  per stream.
- response bodies: the response body's producer (the upstream) is paused while more than
  `SEND_MARK` bytes wait in the codec for the client's window, and while this connection's
  transport has a full write buffer; it resumes on WINDOW_UPDATE / `resume_writing`.

Defences (docs/http2.md): the codec's own limits (SETTINGS it advertises, HPACK bounds), the
frame guard (meshd/http2/guard.py: rapid reset, SETTINGS and PING floods, CONTINUATION flood),
an outbound bound (a peer that does not read what meshd writes, ACKs included, is closed once
`MAX_OUTBOUND` bytes wait), and the zero-window hold: a stream whose response cannot be sent for
`zeroWindowTimeoutMs` because the client keeps its window shut is reset, and a connection that
opened no window at all meanwhile is closed. Each is counted by reason in the router's `H2Stats`.

Drain (reload, shutdown): GOAWAY with the last stream accepted; streams already accepted finish,
then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from time import monotonic
from typing import Final, Protocol, cast

from meshd.admission import Admission
from meshd.clock import Timer
from meshd.config.model import H2Config, RouterConfig
from meshd.errors import BodyTimeout, MeshdError, RequestTimeout
from meshd.grpc import errors as grpc_errors
from meshd.grpc import status as grpc_status
from meshd.grpc.stats import GrpcStats
from meshd.http.body import Body, Trailers
from meshd.http.messages import Request, Response
from meshd.http2 import codec as h2
from meshd.http2.codec import H2Codec, H2Settings
from meshd.http2.convert import (
    MalformedRequest,
    h2_response_headers,
    h2_trailers,
    request_from_h2,
)
from meshd.http2.factory import new_codec
from meshd.http2.guard import FrameGuard, H2Stats, reason_label
from meshd.listener import (
    CLIENT_CLOSED_REQUEST,
    UNIDENTIFIED,
    ConnectionClosed,
    Listener,
    ServerProtocol,
    error_response,
)
from meshd.pipeline.context import RouteContext
from meshd.pipeline.tracing import end_request, trace_id_header

log = logging.getLogger("meshd.h2server")

#: a response body's producer is paused while more than this waits in the codec for the window
SEND_MARK: Final = 64 * 1024
#: a connection whose transport holds more than this unwritten (the peer does not read) is closed
MAX_OUTBOUND: Final = 4 * 1024 * 1024
#: the name of each stream's task
STREAM_TASK: Final = "meshd h2 stream"


@dataclass(frozen=True, slots=True)
class H2ServerConfig:
    """What a router's `h2` section sets on its HTTP/2 server connections."""

    settings: H2Settings = field(default_factory=H2Settings)
    #: connections that do not begin with the HTTP/2 preface are served as HTTP/1.1
    accept_http1: bool = False
    #: a stream that could not send for this long because the client keeps its window shut is reset
    zero_window_timeout_s: float = 30.0


class H2Handoff(Protocol):
    """A stream the HTTP/2 fast path (meshd/h2fast.py) took: in flight on an upstream stream, or
    handed over to a task of its own (`H2ServerProtocol.hand_over`), which then awaits `resume()`
    (the slow path from where the fast one stopped). `abandon()` gives it up (the client reset the
    stream or left) before it was handed over."""

    ctx: RouteContext
    #: the admission it entered (left by the task after a hand-over, by the fast path otherwise)
    admission: Admission

    def resume(self) -> Awaitable[Response]: ...

    def abandon(self) -> None: ...


class H2Planner(Protocol):
    """The HTTP/2 fast path seen from the connection: offered each stream whose request arrived
    whole in one read; True when it took the stream (it then answers it with
    `H2ServerProtocol.fast_done`, or hands it over with `H2ServerProtocol.hand_over`)."""

    def plan(self, conn: H2ServerProtocol, stream: H2Stream) -> bool: ...


class _Stream:
    __slots__ = (
        "sid",
        "fast",
        "request",
        "body",
        "task",
        "response",
        "reading_paused",
        "unacked",
        "writing",
        "producer_paused",
        "blocked_since",
        "ctx",
        "served_since",
        "sent",
        "body_read_at",
        "upload_cut",
        "submitted",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.request: Request | None = None
        #: the fast path's exchange while it owns the stream (meshd/h2fast.py)
        self.fast: H2Handoff | None = None
        #: the request body while it is still arriving
        self.body: Body | None = None
        self.task: asyncio.Task[None] | None = None
        self.response: Response | None = None
        #: the request body's consumer paused it: DATA is not acknowledged until it resumes
        self.reading_paused = False
        self.unacked = 0
        #: the response head was sent; its body is being written
        self.writing = False
        self.producer_paused = False
        #: when the response body last found the client's window shut (-1: it is not)
        self.blocked_since = -1.0
        self.ctx: RouteContext | None = None
        self.served_since = -1.0
        #: the whole response was handed to the codec (some of it may wait for the window)
        self.sent = False
        #: when the request body last received DATA (or reading resumed): `bodyIdleTimeoutMs`
        self.body_read_at = 0.0
        #: meshd gave up on the request body (timeout): the upload is stopped after the response
        self.upload_cut = False
        #: bytes of response body handed to the codec: until they pass `SEND_MARK`, no more than
        #: that can wait for the window, so back-pressure need not ask the codec
        self.submitted = 0


#: a stream as the fast path sees it (`H2Planner.plan`)
H2Stream = _Stream


class _StreamReader:
    """The request body's producer: pausing it withholds the client's window (FlowControl)."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: H2ServerProtocol, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    def pause_reading(self) -> None:
        self._stream.reading_paused = True

    def resume_reading(self) -> None:
        stream = self._stream
        if not stream.reading_paused:
            return
        stream.reading_paused = False
        stream.body_read_at = self._conn._clock.now()  # time paused by meshd does not count
        unacked, stream.unacked = stream.unacked, 0
        if unacked:
            self._conn._ack(stream.sid, unacked)


class _ResponseWriter:
    """Writes one stream's response body as DATA frames and trailers."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: H2ServerProtocol, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    def on_data(self, data: bytes) -> None:
        conn = self._conn
        if data and not conn._closing:
            stream = self._stream
            conn._codec.send_data(stream.sid, data, False)
            conn._flush_soon()
            stream.submitted += len(data)
            if stream.submitted > SEND_MARK:  # never more waiting than was handed over
                conn._check_send_window(stream)

    def on_end(self, trailers: Trailers | None) -> None:
        conn = self._conn
        if conn._closing:
            return
        sid = self._stream.sid
        if trailers:
            conn._codec.send_trailers(sid, h2_trailers(trailers))
        else:
            conn._codec.end_stream(sid)
        conn._flush_soon()
        conn._response_done(self._stream)

    def on_error(self, exc: BaseException) -> None:
        conn = self._conn
        code = getattr(exc, "h2_error_code", None)
        conn._reset(self._stream, code if isinstance(code, int) else h2.INTERNAL_ERROR)


class H2ServerProtocol(asyncio.Protocol):
    """One downstream HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN `h2`)."""

    def __init__(
        self, listener: Listener, config: H2ServerConfig, stats: H2Stats, grpc: GrpcStats | None = None,
        fast: H2Planner | None = None,
    ) -> None:
        self._listener = listener
        self._config = config
        self._stats = stats
        #: the router's gRPC counters (calls by grpc-status), None when not counted
        self._grpc = grpc
        #: the HTTP/2 fast path (meshd/h2fast.py), None when off
        self._fast = fast
        #: streams whose head came in the read being handled: started once it has been handled
        #: whole (`_start_streams`), so that the fast path sees a unary request's body complete
        self._starting: list[_Stream] = []
        self._clock = listener.clock
        self._codec: H2Codec = new_codec(False, config.settings)
        self._guard = FrameGuard(
            server_side=True, max_block_bytes=config.settings.max_header_list_size, now=self._clock.now()
        )
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._client_ip = ""
        self._peer_identity = ""
        self._closing = False
        self._draining = False
        self._write_paused = False
        self._zero_window_timer: Timer | None = None
        self._body_timer: Timer | None = None
        #: when the last read arrived (request bodies' idle time is measured from it)
        self._read_at = 0.0
        self._idle_timer: Timer | None = None
        self._idle_since = 0.0
        #: when the client last opened a window (a zero-window hold is judged against it)
        self._window_updated_at = -1.0
        self._replay_limit = listener.limits.replay_limit
        #: frames taken from the codec before the end of the loop iteration (`_pull`), written first
        self._pending_out: list[bytes] = []
        #: a `_flush` is due at the end of this loop iteration (`_flush_soon`)
        self._flush_due = False
        #: streams whose response was handed to the codec whole: done once it has gone out (`_flush`)
        self._finishing: list[_Stream] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        identify_peer = self._listener.peer_identity
        if identify_peer is not None:
            self._peer_identity = identify_peer(transport)
        self._listener.connections.add(self)
        self._listener.accepted += 1
        self._codec.start()
        self._flush()
        if self._listener.draining:
            self.drain()
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._read_at = now = self._clock.now()
        reason = self._guard.feed(data, now)
        if reason is not None:
            self._connection_error(h2.ENHANCE_YOUR_CALM, reason)
            return
        for event in self._codec.receive(data):
            if isinstance(event, h2.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.HeadersReceived):
                self._on_headers(event)
            elif isinstance(event, h2.TrailersReceived):
                self._on_trailers(event)
            elif isinstance(event, h2.WindowUpdated):
                self._window_updated_at = self._clock.now()
                self._on_window(event.stream_id)
            elif isinstance(event, h2.StreamReset):
                self._on_reset(event)
            elif isinstance(event, h2.GoAwayReceived):
                self._draining = True
            elif isinstance(event, h2.ConnectionError):
                self._stats.count(reason_label(event.error_code, event.reason))
                self._starting.clear()  # abandoned (and counted) when the connection is lost
                self._flush()
                self._close()
                return
        if self._starting:
            self._start_streams()
        self._flush()
        if self._draining and not self._streams:
            self._close()

    def eof_received(self) -> bool | None:
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._listener._forget(self)
        self._cancel_timers()
        lost = ConnectionClosed("client disconnected")
        for stream in list(self._streams.values()):
            self._abandon(stream, lost)
        self._streams.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in self._streams.values():
            self._pause_producer(stream)

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self._streams.values()):
            self._maybe_resume_producer(stream)

    # -- drain (Listener.begin_drain) -------------------------------------------------------------
    def drain(self) -> None:
        if self._draining or self._closing:
            return
        self._draining = True
        self._pull()  # the frames already made go out first
        self._codec.goaway(h2.NO_ERROR)
        self._flush()
        if not self._streams:
            self._close()

    def abort(self) -> None:
        self._closing = True
        self._cancel_timers()
        if self._transport is not None:
            self._transport.abort()

    @property
    def is_idle(self) -> bool:
        return not self._streams

    # -- streams in ---------------------------------------------------------------------------------
    def _on_headers(self, event: h2.HeadersReceived) -> None:
        sid = event.stream_id
        if sid in self._streams:
            return  # interim or repeated head on an open stream: the codec would have refused a bad one
        if self._draining:
            self._codec.reset_stream(sid, h2.REFUSED_STREAM)
            return
        stream = _Stream(sid)
        try:
            request = request_from_h2(
                event.headers,
                event.end_stream,
                client_ip=self._client_ip,
                replay_limit=self._replay_limit,
                producer=_StreamReader(self, stream),
            )
        except MalformedRequest:
            self._stats.count_reset("malformed")
            self._codec.reset_stream(sid, h2.PROTOCOL_ERROR)
            self._listener.observe(UNIDENTIFIED, 400, 0.0)
            return
        stream.request = request
        if not request.body.ended:
            stream.body = request.body
            stream.body_read_at = self._read_at
            self._arm_body_timer()
        self._streams[sid] = stream
        self._idle_since = -1.0
        if self._fast is None:
            stream.task = asyncio.get_running_loop().create_task(self._serve(stream), name=STREAM_TASK)
        else:
            self._starting.append(stream)

    def _start_streams(self) -> None:
        """Start the streams whose head came in this read: a request complete by now (a unary
        call's HEADERS and DATA usually come in one read) is offered to the fast path, any other
        gets its task, as without the fast path."""
        starting = self._starting
        self._starting = []
        fast = self._fast
        loop = asyncio.get_running_loop()
        for stream in starting:
            if self._closing or self._streams.get(stream.sid) is not stream:
                continue  # reset meanwhile: `_abandon` counted it
            request = stream.request
            if fast is not None and request is not None and request.body.ended and fast.plan(self, stream):
                continue
            stream.task = loop.create_task(self._serve(stream), name=STREAM_TASK)

    def _on_data(self, event: h2.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        body = stream.body if stream is not None else None
        if stream is None or body is None:
            self._ack(event.stream_id, event.flow_length)  # a stream meshd gave up: keep the window open
            return
        stream.body_read_at = self._read_at
        if event.data:
            body.feed(event.data)
        if stream.reading_paused:
            stream.unacked += event.flow_length
        else:
            self._codec.consumed(event.stream_id, event.flow_length)
        if event.end_stream:
            stream.body = None
            body.end(None)

    def _on_trailers(self, event: h2.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.body is None:
            return
        body, stream.body = stream.body, None
        body.end(h2_trailers(event.headers))

    def _on_reset(self, event: h2.StreamReset) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        self._abandon(stream, ConnectionClosed(f"client reset the stream (error code {event.error_code})"))
        self._maybe_close_drained()

    def _on_window(self, sid: int) -> None:
        if sid == 0:
            for stream in list(self._streams.values()):
                self._maybe_resume_producer(stream)
            return
        one = self._streams.get(sid)
        if one is not None:
            self._maybe_resume_producer(one)

    def _ack(self, sid: int, length: int) -> None:
        if length and not self._closing:
            self._codec.consumed(sid, length)
            self._flush_soon()

    # -- serving one stream -------------------------------------------------------------------------
    async def _serve(self, stream: _Stream, handoff: H2Handoff | None = None) -> None:
        """Run one stream's request through the router's service, as `ServerProtocol._serve` does
        (or, `handoff`, the rest of a request the fast path began)."""
        listener = self._listener
        request = stream.request
        assert request is not None
        if handoff is None:
            ctx = stream.ctx = RouteContext(request, self._peer_identity)
            stream.served_since = started = monotonic()
            admission = listener.admission
            admitted = admission.enter()
        else:
            stream.fast = None  # the task owns it now (`hand_over`)
            ctx = handoff.ctx
            started = stream.served_since
            admission = handoff.admission
            admitted = True
        try:
            if not admitted:
                await admission.wait()
                admitted = True
            if handoff is None:
                response = await listener.service(ctx)
            else:
                response = await handoff.resume()
            observed = response.status
        except MeshdError as exc:
            response = meshd_error_response(request, exc, ctx.trace_id)
            observed = exc.status
        except TimeoutError:
            response = meshd_error_response(request, RequestTimeout("request timed out"), ctx.trace_id)
            observed = 504
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in the request pipeline")
            internal = MeshdError("internal error in meshd")
            response = meshd_error_response(request, internal, ctx.trace_id)
            observed = internal.status
        finally:
            if admitted:
                admission.leave()
        self._answer(stream, ctx, request, response, observed, started)

    def hand_over(self, stream: H2Stream, handoff: H2Handoff) -> None:
        """The fast path stops here: the stream's task carries the request on (`handoff.resume`).

        The stream keeps `handoff` as its `fast` until the task starts (`_serve`): a stream reset
        meanwhile is abandoned through it (`_abandon`), as one the fast path still held, since a
        task cancelled before its first step runs none of its code (it would not leave admission,
        nor end an attempt the fast path began)."""
        stream.fast = handoff
        stream.task = asyncio.get_running_loop().create_task(self._serve(stream, handoff), name=STREAM_TASK)

    def fast_done(self, stream: H2Stream, ctx: RouteContext, response: Response) -> None:
        """The fast path's request ended with `response` (after `admission.leave()`)."""
        stream.fast = None
        request = stream.request
        assert request is not None
        self._answer(stream, ctx, request, response, response.status, stream.served_since)

    @property
    def listener(self) -> Listener:
        return self._listener

    @property
    def peer_identity(self) -> str:
        return self._peer_identity

    def _answer(
        self, stream: _Stream, ctx: RouteContext, request: Request, response: Response, observed: int, started: float
    ) -> None:
        """Record a stream's response (stats, the recent ring, its span, gRPC counts) and write it."""
        # a gRPC error meshd answered is counted under the HTTP status it stands for (its grpc
        # status is counted by `grpc_responses`), so the status-class stats still see the failure
        listener = self._listener
        seconds = monotonic() - started
        name = ctx.logical_name or UNIDENTIFIED
        listener.observe(name, observed, seconds)
        recent = listener.recent
        if recent is not None:
            recent.record(ctx, name, observed, started, seconds)
        if ctx.span is not None:  # tracing (meshd/pipeline/tracing.py): a sampled request's span ends
            end_request(ctx, ctx.span, response)
        grpc = self._grpc
        if grpc is not None and (ctx.grpc or grpc_status.is_grpc_request(request.headers)):
            _count_grpc(grpc, name, response)
        stream.ctx = None
        if self._closing or self._streams.get(stream.sid) is not stream:
            response.body.cancel(ConnectionClosed("client reset the stream"))
            return
        self._write_response(stream, response)

    def _write_response(self, stream: _Stream, response: Response) -> None:
        body = response.body
        stream.response = response
        request = stream.request
        no_body = (request is not None and request.method == "HEAD") or response.status in (204, 304)
        # content-length only as the upstream gave it (an empty END_STREAM, e.g. a gRPC
        # trailers-only response, carries none)
        length = response.content_length if no_body else (body.length or response.content_length)
        headers = h2_response_headers(response, length)
        try:
            self._send_head(stream, response, headers, no_body)
        except Exception as exc:  # the codec refused the head (a field HTTP/2 does not allow)
            log.debug("response head refused by the HTTP/2 codec: %s", exc)
            self._reset(stream, h2.INTERNAL_ERROR)
            body.cancel(ConnectionClosed("response head could not be sent"))

    def _send_head(self, stream: _Stream, response: Response, headers: list[tuple[bytes, bytes]],
                   no_body: bool) -> None:
        body = response.body
        if no_body or (body.ended and body.error is None and body.received == 0 and body.length in (None, 0)
                       and not body.chunked):
            self._codec.send_headers(stream.sid, headers, True)
            self._flush_soon()
            if not body.ended:
                body.cancel(ConnectionClosed("response must not carry a body"))
            self._response_done(stream)
            return
        self._codec.send_headers(stream.sid, headers, False)
        stream.writing = True
        body.attach(_ResponseWriter(self, stream))
        if self._write_paused and not body.ended:
            self._pause_producer(stream)

    def _response_done(self, stream: _Stream) -> None:
        """The whole response is in the codec: the stream is done once the codec has let it all
        out, which `_flush` checks after taking the codec's output (one take per connection per
        loop iteration, not one per response)."""
        stream.writing = False
        stream.sent = True
        self._finishing.append(stream)
        self._flush_soon()

    def _finish_streams(self) -> None:
        finishing = self._finishing
        self._finishing = []
        for stream in finishing:
            if self._streams.get(stream.sid) is not stream:
                continue  # reset or finished meanwhile
            if self._codec.buffered(stream.sid):
                # the end is queued behind data the client's window does not allow yet: the stream
                # stays (a drain waits for it, the zero-window hold bounds it) until it has gone out
                if stream.blocked_since < 0.0:
                    stream.blocked_since = self._clock.now()
                    self._arm_zero_window()
                continue
            self._stream_done(stream)

    def _stream_done(self, stream: _Stream) -> None:
        stream.blocked_since = -1.0
        if stream.body is not None or stream.upload_cut:
            # The response is complete before the request body: RFC 9113 §8.1 lets the server
            # stop the upload with RST_STREAM(NO_ERROR).
            body, stream.body = stream.body, None
            if body is not None:
                body.fail(ConnectionClosed("response complete before the request body"))
            self._pull()  # the frames already made go out first
            self._codec.reset_stream(stream.sid, h2.NO_ERROR)
            self._flush()
        if self._streams.get(stream.sid) is stream:
            del self._streams[stream.sid]
        # The stream's objects point at each other (request body -> _StreamReader -> stream ->
        # request, response body -> _ResponseWriter -> stream -> response): unlinked here, they
        # are freed now by their reference counts instead of piling up for the cyclic garbage
        # collector, whose passes over thousands of streams stalled every request in flight.
        stream.request = None
        stream.response = None
        stream.task = None
        self._maybe_close_drained()
        if not self._streams:
            self._arm_idle()

    def _abandon(self, stream: _Stream, exc: BaseException) -> None:
        """The stream is gone (reset by either side, connection lost): stop all of its work."""
        if stream.body is not None:
            body, stream.body = stream.body, None
            body.fail(exc)
        response = stream.response
        if response is not None and not response.body.ended:
            response.body.cancel(exc)
        task = stream.task
        fast = stream.fast
        if fast is not None:
            stream.fast = None
            fast.abandon()  # as a cancelled task would: the upstream stream reset, the attempt cancelled
        if response is None and (
            fast is not None
            or (task is not None and not task.done())
            or (task is None and stream.served_since < 0.0)  # never started (its read was not handled)
        ):
            if task is not None:
                task.cancel()
            ctx = stream.ctx
            name = ctx.logical_name if ctx is not None else ""
            since = stream.served_since
            self._listener.observe(name or UNIDENTIFIED, CLIENT_CLOSED_REQUEST,
                                   monotonic() - since if since >= 0.0 else 0.0)
            if ctx is not None and ctx.span is not None:
                ctx.span.logical_name = name
                ctx.span.end(CLIENT_CLOSED_REQUEST, "cancelled", "the client reset the stream")

    def _reset(self, stream: _Stream, code: int) -> None:
        """meshd resets a stream (its upstream failed mid-response, or the zero-window hold)."""
        if self._streams.get(stream.sid) is stream:
            del self._streams[stream.sid]
        if not self._closing:
            self._pull()  # the frames already made go out first
            self._codec.reset_stream(stream.sid, code)
            self._flush()
        self._abandon(stream, ConnectionClosed("stream reset by meshd"))
        self._maybe_close_drained()

    # -- response back-pressure ---------------------------------------------------------------------
    def _check_send_window(self, stream: _Stream) -> None:
        if self._codec.buffered(stream.sid) > SEND_MARK:
            self._pull()  # what the window lets out now is not waiting
            if self._codec.buffered(stream.sid) <= SEND_MARK:
                return
            if stream.blocked_since < 0.0:
                stream.blocked_since = self._clock.now()
                self._arm_zero_window()
            self._pause_producer(stream)

    def _pause_producer(self, stream: _Stream) -> None:
        response = stream.response
        if stream.writing and response is not None and not stream.producer_paused:
            stream.producer_paused = True
            response.body.pause_producing()

    def _maybe_resume_producer(self, stream: _Stream) -> None:
        if stream.sent:
            if not self._codec.buffered(stream.sid):
                self._stream_done(stream)
            else:
                self._finishing.append(stream)  # looked at again once the codec's output is taken
                self._flush_soon()
            return
        if self._codec.buffered(stream.sid) > SEND_MARK:
            self._pull()
        if self._codec.buffered(stream.sid) <= SEND_MARK:
            stream.blocked_since = -1.0
            if stream.producer_paused and not self._write_paused:
                stream.producer_paused = False
                response = stream.response
                if response is not None:
                    response.body.resume_producing()

    def _arm_body_timer(self, delay: float | None = None) -> None:
        if self._body_timer is None and not self._closing:
            if delay is None:
                delay = self._listener.limits.body_idle_timeout_s
            self._body_timer = self._clock.call_later(delay, self._on_body_timeout)

    def _on_body_timeout(self) -> None:
        """Request bodies that received nothing for `bodyIdleTimeoutMs` (slow-body defence): the
        body fails with 408, which answers the request unless its response has begun."""
        self._body_timer = None
        if self._closing:
            return
        timeout = self._listener.limits.body_idle_timeout_s
        now = self._clock.now()
        next_check: float | None = None
        for stream in list(self._streams.values()):
            body = stream.body
            if body is None:
                continue
            if stream.reading_paused:
                next_check = timeout  # meshd's choice: measured again from when reading resumes
                continue
            left = stream.body_read_at + timeout - now
            if left > 0.005:
                next_check = left if next_check is None else min(next_check, left)
                continue
            stream.body = None
            stream.upload_cut = True
            body.fail(BodyTimeout(f"request body: nothing received for {timeout * 1000:g} ms (bodyIdleTimeoutMs)"))
        if next_check is not None:
            self._arm_body_timer(next_check)

    def _arm_zero_window(self) -> None:
        if self._zero_window_timer is None and not self._closing:
            self._zero_window_timer = self._clock.call_later(
                self._config.zero_window_timeout_s, self._on_zero_window
            )

    def _on_zero_window(self) -> None:
        self._zero_window_timer = None
        if self._closing:
            return
        now = self._clock.now()
        timeout = self._config.zero_window_timeout_s
        held = [s for s in self._streams.values() if s.blocked_since >= 0.0 and now - s.blocked_since >= timeout - 0.005]
        if held:
            if self._window_updated_at < min(s.blocked_since for s in held):
                # not one WINDOW_UPDATE since: the client reads nothing at all on this connection
                self._connection_error(h2.ENHANCE_YOUR_CALM, "zero_window")
                return
            for stream in held:
                self._stats.count_reset("zero_window")
                self._reset(stream, h2.CANCEL)
        if any(s.blocked_since >= 0.0 for s in self._streams.values()):
            self._arm_zero_window()

    # -- connection ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Write what the codec holds now (after what `_pull` took earlier), then finish the
        streams whose response has now gone out whole."""
        data = self._codec.data_to_send()
        pending = self._pending_out
        if pending:
            if data:
                pending.append(data)
            data = b"".join(pending)
            pending.clear()
        transport = self._transport
        if data and transport is not None and not self._closing:
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_OUTBOUND:
                # the peer does not read what meshd writes (its own PINGs' and SETTINGS' ACKs
                # included): nothing bounds what would pile up
                self._stats.count("outbound_flood")
                self.abort()
        if self._finishing and not self._closing:
            self._finish_streams()

    def _flush_soon(self) -> None:
        """Write what the codec holds at the end of this event-loop iteration, together with what
        the connection's other streams add meanwhile: one take from the codec and one write (one
        system call) for all the streams answered in an iteration, instead of a few per stream.
        Connection-level frames (GOAWAY, ACKs after a read) go out at once through `_flush`."""
        if not self._flush_due and not self._closing and self._loop is not None:
            self._flush_due = True
            self._loop.call_soon(self._flush_at_end)

    def _flush_at_end(self) -> None:
        self._flush_due = False
        self._flush()

    def _pull(self) -> None:
        """Take what the codec holds now, to write with the next `_flush` (where `buffered()` must
        say what the client's window holds back, not what was not taken yet)."""
        data = self._codec.data_to_send()
        if data and not self._closing:
            self._pending_out.append(data)
            self._flush_soon()

    def _connection_error(self, code: int, reason: str | None) -> None:
        if reason is not None:
            self._stats.count(reason)
        self._pull()  # the frames already made go out first
        self._codec.goaway(code)
        self._flush()
        self._close()

    def _maybe_close_drained(self) -> None:
        if self._draining and not self._streams:
            self._close()

    def _arm_idle(self) -> None:
        self._idle_since = self._clock.now()
        if self._idle_timer is None and not self._closing:
            self._idle_timer = self._clock.call_later(self._listener.limits.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._closing or self._streams or self._idle_since < 0.0:
            return
        deadline = self._idle_since + self._listener.limits.idle_timeout_s
        now = self._clock.now()
        if now + 0.005 < deadline:
            self._idle_timer = self._clock.call_later(deadline - now, self._on_idle)
            return
        self._pull()  # the frames already made go out first
        self._codec.goaway(h2.NO_ERROR)
        self._flush()
        self._close()

    def _cancel_timers(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._zero_window_timer is not None:
            self._zero_window_timer.cancel()
            self._zero_window_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close(self) -> None:
        if not self._closing:
            self._flush()  # what the codec still holds (the last frames, GOAWAY) goes out first
            self._closing = True
            self._cancel_timers()
            if self._transport is not None:
                self._transport.close()


def _count_grpc(grpc: GrpcStats, name: str, response: Response) -> None:
    """Count a gRPC call by its `grpc-status`: a trailers-only head's at once, else the trailers'
    when the body ends (None, exported `NONE`, when it ends without one or is reset)."""
    code = grpc_status.status_of(response.headers)
    body = response.body
    if code is not None or body.ended:
        grpc.observe(name, code if code is not None else grpc_status.status_of(body.trailers))
        return
    body.add_done_callback(
        lambda error: grpc.observe(name, grpc_status.status_of(body.trailers) if error is None else None)
    )


def meshd_error_response(request: Request, error: MeshdError, trace_id: str = "") -> Response:
    """The answer to one of meshd's own errors: to a gRPC request (`content-type:
    application/grpc...`) a trailers-only response with `grpc-status` and `grpc-message` (one
    HEADERS frame with END_STREAM, `:status 200`, `l5d-err` kept), else `error_response`. With
    tracing on, both carry `l5d-trace-id`."""
    if grpc_status.is_grpc_request(request.headers):
        headers = grpc_errors.grpc_error_headers(error)
        if trace_id:
            headers.append(trace_id_header(trace_id))
        return Response(grpc_errors.HTTP_STATUS, b"OK", headers, Body.empty())
    return error_response(error, trace_id=trace_id)


class PrefaceSniffer(asyncio.Protocol):
    """Serves a connection as HTTP/2 or HTTP/1.1, decided by its first bytes (or TLS ALPN).

    Used on routers with `protocol: h2` and `h2.acceptHttp1: true`: a connection that begins with
    the HTTP/2 preface (or negotiated `h2` by ALPN) gets an `H2ServerProtocol`, any other an
    HTTP/1.1 `ServerProtocol`; the transport is handed to it and the bytes read so far replayed.
    """

    def __init__(
        self, listener: Listener, config: H2ServerConfig, stats: H2Stats, grpc: GrpcStats | None = None,
        fast: H2Planner | None = None,
    ) -> None:
        self._listener = listener
        self._config = config
        self._stats = stats
        self._grpc = grpc
        self._fast = fast
        self._transport: asyncio.Transport | None = None
        self._seen = b""
        self._timer: Timer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # until it is handed on, the connection is the listener's like any other (drained, aborted)
        self._listener.connections.add(self)
        if self._listener.draining:
            self.drain()
            return
        # a client that sends nothing is closed after the header timeout, as on HTTP/1.1
        self._timer = self._listener.clock.call_later(self._listener.limits.header_timeout_s, self.drain)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            if alpn == "h2":
                self._switch(H2ServerProtocol(self._listener, self._config, self._stats, self._grpc, self._fast), b"")
            elif alpn == "http/1.1":
                self._switch(ServerProtocol(self._listener), b"")

    def data_received(self, data: bytes) -> None:
        seen = self._seen + data
        preface = h2.PREFACE
        if seen[: len(preface)] == preface[: len(seen)] and len(seen) < len(preface):
            self._seen = seen  # could still be the preface: wait for more
            return
        self._seen = b""
        if seen.startswith(preface):
            self._switch(H2ServerProtocol(self._listener, self._config, self._stats, self._grpc, self._fast), seen)
        else:
            self._switch(ServerProtocol(self._listener), seen)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def drain(self) -> None:
        """Nothing decided yet: close (a client retries on a new connection)."""
        self._done()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._done()
        if self._transport is not None:
            self._transport.abort()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._listener._forget(self)

    def _switch(self, protocol: asyncio.Protocol, replay: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._done()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if replay:
            protocol.data_received(replay)


def h2_protocol(
    listener: Listener, config: H2ServerConfig, stats: H2Stats, grpc: GrpcStats | None = None,
    fast: H2Planner | None = None,
) -> asyncio.Protocol:
    """The protocol of a new connection on an HTTP/2 router's socket (`grpc`: the router's gRPC
    counters; `fast`: its HTTP/2 fast path, meshd/h2fast.py)."""
    if config.accept_http1:
        return PrefaceSniffer(listener, config, stats, grpc, fast)
    return H2ServerProtocol(listener, config, stats, grpc, fast)


def h2_server_config(h2config: H2Config) -> H2ServerConfig:
    """The server side's settings from a router's `h2` section (cached: one per section)."""
    cached = _CONFIGS.get(h2config)
    if cached is None:
        if len(_CONFIGS) > 64:
            _CONFIGS.clear()
        cached = _CONFIGS[h2config] = H2ServerConfig(
            settings=h2_settings(h2config),
            accept_http1=h2config.accept_http1,
            zero_window_timeout_s=h2config.zero_window_timeout_ms / 1000.0,
        )
    return cached


def h2_settings(h2config: H2Config) -> H2Settings:
    return H2Settings(
        max_concurrent_streams=h2config.max_concurrent_streams,
        initial_window_size=h2config.initial_window_size,
        max_frame_size=h2config.max_frame_size,
        max_header_list_size=h2config.max_header_list_size,
    )


def alpn_protocols(router: RouterConfig) -> tuple[str, ...]:
    """What a router's TLS servers offer by ALPN: `h2` (and `http/1.1` with `acceptHttp1`)."""
    if router.protocol != "h2":
        return ()
    return ("h2", "http/1.1") if router.h2.accept_http1 else ("h2",)


_CONFIGS: dict[H2Config, H2ServerConfig] = {}
