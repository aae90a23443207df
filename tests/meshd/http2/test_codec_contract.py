"""The HTTP/2 codec contract (meshd/http2/codec.py), run against every backend.

Two codecs, a client and a server, are wired back to back in memory: what one queues is fed to
the other. Each test states one promise of the interface; a new backend joins `BACKENDS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http2 import nghttp2
from meshd.http2.codec import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    MAX_STREAM_ID,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionError,
    DataReceived,
    GoAwayReceived,
    H2Codec,
    H2Event,
    H2Settings,
    HeadersReceived,
    PingAcked,
    StreamReset,
    TrailersReceived,
)
from meshd.http2.h2ref import H2RefCodec

Factory = Callable[[bool, H2Settings], H2Codec]


def _h2ref(client_side: bool, settings: H2Settings) -> H2Codec:
    return H2RefCodec(client_side=client_side, settings=settings)


def _nghttp2(client_side: bool, settings: H2Settings) -> H2Codec:
    if not nghttp2.AVAILABLE:
        if os.environ.get("CI") == "true":  # under CI the binding must have been built
            raise AssertionError(nghttp2.WHY_UNAVAILABLE)
        pytest.skip(str(nghttp2.WHY_UNAVAILABLE))
    return nghttp2.NgHttp2Codec(client_side=client_side, settings=settings)


BACKENDS: dict[str, Factory] = {"h2ref": _h2ref, "nghttp2": _nghttp2}

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"ledger"),
           (b":path", b"/bank.Ledger/Post"), (b"content-type", b"application/grpc")]


class Pair:
    def __init__(self, factory: Factory, client: H2Settings | None = None,
                 server: H2Settings | None = None, server_factory: Factory | None = None) -> None:
        self.client = factory(True, client or H2Settings())
        self.server = (server_factory or factory)(False, server or H2Settings())
        self.client.start()
        self.server.start()
        self.to_client: list[H2Event] = []
        self.to_server: list[H2Event] = []
        self.pump()

    def pump(self) -> None:
        """Exchange bytes until both sides are quiet."""
        for _ in range(100):
            c, s = self.client.data_to_send(), self.server.data_to_send()
            if not c and not s:
                return
            if c:
                self.to_server += self.server.receive(c)
            if s:
                self.to_client += self.client.receive(s)
        raise AssertionError("codecs did not go quiet")

    def take_server(self) -> list[H2Event]:
        out, self.to_server = self.to_server, []
        return out

    def take_client(self) -> list[H2Event]:
        out, self.to_client = self.to_client, []
        return out


@pytest.fixture(params=sorted(BACKENDS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return BACKENDS[request.param]


def _of(kind: type[H2Event], events: list[H2Event]) -> list[H2Event]:
    return [e for e in events if isinstance(e, kind)]


def test_unary_exchange_with_trailers(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    p.pump()
    events = p.take_server()
    heads = _of(HeadersReceived, events)
    assert len(heads) == 1 and isinstance(heads[0], HeadersReceived)
    assert heads[0].headers[:4] == REQUEST[:4] and not heads[0].end_stream
    data = _of(DataReceived, events)
    assert b"".join(d.data for d in data if isinstance(d, DataReceived)) == b"\x00\x00\x00\x00\x02hi"
    assert isinstance(data[-1], DataReceived) and data[-1].end_stream
    p.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    p.server.send_data(sid, b"\x00\x00\x00\x00\x02ok", False)
    p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    p.pump()
    events = p.take_client()
    assert [type(e).__name__ for e in events if not type(e).__name__.startswith(("Window", "Remote"))] == [
        "HeadersReceived", "DataReceived", "TrailersReceived"]
    trailers = _of(TrailersReceived, events)[0]
    assert isinstance(trailers, TrailersReceived) and trailers.headers == [(b"grpc-status", b"0")]
    assert p.client.open_outbound_streams == 0


def test_headers_only_request_ends_the_stream(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                                (b":path", b"/")], end_stream=True)
    p.pump()
    heads = _of(HeadersReceived, p.take_server())
    assert isinstance(heads[0], HeadersReceived) and heads[0].end_stream


def test_send_data_waits_for_window_and_consumed_reopens_it(factory: Factory) -> None:
    small = H2Settings(initial_window_size=1000)
    p = Pair(factory, server=small)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, b"x" * 5000, end_stream=True)
    p.pump()
    got = [e for e in p.take_server() if isinstance(e, DataReceived)]
    assert sum(len(e.data) for e in got) == 1000  # the server's stream window
    assert p.client.buffered(sid) == 4000
    for e in got:  # the server passes the bytes on: windows open, the rest flows
        p.server.consumed(sid, e.flow_length)
    p.pump()
    more = [e for e in p.take_server() if isinstance(e, DataReceived)]
    assert sum(len(e.data) for e in more) == 1000
    assert p.client.buffered(sid) == 3000


def test_reset_reaches_the_peer_with_its_code(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.pump()
    p.take_server()
    p.client.reset_stream(sid, CANCEL)
    p.pump()
    resets = _of(StreamReset, p.take_server())
    assert len(resets) == 1 and isinstance(resets[0], StreamReset)
    assert (resets[0].stream_id, resets[0].error_code, resets[0].remote) == (sid, CANCEL, True)


def test_goaway_names_the_last_stream(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=True)
    p.pump()
    p.server.goaway(0)
    p.pump()
    goaways = _of(GoAwayReceived, p.take_client())
    assert len(goaways) == 1 and isinstance(goaways[0], GoAwayReceived)
    assert goaways[0].last_stream_id == sid and goaways[0].error_code == 0


def test_ping_comes_back(factory: Factory) -> None:
    p = Pair(factory)
    p.client.ping(b"12345678")
    p.pump()
    acks = _of(PingAcked, p.take_client())
    assert len(acks) == 1 and isinstance(acks[0], PingAcked) and acks[0].data == b"12345678"


def test_peer_limit_is_visible(factory: Factory) -> None:
    p = Pair(factory, server=H2Settings(max_concurrent_streams=7))
    assert p.client.peer_max_concurrent_streams == 7


def test_a_stream_past_the_peer_limit_is_refused_here(factory: Factory) -> None:
    p = Pair(factory, server=H2Settings(max_concurrent_streams=2))
    for _ in range(2):
        p.client.send_headers(p.client.next_stream_id(), REQUEST, end_stream=False)
    with pytest.raises(ValueError, match="peer_max_concurrent_streams"):
        p.client.send_headers(p.client.next_stream_id(), REQUEST, end_stream=False)
    p.pump()
    assert len(_of(HeadersReceived, p.take_server())) == 2
    p.client.reset_stream(1, CANCEL)  # one closes: a new one may open
    p.pump()
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=True)
    p.pump()
    assert [e.stream_id for e in _of(HeadersReceived, p.take_server()) if isinstance(e, HeadersReceived)] == [sid]


def test_garbage_is_a_connection_error_with_goaway(factory: Factory) -> None:
    server = factory(False, H2Settings())
    server.start()
    server.data_to_send()
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    errors = _of(ConnectionError, events)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert errors[0].error_code == PROTOCOL_ERROR
    assert b"\x07" in server.data_to_send()[:4]  # a GOAWAY frame (type 7) was queued


def test_after_a_connection_error_input_and_sends_are_ignored(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.pump()
    p.take_server()
    errors = _of(ConnectionError, p.server.receive(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"x" * 8))
    assert len(errors) == 1  # a PING on stream 1: a connection error
    p.server.data_to_send()
    assert p.server.receive(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00") == []  # SETTINGS: ignored
    p.server.send_headers(sid, RESPONSE, end_stream=False)  # a race with the error: no exception
    p.server.send_data(sid, b"late", end_stream=False)
    p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    p.server.reset_stream(sid, CANCEL)
    assert b"late" not in p.server.data_to_send()


RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def _body(events: list[H2Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def test_large_bodies_cross_many_windows_both_ways(factory: Factory) -> None:
    """1 MiB each way through 16 KiB stream windows: only `consumed()` lets the rest through."""
    small = H2Settings(initial_window_size=16_384, connection_window_size=65_535)
    p = Pair(factory, client=small, server=small)
    request, response = bytes(range(256)) * 4096, bytes(reversed(range(256))) * 4096
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, request, end_stream=True)
    got: list[H2Event] = []
    for _ in range(1000):
        p.pump()
        events = p.take_server()
        got += events
        for e in events:
            if isinstance(e, DataReceived):
                assert p.client.buffered(sid) <= len(request)
                p.server.consumed(sid, e.flow_length)
        if any(isinstance(e, DataReceived) and e.end_stream for e in events):
            break
    assert _body(got, sid) == request and p.client.buffered(sid) == 0
    rounds = 0
    p.server.send_headers(sid, RESPONSE, end_stream=False)
    p.server.send_data(sid, response, end_stream=False)
    p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    got = []
    while not any(isinstance(e, TrailersReceived) for e in got):
        rounds += 1
        assert rounds < 1000
        p.pump()
        events = p.take_client()
        got += events
        for e in events:
            if isinstance(e, DataReceived):
                p.client.consumed(sid, e.flow_length)
    assert _body(got, sid) == response and rounds > 16  # it took many windows
    assert p.client.open_outbound_streams == 0


def test_many_concurrent_streams_keep_apart(factory: Factory) -> None:
    p = Pair(factory)
    sids = []
    for i in range(60):
        sid = p.client.next_stream_id()
        sids.append(sid)
        p.client.send_headers(sid, REQUEST, end_stream=False)
        p.client.send_data(sid, f"request {i}".encode(), end_stream=True)
    assert p.client.open_outbound_streams == 60
    p.pump()
    events = p.take_server()
    assert [e.stream_id for e in events if isinstance(e, HeadersReceived)] == sids
    assert p.server.open_inbound_streams == 60
    for i, sid in enumerate(sids):
        assert _body(events, sid) == f"request {i}".encode()
    for i, sid in reversed(list(enumerate(sids))):  # answered in the other order
        p.server.send_headers(sid, RESPONSE, end_stream=False)
        p.server.send_data(sid, f"response {i}".encode(), end_stream=False)
        p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    p.pump()
    events = p.take_client()
    for i, sid in enumerate(sids):
        assert _body(events, sid) == f"response {i}".encode()
    assert len(_of(TrailersReceived, events)) == 60
    assert p.client.open_outbound_streams == 0 and p.server.open_inbound_streams == 0


def test_trailers_only_response(factory: Factory) -> None:
    """gRPC's error answer: one HEADERS with :status and grpc-status that ends the stream."""
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    p.pump()
    p.take_server()
    p.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                (b"grpc-status", b"14"), (b"grpc-message", b"unavailable")], True)
    p.pump()
    heads = _of(HeadersReceived, p.take_client())
    assert len(heads) == 1 and isinstance(heads[0], HeadersReceived)
    assert heads[0].end_stream and (b"grpc-status", b"14") in heads[0].headers
    assert p.client.open_outbound_streams == 0


