"""The `fs` namer: one file per service in a directory, each line `host port [weight] [key=value ...]`, watched.

How this works: the directory is scanned when the namer starts and then every `pollIntervalMs`
(default 250 ms, so an edit applies well within a second). A scan stats every file (following
symlinks, so Kubernetes ConfigMap volumes, whose files are symlinks swapped by the kubelet, work)
and re-reads only files whose (mtime, size, inode) changed. A file that fails to parse is logged
and its last good contents keep serving; a file that disappears makes its name negative.

Each file may be at most `maxFileBytes` (default 1 MiB, about 40,000 replica lines). Its size is
checked with fstat on the open file before reading, and at most `maxFileBytes + 1` bytes are
read; a larger file is refused like a file that does not parse: one error log line with its size
and the limit, one count in `meshd_fs_reloads_total{result="error"}`, last good contents kept.
A file up to 16 KiB (about 450 lines, 1.5 ms to parse) is read and parsed during the scan; a
larger one is read and parsed in a worker thread and its result applied on the event loop, so a
big file never stalls the proxy (a 900 KiB file takes about 90 ms to parse). Per file, only the
result of the latest load is applied: a slow load of an older version is dropped when it ends.
A new file still loading answers "pending" (binding waits for it, up to `bindingTimeoutMs`).
When meshd has no file descriptor left (EMFILE/ENFILE), the directory or a file cannot be opened:
that scan keeps every name and its contents as they were, logs a warning, and is not counted as
an error; the next scan tries again.

Polling rather than inotify: it needs no extra dependency, sees symlink swaps and network
filesystems alike, and costs one `stat` per file per interval (about 1 ms for 1,000 files).

A scan whose directory has not changed does not list it: when the directory's (mtime, inode)
are those of the last listing, every entry then was a file, and every file's stamp is the same,
there is nothing a listing would find (adding, removing or renaming an entry, the kubelet's
symlink swap included, changes the directory's mtime). Filesystem timestamps are coarse (a
kernel tick, or the server's clock on a network filesystem), so a listing is trusted this way
only when the directory's mtime was more than `_SETTLED_NS` (2 s) older than the listing itself;
until then every scan lists again. The poll runs as a timer callback, not a task that sleeps,
so a scan wakes the event loop once and runs no coroutine: 4 scans a second, each a stall of
the proxy's loop (docs/benchmarks-analysis.md, "Tail at 1,000 req/s, session 9").
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from meshd.clock import Timer
from meshd.discovery.addr import PENDING, Addr, Address, Bound, Failed, Neg
from meshd.discovery.base import Freshness
from meshd.exposition import Counter, Registry
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG, Leaf, NameTree
from routing.path import Path, PathError

log = logging.getLogger("meshd.discovery.fs")

#: the `key=value` tokens an endpoints line may carry after `host port [weight]`
_METADATA_KEYS: Final = ("node", "zone")
#: files up to this size are read and parsed during the scan; larger ones in a worker thread
INLINE_BYTES: Final = 16 * 1024
#: errno values that mean "no file descriptor left", not "the file is bad"
_FD_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})
#: a directory listing is reused by later scans only if the directory's mtime was at least this
#: much older than the listing (timestamps are coarse; see the module docstring)
_SETTLED_NS: Final = 2_000_000_000

# --- metrics: every metric this module exports, registered on `runtime.registry` ---------------
RELOADS_TOTAL: Final = "meshd_fs_reloads_total"
RELOADS_TOTAL_HELP: Final = "fs namer file loads, by result (success, error: unreadable, too large or not parseable)"
ReloadResult = Literal["success", "error"]
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FsNamerConfig:
    """`kind: fs` — service discovery from files."""

    KIND: ClassVar[str] = "fs"
    root_dir: str
    prefix: str = "/#/fs"
    poll_interval_ms: int = field(default=250, metadata={"min": 10, "max": 60000})
    max_file_bytes: int = field(default=1024 * 1024, metadata={"min": 1})

    def __post_init__(self) -> None:
        try:
            Path.read(self.prefix)
        except PathError as exc:
            raise ValueError(f"prefix: {exc}") from None
        if not self.root_dir:
            raise ValueError("rootDir: must not be empty")

    def build(self, runtime: Runtime) -> FsNamer:
        return FsNamer(self, runtime)


class FileFormatError(ValueError):
    pass


class FileTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the file is {size} bytes, over the limit of {limit} bytes (maxFileBytes); it was not read")
        self.size = size
        self.limit = limit


def load_endpoints_file(path: pathlib.Path, max_bytes: int) -> frozenset[Address]:
    """Read (fstat first, then at most `max_bytes + 1` bytes) and parse one endpoints file.

    Raises FileTooLarge, OSError, UnicodeDecodeError or FileFormatError. Pure: safe in a thread.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise FileTooLarge(size, max_bytes)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew between the fstat and the read
        raise FileTooLarge(len(data), max_bytes)
    return parse_endpoints_file(data.decode("utf-8"))


