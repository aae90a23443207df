"""Routes reloader: watches a router's routing file and swaps in its dtab only if it is valid.

How this works: the file is read every `interval_s` (default 250 ms) through its path, so the
open follows symlinks and both an in-place edit and a Kubernetes ConfigMap update (the kubelet
atomically re-points the `..data` symlink to a new directory) are seen. Change is detected by
comparing the bytes with the last version seen, not by mtime and size, which miss two
same-size edits within one timestamp tick. A changed file is used only once two reads
`settle_s` apart (default 50 ms) agree, so a file caught half-written by a non-atomic writer
(`echo > routes.yaml` truncates first; an empty file is valid and means "no rules") is never
applied nor counted as an error; an edit therefore applies within `interval_s + settle_s`.

The file may be at most `max_bytes` (`routesMaxBytes`, default 1 MiB). Its size is checked
with fstat on the open file before anything is read, and at most `max_bytes + 1` bytes are
read; a larger file is refused like an invalid one (logged with its size and the limit,
counted as an error), never read into memory. Reading and parsing run in a worker thread
(PyYAML takes about 20 ms for 64 KiB and 0.3 s for 1 MiB), so the event loop keeps serving
requests meanwhile; only the result is applied on the loop. Each check takes a sequence
number, and a result is applied only if no later check's result has been, so a slow parse of
an old version can never overwrite a newer one.

When meshd has run out of file descriptors (EMFILE, or ENFILE for the whole system) the file
cannot be opened; that says nothing about the file, so it is not counted as an error: one
warning is logged, the last good rules keep serving, and the next poll tries again.

A settled change is parsed and validated with `routing.rules.load_routes`; on success the
router's effective dtab becomes its own dtab followed by the file's entries (bindings are
re-made on next use; requests already in flight keep the binding they started with, retries
included). On failure the error, with the file's path, line and column, is logged and counted
in `meshd_config_reloads_total{result="error"}`, and the last good rules keep serving. The
same bad bytes are refused (and counted) once, not on every poll.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from meshd.clock import MONOTONIC, Clock
from meshd.digest import sha256_hex
from routing.dtab import Dtab
from routing.rules import (
    ROUTES_MAX_BYTES,
    Opener,
    Routes,
    RoutesError,
    RoutesTooLarge,
    load_routes,
    open_binary,
    read_routes_file,
)
from routing.suggest import did_you_mean

if TYPE_CHECKING:
    from meshd.discovery.k8s import ConfigMapState  # the k8s namer loads only when one is configured

log = logging.getLogger("meshd.reload")

#: errors that mean "this process (or system) has no file descriptor left", not "the file is bad"
FD_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _TooLarge:
    """A version of the file that is over the limit: told apart by (size, mtime_ns, inode)."""

    stamp: tuple[int, int, int]
    message: str


#: what a read found: the file's bytes, an oversized version, or None when it is missing
_Contents = bytes | _TooLarge | None


def digest(data: bytes) -> str:
    """A routing file's content version: the first 12 hex digits of the SHA-256 of its bytes."""
    return sha256_hex(data)[:12]