def test_server_reset_reaches_the_client_and_later_sends_are_ignored(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.pump()
    p.server.reset_stream(sid, REFUSED_STREAM)
    p.pump()
    resets = _of(StreamReset, p.take_client())
    assert len(resets) == 1 and isinstance(resets[0], StreamReset)
    assert (resets[0].stream_id, resets[0].error_code, resets[0].remote) == (sid, REFUSED_STREAM, True)
    p.client.send_data(sid, b"late", end_stream=True)  # raced the reset: ignored, no error
    p.server.send_headers(sid, RESPONSE, end_stream=True)
    p.pump()
    assert not _of(ConnectionError, p.take_server()) and not _of(ConnectionError, p.take_client())
    assert p.client.open_outbound_streams == 0 and p.client.buffered(sid) == 0


def test_goaway_refuses_the_streams_above_last_and_lets_the_others_finish(factory: Factory) -> None:
    p = Pair(factory)
    sids = [p.client.next_stream_id()]
    p.client.send_headers(sids[0], REQUEST, end_stream=True)
    for _ in range(2):
        sids.append(p.client.next_stream_id())
        p.client.send_headers(sids[-1], REQUEST, end_stream=True)
    p.pump()
    p.take_server()
    p.server.goaway(NO_ERROR, last_stream_id=sids[0])
    p.pump()
    events = p.take_client()
    goaways = _of(GoAwayReceived, events)
    assert len(goaways) == 1 and isinstance(goaways[0], GoAwayReceived)
    assert goaways[0].last_stream_id == sids[0]
    refused = [(e.stream_id, e.error_code, e.remote) for e in events if isinstance(e, StreamReset)]
    assert refused == [(sids[1], REFUSED_STREAM, False), (sids[2], REFUSED_STREAM, False)]
    assert not p.client.can_open_stream
    with pytest.raises(ValueError, match="can_open_stream"):
        p.client.send_headers(sids[2] + 2, REQUEST, end_stream=True)
    p.server.send_headers(sids[0], RESPONSE, end_stream=False)
    p.server.send_trailers(sids[0], [(b"grpc-status", b"0")])
    p.pump()
    events = p.take_client()
    assert [type(e) for e in events if isinstance(e, (HeadersReceived, TrailersReceived))] == [
        HeadersReceived, TrailersReceived]
    assert p.client.open_outbound_streams == 0


def test_header_list_over_the_limit_is_a_connection_error(factory: Factory) -> None:
    p = Pair(factory, server=H2Settings(max_header_list_size=4096))
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, [*REQUEST, (b"x-big", b"v" * 5000)], end_stream=True)
    p.pump()
    events = p.take_server()
    errors = _of(ConnectionError, events)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert (errors[0].error_code, errors[0].reason) == (ENHANCE_YOUR_CALM, "headers_too_large")
    assert not _of(HeadersReceived, events)
    goaways = _of(GoAwayReceived, p.take_client())
    assert len(goaways) == 1 and isinstance(goaways[0], GoAwayReceived)
    assert goaways[0].error_code == ENHANCE_YOUR_CALM