def parse_endpoints_file(text: str) -> frozenset[Address]:
    """Parse `host port [weight] [key=value ...]` lines; blank lines and `#` comments are ignored.

    The optional metadata tokens say where the replica runs, as the k8s namer's addresses do:
    `node=<node name>` (used by the `daemonset` and `localnode` transformers) and
    `zone=<zone>`. Example: `10.0.1.7 8080 2 node=node-a zone=eu-west-1a`.
    """
    addresses: dict[tuple[str, int], Address] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        positional = [p for p in parts if "=" not in p]
        tokens = parts[len(positional):]
        if len(positional) not in (2, 3) or parts[: len(positional)] != positional:
            raise FileFormatError(
                f"line {number}: expected 'host port [weight] [node=<name>] [zone=<name>]', got {raw.strip()!r}"
            )
        host = parts[0].strip("[]")
        try:
            port = int(parts[1])
        except ValueError:
            raise FileFormatError(f"line {number}: port must be an integer, got {parts[1]!r}") from None
        if not 1 <= port <= 65535:
            raise FileFormatError(f"line {number}: port must be 1-65535, got {port}")
        weight = 1.0
        if len(positional) == 3:
            try:
                weight = float(parts[2])
            except ValueError:
                raise FileFormatError(f"line {number}: weight must be a number, got {parts[2]!r}") from None
            if not weight > 0 or weight != weight or weight == float("inf"):
                raise FileFormatError(f"line {number}: weight must be a positive number, got {parts[2]!r}")
        meta = _metadata(tokens, number)
        addresses[(host, port)] = Address(host, port, weight=weight, node_name=meta.get("node"), zone=meta.get("zone"))
    return frozenset(addresses.values())


def _metadata(tokens: list[str], number: int) -> dict[str, str]:
    """`key=value` tokens as a dict; only the keys in `_METADATA_KEYS`, each once, never empty."""
    meta: dict[str, str] = {}
    for token in tokens:
        key, _, value = token.partition("=")
        if key not in _METADATA_KEYS:
            raise FileFormatError(
                f"line {number}: unknown metadata {key!r} in {token!r} (known: {', '.join(_METADATA_KEYS)})"
            )
        if not value:
            raise FileFormatError(f"line {number}: {key}= needs a value")
        if key in meta:
            raise FileFormatError(f"line {number}: {key}= is given twice")
        meta[key] = value
    return meta


#: reads and parses one endpoints file within a size limit (a parameter so tests can slow it down)
Loader = Callable[[pathlib.Path, int], frozenset[Address]]


