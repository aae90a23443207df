"""The HTTP/2 fast path (meshd/h2fast.py): which streams it serves without a task, and how each kind
of stream it cannot finish goes on in the coroutine path.

Every test runs with the fast path on and off (`MESHD_FAST_PATH=0`) and on both HTTP/2 codecs:
what the client and the upstream see, and the counters, are asserted the same on both paths; only
the fast path's own counters (`H2FastPath.taken`, `handed_over`) and the stream tasks differ.

The scripted peers write a unary call's frames in one write (HEADERS + DATA, and HEADERS + DATA +
trailers back), as gRPC clients and servers do, so that meshd reads each in one read.
"""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshd.grpc.timeout import parse_timeout
from meshd.h2fast import H2FastPath
from meshd.h2server import STREAM_TASK, H2ServerProtocol, H2Stream
from meshd.http2.convert import request_from_h2
from meshd.listener import ConnectionClosed
from meshd.pipeline.context import RouteContext
from routing.path import Path
from tests.support.h2peer import H2Client, H2Reply, H2Server, StreamResult
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("h2_codec")

GRPC_HEADERS = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
MESSAGE = b"\x00\x00\x00\x00\x05hello"

MakeServer = Callable[..., Awaitable[H2Server]]


@pytest.fixture
async def make_h2_upstream() -> AsyncIterator[MakeServer]:
    servers: list[H2Server] = []

    async def make(handler: Callable[[H2Reply], Awaitable[None]], **kwargs: object) -> H2Server:
        server = await H2Server(handler, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


def answer(reply: H2Reply, status: int = 0, body: bytes = MESSAGE) -> None:
    """A unary gRPC answer in one write: HEADERS, DATA, trailers with `grpc-status`."""
    h2c = reply._conn.h2
    h2c.send_headers(reply.sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    h2c.send_data(reply.sid, body)
    h2c.send_headers(reply.sid, [(b"grpc-status", str(status).encode())], end_stream=True)
    reply._conn.flush()


async def ok(reply: H2Reply) -> None:
    answer(reply)


def call(client: H2Client, path: str = "/pkg.Svc/Call", headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """A unary gRPC request in one write: HEADERS then DATA with END_STREAM."""
    sid = client.h2.get_next_available_stream_id()
    client.queues[sid] = asyncio.Queue()
    block = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", path.encode())]
    client.h2.send_headers(sid, block + GRPC_HEADERS + (headers or []))
    client.h2.send_data(sid, MESSAGE, end_stream=True)
    client.flush()
    return sid


def fast_of(mesh) -> H2FastPath | None:
    fast = mesh.daemon._h2_fast.get(mesh.daemon.routers[0].label)
    assert fast is None or isinstance(fast, H2FastPath)
    return fast


def stream_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == STREAM_TASK)


async def grpc_mesh(make_mesh, **service: object):
    return await make_mesh(
        protocol="h2", identifier={"kind": "grpc"},
        service={"responseClassifier": {"kind": "grpc.default"}, **service},
    )


async def test_a_unary_call_runs_without_a_task_with_every_feature_applied(make_mesh, make_h2_upstream, path_mode):
    hold = asyncio.Event()

    async def held(reply: H2Reply) -> None:
        await hold.wait()
        answer(reply)

    up = await make_h2_upstream(held)
    mesh = await grpc_mesh(make_mesh, addSuccessClassHeader=True)
    mesh.register("pkg.Svc", up.address_line)
    client = await H2Client.open(mesh.port)
    hold.set()
    first = await client.response(call(client))  # binds the name, dials the upstream
    assert first.status == 200
    hold.clear()
    fast = fast_of(mesh)
    assert (fast is not None) == (path_mode == "fast")
    taken = fast.taken if fast is not None else 0
    handed = fast.handed_over if fast is not None else 0

    sid = call(client)
    await wait_until(lambda: len(up.received) == 2, message="the second call at the upstream")
    # while the upstream holds it: a task on the slow path, none on the fast one
    assert stream_tasks() == (0 if path_mode == "fast" else 1)
    hold.set()
    result = await client.response(sid)
    assert result.status == 200 and result.body == MESSAGE
    assert result.trailers == [(b"grpc-status", b"0")]
    assert result.header(b"l5d-success-class") == b"1.0"
    assert result.header(b"via") == b"2 meshd"
    got = up.received[1]
    assert got.header(b"l5d-dst-service") == b"/svc/pkg.Svc"
    assert got.header(b"te") == b"trailers" and got.body == MESSAGE
    if fast is not None:
        assert (fast.taken - taken, fast.handed_over - handed) == (1, 0)
    # the same counters on both paths: the request, its grpc-status, the endpoint's success
    router = mesh.daemon.routers[0]
    assert router.grpc_stats is not None
    assert router.grpc_stats.responses[("/svc/pkg.Svc", "OK")] == 2
    cl = router.clients[Path.read("/#/fs/pkg.Svc")]
    assert [n.pending for n in cl.balancer.nodes()] == [0]
    assert cl.inflight == 0
    assert router.admission.inflight == 0
    client.close()


async def test_unavailable_from_one_replica_is_retried_on_another(make_mesh, make_h2_upstream, path_mode):
    async def unavailable(reply: H2Reply) -> None:
        answer(reply, status=14, body=b"")

    bad = await make_h2_upstream(unavailable)
    good = await make_h2_upstream(ok)
    mesh = await grpc_mesh(make_mesh)
    mesh.register("pkg.Svc", bad.address_line, good.address_line)
    client = await H2Client.open(mesh.port)
    results = [await client.response(call(client)) for _ in range(8)]
    assert all(r.status == 200 and r.trailers == [(b"grpc-status", b"0")] for r in results)
    assert bad.received  # the balancer sent some there; each was retried on the good one
    assert len(good.received) == 8
    fast = fast_of(mesh)
    if fast is not None:
        assert fast.handed_over >= len(bad.received)  # each UNAVAILABLE went on to the retry loop
    client.close()


async def test_a_client_reset_while_the_upstream_holds_the_call_resets_the_upstream_stream(
    make_mesh, make_h2_upstream, path_mode
):
    hold = asyncio.Event()

    async def held(reply: H2Reply) -> None:
        if reply.request.path == "/pkg.Svc/Hold":
            await hold.wait()
        answer(reply)

    up = await make_h2_upstream(held)
    mesh = await grpc_mesh(make_mesh)
    mesh.register("pkg.Svc", up.address_line)
    client = await H2Client.open(mesh.port)
    assert (await client.response(call(client))).status == 200
    sid = call(client, "/pkg.Svc/Hold")
    await wait_until(lambda: len(up.received) == 2, message="the call at the upstream")
    client.reset(sid)
    await wait_until(lambda: len(up.resets) == 1, message="the upstream stream reset")
    assert up.resets[0][1] == 8  # CANCEL
    router = mesh.daemon.routers[0]
    cl = router.clients[Path.read("/#/fs/pkg.Svc")]
    await wait_until(lambda: cl.inflight == 0 and router.admission.inflight == 0, message="attempt ended")
    assert [n.pending for n in cl.balancer.nodes()] == [0]
    hold.set()
    # the connection goes on serving
    assert (await client.response(call(client))).status == 200
    client.close()


async def test_calls_it_cannot_finish_go_on_in_the_coroutine_path(make_mesh, make_h2_upstream, path_mode):
    async def split(reply: H2Reply) -> None:
        # the head and message first, the trailers once a task holds the answer (the retry loop
        # waits for them before deciding)
        reply.head(200, [(b"content-type", b"application/grpc")])
        await reply.data(MESSAGE)
        await wait_until(lambda: stream_tasks() >= 1, message="a task holding the answer")
        reply.trailers([(b"grpc-status", b"0")])

    async def route(reply: H2Reply) -> None:
        if reply.request.path.endswith("/Split"):
            await split(reply)
        else:
            answer(reply)

    up = await make_h2_upstream(route)
    mesh = await grpc_mesh(make_mesh)
    mesh.register("pkg.Svc", up.address_line)
    client = await H2Client.open(mesh.port)
    assert (await client.response(call(client))).status == 200
    fast = fast_of(mesh)
    handed = fast.handed_over if fast is not None else 0

    # grpc-timeout: the timeouts stage runs it (and passes the time left on)
    timed = await client.response(call(client, headers=[(b"grpc-timeout", b"5S")]))
    assert timed.status == 200
    sent = up.received[-1].header(b"grpc-timeout")
    left = parse_timeout(sent) if sent is not None else None
    assert left is not None and 0 < left < 5_000_000_000  # reduced by the time spent in meshd
    # an answer whose trailers come in a later read
    later = await client.response(call(client, "/pkg.Svc/Split"))
    assert later.status == 200 and later.body == MESSAGE and later.trailers == [(b"grpc-status", b"0")]
    # a streaming request (its body still open when its head's read is handled): a task at once
    heads = len(up.heads)
    sid = client.start("POST", "/pkg.Svc/Stream", "svc", headers=GRPC_HEADERS, end_stream=False)
    # the request's head goes upstream before its body exists: it streams
    await wait_until(lambda: len(up.heads) == heads + 1, message="the streaming call's head upstream")
    client.send(sid, MESSAGE, end_stream=True)
    streamed: StreamResult = await client.response(sid)
    assert streamed.status == 200 and streamed.body == MESSAGE
    if fast is not None:
        assert fast.handed_over - handed == 2  # the grpc-timeout and the split answer
    client.close()


async def test_a_unary_call_leaves_no_meshd_object_in_a_reference_cycle(make_mesh, make_h2_upstream, path_mode):
    # as tests/integration/test_h2_garbage.py, with the gRPC identifier and classifier and both
    # peers writing a call's frames at once (the shape the fast path serves)
    up = await make_h2_upstream(ok)
    mesh = await grpc_mesh(make_mesh)
    mesh.register("pkg.Svc", up.address_line)
    client = await H2Client.open(mesh.port)
    for _ in range(3):
        assert (await client.response(call(client))).status == 200
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            assert (await client.response(call(client))).body == MESSAGE
        gc.collect()
        left = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage if type(o).__module__.startswith("meshd")
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == collections.Counter()
    client.close()


async def test_after_a_reload_an_open_connection_routes_by_the_new_router(make_mesh, make_h2_upstream, path_mode):
    import yaml

    from meshd.config.loader import load_config
    from meshd.config.model import MeshdConfig
    from tests.conftest import base_config

    old = await make_h2_upstream(ok)
    new = await make_h2_upstream(ok)
    router = {"protocol": "h2", "identifier": {"kind": "grpc"}, "service": {"responseClassifier": {"kind": "grpc.default"}}}
    mesh = await make_mesh(**router)
    mesh.register("pkg.Svc", old.address_line)
    mesh.register("moved", new.address_line)
    client = await H2Client.open(mesh.port)
    for _ in range(2):
        assert (await client.response(call(client))).status == 200
    assert (len(old.received), len(new.received)) == (2, 0)
    config = base_config(**router, dtab="/svc => /#/fs; /svc/pkg.Svc => /#/fs/moved;")
    outcome = await mesh.daemon.reload(load_config(yaml.safe_dump(config), MeshdConfig))
    assert outcome.result == "applied", outcome
    for _ in range(2):  # the same connection: its streams take the new router (and its dtab)
        assert (await client.response(call(client))).status == 200
    assert (len(old.received), len(new.received)) == (2, 2)
    client.close()


async def test_a_trailers_only_answer_is_passed_on_and_counted_by_its_grpc_status(make_mesh, make_h2_upstream, path_mode):
    async def not_found(reply: H2Reply) -> None:
        # a trailers-only response: one HEADERS frame with grpc-status, END_STREAM
        reply.head(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"5"), (b"grpc-message", b"no")],
                   end_stream=True)

    up = await make_h2_upstream(not_found)
    mesh = await grpc_mesh(make_mesh, addSuccessClassHeader=True)
    mesh.register("pkg.Svc", up.address_line)
    client = await H2Client.open(mesh.port)
    for _ in range(3):
        result = await client.response(call(client))
        assert result.status == 200 and result.header(b"grpc-status") == b"5"
        assert result.header(b"l5d-success-class") == b"1.0"  # NOT_FOUND is the service answering
    assert len(up.received) == 3  # never retried
    router = mesh.daemon.routers[0]
    assert router.grpc_stats is not None
    assert router.grpc_stats.responses[("/svc/pkg.Svc", "NOT_FOUND")] == 3
    cl = router.clients[Path.read("/#/fs/pkg.Svc")]
    assert [n.pending for n in cl.balancer.nodes()] == [0]
    client.close()


