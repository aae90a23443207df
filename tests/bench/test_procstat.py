"""/proc/<pid>/stat parsing and process-tree CPU and memory sums, from canned /proc text."""

import os

import pytest

from bench.procstat import (
    CLOCK_TICKS,
    CpuSnapshot,
    parse_busy_seconds,
    parse_stat,
    parse_status_kb,
    tree,
    tree_cpu_seconds,
    tree_memory,
)


def stat_line(pid: int, comm: str, ppid: int, pgrp: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0,
              rss: int = 100, state: str = "S") -> str:
    # Fields 1..24 of /proc/<pid>/stat; the ones the bench ignores are filled with plausible numbers.
    fields = [state, ppid, pgrp, pgrp, 0, -1, 4194560, 10, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 1, 0,
              12345, 1000000, rss]
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + " 18446744073709551615 1 1 0 0 0\n"


class FakeProc:
    """A /proc made of canned texts: {(pid, file name): text}."""

    def __init__(self, files: dict[tuple[int, str], str]) -> None:
        self.files = files

    def pids(self) -> list[int]:
        return sorted({pid for pid, _ in self.files})

    def read(self, pid: int, name: str) -> str | None:
        return self.files.get((pid, name))


def test_parse_stat_reads_the_fields_by_position():
    stat = parse_stat(stat_line(4242, "python3", 1, 4242, utime=150, stime=50, cutime=7, cstime=3, rss=2048))
    assert (stat.pid, stat.comm, stat.state, stat.ppid, stat.pgrp) == (4242, "python3", "S", 1, 4242)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime, stat.rss_pages) == (150, 50, 7, 3, 2048)
    assert stat.cpu_ticks() == 210


def test_parse_stat_survives_spaces_and_parentheses_in_the_command_name():
    stat = parse_stat(stat_line(7, "nginx: worker (x) ) y", 6, 6, utime=11, stime=22))
    assert stat.comm == "nginx: worker (x) ) y"
    assert (stat.pid, stat.ppid, stat.utime, stat.stime) == (7, 6, 11, 22)


def test_parse_stat_of_this_process_matches_its_pid():
    with open(f"/proc/{os.getpid()}/stat") as f:
        stat = parse_stat(f.read())
    assert stat.pid == os.getpid() and stat.ppid == os.getppid()


def test_tree_cpu_counts_workers_and_reaped_children_but_not_strangers():
    proc = FakeProc({
        (100, "stat"): stat_line(100, "meshd", 1, 100, utime=100, stime=20, cutime=30, cstime=5),
        (101, "stat"): stat_line(101, "meshd worker", 100, 100, utime=400, stime=100),
        (102, "stat"): stat_line(102, "meshd worker", 100, 100, utime=300, stime=50),
        (103, "stat"): stat_line(103, "grandchild", 101, 100, utime=10, stime=0),
        (200, "stat"): stat_line(200, "unrelated", 1, 200, utime=9999, stime=9999),
    })
    assert [s.pid for s in tree(100, proc)] == [100, 101, 102, 103]
    expected_ticks = (100 + 20 + 30 + 5) + (400 + 100) + (300 + 50) + 10
    assert tree_cpu_seconds(100, proc) == pytest.approx(expected_ticks / CLOCK_TICKS)


def test_tree_of_a_vanished_process_is_empty():
    assert tree(5, FakeProc({})) == []
    assert tree_cpu_seconds(5, FakeProc({})) == 0.0


def test_tree_memory_reads_rss_and_pss():
    proc = FakeProc({
        (10, "stat"): stat_line(10, "envoy", 1, 10, utime=1, stime=1),
        (10, "status"): "Name:\tenvoy\nVmRSS:\t   65536 kB\nThreads:\t9\n",
        (10, "smaps_rollup"): "00400000-7fff [rollup]\nRss:  65536 kB\nPss:  60000 kB\n",
    })
    [memory] = tree_memory(10, proc)
    assert (memory.pid, memory.comm, memory.rss_kb, memory.pss_kb) == (10, "envoy", 65536, 60000)


def test_parse_status_kb_finds_the_named_line_only():
    text = "VmPeak:\t 999 kB\nVmRSS:\t  1234 kB\n"
    assert parse_status_kb(text, "VmRSS") == 1234
    assert parse_status_kb(text, "VmSwap") is None


def test_machine_busy_time_counts_everything_but_idle_and_iowait():
    text = "cpu  100 20 30 5000 70 4 6 8 0 0\ncpu0 50 10 15 2500 35 2 3 4 0 0\nintr 1 2 3\n"
    assert parse_busy_seconds(text) == pytest.approx((100 + 20 + 30 + 4 + 6 + 8) / CLOCK_TICKS)
    with pytest.raises(ValueError):
        parse_busy_seconds("intr 1 2 3\n")


def test_cpu_used_by_others_is_the_machine_minus_our_tree():
    earlier = CpuSnapshot(machine_busy=100.0, tree_busy=10.0)
    later = CpuSnapshot(machine_busy=106.0, tree_busy=14.5)
    assert later.others_since(earlier) == pytest.approx(1.5)
    assert CpuSnapshot(machine_busy=101.0, tree_busy=12.0).others_since(earlier) == 0.0  # never negative
