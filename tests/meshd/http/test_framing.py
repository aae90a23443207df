"""Framing: how message bodies are delimited on the wire (RFC 9112 §6), written and read.

Three layers: the pure rules in `meshd.http.framing` (which framing a message gets, the exact
bytes of heads and chunks); the listener reading requests; the upstream connection reading
responses. The readers are fed the same bytes three ways, as STYLE.md asks: all at once, one
byte at a time, and cut at random points (hypothesis), and must produce the same messages; bytes
of a following message that has not arrived whole must stay unanswered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httptools
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http.body import Body, Trailers
from meshd.http.framing import (
    Framing,
    encode_chunk,
    encode_last_chunk,
    reason_phrase,
    request_framing,
    response_framing,
    response_has_body,
    serialize_request_head,
    serialize_response_head,
)
from meshd.http.messages import Request, Response
from meshd.listener import Listener, ListenerLimits
from meshd.pipeline.context import RouteContext
from meshd.pool.connection import UpstreamConnection
from tests.support.transport import FakeTransport, connect

T = TypeVar("T")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one hypothesis example on a fresh uvloop loop (hypothesis cannot drive async tests)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


SPLITS = {"whole": whole, "bytewise": bytewise}

# -- pure rules -----------------------------------------------------------------------------------


@given(method=st.sampled_from(METHODS), status=st.integers(100, 599))
def test_only_head_responses_1xx_204_and_304_have_no_body(method, status):
    expected = not (method == "HEAD" or status < 200 or status in (204, 304))
    assert response_has_body(method, status) is expected


@pytest.mark.parametrize(
    ("method", "version", "status", "body", "framing"),
    [
        ("HEAD", "1.1", 200, Body(length=10), Framing.NONE),
        ("GET", "1.1", 204, Body.empty(), Framing.NONE),
        ("GET", "1.1", 304, Body.empty(), Framing.NONE),
        ("GET", "1.1", 200, Body(length=10), Framing.LENGTH),
        ("GET", "1.1", 200, Body.empty(0), Framing.LENGTH),
        ("GET", "1.1", 200, Body(chunked=True), Framing.CHUNKED),
        ("GET", "1.1", 200, Body(), Framing.CHUNKED),
        ("GET", "1.0", 200, Body(chunked=True), Framing.CLOSE),
        ("GET", "1.0", 200, Body(length=3), Framing.LENGTH),
    ],
)
def test_response_framing(method, version, status, body, framing):
    assert response_framing(method, version, status, body) is framing


@pytest.mark.parametrize(
    ("body", "framing"),
    [
        (Body(length=5), Framing.LENGTH),
        (Body.empty(0), Framing.LENGTH),  # an explicit Content-Length: 0 is kept
        (Body(chunked=True), Framing.CHUNKED),
        (Body.empty(), Framing.NONE),
    ],
)
def test_request_framing(body, framing):
    assert request_framing(body) is framing


def test_request_head_bytes():
    head = serialize_request_head(
        "POST",
        "/pay?x=1",
        [(b"Host", b"svc"), (b"X-A", b"1")],
        Framing.LENGTH,
        5,
        b"l5d-dst-service: /svc/x\r\n",
    )
    assert head == (
        b"POST /pay?x=1 HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nContent-Length: 5\r\nl5d-dst-service: /svc/x\r\n\r\n"
    )
    assert serialize_request_head("GET", "/", [], Framing.NONE, None, b"X: 1\r\n") == b"GET / HTTP/1.1\r\nX: 1\r\n\r\n"
    chunked = serialize_request_head("PUT", "/", [], Framing.CHUNKED, None)
    assert chunked == b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert serialize_request_head("GET", "/", [], Framing.NONE, None) == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "length", "keep_alive", "version", "expected"),
    [
        (Framing.LENGTH, 3, True, "1.1", b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 3\r\n\r\n"),
        (
            Framing.CHUNKED,
            None,
            True,
            "1.1",
            b"HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (Framing.CLOSE, None, False, "1.0", b"HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n"),
        (
            Framing.LENGTH,
            3,
            True,
            "1.0",
            b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            Framing.LENGTH,
            3,
            False,
            "1.1",
            b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        ),
        # a HEAD response keeps the Content-Length the GET would have had
        (Framing.NONE, 10, True, "1.1", b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 10\r\n\r\n"),
        (Framing.NONE, None, True, "1.1", b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"),
    ],
)
def test_response_head_bytes(framing, length, keep_alive, version, expected):
    head = serialize_response_head(
        200, b"OK", [(b"X", b"y")], framing, length, keep_alive=keep_alive, client_version=version
    )
    assert head == expected


def test_response_head_without_reason_uses_the_standard_phrase():
    head = serialize_response_head(503, b"", [], Framing.LENGTH, 0, keep_alive=True, client_version="1.1")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


@pytest.mark.parametrize("status", [100, 103, 204])
def test_a_1xx_or_204_never_carries_the_upstreams_content_length(status: int):
    """RFC 9110 §8.6: a server must not send Content-Length in a 1xx or 204 response."""
    head = serialize_response_head(status, b"", [], Framing.NONE, 5, keep_alive=True, client_version="1.1")
    assert b"content-length" not in head.lower()


@pytest.mark.parametrize("status", [200, 304])
def test_a_304_or_a_response_to_head_keeps_the_upstreams_content_length(status: int):
    """RFC 9110 §8.6 allows it there: the length a 200 to a GET would have had. (A response to HEAD
    is framed NONE whatever its status.)"""
    head = serialize_response_head(status, b"", [], Framing.NONE, 5, keep_alive=True, client_version="1.1")
    assert b"\r\nContent-Length: 5\r\n" in head


def test_reason_phrases():
    assert reason_phrase(404) == b"Not Found"
    assert reason_phrase(431) == b"Request Header Fields Too Large"
    assert reason_phrase(299) == b"Unknown"


def test_chunk_encoding():
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_last_chunk(None) == b"0\r\n\r\n"
    assert encode_last_chunk([]) == b"0\r\n\r\n"
    assert encode_last_chunk([(b"X-Sum", b"1"), (b"X-B", b"2")]) == b"0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n"


# -- generated messages ---------------------------------------------------------------------------

names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(lambda s: "x-" + s)
values = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$%&'*+./:;<=>?@[]^_`{|}~", max_size=20
).map(str.strip)
headers = st.lists(st.tuples(names, values), max_size=5).map(
    lambda hs: [(n.encode(), v.encode()) for n, v in hs]
)
chunk_lists = st.lists(st.binary(min_size=1, max_size=50), max_size=5)


@dataclass(frozen=True)
class Message:
    """A request or response as a reader should see it, whatever the split of its bytes."""

    start: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, Message]:
    method = draw(st.sampled_from(METHODS))
    target = "/" + draw(st.text("abcdefghij/?=&%0123456789", max_size=20))
    hs = [(b"Host", b"svc"), *draw(headers)]
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    trailers: list[tuple[bytes, bytes]] = []
    if framing == "none":
        body_parts: list[bytes] = []
        wire = serialize_request_head(method, target, hs, Framing.NONE, None)
    elif framing == "length":
        body_parts = [draw(st.binary(max_size=100))]
        wire = serialize_request_head(method, target, hs, Framing.LENGTH, len(body_parts[0])) + body_parts[0]
    else:
        body_parts = draw(chunk_lists)
        trailers = draw(headers)
        wire = serialize_request_head(method, target, hs, Framing.CHUNKED, None)
        wire += b"".join(encode_chunk(c) for c in body_parts) + encode_last_chunk(trailers)
    return wire, Message(f"{method} {target}", tuple(hs), b"".join(body_parts), tuple(trailers), True)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, Message]:
    status = draw(st.sampled_from([200, 201, 404, 500, 503]))
    hs = draw(headers)
    chunked = draw(st.booleans())
    close = draw(st.booleans())
    parts = draw(chunk_lists)
    trailers = draw(headers) if chunked else []
    framing = Framing.CHUNKED if chunked else Framing.LENGTH
    body = b"".join(parts)
    wire = serialize_response_head(
        status, b"", hs, framing, len(body), keep_alive=not close, client_version="1.1"
    )
    wire += (b"".join(encode_chunk(c) for c in parts) + encode_last_chunk(trailers)) if chunked else body
    return wire, Message(str(status), tuple(hs), body, tuple(trailers), not close)


# -- the listener reading requests ----------------------------------------------------------------


class _Collect:
    """A body sink that resolves a future with (bytes, trailers) at the end."""

    def __init__(self, done: asyncio.Future[tuple[bytes, Trailers]]) -> None:
        self._done = done
        self._parts: list[bytes] = []

    def on_data(self, data: bytes) -> None:
        self._parts.append(data)

    def on_end(self, trailers: Trailers | None) -> None:
        self._done.set_result((b"".join(self._parts), trailers or []))

    def on_error(self, exc: BaseException) -> None:
        self._done.set_exception(exc)


class RecordingService:
    """Stands behind the listener: reads each request's whole body, then answers 200 with its target."""

    def __init__(self) -> None:
        self.seen: list[Message] = []
        self._count = asyncio.Event()

    async def __call__(self, ctx: RouteContext) -> Response:
        request = ctx.request
        done: asyncio.Future[tuple[bytes, Trailers]] = asyncio.get_running_loop().create_future()
        request.body.attach(_Collect(done))
        body, trailers = await done
        self.seen.append(
            Message(
                f"{request.method} {request.target}",
                tuple(request.headers),
                body,
                tuple(trailers),
                request.keep_alive,
            )
        )
        self._count.set()
        return Response(200, b"OK", [], Body.of(request.target.encode()))

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.seen) < count:
                self._count.clear()
                await self._count.wait()


