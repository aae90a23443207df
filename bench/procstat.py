"""Reads a process tree's CPU time and memory from /proc, for "requests per proxy CPU-second".

How this works: `/proc/<pid>/stat` holds utime, stime (this process, all threads) and cutime, cstime
(children it has already reaped), in clock ticks. A proxy's CPU time is the sum of utime + stime +
cutime + cstime over the proxy and every live descendant (workers), so a worker that exits during the
run still counts once: first in its own utime, then in its parent's cutime. The bench takes the
difference of two such readings around a run.

Parsing splits at the *last* ")" because the command name (field 2) may itself contain spaces and
parentheses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that the bench uses (man 5 proc numbers them 1-based)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    rss_pages: int

    def cpu_ticks(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


class ProcSource(Protocol):
    """Where /proc text comes from: the real filesystem, or a dict in tests."""

    def pids(self) -> Iterable[int]: ...

    def read(self, pid: int, name: str) -> str | None: ...


class RealProc:
    """The live /proc. A process that vanishes between listing and reading reads as None."""

    __slots__ = ("_root",)

    def __init__(self, root: Path = Path("/proc")) -> None:
        self._root = root

    def pids(self) -> Iterable[int]:
        return [int(entry.name) for entry in self._root.iterdir() if entry.name.isdigit()]

    def read(self, pid: int, name: str) -> str | None:
        try:
            return (self._root / str(pid) / name).read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        cutime=int(rest[13]),
        cstime=int(rest[14]),
        rss_pages=int(rest[21]),
    )


def parse_status_kb(text: str, field: str) -> int | None:
    """A "Name:   123 kB" line of /proc/<pid>/status or smaps_rollup, in kB; None when absent."""
    prefix = field + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            parts = line[len(prefix) :].split()
            return int(parts[0]) if parts else None
    return None


def tree(root_pid: int, source: ProcSource) -> list[ProcStat]:
    """The process `root_pid` and all its live descendants, plus anything left in its process group."""
    stats: dict[int, ProcStat] = {}
    for pid in source.pids():
        text = source.read(pid, "stat")
        if text is not None:
            stats[pid] = parse_stat(text)
    if root_pid not in stats:
        return []
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    members: set[int] = set()
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in members:
            continue
        members.add(pid)
        stack.extend(children.get(pid, ()))
    root_group = stats[root_pid].pgrp
    members.update(pid for pid, stat in stats.items() if stat.pgrp == root_group)
    return [stats[pid] for pid in sorted(members)]


def tree_cpu_seconds(root_pid: int, source: ProcSource | None = None) -> float:
    """CPU seconds (user + system) used so far by `root_pid`, its descendants and its reaped children."""
    members = tree(root_pid, source or RealProc())
    return sum(stat.cpu_ticks() for stat in members) / CLOCK_TICKS


def parse_busy_seconds(proc_stat: str) -> float:
    """Busy CPU seconds of the whole machine since boot, from the "cpu" line of /proc/stat:
    user + nice + system + irq + softirq + steal (idle and iowait are not busy)."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            fields = [int(v) for v in line.split()[1:]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    raise ValueError("no aggregate cpu line in /proc/stat")


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """The machine's busy CPU seconds and those of one process tree, read at the same moment."""

    machine_busy: float
    tree_busy: float

    @classmethod
    def take(cls, root_pid: int) -> CpuSnapshot:
        return cls(parse_busy_seconds(Path("/proc/stat").read_text()), tree_cpu_seconds(root_pid))

    def others_since(self, earlier: CpuSnapshot) -> float:
        """CPU seconds used by everything outside the tree between the two snapshots."""
        machine = self.machine_busy - earlier.machine_busy
        return max(0.0, machine - (self.tree_busy - earlier.tree_busy))


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    comm: str
    rss_kb: int
    pss_kb: int | None


def tree_memory(root_pid: int, source: ProcSource | None = None) -> list[ProcessMemory]:
    """RSS (and PSS where the kernel offers smaps_rollup) of each process in the tree."""
    src = source or RealProc()
    out: list[ProcessMemory] = []
    for stat in tree(root_pid, src):
        status = src.read(stat.pid, "status")
        rss = parse_status_kb(status, "VmRSS") if status is not None else None
        rollup = src.read(stat.pid, "smaps_rollup")
        pss = parse_status_kb(rollup, "Pss") if rollup is not None else None
        out.append(
            ProcessMemory(
                pid=stat.pid,
                comm=stat.comm,
                rss_kb=rss if rss is not None else stat.rss_pages * PAGE_SIZE // 1024,
                pss_kb=pss,
            )
        )
    return out