def parse_routes(data: bytes, source: str) -> Routes:
    """Decode and validate a routing file's bytes. Pure: runs in a worker thread."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoutesError(source, "", 1, f"not UTF-8 text: {exc}") from None
    return load_routes(text, source)


def _read(path: pathlib.Path, max_bytes: int, opener: Opener) -> _Contents:
    """One read of the file (in a worker thread)."""
    try:
        return read_routes_file(path, max_bytes, opener)
    except FileNotFoundError:
        return None
    except RoutesTooLarge as exc:
        return _TooLarge(exc.stamp, exc.short)


class RoutesWatcher:
    def __init__(
        self,
        path: pathlib.Path,
        apply: Callable[[Dtab], None],
        *,
        interval_s: float = 0.25,
        settle_s: float = 0.05,
        max_bytes: int = ROUTES_MAX_BYTES,
        opener: Opener = open_binary,
        parse: Callable[[bytes, str], Routes] = parse_routes,
        clock: Clock = MONOTONIC,
        on_routes: Callable[[Routes], None] | None = None,
    ) -> None:
        self.path = path
        #: told every version applied, after `apply`: the router takes its rules with `match:` and
        #: its fault rules, and its `authorization` policy
        self._on_routes = on_routes
        self._clock = clock  # the poll interval and the settle time are slept on it
        self.max_bytes = max_bytes
        self._apply = apply
        self._interval = interval_s
        self._settle = settle_s
        self._opener = opener
        self._parse = parse
        #: the contents last acted on (applied, or refused), so each version is handled once
        self._seen: _Contents = None
        #: contents that differ from `_seen`, waiting for a second read to confirm them
        self._candidate: _Contents = None
        self._has_candidate = False
        self._unreadable = False
        self._fd_exhausted = False
        #: sequence numbers: of the last check started, of the last whose read was acted on,
        #: and of the last whose outcome (applied or refused) was recorded
        self._checks = 0
        self._last_read = 0
        self._last_outcome = 0
        self._task: asyncio.Task[None] | None = None
        self.current: Routes | None = None
        self.successes = 0
        self.errors = 0
        self.last_error: str | None = None
        #: the version in force: for a file, the first 12 hex digits of its bytes' SHA-256 (the same
        #: bytes give the same version on every node); `digest` is that too; `loaded_at` is the wall
        #: time (seconds since the epoch) it was applied
        self.version: str | None = None
        self.digest: str | None = None
        self.loaded_at: float | None = None
        #: the thread that did the last parse (`threading.get_ident()`), for tests
        self.last_parse_thread: int | None = None

    @property
    def source(self) -> str:
        return str(self.path)

    def load_initial(self) -> None:
        """Load the file at start-up; an invalid file here is a start-up error (RoutesError).

        At start-up nothing is served yet, so this reads and parses on the calling thread.
        """
        data = read_routes_file(self.path, self.max_bytes, self._opener)
        routes = parse_routes(data, str(self.path))
        self._seen = data
        self.current = routes
        self._apply(routes.dtab)
        if self._on_routes is not None:
            self._on_routes(routes)
        self.successes += 1
        self.version = self.digest = digest(data)
        self.loaded_at = time.time()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"routes {self.path}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def check(self) -> bool:
        """Read the file; returns True when new rules were applied.

        A change is acted on at the second consecutive check that reads the same new contents;
        the first only records it (see the module docstring). Reading and parsing run in a
        worker thread; checks may overlap, and the outcome of an older check never replaces
        that of a newer one.
        """
        self._checks += 1
        seq = self._checks
        try:
            contents = await _off_loop(_read, self.path, self.max_bytes, self._opener)
        except OSError as exc:
            if seq < self._last_read:
                return False
            self._last_read = seq
            self._has_candidate = False
            if exc.errno in FD_EXHAUSTED:  # not the file's fault: keep the rules, retry next poll
                if not self._fd_exhausted:
                    self._fd_exhausted = True
                    log.warning(
                        "cannot open %s: %s; out of file descriptors, keeping the last good rules and"
                        " retrying on the next poll",
                        self.path,
                        exc,
                    )
                return False
            if not self._unreadable:  # e.g. permissions: refused once, until it is readable again
                self._unreadable = True
                self._fail(seq, f"{self.path}: cannot read: {exc}")
            return False
        if seq < self._last_read:
            return False  # a later check has already read the file
        self._last_read = seq
        if self._fd_exhausted:
            self._fd_exhausted = False
            log.info("%s can be opened again", self.path)
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
            self._fail(seq, f"{self.path}: file is missing; keeping the last good routes")
            return False
        if isinstance(contents, _TooLarge):
            self._fail(seq, contents.message)
            return False
        try:
            routes = await _off_loop(self._parse_in_thread, contents)
        except RoutesError as exc:
            self._fail(seq, str(exc))
            return False
        if seq < self._last_outcome:
            return False  # a newer version was applied or refused while this one was parsed
        self._last_outcome = seq
        self.current = routes
        self.last_error = None
        self._apply(routes.dtab)
        if self._on_routes is not None:
            self._on_routes(routes)
        self.successes += 1
        self.version = self.digest = digest(contents)
        self.loaded_at = time.time()
        log.info("routes reloaded from %s (version %s): %s", self.path, self.version, routes.dtab.show())
        return True

    def _parse_in_thread(self, contents: bytes) -> Routes:
        self.last_parse_thread = threading.get_ident()
        return self._parse(contents, str(self.path))

    def _fail(self, seq: int, message: str) -> None:
        if seq < self._last_outcome:
            return
        self._last_outcome = seq
        self.errors += 1
        self.last_error = message
        log.error("routes reload refused, keeping the last good rules: %s", message)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._settle if self._has_candidate else self._interval)
            try:
                await self.check()
            except Exception:  # the watcher must survive anything
                log.exception("routes watcher failed on %s", self.path)


async def _off_loop(fn: Callable[..., _T], *args: object) -> _T:
    """Run `fn(*args)` in the loop's default executor (a thread) and return its result."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# --- routes from a Kubernetes ConfigMap ------------------------------------------------------


