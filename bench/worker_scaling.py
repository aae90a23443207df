"""meshd's cost per request and memory per process at `--workers 1, 2, ...`:
`python -m bench.worker_scaling [--workers 1,2] [--rate 2000] [--duration-secs 10]`.

For each worker count: meshd (the bench's meshd target: fs namer, ewma, retries) in front of the
bench's upstream (3 replicas), a warm-up, then an open-loop run at a fixed rate. Printed per worker
count: the CPU seconds the whole meshd process tree used during the run (supervisor and workers,
utime + stime from /proc), that as microseconds per request, and each process's RSS and PSS
after the run. A fixed rate below saturation keeps the CPU per request comparable between worker
counts and less sensitive to other processes on the machine than a closed-loop maximum is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.openloop import run_open_loop
from bench.processes import Supervisor
from bench.procstat import tree_cpu_seconds, tree_memory
from bench.targets.base import Backend, Deployment
from bench.targets.catalog import meshd
from bench.upstream import InstanceSpec
from bench.upstream_control import start_upstream


def measure(workers: list[int], rate: float, duration_secs: float, warmup_secs: float) -> list[str]:
    lines = [
        f"Open loop at {rate:g} req/s for {duration_secs:g} s after a {warmup_secs:g} s warm-up; RSS and PSS after the run.",
        "",
        "| workers | requests | meshd CPU s | µs CPU per request | supervisor RSS / PSS MB | each worker's RSS / PSS MB |",
        "|---:|---:|---:|---:|:---|:---|",
    ]
    with Supervisor() as supervisor, tempfile.TemporaryDirectory(prefix="worker-scaling-") as tmp:
        workdir = Path(tmp)
        specs = [InstanceSpec(name=f"r{i}", seed=i) for i in range(3)]
        upstream = start_upstream(supervisor, specs, workdir=workdir / "upstream", max_lifetime_secs=3600.0)
        backends = tuple(Backend(r.name, r.host, r.port) for r in upstream.replicas)
        deployment = Deployment.single("bench", backends)
        for count in workers:
            target = meshd(f"meshd-w{count}", workers=count)
            target_dir = workdir / target.name
            target_dir.mkdir()
            running = target.start(deployment, supervisor, target_dir)
            assert running.process is not None
            pid = running.process.pid
            try:
                if warmup_secs > 0:
                    run_open_loop(supervisor, addresses=running.addresses, hosts=["bench"], rate_per_sec=rate,
                                  duration_secs=warmup_secs, workdir=target_dir, name="warmup", drain_secs=5.0)
                before = tree_cpu_seconds(pid)
                result = run_open_loop(supervisor, addresses=running.addresses, hosts=["bench"], rate_per_sec=rate,
                                       duration_secs=duration_secs, workdir=target_dir, name="load", drain_secs=5.0)
                cpu = tree_cpu_seconds(pid) - before
                memory = tree_memory(pid)
            finally:
                supervisor.stop(running.process)
            root = next(m for m in memory if m.pid == pid)
            others = [m for m in memory if m.pid != pid]

            def mb(kb: int | None) -> str:
                return "?" if kb is None else f"{kb / 1024:.1f}"

            if count == 1:
                supervisor_cell, worker_cells = "– (one process)", f"{mb(root.rss_kb)} / {mb(root.pss_kb)}"
            else:
                supervisor_cell = f"{mb(root.rss_kb)} / {mb(root.pss_kb)}"
                worker_cells = ", ".join(f"{mb(m.rss_kb)} / {mb(m.pss_kb)}" for m in others)
            per_request = cpu / result.successes * 1e6 if result.successes else 0.0
            lines.append(f"| {count} | {result.successes:,} | {cpu:.2f} | {per_request:.1f} | {supervisor_cell} | "
                         f"{worker_cells} |")
            print(lines[-1], file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second (default 2000)")
    parser.add_argument("--duration-secs", type=float, default=10.0)
    parser.add_argument("--warmup-secs", type=float, default=2.0)
    args = parser.parse_args(argv)
    workers = [int(part) for part in args.workers.split(",") if part.strip()]
    if not workers or min(workers) < 1 or args.rate <= 0 or args.duration_secs <= 0:
        print("worker counts, rate and duration must be positive", file=sys.stderr)
        return 2
    print("\n".join(measure(workers, args.rate, args.duration_secs, args.warmup_secs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
