"""latency: open loop at a fixed rate (1000 req/s for 15 s) measured from each request's intended send
time; p50/p90/p99/p99.9 per target and the latency each proxy adds over going direct."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final

from bench.procstat import tree_cpu_seconds
from bench.results import Row, ScenarioResult
from bench.scenarios.context import Collected, RunContext, choose, open_loop, open_loop_row, started, warm_up
from bench.targets.base import Deployment
from bench.targets.catalog import meshd, standard, tiny_upstream

NAME: Final = "latency"
SERVICE: Final = "bench"
ADDED: Final = ("50", "90", "99", "99.9")


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyOptions:
    rate: float = 1000.0
    duration_secs: float = 15.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0:
            raise ValueError("rate and duration must be positive")

    def scaled(self, factor: float) -> LatencyOptions:
        return replace(self, duration_secs=self.duration_secs * factor)


def run(ctx: RunContext, options: LatencyOptions) -> ScenarioResult:
    collected = Collected()
    targets = choose(ctx, standard([meshd("meshd")]), collected)
    ctx.progress.begin_scenario(NAME, len(targets) * (2 if ctx.warmup_secs > 0 else 1))
    workdir = ctx.scenario_dir(NAME)
    rows: list[Row] = []
    with tiny_upstream(ctx.supervisor, workdir / "upstream", 3600.0) as upstream:
        collected.notes.append(f"Upstream: {upstream.kind} answering a 3-byte body.")
        deployment = Deployment.single(SERVICE, (upstream.backend,))
        for target in targets:
            with started(ctx, target, deployment, NAME, collected) as running_target:
                if running_target is None:
                    continue
                warm_up(ctx, running_target, scenario=NAME, hosts=[SERVICE], rate=options.rate, collected=collected)
                ctx.progress.step(f"{target.name}: measuring", options.duration_secs + 1.0)
                proxy = running_target.process
                cpu_before = tree_cpu_seconds(proxy.pid) if proxy else 0.0
                result = open_loop(ctx, running_target, scenario=NAME, name="measure", hosts=[SERVICE],
                                   rate=options.rate, duration=options.duration_secs, collected=collected)
                extra = {}
                if proxy is not None and result.wall_secs > 0:
                    extra["proxy_cpu_util"] = (tree_cpu_seconds(proxy.pid) - cpu_before) / result.wall_secs
                row = open_loop_row(target.name, result, options.duration_secs, extra=extra)
                rows.append(row)
                ctx.progress.note(f"  {target.name}: p50 {row.metric('p50_ms') or 0:.3f} ms, "
                                  f"p99 {row.metric('p99_ms') or 0:.3f} ms")
    rows = with_added_latency(rows)
    direct = next((r for r in rows if r.target == "direct"), None)
    if direct is not None:
        collected.notes.append(
            "Generator overhead (measured against direct): send lag p50 "
            f"{direct.metrics['send_lag_p50_ms']:.3f} ms, p99 {direct.metrics['send_lag_p99_ms']:.3f} ms; "
            f"generator CPU {100 * direct.metrics['loadgen_cpu_util']:.0f}% of one core; "
            f"achieved {direct.metrics['achieved_rate']:.0f} of {options.rate:g} req/s."
        )
    return ScenarioResult(
        name=NAME,
        options=dict(asdict(options)),
        rows=tuple(rows),
        skipped=tuple(collected.skipped),
        commands=tuple(collected.commands),
        notes=tuple(collected.notes),
    )


def with_added_latency(rows: list[Row]) -> list[Row]:
    """Add `added_p<N>_ms` = this target's percentile minus direct's, for every row but direct's."""
    direct = next((r for r in rows if r.target == "direct"), None)
    if direct is None or direct.latency is None:
        return rows
    out = []
    for row in rows:
        if row is direct or row.latency is None:
            out.append(row)
            continue
        metrics = dict(row.metrics)
        for p in ADDED:
            mine, base = row.latency.at(p), direct.latency.at(p)
            if mine is not None and base is not None:
                metrics[f"added_p{p}_ms"] = mine - base
        out.append(replace(row, metrics=metrics))
    return out
