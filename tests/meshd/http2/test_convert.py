"""HTTP/2 header blocks to wire requests and back (meshd/http2/convert.py), without sockets."""

from __future__ import annotations

import pytest

from meshd.http.body import Body
from meshd.http.messages import Response
from meshd.http2.convert import MalformedRequest, h2_request_headers, h2_response_headers, request_from_h2

BASE = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"accounts"), (b":path", b"/a?b=1")]


def _request(extra: list[tuple[bytes, bytes]], end_stream: bool = False):  # type: ignore[no-untyped-def]
    return request_from_h2(BASE + extra, end_stream, client_ip="10.0.0.1", replay_limit=1024, producer=None)


def test_pseudo_headers_become_method_target_and_host_and_l5d_fields_are_set_apart():
    request = _request([(b"te", b"trailers"), (b"l5d-dtab", b"/svc=>/x"), (b"x-a", b"1"), (b"content-length", b"5")])
    assert (request.method, request.target, request.host, request.version) == ("POST", "/a?b=1", "accounts", "2")
    assert request.headers == [(b"te", b"trailers"), (b"x-a", b"1")]
    assert request.l5d == {"l5d-dtab": b"/svc=>/x"}
    assert request.body.length == 5 and not request.body.ended
    assert request.client_ip == "10.0.0.1"


def test_a_head_with_end_stream_has_an_ended_body():
    assert _request([], end_stream=True).body.ended


@pytest.mark.parametrize(
    "extra",
    [
        [(b"connection", b"close")],
        [(b"transfer-encoding", b"chunked")],
        [(b"te", b"gzip")],
        [(b"content-length", b"x")],
        [(b":protocol", b"websocket")],
    ],
)
def test_malformed_requests_are_refused(extra):
    with pytest.raises(MalformedRequest):
        _request(extra)


def test_connect_and_missing_pseudo_headers_are_refused():
    with pytest.raises(MalformedRequest):
        request_from_h2([(b":method", b"CONNECT"), (b":authority", b"x:443")], True, client_ip="", replay_limit=0,
                        producer=None)
    with pytest.raises(MalformedRequest):
        request_from_h2([(b":method", b"GET"), (b":scheme", b"http")], True, client_ip="", replay_limit=0,
                        producer=None)


def test_request_headers_for_an_upstream_drop_hop_by_hop_and_keep_te_trailers():
    request = _request([(b"te", b"trailers"), (b"x-a", b"1")], end_stream=True)
    request.headers += [(b"Connection", b"close"), (b"Keep-Alive", b"5"), (b"Host", b"other"), (b"X-B", b"2")]
    out = h2_request_headers(request, b"http", [(b"l5d-dst-service", b"/svc/accounts")])
    assert out[:4] == BASE
    assert out[4:] == [(b"te", b"trailers"), (b"x-a", b"1"), (b"x-b", b"2"), (b"l5d-dst-service", b"/svc/accounts")]


def test_response_headers_for_a_client_start_with_status_and_extend_via():
    response = Response(200, b"OK", [(b"Via", b"1.1 other"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")],
                        Body.empty())
    out = h2_response_headers(response, 12)
    assert out == [(b":status", b"200"), (b"via", b"1.1 other, 2 meshd"), (b"x-a", b"1"), (b"content-length", b"12")]