async def serve(
    pieces: list[bytes], *, expect: int, limits: ListenerLimits | None = None
) -> tuple[list[Message], bytes]:
    """Feed `pieces` to a listener connection; the requests its service saw, and what it wrote back."""
    service = RecordingService()
    listener = Listener(service, limits or ListenerLimits())
    protocol = listener.protocol_factory()
    transport = connect(protocol)
    for piece in pieces:
        protocol.data_received(piece)
    await service.wait_for(expect)
    await _settle()
    written = transport.take()
    transport.peer_closes()
    return service.seen, written


async def _settle() -> None:
    """Let ready callbacks run (the listener writes a response a few loop turns after its service returns)."""
    for _ in range(10):
        await asyncio.sleep(0)


@given(batch=st.lists(requests(), min_size=1, max_size=4), data=st.data())
@settings(max_examples=60, deadline=None)
def test_listener_reads_the_same_requests_however_the_bytes_are_split(batch, data):
    wire = b"".join(w for w, _ in batch)
    expected = [m for _, m in batch]
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    for pieces in (whole(wire), bytewise(wire), cut(wire, points)):

        async def go(pieces: list[bytes] = pieces) -> tuple[list[Message], bytes]:
            return await serve(pieces, expect=len(expected))

        seen, written = run(go)
        assert seen == expected
        assert written.count(b"HTTP/1.1 200 OK\r\n") == len(expected)


