"""Child processes of the demo: each started in its own process group, and all of them gone when the demo ends.

How this works: every child is the leader of a new session (so of a new process group), which lets the demo
kill the child *and anything it forked* with one `killpg`, and keeps a terminal's Ctrl-C away from the children:
the demo itself decides the order of shutdown. `stop_all()` sends SIGTERM to every group, waits a grace period,
then SIGKILLs whatever is left. As a last line of defence on Linux each child also asks the kernel for SIGKILL
when the demo process dies (PR_SET_PDEATHSIG), so even a SIGKILLed demo leaves no stray services behind.
Output goes to one log file per child name (appended to across restarts), which is what a failure report shows;
the optional pid file lists the current pid of every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    cwd: Path


class Supervisor:
    """Starts, kills, restarts and finally stops the demo's child processes."""

    def __init__(
        self, logs_dir: Path, *, env: Mapping[str, str] | None = None, pid_file: Path | None = None
    ) -> None:
        self._logs_dir = logs_dir
        self._pid_file = pid_file
        self._env = dict(os.environ if env is None else env)
        self._specs: dict[str, ChildSpec] = {}
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._pdeathsig = _pdeathsig_setter()

    def __repr__(self) -> str:
        return f"Supervisor({sorted(self.pids().items())})"

    def pids(self) -> dict[str, int]:
        """Every child ever started and not yet reaped, by name."""
        return {name: child.pid for name, child in self._children.items()}

    def log_path(self, name: str) -> Path:
        return self._logs_dir / f"{name}.log"

    def log_tail(self, name: str, *, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def returncode(self, name: str) -> int | None:
        """None while the child runs (or was never started)."""
        child = self._children.get(name)
        return None if child is None else child.returncode

    async def start(self, name: str, argv: Sequence[str], *, cwd: Path) -> int:
        """Start a child; answers its pid."""
        if self.returncode(name) is None and name in self._children:
            raise RuntimeError(f"{name} is already running")
        self._specs[name] = ChildSpec(name, tuple(argv), cwd)
        return await self._spawn(self._specs[name])

    async def kill(self, name: str) -> None:
        """SIGKILL the child's whole process group and reap it: a crash, not a shutdown."""
        child = self._children[name]
        _signal_group(child.pid, signal.SIGKILL)
        await child.wait()

    async def restart(self, name: str) -> int:
        """Start the child again with the same command line; it must not be running."""
        if self.returncode(name) is None:
            raise RuntimeError(f"{name} is still running")
        return await self._spawn(self._specs[name])

    async def stop_all(self, *, grace_secs: float = 3.0) -> None:
        """SIGTERM every group, wait up to `grace_secs`, then SIGKILL what is left; reaps everything."""
        children = list(self._children.values())
        for child in children:
            if child.returncode is None:
                _signal_group(child.pid, signal.SIGTERM)
        waiting = [asyncio.ensure_future(child.wait()) for child in children]
        if waiting:
            await asyncio.wait(waiting, timeout=grace_secs)
        for child in children:
            # Kill the group even if its leader already exited: something it forked may still be there.
            _signal_group(child.pid, signal.SIGKILL)
        if waiting:
            await asyncio.gather(*waiting)

    async def _spawn(self, spec: ChildSpec) -> int:
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec.name).open("ab") as log:
            child = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._pdeathsig,
            )
        self._children[spec.name] = child
        if self._pid_file is not None:
            # For operators (and tests) who want to see what the demo runs: "name pid" per line, latest pids.
            self._pid_file.write_text("".join(f"{name} {pid}\n" for name, pid in sorted(self.pids().items())))
        return child.pid


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGKILL the child when the demo dies; None elsewhere.

    The libc function is looked up here, in the parent, so the child only makes one system call between fork
    and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def set_pdeathsig() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return set_pdeathsig
