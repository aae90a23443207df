"""gRPC semantics end to end with real grpcio clients and servers through meshd.

Generic handlers, bytes in and out (no protoc), as in test_h2_grpc.py. What is proved here:
unary calls retried on UNAVAILABLE from one replica of three (≥ 99.9% of 1,000 calls succeed,
the retries counted), a caller's deadline that expires downstream answers DEADLINE_EXCEEDED and
the upstream was given less time than the caller had, an unbound service answers UNAVAILABLE
with a `grpc-message` the grpcio client reads, and the `grpc` identifier with `meshd dtab
explain`.
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import yaml

from routing.identifiers.grpc import GrpcIdentifierConfig
from tests.support.waiting import wait_until

SERVICE = "bank.Ledger"
ROUTER = {
    "protocol": "h2",
    "identifier": {"kind": "grpc"},
    "service": {"responseClassifier": {"kind": "grpc.default"}},
}


async def _server(handler: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Post": grpc.unary_unary_rpc_method_handler(handler),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def servers() -> AsyncIterator[list[grpc.aio.Server]]:
    started: list[grpc.aio.Server] = []
    yield started
    for server in started:
        await server.stop(None)


def _channel(port: int) -> grpc.aio.Channel:
    # the authority names nothing: the `grpc` identifier routes by the method path alone
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "anything")])


async def test_unary_calls_are_retried_on_unavailable_from_one_replica_of_three(make_mesh, servers):
    served = [0, 0, 0]

    def replica(i: int) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def post(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            served[i] += 1
            if i == 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "replica draining")
            return b"posted:" + request

        return post

    ports = []
    for i in range(3):
        server, port = await _server(replica(i))
        servers.append(server)
        ports.append(port)
    mesh = await make_mesh(**ROUTER)
    mesh.register(SERVICE, *(f"127.0.0.1 {p}" for p in ports))
    ok = 0
    failed: list[grpc.StatusCode] = []
    async with _channel(mesh.port) as channel:
        post = channel.unary_unary(f"/{SERVICE}/Post")

        async def one(i: int) -> None:
            nonlocal ok
            try:
                assert await post(b"%d" % i, timeout=10) == b"posted:%d" % i
                ok += 1
            except grpc.aio.AioRpcError as exc:
                failed.append(exc.code())

        for batch in range(20):  # 20 x 50 concurrent calls on the channel's connection
            await asyncio.gather(*(one(batch * 50 + j) for j in range(50)))
    assert ok >= 999, failed
    assert served[2] > 0  # the bad replica was really called...
    router = mesh.daemon.routers[0]
    retries = sum(state.retries.response for state in router.services.values())
    assert retries > 0 and retries >= served[2] - len(failed)  # ...and every UNAVAILABLE it gave was retried
    # what the callers got, by grpc-status (the retried UNAVAILABLEs never reached them)
    grpc_stats = router.grpc_stats
    assert grpc_stats is not None
    await wait_until(lambda: grpc_stats.responses.get((f"/svc/{SERVICE}", "OK"), 0) == ok, timeout=5,
                     message="every call counted by grpc-status")
    assert grpc_stats.responses.get((f"/svc/{SERVICE}", "UNAVAILABLE"), 0) == len(failed)


async def test_a_callers_deadline_that_expires_downstream_is_deadline_exceeded(make_mesh, servers):
    seen: list[float] = []
    cancelled = asyncio.Event()

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        seen.append(remaining if remaining is not None else -1.0)
        context.add_done_callback(lambda _: cancelled.set())
        await asyncio.Event().wait()  # never answers: only the deadline ends the call
        return b""

    server, port = await _server(slow)
    servers.append(server)
    mesh = await make_mesh(**ROUTER)
    mesh.register(SERVICE, f"127.0.0.1 {port}")
    caller_timeout = 0.5
    async with _channel(mesh.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary(f"/{SERVICE}/Post")(b"x", timeout=caller_timeout)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the upstream got a deadline no later than the caller's. gRPC core keeps deadlines in whole
    # milliseconds from a cached clock, so the server's `time_remaining()` can read up to ~1 ms
    # over what meshd sent; that meshd sends the time *remaining* (less than it got) is checked
    # exactly on the wire in test_grpc_wired.py
    assert len(seen) == 1 and 0 < seen[0] < caller_timeout + 0.005
    await asyncio.wait_for(cancelled.wait(), 5)  # the upstream call was cancelled, not left running
    router = mesh.daemon.routers[0]
    assert router.grpc_stats is not None and router.grpc_stats.timeouts.applied == 1
    # (meshd's timer and the caller's own fire within a fraction of a millisecond of each other:
    # which one answered varies; the next test has meshd's deadline fire first)


async def test_deadline_exceeded_from_meshd_reaches_the_grpcio_client_with_its_reason(make_mesh, servers):
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    server, port = await _server(slow)
    servers.append(server)
    mesh = await make_mesh(**{**ROUTER, "service": {**ROUTER["service"], "totalTimeoutMs": 200}})  # type: ignore[dict-item]
    mesh.register(SERVICE, f"127.0.0.1 {port}")
    async with _channel(mesh.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary(f"/{SERVICE}/Post")(b"x", timeout=10)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "totalTimeoutMs" in (failed.value.details() or "")


async def test_an_unbound_service_is_unavailable_with_a_message_grpcio_reads(make_mesh):
    mesh = await make_mesh(**ROUTER)
    async with _channel(mesh.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary("/bank.Nowhere/Post")(b"x", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    details = failed.value.details() or ""
    assert "/svc/bank.Nowhere" in details
    metadata = dict(failed.value.trailing_metadata() or ())
    assert metadata.get("l5d-err") == details  # the same text, as HTTP clients get it


def test_dtab_explain_binds_the_name_the_grpc_identifier_gives(tmp_path: pathlib.Path):
    disco = tmp_path / "disco"
    disco.mkdir()
    (disco / SERVICE).write_text("127.0.0.1 50051\n")
    config = {
        "namers": [{"kind": "fs", "rootDir": str(disco)}],
        "routers": [{**ROUTER, "label": "grpc", "servers": [{"port": 0}], "dtab": "/svc => /#/fs;"}],
    }
    path = tmp_path / "meshd.yaml"
    path.write_text(yaml.safe_dump(config))
    # /bank.Ledger/Post is named /svc/bank.Ledger by the grpc identifier (segments: 1)
    name = _identify(GrpcIdentifierConfig(), "/bank.Ledger/Post")
    assert name == f"/svc/{SERVICE}"
    out = subprocess.run([sys.executable, "-m", "meshd", "dtab", "explain", name, "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "/#/fs/bank.Ledger" in out.stdout and "127.0.0.1:50051" in out.stdout


class _Head:
    method = "POST"

    def __init__(self, target: str) -> None:
        self.target = target

    def header(self, name: str) -> str | None:
        return "application/grpc" if name == "content-type" else None


def _identify(config: GrpcIdentifierConfig, path: str) -> str:
    return config.build().identify(_Head(path)).path.show()
