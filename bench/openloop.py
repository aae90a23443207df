"""Runs the open-loop generator (`bench/loadgen.py`) as a separate process and reads its result.

A separate process keeps the generator's timing away from the bench's own work (progress display,
/proc sampling) and lets it use a whole core. `run_open_loop` blocks until the run is over, calling
`on_wait` about every `poll_secs` so the caller can sample memory or CPU meanwhile.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.loadgen import LoadgenConfig
from bench.processes import Supervisor, wait_exit
from bench.upstream_control import bench_env

START_MARGIN_SECS: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenLoopResult:
    """One generator run. Latencies are seconds from each request's intended send time."""

    scheduled: int
    sent: int
    completed: int
    statuses: dict[int, int]
    errors: dict[str, int]
    latencies: tuple[float, ...]
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    connections_opened: int = 0
    max_connections_open: int = 0
    cpu_secs: float = 0.0
    wall_secs: float = 0.0
    late_start_secs: float = 0.0
    #: requests sent again after their connection closed before any byte of an answer (only with
    #: `LoadgenConfig.resend_unanswered`)
    resent: int = 0
    #: surplus connections the generator closed after `LoadgenConfig.idle_close_secs` idle
    connections_closed_idle: int = 0
    #: with `LoadgenConfig.timeline`: each latency's intended send time (seconds from the start),
    #: and (intended send time, status or error) of each request that got no 2xx
    intended: tuple[float, ...] = ()
    failures: tuple[tuple[float, str], ...] = ()

    @property
    def successes(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def success_rate(self) -> float:
        """2xx answers over scheduled requests: errors, timeouts and unsent requests count as failures."""
        return self.successes / self.scheduled if self.scheduled else 0.0


def parse_result(text: str) -> OpenLoopResult:
    data = json.loads(text)
    return OpenLoopResult(
        scheduled=int(data["scheduled"]),
        sent=int(data["sent"]),
        completed=int(data["completed"]),
        statuses={int(k): int(v) for k, v in data["statuses"].items()},
        errors={str(k): int(v) for k, v in data["errors"].items()},
        latencies=tuple(us / 1e6 for us in data["latencies_us"]),
        send_lag_ms={str(k): float(v) for k, v in data.get("send_lag_ms", {}).items()},
        connections_opened=int(data.get("connections_opened", 0)),
        max_connections_open=int(data.get("max_connections_open", 0)),
        cpu_secs=float(data.get("cpu_secs", 0.0)),
        wall_secs=float(data.get("wall_secs", 0.0)),
        late_start_secs=float(data.get("late_start_secs", 0.0)),
        resent=int(data.get("resent", 0)),
        connections_closed_idle=int(data.get("connections_closed_idle", 0)),
        intended=tuple(ms / 1e3 for ms in data.get("intended_ms", [])),
        failures=tuple((float(ms) / 1e3, str(what)) for ms, what in data.get("failures", [])),
    )


def loadgen_command(config: LoadgenConfig, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.loadgen", "--config", config.to_json(), "--out", str(out)]


def run_open_loop(
    supervisor: Supervisor,
    *,
    addresses: Sequence[tuple[str, int]],
    hosts: Sequence[str],
    rate_per_sec: float,
    duration_secs: float,
    workdir: Path,
    name: str,
    connections: int = 16,
    drain_secs: float = 10.0,
    start_in_secs: float = START_MARGIN_SECS,
    on_start: Callable[[float], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    poll_secs: float = 0.5,
    commands: list[str] | None = None,
    timeline: bool = False,
    idle_close_secs: float | None = None,
) -> OpenLoopResult:
    """Run one open-loop measurement; `on_start(start_at)` runs once the start instant is fixed."""
    start_at = time.monotonic() + start_in_secs
    config = LoadgenConfig(
        addresses=tuple(addresses),
        hosts=tuple(hosts),
        rate_per_sec=rate_per_sec,
        duration_secs=duration_secs,
        connections=connections,
        drain_secs=drain_secs,
        start_at=start_at,
        timeline=timeline,
        idle_close_secs=idle_close_secs,
    )
    out = workdir / f"{name}.json"
    argv = loadgen_command(config, out)
    if commands is not None:
        commands.append(_display(argv))
    process = supervisor.start(
        name, argv, cwd=Path(__file__).resolve().parent.parent, log_path=workdir / f"{name}.log", env=bench_env()
    )
    try:
        if on_start is not None:
            on_start(start_at)
        limit = start_in_secs + duration_secs + drain_secs + 60.0
        deadline = time.monotonic() + limit
        while process.is_running() and time.monotonic() < deadline:
            if on_wait is not None:
                on_wait()
            try:
                process.popen.wait(timeout=poll_secs)
            except subprocess.TimeoutExpired:
                pass
        code = wait_exit(process, max(0.0, deadline - time.monotonic()))
        if code != 0:
            raise process.fail(f"load generator exited with code {code}")
    finally:
        supervisor.stop(process)
    return parse_result(out.read_text())


def _display(argv: Sequence[str]) -> str:
    """The command as a reader would type it: `python -m bench.loadgen --config '<json>' ...`."""
    return shlex.join(["python", *argv[1:]])
