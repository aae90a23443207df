"""HTTP/2 denial-of-service patterns against meshd, each from a hostile client on real sockets.

Each test drives one attack (raw frames built with hyperframe and hpack, or the `h2` library
misused) and checks three things: the hostile connection gets GOAWAY with the right error code
and is closed (or its stream reset), the attack is counted in its metric by reason, and a
well-behaved client's requests through the same meshd keep succeeding meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from meshd.http2.codec import ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, PREFACE, PROTOCOL_ERROR
from tests.support.h2peer import H2Client, H2Reply, H2Server, echo
from tests.support.waiting import wait_until

# each test runs on both HTTP/2 codec backends (tests/conftest.py h2_codec)
pytestmark = pytest.mark.usefixtures("h2_codec")


@pytest.fixture
async def upstream() -> AsyncIterator[H2Server]:
    server = await H2Server(echo).start()
    yield server
    await server.close()


class Hostile:
    """A raw TCP connection that speaks HTTP/2 frames as the test dictates."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()

    @classmethod
    async def open(cls, port: int) -> Hostile:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = cls(reader, writer)
        conn.writer.write(PREFACE + SettingsFrame(0).serialize())
        return conn

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(f.serialize() for f in frames))

    def request_block(self, authority: str = "svc") -> bytes:
        return bytes(self.encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                          (":path", "/")]))

    def headers(self, sid: int, *, end_headers: bool = True, block: bytes | None = None) -> HeadersFrame:
        frame = HeadersFrame(sid)
        frame.data = block if block is not None else self.request_block()
        frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    async def frames_until_closed(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame meshd sends until it closes the connection."""
        data = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        chunk = await self.reader.read(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    data += chunk
        finally:  # closed even when meshd never closes it (the test fails, the next one is clean)
            self.writer.close()
        frames = []
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9:9 + length]))
            frames.append(frame)
            data = data[9 + length:]
        return frames

    def close(self) -> None:
        self.writer.close()


def _goaway(frames: list[Frame]) -> GoAwayFrame:
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways, f"no GOAWAY among {frames}"
    return goaways[-1]


async def _counted(mesh, reason: str) -> int:  # type: ignore[no-untyped-def]
    return int(mesh.daemon.routers[0].h2_stats.connection_errors.get(reason, 0))


async def _good_client_works(port: int) -> None:
    client = await H2Client.open(port)
    try:
        results = await asyncio.gather(*(client.request("POST", f"/{i}", "svc", body=b"ok") for i in range(5)))
        assert all(r.status == 200 and r.body == b"ok" for r in results)
    finally:
        client.close()


async def _mesh(make_mesh, upstream: H2Server, **h2: object):  # type: ignore[no-untyped-def]
    mesh = await make_mesh(protocol="h2", h2=h2)
    mesh.register("svc", upstream.address_line)
    await _good_client_works(mesh.port)
    return mesh


async def test_rapid_reset_closes_the_connection_with_enhance_your_calm(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    frames: list[Frame] = []
    for i in range(1200):
        sid = 2 * i + 1
        frames += [hostile.headers(sid), RstStreamFrame(sid, error_code=8)]
    hostile.send(*frames)
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == ENHANCE_YOUR_CALM
    assert await _counted(mesh, "rapid_reset") == 1
    await _good_client_works(mesh.port)


async def test_continuation_flood_is_cut_off(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    continuations = []
    for _ in range(100):
        frame = ContinuationFrame(1)
        frame.data = b""
        continuations.append(frame)
    hostile.send(hostile.headers(1, end_headers=False), *continuations)
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == ENHANCE_YOUR_CALM
    assert await _counted(mesh, "continuation_flood") == 1
    await _good_client_works(mesh.port)


async def test_oversized_header_block_in_continuations_is_cut_off(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream, maxHeaderListSize=4096)
    hostile = await Hostile.open(mesh.port)
    frames: list[Frame] = [hostile.headers(1, end_headers=False)]
    for _ in range(4):
        frame = ContinuationFrame(1)
        frame.data = b"\x00" * 1500
        frames.append(frame)
    hostile.send(*frames)
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == ENHANCE_YOUR_CALM
    assert await _counted(mesh, "continuation_flood") == 1


async def test_hpack_bomb_stops_at_the_header_list_limit(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    # one 4 KB field goes into the dynamic table, then 40 one-byte references to it: a block of
    # about 4 KB that decodes to 160 KB, well past the 64 KiB maxHeaderListSize
    big = ("x-bomb", "b" * 4000)
    block = bytes(hostile.encoder.encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", "svc"), (":path", "/")] + [big] * 40
    ))
    assert len(block) < 8000
    hostile.send(hostile.headers(1, block=block))
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code != 0
    errors = mesh.daemon.routers[0].h2_stats.connection_errors
    assert sum(errors.values()) == 1, errors
    assert not upstream.received or all(r.header(b"x-bomb") is None for r in upstream.received)
    await _good_client_works(mesh.port)


async def test_settings_flood(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    hostile.send(*(SettingsFrame(0, settings={h2.settings.SettingCodes.ENABLE_PUSH: 0}) for _ in range(300)))
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == ENHANCE_YOUR_CALM
    assert await _counted(mesh, "settings_flood") == 1
    await _good_client_works(mesh.port)


async def test_ping_flood(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    hostile.send(*(PingFrame(0, opaque_data=b"%08d" % i) for i in range(300)))
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == ENHANCE_YOUR_CALM
    assert await _counted(mesh, "ping_flood") == 1
    acks = [f for f in got if isinstance(f, PingFrame)]
    assert len(acks) <= 100  # no more ACKs than the bucket allowed
    await _good_client_works(mesh.port)


async def test_window_update_overflow(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    hostile.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
    got = await hostile.frames_until_closed()
    assert _goaway(got).error_code == FLOW_CONTROL_ERROR
    assert await _counted(mesh, "flow_control") == 1
    await _good_client_works(mesh.port)


async def test_stream_id_exhaustion_and_reuse_are_refused(make_mesh, upstream):
    mesh = await _mesh(make_mesh, upstream)
    hostile = await Hostile.open(mesh.port)
    last = 2**31 - 1
    hostile.send(hostile.headers(last))  # the last id a client has: served
    hostile.send(hostile.headers(7))  # going back below it: PROTOCOL_ERROR for the connection
    got = await hostile.frames_until_closed()
    goaway = _goaway(got)
    assert goaway.error_code == PROTOCOL_ERROR
    assert goaway.last_stream_id == last
    assert await _counted(mesh, "protocol") == 1
    await _good_client_works(mesh.port)


async def test_zero_window_hold_resets_then_closes(make_mesh):
    sent = 0

    async def big(reply: H2Reply) -> None:
        nonlocal sent
        reply.head(200)
        for _ in range(64):  # 1 MiB in 16 KiB pieces, each as the window allows
            await reply.data(b"z" * 16384)
            if reply.request.path == "/held":
                sent += 16384
        reply.end()

    up = await H2Server(big).start()
    try:
        mesh = await make_mesh(protocol="h2", h2={"zeroWindowTimeoutMs": 300})
        mesh.register("svc", up.address_line)
        # a client whose stream window is 0 and who never opens it
        holder = await H2Client.open(mesh.port, auto_ack=False, settings={0x4: 0})
        sid = holder.start("GET", "/held", "svc")
        await wait_until(lambda: sent > 0, timeout=5, message="the upstream to start sending")
        # meanwhile others are served
        await _good_client_works_big(mesh.port, up)
        await asyncio.wait_for(holder.closed.wait(), 10)
        assert holder.goaway is not None and holder.goaway.error_code == ENHANCE_YOUR_CALM
        assert await _counted(mesh, "zero_window") == 1
        # meshd held the upstream back: it sent far less than the 1 MiB body
        assert sent <= 256 * 1024
        assert sid == 1
    finally:
        await up.close()


async def test_zero_window_on_one_stream_resets_that_stream_only(make_mesh):
    async def big(reply: H2Reply) -> None:
        reply.head(200)
        for _ in range(16):  # 256 KiB
            await reply.data(b"z" * 16384)
        reply.end()

    up = await H2Server(big).start()
    try:
        mesh = await make_mesh(protocol="h2", h2={"zeroWindowTimeoutMs": 300})
        mesh.register("svc", up.address_line)
        client = await H2Client.open(mesh.port)
        client.h2.increment_flow_control_window(16 * 1024 * 1024)  # the connection's window stays open
        client.flush()
        held = client.start("GET", "/held", "svc")
        client.held.add(held)
        served = await client.request("GET", "/served", "svc", timeout=10)
        assert served.status == 200 and len(served.body) == 256 * 1024
        result = await client.response(held, timeout=10)
        assert result.reset == 8  # CANCEL
        assert mesh.daemon.routers[0].h2_stats.streams_reset == {"zero_window": 1}
        assert (await client.request("GET", "/after", "svc", timeout=10)).status == 200  # the connection lives
        client.close()
    finally:
        await up.close()


async def _good_client_works_big(port: int, up: H2Server) -> None:
    client = await H2Client.open(port)
    try:
        result = await client.request("GET", "/big", "svc", timeout=10)
        assert result.status == 200 and len(result.body) == 1 << 20
    finally:
        client.close()


@pytest.mark.parametrize("field", [(b"te", b"gzip"), (b"upgrade", b"h2c"), (b"connection", b"close")])
async def test_malformed_request_never_reaches_the_upstream(make_mesh, upstream, field):
    # RFC 9113 §8.2.2: connection-specific fields make a request malformed. The codec may treat
    # it as a stream error (RST_STREAM) or, as the `h2` library does, a connection error (GOAWAY);
    # PROTOCOL_ERROR either way, and nothing is forwarded.
    mesh = await _mesh(make_mesh, upstream)
    before = len(upstream.received)
    client = await H2Client.open(mesh.port)
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    sid = client.start("GET", "/", "svc", headers=[field])
    answer = asyncio.ensure_future(client.response(sid))
    closed = asyncio.ensure_future(client.closed.wait())
    done, _ = await asyncio.wait([answer, closed], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert done
    if client.goaway is not None:
        assert client.goaway.error_code == PROTOCOL_ERROR
    else:
        # the stream's answer is read once: it is the future that completed
        assert answer in done and answer.result().reset == PROTOCOL_ERROR
    answer.cancel()
    closed.cancel()
    assert len(upstream.received) == before
    client.close()
    await _good_client_works(mesh.port)


async def test_streams_past_max_concurrent_streams_are_refused(make_mesh):
    release = asyncio.Event()

    async def hold(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, end_stream=True)

    up = await H2Server(hold).start()
    try:
        mesh = await make_mesh(protocol="h2", h2={"maxConcurrentStreams": 4})
        mesh.register("svc", up.address_line)
        hostile = await Hostile.open(mesh.port)
        hostile.send(SettingsFrame(0, flags=["ACK"]))
        # the client ignores the 4 meshd advertised: 6 streams at once, none of them ending
        frames = []
        for i in range(6):
            frame = hostile.headers(2 * i + 1)
            frame.flags.discard("END_STREAM")
            frames.append(frame)
        hostile.send(*frames)
        seen: list[Frame] = []

        async def refused() -> bool:
            try:
                data = await asyncio.wait_for(hostile.reader.read(65536), 0.2)
            except TimeoutError:
                return False
            if not data:
                return True  # closed
            while len(data) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(data[:9]))
                frame.parse_body(memoryview(data[9:9 + length]))
                seen.append(frame)
                data = data[9 + length:]
            return any(isinstance(f, GoAwayFrame) or (isinstance(f, RstStreamFrame) and f.stream_id > 7) for f in seen)

        await wait_until(refused, timeout=5, message="the streams past the limit refused")
        # RST_STREAM REFUSED_STREAM or PROTOCOL_ERROR for them (RFC 9113 §5.1.2), or, as the `h2`
        # reference codec does, GOAWAY PROTOCOL_ERROR for the whole connection
        for f in seen:
            if isinstance(f, GoAwayFrame):
                assert f.error_code == PROTOCOL_ERROR
            if isinstance(f, RstStreamFrame):
                assert f.error_code in (PROTOCOL_ERROR, 0x7)
        assert len(up.heads) <= 4
        hostile.close()
        release.set()
        await _good_client_works_small(mesh.port)
    finally:
        await up.close()


async def _good_client_works_small(port: int) -> None:
    client = await H2Client.open(port)
    try:
        assert (await client.request("GET", "/", "svc")).status == 200
    finally:
        client.close()


async def test_an_upstream_that_floods_meshd_is_cut_off_too(make_mesh):
    async def flood(reply: H2Reply) -> None:
        transport = reply._conn.transport
        assert transport is not None
        transport.write(b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(300)))
        await asyncio.Event().wait()

    up = await H2Server(flood).start()
    try:
        mesh = await make_mesh(protocol="h2", service={"retries": {"maxRetries": 0}})
        mesh.register("svc", up.address_line)
        client = await H2Client.open(mesh.port)
        result = await client.request("GET", "/", "svc")
        assert result.status == 502
        assert result.header(b"l5d-err") is not None and b"ping_flood" in result.header(b"l5d-err")  # type: ignore[operator]
        assert await _counted(mesh, "ping_flood") >= 1
        client.close()
    finally:
        await up.close()
