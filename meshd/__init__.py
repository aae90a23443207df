"""meshd: a service-mesh proxy daemon in the spirit of linkerd 1.x."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

__version__ = "0.1.0"

#: The hot-path modules `make install` compiles with mypyc (C extensions beside their sources; see
#: docs/architecture.md). The Makefile's HOT list must name the same files (a test checks).
COMPILED_MODULES: Final = ("meshd.listener", "meshd.pool.connection", "meshd.http.body", "meshd.http.framing")


def _drop_stale_compiled_modules(root: Path | None = None) -> list[Path]:
    """In a source checkout, remove compiled modules older than their source.

    Python imports `listener.cpython-311-*.so` before `listener.py`: after an edit (or a `git
    checkout`) a stale build would silently run the old code. It is removed instead, so the
    source runs (as pure Python) until `make install` compiles it again.
    """
    if root is None:
        root = Path(__file__).resolve().parent.parent
    removed: list[Path] = []
    if not (root / ".git").exists():
        return removed  # an installed package: its compiled modules were built from what is beside them
    for name in COMPILED_MODULES:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        for built in source.parent.glob(source.stem + ".*.so"):
            try:
                if built.stat().st_mtime < source.stat().st_mtime:
                    built.unlink()
                    removed.append(built)
                    print(f"meshd: {built.name} is older than {source.name}: removed, running the source "
                          "(`make install` compiles it again)", file=sys.stderr)
            except OSError:
                pass
    return removed


_drop_stale_compiled_modules()