class ConfigMapSource(Protocol):
    """Who watches the ConfigMap: a k8s namer (`K8sNamer.watch_config_map`), with its API connection."""

    async def watch_config_map(self, namespace: str, name: str, on_change: Callable[[ConfigMapState], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Refused:
    """A version that cannot be used and was not parsed (missing object or key, too large)."""

    message: str


class ConfigMapRoutesWatcher:
    """A router's routing file kept in a ConfigMap: list+watch through the Kubernetes API.

    How this works: a k8s namer's `watch_config_map` lists and watches the one ConfigMap (by
    name) and calls `_changed` with what the API says after every list, event and failure; a
    consumer task handles the latest state, one at a time (so versions apply in order and a
    burst of edits costs one parse of the last). The routing file is `data[key]`. A version is
    identified by its text: the same text again does nothing. New text is parsed in a worker
    thread with `parse_routes`, exactly as a file is; a valid version is applied, and a broken
    one, a deleted ConfigMap, a missing key or text over `max_bytes` is refused once (logged,
    counted in `errors`, shown in `last_error`) while the last good rules keep serving. API
    failures (unreachable, 403 forbidden, 5xx) are not versions: they are logged by the
    informer, counted in `meshd_k8s_api_errors_total`, shown in `last_error` while they last,
    and retried with the namer's backoff; the last good rules keep serving meanwhile.

    `version` is the ConfigMap's `metadata.resourceVersion` (the same on every node, since
    they all read it from the API), `digest` the first 12 hex digits of the text's SHA-256,
    `loaded_at` the wall time it was applied.
    """

    def __init__(
        self,
        source: ConfigMapSource,
        namespace: str,
        name: str,
        key: str,
        apply: Callable[[Dtab], None],
        *,
        max_bytes: int = ROUTES_MAX_BYTES,
        parse: Callable[[bytes, str], Routes] = parse_routes,
        clock: Clock = MONOTONIC,
        on_routes: Callable[[Routes], None] | None = None,
    ) -> None:
        self._source = source
        self._on_routes = on_routes
        self._clock = clock  # the start-up wait is timed on it
        self.namespace = namespace
        self.name = name
        self.key = key
        self.source = f"configmap {namespace}/{name} key {key}"
        self._apply = apply
        self.max_bytes = max_bytes
        self._parse = parse
        self._latest: ConfigMapState | None = None
        self._dirty = asyncio.Event()
        self._first = asyncio.Event()
        self._seen: bytes | _Refused | None = None
        self._api_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.current: Routes | None = None
        self.successes = 0
        self.errors = 0
        self.last_error: str | None = None
        self.version: str | None = None
        self.digest: str | None = None
        self.loaded_at: float | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._source.watch_config_map(self.namespace, self.name, self._changed),
                             name=f"routes {self.source} watch"),
            loop.create_task(self._consume(), name=f"routes {self.source}"),
        ]

    async def wait_first(self, timeout_s: float) -> bool:
        """Wait until a first version was applied or refused; False if none came within `timeout_s`."""
        try:
            async with self._clock.timeout(timeout_s):
                await self._first.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _changed(self, state: ConfigMapState) -> None:
        self._latest = state
        self._dirty.set()

    async def _consume(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            state = self._latest
            if state is None:
                continue
            try:
                await self._handle(state)
            except Exception:  # the watcher must survive anything
                log.exception("routes watcher failed on %s", self.source)

    async def _handle(self, state: ConfigMapState) -> None:
        if state.error is not None:
            message = f"{self.source}: Kubernetes API call failed: {state.error}; keeping the last good routes"
            if self._api_error is None:
                log.error("routes from %s: %s", self.source, message)
            self._api_error = message
            self.last_error = message
            return
        if not state.synced:
            return
        if self._api_error is not None:
            log.info("routes from %s: the Kubernetes API answers again", self.source)
            if self.last_error == self._api_error:
                self.last_error = None
            self._api_error = None
        contents = self._contents(state.obj)
        if contents == self._seen:
            return
        self._seen = contents
        if isinstance(contents, _Refused):
            self._fail(contents.message)
            return
        try:
            routes = await _off_loop(self._parse, contents, self.source)
        except RoutesError as exc:
            self._fail(str(exc))
            return
        self.current = routes
        self.last_error = None
        self._apply(routes.dtab)
        if self._on_routes is not None:
            self._on_routes(routes)
        self.successes += 1
        self.version = _resource_version(state.obj)
        self.digest = digest(contents)
        self.loaded_at = time.time()
        self._first.set()
        log.info("routes reloaded from %s (version %s): %s", self.source, self.version, routes.dtab.show())

    def _contents(self, obj: Mapping[str, object] | None) -> bytes | _Refused:
        where = f"{self.source}: "
        if obj is None:
            return _Refused(f"{where}the ConfigMap {self.namespace}/{self.name} does not exist (deleted?); keeping the "
                            "last good routes")
        data = obj.get("data")
        data = data if isinstance(data, Mapping) else {}
        text = data.get(self.key)
        if not isinstance(text, str):
            binary = obj.get("binaryData")
            if isinstance(binary, Mapping) and self.key in binary:
                return _Refused(f'{where}the key "{self.key}" is in binaryData; put the routing file in data, as text')
            keys = ", ".join(sorted(str(k) for k in data)) or "none"
            return _Refused(f'{where}the ConfigMap has no key "{self.key}" in data (keys: {keys}){did_you_mean(self.key, [str(k) for k in data])}')
        raw = text.encode("utf-8")
        if len(raw) > self.max_bytes:
            return _Refused(f"{where}the routing file is {len(raw)} bytes, over the limit of {self.max_bytes} bytes "
                            "(routesMaxBytes)")
        return raw

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        self._first.set()
        log.error("routes reload refused, keeping the last good rules: %s", message)


def _resource_version(obj: Mapping[str, object] | None) -> str | None:
    meta = obj.get("metadata") if obj is not None else None
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else None
