"""Scripted HTTP/2 peers on the `h2` library: a client and an upstream server, over real sockets.

`H2Client` opens one connection (h2c with prior knowledge) and runs any number of streams on it;
each stream's events (head, data, trailers, reset) arrive on its own queue, and `request()`
collects a whole exchange. Flow control is the test's: `auto_ack=False` leaves the client's
windows shut until the test calls `ack()` (a client that does not read).

`H2Server` is an upstream: each request (head, body, trailers) is handed to an async handler
that answers through the `H2Reply` it is given (head, data, trailers, reset), or the server can
be told to send GOAWAY. It records what it received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

Headers = list[tuple[bytes, bytes]]


@dataclass
class StreamResult:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers | None = None
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class _Peer(asyncio.Protocol):
    def __init__(self, client_side: bool, settings: dict[int, int] | None = None) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        if settings:
            self.h2.local_settings = h2.settings.Settings(
                client=client_side, initial_values={h2.settings.SettingCodes(k): v for k, v in settings.items()}
            )
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.events: list[Any] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.events.append(event)
            if isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                if not event.error_code:  # graceful: the streams below its last id still complete
                    self.h2.state_machine.state = (
                        h2.connection.ConnectionState.CLIENT_OPEN if self.h2.config.client_side
                        else h2.connection.ConnectionState.SERVER_OPEN
                    )
            self.on_event(event)
        self.flush()

    def on_event(self, event: Any) -> None:
        pass

    def send_window_opening(self, stream_id: int, length: int) -> None:
        try:
            self.h2.acknowledge_received_data(length, stream_id)
        except h2.exceptions.StreamClosedError:
            self.h2.increment_flow_control_window(length)
        self.flush()


class H2Client(_Peer):
    def __init__(self, *, auto_ack: bool = True, settings: dict[int, int] | None = None) -> None:
        super().__init__(True, settings)
        self.auto_ack = auto_ack
        #: streams whose DATA is never acknowledged (their windows stay shut)
        self.held: set[int] = set()
        self.queues: dict[int, asyncio.Queue[Any]] = {}
        self.unacked: dict[int, int] = {}

    @classmethod
    async def open(cls, port: int, *, ssl: Any = None, server_hostname: str | None = None, **kwargs: Any) -> H2Client:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            lambda: cls(**kwargs), "127.0.0.1", port, ssl=ssl, server_hostname=server_hostname if ssl else None
        )
        return proto

    def on_event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", None)
        if isinstance(event, h2.events.DataReceived):
            if self.auto_ack and event.stream_id not in self.held:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + event.flow_controlled_length
        if sid is not None and sid in self.queues:
            self.queues[sid].put_nowait(event)

    def ack(self, stream_id: int) -> None:
        length = self.unacked.pop(stream_id, 0)
        if length:
            self.send_window_opening(stream_id, length)

    def start(self, method: str = "GET", path: str = "/", authority: str = "svc", *,
              headers: Headers | None = None, end_stream: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.queues[sid] = asyncio.Queue()
        block = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", authority.encode()),
                 (b":path", path.encode())] + (headers or [])
        self.h2.send_headers(sid, block, end_stream=end_stream)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end_stream)
        self.flush()

    def trailers(self, sid: int, headers: Headers) -> None:
        self.h2.send_headers(sid, headers, end_stream=True)
        self.flush()

    def reset(self, sid: int, code: int = 8) -> None:
        self.h2.reset_stream(sid, error_code=code)
        self.flush()

    async def response(self, sid: int, timeout: float = 5.0) -> StreamResult:
        """Collect the stream until it ends (or is reset)."""
        result = StreamResult()
        queue = self.queues[sid]
        async with asyncio.timeout(timeout):
            while True:
                event = await queue.get()
                if isinstance(event, h2.events.ResponseReceived):
                    result.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
                    result.status = int(dict(result.headers)[b":status"])
                    if event.stream_ended is not None:
                        return result
                elif isinstance(event, h2.events.DataReceived):
                    result.body += event.data
                    if event.stream_ended is not None:
                        return result
                elif isinstance(event, h2.events.TrailersReceived):
                    result.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
                    return result
                elif isinstance(event, h2.events.StreamReset):
                    result.reset = int(event.error_code)
                    return result

    async def request(self, method: str = "GET", path: str = "/", authority: str = "svc", *,
                      headers: Headers | None = None, body: bytes = b"", trailers: Headers | None = None,
                      timeout: float = 5.0) -> StreamResult:
        sid = self.start(method, path, authority, headers=headers, end_stream=not body and not trailers)
        if body:
            self.send(sid, body, end_stream=trailers is None)
        if trailers:
            self.trailers(sid, trailers)
        return await self.response(sid, timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class H2Request:
    stream_id: int
    headers: Headers
    body: bytes = b""
    trailers: Headers | None = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def path(self) -> str:
        return (self.header(b":path") or b"").decode()


class H2Reply:
    """How a handler answers one stream."""

    def __init__(self, conn: _ServerConn, request: H2Request) -> None:
        self._conn = conn
        self.request = request
        self.sid = request.stream_id

    def head(self, status: int = 200, headers: Headers | None = None, end_stream: bool = False) -> None:
        self._conn.h2.send_headers(self.sid, [(b":status", str(status).encode())] + (headers or []),
                                   end_stream=end_stream)
        self._conn.flush()

    async def data(self, data: bytes, end_stream: bool = False) -> None:
        """Send `data`, waiting for window as needed."""
        h2c = self._conn.h2
        while data:
            window = min(h2c.local_flow_control_window(self.sid), h2c.max_outbound_frame_size)
            if window <= 0:
                await self._conn.window_opened.wait()
                self._conn.window_opened.clear()
                continue
            chunk, data = data[:window], data[window:]
            h2c.send_data(self.sid, chunk, end_stream=end_stream and not data)
            self._conn.flush()
        if end_stream and not data and h2c.streams[self.sid].open:
            pass

    def end(self) -> None:
        self._conn.h2.end_stream(self.sid)
        self._conn.flush()

    def trailers(self, headers: Headers) -> None:
        self._conn.h2.send_headers(self.sid, headers, end_stream=True)
        self._conn.flush()

    def reset(self, code: int) -> None:
        self._conn.h2.reset_stream(self.sid, error_code=code)
        self._conn.flush()


Handler = Callable[[H2Reply], Coroutine[Any, Any, None]]


async def echo(reply: H2Reply) -> None:
    """200 with the request body, and the request's trailers echoed as response trailers."""
    reply.head(200, [(b"x-path", reply.request.path.encode())])
    if reply.request.body:
        await reply.data(reply.request.body)
    reply.trailers(reply.request.trailers or [(b"x-done", b"1")])


