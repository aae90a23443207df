"""failing-replica: one of three replicas answers 503 to half its requests. Reports the success rate seen
by the client, percentiles, and upstream amplification (requests the replicas saw per client request),
for meshd with retries on and off and for each peer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final

from bench.results import ScenarioResult
from bench.scenarios.context import Collected, RunContext, choose
from bench.scenarios.replicas import run_against_replicas
from bench.targets.catalog import meshd, standard
from bench.upstream import InstanceSpec

NAME: Final = "failing-replica"
SERVICE: Final = "bench"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailingReplicaOptions:
    rate: float = 500.0
    duration_secs: float = 20.0
    failure_rate: float = 0.5
    replicas: int = 3

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0 or self.replicas < 2:
            raise ValueError("rate and duration must be positive and replicas at least 2")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"failure rate must be between 0 and 1, got {self.failure_rate}")

    def scaled(self, factor: float) -> FailingReplicaOptions:
        return replace(self, duration_secs=self.duration_secs * factor)


def replica_specs(options: FailingReplicaOptions) -> list[InstanceSpec]:
    healthy = [InstanceSpec(name=f"r{i}", seed=i) for i in range(options.replicas - 1)]
    failing = InstanceSpec(name=f"r{options.replicas - 1}", failure_rate=options.failure_rate, seed=7)
    return [*healthy, failing]


def run(ctx: RunContext, options: FailingReplicaOptions) -> ScenarioResult:
    collected = Collected()
    candidates = standard([
        meshd("meshd"),
        meshd("meshd-p2c", balancer="p2c"),
        meshd("meshd-roundRobin", balancer="roundRobin"),
        meshd("meshd-noretries", retries=False),
    ])
    targets = choose(ctx, candidates, collected)
    ctx.progress.begin_scenario(NAME, len(targets) * (2 if ctx.warmup_secs > 0 else 1))
    specs = replica_specs(options)
    rows = run_against_replicas(
        ctx, scenario=NAME, service=SERVICE, specs=specs, healthy=[s.name for s in specs[:-1]],
        targets=targets, rate=options.rate, duration=options.duration_secs, collected=collected,
    )
    collected.notes.append(
        f"Replica {specs[-1].name} answers 503 to {100 * options.failure_rate:g}% of requests. "
        "meshd-noretries runs with `retries: {budget: {minRetriesPerSec: 0, percentCanRetry: 0.0}}`."
    )
    return ScenarioResult(name=NAME, options=dict(asdict(options)), rows=tuple(rows),
                          skipped=tuple(collected.skipped), commands=tuple(collected.commands),
                          notes=tuple(collected.notes))
