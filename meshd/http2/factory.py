"""The one place an HTTP/2 codec is made: the fastest backend installed, else the `h2` reference.

Every HTTP/2 connection meshd opens or accepts (meshd/h2server.py, meshd/pool/h2.py) gets its
codec from `new_codec`, so a backend is swapped here and nowhere else. Order of preference:
`meshd.http2.nghttp2` (libnghttp2 through a small binding) when it imports, then
`meshd.http2.h2ref` (the pure-Python `h2` library). `MESHD_H2_CODEC=h2ref` forces the reference
(to compare the two, or to rule the fast one out when chasing a bug).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Final

from meshd.http2.codec import H2Codec, H2Settings

#: backends in order of preference: (module, class)
BACKENDS: Final = (("meshd.http2.nghttp2", "NgHttp2Codec"), ("meshd.http2.h2ref", "H2RefCodec"))

CodecFactory = Callable[..., H2Codec]
_chosen: tuple[str, CodecFactory] | None = None


def _choose() -> tuple[str, CodecFactory]:
    forced = os.environ.get("MESHD_H2_CODEC", "")
    for module_name, class_name in BACKENDS:
        short = module_name.rsplit(".", 1)[1]
        if forced and forced != short:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        factory = getattr(module, class_name, None)
        if factory is not None:
            return short, factory
    raise ImportError("no HTTP/2 codec is installed: install the `h2` package (pip install h2)")


def backend_name() -> str:
    """The backend `new_codec` uses ("nghttp2" or "h2ref")."""
    global _chosen
    if _chosen is None:
        _chosen = _choose()
    return _chosen[0]


def new_codec(client_side: bool, settings: H2Settings) -> H2Codec:
    """A codec for one connection: the client side of an upstream one, or the server side."""
    global _chosen
    if _chosen is None:
        _chosen = _choose()
    return _chosen[1](client_side=client_side, settings=settings)
