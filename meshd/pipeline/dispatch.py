"""Dispatch: send one attempt to one endpoint over a pooled keep-alive connection.

The request head is serialised per attempt (the bound destination differs between attempts);
`l5d-dst-service` and `l5d-dst-client` are added here. If the pool handed out a reused
connection that the upstream had closed in the meantime (a race with its keep-alive timeout:
closed before any response byte), an idempotent request whose body is still replayable is sent
once more on a fresh connection, transparently. Cancellation (client gone, timeout) aborts the
connection, which is then never reused.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from meshd.http.framing import request_framing, serialize_request_head
from meshd.http.headers import L5D_DST_CLIENT, L5D_DST_SERVICE
from meshd.http.messages import Request, Response
from meshd.pool.connection import StaleConnection

if TYPE_CHECKING:
    from meshd.client import Endpoint

#: RFC 9110 §9.2.2 idempotent methods: safe to send again when the first try surely failed.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


async def dispatch(endpoint: Endpoint, request: Request, dst_client: bytes) -> Response:
    pool = endpoint.pool
    body = request.body
    head = serialize_request_head(
        request.method,
        request.target,
        request.headers,
        request_framing(body),
        body.length,
        ((L5D_DST_SERVICE, request.logical_name.encode("latin-1")), (L5D_DST_CLIENT, dst_client)),
    )
    conn = pool.try_acquire_idle()
    if conn is None:
        conn = await pool.acquire()
    try:
        return await conn.send(request, head)
    except StaleConnection:
        if request.method not in IDEMPOTENT or not body.replayable:
            raise
    except asyncio.CancelledError:
        conn.abort()
        raise
    body.rewind()
    conn = await pool.acquire(fresh=True)
    try:
        return await conn.send(request, head)
    except asyncio.CancelledError:
        conn.abort()
        raise
