"""bench/head_parse.py: its heads are the shapes it names, and it prints a figure for each."""

from __future__ import annotations

import re

import pytest

from bench.head_parse import BROWSER_REQUEST, LARGER_RESPONSE, NGINX_RESPONSE, WRK_REQUEST, main
from meshd.http.codec import EndOfMessage, RequestCodec, ResponseCodec
from meshd.http.messages import Request, Response


@pytest.mark.parametrize(("data", "headers"), [(WRK_REQUEST, 1), (BROWSER_REQUEST, 7)])
def test_request_shapes_parse_whole(data: bytes, headers: int) -> None:
    events = RequestCodec().feed(data)
    assert len(events) == 2
    request, end = events
    assert isinstance(request, Request) and isinstance(end, EndOfMessage)
    assert len(request.headers) == headers  # Connection: keep-alive is hop-by-hop, not kept


@pytest.mark.parametrize(("data", "headers"), [(NGINX_RESPONSE, 3), (LARGER_RESPONSE, 7)])
def test_response_shapes_parse_whole(data: bytes, headers: int) -> None:
    codec = ResponseCodec("bench")
    codec.expect("GET")
    response, body, end = codec.feed(data)
    assert isinstance(response, Response) and response.status == 200
    assert len(response.headers) == headers  # Content-Length and Connection are framing/hop-by-hop
    assert body == data[-2:] and isinstance(end, EndOfMessage)


def test_prints_a_figure_per_shape(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--n", "20", "--repeat", "1", "--parser"])
    lines = capsys.readouterr().out.splitlines()
    codec = [line for line in lines if re.search(r"\d+\.\d{3} µs per head \(min", line)]
    parser = [line for line in lines if re.search(r"(\d+\.\d{3}\s*/\s*){2}\d+\.\d{3} µs per head", line)]
    assert len(codec) == 4 and len(parser) == 4