@pytest.mark.parametrize("split", list(SPLITS))
async def test_listener_leaves_a_partial_next_request_unanswered(split):
    first = b"POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"
    partial = b"GET /b HTTP/1.1\r\nHost: svc\r\n"
    seen, written = await serve(SPLITS[split](first + partial), expect=1)
    assert [m.start for m in seen] == ["POST /a"]
    assert written.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("split", list(SPLITS))
async def test_listener_refuses_conflicting_framing_however_split(split):
    wire = b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    service = RecordingService()
    listener = Listener(service, ListenerLimits())
    protocol = listener.protocol_factory()
    transport = connect(protocol)
    for piece in SPLITS[split](wire):
        protocol.data_received(piece)
    await _settle()
    assert service.seen == []
    assert transport.take().startswith(b"HTTP/1.1 400 Bad Request\r\nl5d-err: malformed request: ")
    assert transport.closing


@pytest.mark.parametrize("split", list(SPLITS))
async def test_header_limit_holds_however_the_head_is_split(split):
    limits = ListenerLimits(max_header_bytes=1024)
    wire = b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n"
    service = RecordingService()
    listener = Listener(service, limits)
    protocol = listener.protocol_factory()
    transport = connect(protocol)
    for piece in SPLITS[split](wire):
        if transport.closing:
            break
        protocol.data_received(piece)
    await _settle()
    assert service.seen == []
    assert transport.take().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_listener_answers_http10_without_keep_alive_and_closes():
    seen, written = await serve([b"GET /old HTTP/1.0\r\nHost: svc\r\n\r\n"], expect=1)
    assert seen[0].keep_alive is False
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in written


async def test_listener_keeps_http10_keep_alive():
    seen, written = await serve(
        [b"GET /old HTTP/1.0\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n"], expect=1
    )
    assert seen[0].keep_alive is True
    assert b"Connection: keep-alive\r\n" in written


# -- the upstream connection reading responses ----------------------------------------------------


@dataclass
class Exchange:
    response: Response
    body: bytes
    trailers: Trailers
    releases: list[bool]
    transport: FakeTransport


