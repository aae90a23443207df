"""meshd/http2/factory.py: the codec choice, made once and made again on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshd.http2 import factory, nghttp2
from meshd.http2.codec import H2Settings
from meshd.http2.h2ref import H2RefCodec


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    yield
    factory.reset()


def test_choose_makes_the_next_codecs_on_that_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert factory.choose("h2ref") == "h2ref" == factory.backend_name()
    assert isinstance(factory.new_codec(True, H2Settings()), H2RefCodec)
    if nghttp2.AVAILABLE:
        assert factory.choose("nghttp2") == "nghttp2"
        assert isinstance(factory.new_codec(False, H2Settings()), nghttp2.NgHttp2Codec)


def test_reset_reads_the_environment_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_H2_CODEC", "h2ref")
    factory.reset()
    assert factory.backend_name() == "h2ref"
    monkeypatch.setenv("MESHD_H2_CODEC", "auto")
    assert factory.backend_name() == "h2ref"  # kept until reset
    factory.reset()
    assert factory.backend_name() == ("nghttp2" if nghttp2.AVAILABLE else "h2ref")


def test_an_unknown_codec_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown HTTP/2 codec 'fast'"):
        factory.choose("fast")
