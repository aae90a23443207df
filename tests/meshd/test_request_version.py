"""The listener's request version shortcut agrees with llhttp for every version it accepts."""

from __future__ import annotations

import httptools
import pytest

from meshd.http.codec import request_version


class _Head:
    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


@pytest.mark.parametrize("version", ["1.1", "1.0", "2.0", "0.9"])
@pytest.mark.parametrize("connection", [None, "close", "keep-alive", "Keep-Alive, foo", "foo", "close, keep-alive"])
def test_the_shortcut_gives_what_llhttp_reports(version: str, connection: str | None) -> None:
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    extra = f"Connection: {connection}\r\n" if connection is not None else ""
    parser.feed_data(f"GET / HTTP/{version}\r\nHost: a\r\n{extra}\r\n".encode())
    assert head.done
    got = request_version(parser, parser.should_keep_alive(), connection is not None)
    assert got == parser.get_http_version() == version
