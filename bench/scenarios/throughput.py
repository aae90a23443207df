"""throughput: closed loop with wrk, 64 connections for 10 s, three times; median requests/s, latency and
requests per proxy CPU-second (the proxy's and its workers' utime+stime from /proc over the run).
`--tracing-sample-rate 0,0.01` adds a one-worker meshd row per rate with tracing on, exporting to a
sink collector the bench starts (bench/trace_sink.py), to compare with `meshd-w1`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from bench import wrk
from bench.processes import LOOPBACK, ManagedProcess, ProcessFailed, free_port, wait_listening
from bench.procstat import tree_cpu_seconds
from bench.results import Row, ScenarioResult, Skip
from bench.scenarios.context import Collected, RunContext, choose, median_metrics, started
from bench.targets.base import Deployment, RunningTarget
from bench.targets.catalog import TinyUpstream, meshd, standard, tiny_upstream
from bench.upstream_control import bench_env

NAME: Final = "throughput"
SERVICE: Final = "bench"


@dataclass(frozen=True, slots=True, kw_only=True)
class ThroughputOptions:
    connections: int = 64
    duration_secs: float = 10.0
    repeats: int = 3
    threads: int = 1
    #: comma-separated sample rates (0 to 1): a `meshd-w1-tracing-<rate>` row for each; "" for none
    tracing_sample_rate: str = ""

    def __post_init__(self) -> None:
        if self.connections < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("connections, repeats and threads must be at least 1")
        if self.duration_secs < 1:
            raise ValueError("wrk runs for whole seconds: duration must be at least 1 s")
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
        return replace(self, duration_secs=max(1.0, round(self.duration_secs * factor)))


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
        candidates.append(meshd(f"meshd-w1-tracing-{rate:g}", workers=1, tracing_sample_rate=rate,
                                trace_collector=f"http://{LOOPBACK}:{sink_port}"))
    targets = choose(ctx, standard(candidates), collected)
    warmup_secs = max(1.0, round(ctx.warmup_secs)) if ctx.warmup_secs > 0 else 0.0
    ctx.progress.begin_scenario(NAME, len(targets) * (options.repeats + (1 if warmup_secs else 0)))
    workdir = ctx.scenario_dir(NAME)
    script = wrk.write_script(workdir)
    with tiny_upstream(ctx.supervisor, workdir / "upstream", 3600.0) as upstream, \
            _trace_sink(ctx, workdir, sink_port) as sink:
        collected.notes.append(f"Upstream: {upstream.kind} answering a 3-byte body.")
        if sink is not None:
            collected.notes.append(
                "Tracing rows: meshd-w1 with `tracing: {sampleRate: <rate>}` exporting OTLP/HTTP to a sink "
                "that answers 200 and decodes nothing (bench/trace_sink.py)."
            )
        deployment = Deployment.single(SERVICE, (upstream.backend,))
        for target in targets:
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
                row = Row(target=target.name, metrics=median_metrics(runs), runs=tuple(runs))
                collected.rows.append(row)
                ctx.progress.note(f"  {target.name}: {row.metrics['rps']:.0f} req/s")
    return ScenarioResult(
        name=NAME,
        options=dict(asdict(options)),
        rows=tuple(collected.rows),
        skipped=tuple(collected.skipped),
        commands=tuple(collected.commands),
        notes=tuple(collected.notes),
    )


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
