"""HTTP/1.1 connections that come and go leave no reference cycles behind, on either side.

Why it matters: meshd runs with a high threshold for the cyclic garbage collector's first
generation and freezes its start-up heap (meshd/daemon.py `_tune_gc`), so anything left in a
reference cycle is found only by a full collection, which at that threshold comes rarely. A
connection that left its protocol, transport, timers and parser in a cycle when it closed kept
them (some 4 KB per connection) until then: a burst of 800 short connections grew the process by
about 3 MB each time, and the 30-minute soak (whose stalls make its load generator open and close
hundreds of connections) ended 25% bigger than it started. Freed by their reference counts,
they are gone the moment the connection is. This test counts what the collector would have had
to find, after connections closed by the client, by meshd's idle pool and by the upstream.
"""

from __future__ import annotations

import collections
import gc

from tests.support.client import RawConnection
from tests.support.h2peer import H2Client, H2Server, echo
from tests.support.upstreams import Received, Reply

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _meshd_garbage() -> collections.Counter[str]:
    """meshd's objects among what a collection finds (the test's own client and upstream, which
    leave cycles of their own, are not meshd's)."""
    gc.collect()
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
        if type(o).__module__.split(".")[0] in ("meshd", "balancers", "routing")
    )


async def test_connections_closed_by_either_side_leave_nothing_for_the_cycle_collector(make_mesh, make_upstream):
    async def closing(req: Received) -> Reply:
        # the upstream closes every second connection after its reply: meshd's pool sees both ends
        return Reply(200, [], b"ok", close=req.target == "/close")

    up = await make_upstream(closing)
    mesh = await make_mesh()
    mesh.register("accounts", up.address_line)

    async def one(target: str) -> None:
        conn = await RawConnection.open(mesh.port)
        try:
            assert (await conn.request("GET", target, host="accounts")).status == 200
        finally:
            await conn.close()

    for target in ("/", "/close"):  # warm: the binding, the balancer, the pool's first state
        await one(target)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(20):
            await one("/close" if i % 2 else "/")
        left = _meshd_garbage()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # each side's connection objects: the listener's protocol and codec, the pool's connection
    # and codec, the slow path's task frame (before: 20 of each downstream, 10 upstream)
    assert left == collections.Counter()


async def test_http2_connections_that_close_leave_nothing_for_the_cycle_collector(make_mesh) -> None:
    # the data path's codec (nghttp2, the default where it is built: always under CI). The `h2`
    # reference codec is left out: the h2 library's own H2Connection is a cycle (its frame
    # dispatch table holds its bound methods), so a connection on it waits for the collector.
    up = await H2Server(echo).start()
    mesh = await make_mesh(protocol="h2")
    mesh.register("accounts", up.address_line)

    async def one() -> None:
        client = await H2Client.open(mesh.port)
        try:
            result = await client.request("POST", "/a", "accounts", headers=GRPC, body=b"\0\0\0\0\1x")
            assert result.status == 200
        finally:
            client.close()

    try:
        await one()  # warm
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(10):
                await one()
            left = _meshd_garbage()
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == collections.Counter()
    finally:
        await up.close()
