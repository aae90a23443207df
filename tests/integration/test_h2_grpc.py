"""Real gRPC (grpcio) clients and servers through meshd's HTTP/2 router.

The server registers generic method handlers with bytes in and out (no protoc): unary,
server streaming, client streaming and bidirectional streaming. The client reaches it only
through meshd (`:authority` names the service, as the header identifier reads it), so each
call is one HTTP/2 stream downstream and one upstream, with its messages streamed as DATA
frames and its status in trailers. One test runs meshd as a real process.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.support.process import MeshdProcess, process_config
from tests.support.waiting import wait_until

# each test runs on both HTTP/2 codec backends (tests/conftest.py h2_codec)
pytestmark = pytest.mark.usefixtures("h2_codec")

SERVICE = "bank.Ledger"


async def _post(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such account")
    return b"posted:" + request


async def _watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield b"entry-%d" % i


async def _upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    total = 0
    count = 0
    async for message in requests:
        total += len(message)
        count += 1
    return b"%d messages, %d bytes" % (count, total)


async def _chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for message in requests:
        yield b"echo:" + message


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Post": grpc.unary_unary_rpc_method_handler(_post),
        "Watch": grpc.unary_stream_rpc_method_handler(_watch),
        "Upload": grpc.stream_unary_rpc_method_handler(_upload),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    })


@pytest.fixture
async def grpc_upstream() -> AsyncIterator[int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(None)


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "ledger")])


async def _all_four_kinds(port: int) -> None:
    async with _channel(port) as channel:
        post = channel.unary_unary(f"/{SERVICE}/Post")
        assert await post(b"100 EUR", timeout=5) == b"posted:100 EUR"

        watch = channel.unary_stream(f"/{SERVICE}/Watch")
        assert [m async for m in watch(b"5", timeout=5)] == [b"entry-%d" % i for i in range(5)]

        upload = channel.stream_unary(f"/{SERVICE}/Upload")

        async def parts() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 10_000

        assert await upload(parts(), timeout=5) == b"20 messages, 200000 bytes"

        chat = channel.stream_stream(f"/{SERVICE}/Chat")
        call = chat(timeout=5)
        replies = []
        for word in (b"a", b"bb", b"ccc"):
            await call.write(word)
            replies.append(await call.read())  # each reply before the next message: really bidirectional
        await call.done_writing()
        assert replies == [b"echo:a", b"echo:bb", b"echo:ccc"]
        assert await call.code() == grpc.StatusCode.OK


async def _answers(port: int) -> bool:
    """One unary call succeeds (meshd's fs namer polls its directory: it sees a new file soon)."""
    async with _channel(port) as channel:
        try:
            await channel.unary_unary(f"/{SERVICE}/Post")(b"ping", timeout=5)
        except grpc.aio.AioRpcError:
            return False
        return True


async def test_unary_server_client_and_bidi_streaming_through_a_meshd_process(tmp_path: pathlib.Path, grpc_upstream,
                                                                            h2_codec: str):
    config = process_config({"protocol": "h2"})
    async with MeshdProcess(tmp_path, config) as mesh:
        mesh.register("ledger", f"127.0.0.1 {grpc_upstream}")
        await wait_until(lambda: _answers(mesh.port), timeout=10, message="meshd to route to the new service")
        await _all_four_kinds(mesh.port)
        assert f"HTTP/2 codec: {h2_codec}" in mesh.log_text()  # the process ran on the codec asked for


async def test_grpc_status_and_message_pass_through_in_trailers(make_mesh, grpc_upstream):
    mesh = await make_mesh(protocol="h2")
    mesh.register("ledger", f"127.0.0.1 {grpc_upstream}")
    async with _channel(mesh.port) as channel:
        post = channel.unary_unary(f"/{SERVICE}/Post")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await post(b"fail", timeout=5)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failed.value.details() == "no such account"
        # many calls on the channel's one connection
        for i in range(50):
            assert await post(b"%d" % i, timeout=5) == b"posted:%d" % i
    stats = mesh.daemon.routers[0].stats
    assert stats is not None


async def test_sigterm_sends_goaway_and_finishes_the_streams_in_flight(tmp_path: pathlib.Path):
    import asyncio
    import signal

    from tests.support.h2peer import H2Client, H2Reply, H2Server

    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, [(b"grpc-status", b"0")], end_stream=True)

    up = await H2Server(slow).start()
    try:
        async with MeshdProcess(tmp_path, process_config({"protocol": "h2"}, drainTimeoutMs=10_000)) as mesh:
            mesh.register("svc", up.address_line)
            client = await H2Client.open(mesh.port)
            sid = 0

            async def routed() -> bool:
                nonlocal sid
                sid = client.start("GET", "/", "svc")
                await wait_until(lambda: len(up.heads) > 0 or bool(client.queues[sid].qsize()), timeout=5)
                return bool(up.heads)

            await wait_until(routed, timeout=10, message="meshd to route to the upstream")
            mesh.send_signal(signal.SIGTERM)
            await wait_until(lambda: client.goaway is not None, timeout=5, message="GOAWAY from meshd")
            assert client.goaway is not None and client.goaway.error_code == 0
            release.set()
            result = await client.response(sid)
            assert result.status == 200
            assert await mesh.wait(10) == 0
    finally:
        await up.close()
