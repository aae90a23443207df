"""Starts, watches and stops every process the bench runs, so that none outlives it.

How this works: each process starts in its own process group (so a terminal's Ctrl-C reaches only the
bench, which then stops the groups in order) and, where util-linux `setpriv` exists, with a parent-death
signal: if the bench itself is killed outright, the kernel sends SIGTERM to its direct children, which
shut down their workers as they normally would (setpriv arms that signal a moment after the process
starts; every process is used far longer than that). Stopping a group sends SIGTERM, waits, then SIGKILL.
Every listening socket the bench asks for is on 127.0.0.1.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from bench.procstat import RealProc, parse_stat

LOOPBACK: Final = "127.0.0.1"
STOP_GRACE_SECS: Final = 5.0
_POLL_SECS: Final = 0.02


class ProcessFailed(RuntimeError):
    """A process exited or never became ready; the message carries the tail of its log."""


@dataclass(slots=True)
class ManagedProcess:
    """One started process (and its process group, whose id is its pid)."""

    name: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> ProcessFailed:
        tail = self.log_tail()
        return ProcessFailed(f"{self.name}: {why}" + (f"\n--- {self.log_path} ---\n{tail}" if tail else ""))


class Supervisor:
    """Owns every process the bench starts; `stop_all()` (or leaving the `with`) stops what is left."""

    def __init__(self, *, use_pdeathsig: bool = True) -> None:
        self._processes: list[ManagedProcess] = []
        self._setpriv = shutil.which("setpriv") if use_pdeathsig else None

    def __repr__(self) -> str:
        return f"Supervisor(running={[p.name for p in self._processes if p.is_running()]})"

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def running(self) -> list[ManagedProcess]:
        return [p for p in self._processes if p.is_running()]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> ManagedProcess:
        """Start `argv` in a new process group; stderr (and stdout unless piped) go to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        wrapped = [self._setpriv, "--pdeathsig", "TERM", "--", *argv] if self._setpriv else list(argv)
        try:
            popen = subprocess.Popen(
                wrapped,
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                process_group=0,
            )
        except OSError:
            log.close()
            raise
        process = ManagedProcess(name=name, argv=tuple(argv), popen=popen, log_path=log_path, _log=log)
        self._processes.append(process)
        return process

    def stop(self, process: ManagedProcess, grace_secs: float = STOP_GRACE_SECS) -> int | None:
        """SIGTERM the process group, wait up to `grace_secs`, then SIGKILL it; returns the exit code.

        `killpg` is only used while the leader is not yet reaped: until then its pid (the group id)
        cannot be handed to another process. Members the leader left behind are killed one by one."""
        if process.popen.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=grace_secs)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.popen.wait(timeout=grace_secs)
        for member in group_members(process.pid):
            _kill(member)
        if process.popen.stdout is not None:
            process.popen.stdout.close()
        if process._log is not None:
            process._log.close()
            process._log = None
        if process in self._processes:
            self._processes.remove(process)
        return process.popen.returncode

    def stop_all(self) -> None:
        """Stop everything still registered, newest first (clients before the servers they use)."""
        for process in reversed(list(self._processes)):
            self.stop(process)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Processes still in process group `pgid` other than its (reaped) leader: orphaned workers."""
    members = []
    source = RealProc()
    for pid in source.pids():
        if pid == pgid:
            continue
        text = source.read(pid, "stat")
        if text is not None and parse_stat(text).pgrp == pgid:
            members.append(pid)
    return members


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(process: ManagedProcess, port: int, timeout_secs: float = 30.0) -> None:
    """Poll until 127.0.0.1:`port` accepts a connection; fail early if the process exits."""
    deadline = time.monotonic() + timeout_secs
    while True:
        if not process.is_running():
            raise process.fail(f"exited with code {process.popen.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise process.fail(f"not listening on {port} after {timeout_secs:g} s")
        time.sleep(_POLL_SECS)


def wait_http_ok(process: ManagedProcess, url: str, timeout_secs: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout_secs
    while True:
        if not process.is_running():
            raise process.fail(f"exited with code {process.popen.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise process.fail(f"{url} did not answer 200 within {timeout_secs:g} s")
        time.sleep(_POLL_SECS * 5)


def read_line(process: ManagedProcess, timeout_secs: float) -> str:
    """Read one line from a process started with `stdout_pipe=True`, waiting at most `timeout_secs`."""
    stream = process.popen.stdout
    if stream is None:
        raise ValueError(f"{process.name} was not started with stdout_pipe=True")
    deadline = time.monotonic() + timeout_secs
    buffer = b""
    fd = stream.fileno()
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise process.fail(f"printed no line within {timeout_secs:g} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise process.fail(f"exited (code {process.popen.poll()}) before printing a line")
            buffer += chunk
    return buffer.decode()


def wait_exit(process: ManagedProcess, timeout_secs: float) -> int:
    """Wait for a process that is meant to finish by itself; kill it if it overruns."""
    try:
        return process.popen.wait(timeout=timeout_secs)
    except subprocess.TimeoutExpired as exc:
        raise process.fail(f"still running after {timeout_secs:g} s") from exc