async def exchange(pieces: list[bytes], *, method: str = "GET", then_close: bool = False) -> Exchange:
    releases: list[bool] = []
    conn = UpstreamConnection("up:80", lambda c, reusable: releases.append(reusable), lambda c: None)
    transport = connect(conn)
    request = Request(method, "/", "1.1", [], Body.empty())
    future = conn.send(request, serialize_request_head(method, "/", [], Framing.NONE, None))
    for piece in pieces:
        conn.data_received(piece)
    if then_close:
        transport.peer_closes()
    response = await asyncio.wait_for(future, 5)
    done: asyncio.Future[tuple[bytes, Trailers]] = asyncio.get_running_loop().create_future()
    response.body.attach(_Collect(done))
    body, trailers = await asyncio.wait_for(done, 5)
    return Exchange(response, body, trailers, releases, transport)


@given(message=responses(), data=st.data())
@settings(max_examples=60, deadline=None)
def test_upstream_connection_reads_the_same_response_however_split(message, data):
    wire, expected = message
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    for pieces in (whole(wire), bytewise(wire), cut(wire, points)):

        async def go(pieces: list[bytes] = pieces) -> Exchange:
            return await exchange(pieces)

        ex = run(go)
        got = Message(
            str(ex.response.status),
            tuple(ex.response.headers),
            ex.body,
            tuple(ex.trailers),
            ex.releases == [True],
        )
        assert got == expected


@pytest.mark.parametrize("split", list(SPLITS))
async def test_response_without_length_is_read_until_close_and_not_reused(split):
    ex = await exchange(SPLITS[split](b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nuntil the end"), then_close=True)
    assert ex.body == b"until the end"
    assert ex.response.body.length is None
    assert ex.releases == [False]


async def test_reset_before_the_end_of_an_until_close_body_fails_it():
    releases: list[bool] = []
    conn = UpstreamConnection("up:80", lambda c, reusable: releases.append(reusable), lambda c: None)
    transport = connect(conn)
    future = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\npartial")
    response = await future
    done: asyncio.Future[tuple[bytes, Trailers]] = asyncio.get_running_loop().create_future()
    response.body.attach(_Collect(done))
    transport.peer_closes(ConnectionResetError("reset"))
    with pytest.raises(Exception, match="reset the connection mid-response"):
        await done
    assert releases == [False]


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_end_at_the_head_even_with_a_content_length(status):
    ex = await exchange([b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status])
    assert ex.body == b"" and ex.response.content_length == 10
    assert ex.releases == [True]


async def test_head_response_ends_at_its_head_and_the_connection_reads_the_next_response():
    releases: list[bool] = []
    conn = UpstreamConnection("up:80", lambda c, reusable: releases.append(reusable), lambda c: None)
    connect(conn)
    head = conn.send(Request("HEAD", "/", "1.1", [], Body.empty()), b"HEAD / HTTP/1.1\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    response = await head
    assert response.body.ended and response.content_length == 10
    assert releases == [True]
    get = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    second = await get
    assert second.status == 200 and second.content_length == 2
    assert releases == [True, True]


@pytest.mark.parametrize("split", list(SPLITS))
async def test_interim_responses_are_skipped(split):
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    ex = await exchange(SPLITS[split](wire))
    assert (ex.response.status, ex.body) == (200, b"ok")
    assert ex.response.headers == []


async def test_hop_by_hop_and_connection_named_fields_are_dropped_from_responses():
    ex = await exchange(
        [
            b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\n"
            b"Content-Length: 0\r\n\r\n"
        ]
    )
    assert ex.response.headers == [(b"X-Kept", b"2")]
    assert ex.releases == [True]


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/9.9 200 OK\r\n\r\n",
    ],
)
async def test_malformed_response_fails_the_exchange_and_the_connection(wire):
    releases: list[bool] = []
    conn = UpstreamConnection("up:80", lambda c, reusable: releases.append(reusable), lambda c: None)
    transport = connect(conn)
    future = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(wire)
    try:
        response = await future
    except Exception as exc:  # the head itself was bad
        assert "malformed response from up:80" in str(exc)
    else:
        assert response.body.error is not None
        assert "malformed response from up:80" in str(response.body.error)
    assert releases == [False]
    assert transport.aborted


def test_httptools_is_strict_about_smuggling():
    """The listener relies on llhttp's strict mode for these; a lenient build would be a security bug."""
    for wire in (
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
    ):
        parser = httptools.HttpRequestParser(object())
        with pytest.raises(httptools.HttpParserError):
            parser.feed_data(wire)
