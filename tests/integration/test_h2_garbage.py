"""A unary HTTP/2 exchange through meshd leaves no reference cycles behind.

Why it matters: meshd runs with a high first-generation threshold for the cyclic garbage
collector (meshd/daemon.py), so cyclic garbage is swept in passes over tens of thousands of
objects. When each HTTP/2 stream left a few dozen objects in cycles (a stream, its request and
response, their bodies, the body's producer pointing back at the stream), those passes came
every second or so at 1,000 calls/s and held every call in flight for milliseconds: the fixed-
rate gRPC benchmark's p99 was +10.7 ms over direct. Freed by their reference counts, they cost
nothing of the kind. This test counts what the collector would have had to find.
"""

from __future__ import annotations

import collections
import gc

import pytest

from tests.support.h2peer import H2Client, H2Server, echo

pytestmark = pytest.mark.usefixtures("h2_codec")

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


async def test_a_unary_exchange_leaves_no_meshd_object_in_a_reference_cycle(make_mesh):
    up = await H2Server(echo).start()
    mesh = await make_mesh(protocol="h2")
    mesh.register("accounts", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        for _ in range(3):  # warm: connections, caches, the balancer's first state
            assert (await client.request("POST", "/a", "accounts", headers=GRPC, body=b"\0\0\0\0\1x")).status == 200
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                result = await client.request("POST", "/a", "accounts", headers=GRPC, body=b"\0\0\0\0\1x")
                assert result.status == 200
                assert result.body == b"\0\0\0\0\1x"
            gc.collect()
            left = collections.Counter(
                f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                if type(o).__module__.startswith("meshd")
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == collections.Counter()
    finally:
        client.close()
        await up.close()
