"""throughput: closed loop with wrk, 64 connections for 10 s, three times; median requests/s, latency and
requests per proxy CPU-second (the proxy's and its workers' utime+stime from /proc over the run).
`--tracing-sample-rate 0,0.01` adds a one-worker meshd row per rate with tracing on, exporting to a
sink collector the bench starts (bench/trace_sink.py), to compare with `meshd-w1`: then `meshd-w1` and
the tracing rows run side by side and are measured interleaved, 3 s against each in turn, the order
reversed every round, ten rounds; their rows show medians over the rounds, and each tracing row's
change in requests per CPU-second is the median of its per-round ratios to `meshd-w1` in the same
round, with the lowest and highest round."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from bench import interleave, tables, wrk
from bench.processes import LOOPBACK, ManagedProcess, ProcessFailed, free_port, wait_listening
from bench.procstat import tree_cpu_seconds
from bench.results import Row, ScenarioResult, Skip
from bench.scenarios.context import Collected, RunContext, choose, median_metrics, record_failure, started
from bench.targets.base import Deployment, RunningTarget, Target
from bench.targets.catalog import TinyUpstream, meshd, standard, tiny_upstream
from bench.upstream_control import bench_env

NAME: Final = "throughput"
SERVICE: Final = "bench"
#: what the tracing rows are compared with, and how their names start
BASELINE: Final = "meshd-w1"
TRACING_PREFIX: Final = "meshd-w1-tracing-"
#: a tracing row's metric: median over the rounds of (its req per CPU-s / meshd-w1's, same round) - 1
TRACING_CHANGE: Final = "tracing_req_per_cpu_change"
#: the figures of every interleaved run written to work/throughput/tracing-rounds.tsv
ROUND_COLUMNS: Final = ("requests", "rps", "proxy_cpu_secs", "req_per_cpu_sec", "p50_ms", "p99_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThroughputOptions:
    connections: int = 64
    duration_secs: float = 10.0
    repeats: int = 3
    threads: int = 1
    #: comma-separated sample rates (0 to 1): a `meshd-w1-tracing-<rate>` row for each; "" for none
    tracing_sample_rate: str = ""
    #: with tracing rows: rounds of interleaved runs of `meshd-w1` and the tracing rows
    tracing_rounds: int = 10
    #: with tracing rows: each interleaved run's length
    tracing_run_secs: float = 3.0

    def __post_init__(self) -> None:
        if self.connections < 1 or self.repeats < 1 or self.threads < 1 or self.tracing_rounds < 1:
            raise ValueError("connections, repeats, threads and tracing rounds must be at least 1")
        if self.duration_secs < 1 or self.tracing_run_secs < 1:
            raise ValueError("wrk runs for whole seconds: durations must be at least 1 s")
        self.tracing_rates()  # refuses a bad list before anything starts

    def tracing_rates(self) -> list[float]:
        rates: list[float] = []
        for part in self.tracing_sample_rate.split(","):
            if not part.strip():
                continue
            try:
                rate = float(part)
            except ValueError:
                raise ValueError(f"--tracing-sample-rate: {part.strip()!r} is not a number") from None
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"--tracing-sample-rate: {rate:g} is not between 0 and 1")
            rates.append(rate)
        return rates

    def scaled(self, factor: float) -> ThroughputOptions:
        return replace(self, duration_secs=max(1.0, round(self.duration_secs * factor)),
                       tracing_run_secs=max(1.0, round(self.tracing_run_secs * factor)))


def run(ctx: RunContext, options: ThroughputOptions) -> ScenarioResult:
    collected = Collected()
    if shutil.which("wrk") is None:
        reason = f"wrk is not installed: {wrk.WRK_INSTALL}"
        ctx.progress.note(f"  skipped {NAME}: {reason}")
        return ScenarioResult(name=NAME, options=dict(asdict(options)), skipped=(Skip(target="*", reason=reason),))
    # ewma (the default) and roundRobin at one worker: issue 3 wants ewma within 10% of round robin
    candidates = [
        meshd("meshd-w1", workers=1),
        meshd("meshd-w1-roundRobin", workers=1, balancer="roundRobin"),
        meshd("meshd-w2", workers=2),
    ]
    rates = options.tracing_rates()
    sink_port = free_port() if rates else 0
    for rate in rates:
        candidates.append(meshd(f"{TRACING_PREFIX}{rate:g}", workers=1, tracing_sample_rate=rate,
                                trace_collector=f"http://{LOOPBACK}:{sink_port}"))
    targets = choose(ctx, standard(candidates), collected)
    # with tracing rows, meshd-w1 and they are measured interleaved; every other target as before
    together = [t for t in targets if rates and (t.name == BASELINE or t.name.startswith(TRACING_PREFIX))]
    alone = [t for t in targets if t not in together]
    warmup_secs = max(1.0, round(ctx.warmup_secs)) if ctx.warmup_secs > 0 else 0.0
    warm = 1 if warmup_secs else 0
    ctx.progress.begin_scenario(NAME, len(alone) * (options.repeats + warm) + len(together) * (options.tracing_rounds + warm))
    workdir = ctx.scenario_dir(NAME)
    script = wrk.write_script(workdir)
    rows: dict[str, Row] = {}
    with tiny_upstream(ctx.supervisor, workdir / "upstream", 3600.0) as upstream, \
            _trace_sink(ctx, workdir, sink_port) as sink:
        collected.notes.append(f"Upstream: {upstream.kind} answering a 3-byte body.")
        if sink is not None:
            collected.notes.append(
                "Tracing rows: meshd-w1 with `tracing: {sampleRate: <rate>}` exporting OTLP/HTTP to a sink "
                "that answers 200 and decodes nothing (bench/trace_sink.py)."
            )
        deployment = Deployment.single(SERVICE, (upstream.backend,))
        for target in alone:
            with started(ctx, target, deployment, NAME, collected) as running_target:
                if running_target is None:
                    continue
                if warmup_secs:
                    ctx.progress.step(f"{target.name}: warm-up", warmup_secs)
                    _wrk_run(running_target, upstream, options, script, warmup_secs, collected)
                runs = []
                for repeat in range(options.repeats):
                    ctx.progress.step(f"{target.name}: run {repeat + 1}/{options.repeats}", options.duration_secs)
                    runs.append(_wrk_run(running_target, upstream, options, script, options.duration_secs, collected))
                rows[target.name] = Row(target=target.name, metrics=median_metrics(runs), runs=tuple(runs))
                ctx.progress.note(f"  {target.name}: {rows[target.name].metrics['rps']:.0f} req/s")
        if together:
            collected.notes.append(
                f"Interleaved: {', '.join(t.name for t in together)} ran side by side, measured "
                f"{options.tracing_rounds} rounds of {options.tracing_run_secs:g} s against each in turn, the order "
                "reversed every round; their rows show medians over the rounds. The change in requests per "
                "CPU-second against meshd-w1 is the median over the rounds of that round's ratio to meshd-w1's "
                "(not the ratio of the medians), lowest and highest round in brackets. Every run is in "
                "work/throughput/tracing-rounds.tsv."
            )
            for row in _interleaved(ctx, together, deployment, upstream, options, script, collected,
                                    warmup_secs, workdir / "tracing-rounds.tsv"):
                rows[row.target] = row
                change = row.metric(TRACING_CHANGE)
                extra = "" if change is None else f", {tables.change_with_range(TRACING_CHANGE)(row)} per CPU-s"
                ctx.progress.note(f"  {row.target}: {row.metrics['rps']:.0f} req/s{extra}")
    return ScenarioResult(
        name=NAME,
        options=dict(asdict(options)),
        rows=tuple(rows[t.name] for t in targets if t.name in rows),
        skipped=tuple(collected.skipped),
        commands=tuple(collected.commands),
        notes=tuple(collected.notes),
    )


def _interleaved(ctx: RunContext, targets: list[Target], deployment: Deployment, upstream: TinyUpstream,
                 options: ThroughputOptions, script: Path, collected: Collected, warmup_secs: float,
                 record: Path) -> list[Row]:
    """meshd-w1 and the tracing rows, all started, warmed up, then measured in rounds (bench/interleave.py).
    A target that fails is skipped and ends the rounds; the others keep the runs they had."""
    with ExitStack() as stack:
        running: dict[str, RunningTarget] = {}
        for target in targets:
            running_target = stack.enter_context(started(ctx, target, deployment, NAME, collected))
            if running_target is not None:
                running[target.name] = running_target
        if warmup_secs:
            for name in list(running):
                ctx.progress.step(f"{name}: warm-up", warmup_secs)
                if _measured(ctx, running[name], upstream, options, script, warmup_secs, collected) is None:
                    del running[name]

        def one(round_index: int, name: str) -> dict[str, float] | None:
            ctx.progress.step(f"{name}: round {round_index + 1}/{options.tracing_rounds}", options.tracing_run_secs)
            return _measured(ctx, running[name], upstream, options, script, options.tracing_run_secs, collected)

        runs, text = interleave.run_rounds(list(running), options.tracing_rounds, one, str, ROUND_COLUMNS)
    if text:
        record.write_text(text)
    return tracing_rows(runs)


def tracing_rows(runs: dict[str, list[dict[str, float]]]) -> list[Row]:
    """A row per interleaved target, figures the median over its rounds; each tracing row also gets
    `tracing_req_per_cpu_change`: the median over the rounds of its requests per CPU-second over
    meshd-w1's in the same round, minus one, with the lowest and highest round."""
    base = runs.get(BASELINE)
    rows = []
    for name, target_runs in runs.items():
        if not target_runs:
            continue
        metrics = median_metrics(target_runs)
        kept: tuple[dict[str, float], ...] = tuple(target_runs)
        if name != BASELINE and base:
            extra, kept = interleave.compared(target_runs, base, "req_per_cpu_sec", TRACING_CHANGE)
            metrics.update(extra)
        rows.append(Row(target=name, metrics=metrics, runs=kept))
    return rows


