"""The `fs` namer: one file per service in a directory, each line `host port [weight] [key=value ...]`, watched.

How this works: the directory is scanned when the namer starts and then every `pollIntervalMs`
(default 250 ms, so an edit applies well within a second). A scan stats every file (following
symlinks, so Kubernetes ConfigMap volumes, whose files are symlinks swapped by the kubelet, work)
and re-reads only files whose (mtime, size, inode) changed. A file that fails to parse is logged
and its last good contents keep serving; a file that disappears makes its name negative.

Polling rather than inotify: it needs no extra dependency, sees symlink swaps and network
filesystems alike, and costs one `stat` per file per interval (about 1 ms for 1,000 files).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import ClassVar, Final

from meshd.discovery.addr import Addr, Address, Bound, Failed, Neg
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG, Leaf, NameTree
from routing.path import Path, PathError

log = logging.getLogger("meshd.discovery.fs")

#: the `key=value` tokens an endpoints line may carry after `host port [weight]`
_METADATA_KEYS: Final = ("node", "zone")


@dataclass(frozen=True, slots=True, kw_only=True)
class FsNamerConfig:
    """`kind: fs` — service discovery from files."""

    KIND: ClassVar[str] = "fs"
    root_dir: str
    prefix: str = "/#/fs"
    poll_interval_ms: int = field(default=250, metadata={"min": 10, "max": 60000})

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


class FsNamer:
    def __init__(self, config: FsNamerConfig, runtime: Runtime) -> None:
        self._config = config
        self._prefix = Path.read(config.prefix)
        self._root = runtime.resolve_path(config.root_dir)
        self._interval = config.poll_interval_ms / 1000.0
        self._version: Observable[int] = Observable(0)
        self._stamps: dict[str, tuple[int, int, int]] = {}
        self._contents: dict[str, frozenset[Address] | None] = {}
        self._addrs: dict[str, Observable[Addr]] = {}
        self._task: asyncio.Task[None] | None = None
        self.scans = 0

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
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fs-namer {self._root}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def statistics(self) -> dict[str, object]:
        return {"root": str(self._root), "services": len(self._stamps), "scans": self.scans}

    # -- scanning -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.scan()
            except Exception:  # a scan must never kill the watcher
                log.exception("fs namer: scanning %s failed", self._root)

    def scan(self) -> None:
        """Look at the directory once; apply every change found."""
        self.scans += 1
        seen: dict[str, tuple[int, int, int]] = {}
        try:
            entries = list(os.scandir(self._root))
        except OSError:
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue  # hidden files and the kubelet's ..data / ..2024_… directories
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if not entry.is_file(follow_symlinks=True):
                continue
            seen[name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        names_changed = seen.keys() != self._stamps.keys()
        for name, stamp in seen.items():
            if self._stamps.get(name) != stamp:
                self._reload(name)
        for name in self._stamps.keys() - seen.keys():
            self._contents.pop(name, None)
            obs = self._addrs.get(name)
            if obs is not None:
                obs.set(Neg())
        self._stamps = seen
        if names_changed:
            self._version.set(self._version.get() + 1)

    def _reload(self, name: str) -> None:
        path = self._root / name
        try:
            addresses = parse_endpoints_file(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, FileFormatError) as exc:
            log.error("fs namer: %s: %s; keeping its last good contents", path, exc)
            if name not in self._contents:
                self._contents[name] = None
                obs = self._addrs.get(name)
                if obs is not None:
                    obs.set(Failed(f"{path}: {exc}"))
            return
        old = self._contents.get(name)
        self._contents[name] = addresses
        obs = self._addrs.get(name)
        if obs is not None and addresses != old:
            obs.set(Bound(addresses))

    def _current(self, name: str) -> Addr:
        if name not in self._contents:
            return Neg()
        contents = self._contents[name]
        if contents is None:
            return Failed(f"{self._root / name}: unreadable")
        return Bound(contents)

    def __repr__(self) -> str:
        return f"<FsNamer {self._prefix.show()} root={self._root} services={len(self._stamps)}>"
