"""The HTTP/2 codec contract (meshd/http2/codec.py), run against every backend.

Two codecs, a client and a server, are wired back to back in memory: what one queues is fed to
the other. Each test states one promise of the interface; a new backend joins `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.http2.codec import (
    CANCEL,
    PROTOCOL_ERROR,
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


BACKENDS: dict[str, Factory] = {"h2ref": _h2ref}

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"ledger"),
           (b":path", b"/bank.Ledger/Post"), (b"content-type", b"application/grpc")]


class Pair:
    def __init__(self, factory: Factory, client: H2Settings | None = None,
                 server: H2Settings | None = None) -> None:
        self.client = factory(True, client or H2Settings())
        self.server = factory(False, server or H2Settings())
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


def test_garbage_is_a_connection_error_with_goaway(factory: Factory) -> None:
    server = factory(False, H2Settings())
    server.start()
    server.data_to_send()
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    errors = _of(ConnectionError, events)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert errors[0].error_code == PROTOCOL_ERROR
    assert b"\x07" in server.data_to_send()[:4]  # a GOAWAY frame (type 7) was queued
