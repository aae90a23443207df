"""Every process the bench starts is stopped with its whole process group, also when the bench dies.

These tests wait for processes to exit through pidfds (select with a deadline), never by sleeping.
"""

import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.processes import Supervisor, free_port, group_members, read_line

# A shell that starts a child in its own process group and waits: the shape of nginx's master + worker.
LEADER_WITH_CHILD = ["sh", "-c", "sleep 60 & echo $!; wait"]


def wait_gone(pid: int, timeout_secs: float = 10.0) -> bool:
    """True once `pid` has exited (or never existed), False if it is still alive after the timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_secs)
        return bool(readable)
    finally:
        os.close(fd)


def test_stop_ends_the_leader_and_its_children(tmp_path: Path):
    with Supervisor() as supervisor:
        process = supervisor.start("pair", LEADER_WITH_CHILD, cwd=tmp_path, log_path=tmp_path / "pair.log",
                                   stdout_pipe=True)
        child = int(read_line(process, 10.0))
        assert group_members(process.pid) == [child]
        supervisor.stop(process)
        assert wait_gone(child) and wait_gone(process.pid)
        assert supervisor.running() == []


def test_leaving_the_with_block_on_an_exception_stops_everything(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt), Supervisor() as supervisor:
        process = supervisor.start("pair", LEADER_WITH_CHILD, cwd=tmp_path, log_path=tmp_path / "pair.log",
                                   stdout_pipe=True)
        child = int(read_line(process, 10.0))
        raise KeyboardInterrupt  # what Ctrl-C raises in the bench
    assert wait_gone(child) and wait_gone(process.pid)


def test_orphaned_workers_are_killed_even_after_their_leader_exited(tmp_path: Path):
    with Supervisor() as supervisor:
        # The leader exits at once and leaves its child behind in the group.
        process = supervisor.start("orphan", ["sh", "-c", "sleep 60 & echo $!"], cwd=tmp_path,
                                   log_path=tmp_path / "orphan.log", stdout_pipe=True)
        child = int(read_line(process, 10.0))
        assert process.popen.wait(timeout=10) == 0
        assert group_members(process.pid) == [child]
        supervisor.stop(process)
        assert wait_gone(child)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv for the parent-death signal")
def test_children_stop_by_themselves_when_the_bench_is_killed(tmp_path: Path):
    # The child prints a line once it runs, i.e. after setpriv has set its parent-death signal; only then
    # does the fake bench report it and wait to be killed.
    bench = textwrap.dedent(
        """
        import signal
        from pathlib import Path
        from bench.processes import Supervisor, read_line
        supervisor = Supervisor()
        child = supervisor.start("sleeper", ["sh", "-c", "echo running; exec sleep 60"], cwd=Path("."),
                                 log_path=Path("sleeper.log"), stdout_pipe=True)
        read_line(child, 10.0)
        print(child.pid, flush=True)
        signal.pause()
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with subprocess.Popen([sys.executable, "-c", bench], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          text=True) as fake_bench:
        try:
            assert fake_bench.stdout is not None
            child = int(fake_bench.stdout.readline())
            assert not wait_gone(child, timeout_secs=0)
            fake_bench.kill()  # SIGKILL: the bench gets no chance to clean up
            fake_bench.wait(timeout=10)
            assert wait_gone(child), "the child outlived the bench"
        finally:
            fake_bench.kill()


def test_free_port_is_on_loopback_and_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname() == ("127.0.0.1", port)
