"""meshd: a service-mesh proxy daemon in the spirit of linkerd 1.x."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

__version__ = "0.1.0"

#: The hot-path modules `make install` compiles with mypyc (C extensions beside their sources; see
#: docs/architecture.md). The Makefile's HOT list must name the same files (a test checks).
COMPILED_MODULES: Final = (
    "meshd.listener",
    "meshd.pool.connection",
    "meshd.http.body",
    "meshd.http.framing",
    "meshd.http.messages",
    "meshd.http.headers",
    "meshd.pipeline.stack",
    "meshd.pipeline.hygiene",
    "meshd.pipeline.identify",
    "meshd.pipeline.bind",
    "meshd.pipeline.assemble",
    "meshd.pipeline.timeouts",
    "meshd.pipeline.retries",
    "meshd.pipeline.stats",
    "meshd.pipeline.dispatch",
    "meshd.router",
    "meshd.client",
    "meshd.pool.pool",
    "meshd.retry.budget",
    "balancers.base",
    "balancers.node",
    "balancers.p2c",
    "balancers.peak_ewma",
    "balancers.ewma",
    "balancers.accrual",
    "balancers.round_robin",
    "balancers.least_loaded",
    "balancers.membership",
)


def _drop_stale_compiled_modules(root: Path | None = None) -> list[Path]:
    """In a source checkout, remove the compiled modules if any is older than its source.

    Python imports `listener.cpython-311-*.so` before `listener.py`: after an edit (or a `git
    checkout`) a stale build would silently run the old code. They are compiled together (one
    shared runtime, native classes used across them), so one stale build removes them all; the
    sources then run as pure Python until `make install` compiles them again.
    """
    if root is None:
        root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return []  # an installed package: its compiled modules were built from what is beside them
    builds: list[Path] = []
    stale: list[str] = []
    for name in COMPILED_MODULES:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        for built in source.parent.glob(source.stem + ".*.so"):
            builds.append(built)
            try:
                if built.stat().st_mtime < source.stat().st_mtime:
                    stale.append(source.name)
            except OSError:
                pass
    if not stale:
        return []
    for built in builds:
        built.unlink(missing_ok=True)
    print(f"meshd: the compiled hot path is older than {', '.join(stale)}: removed, running the sources "
          "(`make install` compiles them again)", file=sys.stderr)
    return builds


_drop_stale_compiled_modules()
