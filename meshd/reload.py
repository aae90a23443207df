"""Routes reloader: watches a router's routing file and swaps in its dtab only if it is valid.

How this works: the file is read every `interval_s` (default 250 ms) through its path, so the
open follows symlinks and both an in-place edit and a Kubernetes ConfigMap update (the kubelet
atomically re-points the `..data` symlink to a new directory) are seen. Change is detected by
comparing the bytes with the last version seen, not by mtime and size, which miss two
same-size edits within one timestamp tick. A changed file is used only once two reads
`settle_s` apart (default 50 ms) agree, so a file caught half-written by a non-atomic writer
(`echo > routes.yaml` truncates first; an empty file is valid and means "no rules") is never
applied nor counted as an error; an edit therefore applies within `interval_s + settle_s`.

A settled change is parsed and validated with `routing.rules.load_routes`; on success the
router's effective dtab becomes its own dtab followed by the file's entries (bindings are
re-made on next use; requests already in flight keep the binding they started with, retries
included). On failure the error, with the file's path, line and column, is logged and counted
in `meshd_config_reloads_total{result="error"}`, and the last good rules keep serving. The
same bad bytes are refused (and counted) once, not on every poll.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Callable

from routing.dtab import Dtab
from routing.rules import Routes, RoutesError, load_routes

log = logging.getLogger("meshd.reload")

#: what a read found: the file's bytes, or None when it is missing
_Contents = bytes | None


class RoutesWatcher:
    def __init__(
        self,
        path: pathlib.Path,
        apply: Callable[[Dtab], None],
        *,
        interval_s: float = 0.25,
        settle_s: float = 0.05,
    ) -> None:
        self.path = path
        self._apply = apply
        self._interval = interval_s
        self._settle = settle_s
        #: the contents last acted on (applied, or refused), so each version is handled once
        self._seen: _Contents = None
        #: contents that differ from `_seen`, waiting for a second read to confirm them
        self._candidate: _Contents = None
        self._has_candidate = False
        self._unreadable = False
        self._task: asyncio.Task[None] | None = None
        self.current: Routes | None = None
        self.successes = 0
        self.errors = 0
        self.last_error: str | None = None

    def load_initial(self) -> None:
        """Load the file at start-up; an invalid file here is a start-up error (RoutesError)."""
        data = self.path.read_bytes()
        routes = load_routes(data.decode("utf-8"), str(self.path))
        self._seen = data
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
        """Read the file; returns True when new rules were applied.

        A change is acted on at the second consecutive call that reads the same new contents;
        the first only records it (see the module docstring).
        """
        try:
            contents: _Contents = self.path.read_bytes()
        except FileNotFoundError:
            contents = None
        except OSError as exc:  # e.g. permissions: refused once, until it is readable again
            self._has_candidate = False
            if not self._unreadable:
                self._unreadable = True
                self._fail(f"{self.path}: cannot read: {exc}")
            return False
        if self._unreadable:
            self._unreadable = False
            self.last_error = None
        if contents == self._seen:
            self._has_candidate = False
            return False
        if not self._has_candidate or contents != self._candidate:
            self._candidate = contents
            self._has_candidate = True
            return False
        self._has_candidate = False
        self._seen = contents
        if contents is None:
            self._fail(f"{self.path}: file is missing; keeping the last good routes")
            return False
        try:
            routes = load_routes(contents.decode("utf-8"), str(self.path))
        except RoutesError as exc:
            self._fail(str(exc))
            return False
        except UnicodeDecodeError as exc:
            self._fail(f"{self.path}: not UTF-8 text: {exc}")
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
            await asyncio.sleep(self._settle if self._has_candidate else self._interval)
            try:
                self.check()
            except Exception:  # the watcher must survive anything
                log.exception("routes watcher failed on %s", self.path)