def test_a_header_list_under_the_limit_passes(factory: Factory) -> None:
    p = Pair(factory, server=H2Settings(max_header_list_size=4096))
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, [*REQUEST, (b"x-big", b"v" * 3000)], end_stream=True)
    p.pump()
    heads = _of(HeadersReceived, p.take_server())
    assert len(heads) == 1 and isinstance(heads[0], HeadersReceived)
    assert heads[0].headers[-1] == (b"x-big", b"v" * 3000)


def test_stream_ids_run_out_on_the_client(factory: Factory) -> None:
    p = Pair(factory, client=H2Settings(first_stream_id=MAX_STREAM_ID))
    assert p.client.can_open_stream
    sid = p.client.next_stream_id()
    assert sid == MAX_STREAM_ID
    p.client.send_headers(sid, REQUEST, end_stream=True)
    assert not p.client.can_open_stream  # the pool opens another connection
    with pytest.raises(RuntimeError, match="no stream ids left"):
        p.client.next_stream_id()
    p.pump()
    heads = _of(HeadersReceived, p.take_server())
    assert len(heads) == 1 and isinstance(heads[0], HeadersReceived) and heads[0].stream_id == sid
    p.server.send_headers(sid, RESPONSE, end_stream=True)
    p.pump()
    assert _of(HeadersReceived, p.take_client())


