"""The admin server's HTTP/1.1 layer (meshd/admin/web.py) over real sockets: routing, keep-alive,
pipelining, HEAD, static files, limits and a failing handler."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest

from meshd.admin import web
from tests.support.client import RawConnection
from tests.support.waiting import wait_until

COUNTER: web.AppKey[list[str]] = web.AppKey("seen")
RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release")


async def echo(request: web.Request) -> web.Response:
    request.app[COUNTER].append(request.path)
    return web.Response(text=f"{request.method} {request.path} q={request.query.get('q')} from={request.remote}\n")


async def slow(request: web.Request) -> web.Response:
    request.app[COUNTER].append(request.path)
    await request.app[RELEASE].wait()  # held until the test has sent the request behind it
    return web.Response(text="slow\n")


async def posted(request: web.Request) -> web.Response:
    return web.Response(body=request.body[::-1], content_type="application/json", status=201)


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


@pytest.fixture
async def admin(tmp_path: pathlib.Path) -> AsyncIterator[tuple[int, web.Application]]:
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("let x = 1;\n")
    (tmp_path / "secret.txt").write_text("not served\n")
    app = web.Application()
    app[COUNTER] = []
    app[RELEASE] = asyncio.Event()
    app.add_routes([web.get("/echo", echo), web.get("/slow", slow), web.post("/post", posted),
                    web.get("/broken", broken)])
    app.router.add_static("/static/", static)
    server = await web.serve_tcp(app, "127.0.0.1", 0)
    try:
        yield server.port, app
    finally:
        await server.close()


async def test_keep_alive_query_and_remote(admin: tuple[int, web.Application]) -> None:
    conn = await RawConnection.open(admin[0])
    first = await conn.request("GET", "/echo?q=a&q=b", host="localhost")
    second = await conn.request("GET", "/echo?x=1", host="localhost")
    assert first.status == 200 and first.body == b"GET /echo q=a from=127.0.0.1\n"
    assert first.header("content-type") == "text/plain; charset=utf-8"
    assert second.body == b"GET /echo q=None from=127.0.0.1\n"
    await conn.close()


async def test_pipelined_answers_keep_request_order(admin: tuple[int, web.Application]) -> None:
    conn = await RawConnection.open(admin[0])
    await conn.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = admin[1][COUNTER]
    await wait_until(lambda: seen == ["/slow"], timeout=5, message="the slow handler to start")
    admin[1][RELEASE].set()
    assert (await conn.read_response()).body == b"slow\n"
    assert (await conn.read_response()).body.startswith(b"GET /echo")
    await conn.close()


async def test_head_post_and_errors(admin: tuple[int, web.Application]) -> None:
    conn = await RawConnection.open(admin[0])
    head = await conn.request("HEAD", "/echo", host="a")
    assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
    created = await conn.request("POST", "/post", body=b'"ab"', host="a")
    assert (created.status, created.body, created.header("content-type")) == (201, b'"ba"', "application/json")
    assert (await conn.request("POST", "/echo", host="a")).status == 405
    assert (await conn.request("GET", "/nowhere", host="a")).status == 404
    failed = await conn.request("GET", "/broken", host="a")
    assert (failed.status, failed.body) == (500, b"500: Internal Server Error")
    assert (await conn.request("GET", "/echo", host="a")).status == 200  # the connection survived
    await conn.close()


async def test_static_files_and_no_way_out(admin: tuple[int, web.Application]) -> None:
    conn = await RawConnection.open(admin[0])
    script = await conn.request("GET", "/static/app.js", host="a")
    assert (script.status, script.body, script.header("content-type")) == (200, b"let x = 1;\n", "text/javascript")
    for target in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/", "/static/missing.js"):
        assert (await conn.request("GET", target, host="a")).status == 404, target
    await conn.close()


async def test_connection_close_is_honoured(admin: tuple[int, web.Application]) -> None:
    conn = await RawConnection.open(admin[0])
    resp = await conn.request("GET", "/echo", [("Connection", "close")], host="a")
    assert resp.header("connection") == "close"
    assert await conn.is_closed_by_peer()
    await conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (web.MAX_HEAD_BYTES + 1) + b"\r\n\r\n", 431),
        (b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (web.MAX_BODY_BYTES + 1)
         + b"y" * (web.MAX_BODY_BYTES + 1), 413),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Endless: " + b"z" * (web.MAX_HEAD_BYTES + web.MAX_BODY_BYTES + 1), 413),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
    ids=["head too large", "body too large", "unfinished head too large", "garbage"],
)
async def test_bad_or_oversized_requests_are_answered_and_closed(
    admin: tuple[int, web.Application], request_bytes: bytes, status: int
) -> None:
    conn = await RawConnection.open(admin[0])
    conn.writer.write(request_bytes)
    resp = await conn.read_response()
    assert resp.status == status and resp.header("connection") == "close"
    assert await conn.is_closed_by_peer()
    await conn.close()


async def test_close_stops_listening_and_closes_idle_connections(tmp_path: pathlib.Path) -> None:
    app = web.Application()
    app[COUNTER] = []
    app.add_routes([web.get("/echo", echo)])
    server = await web.serve_unix(app, str(tmp_path / "admin.sock"))
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "admin.sock"))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    assert body == b"GET /echo q=None from=\n"  # no peer address on a Unix socket, as aiohttp
    await asyncio.wait_for(server.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_catch_all_route_and_the_unix_socket_client(tmp_path: pathlib.Path) -> None:
    async def exact(request: web.Request) -> web.Response:
        return web.Response(text="exact")

    async def rest(request: web.Request) -> web.Response:
        return web.Response(body=request.path_qs.encode(), content_type="text/x-rest")

    app = web.Application()
    app.add_routes([web.get("/admin/ping", exact), web.get("/{tail:.*}", rest)])
    socket_path = str(tmp_path / "worker.sock")
    server = await web.serve_unix(app, socket_path)
    try:
        assert await web.fetch_unix(socket_path, "/admin/ping") == (200, b"exact", "text/plain; charset=utf-8")
        assert await web.fetch_unix(socket_path, "/admin/routes?x=1") == (200, b"/admin/routes?x=1", "text/x-rest")
    finally:
        await server.close()
    with pytest.raises(OSError):
        await web.fetch_unix(socket_path, "/admin/ping")  # nobody listens any more


def test_routes_with_other_patterns_are_refused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="")

    with pytest.raises(ValueError, match="exact paths"):
        web.Application().add_routes([web.get("/items/{id}", handler)])