class _ServerConn(_Peer):
    def __init__(self, server: H2Server) -> None:
        super().__init__(False, server.settings)
        self.server = server
        self.partial: dict[int, H2Request] = {}
        self.window_opened = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.conns.append(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.server.alpn.append(ssl_object.selected_alpn_protocol())

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            req = H2Request(event.stream_id, [(bytes(n), bytes(v)) for n, v in event.headers])
            self.partial[event.stream_id] = req
            self.server.heads.append(req)
            if event.stream_ended is not None:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            part = self.partial.get(event.stream_id)
            if part is not None:
                part.body += event.data
            if self.server.auto_ack:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_ended is not None:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            ended = self.partial.get(event.stream_id)
            if ended is not None:
                ended.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
            self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_opened.set()
        elif isinstance(event, h2.events.StreamReset):
            self.server.resets.append((event.stream_id, int(event.error_code)))

    def _dispatch(self, sid: int) -> None:
        req = self.partial.pop(sid, None)
        if req is None:
            return
        self.server.received.append(req)
        task = asyncio.get_running_loop().create_task(self.server.handler(H2Reply(self, req)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send_goaway(self, last_stream_id: int | None = None, code: int = 0) -> None:
        """GOAWAY; graceful (code 0) keeps answering the streams at or below `last_stream_id`
        (`h2` itself would close its whole state, so it is put back to open)."""
        self.h2.close_connection(error_code=code, last_stream_id=last_stream_id)
        if code == 0:
            self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        self.flush()


class H2Server:
    def __init__(self, handler: Handler = echo, *, settings: dict[int, int] | None = None,
                 auto_ack: bool = True) -> None:
        self.handler = handler
        self.settings = settings
        self.auto_ack = auto_ack
        self.conns: list[_ServerConn] = []
        self.received: list[H2Request] = []
        #: request heads as they arrive (before their bodies end)
        self.heads: list[H2Request] = []
        self.resets: list[tuple[int, int]] = []
        #: the protocol each TLS connection negotiated by ALPN
        self.alpn: list[str | None] = []
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, *, ssl: Any = None) -> H2Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConn(self), "127.0.0.1", 0, ssl=ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address_line(self) -> str:
        return f"127.0.0.1 {self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in self.conns:
                if conn.transport is not None:
                    conn.transport.abort()
                for task in list(conn.tasks):
                    task.cancel()
            await self._server.wait_closed()
