"""The memory tools of docs/benchmarks-memory.md run and print what the docs quote: the per-import
table and a started daemon's RSS (bench/memory_profile.py), and the per-worker-count CPU and
memory table (bench/worker_scaling.py, at a tiny rate for one second). Nothing here is timed."""

from __future__ import annotations

import re

from bench import memory_profile, worker_scaling


def test_memory_profile_prints_each_import_and_a_started_daemon() -> None:
    text = memory_profile.report(None)
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| `([\w.()]+)`[^|]* \| ([\d.]+) \|", text, re.M)}
    assert set(memory_profile.IMPORTS) | set(memory_profile.LAZY) <= set(rows)
    assert rows["kubernetes_asyncio"] > 10.0  # charged as if imported, and it is large
    daemon = re.search(r"A started daemon \(the plain config[^)]*\): RSS ([\d.]+) MB", text)
    assert daemon is not None and 10.0 < float(daemon.group(1)) < 200.0
    assert "it imported: none." in text  # the plain config loads none of the heavy libraries


def test_worker_scaling_measures_each_worker_count() -> None:
    lines = worker_scaling.measure([1, 2], rate=100.0, duration_secs=1.0, warmup_secs=0.0)
    one, two = (line for line in lines if re.match(r"^\| [12] \|", line))
    assert one.startswith("| 1 | 100 |") and "(one process)" in one
    cells = [cell.strip() for cell in two.strip("|").split("|")]
    assert cells[:2] == ["2", "100"] and float(cells[3]) > 0  # µs of CPU per request
    assert len(cells[5].split(",")) == 2  # two workers' RSS / PSS
