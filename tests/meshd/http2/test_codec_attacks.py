"""HTTP/2 denial-of-service patterns against the codec, on every backend, with raw frames.

The attacker is hyperframe and hpack (the `h2` library's own frame and header coders) writing
bytes a well-behaved client never would; the target is a server codec. Each test asserts the
error the codec reports (code and `REASONS` word, codec.py) and, where memory is the attack,
that what the codec holds stays under a bound: for nghttp2 its allocator's count plus the
glue's buffers (`_memory()`), for h2 (pure Python) tracemalloc's peak.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http2.codec import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    ConnectionError,
    DataReceived,
    H2Codec,
    H2Event,
    H2Settings,
    HeadersReceived,
    StreamReset,
)
from tests.meshd.http2.test_codec_contract import BACKENDS, Factory

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bank"), (b":path", b"/")]


@pytest.fixture(params=sorted(BACKENDS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return BACKENDS[request.param]


def serve(factory: Factory, **settings: int) -> H2Codec:
    server = factory(False, H2Settings(**settings))
    server.start()
    server.data_to_send()
    server.receive(PREFACE + SettingsFrame(0).serialize())
    server.data_to_send()
    return server


def frames(*fs: Frame) -> bytes:
    return b"".join(f.serialize() for f in fs)


def headers(sid: int, block: bytes, *flags: str) -> HeadersFrame:
    return HeadersFrame(sid, data=block, flags=list(flags))


def held(codec: H2Codec, act: Callable[[], Any]) -> tuple[Any, int]:
    """`act()`'s result, and the most memory the codec held while it ran (bytes)."""
    memory = getattr(codec, "_memory", None)
    if memory is not None:
        result = act()
        now, lib_peak = memory()
        return result, max(now, lib_peak)
    tracemalloc.start()
    try:
        result = act()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def errors(events: list[H2Event]) -> list[tuple[int, str]]:
    return [(e.error_code, e.reason) for e in events if isinstance(e, ConnectionError)]


def goaway_code(codec: H2Codec) -> int | None:
    """The error code of the GOAWAY the codec queued, read by an h2 client."""
    import h2.config
    import h2.connection
    import h2.events

    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    peer.initiate_connection()
    for ev in peer.receive_data(SettingsFrame(0).serialize() + codec.data_to_send()):
        if isinstance(ev, h2.events.ConnectionTerminated):
            return int(ev.error_code or 0)
    return None


# -- HPACK bomb ---------------------------------------------------------------------------------


def test_hpack_bomb_is_stopped_at_the_header_list_limit(factory: Factory) -> None:
    """4 KB into the dynamic table once, then 1,000 one-byte references to it: 4 MB decoded from a
    5 KB block. The codec stops at max_header_list_size (64 KiB) and never holds the rest."""
    server = serve(factory)
    block = hpack.Encoder().encode(REQ + [(b"x-bomb", b"b" * 4000)] * 1000)
    assert len(block) < 6000
    wire = frames(headers(1, block, "END_HEADERS", "END_STREAM"))
    events, peak = held(server, lambda: server.receive(wire))
    assert errors(events) == [(ENHANCE_YOUR_CALM, "headers_too_large")]
    assert not [e for e in events if isinstance(e, HeadersReceived)]
    assert peak < 256_000, peak  # far below the 4 MB the block decodes to
    assert goaway_code(server) == ENHANCE_YOUR_CALM


# -- CONTINUATION flood -------------------------------------------------------------------------