def _measured(ctx: RunContext, running_target: RunningTarget, upstream: TinyUpstream, options: ThroughputOptions,
              script: Path, secs: float, collected: Collected) -> dict[str, float] | None:
    """One run; a process failure becomes a Skip and None."""
    try:
        return _wrk_run(running_target, upstream, options, script, secs, collected)
    except ProcessFailed as exc:
        record_failure(ctx, collected, running_target.name, "failed while measured", exc)
        return None


@contextmanager
def _trace_sink(ctx: RunContext, workdir: Path, port: int) -> Iterator[ManagedProcess | None]:
    """The OTLP sink the tracing rows export to (none without tracing rows)."""
    if not port:
        yield None
        return
    argv = [sys.executable, "-m", "bench.trace_sink", "--port", str(port)]
    process = ctx.supervisor.start("trace-sink", argv, cwd=workdir, log_path=workdir / "trace-sink.log",
                                   env=bench_env())
    try:
        wait_listening(process, port)
        yield process
    finally:
        ctx.supervisor.stop(process)


def _wrk_run(running_target: RunningTarget, upstream: TinyUpstream, options: ThroughputOptions, script: Path,
             secs: float, collected: Collected) -> dict[str, float]:
    """One wrk run, with the proxy's (and the upstream's) CPU seconds read from /proc around it."""
    argv = wrk.command(running_target.url, connections=options.connections, duration_secs=secs,
                       threads=options.threads, host_header=SERVICE, script=script)
    proxy = running_target.process
    cpu_before = tree_cpu_seconds(proxy.pid) if proxy else 0.0
    upstream_before = tree_cpu_seconds(upstream.process.pid)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailed(f"wrk did not finish within {secs + 60:g} s") from exc
    cpu = (tree_cpu_seconds(proxy.pid) - cpu_before) if proxy else 0.0
    upstream_cpu = tree_cpu_seconds(upstream.process.pid) - upstream_before
    if done.returncode != 0:
        raise ProcessFailed(f"wrk failed with code {done.returncode}: {done.stderr.strip()}")
    command = shlex.join(["wrk", *argv[1:5], "-s", "wrk_report.lua", *argv[7:-1], "http://127.0.0.1:<port>/"])
    if command not in collected.commands:
        collected.commands.append(command)
    try:
        result = wrk.parse_output(done.stdout)
    except ValueError as exc:
        raise ProcessFailed(f"unreadable wrk output: {done.stdout[-300:]!r}") from exc
    duration = result.duration_secs or secs
    metrics = {
        "rps": result.requests_per_sec,
        "requests": float(result.requests),
        "p50_ms": result.latency_ms.get("50", 0.0),
        "p99_ms": result.latency_ms.get("99", 0.0),
        "errors": float(result.error_count),
        "upstream_cpu_util": upstream_cpu / duration,
    }
    if proxy is not None:
        metrics["proxy_cpu_secs"] = cpu
        metrics["proxy_cpu_util"] = cpu / duration
        metrics["req_per_cpu_sec"] = result.requests / cpu if cpu > 0 else 0.0
    return metrics