class FsNamer:
    def __init__(self, config: FsNamerConfig, runtime: Runtime, *, loader: Loader = load_endpoints_file) -> None:
        self._config = config
        self._load = loader
        self._prefix = Path.read(config.prefix)
        self._root = runtime.resolve_path(config.root_dir)
        self._interval = config.poll_interval_ms / 1000.0
        self._clock = runtime.clock  # the poll interval is slept on it
        self._version: Observable[int] = Observable(0)
        self._stamps: dict[str, tuple[int, int, int]] = {}
        self._contents: dict[str, frozenset[Address] | None] = {}
        self._addrs: dict[str, Observable[Addr]] = {}
        self._timer: Timer | None = None
        self._polling = False
        #: the directory's (mtime, inode) at the last listing, when later scans may skip listing
        #: it (every entry a file, no retry due, the mtime settled); else None
        self._listing: tuple[int, int] | None = None
        self._max_bytes = config.max_file_bytes
        #: per file, the sequence number of its latest load; only that load's result is applied
        self._latest: dict[str, int] = {}
        self._loads = 0
        #: loads running in a worker thread
        self._loading: set[asyncio.Task[None]] = set()
        self._fd_exhausted = False
        self._reloads = _reload_counter(runtime.registry)
        self.scans = 0
        self.errors = 0
        #: the thread that did the last load off the event loop (`threading.get_ident()`), for tests
        self.last_load_thread: int | None = None
        #: when the directory was last listed (the clock's time), and since when each file that
        #: fails to load has failed (its last good contents keep serving): for `freshness()`
        self._scanned_at: float | None = None
        self._failing_since: dict[str, float] = {}

    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def version(self) -> Observable[int]:
        return self._version

    @property
    def root(self) -> pathlib.Path:
        return self._root

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        if not path:
            return NEG
        name = path[0]
        if name not in self._stamps:
            return NEG
        return Leaf(BoundName(id=self._prefix.concat(Path((name,))), residual=path.drop(1)))

    def why(self, path: Path) -> str | None:
        """Why `lookup(path)` is negative (for `l5d-err`), or None when the name exists."""
        if not path:
            return "no service name after the prefix"
        if path[0] in self._stamps:
            return None
        return f"no file {path[0]!r} in {self._root}"

    def addr(self, id: Path) -> Observable[Addr]:
        name = id[len(self._prefix)] if len(id) > len(self._prefix) else ""
        obs = self._addrs.get(name)
        if obs is None:
            obs = Observable(self._current(name))
            self._addrs[name] = obs
        return obs

    def release(self, id: Path) -> None:
        name = id[len(self._prefix)] if len(id) > len(self._prefix) else ""
        obs = self._addrs.get(name)
        if obs is not None and obs.subscriber_count == 0:
            del self._addrs[name]

    async def start(self) -> None:
        if not self._root.is_dir():
            log.warning("fs namer: %s is not a directory (yet); every name is negative until it is", self._root)
        self.scan()
        await self.settled()  # the first scan is complete only once its big files are loaded
        self._polling = True
        self._timer = self._clock.call_later(self._interval, self._poll)

    async def settled(self) -> None:
        """Wait until every load running in a worker thread has been applied."""
        while self._loading:
            await asyncio.gather(*self._loading, return_exceptions=True)

    async def close(self) -> None:
        self._polling = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._loading):
            task.cancel()
        self._loading.clear()

    def statistics(self) -> dict[str, object]:
        return {"root": str(self._root), "services": len(self._stamps), "scans": self.scans, "errors": self.errors}

    def freshness(self) -> list[Freshness]:
        """Each file's data is as current as the last scan of the directory, unless its last load
        failed: then as of its failure, stale if earlier contents keep serving."""
        out: list[Freshness] = []
        for name in sorted(self._stamps):
            since = self._failing_since.get(name)
            if since is None:
                out.append(Freshness(name, self._scanned_at, False))
            else:
                out.append(Freshness(name, since, self._contents.get(name) is not None))
        return out

    # -- scanning -----------------------------------------------------------------------------
    def _poll(self) -> None:
        """The poll timer: scan, then arm the next one (unless closed meanwhile)."""
        self._timer = None
        try:
            self.scan()
        except Exception:  # a scan must never stop the watcher
            log.exception("fs namer: scanning %s failed", self._root)
        if self._polling:
            self._timer = self._clock.call_later(self._interval, self._poll)

    def scan(self) -> None:
        """Look at the directory once; apply every change found."""
        self.scans += 1
        if self._listing is not None and self._unchanged(self._listing):
            self._scanned_at = self._clock.now()
            return
        self._listing = None
        seen: dict[str, tuple[int, int, int]] = {}
        listed_at = time.time_ns()
        try:
            dir_stat = os.stat(self._root)
            entries = list(os.scandir(self._root))
        except OSError as exc:
            if exc.errno in _FD_EXHAUSTED:  # cannot open the directory: change nothing, retry next scan
                self._out_of_fds(self._root, exc)
                return
            entries = []
            dir_stat = None
        else:
            self._scanned_at = self._clock.now()
        all_files = True
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue  # hidden files and the kubelet's ..data / ..2024_… directories
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                all_files = False
                continue
            if not entry.is_file(follow_symlinks=True):
                all_files = False
                continue
            seen[name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        names_changed = seen.keys() != self._stamps.keys()
        for name, stamp in seen.items():
            if self._stamps.get(name) != stamp and not self._reload(name, stamp[1]):
                seen[name] = (-1, -1, -1)  # not loaded for want of a file descriptor: retry next scan
        for name in self._stamps.keys() - seen.keys():
            self._contents.pop(name, None)
            self._failing_since.pop(name, None)
            self._latest.pop(name, None)  # a load still running for it is dropped when it ends
            obs = self._addrs.get(name)
            if obs is not None:
                obs.set(Neg())
        self._stamps = seen
        if names_changed:
            self._version.set(self._version.get() + 1)
        if (
            dir_stat is not None
            and all_files
            and listed_at - dir_stat.st_mtime_ns > _SETTLED_NS
            and (-1, -1, -1) not in seen.values()
        ):
            self._listing = (dir_stat.st_mtime_ns, dir_stat.st_ino)

    def _unchanged(self, listing: tuple[int, int]) -> bool:
        """Whether a listing now would find what the last one did: the directory's (mtime, inode)
        and every file's stamp unchanged (one `stat` each, no `open` or `getdents`)."""
        root = str(self._root)
        try:
            st = os.stat(root)
            if (st.st_mtime_ns, st.st_ino) != listing:
                return False
            for name, stamp in self._stamps.items():
                st = os.stat(os.path.join(root, name))
                if (st.st_mtime_ns, st.st_size, st.st_ino) != stamp:
                    return False
        except OSError:
            return False
        return True

    def _reload(self, name: str, size: int) -> bool:
        """Load one changed file: at once when small, else in a worker thread.

        Returns False when it could not be opened for want of a file descriptor.
        """
        self._loads += 1
        seq = self._latest[name] = self._loads
        path = self._root / name
        if size > self._max_bytes:  # refused on the scan's stat: not even opened
            return self._loaded(name, seq, path, FileTooLarge(size, self._max_bytes))
        if size > INLINE_BYTES:
            task = asyncio.get_running_loop().create_task(
                self._load_off_loop(name, seq, path), name=f"fs-namer load {path}"
            )
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)
            return True
        try:
            addresses = self._load(path, self._max_bytes)
        except (OSError, UnicodeDecodeError, FileFormatError, FileTooLarge) as exc:
            return self._loaded(name, seq, path, exc)
        return self._loaded(name, seq, path, addresses)

    async def _load_off_loop(self, name: str, seq: int, path: pathlib.Path) -> None:
        loop = asyncio.get_running_loop()
        outcome: frozenset[Address] | Exception
        try:
            outcome = await loop.run_in_executor(None, self._load_in_thread, path)
        except (OSError, UnicodeDecodeError, FileFormatError, FileTooLarge) as exc:
            outcome = exc
        if not self._loaded(name, seq, path, outcome) and self._latest.get(name) == seq:
            self._stamps[name] = (-1, -1, -1)  # out of file descriptors: retry on the next scan
            self._listing = None

    def _load_in_thread(self, path: pathlib.Path) -> frozenset[Address]:
        self.last_load_thread = threading.get_ident()
        return self._load(path, self._max_bytes)

    def _loaded(self, name: str, seq: int, path: pathlib.Path, outcome: frozenset[Address] | Exception) -> bool:
        """Apply a load's outcome (on the event loop) unless a later load of the file has begun."""
        if self._latest.get(name) != seq:
            return True  # stale: the file changed again, or is gone
        if isinstance(outcome, OSError) and outcome.errno in _FD_EXHAUSTED:
            self._out_of_fds(path, outcome)
            return False
        self._fd_exhausted = False
        if isinstance(outcome, Exception):
            self._failing_since.setdefault(name, self._clock.now())
            self.errors += 1
            self._reloads.labels(result="error").inc()
            log.error("fs namer: %s: %s; keeping its last good contents", path, outcome)
            if name not in self._contents:
                self._contents[name] = None
                obs = self._addrs.get(name)
                if obs is not None:
                    obs.set(Failed(f"{path}: {outcome}"))
            return True
        self._reloads.labels(result="success").inc()
        self._failing_since.pop(name, None)
        old = self._contents.get(name)
        self._contents[name] = outcome
        obs = self._addrs.get(name)
        if obs is not None and outcome != old:
            obs.set(Bound(outcome))
        return True

    def _out_of_fds(self, path: pathlib.Path, exc: OSError) -> None:
        if not self._fd_exhausted:
            self._fd_exhausted = True
            log.warning(
                "fs namer: cannot open %s: %s; out of file descriptors, keeping what is known and"
                " retrying on the next scan",
                path,
                exc,
            )

    def _current(self, name: str) -> Addr:
        if name not in self._contents:
            return PENDING if name in self._latest else Neg()
        contents = self._contents[name]
        if contents is None:
            return Failed(f"{self._root / name}: unreadable")
        return Bound(contents)

    def __repr__(self) -> str:
        return f"<FsNamer {self._prefix.show()} root={self._root} services={len(self._stamps)}>"


_COUNTERS: weakref.WeakKeyDictionary[Registry, Counter] = weakref.WeakKeyDictionary()


def _reload_counter(registry: Registry) -> Counter:
    """One counter per registry, shared by every fs namer registered on it."""
    counter = _COUNTERS.get(registry)
    if counter is None:
        counter = Counter(RELOADS_TOTAL, RELOADS_TOTAL_HELP, ["result"], registry=registry)
        for result in ("success", "error"):
            counter.labels(result=result)
        _COUNTERS[registry] = counter
    return counter
