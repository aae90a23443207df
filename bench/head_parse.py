"""Per-head CPU of the HTTP/1 codec: `python -m bench.head_parse [--n 200000] [--parser]`.

Feeds the codec (meshd/http/codec.py) whole heads, one per `feed` as on a keep-alive connection,
and prints the microseconds per head for four shapes: the request wrk sends in the throughput
scenario (one header), a browser-like request (eight headers), the response nginx sends there
(five headers and a 2-byte body) and a larger response (nine headers). Run it on the compiled
build (`make install`): the pure-Python figures say nothing about the proxy. The medians of
`--repeat` rounds are printed, so other processes on the machine move them less.

`--parser` also times httptools alone on the same heads, with protocols whose callbacks do
nothing: one given every callback the codec takes (`on_header` once per header line), one
without `on_header` (llhttp then makes no call per header and no header bytes are created), and
one with only the two end-of-part callbacks. The differences bound what any change to how the
headers reach meshd can save (docs/benchmarks-analysis.md, issue 20's third pass). These
protocols are interpreted, so their calls cost more than the compiled codec's; the analysis
quotes the same classes compiled with mypyc as well.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Final

import httptools

from meshd.http.codec import RequestCodec, ResponseCodec

WRK_REQUEST: Final = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BROWSER_REQUEST: Final = (
    b"GET /api/v1/accounts/12345?expand=owner HTTP/1.1\r\n"
    b"Host: accounts.bank.svc\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef\r\n"
    b"X-Request-Id: 6f1d2c9e-8a7b-4c3d-9e0f-1a2b3c4d5e6f\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
NGINX_RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Wed, 02 Dec 2026 07:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 2\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"ok"
)
LARGER_RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bank/1.0\r\n"
    b"Date: Wed, 02 Dec 2026 07:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 2\r\n"
    b"Cache-Control: no-store\r\n"
    b"ETag: \"33a64df551425fcc55e4d42a148795d9f25f89d4\"\r\n"
    b"Vary: Accept-Encoding\r\n"
    b"X-Request-Id: 6f1d2c9e-8a7b-4c3d-9e0f-1a2b3c4d5e6f\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"{}"
)


def _requests(data: bytes, n: int) -> float:
    codec = RequestCodec()
    feed = codec.feed
    start = time.perf_counter()
    for _ in range(n):
        feed(data)
    return time.perf_counter() - start


def _responses(data: bytes, n: int) -> float:
    codec = ResponseCodec("bench")
    feed = codec.feed
    expect = codec.expect
    start = time.perf_counter()
    for _ in range(n):
        expect("GET")
        feed(data)
    return time.perf_counter() - start


class _Every:
    """Every callback the codec takes, doing nothing."""

    def on_message_begin(self) -> None:
        pass

    def on_url(self, url: bytes) -> None:
        pass

    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        pass

    def on_headers_complete(self) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


class _NoHeader:
    """The same without `on_header`: llhttp makes no call per header line."""

    def on_message_begin(self) -> None:
        pass

    def on_url(self, url: bytes) -> None:
        pass

    def on_status(self, status: bytes) -> None:
        pass

    def on_headers_complete(self) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


class _Ends:
    """Only the end of the head and the end of the message."""

    def on_headers_complete(self) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def _parser_only(protocol: object, data: bytes, n: int, request: bool) -> float:
    parser = httptools.HttpRequestParser(protocol) if request else httptools.HttpResponseParser(protocol)
    feed = parser.feed_data
    start = time.perf_counter()
    for _ in range(n):
        feed(data)
    return time.perf_counter() - start


def _check() -> None:
    """Each shape parses into one head and its end (so the figures time real work)."""
    for data in (WRK_REQUEST, BROWSER_REQUEST):
        events = RequestCodec().feed(data)
        assert len(events) == 2, events
    for data in (NGINX_RESPONSE, LARGER_RESPONSE):
        codec = ResponseCodec("bench")
        codec.expect("GET")
        events = codec.feed(data)
        assert len(events) == 3, events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="heads per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is printed")
    parser.add_argument("--parser", action="store_true", help="also time httptools alone (no-op callbacks)")
    args = parser.parse_args(argv)
    _check()
    shapes: list[tuple[str, Callable[[bytes, int], float], bytes]] = [
        ("request, wrk's (1 header)", _requests, WRK_REQUEST),
        ("request, browser-like (8 headers)", _requests, BROWSER_REQUEST),
        ("response, nginx's (5 headers)", _responses, NGINX_RESPONSE),
        ("response, larger (9 headers)", _responses, LARGER_RESPONSE),
    ]
    for label, run, data in shapes:
        rounds = [run(data, args.n) / args.n * 1e6 for _ in range(args.repeat)]
        print(f"{label:<36} {statistics.median(rounds):6.3f} µs per head (min {min(rounds):.3f})")
    if not args.parser:
        return
    print("httptools alone, callbacks doing nothing (every one / no on_header / only the two ends):")
    for label, run, data in shapes:
        request = run is _requests
        figures = []
        for protocol in (_Every(), _NoHeader(), _Ends()):
            rounds = [_parser_only(protocol, data, args.n, request) / args.n * 1e6 for _ in range(args.repeat)]
            figures.append(f"{statistics.median(rounds):6.3f}")
        print(f"{label:<36} {' / '.join(figures)} µs per head")


if __name__ == "__main__":
    main()