def continuation_flood(count: int) -> bytes:
    block = hpack.Encoder().encode(REQ + [(b"x-pad", b"p" * (count + 10))])
    step = max(1, len(block) // (count + 1))
    pieces = [block[i:i + step] for i in range(0, len(block), step)]
    out: list[Frame] = [headers(1, pieces[0], "END_STREAM")]
    out += [ContinuationFrame(1, data=piece) for piece in pieces[1:-1]]
    out.append(ContinuationFrame(1, data=pieces[-1], flags=["END_HEADERS"]))
    return frames(*out)


def test_continuation_flood_is_a_connection_error(factory: Factory) -> None:
    server = serve(factory)
    wire = continuation_flood(500)
    events, peak = held(server, lambda: server.receive(wire))
    assert errors(events) == [(ENHANCE_YOUR_CALM, "flood")]
    assert not [e for e in events if isinstance(e, HeadersReceived)]
    assert peak < 256_000, peak
    assert goaway_code(server) == ENHANCE_YOUR_CALM


def test_a_header_block_in_a_few_continuations_is_fine(factory: Factory) -> None:
    server = serve(factory)
    events = server.receive(continuation_flood(4))
    assert not errors(events)
    assert [e.stream_id for e in events if isinstance(e, HeadersReceived)] == [1]


# -- SETTINGS and PING floods -------------------------------------------------------------------


@pytest.mark.parametrize("frame", [SettingsFrame(0), PingFrame(0, opaque_data=b"12345678")],
                         ids=["settings", "ping"])
def test_control_frame_flood_is_a_connection_error(factory: Factory, frame: Frame) -> None:
    """1,500 frames that each want an answer, in one read: past max_pending_acks (1,000)."""
    server = serve(factory)
    wire = frame.serialize() * 1500
    events, peak = held(server, lambda: server.receive(wire))
    assert errors(events) == [(ENHANCE_YOUR_CALM, "flood")]
    out = server.data_to_send()
    assert len(out) < 1001 * 17 + 100  # not 1,500 answers
    assert peak < 1_000_000, peak


def test_pings_answered_as_they_come_are_no_flood(factory: Factory) -> None:
    server = serve(factory)
    answered = 0
    for _ in range(50):  # 5,000 pings, the answers taken after each read of 100
        assert not errors(server.receive(PingFrame(0, opaque_data=b"abcdefgh").serialize() * 100))
        answered += server.data_to_send().count(b"abcdefgh")
    assert answered == 5000


# -- rapid reset (CVE-2023-44487) ---------------------------------------------------------------


def test_rapid_reset_exhausts_the_budget(factory: Factory) -> None:
    server = serve(factory, reset_budget=200)
    enc = hpack.Encoder()
    seen: list[H2Event] = []
    for batch in range(30):  # 300 streams opened and cancelled at once, ten per read
        wire = b""
        for k in range(10):
            sid = 1 + 2 * (batch * 10 + k)
            wire += frames(headers(sid, enc.encode(REQ), "END_HEADERS"), RstStreamFrame(sid, error_code=CANCEL))
        seen += server.receive(wire)
        if errors(seen):
            break
    assert errors(seen) == [(ENHANCE_YOUR_CALM, "rapid_reset")]
    resets = [e for e in seen if isinstance(e, StreamReset) and e.remote]
    assert 195 <= len(resets) <= 201  # the budget, give or take the read that crossed it
    assert goaway_code(server) == ENHANCE_YOUR_CALM
    assert server.open_inbound_streams <= 10


def test_cancelling_now_and_then_never_exhausts_it(factory: Factory) -> None:
    """Every other stream cancelled, the others answered: each answer earns a reset back."""
    server = serve(factory, reset_budget=50)
    enc = hpack.Encoder()
    for i in range(300):
        answered, cancelled = 1 + 4 * i, 3 + 4 * i
        events = server.receive(frames(headers(answered, enc.encode(REQ), "END_HEADERS", "END_STREAM"),
                                       headers(cancelled, enc.encode(REQ), "END_HEADERS"),
                                       RstStreamFrame(cancelled, error_code=CANCEL)))
        assert not errors(events), i
        server.send_headers(answered, [(b":status", b"200")], end_stream=True)
        server.data_to_send()
    assert server.open_inbound_streams == 0


# -- stream id reuse (RFC 9113 5.1.1) -----------------------------------------------------------


def goaway_last_stream_id(codec: H2Codec) -> int | None:
    """The last_stream_id of the GOAWAY the codec queued."""
    from hyperframe.frame import GoAwayFrame

    data = codec.data_to_send()
    last = None
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        if isinstance(frame, GoAwayFrame):
            last = frame.last_stream_id
        data = data[9 + length:]
    return last


@pytest.mark.parametrize(("opened", "again"), [((2**31 - 1,), 7), ((1, 5), 3), ((1,), 1)],
                         ids=["below-the-last-id", "an-id-skipped", "an-id-used"])
def test_a_new_stream_at_an_id_already_passed_is_a_protocol_error(
        factory: Factory, opened: tuple[int, ...], again: int) -> None:
    """Ids only go up: a HEADERS opening a stream at or below the highest id the peer used
    (one it skipped, or one whose stream has ended) fails the connection; GOAWAY names the
    last stream the server processed, which the peer may count on."""
    server = serve(factory)
    enc = hpack.Encoder()
    for sid in opened:
        assert not errors(server.receive(frames(headers(sid, enc.encode(REQ), "END_HEADERS", "END_STREAM"))))
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    server.data_to_send()
    events = server.receive(frames(headers(again, enc.encode(REQ), "END_HEADERS", "END_STREAM")))
    assert errors(events) == [(PROTOCOL_ERROR, "protocol")]
    assert not [e for e in events if isinstance(e, HeadersReceived)]
    assert goaway_last_stream_id(server) == max(opened)


@pytest.mark.parametrize("by", ["server", "server-no-error", "client"])
def test_frames_on_a_reset_stream_are_ignored(factory: Factory, by: str) -> None:
    """After a RST_STREAM either way, the peer may still send on the stream what it had queued
    (RFC 9113 5.1 "closed"): trailers and DATA on it are dropped, the connection lives on.
    RST_STREAM(NO_ERROR) is how a server that has answered stops the rest of an upload (8.1)."""
    server = serve(factory)
    enc = hpack.Encoder()
    server.receive(frames(headers(1, enc.encode(REQ), "END_HEADERS")))
    if by.startswith("server"):
        server.reset_stream(1, NO_ERROR if by == "server-no-error" else CANCEL)
    else:
        server.receive(RstStreamFrame(1, error_code=CANCEL).serialize())
    server.data_to_send()
    from hyperframe.frame import DataFrame

    events = server.receive(frames(DataFrame(1, data=b"late"),
                                   headers(1, enc.encode([(b"grpc-status", b"0")]), "END_HEADERS", "END_STREAM")))
    assert not errors(events)
    assert not [e for e in events if isinstance(e, (HeadersReceived, DataReceived))]
    events = server.receive(frames(headers(3, enc.encode(REQ), "END_HEADERS", "END_STREAM")))
    assert [e.stream_id for e in events if isinstance(e, HeadersReceived)] == [3]


# -- more streams than allowed ------------------------------------------------------------------


def test_streams_past_max_concurrent_streams_are_a_protocol_error(factory: Factory) -> None:
    server = serve(factory, max_concurrent_streams=2)
    server.receive(SettingsFrame(0, flags=["ACK"]).serialize())  # our limit is in force
    enc = hpack.Encoder()
    events = server.receive(frames(*[headers(sid, enc.encode(REQ), "END_HEADERS") for sid in (1, 3, 5, 7)]))
    assert errors(events) == [(PROTOCOL_ERROR, "protocol")]
    assert server.open_inbound_streams <= 2


# -- window-update overflow ---------------------------------------------------------------------


def test_connection_window_overflow_is_a_flow_control_error(factory: Factory) -> None:
    server = serve(factory)
    events = server.receive(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())
    assert errors(events) == [(FLOW_CONTROL_ERROR, "flow_control")]
    assert goaway_code(server) == FLOW_CONTROL_ERROR


def test_stream_window_overflow_resets_the_stream(factory: Factory) -> None:
    server = serve(factory)
    enc = hpack.Encoder()
    events = server.receive(frames(headers(1, enc.encode(REQ), "END_HEADERS"),
                                   WindowUpdateFrame(1, window_increment=2**31 - 1)))
    events += server.receive(b"")
    assert not errors(events)
    resets = [(e.stream_id, e.error_code, e.remote) for e in events if isinstance(e, StreamReset)]
    assert resets == [(1, FLOW_CONTROL_ERROR, False)]


# -- zero-window hold ---------------------------------------------------------------------------


def test_a_peer_that_never_opens_its_window_gets_nothing_more(factory: Factory) -> None:
    """The body waits in the codec (`buffered` says how much, so the caller stops feeding it);
    nothing past the peer's window is framed, and a WINDOW_UPDATE lets exactly that much out."""
    server = factory(False, H2Settings())
    server.start()
    server.data_to_send()
    enc = hpack.Encoder()
    server.receive(PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}).serialize()
                   + frames(headers(1, enc.encode(REQ), "END_HEADERS", "END_STREAM")))
    server.data_to_send()
    server.send_headers(1, [(b":status", b"200")], end_stream=False)
    server.send_data(1, b"z" * 200_000, end_stream=True)
    out = server.data_to_send()
    assert b"z" not in out and server.buffered(1) == 200_000
    server.receive(WindowUpdateFrame(1, window_increment=1000).serialize())
    out = server.data_to_send()
    assert out.count(b"z") == 1000 and server.buffered(1) == 199_000


