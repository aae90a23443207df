"""What every scenario gets to work with, and the loop over targets that they all share."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.openloop import OpenLoopResult, run_open_loop
from bench.percentiles import summarize
from bench.processes import ProcessFailed, Supervisor
from bench.progress import Progress
from bench.results import Row, Skip
from bench.targets.base import Deployment, RunningTarget, Target
from bench.targets.catalog import Selection
from bench.upstream import InstanceStats


@dataclass(slots=True)
class RunContext:
    """Shared by all scenarios of one invocation. `workdir` keeps every config, log and raw result."""

    supervisor: Supervisor
    progress: Progress
    selection: Selection
    workdir: Path
    warmup_secs: float = 2.0
    connections: int = 16
    start_margin_secs: float = 1.0

    def scenario_dir(self, scenario: str) -> Path:
        path = self.workdir / scenario
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(slots=True)
class Collected:
    """What a scenario accumulates while it runs."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def choose(ctx: RunContext, candidates: Sequence[Target], collected: Collected) -> list[Target]:
    """The candidates the user selected and this machine can run; the others become Skips."""
    chosen: list[Target] = []
    for target in candidates:
        if not ctx.selection.wants(target):
            continue
        why = target.unavailable()
        if why is None:
            chosen.append(target)
        else:
            collected.skipped.append(Skip(target=target.name, reason=why))
            ctx.progress.note(f"  skipped {target.name}: {why}")
    return chosen


@contextmanager
def started(ctx: RunContext, target: Target, deployment: Deployment, scenario: str,
            collected: Collected) -> Iterator[RunningTarget | None]:
    """Start a target and stop it afterwards. If it fails to start, or a process fails while it is
    measured, record why as a Skip and let the scenario go on with the next target."""
    workdir = ctx.scenario_dir(scenario) / target.name
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        running_target = target.start(deployment, ctx.supervisor, workdir)
    except ProcessFailed as exc:
        record_failure(ctx, collected, target.name, "failed to start", exc)
        yield None
        return
    for command in running_target.commands:
        if command not in collected.commands:
            collected.commands.append(command)
    try:
        yield running_target
    except ProcessFailed as exc:
        record_failure(ctx, collected, target.name, "failed while measured", exc)
    finally:
        if running_target.process is not None:
            ctx.supervisor.stop(running_target.process)


def record_failure(ctx: RunContext, collected: Collected, name: str, what: str, exc: ProcessFailed) -> None:
    """A target that failed (to start, or while measured) becomes a Skip saying why; the scenario goes on."""
    collected.skipped.append(Skip(target=name, reason=f"{what}: {str(exc).splitlines()[0]}"))
    ctx.progress.note(f"  {name} {what}: {exc}")


def open_loop(
    ctx: RunContext,
    running_target: RunningTarget,
    *,
    scenario: str,
    name: str,
    hosts: Sequence[str],
    rate: float,
    duration: float,
    collected: Collected,
    drain_secs: float = 10.0,
    on_start: Callable[[float], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    record_command: bool = True,
) -> OpenLoopResult:
    """One generator run against a started target (the first measured command is kept for the report)."""
    record = record_command and not any("bench.loadgen" in c for c in collected.commands)
    return run_open_loop(
        ctx.supervisor,
        addresses=running_target.addresses,
        hosts=hosts,
        rate_per_sec=rate,
        duration_secs=duration,
        workdir=ctx.scenario_dir(scenario) / running_target.name,
        name=name,
        connections=ctx.connections,
        drain_secs=drain_secs,
        start_in_secs=ctx.start_margin_secs,
        on_start=on_start,
        on_wait=on_wait,
        commands=collected.commands if record else None,
    )


def warm_up(ctx: RunContext, running_target: RunningTarget, *, scenario: str, hosts: Sequence[str], rate: float,
            collected: Collected) -> None:
    """A short run at the scenario's rate whose results are thrown away: warm pools, caches, EWMAs."""
    if ctx.warmup_secs <= 0:
        return
    ctx.progress.step(f"{running_target.name}: warm-up", ctx.warmup_secs + 1.0)
    open_loop(ctx, running_target, scenario=scenario, name="warmup", hosts=hosts, rate=rate,
              duration=ctx.warmup_secs, collected=collected, drain_secs=5.0, record_command=False)


def open_loop_row(target: str, result: OpenLoopResult, duration: float, *, variant: str = "",
                  shares: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> Row:
    """The row every open-loop scenario reports: latency from intended send time, success, achieved rate."""
    metrics = {
        "scheduled": float(result.scheduled),
        "success_rate": result.success_rate,
        "achieved_rate": result.sent / duration if duration > 0 else 0.0,
        "failed": float(result.scheduled - result.successes),
        "send_lag_p50_ms": result.send_lag_ms.get("50", 0.0),
        "send_lag_p99_ms": result.send_lag_ms.get("99", 0.0),
        "loadgen_cpu_util": result.cpu_secs / result.wall_secs if result.wall_secs > 0 else 0.0,
    }
    metrics.update(extra or {})
    return Row(target=target, variant=variant, metrics=metrics, latency=summarize(result.latencies),
               shares=shares or {})


def replica_shares(stats: Mapping[str, InstanceStats]) -> tuple[dict[str, float], int]:
    """Each replica's share of the requests it saw since the last reset, and their total."""
    total = sum(s.requests for s in stats.values())
    return ({name: (s.requests / total if total else 0.0) for name, s in stats.items()}, total)


def median_metrics(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-metric median over repeated runs (each metric independently)."""
    keys = sorted({k for run in runs for k in run})
    return {k: statistics.median([run[k] for run in runs if k in run]) for k in keys}
