"""stall: Buoyant's "Beyond Round Robin" experiment. Eleven replicas with a spread of latencies take
1000 req/s; in the middle of the run one replica stalls, answering every request after 2 s, for 30 s.
Each target runs twice, without and with the stall, and reports p90 ... p99.999 of both runs, for
meshd's roundRobin, p2c and ewma balancers and each peer."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Final

from bench.results import ScenarioResult
from bench.scenarios.context import Collected, RunContext, choose
from bench.scenarios.replicas import Variant, run_against_replicas
from bench.targets.catalog import PEERS, meshd
from bench.upstream import InstanceSpec
from bench.upstream_control import UpstreamProcess

NAME: Final = "stall"
SERVICE: Final = "bench"
STALLED: Final = "r0"
NO_STALL: Final = "no stall"
WITH_STALL: Final = "stall"


@dataclass(frozen=True, slots=True, kw_only=True)
class StallOptions:
    rate: float = 1000.0
    duration_secs: float = 60.0
    stall_start_secs: float = 15.0
    stall_secs: float = 30.0
    stall_ms: float = 2000.0
    replicas: int = 11
    fastest_median_ms: float = 1.0
    slowest_median_ms: float = 5.0
    spread_sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0 or self.replicas < 2:
            raise ValueError("rate and duration must be positive and replicas at least 2")
        if self.stall_start_secs < 0 or self.stall_secs <= 0 or self.stall_start_secs + self.stall_secs > self.duration_secs:
            raise ValueError("the stall window must lie inside the run")

    def scaled(self, factor: float) -> StallOptions:
        return replace(self, duration_secs=self.duration_secs * factor, stall_start_secs=self.stall_start_secs * factor,
                       stall_secs=self.stall_secs * factor)


def replica_specs(options: StallOptions) -> list[InstanceSpec]:
    """Median latencies spread evenly from fastest to slowest, each log-normal around its median
    (sigma 0.5: p99 about 3x the median), the way a fleet of slightly different hosts looks."""
    specs = []
    for i in range(options.replicas):
        fraction = i / (options.replicas - 1)
        median = options.fastest_median_ms + fraction * (options.slowest_median_ms - options.fastest_median_ms)
        specs.append(InstanceSpec(name=f"r{i}", spread_median_ms=median, spread_sigma=options.spread_sigma, seed=i))
    return specs


def run(ctx: RunContext, options: StallOptions) -> ScenarioResult:
    collected = Collected()
    candidates = [meshd(f"meshd-{kind}", balancer=kind) for kind in ("roundRobin", "p2c", "ewma")] + list(PEERS)
    targets = choose(ctx, candidates, collected)
    ctx.progress.begin_scenario(NAME, len(targets) * (3 if ctx.warmup_secs > 0 else 2))

    def arm(upstream: UpstreamProcess, start_at: float) -> None:
        upstream.stall(STALLED, after_secs=max(0.0, start_at + options.stall_start_secs - time.monotonic()),
                       for_secs=options.stall_secs, latency_ms=options.stall_ms)

    rows = run_against_replicas(
        ctx, scenario=NAME, service=SERVICE, specs=replica_specs(options), healthy=[],
        targets=targets, rate=options.rate, duration=options.duration_secs, collected=collected,
        variants=(Variant(NO_STALL), Variant(WITH_STALL, arm=arm, warm_up=False)),
        drain_secs=max(10.0, 2 * options.stall_ms / 1000.0),
    )
    collected.notes.append(
        f"{options.replicas} replicas, median latency from {options.fastest_median_ms:g} to "
        f"{options.slowest_median_ms:g} ms (log-normal, sigma {options.spread_sigma:g}). In the stall run, "
        f"{STALLED} answers every request after {options.stall_ms:g} ms from {options.stall_start_secs:g} s "
        f"to {options.stall_start_secs + options.stall_secs:g} s."
    )
    return ScenarioResult(name=NAME, options=dict(asdict(options)), rows=tuple(rows),
                          skipped=tuple(collected.skipped), commands=tuple(collected.commands),
                          notes=tuple(collected.notes))
