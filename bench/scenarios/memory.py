"""memory: meshd's resident memory idle, under 1000 req/s, and with 1,000 services x 3 endpoints in its
discovery files (idle, then after every service has been requested once or more). The peers are
measured idle and under load for comparison. Per worker = the largest single process in the tree."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Final

from bench.procstat import ProcessMemory, tree_memory
from bench.results import Row, ScenarioResult
from bench.scenarios.context import Collected, RunContext, choose, open_loop, started
from bench.targets.base import Backend, Deployment, RunningTarget, Service, Target
from bench.targets.catalog import PEERS, meshd
from bench.upstream import InstanceSpec
from bench.upstream_control import start_upstream

NAME: Final = "memory"
SERVICE: Final = "bench"
IDLE: Final = "idle"
LOADED: Final = "under load"
MANY_IDLE: Final = "many services, idle"
MANY_TOUCHED: Final = "many services, touched"


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryOptions:
    rate: float = 1000.0
    duration_secs: float = 15.0
    services: int = 1000
    endpoints_per_service: int = 3
    settle_secs: float = 2.0
    include_peers: bool = True

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0 or self.services < 1 or self.endpoints_per_service < 1:
            raise ValueError("rate, duration, services and endpoints must be positive")

    def scaled(self, factor: float) -> MemoryOptions:
        return replace(self, duration_secs=self.duration_secs * factor, settle_secs=self.settle_secs * factor)


def memory_metrics(processes: list[ProcessMemory], prefix: str = "") -> dict[str, float]:
    """Total RSS, the largest process's RSS (per worker) and total PSS, in MB (2^20 bytes)."""
    if not processes:
        return {}
    metrics = {
        f"{prefix}rss_mb": sum(p.rss_kb for p in processes) / 1024.0,
        f"{prefix}rss_mb_per_worker": max(p.rss_kb for p in processes) / 1024.0,
        f"{prefix}processes": float(len(processes)),
    }
    if all(p.pss_kb is not None for p in processes):
        metrics[f"{prefix}pss_mb"] = sum(p.pss_kb or 0 for p in processes) / 1024.0
    return metrics


def run(ctx: RunContext, options: MemoryOptions) -> ScenarioResult:
    collected = Collected()
    meshd_target = meshd("meshd")
    candidates: list[Target] = [meshd_target, *(PEERS if options.include_peers else ())]
    targets = choose(ctx, candidates, collected)
    steps = sum(4 if t.family == "meshd" else 2 for t in targets)
    ctx.progress.begin_scenario(NAME, steps)
    workdir = ctx.scenario_dir(NAME)
    specs = [InstanceSpec(name=f"r{i}", seed=i) for i in range(options.endpoints_per_service)]
    upstream = start_upstream(ctx.supervisor, specs, workdir=workdir / "upstream", max_lifetime_secs=7200.0)
    rows: list[Row] = []
    try:
        backends = tuple(Backend(r.name, r.host, r.port) for r in upstream.replicas)
        one = Deployment.single(SERVICE, backends)
        for target in targets:
            with started(ctx, target, one, NAME, collected) as running_target:
                if running_target is None:
                    continue
                rows.extend(_idle_and_loaded(ctx, options, running_target, collected))
            if target.family == "meshd":
                many = Deployment(
                    services=tuple(Service(name=f"svc{i:04d}", backends=backends) for i in range(options.services)),
                    healthy=backends,
                )
                with started(ctx, target, many, NAME, collected) as running_target:
                    if running_target is None:
                        continue
                    rows.extend(_many_services(ctx, options, running_target, many, collected))
    finally:
        ctx.supervisor.stop(upstream.process)
    collected.notes.append(
        f"Under load = {options.rate:g} req/s open loop for {options.duration_secs:g} s (peak sample). Many services = "
        f"{options.services} services x {options.endpoints_per_service} endpoints in the fs namer's directory; "
        "touched = after every service was requested at least twice. "
        "RSS counts shared pages once per process; PSS splits them between the processes sharing them. "
        "Per worker is the largest single process."
    )
    return ScenarioResult(name=NAME, options=dict(asdict(options)), rows=tuple(rows),
                          skipped=tuple(collected.skipped), commands=tuple(collected.commands),
                          notes=tuple(collected.notes))


def _settle(ctx: RunContext, options: MemoryOptions, label: str) -> None:
    ctx.progress.step(f"{label}: settling", options.settle_secs)
    time.sleep(options.settle_secs)


def _sampled_run(ctx: RunContext, options: MemoryOptions, running_target: RunningTarget, hosts: list[str],
                 duration: float, collected: Collected) -> tuple[dict[str, float], float]:
    """Run the open loop while sampling the tree's memory; returns the peak sample and the success rate."""
    assert running_target.process is not None
    pid = running_target.process.pid
    peak: dict[str, float] = {}

    def sample() -> None:
        metrics = memory_metrics(tree_memory(pid))
        if metrics.get("rss_mb_per_worker", 0.0) >= peak.get("rss_mb_per_worker", 0.0):
            peak.update(metrics)

    result = open_loop(ctx, running_target, scenario=NAME, name="load", hosts=hosts, rate=options.rate,
                       duration=duration, collected=collected, on_wait=sample)
    sample()
    return peak, result.success_rate


def _idle_and_loaded(ctx: RunContext, options: MemoryOptions, running_target: RunningTarget,
                     collected: Collected) -> list[Row]:
    assert running_target.process is not None
    name = running_target.name
    _settle(ctx, options, name)
    idle = Row(target=name, variant=IDLE, metrics=memory_metrics(tree_memory(running_target.process.pid)))
    ctx.progress.step(f"{name}: {options.rate:g} req/s", options.duration_secs + 1.0)
    peak, success = _sampled_run(ctx, options, running_target, [SERVICE], options.duration_secs, collected)
    loaded = Row(target=name, variant=LOADED, metrics={**peak, "success_rate": success})
    ctx.progress.note(f"  {name}: idle {idle.metrics.get('rss_mb', 0):.1f} MB, "
                      f"loaded {loaded.metrics.get('rss_mb', 0):.1f} MB RSS")
    return [idle, loaded]


def _many_services(ctx: RunContext, options: MemoryOptions, running_target: RunningTarget,
                   deployment: Deployment, collected: Collected) -> list[Row]:
    assert running_target.process is not None
    name = running_target.name
    count = len(deployment.services)
    _settle(ctx, options, f"{name} with {count} services")
    idle = Row(target=name, variant=MANY_IDLE, metrics=memory_metrics(tree_memory(running_target.process.pid)))
    # Long enough that every service is requested at least twice at the scenario's rate.
    duration = max(options.duration_secs, 2.0 * count / options.rate)
    ctx.progress.step(f"{name}: requesting all {count} services", duration + 1.0)
    hosts = [service.name for service in deployment.services]
    peak, success = _sampled_run(ctx, options, running_target, hosts, duration, collected)
    touched = Row(target=name, variant=MANY_TOUCHED, metrics={**peak, "success_rate": success})
    ctx.progress.note(f"  {name} with {count} services: idle {idle.metrics.get('rss_mb', 0):.1f} MB, "
                      f"touched {touched.metrics.get('rss_mb', 0):.1f} MB RSS")
    return [idle, touched]
