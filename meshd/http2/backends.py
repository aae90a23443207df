"""Which HTTP/2 codec backend to use: `codec_factory("auto")` prefers libnghttp2.

- "nghttp2": libnghttp2 through the cffi binding (meshd/http2/nghttp2.py), about ten times less
  CPU per exchange than h2 (docs/benchmarks.md, "HTTP/2 codec choice"). Needs the binding built
  at install (Debian `libnghttp2-dev`); asking for it when it is missing raises ImportError
  saying what to install.
- "h2ref": the pure-Python `h2` library (meshd/http2/h2ref.py), the reference: checks the protocol
  closely, slow.
- "auto": "nghttp2" when its binding loads, else "h2ref" (`fallback_reason()` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from meshd.http2.codec import H2Codec, H2Settings

CodecFactory = Callable[[bool, H2Settings], H2Codec]

BACKENDS: Final = ("auto", "nghttp2", "h2ref")


def fallback_reason() -> str | None:
    """Why "auto" would not use nghttp2 here, or None when it does."""
    from meshd.http2 import nghttp2

    return nghttp2.WHY_UNAVAILABLE


def resolve(name: str = "auto") -> str:
    """The backend `name` stands for here: "nghttp2" or "h2ref"."""
    if name not in BACKENDS:
        raise ValueError(f"unknown HTTP/2 codec {name!r}: one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "nghttp2" if fallback_reason() is None else "h2ref"
    return name


def codec_factory(name: str = "auto") -> CodecFactory:
    """A function `(client_side, settings) -> H2Codec` for the backend `name`."""
    backend = resolve(name)
    if backend == "nghttp2":
        from meshd.http2 import nghttp2

        if not nghttp2.AVAILABLE:
            raise ImportError(nghttp2.WHY_UNAVAILABLE)

        def make_ng(client_side: bool, settings: H2Settings) -> H2Codec:
            return nghttp2.NgHttp2Codec(client_side=client_side, settings=settings)

        return make_ng
    from meshd.http2.h2ref import H2RefCodec

    def make_ref(client_side: bool, settings: H2Settings) -> H2Codec:
        return H2RefCodec(client_side=client_side, settings=settings)

    return make_ref
