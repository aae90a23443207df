"""The demo's supervisor: children in their own process groups, crashes on demand, nothing left at the end."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from examples.bank.story.probing import wait_until
from examples.bank.story.processes import Supervisor

# A child that ignores SIGTERM and forks a grandchild (written to argv[1]); both wait for a signal forever.
STUBBORN = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pid = os.fork()\n"
    "if pid:\n"
    "    open(sys.argv[1] + '.tmp', 'w').write(str(pid))\n"
    "    os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "while True:\n"
    "    signal.pause()\n"
)
PAUSE = "import signal\nwhile True:\n    signal.pause()\n"


def is_alive(pid: int) -> bool:
    """Running and not a zombie (a killed orphan may wait a moment for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def wait_dead(*pids: int) -> None:
    async def all_dead() -> bool:
        return not any(is_alive(pid) for pid in pids)

    await wait_until(all_dead, timeout_secs=10, what=f"processes {pids} gone")


async def test_stop_all_kills_whole_groups_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", pid_file=tmp_path / "pids")
    marker = tmp_path / "grandchild"
    child = await supervisor.start("stubborn", [sys.executable, "-c", STUBBORN, str(marker)], cwd=tmp_path)

    async def forked() -> bool:
        return marker.exists()

    await wait_until(forked, timeout_secs=10, what="grandchild forked")
    grandchild = int(marker.read_text())
    assert (tmp_path / "pids").read_text() == f"stubborn {child}\n"
    await supervisor.stop_all(grace_secs=0.2)
    await wait_dead(child, grandchild)
    assert supervisor.returncode("stubborn") == -9


async def test_kill_is_a_crash_and_restart_runs_the_same_command_again(tmp_path):
    supervisor = Supervisor(tmp_path / "logs")
    try:
        first = await supervisor.start("svc", [sys.executable, "-c", PAUSE], cwd=tmp_path)
        await supervisor.kill("svc")
        assert supervisor.returncode("svc") == -9
        second = await supervisor.restart("svc")
        assert second != first and is_alive(second) and not is_alive(first)
        assert supervisor.returncode("svc") is None
    finally:
        await supervisor.stop_all(grace_secs=2)
    await wait_dead(second)
    assert supervisor.returncode("svc") == -15


async def test_a_child_s_output_is_kept_in_its_log(tmp_path):
    supervisor = Supervisor(tmp_path / "logs")
    await supervisor.start("talker", [sys.executable, "-c", "print('hello from the child')"], cwd=tmp_path)

    async def exited() -> bool:
        return supervisor.returncode("talker") is not None

    try:
        await wait_until(exited, timeout_secs=10, what="talker exited")
    finally:
        await supervisor.stop_all(grace_secs=1)
    assert supervisor.returncode("talker") == 0
    assert supervisor.log_tail("talker") == "hello from the child"
