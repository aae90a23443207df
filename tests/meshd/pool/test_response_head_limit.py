"""`client.maxResponseHeaderBytes` on an upstream connection fed in pieces: a head under the limit
passes however many reads it takes; one over it fails. The real-socket cases (a head over the
limit, one endless header) are in tests/integration/test_failures.py."""

from __future__ import annotations

import asyncio

import pytest

from meshd.http.body import Body
from meshd.http.messages import Request, Response
from meshd.pool.connection import UpstreamConnection
from tests.support.transport import connect

LIMIT = 2048


def head_of(size: int) -> bytes:
    """A 200 response head of about `size` bytes (100-byte header lines) and a 2-byte body."""
    lines = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 84) for i in range(size // 100))
    return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


async def feed_in_pieces(data: bytes, piece: int) -> asyncio.Future[Response]:
    conn = UpstreamConnection("up:80", lambda c, reusable: None, lambda c: None, max_head_bytes=LIMIT)
    connect(conn)
    future = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    for i in range(0, len(data), piece):
        conn.data_received(data[i:i + piece])
    return future


@pytest.mark.parametrize("piece", [1, 37, 150, 1000, 100_000])
async def test_a_head_under_the_limit_passes_in_any_number_of_reads(piece: int) -> None:
    data = head_of(1800)
    assert len(data) < LIMIT
    response = await asyncio.wait_for(await feed_in_pieces(data, piece), 1)
    assert response.status == 200 and len(response.headers) == 18


@pytest.mark.parametrize("piece", [1, 37, 150, 1000, 100_000])
async def test_a_head_over_the_limit_fails_in_any_number_of_reads(piece: int) -> None:
    future = await feed_in_pieces(head_of(2200), piece)
    with pytest.raises(Exception, match=r"response head from up:80 exceeds 2048 bytes \(maxResponseHeaderBytes\)"):
        await asyncio.wait_for(future, 1)
