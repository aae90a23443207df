"""SHA-256 hex digests (the config's version, a routing file's version) without `hashlib`.

`import hashlib` loads `_hashlib`, Python's binding of OpenSSL's digests, whose set-up costs
0.55 MB of RSS in every meshd process (docs/benchmarks-memory.md), for two digests taken at
start-up and on a reload. CPython's own SHA-256 module (`_sha256`; `_sha2` from 3.12) gives the
same digests for 32 KB; an interpreter without either falls back to hashlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def _constructor() -> Callable[[bytes], Any]:
    for name in ("_sha256", "_sha2"):  # CPython 3.11; 3.12 and later
        try:
            constructor: Callable[[bytes], Any] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    import hashlib

    return hashlib.sha256


_SHA256 = _constructor()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of `data` in lower-case hex, as `hashlib.sha256(data).hexdigest()`."""
    return str(_SHA256(data).hexdigest())
