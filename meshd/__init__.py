"""meshd: a service-mesh proxy daemon in the spirit of linkerd 1.x."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__version__ = "0.1.0"

#: The hot-path modules the package build compiles with mypyc (setup.py; docs/architecture.md,
#: "Building and packaging"). The Makefile's HOT list must name the same files (a test checks).
COMPILED_MODULES: Final = (
    "meshd.listener",
    "meshd.fastpath",
    "meshd.pool.connection",
    "meshd.http.codec",
    "meshd.http.body",
    "meshd.http.framing",
    "meshd.http.messages",
    "meshd.http.headers",
    "meshd.pipeline.context",
    "meshd.pipeline.stack",
    "meshd.pipeline.hygiene",
    "meshd.pipeline.identify",
    "meshd.pipeline.bind",
    "meshd.pipeline.assemble",
    "meshd.pipeline.timeouts",
    "meshd.pipeline.retries",
    "meshd.pipeline.stats",
    "meshd.pipeline.dispatch",
    "meshd.pipeline.tracing",
    "meshd.pipeline.authorize",
    "meshd.tracing.propagation",
    "meshd.tracing.spans",
    "meshd.router",
    "meshd.client",
    "meshd.pool.pool",
    "meshd.retry.budget",
    "meshd.expiry",
    "meshd.admission",
    "meshd.h2server",
    "meshd.h2fast",
    "meshd.pool.h2",
    "meshd.http2.codec",
    "meshd.http2.convert",
    "meshd.http2.guard",
    "meshd.http2.nghttp2",
    "meshd.grpc.status",
    "meshd.grpc.stats",
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


def _stale_compiled_modules(root: Path | None = None) -> list[str]:
    """In a source checkout, the compiled modules' sources that are newer than their builds.

    Python imports `listener.cpython-311-*.so` before `listener.py`: after an edit (or a `git
    checkout`) a stale build would silently run the old code. An editable install (`make
    install`) builds them in place, beside their sources; an installed wheel is built from what
    it holds, so only a checkout is looked at. Nothing is changed here: the caller refuses.
    """
    if root is None:
        root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return []  # an installed package: its compiled modules were built from what is beside them
    stale: list[str] = []
    for name in COMPILED_MODULES:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        for built in source.parent.glob(source.stem + ".*.so"):
            try:
                if built.stat().st_mtime < source.stat().st_mtime:
                    stale.append(str(source.relative_to(root)))
            except OSError:
                pass
    return stale


def _refuse_stale_compiled_modules(root: Path | None = None) -> None:
    """Refuse to import a checkout whose compiled hot path is older than its sources."""
    stale = _stale_compiled_modules(root)
    if stale:
        # They are compiled together (one shared runtime, native classes used across them), so
        # running the edited sources beside the other builds is no way out either.
        raise ImportError(
            f"meshd: the compiled hot path is older than {', '.join(stale)}: Python would run the "
            "old code. Run `make install` to compile it again, or `MESHD_PURE=1 make install` to "
            "remove the compiled modules and run the sources."
        )


_refuse_stale_compiled_modules()
