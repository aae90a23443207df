"""A raw HTTP/1.1 test client: exact bytes out, parsed responses in (pipelining, HEAD, trailers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httptools


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


class ConnectionClosed(Exception):
    """The server closed the connection before a complete response."""


class RawConnection:
    """One client connection. `send()` raw bytes; `read_response()` parses the next response.

    One parser runs over the whole connection, so pipelined responses arriving in one read are
    all kept, in order. For HEAD, pass `head=True` (the parser cannot know there is no body).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _ResponseCollector()
        self._parser = httptools.HttpResponseParser(self._collector)
        self._collector.parser = self._parser
        self.eof = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        host: str | None = "svc",
    ) -> RawResponse:
        await self.send(build_request(method, target, headers, body, host=host))
        return await self.read_response(head=method == "HEAD")

    async def read_response(self, *, head: bool = False) -> RawResponse:
        collector = self._collector
        collector.head = head
        while not collector.complete:
            if self.eof:
                if collector.headers_done and collector.until_close:
                    collector.finish(self._parser)
                    break
                raise ConnectionClosed("connection closed before a complete response")
            data = await self.reader.read(65536)
            if not data:
                self.eof = True
                continue
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _HeadDone):
                    raise
                self._parser = httptools.HttpResponseParser(collector)
                collector.parser = self._parser
            except httptools.HttpParserError as exc:
                raise ConnectionClosed(f"unparseable response: {exc}: {data[:200]!r}") from None
        collector.head = False
        return collector.complete.pop(0)

    async def read_eof(self) -> bytes:
        """Everything until the server closes the connection."""
        return await self.reader.read()

    async def is_closed_by_peer(self) -> bool:
        data = await self.reader.read(1)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class _HeadDone(Exception):
    pass


class _ResponseCollector:
    def __init__(self) -> None:
        self.head = False
        self.complete: list[RawResponse] = []
        self.parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.until_close = False

    def on_message_begin(self) -> None:
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.trailers if self.headers_done else self.headers).append(pair)

    def on_headers_complete(self) -> None:
        self.headers_done = True
        has_length = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in self.headers)
        self.until_close = not has_length
        self._status = self._parser_status()
        if self.head:
            self._emit(self._status, "1.1")
            raise _HeadDone()

    def _parser_status(self) -> int:
        return self.parser.get_status_code() if self.parser is not None else 0

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._emit(self._status, "1.1")

    def finish(self, parser: httptools.HttpResponseParser) -> None:
        self._emit(parser.get_status_code(), parser.get_http_version())

    def _emit(self, status: int, version: str) -> None:
        self.complete.append(RawResponse(status, self.headers, b"".join(self.body), self.trailers, version))
        self._reset()


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "svc",
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}\r\n"]
    names = {n.lower() for n, _ in headers or []}
    if host is not None and "host" not in names:
        lines.append(f"Host: {host}\r\n")
    for n, v in headers or []:
        lines.append(f"{n}: {v}\r\n")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body