class _Handoff:
    """A stand-in for the fast path's exchange after a hand-over (meshd/h2server.py `H2Handoff`)."""

    def __init__(self, ctx: object, admission: object) -> None:
        self.ctx = ctx
        self.admission = admission
        self.abandoned = 0
        self.resumed = asyncio.Event()
        self.never: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def resume(self) -> asyncio.Future[object]:
        self.resumed.set()
        return self.never

    def abandon(self) -> None:
        self.abandoned += 1


async def test_a_stream_reset_after_its_hand_over_but_before_its_task_runs_is_abandoned(make_mesh, path_mode):
    """A task cancelled before its first step runs none of its code: the hand-over's own work
    (admission, an attempt the fast path began) is given up through the handoff instead."""
    mesh = await make_mesh(protocol="h2")
    client = await H2Client.open(mesh.port)
    listener = mesh.daemon.bound[0].listener
    await wait_until(lambda: len(listener.connections) == 1, timeout=5, message="the connection accepted")
    [proto] = listener.connections
    assert isinstance(proto, H2ServerProtocol)

    def handed_over(sid: int) -> tuple[H2Stream, _Handoff]:
        stream = H2Stream(sid)
        stream.request = request_from_h2([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                          (b":authority", b"svc")], True, client_ip="127.0.0.1",
                                         replay_limit=0, producer=None)
        stream.served_since = 0.0
        handoff = _Handoff(RouteContext(stream.request, ""), listener.admission)
        proto.hand_over(stream, handoff)  # type: ignore[arg-type]
        return stream, handoff

    # reset at once, in the same loop turn as the hand-over: abandoned through the handoff
    stream, handoff = handed_over(101)
    task = stream.task
    assert task is not None and stream.fast is handoff
    proto._abandon(stream, ConnectionClosed("client reset the stream"))
    assert handoff.abandoned == 1 and stream.fast is None
    await asyncio.wait([task], timeout=5)
    assert task.cancelled() and not handoff.resumed.is_set()
    # once its task has started, the task owns it: a later reset cancels the task, not the handoff
    stream, handoff = handed_over(103)
    await asyncio.wait_for(handoff.resumed.wait(), 5)
    assert stream.fast is None
    proto._abandon(stream, ConnectionClosed("client reset the stream"))
    assert handoff.abandoned == 0
    client.close()
