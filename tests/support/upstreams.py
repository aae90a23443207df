"""Programmable HTTP/1.1 upstream servers on 127.0.0.1 for the tests.

An `Upstream` listens on port 0 and answers each request with a `Handler` (an async function
from `Received` to `Reply`). It records what it received (method, target, headers, body) and
counts requests and connections, so tests can assert on what meshd actually forwarded. It is
written on raw asyncio + httptools (not a framework) so tests control every byte: keep-alive
timeouts, closing idle connections, chunked replies with trailers, streaming, resets. A streamed
reply honours back-pressure: the next chunk is pulled from its iterator only while the
connection's write buffer is below the high-water mark (`paused_writers` counts connections
waiting on a full buffer), so a test can see that meshd stopped reading.

`ScriptedUpstream` is for upstreams that misbehave at the byte level (hang up after the head,
send garbage, stop reading): each connection runs a test-written script on a stream pair.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools


@dataclass(slots=True)
class Received:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    connection_id: int = 0

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def headers_named(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]


@dataclass(slots=True)
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: when set, the body is sent chunked from this iterator (and `trailers` after it)
    stream: AsyncIterator[bytes] | None = None
    trailers: list[tuple[str, str]] = field(default_factory=list)
    #: close the connection after this reply
    close: bool = False
    #: abort (RST) the connection instead of finishing the reply, after sending `body`'s first half
    reset_midway: bool = False
    #: do not send Content-Length (the body is delimited by closing the connection)
    until_close: bool = False


Handler = Callable[[Received], Awaitable[Reply]]


async def ok_handler(request: Received) -> Reply:
    return Reply(200, [("Content-Type", "text/plain")], b"ok\n")


class Upstream:
    """A test upstream. Use `async with Upstream(handler) as up:`; `up.port` is its port."""

    def __init__(
        self,
        handler: Handler = ok_handler,
        *,
        name: str = "upstream",
        keep_alive_timeout_s: float | None = None,
        stream_request_body: bool = False,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        #: serve TLS with this context (tests/support/tls.py makes them)
        self.ssl = ssl
        self.name = name
        self.keep_alive_timeout_s = keep_alive_timeout_s
        self.received: list[Received] = []
        self.requests = 0
        self.connections = 0
        self.open_connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._protocols: set[_UpstreamProtocol] = set()
        self.request_event = asyncio.Event()
        self.stream_request_body = stream_request_body
        #: for `stream_request_body`: chunks of the current request body as they arrive
        self.body_chunks: asyncio.Queue[bytes] = asyncio.Queue()
        #: connections whose streamed reply is waiting for the write buffer to drain
        self.paused_writers = 0

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in list(self._protocols):
                proto.abort()
                if proto.task is not None:
                    proto.task.cancel()
            self._server = None

    def close_idle_connections(self) -> int:
        """Close every connection not in the middle of a request (as an upstream's idle timeout would)."""
        closed = 0
        for proto in list(self._protocols):
            if proto.idle:
                proto.close()
                closed += 1
        return closed

    @property
    def address_line(self) -> str:
        return f"127.0.0.1 {self.port}"


class _UpstreamProtocol(asyncio.Protocol):
    _next_id = 0

    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle = True
        self.queue: asyncio.Queue[Received | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.current: Received | None = None
        self.in_body = False
        self.body_parts: list[bytes] = []
        self.idle_timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        _UpstreamProtocol._next_id += 1
        self.id = _UpstreamProtocol._next_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.up.connections += 1
        self.up.open_connections += 1
        self.up._protocols.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.open_connections -= 1
        self.up._protocols.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.resume_writing()  # wake a paused stream so it sees the connection is gone
        self.queue.put_nowait(None)

    def pause_writing(self) -> None:
        if self.writable.is_set():
            self.writable.clear()
            self.up.paused_writers += 1

    def resume_writing(self) -> None:
        if not self.writable.is_set():
            self.writable.set()
            self.up.paused_writers -= 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    def on_message_begin(self) -> None:
        self.idle = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.current = Received("", "", "", [], connection_id=self.id)
        self.in_body = False
        self.body_parts = []
        self._url: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        if self.in_body:
            self.current.trailers.append(pair)
        else:
            self.current.headers.append(pair)

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()
        self.current.target = b"".join(self._url).decode("latin-1")
        self.current.version = self.parser.get_http_version()
        self.in_body = True
        if self.up.stream_request_body:
            self.up.received.append(self.current)
            self.up.requests += 1
            self.up.request_event.set()

    def on_body(self, body: bytes) -> None:
        self.body_parts.append(body)
        if self.up.stream_request_body:
            self.up.body_chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.body = b"".join(self.body_parts)
        if not self.up.stream_request_body:
            self.up.received.append(self.current)
            self.up.requests += 1
            self.up.request_event.set()
        self.queue.put_nowait(self.current)

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            if request is None or self.transport is None or self.transport.is_closing():
                return
            try:
                reply = await self.up.handler(request)
            except Exception as exc:  # a test handler bug: answer 500 so the test sees it
                reply = Reply(500, [], f"handler error: {exc!r}\n".encode())
            if self.transport is None or self.transport.is_closing():
                return  # the client (meshd) went away while the handler worked
            await self._write(request, reply)
            if self.transport is None or self.transport.is_closing():
                return
            if self.queue.empty():
                self.idle = True
                self._arm_idle()

    async def _write(self, request: Received, reply: Reply) -> None:
        transport = self.transport
        assert transport is not None
        lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}\r\n".encode()]
        for n, v in reply.headers:
            lines.append(f"{n}: {v}\r\n".encode("latin-1"))
        no_body = request.method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        if reply.stream is not None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif not reply.until_close and (not no_body or request.method == "HEAD"):
            lines.append(f"Content-Length: {len(reply.body)}\r\n".encode())
        if reply.close or reply.until_close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        if reply.reset_midway:
            transport.write(reply.body[: len(reply.body) // 2])
            await asyncio.sleep(0)
            transport.abort()
            return
        if reply.stream is not None:
            async for chunk in reply.stream:
                if transport.is_closing():
                    return
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await self.writable.wait()
            trailer = b"".join(f"{n}: {v}\r\n".encode() for n, v in reply.trailers)
            transport.write(b"0\r\n" + trailer + b"\r\n")
        elif not no_body:
            transport.write(reply.body)
        if reply.close or reply.until_close:
            transport.close()

    def _arm_idle(self) -> None:
        timeout = self.up.keep_alive_timeout_s
        if timeout is not None and self.transport is not None:
            self.idle_timer = asyncio.get_running_loop().call_later(timeout, self.close)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedUpstream:
    """A TCP server on 127.0.0.1 whose every connection runs `script(reader, writer)`, then is aborted.

    Use `async with ScriptedUpstream(script) as up:`; `up.port`, `up.address_line`, `up.connections`.
    """

    def __init__(self, script: Script) -> None:
        self._script = script
        self.connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    @property
    def address_line(self) -> str:
        return f"127.0.0.1 {self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away: the script's business is over
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
