"""The HTTP/1 codec on its own: bytes in, events out, with no socket, loop or clock.

Each stream is read whole, byte by byte, and cut at arbitrary points (hypothesis): the events
must not depend on how the bytes were cut. The malformed and smuggling inputs that the listener
refuses over real sockets (tests/integration/test_bad_input.py) are refused here the same way,
with the same status and reason, however they are cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http.codec import (
    END,
    MAX_CONTENT_LENGTH,
    EndOfMessage,
    Event,
    ParseError,
    RequestCodec,
    ResponseCodec,
)
from meshd.http.messages import Request, Response
from tests.integration.test_bad_input import MALFORMED_HEAD, SMUGGLING_AND_FRAMING

Summary = list[tuple[object, ...]]


def summarise(events: Sequence[Event]) -> Summary:
    """Events as plain tuples, with consecutive body pieces joined (cuts may split them anywhere)."""
    out: Summary = []
    for event in events:
        if isinstance(event, Request):
            body = event.body
            out.append((
                "request", event.method, event.target, event.version, event.headers, event.l5d, event.host,
                event.keep_alive, event.expect_continue, event.forwarded, body.length, body.chunked, body.ended,
            ))
        elif isinstance(event, Response):
            body = event.body
            out.append((
                "response", event.status, event.reason, event.headers, event.content_length, event.has_via,
                body.length, body.chunked, body.ended,
            ))
        elif isinstance(event, bytes):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event)  # type: ignore[operator]
            elif event:
                out.append(("data", event))
        elif isinstance(event, EndOfMessage):
            out.append(("end", event.trailers))
        else:
            assert isinstance(event, ParseError)
            out.append(("error", event.error.status, event.error.l5d_err, event.abandons))
    return out


def feed_requests(data: bytes, cuts: Sequence[int] = (), **limits: int) -> Summary:
    codec = RequestCodec(client_ip="10.0.0.1", **limits)
    return summarise([e for piece in _pieces(data, cuts) for e in codec.feed(piece)])


def feed_responses(data: bytes, methods: Sequence[str], cuts: Sequence[int] = (), eof: bool = False) -> Summary:
    """Read responses to `methods`, in order: each `expect()` is called when the one before ended."""
    codec = ResponseCodec("up:1")
    pending = list(methods)
    codec.expect(pending.pop(0))
    events: list[Event] = []
    for piece in _pieces(data, cuts):
        got = codec.feed(piece)
        events += got
        if any(isinstance(e, EndOfMessage) for e in got) and pending:
            # one response per request: the next is expected only once this one ended (the
            # upstream connection sends its next request then)
            codec.expect(pending.pop(0))
    if eof:
        events += codec.eof()
    return summarise(events)


def _pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def bytewise(data: bytes) -> list[int]:
    return list(range(1, len(data)))


# -- requests ----------------------------------------------------------------------------------

GET = b"GET /accounts/42?x=1 HTTP/1.1\r\nHost: accounts\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
POST = b"POST /pay HTTP/1.1\r\nHost: payments\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world"
CHUNKED = (
    b"PUT /up HTTP/1.1\r\nHost: files\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\nl5d-dtab: /svc=>/x\r\nHost: evil\r\n\r\n"
)
HOP = (
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n"
    b"Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade-Insecure-Requests: 1\r\nProxy-Connection: x\r\n"
    b"l5d-dtab: /svc=>/y\r\nVia: 1.1 lb\r\nExpect: 100-continue\r\n\r\n"
)
HTTP10 = b"GET /old HTTP/1.0\r\nHost: legacy\r\n\r\n"
ABSOLUTE = b"GET http://ledger:8080/entries HTTP/1.1\r\nHost: wrong\r\n\r\n"
PIPELINED = GET + POST + CHUNKED + HOP + HTTP10


def test_a_request_arriving_whole_is_one_head_and_its_end():
    [head, end] = feed_requests(GET)
    assert head == (
        "request", "GET", "/accounts/42?x=1", "1.1",
        [(b"Host", b"accounts"), (b"User-Agent", b"t"), (b"Accept", b"*/*")],
        {}, "accounts", True, False, False, None, False, True,
    )
    assert end == ("end", None)


def test_a_request_body_follows_its_head_and_the_end_carries_the_allowed_trailers():
    assert feed_requests(CHUNKED)[1:] == [
        ("data", b"hello world"),
        # l5d-* and fields that steer routing (Host) are dropped from trailers (TRAILER_DROPPED)
        ("end", [(b"X-Sum", b"42")]),
    ]
    head = feed_requests(POST)[0]
    assert head[10:] == (11, False, False)  # Content-Length framing, body still open
    assert (b"Content-Length", b"11") not in head[4]  # type: ignore[operator]


def test_hop_by_hop_fields_and_those_connection_names_are_removed_and_l5d_set_apart():
    [head, _] = feed_requests(HOP)
    assert head[4] == [(b"Host", b"svc"), (b"Upgrade-Insecure-Requests", b"1"), (b"Via", b"1.1 lb")]
    assert head[5] == {"l5d-dtab": b"/svc=>/y"}
    assert head[8:10] == (True, True)  # Expect: 100-continue taken; Via seen (forwarded)


def test_http_10_and_absolute_form_targets():
    [head, _] = feed_requests(HTTP10)
    assert head[3] == "1.0" and head[7] is False  # no keep-alive without asking for it
    [head, _] = feed_requests(ABSOLUTE)
    # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host
    assert head[6] == "ledger:8080" and head[4] == [(b"Host", b"ledger:8080")]


def test_pipelined_requests_come_out_in_order():
    kinds = [e[0] for e in feed_requests(PIPELINED)]
    assert kinds == ["request", "end", "request", "data", "end", "request", "data", "end",
                     "request", "end", "request", "end"]


@pytest.mark.parametrize("data", [GET, POST, CHUNKED, HOP, HTTP10, ABSOLUTE, PIPELINED],
                         ids=["get", "post", "chunked", "hop", "http10", "absolute", "pipelined"])
def test_byte_by_byte_gives_the_same_events_as_whole(data):
    assert feed_requests(data, bytewise(data)) == feed_requests(data)


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(PIPELINED) - 1), max_size=40))
def test_any_cut_gives_the_same_events_as_whole(cuts):
    assert feed_requests(PIPELINED, cuts) == feed_requests(PIPELINED)


REFUSED = [
    pytest.param(d, s, p, id=i)
    for i, d, s, p in SMUGGLING_AND_FRAMING + MALFORMED_HEAD
    if i != "absent-host-on-http-1.1"  # a routing decision, made by the pipeline (identify)
]


@pytest.mark.parametrize(("data", "status", "phrase"), REFUSED)
def test_malformed_and_smuggling_inputs_are_refused_however_they_are_cut(data, status, phrase):
    whole = feed_requests(data)
    assert whole[-1][0] == "error"
    assert whole[-1][1] == status and phrase in str(whole[-1][2]).lower()
    # nothing after the error, and no complete request before it: a refused message is never
    # handed on whole (a head may come first when the fault is in its body; the listener then
    # fails that body and answers the error instead)
    assert [e[0] for e in whole].count("end") == 0
    assert feed_requests(data, bytewise(data))[-1][:2] == ("error", status)


def test_the_codec_takes_nothing_more_after_an_error():
    codec = RequestCodec()
    smuggled = b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = codec.feed(smuggled + b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\n\r\n")
    assert [type(e) for e in events] == [ParseError]
    assert codec.failed and codec.feed(GET) == []


def test_an_upgrade_request_is_refused_and_abandons_its_head():
    events = feed_requests(b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert events[0][0] == "request"
    assert events[-1] == ("error", 501, "protocol upgrades (Upgrade, CONNECT) are not supported", True)


def test_header_count_and_size_limits():
    many = b"GET / HTTP/1.1\r\nHost: s\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9)) + b"\r\n"
    assert feed_requests(many, max_headers=10)[0][0] == "request"
    assert feed_requests(many, max_headers=9)[-1][:2] == ("error", 431)
    big = b"GET / HTTP/1.1\r\nHost: s\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    assert feed_requests(big, max_head_bytes=2100)[0][0] == "request"
    assert feed_requests(big, max_head_bytes=1000)[-1][:2] == ("error", 431)


@pytest.mark.parametrize("step", [1, 7, 100])
def test_an_endless_header_is_refused_while_it_is_still_arriving(step):
    # llhttp keeps an unfinished header line to itself: the codec counts the reads instead
    codec = RequestCodec(max_head_bytes=1000)
    assert codec.feed(b"GET / HTTP/1.1\r\nHost: s\r\nX-Endless: ") == []
    assert codec.in_head
    events: list[Event] = []
    fed = 0
    while not events and fed < 5000:
        events = codec.feed(b"a" * step)
        fed += step
    assert isinstance(events[-1], ParseError) and events[-1].error.status == 431
    assert 1000 < fed <= 1000 + step


def test_in_head_says_when_a_head_is_incomplete():
    codec = RequestCodec()
    assert not codec.in_head
    codec.feed(GET[:10])
    assert codec.in_head
    codec.feed(GET[10:])
    assert not codec.in_head


def test_bodies_are_fed_to_no_one_and_the_codec_keeps_no_message_between_reads():
    # The codec creates each body open and empty; the owner feeds it. Between two reads the
    # codec holds no event list (an idle keep-alive connection keeps nothing of its last exchange).
    codec = RequestCodec()
    [request, data, end] = codec.feed(POST)
    assert isinstance(request, Request) and request.body.received == 0 and not request.body.ended
    assert data == b"hello world" and end is END
    assert codec._events == []


# -- responses ---------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED_RESPONSE = (
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nVia: 1.1 app\r\nConnection: X-Drop\r\nX-Drop: 1\r\n\r\n"
    b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
)
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


def test_a_response_arriving_whole():
    assert feed_responses(OK, ["GET"]) == [
        ("response", 200, b"OK", [(b"Content-Type", b"text/plain")], 5, False, 5, False, False),
        ("data", b"hello"),
        ("end", None),
    ]


def test_chunked_response_keeps_its_trailers_and_drops_the_fields_connection_names():
    [head, data, end] = feed_responses(CHUNKED_RESPONSE, ["POST"])
    assert head[3] == [(b"Via", b"1.1 app")] and head[5] is True and head[7] is True
    assert data == ("data", b"abc") and end == ("end", [(b"grpc-status", b"0")])


def test_interim_responses_are_skipped():
    assert feed_responses(INTERIM, ["GET"]) == feed_responses(OK, ["GET"])


def test_the_response_to_head_ends_with_its_head():
    events = feed_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", ["HEAD"])
    assert [e[0] for e in events] == ["response", "end"]
    assert events[0][4] == 1000  # the length a GET would have had, kept for the client


def test_a_body_delimited_by_close_ends_at_eof_and_the_connection_is_not_kept():
    codec = ResponseCodec("up:1")
    codec.expect("GET")
    [head, data] = codec.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert isinstance(head, Response) and data == b"until close"
    assert codec.until_close and not codec.keep_alive
    assert codec.eof() == [END]


def test_keep_alive_follows_the_upstreams_connection_header():
    codec = ResponseCodec("up:1")
    codec.expect("GET")
    codec.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not codec.keep_alive
    codec = ResponseCodec("up:1")
    codec.expect("GET")
    codec.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert codec.keep_alive


SEQUENCE = OK + INTERIM + CHUNKED_RESPONSE + NO_CONTENT + OK


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(SEQUENCE) - 1), max_size=40))
def test_responses_cut_anywhere_give_the_same_events(cuts):
    methods = ["GET", "GET", "POST", "DELETE", "GET"]
    assert feed_responses(SEQUENCE, methods, cuts) == feed_responses(SEQUENCE, methods)


def test_responses_byte_by_byte_give_the_same_events():
    methods = ["GET", "GET", "POST", "DELETE", "GET"]
    whole = feed_responses(SEQUENCE, methods)
    assert [e[0] for e in whole].count("end") == 5
    assert feed_responses(SEQUENCE, methods, bytewise(SEQUENCE)) == whole


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_CONTENT_LENGTH + 1), "exceeds 2**63-1"),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", "maxresponseheaders"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "maxresponseheaderbytes"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed response"),
    ],
    ids=["cl-and-te", "length-over-2^63-1", "too-many-headers", "head-too-large", "upgrade", "bad-chunk"],
)
def test_malformed_responses_fail_as_502_with_the_upstream_named(data, phrase):
    for cuts in ([], bytewise(data) if len(data) < 5000 else list(range(1000, len(data), 1000))):
        last = feed_responses(data, ["GET"], cuts)[-1]
        assert last[:2] == ("error", 502)
        assert "up:1" in str(last[2]) and phrase in str(last[2]).lower()


def test_the_largest_allowed_length_is_accepted():
    [head] = feed_responses(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_CONTENT_LENGTH, ["GET"])
    assert head[4] == MAX_CONTENT_LENGTH


# -- field names: each is acted on by its lower-case name, whatever its case and length -----------

#: names the codec acts on whose value needs no particular shape (framing fields, Connection and
#: Upgrade change the parse itself and have tests of their own above)
_ACTED_ON_REQUEST = (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"proxy-authenticate",
                     b"proxy-authorization", b"via", b"x-forwarded-for", b"expect", b"l5d-dtab", b"l5d-reqid",
                     b"l5d-x-some-long-name-of-thirty-two", b"l5d-")
_ACTED_ON_RESPONSE = (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"proxy-authenticate",
                      b"proxy-authorization", b"upgrade", b"via")
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
                 min_size=1, max_size=40).map(lambda s: s.encode("ascii"))


@st.composite
def _any_case(draw: st.DrawFn, names: Sequence[bytes]) -> bytes:
    name = draw(st.sampled_from(names))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c - 32 if flip and 97 <= c <= 122 else c for c, flip in zip(name, flips, strict=True))


@settings(max_examples=300)
@given(name=st.one_of(_any_case(_ACTED_ON_REQUEST), _TOKEN))
def test_a_request_field_is_acted_on_by_its_lower_case_name(name: bytes) -> None:
    lname = name.lower()
    if lname in (b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"):
        return  # framing and the parse itself: tested above
    [request, _] = RequestCodec().feed(b"GET / HTTP/1.1\r\nHost: svc\r\n" + name + b": v1\r\n\r\n")
    assert isinstance(request, Request)
    kept = (name, b"v1") in request.headers
    if lname.startswith(b"l5d-"):
        assert request.l5d == {lname.decode(): b"v1"} and not kept
    elif lname in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"proxy-authenticate",
                   b"proxy-authorization"):
        assert not kept and request.l5d == {}
    elif lname in (b"via", b"x-forwarded-for"):
        assert kept and request.forwarded
    else:  # an end-to-end field, Expect with a value other than 100-continue among them
        assert kept and not request.forwarded and request.l5d == {}
    assert request.host == "svc" and request.headers[0] == (b"Host", b"svc")


@settings(max_examples=300)
@given(name=st.one_of(_any_case(_ACTED_ON_RESPONSE + (b"content-length", b"connection")), _TOKEN))
def test_a_response_field_is_acted_on_by_its_lower_case_name(name: bytes) -> None:
    lname = name.lower()
    if lname == b"transfer-encoding":
        return  # framing: tested above
    value = b"3" if lname == b"content-length" else b"close" if lname == b"connection" else b"v1"
    codec = ResponseCodec("up")
    codec.expect("GET")
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n" + name + b": " + value + b"\r\n\r\nabc")
    response = events[0]
    assert isinstance(response, Response)
    kept = (name, value) in response.headers
    if lname == b"content-length":
        assert not kept and response.content_length == 3 and events[1] == b"abc"
    elif lname == b"connection":
        assert not kept and not codec.keep_alive
    elif lname in _ACTED_ON_RESPONSE and lname != b"via":
        assert not kept
    else:
        assert kept and response.has_via == (lname == b"via")
    assert response.headers[0] == (b"Content-Type", b"a/b")


@pytest.mark.parametrize(
    ("value", "length"),
    [(b"0", 0), (b"7", 7), (b"000123", 123), (b"999999999999999999", 999_999_999_999_999_999),
     (b"1000000000000000000", 10**18), (b"9223372036854775807", MAX_CONTENT_LENGTH)],
)
def test_content_length_values_read_as_int_reads_them(value: bytes, length: int) -> None:
    codec = ResponseCodec("up")
    codec.expect("HEAD")
    [response, _] = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")
    assert isinstance(response, Response) and response.content_length == length