def test_informational_response_then_final(factory: Factory) -> None:
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=True)
    p.pump()
    p.server.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")], end_stream=False)
    p.server.send_headers(sid, RESPONSE, end_stream=False)
    p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    p.pump()
    events = [e for e in p.take_client() if isinstance(e, (HeadersReceived, TrailersReceived))]
    assert [(type(e).__name__, e.headers[0]) for e in events] == [
        ("HeadersReceived", (b":status", b"103")), ("HeadersReceived", (b":status", b"200")),
        ("TrailersReceived", (b"grpc-status", b"0"))]


@pytest.mark.parametrize(("client_backend", "server_backend"), [("nghttp2", "h2ref"), ("h2ref", "nghttp2")])
def test_backends_interoperate(client_backend: str, server_backend: str) -> None:
    """One backend's client against the other's server: a streamed exchange with trailers, 300 KB
    each way through 16 KiB windows, and a reset."""
    small = H2Settings(initial_window_size=16_384, connection_window_size=65_535)
    p = Pair(BACKENDS[client_backend], client=small, server=small, server_factory=BACKENDS[server_backend])
    body = bytes(range(256)) * 1200
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, body, end_stream=True)
    got: list[H2Event] = []
    for _ in range(500):
        p.pump()
        events = p.take_server()
        got += events
        for e in events:
            if isinstance(e, DataReceived):
                p.server.consumed(e.stream_id, e.flow_length)
        if any(isinstance(e, DataReceived) and e.end_stream for e in events):
            break
    assert _body(got, sid) == body
    p.server.send_headers(sid, RESPONSE, end_stream=False)
    p.server.send_data(sid, body[::-1], end_stream=False)
    p.server.send_trailers(sid, [(b"grpc-status", b"0")])
    got = []
    for _ in range(500):
        p.pump()
        events = p.take_client()
        got += events
        for e in events:
            if isinstance(e, DataReceived):
                p.client.consumed(e.stream_id, e.flow_length)
        if _of(TrailersReceived, events):
            break
    assert _body(got, sid) == body[::-1] and len(_of(TrailersReceived, got)) == 1
    second = p.client.next_stream_id()
    p.client.send_headers(second, REQUEST, end_stream=False)
    p.pump()
    p.client.reset_stream(second, CANCEL)
    p.pump()
    resets = _of(StreamReset, p.take_server())
    assert [(e.stream_id, e.error_code) for e in resets if isinstance(e, StreamReset)] == [(second, CANCEL)]
    assert not _of(ConnectionError, p.take_client())


