"""The admin server's HTTP/1.1 layer: the part of aiohttp's server API the admin pages use, on
asyncio and httptools (which the proxy loads anyway).

Why not aiohttp: importing it (with yarl, multidict, attrs, its client and its C parsers) adds
about 11 MB to every meshd process, nearly a quarter of a worker's resident memory, for a server
that answers a few GETs a minute (docs/benchmarks-analysis.md, "Where the memory goes"). aiohttp
stays a dependency of the workers' supervisor and the Kubernetes client, which import it only
when they run.

The names match aiohttp.web's (`Application`, `AppKey`, `get`, `post`, `Request`, `Response`,
`FileResponse`, `StreamResponse`) so a handler reads the same as an aiohttp one. What it serves:
GET (and HEAD, answered as the GET without its body) and POST routes by exact path or by a prefix
(a path ending in aiohttp's catch-all `{name:.*}`, tried after the exact ones), static directories, keep-alive and pipelining (answers in request order), request heads up to 64 KiB and
bodies up to 1 MiB (larger ones get 431/413 and the connection closes), and a 75 s idle timeout
on kept-alive connections, as aiohttp's default.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Generic, TypeVar, cast
from urllib.parse import parse_qsl

import httptools

from meshd.sockets import serve

log = logging.getLogger("meshd.admin")

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 1024 * 1024
KEEPALIVE_TIMEOUT_S: Final = 75.0
#: content types of the dashboard's files, so that the mimetypes database is not read
_TYPES: Final = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".json": "application/json",
                 ".png": "image/png", ".svg": "image/svg+xml", ".txt": "text/plain"}

_CATCH_ALL: Final = re.compile(r"\{\w+:\.\*\}$")
_T = TypeVar("_T")


class AppKey(Generic[_T]):
    """A typed key for values stored in an `Application` (as aiohttp's)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<AppKey {self.name}>"


class StreamResponse:
    """A response: status, headers and a whole body (the admin pages are small)."""

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.body = body


class Response(StreamResponse):
    def __init__(
        self,
        *,
        text: str | None = None,
        body: bytes | None = None,
        status: int = 200,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        if text is not None:
            self.body = text.encode()
            self.headers.setdefault("Content-Type", f"{content_type or 'text/plain'}; charset=utf-8")
        else:
            self.body = body or b""
            self.headers.setdefault("Content-Type", content_type or "application/octet-stream")


class FileResponse(StreamResponse):
    """A file's bytes, read when the response is made."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(headers={"Content-Type": _content_type(path)}, body=path.read_bytes())


Handler = Callable[["Request"], Awaitable[StreamResponse]]


@dataclass(frozen=True, slots=True)
class RouteDef:
    method: str
    path: str
    handler: Handler


def get(path: str, handler: Handler) -> RouteDef:
    return RouteDef("GET", path, handler)


def post(path: str, handler: Handler) -> RouteDef:
    return RouteDef("POST", path, handler)


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}
        self.static: list[tuple[str, pathlib.Path]] = []
        #: routes whose path ends in aiohttp's catch-all `{name:.*}`: (the prefix before it, methods)
        self.prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, route: RouteDef) -> None:
        if _CATCH_ALL.search(route.path):
            prefix = _CATCH_ALL.sub("", route.path)
            for known, methods in self.prefixes:
                if known == prefix:
                    methods[route.method] = route.handler
                    return
            self.prefixes.append((prefix, {route.method: route.handler}))
        elif "{" in route.path:
            raise ValueError(f"admin routes are exact paths or end in {{name:.*}}, not {route.path!r}")
        else:
            self.routes.setdefault(route.path, {})[route.method] = route.handler

    def add_static(self, prefix: str, directory: pathlib.Path) -> None:
        self.static.append((prefix.rstrip("/") + "/", directory.resolve()))

    def resolve(self, method: str, path: str) -> Handler | int:
        """The handler for `method path`, or the status to answer (404, 405)."""
        methods = self.routes.get(path)
        if methods is not None:
            handler = methods.get("GET" if method == "HEAD" else method)
            return handler if handler is not None else 405
        for prefix, directory in self.static:
            if path.startswith(prefix):
                if method not in ("GET", "HEAD"):
                    return 405
                return _static_handler(directory, path[len(prefix):])
        for prefix, methods in self.prefixes:
            if path.startswith(prefix):
                handler = methods.get("GET" if method == "HEAD" else method)
                return handler if handler is not None else 405
        return 404


class Application:
    """Routes and the values handlers share (`app[key]`)."""

    def __init__(self) -> None:
        self.router = Router()
        self._state: dict[AppKey[Any], Any] = {}
        #: background work tied to the server's life, as aiohttp's: each is an async generator
        #: function run to its `yield` when the server starts and resumed when it closes
        self.cleanup_ctx: list[Callable[[Application], AsyncIterator[None]]] = []

    def __setitem__(self, key: AppKey[_T], value: _T) -> None:
        self._state[key] = value

    def __getitem__(self, key: AppKey[_T]) -> _T:
        return cast(_T, self._state[key])

    def add_routes(self, routes: list[RouteDef]) -> None:
        for route in routes:
            self.router.add(route)


class Request:
    """What a handler sees: the app, method, path, query, headers, body and the peer's address."""

    def __init__(self, app: Application, method: str, target: str, headers: dict[str, str], body: bytes,
                 remote: str) -> None:
        self.app = app
        self.method = method
        path, _, query = target.partition("?")
        self.path = path
        #: the path and query as the client sent them
        self.path_qs = target
        self.query: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            self.query.setdefault(name, value)  # the first value, as aiohttp's MultiDict.get
        self.headers = headers
        self.body = body
        #: the peer's IP address; "" on a Unix socket (as aiohttp)
        self.remote = remote


def _content_type(path: pathlib.Path) -> str:
    known = _TYPES.get(path.suffix)
    if known is not None:
        return known
    import mimetypes  # reads the system's types database: only for a file type the dashboard does not ship

    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _static_handler(directory: pathlib.Path, relative: str) -> Handler | int:
    target = (directory / relative).resolve()
    if not relative or not target.is_relative_to(directory) or not target.is_file():
        return 404

    async def serve(request: Request) -> StreamResponse:
        return FileResponse(target)

    return serve


@dataclass(slots=True)
class _Pending:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection(asyncio.Protocol):
    """One admin connection: parse with httptools, answer each request in order."""

    def __init__(self, app: Application, connections: set[_Connection]) -> None:
        self._app = app
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._field = b""
        self._body = bytearray()
        self._head_bytes = 0
        #: bytes fed since the last complete request: bounds what httptools buffers for an unfinished one
        self._unfinished = 0
        self._queue: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple | list) else str(peer or "")
        self._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._unfinished += len(data)
        if self._unfinished > MAX_HEAD_BYTES + MAX_BODY_BYTES:
            self._fail(413)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # one of the callbacks below raised
            cause = exc.__context__
            self._fail(cause.status if isinstance(cause, _TooLarge) else 400)
        except httptools.HttpParserError:
            self._fail(400)

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = {}
        self._body.clear()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > MAX_BODY_BYTES:
            raise _TooLarge(413)
        self._body += body

    def on_message_complete(self) -> None:
        self._unfinished = 0
        method = self._parser.get_method().decode("ascii", "replace")
        pending = _Pending(method, self._url.decode("latin-1"), self._headers, bytes(self._body),
                           self._parser.should_keep_alive())
        self._queue.append(pending)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer_all())

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _TooLarge(431)

    # -- answering ----------------------------------------------------------------------------
    async def _answer_all(self) -> None:
        while self._queue and not self._closing:
            pending = self._queue.pop(0)
            response = await self._handle(pending)
            self._write(response, head_only=pending.method == "HEAD", keep_alive=pending.keep_alive)
            if not pending.keep_alive:
                self._close()
                return
        self._task = None
        self._arm_idle()

    async def _handle(self, pending: _Pending) -> StreamResponse:
        request = Request(self._app, pending.method, pending.target, pending.headers, pending.body, self._remote)
        found = self._app.router.resolve(pending.method, request.path)
        if isinstance(found, int):
            return Response(text=f"{found}: {HTTPStatus(found).phrase}", status=found)
        try:
            return await found(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin: %s %s failed", pending.method, request.path)
            return Response(text="500: Internal Server Error", status=500)

    def _write(self, response: StreamResponse, *, head_only: bool, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items() if name.lower() != "content-length"]
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._transport.write(head if head_only else head + response.body)

    def _fail(self, status: int) -> None:
        """A request that cannot be parsed or is too large: answer it, then close."""
        self._closing = True
        self._queue.clear()
        if self._task is None:
            self._write(Response(text=f"{status}: {HTTPStatus(status).phrase}", status=status), head_only=False,
                        keep_alive=False)
        self._close()

    def _arm_idle(self) -> None:
        if not self._closing and self._transport is not None:
            self._idle = asyncio.get_running_loop().call_later(KEEPALIVE_TIMEOUT_S, self._close)

    def _close(self) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._transport is not None:
            self._transport.close()


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class AdminServer:
    """A listening admin server; `close()` stops listening and closes its connections."""

    def __init__(self, server: asyncio.Server, connections: set[_Connection],
                 contexts: list[AsyncIterator[None]] | None = None) -> None:
        self.server = server
        self._connections = connections
        self._contexts = contexts or []

    @property
    def port(self) -> int:
        """The TCP port it listens on (the one the kernel chose for port 0)."""
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        for connection in list(self._connections):
            connection._close()
        await self.server.wait_closed()
        for context in reversed(self._contexts):
            await anext(context, None)
        self._contexts = []


async def _enter(app: Application) -> list[AsyncIterator[None]]:
    """Run each cleanup context of `app` to its `yield`."""
    entered: list[AsyncIterator[None]] = []
    for factory in app.cleanup_ctx:
        context = factory(app)
        await anext(context)
        entered.append(context)
    return entered


async def serve_tcp(app: Application, ip: str, port: int) -> AdminServer:
    connections: set[_Connection] = set()
    # bound here, not by the loop from an address string (meshd/sockets.py: 0.35 MB)
    server = await serve(lambda: _Connection(app, connections), ip, port)
    return AdminServer(server, connections, await _enter(app))


async def serve_unix(app: Application, path: str) -> AdminServer:
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _Connection(app, connections), path)
    return AdminServer(server, connections, await _enter(app))


class _Collected:
    """httptools callbacks of one response: status, content type, body."""

    def __init__(self) -> None:
        self.content_type = "text/plain"
        self.body = bytearray()
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_FETCH_BYTES:
            raise _TooLarge(502)
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


#: the largest answer `fetch_unix` takes (a worker's /metrics with many services is a few MB)
MAX_FETCH_BYTES: Final = 64 * 1024 * 1024


async def fetch_unix(socket_path: str, target: str) -> tuple[int, bytes, str]:
    """GET `target` from the admin server on the Unix socket `socket_path`, on a connection of its
    own: (status, body, content type). Raises OSError or `httptools.HttpParserError` when the server
    cannot be reached or answers with something that is not HTTP; the caller bounds the time."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n".encode("latin-1"))
        collected = _Collected()
        parser = httptools.HttpResponseParser(collected)
        while not collected.complete:
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("the admin server closed the connection before its answer ended")
            parser.feed_data(data)
        return parser.get_status_code(), bytes(collected.body), collected.content_type
    finally:
        writer.close()