def test_data_past_the_window_is_a_flow_control_error(factory: Factory) -> None:
    """A peer that sends more than we allowed: DATA over our 1,000-byte stream window."""
    from hyperframe.frame import DataFrame

    server = serve(factory, initial_window_size=1000, connection_window_size=65_535)
    enc = hpack.Encoder()
    # the server's SETTINGS (window 1,000) took effect: an h2 peer would have acked it
    server.receive(SettingsFrame(0, flags=["ACK"]).serialize())
    events = server.receive(frames(headers(1, enc.encode(REQ), "END_HEADERS"),
                                   DataFrame(1, data=b"d" * 5000)))
    # h2 fails the connection; nghttp2 resets the stream (RFC 9113 6.9.1 allows either) after
    # handing over the frame that overflowed, which the caller drops with the stream
    flagged = errors(events) + [(e.error_code, "stream") for e in events if isinstance(e, StreamReset)]
    assert flagged and flagged[0][0] == FLOW_CONTROL_ERROR
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) <= 5000



# -- anything at all ----------------------------------------------------------------------------

_frame = st.builds(
    lambda kind, flags, sid, payload: len(payload).to_bytes(3, "big") + bytes([kind, flags])
    + sid.to_bytes(4, "big") + payload,
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xFF]),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
    st.one_of(st.binary(max_size=40), st.just(hpack.Encoder().encode(REQ))),
)


@settings(max_examples=150, deadline=None)
@given(wire=st.lists(_frame, min_size=1, max_size=6).map(b"".join), cut=st.integers(0, 300))
def test_random_frames_give_events_never_exceptions(wire: bytes, cut: int) -> None:
    """Whatever the peer sends, split anywhere: events (maybe a ConnectionError), no exception,
    and once the connection has failed, nothing more."""
    for name in sorted(BACKENDS):
        server = serve(BACKENDS[name])
        cut = min(cut, len(wire))
        events = server.receive(wire[:cut])
        if not errors(events):
            events += server.receive(wire[cut:])
        server.data_to_send()
        assert len(errors(events)) <= 1
        if errors(events):
            assert server.receive(PingFrame(0, opaque_data=b"12345678").serialize()) == []
        for e in events:
            if isinstance(e, HeadersReceived) and e.stream_id == 1 and not errors(events):
                server.send_headers(1, [(b":status", b"200")], end_stream=False)
                server.send_trailers(1, [(b"grpc-status", b"0")])
                server.data_to_send()
