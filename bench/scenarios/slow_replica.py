"""slow-replica: three replicas, one of them 100 ms slower; open loop at 200 req/s for 20 s. Reports the
success rate, p50/p99/p99.9 and each replica's share of the requests. Direct sends to the two fast
replicas only: the latency a perfect balancer would get."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final

from bench.results import ScenarioResult
from bench.scenarios.context import Collected, RunContext, choose
from bench.scenarios.replicas import run_against_replicas
from bench.targets.catalog import meshd, standard
from bench.upstream import InstanceSpec

NAME: Final = "slow-replica"
SERVICE: Final = "bench"


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowReplicaOptions:
    rate: float = 200.0
    duration_secs: float = 20.0
    slow_ms: float = 100.0
    replicas: int = 3

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0 or self.slow_ms < 0 or self.replicas < 2:
            raise ValueError("rate and duration must be positive, slow_ms not negative, replicas at least 2")

    def scaled(self, factor: float) -> SlowReplicaOptions:
        return replace(self, duration_secs=self.duration_secs * factor)


def replica_specs(options: SlowReplicaOptions) -> list[InstanceSpec]:
    """r0 .. r(n-2) answer at once; the last one answers `slow_ms` later."""
    fast = [InstanceSpec(name=f"r{i}", seed=i) for i in range(options.replicas - 1)]
    return [*fast, InstanceSpec(name=f"r{options.replicas - 1}", latency_ms=options.slow_ms, seed=99)]


def run(ctx: RunContext, options: SlowReplicaOptions) -> ScenarioResult:
    collected = Collected()
    # meshd with each balancer kind (issue 3 compares them), then the peers
    candidates = [meshd("meshd"), meshd("meshd-p2c", balancer="p2c"), meshd("meshd-roundRobin", balancer="roundRobin")]
    targets = choose(ctx, standard(candidates), collected)
    ctx.progress.begin_scenario(NAME, len(targets) * (2 if ctx.warmup_secs > 0 else 1))
    specs = replica_specs(options)
    rows = run_against_replicas(
        ctx, scenario=NAME, service=SERVICE, specs=specs, healthy=[s.name for s in specs[:-1]],
        targets=targets, rate=options.rate, duration=options.duration_secs, collected=collected,
    )
    collected.notes.append(f"Replica {specs[-1].name} answers {options.slow_ms:g} ms late; the others at once.")
    return ScenarioResult(name=NAME, options=dict(asdict(options)), rows=tuple(rows),
                          skipped=tuple(collected.skipped), commands=tuple(collected.commands),
                          notes=tuple(collected.notes))