def _recorded_requests() -> bytes:
    """An h2 client's bytes for three requests: a 20 KB header (HEADERS + CONTINUATION), bodies
    in several DATA frames, trailers on one."""
    client = H2RefCodec(client_side=True)
    client.start()
    wire = client.data_to_send()
    for i in range(3):
        sid = client.next_stream_id()
        client.send_headers(sid, [*REQUEST, (b"x-big", bytes([97 + i]) * 20_000), (b"x-n", b"%d" % i)], False)
        client.send_data(sid, bytes([48 + i]) * 7000, end_stream=i != 1)
        if i == 1:
            client.send_trailers(sid, [(b"grpc-status", b"0"), (b"x-t", b"t")])
        wire += client.data_to_send()
    return wire


RECORDED = _recorded_requests()


def _digest(events: list[H2Event]) -> list[tuple[object, ...]]:
    """What a caller sees, whatever the reads: heads, bodies joined per stream, trailers, ends."""
    out: list[tuple[object, ...]] = []
    bodies: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, HeadersReceived):
            out.append(("headers", e.stream_id, tuple(e.headers), e.end_stream))
        elif isinstance(e, TrailersReceived):
            out.append(("trailers", e.stream_id, tuple(e.headers)))
        elif isinstance(e, DataReceived):
            bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
            if e.end_stream:
                out.append(("end", e.stream_id))
        elif isinstance(e, (ConnectionError, StreamReset)):
            out.append(("error", repr(e)))
    out.append(("bodies", tuple(sorted(bodies.items()))))
    return out


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(RECORDED) - 1), max_size=60))
def test_events_do_not_depend_on_how_the_bytes_are_read(cuts: list[int]) -> None:
    """A header block or DATA frame split anywhere across reads gives the same events."""
    for name in sorted(BACKENDS):
        whole = BACKENDS[name](False, H2Settings())
        whole.start()
        expected = _digest(whole.receive(RECORDED))
        assert ("error" not in {d[0] for d in expected}) and len(expected) == 7, expected
        split = BACKENDS[name](False, H2Settings())
        split.start()
        got: list[H2Event] = []
        bounds = [0, *sorted(set(cuts)), len(RECORDED)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            got += split.receive(RECORDED[a:b])
        assert _digest(got) == expected, name


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_receive_takes_any_bytes_like(factory: Factory, kind: type) -> None:
    """A BufferedProtocol hands over a memoryview of its buffer; the events own their bytes."""
    p = Pair(factory)
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, REQUEST, end_stream=False)
    p.client.send_data(sid, b"payload", end_stream=True)
    buffer = bytearray(p.client.data_to_send())
    events = p.server.receive(kind(buffer))
    buffer[:] = b"\0" * len(buffer)  # the reader reuses its buffer
    assert _body(events, sid) == b"payload"
    heads = _of(HeadersReceived, events)
    assert isinstance(heads[0], HeadersReceived) and heads[0].headers[:4] == REQUEST[:4]
