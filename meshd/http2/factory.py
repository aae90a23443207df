"""The one place an HTTP/2 codec is made: the fastest backend installed, else the `h2` reference.

Every HTTP/2 connection meshd opens or accepts (meshd/h2server.py, meshd/pool/h2.py) gets its
codec from `new_codec`, so a backend is swapped here and nowhere else. The choice is
meshd/http2/backends.py's "auto": `meshd.http2.nghttp2` (libnghttp2 through a small binding)
when its binding loads, else `meshd.http2.h2ref` (the pure-Python `h2` library).
`MESHD_H2_CODEC=h2ref` (or `nghttp2`) forces one (to compare the two, or to rule the fast one out
when chasing a bug).

The choice is made at the first codec and kept; `choose()` makes it again and `reset()` forgets it (tests run the same
in-process meshd on each backend in turn). Connections already open keep the codec they have.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from meshd.http2.codec import H2Codec, H2Settings

CodecFactory = Callable[[bool, H2Settings], H2Codec]
_chosen: tuple[str, CodecFactory] | None = None


def _choose(name: str | None) -> tuple[str, CodecFactory]:
    # the choice itself is meshd/http2/backends.py's ("auto": nghttp2 when its binding loads)
    from meshd.http2.backends import codec_factory, resolve

    if name is None:
        name = os.environ.get("MESHD_H2_CODEC", "") or "auto"
    return resolve(name), codec_factory(name)


def choose(name: str | None = None) -> str:
    """Choose the backend again: `name` ("auto", "nghttp2", "h2ref"), or None for what
    `MESHD_H2_CODEC` says now ("auto" when unset). Returns the backend chosen; raises ValueError
    for an unknown name and ImportError when nghttp2 is asked for and its binding does not load."""
    global _chosen
    _chosen = _choose(name)
    return _chosen[0]


def reset() -> None:
    """Forget the choice: the next codec chooses again (by `MESHD_H2_CODEC` then)."""
    global _chosen
    _chosen = None


def backend_name() -> str:
    """The backend `new_codec` uses ("nghttp2" or "h2ref")."""
    global _chosen
    if _chosen is None:
        _chosen = _choose(None)
    return _chosen[0]


def new_codec(client_side: bool, settings: H2Settings) -> H2Codec:
    """A codec for one connection: the client side of an upstream one, or the server side."""
    global _chosen
    if _chosen is None:
        _chosen = _choose(None)
    return _chosen[1](client_side, settings)
