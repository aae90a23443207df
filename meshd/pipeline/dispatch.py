"""Dispatch: send one attempt to one endpoint over a pooled keep-alive connection.

This is where the pipeline hands over to the wire: the client (meshd/client.py) is the last step
that holds the request's `RouteContext`; these functions take only the wire `Request`, which
is what `UpstreamConnection.send` writes (meshd.pool knows nothing of the pipeline).

The request head is serialised per attempt (the bound destination differs between attempts);
`l5d-dst-service` and `l5d-dst-client` are added here (their lines come serialised from the
client, which keeps them per logical name). If the pool handed out a reused
connection that the upstream had closed in the meantime (a race with its keep-alive timeout:
closed before any response byte), an idempotent request whose body is still replayable is sent
once more on a fresh connection, transparently. Cancellation (client gone, timeout) aborts the
connection, which is then never reused.
"""

from __future__ import annotations

import asyncio
from typing import Final

from meshd.http.framing import request_framing, serialize_request_head
from meshd.http.headers import L5D_DST_CLIENT, L5D_DST_SERVICE
from meshd.http.messages import Request, Response
from meshd.pool.connection import StaleConnection, UpstreamConnection
from meshd.pool.pool import Pool

#: RFC 9110 §9.2.2 idempotent methods: safe to send again when the first try surely failed.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def dst_lines(logical_name: str, dst_client: bytes) -> bytes:
    """The `l5d-dst-service` and `l5d-dst-client` header lines of an attempt, serialised."""
    return b"%s: %s\r\n%s: %s\r\n" % (L5D_DST_SERVICE, logical_name.encode("latin-1"), L5D_DST_CLIENT, dst_client)


def request_head(request: Request, dst: bytes) -> bytes:
    """The request head for one attempt, with the `dst_lines` of its destination added."""
    body = request.body
    return serialize_request_head(
        request.method,
        request.target,
        request.headers,
        request_framing(body),
        body.length,
        dst,
    )


def can_resend(request: Request) -> bool:
    """After a stale pooled connection: may the request go again on a fresh one?"""
    return request.method in IDEMPOTENT and request.body.replayable


async def dispatch(pool: Pool, request: Request, head: bytes, conn: UpstreamConnection | None = None) -> Response:
    """Send one attempt on `conn` (or a connection from the endpoint's `pool`)."""
    if conn is None:
        conn = pool.try_acquire_idle()
        if conn is None:
            conn = await pool.acquire()
    try:
        return await conn.send(request, head)
    except StaleConnection:
        if not can_resend(request):
            raise
    except asyncio.CancelledError:
        conn.abort()
        raise
    return await resend(pool, request, head)


async def resend(pool: Pool, request: Request, head: bytes) -> Response:
    """Send again on a fresh connection (the pooled one was closed by the upstream unseen)."""
    request.body.rewind()
    conn = await pool.acquire(fresh=True)
    try:
        return await conn.send(request, head)
    except asyncio.CancelledError:
        conn.abort()
        raise
