"""The measuring loop shared by the scenarios that run against several programmable replicas
(slow-replica, failing-replica, stall): per target and variant, warm up, zero the replicas' counters,
run the open loop, then read how many requests each replica served."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.results import Row
from bench.scenarios.context import (
    Collected,
    RunContext,
    open_loop,
    open_loop_row,
    replica_shares,
    started,
    warm_up,
)
from bench.targets.base import Backend, Deployment, Target
from bench.upstream import InstanceSpec
from bench.upstream_control import UpstreamProcess, start_upstream

# Called with the upstream and the run's start instant (CLOCK_MONOTONIC), before the load begins.
Arm = Callable[[UpstreamProcess, float], None]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    arm: Arm | None = None
    warm_up: bool = True


def run_against_replicas(
    ctx: RunContext,
    *,
    scenario: str,
    service: str,
    specs: Sequence[InstanceSpec],
    healthy: Sequence[str],
    targets: Sequence[Target],
    rate: float,
    duration: float,
    collected: Collected,
    variants: Sequence[Variant] = (Variant(""),),
    drain_secs: float = 10.0,
) -> list[Row]:
    rows: list[Row] = []
    workdir = ctx.scenario_dir(scenario)
    lifetime = 3600.0 + len(targets) * len(variants) * (duration + 60.0)
    upstream = start_upstream(ctx.supervisor, specs, workdir=workdir / "upstream", max_lifetime_secs=lifetime)
    try:
        backends = tuple(Backend(r.name, r.host, r.port) for r in upstream.replicas)
        deployment = Deployment.single(service, backends, tuple(b for b in backends if b.name in healthy))
        for target in targets:
            with started(ctx, target, deployment, scenario, collected) as running_target:
                if running_target is None:
                    continue
                for variant in variants:
                    label = f"{target.name}{f' ({variant.name})' if variant.name else ''}"
                    if variant.warm_up:
                        warm_up(ctx, running_target, scenario=scenario, hosts=[service], rate=rate,
                                collected=collected)
                    upstream.reset()
                    ctx.progress.step(f"{label}: measuring", duration + 1.0)
                    arm = variant.arm

                    def on_start(start_at: float, arm: Arm | None = arm) -> None:
                        if arm is not None:
                            arm(upstream, start_at)

                    result = open_loop(ctx, running_target, scenario=scenario,
                                       name=f"measure{'-' + variant.name.replace(' ', '-') if variant.name else ''}",
                                       hosts=[service], rate=rate, duration=duration, collected=collected,
                                       drain_secs=drain_secs, on_start=on_start)
                    stats = upstream.stats()
                    shares, upstream_requests = replica_shares(stats)
                    failures = sum(s.failures for s in stats.values())
                    stalled = sum(s.stalled for s in stats.values())
                    row = open_loop_row(
                        target.name, result, duration, variant=variant.name, shares=shares,
                        extra={
                            "client_requests": float(result.sent),
                            "upstream_requests": float(upstream_requests),
                            "upstream_failures": float(failures),
                            "stalled_requests": float(stalled),
                            "amplification": upstream_requests / result.sent if result.sent else 0.0,
                        },
                    )
                    rows.append(row)
                    ctx.progress.note(
                        f"  {label}: success {100 * row.metrics['success_rate']:.2f}%, "
                        f"p99 {row.metric('p99_ms') or 0:.2f} ms, amplification {row.metrics['amplification']:.2f}"
                    )
    finally:
        ctx.supervisor.stop(upstream.process)
    return rows
