"""Routes reloader: watches a router's routing file and swaps in its dtab only if it is valid.

How this works: the file is polled (default every 250 ms) by `stat()` following symlinks, and
also by the path it resolves to, so both an in-place edit and a Kubernetes ConfigMap update
(the kubelet atomically re-points the `..data` symlink to a new directory) are seen. A changed
file is parsed and validated with `routing.rules.load_routes`; on success the router's effective
dtab becomes its own dtab followed by the file's entries (bindings are re-made on next use;
requests already in flight keep the binding they started with). On failure the error — with
the file's path, line and column — is logged and counted in
`meshd_config_reloads_total{result="error"}`, and the last good rules keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
from collections.abc import Callable

from routing.dtab import Dtab
from routing.rules import Routes, RoutesError, load_routes

log = logging.getLogger("meshd.reload")

_Stamp = tuple[str, int, int, int] | None


class RoutesWatcher:
    def __init__(
        self,
        path: pathlib.Path,
        apply: Callable[[Dtab], None],
        *,
        interval_s: float = 0.25,
    ) -> None:
        self.path = path
        self._apply = apply
        self._interval = interval_s
        self._stamp: _Stamp = None
        self._task: asyncio.Task[None] | None = None
        self.current: Routes | None = None
        self.successes = 0
        self.errors = 0
        self.last_error: str | None = None

    def load_initial(self) -> None:
        """Load the file at start-up; an invalid file here is a start-up error (RoutesError)."""
        self._stamp = self._stat()
        routes = load_routes(self.path.read_text(encoding="utf-8"), str(self.path))
        self.current = routes
        self._apply(routes.dtab)
        self.successes += 1

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"routes {self.path}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def check(self) -> bool:
        """Reload if the file changed; returns True when new rules were applied."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            self._fail(f"{self.path}: file is missing; keeping the last good routes")
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
            routes = load_routes(text, str(self.path))
        except RoutesError as exc:
            self._fail(str(exc))
            return False
        except (OSError, UnicodeDecodeError) as exc:
            self._fail(f"{self.path}: cannot read: {exc}")
            return False
        self.current = routes
        self.last_error = None
        self._apply(routes.dtab)
        self.successes += 1
        log.info("routes reloaded from %s: %s", self.path, routes.dtab.show())
        return True

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        log.error("routes reload refused, keeping the last good rules: %s", message)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:  # the watcher must survive anything
                log.exception("routes watcher failed on %s", self.path)

    def _stat(self) -> _Stamp:
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return None
        return (real, st.st_mtime_ns, st.st_size, st.st_ino)
