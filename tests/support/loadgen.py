"""Open-loop load from a separate process, for tests that need a steady rate (issue #17's load tests).

`start_open_loop` runs meshd-bench's generator (`python -m bench.loadgen`, bench/loadgen.py) as a
subprocess: request i is sent at `start_at + i / rate` whatever the target does, and its latency is
measured from that intended time, so a slow target shows as latency rather than as fewer requests
(no coordinated omission). The generator gets a core of its own, away from the test's event loop,
which hosts the upstreams. Several generators can be started at once with different `start_at`
instants (CLOCK_MONOTONIC is shared by every process), so a test lays out its phases up front and
pays the interpreter's start-up once.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import LoadgenConfig
from bench.openloop import OpenLoopResult, parse_result
from bench.percentiles import percentiles

_ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass(slots=True)
class LoadRun:
    """One generator process; `await run.result()` once its schedule is over."""

    name: str
    process: asyncio.subprocess.Process
    out: pathlib.Path
    log: pathlib.Path
    timeout: float

    async def result(self) -> OpenLoopResult:
        try:
            code = await asyncio.wait_for(self.process.wait(), self.timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"load generator {self.name} did not finish in {self.timeout:.0f} s") from None
        if code != 0:
            raise AssertionError(f"load generator {self.name} exited with {code}:\n{self.log.read_text()[-2000:]}")
        return parse_result(self.out.read_text())

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_open_loop(
    workdir: pathlib.Path,
    name: str,
    *,
    port: int,
    host: str,
    rate_per_sec: float,
    duration_secs: float,
    start_at: float,
    connections: int = 8,
    drain_secs: float = 5.0,
    resend_unanswered: bool = False,
    idle_close_secs: float | None = None,
) -> LoadRun:
    """Start a generator sending `rate_per_sec` GETs with `Host: host` to 127.0.0.1:`port` from the
    CLOCK_MONOTONIC instant `start_at` for `duration_secs`. `resend_unanswered`: a request whose
    keep-alive connection closed before any byte of its answer is sent once more on a new
    connection, as HTTP clients do (counted in the result's `resent`). `idle_close_secs`: reuse
    connections most-recently-idle first and close any idle that long."""
    config = LoadgenConfig(
        addresses=(("127.0.0.1", port),),
        hosts=(host,),
        rate_per_sec=rate_per_sec,
        duration_secs=duration_secs,
        connections=connections,
        drain_secs=drain_secs,
        start_at=start_at,
        resend_unanswered=resend_unanswered,
        idle_close_secs=idle_close_secs,
    )
    out = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", "--config", config.to_json(), "--out", str(out),
            cwd=_ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )
    timeout = max(0.0, start_at - time.monotonic()) + duration_secs + drain_secs + 60.0
    return LoadRun(name, process, out, log, timeout)


async def gather_results(runs: Sequence[LoadRun]) -> list[OpenLoopResult]:
    """Every run's result; if one fails, the others are killed rather than left running."""
    try:
        return [await run.result() for run in runs]
    finally:
        for run in runs:
            await run.kill()


def p99(latencies: Sequence[float]) -> float:
    """The 99th percentile (nearest rank) in seconds."""
    return percentiles(latencies, (99.0,))[99.0]
