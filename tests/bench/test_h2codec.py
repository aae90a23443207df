"""`python -m bench.h2codec` runs and measures both codecs on the same exchange (a tiny run)."""

from __future__ import annotations

import os

import pytest

from bench import h2codec
from meshd.http2 import nghttp2
from meshd.http2.codec import ConnectionError, HeadersReceived
from meshd.http2.h2ref import H2RefCodec


def test_measures_every_backend_on_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    if not nghttp2.AVAILABLE and os.environ.get("CI") != "true":
        pytest.skip(str(nghttp2.WHY_UNAVAILABLE))
    assert h2codec.main(["--exchanges", "30", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "| server |" in out and "| pair |" in out and "| pair-hpack |" in out
    results = h2codec.measure(30, 1)
    for scenario in ("server", "pair", "pair-hpack"):
        assert set(results[scenario]) == {"h2ref", "nghttp2"}
        assert all(v > 0 for v in results[scenario].values())


def test_the_recorded_client_is_valid_for_a_fresh_server() -> None:
    """The server scenario's input: a fresh server sees every request, whole, and no error."""
    opening, chunks = h2codec.record_client(5)
    server = H2RefCodec(client_side=False)
    server.start()
    events = server.receive(opening)
    for chunk in chunks:
        events += server.receive(chunk)
    heads = [e for e in events if isinstance(e, HeadersReceived)]
    assert [e.stream_id for e in heads] == [1, 3, 5, 7, 9]
    assert not [e for e in events if isinstance(e, ConnectionError)]
