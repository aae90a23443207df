"""HTTP/2 to upstreams: a multiplexed connection pool per endpoint.

How this works:
- `H2Pool` keeps a few `H2Upstream` connections to one endpoint. A request goes on the first
  connection that can take another stream (open, not draining, below the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS, stream ids left); a new connection is dialled only when none
  can (and `maxConnections` allows); otherwise the request waits for a stream to end, at most
  `pool.queueTimeoutMs` (then 503 QueueTimeout, never written: the retry stage may send it
  elsewhere). One dial at a time: requests arriving meanwhile wait for it rather than each
  opening a connection.
- Each request is one stream: its head as HEADERS, its body as DATA with back-pressure (the
  request body's producer is paused while more than `SEND_MARK` bytes wait for the upstream's
  window), trailers as trailing HEADERS. The response head resolves the send; its body streams
  behind it, and its DATA is acknowledged (the upstream's window reopened) only as the body's
  consumer passes it on.
- GOAWAY: the connection takes no new stream; streams above its last-stream-id were not
  processed and fail with `StreamRefused` (written=False: retried on another endpoint, counted
  in `H2Stats.streams_refused`), as does a stream reset with REFUSED_STREAM; the others finish,
  then the connection closes.
- Any other RST_STREAM: `UpstreamReset` carrying the error code (before the head: a 502; after
  it, the response body fails and the downstream HTTP/2 stream is reset with that code).
- PING (`sweep`, about once a second): a connection that received nothing for `pingInterval` is
  pinged; one whose PING is not answered within `pingTimeout` is closed and its streams failed
  (counted in `H2Stats.ping_timeouts`). A connection with no stream for `idleTime` is closed.
- A stream sent whole that has no response head after `client.responseHeadTimeoutMs` is reset
  and fails with 504 `ResponseHeadTimeout`; a response body the upstream stops sending for
  `client.responseIdleTimeoutMs` (time the client was not reading excluded) fails and its
  stream is reset (both checked by the same sweep: to the second).
- A connection close to the end of its stream ids (2**31-1) takes no new stream and is replaced.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Final, cast

from meshd.clock import Clock
from meshd.errors import (
    ConnectFailed,
    MeshdError,
    QueueTimeout,
    ResponseHeadTimeout,
    StreamRefused,
    UpstreamFailed,
    UpstreamReset,
)
from meshd.http.body import Body, Trailers
from meshd.http.messages import Request, Response
from meshd.http2 import codec as h2
from meshd.http2.codec import H2Codec, H2Settings, Headers
from meshd.http2.convert import h2_trailers, response_from_h2
from meshd.http2.factory import new_codec
from meshd.http2.guard import FrameGuard, H2Stats, reason_label
from meshd.pool.connection import HeadReceiver
from meshd.pool.dialer import Dialer
from meshd.pool.pool import Pending, PoolStatistics

#: a request body's producer is paused while more than this waits for the upstream's window
SEND_MARK: Final = 64 * 1024
#: the last stream id a client may use (RFC 9113 §5.1.1); a connection stops a little before it
MAX_STREAM_ID: Final = 2**31 - 1
_ID_MARGIN: Final = 2


@dataclass(frozen=True, slots=True)
class H2PoolSettings:
    settings: H2Settings = field(default_factory=H2Settings)
    max_connections: int = 1000
    idle_time_s: float = 10.0
    queue_timeout_s: float | None = 5.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    #: a stream whose request was sent whole and that has no response head after this fails (504)
    response_head_timeout_s: float | None = 60.0
    #: a response body the upstream stops sending for this long fails (the stream is reset)
    response_idle_timeout_s: float | None = 300.0
    scheme: bytes = b"http"


class _UpStream:
    __slots__ = ("sid", "future", "receiver", "request", "response", "reading_paused", "unacked", "writer_paused",
                 "done_in", "done_out", "sent_at", "rx_at", "submitted")

    def __init__(
        self, sid: int, request: Request, future: asyncio.Future[Response] | None, receiver: HeadReceiver | None = None
    ) -> None:
        self.sid = sid
        #: resolved with the response head (`H2Pool.send`), or None when `receiver` is told instead
        self.future = future
        #: the HTTP/2 fast path's exchange (meshd/h2fast.py): told of the head once the read that
        #: brought it has been handled whole (a small response's body has ended by then)
        self.receiver = receiver
        self.request: Request | None = request
        self.response: Response | None = None
        self.reading_paused = False
        self.unacked = 0
        self.writer_paused = False
        #: the response has ended (or failed); the request has been sent whole (or abandoned)
        self.done_in = False
        self.done_out = False
        #: when the request was sent whole (-1: not yet): the response head is due from then
        self.sent_at = -1.0
        #: when the response last made progress (its head, DATA, or the client reading again)
        self.rx_at = 0.0
        #: bytes of request body handed to the codec (back-pressure asks the codec past `SEND_MARK`)
        self.submitted = 0


#: an upstream stream as the fast path holds it (meshd/h2fast.py)
UpStream = _UpStream


class _ResponseReader:
    """The response body's producer: pausing it withholds the upstream's window; its `cancel`
    is the body's canceller. It finds its stream by id on the connection rather than holding
    it: the body (kept by the response, which the stream's future keeps) would otherwise be part
    of a reference cycle per request, left to the cyclic garbage collector."""

    __slots__ = ("_conn", "_sid")

    def __init__(self, conn: H2Upstream, sid: int) -> None:
        self._conn = conn
        self._sid = sid

    def pause_reading(self) -> None:
        stream = self._conn.streams.get(self._sid)
        if stream is not None:
            stream.reading_paused = True

    def resume_reading(self) -> None:
        stream = self._conn.streams.get(self._sid)
        if stream is not None and stream.reading_paused:
            stream.reading_paused = False
            stream.rx_at = self._conn._pool.clock.now()  # the client's pause was not the upstream's silence
            unacked, stream.unacked = stream.unacked, 0
            self._conn._ack(stream.sid, unacked)

    def cancel(self) -> None:
        stream = self._conn.streams.get(self._sid)
        if stream is not None:
            self._conn._cancel_quietly(stream)


class _RequestWriter:
    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: H2Upstream, stream: _UpStream) -> None:
        self._conn = conn
        self._stream = stream

    def on_data(self, data: bytes) -> None:
        conn = self._conn
        stream = self._stream
        if data and not conn.closed and not stream.done_out:
            conn._codec.send_data(stream.sid, data, False)
            conn._flush_soon()
            stream.submitted += len(data)
            if stream.submitted > SEND_MARK:  # never more waiting than was handed over
                conn._check_send_window(stream)

    def on_end(self, trailers: Trailers | None) -> None:
        conn = self._conn
        stream = self._stream
        if conn.closed or stream.done_out:
            return
        if trailers:
            conn._codec.send_trailers(stream.sid, h2_trailers(trailers))
        else:
            conn._codec.end_stream(stream.sid)
        conn._flush_soon()
        stream.done_out = True
        stream.sent_at = conn._pool.clock.now()
        conn._maybe_done(stream)

    def on_error(self, exc: BaseException) -> None:
        # the client's request body broke (client gone, malformed): this stream cannot complete
        conn = self._conn
        error = exc if isinstance(exc, MeshdError) else UpstreamFailed(f"request body failed: {exc}")
        conn.cancel(self._stream, error)


class H2Upstream(asyncio.Protocol):
    """One HTTP/2 connection to an upstream, carrying many streams."""

    def __init__(self, pool: H2Pool) -> None:
        self._pool = pool
        self.label = pool.label
        self._codec: H2Codec = new_codec(True, pool.settings.settings)
        self._guard = FrameGuard(
            server_side=False, max_block_bytes=pool.settings.settings.max_header_list_size, now=pool.clock.now()
        )
        self._transport: asyncio.Transport | None = None
        self.streams: dict[int, _UpStream] = {}
        self.closed = False
        self.draining = False
        self.last_rx = pool.clock.now()
        self.idle_since = self.last_rx
        #: when the outstanding PING was sent (-1: none outstanding)
        self.ping_sent = -1.0
        #: frames taken from the codec before the end of the loop iteration (`_pull`), written first
        self._pending_out: list[bytes] = []
        #: a `_flush` is due at the end of this loop iteration (`_flush_soon`)
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: streams of fast-path exchanges whose head came in the read being handled
        self._heads: list[_UpStream] = []
        #: a read has been handled whole (the peer speaks HTTP/2, whatever else it does)
        self._heard = False

    # -- state --------------------------------------------------------------------------------
    def available(self) -> bool:
        """Can this connection take one more stream now?"""
        if self.closed or self.draining or self._transport is None or self._transport.is_closing():
            return False
        if len(self.streams) >= self._codec.peer_max_concurrent_streams:
            return False
        if self._codec.next_stream_id() > MAX_STREAM_ID - _ID_MARGIN:
            self.draining = True  # stream ids are used up: replaced by a new connection
            self._pool._changed()
            self._close_if_drained()
            return False
        return True

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._codec.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._heard and data[:7] == b"HTTP/1.":
            # its first answer is HTTP/1's (e.g. a meshd router without `protocol: h2` refusing the
            # preface with 505): say what to change, not only that the protocol broke
            self._pool.stats.count("protocol")
            self._fail_all(UpstreamFailed(
                f"{self.label} answered in HTTP/1.x, not HTTP/2: it does not speak HTTP/2 (another meshd's "
                "router needs `protocol: h2`; or give this client `protocol: http`)"))
            return
        now = self._pool.clock.now()
        self.last_rx = now
        reason = self._guard.feed(data, now)
        if reason is not None:
            self._pool.stats.count(reason)
            self._pull()  # the frames already made go out first
            self._codec.goaway(h2.ENHANCE_YOUR_CALM)
            self._flush()
            self._fail_all(UpstreamFailed(f"{self.label} flooded meshd's connection ({reason})"))
            return
        for event in self._codec.receive(data):
            if isinstance(event, h2.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.HeadersReceived):
                self._on_headers(event)
            elif isinstance(event, h2.TrailersReceived):
                self._on_trailers(event)
            elif isinstance(event, h2.WindowUpdated):
                self._on_window(event.stream_id)
            elif isinstance(event, h2.StreamReset):
                self._on_reset(event)
            elif isinstance(event, h2.GoAwayReceived):
                self._on_goaway(event)
            elif isinstance(event, h2.PingAcked):
                self.ping_sent = -1.0
            elif isinstance(event, h2.RemoteSettingsChanged):
                self._pool._changed()
            elif isinstance(event, h2.ConnectionError):
                self._pool.stats.count(reason_label(event.error_code, event.reason))
                self._flush()
                self._fail_all(UpstreamFailed(f"{self.label} broke the HTTP/2 protocol: {event.reason}"))
                if self._heads:
                    self._tell_heads()
                return
        if self._heads:
            self._tell_heads()
        self._heard = True
        self._flush()

    def _tell_heads(self) -> None:
        """The fast path's exchanges whose head came in this read, told now that the read has been
        handled whole: a small response's DATA and trailers have reached its body."""
        heads = self._heads
        self._heads = []
        for stream in heads:
            receiver = stream.receiver
            response = stream.response
            if receiver is not None and response is not None:
                stream.receiver = None
                receiver.head_received(response)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(UpstreamFailed(f"{self.label} closed the HTTP/2 connection"))

    def pause_writing(self) -> None:
        for stream in self.streams.values():
            request = stream.request
            if request is not None and not stream.done_out and not stream.writer_paused:
                stream.writer_paused = True
                request.body.pause_producing()

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            self._maybe_resume_writer(stream)

    # -- sending ------------------------------------------------------------------------------
    def open_stream(self, request: Request, headers: Headers, receiver: HeadReceiver | None = None) -> _UpStream:
        """A new stream for `request`: its head resolves the stream's future, or is given to
        `receiver` (the fast path: no future) once the read that brought it is handled."""
        sid = self._codec.next_stream_id()
        future: asyncio.Future[Response] | None = None
        if receiver is None:
            future = asyncio.get_running_loop().create_future()
        stream = _UpStream(sid, request, future, receiver)
        body = request.body
        bodiless = body.ended and body.received == 0 and body.error is None and not body.chunked
        try:
            self._codec.send_headers(sid, headers, bodiless)
        except MeshdError:
            raise
        except Exception as exc:  # the codec refused the head (a field HTTP/2 does not allow)
            raise UpstreamFailed(f"request head cannot be sent over HTTP/2 to {self.label}: {exc}") from exc
        self.streams[sid] = stream
        self._flush_soon()
        if bodiless:
            stream.done_out = True
            stream.sent_at = self._pool.clock.now()
        else:
            body.attach(_RequestWriter(self, stream))
        return stream

    def abandon(self, stream: _UpStream) -> None:
        """The fast path's exchange gives the stream up (its client left): RST_STREAM, and its
        receiver is told nothing more."""
        stream.receiver = None
        self.cancel(stream, UpstreamFailed("cancelled"))

    def cancel(self, stream: _UpStream, error: MeshdError) -> None:
        """Give the stream up (the caller was cancelled, or the request body broke): RST_STREAM."""
        if self.streams.get(stream.sid) is not stream:
            return
        if not self.closed:
            self._pull()  # the frames already made go out first
            self._codec.reset_stream(stream.sid, h2.CANCEL)
            self._flush()
        self._fail_stream(stream, error)

    def ping(self, now: float) -> None:
        self.ping_sent = now
        self._codec.ping(b"meshdpng")
        self._flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._transport is not None:
            self._pull()  # the frames already made go out first
            self._codec.goaway(h2.NO_ERROR)
            self._flush()
            self._transport.close()
        self._fail_all(UpstreamFailed(f"connection to {self.label} closed"))

    # -- events -----------------------------------------------------------------------------
    def _on_headers(self, event: h2.HeadersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        status = 0
        for name, value in event.headers:
            if name == b":status":
                try:
                    status = int(value)
                except ValueError:
                    status = 0
                break
        if 100 <= status < 200:
            return  # interim: meshd answers 100-continue to its clients itself
        if status < 200 or status > 999 or stream.response is not None:
            self.cancel(stream, UpstreamFailed(f"{self.label} sent a response without a valid :status"))
            return
        if event.end_stream:
            body = Body.empty(0)
            stream.done_in = True
        else:
            reader = _ResponseReader(self, stream.sid)
            body = Body(chunked=True, producer=reader)
            body.set_canceller(reader.cancel)
        stream.rx_at = self.last_rx
        response = response_from_h2(status, event.headers, body)
        if response.content_length is not None and not event.end_stream:
            body.length = response.content_length
            body.chunked = False
        stream.response = response
        future = stream.future
        if future is None:
            self._heads.append(stream)  # told at the end of this read (`_tell_heads`)
        elif not future.done():
            future.set_result(response)
        if stream.done_in:
            self._maybe_done(stream)

    def _on_data(self, event: h2.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        response = stream.response if stream is not None else None
        if stream is None or response is None or stream.done_in:
            self._ack(event.stream_id, event.flow_length)
            return
        stream.rx_at = self.last_rx
        if event.data:
            response.body.feed(event.data)
        if stream.reading_paused:
            stream.unacked += event.flow_length
        else:
            self._ack(event.stream_id, event.flow_length)
        if event.end_stream:
            stream.done_in = True
            response.body.end(None)
            self._maybe_done(stream)

    def _on_trailers(self, event: h2.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        response = stream.response
        stream.done_in = True
        if response is None:
            self._fail_stream(stream, UpstreamFailed(f"{self.label} sent trailers without a response head"))
            return
        response.body.end(h2_trailers(event.headers))
        self._maybe_done(stream)

    def _on_reset(self, event: h2.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        code = event.error_code
        error: MeshdError
        if code == h2.REFUSED_STREAM and stream.response is None:
            self._pool.stats.streams_refused += 1
            error = StreamRefused(f"{self.label} refused the stream (REFUSED_STREAM)")
        elif code == h2.NO_ERROR and stream.done_in:
            # the upstream has answered in full and stops reading the request: not a failure
            stream.done_out = True
            self._detach_request(stream)
            self._maybe_done(stream)
            return
        else:
            error = UpstreamReset(f"{self.label} reset the stream (HTTP/2 error code {code})", code)
        self._fail_stream(stream, error)

    def _on_goaway(self, event: h2.GoAwayReceived) -> None:
        self.draining = True
        last = event.last_stream_id
        for stream in list(self.streams.values()):
            if stream.sid > last:
                self._pool.stats.streams_refused += 1
                self._fail_stream(stream, StreamRefused(
                    f"{self.label} sent GOAWAY (last stream {last}) before processing the stream"
                ))
        self._pool._changed()
        self._close_if_drained()

    def _on_window(self, sid: int) -> None:
        if sid == 0:
            for stream in list(self.streams.values()):
                self._maybe_resume_writer(stream)
        else:
            one = self.streams.get(sid)
            if one is not None:
                self._maybe_resume_writer(one)

    # -- internals ------------------------------------------------------------------------------
    def _ack(self, sid: int, length: int) -> None:
        if length and not self.closed:
            self._codec.consumed(sid, length)
            self._flush_soon()

    def _check_send_window(self, stream: _UpStream) -> None:
        request = stream.request
        if request is not None and not stream.writer_paused and self._codec.buffered(stream.sid) > SEND_MARK:
            self._pull()  # what the window lets out now is not waiting
            if self._codec.buffered(stream.sid) > SEND_MARK:
                stream.writer_paused = True
                request.body.pause_producing()

    def _maybe_resume_writer(self, stream: _UpStream) -> None:
        request = stream.request
        if stream.writer_paused and request is not None:
            if self._codec.buffered(stream.sid) > SEND_MARK:
                self._pull()
            if self._codec.buffered(stream.sid) <= SEND_MARK:
                stream.writer_paused = False
                request.body.resume_producing()

    def _cancel_quietly(self, stream: _UpStream) -> None:
        # the response body's consumer went away (client gone, retry discarded it)
        if self.streams.get(stream.sid) is stream and not self.closed:
            self._pull()  # the frames already made go out first
            self._codec.reset_stream(stream.sid, h2.CANCEL)
            self._flush()
        stream.done_in = stream.done_out = True
        self._detach_request(stream)
        self._forget(stream)

    def _detach_request(self, stream: _UpStream) -> None:
        request, stream.request = stream.request, None
        if request is not None and not request.body.ended:
            request.body.detach()

    def _maybe_done(self, stream: _UpStream) -> None:
        if stream.done_in and stream.done_out:
            stream.request = None
            self._forget(stream)

    def _forget(self, stream: _UpStream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            if not self.streams:
                self.idle_since = self._pool.clock.now()
            self._pool._changed()
            self._close_if_drained()

    def _fail_stream(self, stream: _UpStream, error: MeshdError) -> None:
        future = stream.future
        receiver = stream.receiver
        if stream.response is None and (receiver is not None or (future is not None and not future.done())):
            if receiver is not None:
                stream.receiver = None
                stream.done_in = stream.done_out = True
                self._detach_request(stream)
                self._forget(stream)
                receiver.head_failed(error)  # after the stream is gone: it may hand over, and retry
                return
            assert future is not None
            future.set_exception(error)
        elif stream.response is not None and not stream.done_in:
            stream.response.body.fail(error)
        stream.done_in = stream.done_out = True
        self._detach_request(stream)
        self._forget(stream)

    def _fail_all(self, error: MeshdError) -> None:
        was_closed = self.closed
        self.closed = True
        for stream in list(self.streams.values()):
            self._fail_stream(stream, error)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if not was_closed:
            self._pool._lost(self)

    def _close_if_drained(self) -> None:
        if self.draining and not self.streams and not self.closed:
            self.close()

    def _flush(self) -> None:
        """Write what the codec holds now, after what `_flush_soon` kept back."""
        data = self._codec.data_to_send()
        pending = self._pending_out
        if pending:
            if data:
                pending.append(data)
            data = b"".join(pending)
            pending.clear()
        if data and self._transport is not None and not self.closed:
            self._transport.write(data)

    def _flush_soon(self) -> None:
        """Write what the codec holds at the end of this event-loop iteration, with what the
        connection's other streams add meanwhile: one take from the codec and one write (one
        system call) for all the requests sent in an iteration, not a few each."""
        if not self._flush_due and not self.closed and self._loop is not None:
            self._flush_due = True
            self._loop.call_soon(self._flush_at_end)

    def _flush_at_end(self) -> None:
        self._flush_due = False
        self._flush()

    def _pull(self) -> None:
        """Take what the codec holds now, to write with the next `_flush` (where `buffered()` must
        say what the upstream's window holds back, not what was not taken yet)."""
        data = self._codec.data_to_send()
        if data and not self.closed:
            self._pending_out.append(data)
            self._flush_soon()


class H2Pool:
    """The HTTP/2 connections to one endpoint (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        dialer: Dialer,
        settings: H2PoolSettings,
        clock: Clock,
        stats: H2Stats,
        pending: Pending | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self._dialer = dialer
        self.settings = settings
        self.clock = clock
        self.stats = stats
        self.conns: list[H2Upstream] = []
        #: the dial under way (one at a time): done when it ends, failed with its MeshdError
        self._dialing: asyncio.Future[None] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.opened = 0
        self.closed_count = 0
        self.queue_timeouts = 0
        self._drained: asyncio.Event | None = None
        #: the client's count of attempts waiting (circuitBreakers.maxPendingRequests)
        self._pending = pending

    # -- one attempt ------------------------------------------------------------------------
    async def send(self, request: Request, headers: Headers) -> Response:
        """Send `request` on a stream; returns at the response head (its body streams behind)."""
        conn = self._available()
        if conn is None:
            conn = await self._acquire()
        stream = conn.open_stream(request, headers)
        future = stream.future
        assert future is not None
        try:
            return await future
        except asyncio.CancelledError:
            conn.cancel(stream, UpstreamFailed("cancelled"))
            raise

    def try_stream(self) -> H2Upstream | None:
        """A connection that can take a stream now, without waiting or dialling (the fast path),
        or None (also when the pool is closed: the slow path then raises its error)."""
        if self._closed:
            return None
        for conn in self.conns:
            if conn.available():
                return conn
        return None

    def _available(self) -> H2Upstream | None:
        if self._closed:
            raise ConnectFailed(f"endpoint {self.label} was removed")
        for conn in self.conns:
            if conn.available():
                return conn
        return None

    async def _acquire(self) -> H2Upstream:
        deadline = None
        timeout = self.settings.queue_timeout_s
        while True:
            conn = self._available()
            if conn is not None:
                return conn
            if self._dialing is not None:
                await asyncio.shield(self._dialing)
                continue
            if len(self.conns) < self.settings.max_connections:
                await self._dial()
                continue
            # every connection is at the peer's stream limit: wait for a stream to end
            now = self.clock.now()
            if deadline is None:
                deadline = now + timeout if timeout is not None else None
            if deadline is not None and now >= deadline:
                self.queue_timeouts += 1
                raise QueueTimeout(
                    f"waited {timeout * 1000 if timeout else 0:.0f} ms for a stream to {self.label}: all "
                    f"{len(self.conns)} HTTP/2 connections at the upstream's stream limit (pool.queueTimeoutMs)"
                )
            pending = self._pending
            if pending is not None:
                pending.enter("a stream")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    try:
                        async with self.clock.timeout(max(deadline - now, 0.0)):
                            await waiter
                    except TimeoutError:
                        pass
            finally:
                if not waiter.done():
                    waiter.cancel()
                if pending is not None:
                    pending.count -= 1

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        dialing: asyncio.Future[None] = loop.create_future()
        self._dialing = dialing
        try:
            conn = await self._dialer.dial(self.host, self.port, lambda: H2Upstream(self))
        except MeshdError as exc:
            # those waiting for this dial fail with it too (never written: retried elsewhere)
            self._dialing = None
            dialing.set_exception(exc)
            dialing.exception()  # retrieved: the waiters see it through shield
            raise
        except BaseException:
            self._dialing = None
            dialing.set_result(None)  # cancelled: a waiter dials again itself
            raise
        self._dialing = None
        self.opened += 1
        dialing.set_result(None)
        if self._closed:
            conn.close()
            raise ConnectFailed(f"endpoint {self.label} was removed")
        self.conns.append(conn)

    # -- connection callbacks -------------------------------------------------------------------
    def _changed(self) -> None:
        """A stream ended or a limit changed: waiters look again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._drained is not None and not any(c.streams for c in self.conns):
            self._drained.set()

    def _lost(self, conn: H2Upstream) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            self.closed_count += 1
        self._changed()

    # -- upkeep --------------------------------------------------------------------------------
    def sweep(self, now: float) -> int:
        """PING quiet connections, close those whose PING went unanswered and those idle too long."""
        closed = 0
        s = self.settings
        head_timeout = s.response_head_timeout_s
        idle_timeout = s.response_idle_timeout_s
        for conn in list(self.conns):
            for stream in list(conn.streams.values()):
                if stream.response is None:
                    if head_timeout is not None and 0.0 <= stream.sent_at <= now - head_timeout:
                        conn.cancel(stream, ResponseHeadTimeout(
                            f"{self.label} sent no response head within {head_timeout * 1000:.0f} ms of the "
                            "request (responseHeadTimeoutMs)"
                        ))
                elif (
                    idle_timeout is not None and not stream.done_in and not stream.reading_paused
                    and stream.rx_at <= now - idle_timeout
                ):
                    conn.cancel(stream, UpstreamFailed(
                        f"{self.label} sent nothing of the response body for {idle_timeout * 1000:.0f} ms "
                        "(responseIdleTimeoutMs)"
                    ))
            if conn.ping_sent >= 0.0:
                if now - conn.ping_sent >= s.ping_timeout_s:
                    self.stats.ping_timeouts += 1
                    conn._fail_all(UpstreamFailed(
                        f"{self.label} did not answer a PING within {s.ping_timeout_s * 1000:.0f} ms (h2.pingTimeoutMs)"
                    ))
                    closed += 1
                continue
            if not conn.streams and now - conn.idle_since >= s.idle_time_s:
                conn.close()
                closed += 1
            elif now - conn.last_rx >= s.ping_interval_s:
                conn.ping(now)
        return closed

    def close(self) -> None:
        """Stop taking streams; idle connections close now, busy ones when their streams end."""
        self._closed = True
        for conn in list(self.conns):
            conn.draining = True
            conn._close_if_drained()
        self._changed()

    async def wait_drained(self) -> None:
        if not any(c.streams for c in self.conns):
            return
        self._drained = asyncio.Event()
        await self._drained.wait()

    @property
    def is_closed(self) -> bool:
        return self._closed

    def statistics(self) -> PoolStatistics:
        busy = sum(1 for c in self.conns if c.streams)
        return PoolStatistics(
            idle=len(self.conns) - busy,
            busy=busy,
            dialing=1 if self._dialing is not None else 0,
            waiters=len(self._waiters),
            opened=self.opened,
            closed=self.closed_count,
            queue_timeouts=self.queue_timeouts,
        )

    @property
    def streams(self) -> int:
        """Streams open on this endpoint's connections."""
        return sum(len(c.streams) for c in self.conns)

    def __repr__(self) -> str:
        return f"<H2Pool {self.label} connections={len(self.conns)} streams={self.streams}>"

