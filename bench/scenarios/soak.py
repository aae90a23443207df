"""soak: meshd for 30 minutes at a steady rate while its world changes: a replica is killed every
2 minutes and restarted 20 s later on a new port, the routing file is edited every minute and the
whole config reloaded (POST /admin/reload) every 5. RSS, open file descriptors and p99 are
sampled every 10 s and plotted. Goals: no failed request (every request is a GET that a retry
to another replica can save), RSS growth <= 5% after the first five minutes, descriptors flat.
Not part of `meshd-bench all`; shorten with --time-scale."""

from __future__ import annotations

import os
import re
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Final

import yaml

from bench.openloop import OpenLoopResult, run_open_loop
from bench.percentiles import percentile, summarize
from bench.processes import LOOPBACK, ManagedProcess, ProcessFailed, free_port, wait_http_ok
from bench.procstat import tree_memory
from bench.results import Row, ScenarioResult, Skip
from bench.scenarios.context import Collected, RunContext, choose
from bench.targets.base import Backend, Deployment
from bench.targets.catalog import meshd
from bench.targets.meshd import READY_TIMEOUT_SECS, MeshdTarget
from bench.upstream import InstanceSpec
from bench.upstream_control import UpstreamProcess, bench_env, start_upstream

NAME: Final = "soak"
SERVICE: Final = "bench"
#: the second fs name the routing file's edits move a share of the traffic to (the same replicas)
CANARY: Final = "bench-canary"
ROUTES_A: Final = f"dtab: |\n  /svc/{SERVICE} => /#/fs/{SERVICE};\n"
ROUTES_B: Final = (
    f"dtab: |\n  /svc/{SERVICE} => /#/fs/{SERVICE};\nrules:\n  - name: canary\n    prefix: /svc/{SERVICE}\n"
    f"    weights:\n      /#/fs/{SERVICE}: 9\n      /#/fs/{CANARY}: 1\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakOptions:
    rate: float = 500.0
    duration_secs: float = 1800.0
    replicas: int = 4
    kill_every_secs: float = 120.0
    down_secs: float = 20.0
    routes_every_secs: float = 60.0
    reload_every_secs: float = 300.0
    sample_every_secs: float = 10.0
    #: RSS growth is judged from the first sample at or after this, descriptors from the median
    #: of the samples in one kill cycle from here against the median of the last kill cycle's (a
    #: stall under way at one instant briefly adds connections, shed within seconds: not a step)
    steady_after_secs: float = 300.0
    #: the generator behaves like an ordinary HTTP client (Go's net/http, urllib3, Finagle): it
    #: reuses its most recently idle connection and closes any idle this long (below meshd's 60 s
    #: `idleTimeoutMs`, so meshd never closes one as a request is sent on it). Without this it
    #: kept every connection it ever dialled (one per request waiting at a stall of meshd: a
    #: reload, a kill, a busy machine) and rotated requests over all of them oldest-idle first, so
    #: none went idle and meshd's descriptors kept each stall's high-water mark for the rest of the
    #: run: the full soak's step from 44 to 86 descriptors was 46 such downstream connections (62
    #: opened, none closed). Each sample also reads meshd's own downstream and upstream connection
    #: counts from /metrics, so a step says which side it is on.
    client_idle_secs: float = 5.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_secs <= 0 or self.replicas < 2:
            raise ValueError("rate and duration must be positive and replicas at least 2")
        if min(self.kill_every_secs, self.down_secs, self.routes_every_secs, self.reload_every_secs,
               self.sample_every_secs, self.client_idle_secs) <= 0:
            raise ValueError("every interval must be positive")
        if self.down_secs >= self.kill_every_secs:
            raise ValueError("a killed replica must be back before the next kill (down_secs < kill_every_secs)")

    def scaled(self, factor: float) -> SoakOptions:
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)
                                if f.name.endswith("_secs")})


@dataclass(slots=True)
class _World:
    """The replicas (one upstream process each, so one can die alone), meshd's files, and counts."""

    ctx: RunContext
    options: SoakOptions
    workdir: Path
    disco: Path
    config_path: Path
    routes_path: Path
    admin_port: int
    port: int
    upstreams: dict[str, UpstreamProcess | None]
    meshd: ManagedProcess | None = None
    kills: int = 0
    restarts: int = 0
    routes_edits: int = 0
    reloads: int = 0
    reload_failures: int = 0
    generation: int = 0

    def start_replica(self, name: str) -> None:
        seed = int(name[1:]) + 100 * self.restarts
        self.upstreams[name] = start_upstream(
            self.ctx.supervisor, [InstanceSpec(name=name, seed=seed)], workdir=self.workdir,
            max_lifetime_secs=self.options.duration_secs + 600.0, name=f"upstream-{name}-{self.restarts}",
        )

    def kill_replica(self, name: str) -> None:
        upstream = self.upstreams[name]
        if upstream is not None:
            try:
                os.killpg(upstream.process.pid, signal.SIGKILL)  # a crash: no goodbye to open connections
            except ProcessLookupError:
                pass
            self.ctx.supervisor.stop(upstream.process)
            self.upstreams[name] = None
            self.kills += 1

    def write_disco(self) -> None:
        """Both fs names list the replicas alive now (written atomically, as an operator's tooling would)."""
        self.disco.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{u.replicas[0].host} {u.replicas[0].port}\n" for u in self.upstreams.values() if u)
        for name in (SERVICE, CANARY):
            tmp = self.disco / f".{name}.tmp"
            tmp.write_text(lines)
            tmp.replace(self.disco / name)

    def write_routes(self) -> None:
        tmp = self.routes_path.with_suffix(".tmp")
        tmp.write_text(ROUTES_B if self.routes_edits % 2 else ROUTES_A)
        tmp.replace(self.routes_path)

    def write_config(self) -> None:
        """meshd's config; each generation changes the client's failure accrual by one (5 or 6
        failures), so a reload rebuilds the router (the costly kind of reload)."""
        backends = tuple(Backend(n, u.replicas[0].host, u.replicas[0].port) for n, u in self.upstreams.items() if u)
        target = MeshdTarget(name="meshd")
        config = target.config(Deployment.single(SERVICE, backends), port=self.port, admin_port=self.admin_port,
                               disco=self.disco)
        router = config["routers"][0]  # type: ignore[index]
        router["routes"] = "./" + self.routes_path.name
        router["client"]["failureAccrual"]["failures"] = 5 + self.generation % 2
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.config_path)

    def reload(self) -> None:
        self.generation += 1
        self.write_config()
        request = urllib.request.Request(f"http://{LOOPBACK}:{self.admin_port}/admin/reload", method="POST")
        self.reloads += 1
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                ok = response.status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if not ok:
            self.reload_failures += 1


@dataclass(slots=True)
class _Sample:
    t_secs: float
    rss_mb: float
    fds: float
    #: meshd's downstream connections (`meshd_connections_open`) and upstream ones
    #: (`meshd_pool_connections`), or -1 when /metrics did not answer
    downstream: float = -1.0
    upstream: float = -1.0


_OPEN: Final = re.compile(r"^meshd_connections_open\{[^}]*\} (\S+)$", re.M)
_POOLED: Final = re.compile(r"^meshd_pool_connections\{[^}]*\} (\S+)$", re.M)


def _connections(admin_port: int) -> tuple[float, float]:
    """meshd's downstream and upstream connections now, from its metrics (-1, -1 if unreadable)."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin_port}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return -1.0, -1.0
    return (sum(float(v) for v in _OPEN.findall(text)), sum(float(v) for v in _POOLED.findall(text)))


def run(ctx: RunContext, options: SoakOptions) -> ScenarioResult:
    collected = Collected()
    targets = choose(ctx, [meshd("meshd")], collected)
    if not targets:
        return ScenarioResult(name=NAME, options=dict(asdict(options)), skipped=tuple(collected.skipped))
    ctx.progress.begin_scenario(NAME, 1)
    workdir = ctx.scenario_dir(NAME) / "meshd"
    workdir.mkdir(parents=True, exist_ok=True)
    world = _World(ctx=ctx, options=options, workdir=workdir, disco=workdir / "disco",
                   config_path=workdir / "meshd.yaml", routes_path=workdir / "routes.yaml",
                   admin_port=free_port(), port=free_port(),
                   upstreams={f"r{i}": None for i in range(options.replicas)})
    rows: list[Row] = []
    try:
        for name in world.upstreams:
            world.start_replica(name)
        world.write_disco()
        world.write_routes()
        world.write_config()
        argv = [sys.executable, "-m", "meshd", "run", "-c", str(world.config_path)]
        world.meshd = ctx.supervisor.start("meshd", argv, cwd=workdir,
                                           log_path=workdir / "meshd.log", env=bench_env())
        wait_http_ok(world.meshd, f"http://{LOOPBACK}:{world.admin_port}/admin/ready", READY_TIMEOUT_SECS)
        collected.commands.append("python -m meshd run -c meshd.yaml")
        ctx.progress.step(f"meshd: soak at {options.rate:g} req/s", options.duration_secs + 1.0)
        result, samples = _soak(ctx, world, collected)
        rows.append(_row(options, world, result, samples))
        row = rows[0]
        ctx.progress.note(
            f"  meshd: {row.metrics['failed']:.0f} failed of {row.metrics['scheduled']:.0f}, RSS growth "
            f"{100 * row.metrics['rss_growth']:.1f}%, fds {row.metrics['fds_steady']:.0f} -> "
            f"{row.metrics['fds_end']:.0f} (downstream connections {row.metrics['downstream_steady']:.0f} -> "
            f"{row.metrics['downstream_end']:.0f}), {world.kills} kills, {world.routes_edits} routes edits, "
            f"{world.reloads} reloads ({world.reload_failures} failed)"
        )
    except ProcessFailed as exc:
        collected.skipped.append(Skip(target="meshd", reason=f"failed while measured: {str(exc).splitlines()[0]}"))
        ctx.progress.note(f"  meshd failed while measured: {exc}")
    finally:
        if world.meshd is not None:
            ctx.supervisor.stop(world.meshd)
        for name in list(world.upstreams):
            world.kill_replica(name)
    o = options
    collected.notes.append(
        f"{o.replicas} replicas, each its own process; one is killed (SIGKILL) every {o.kill_every_secs:g} s and "
        f"started again {o.down_secs:g} s later on a new port, the fs namer's files following at once. The "
        f"routing file alternates every {o.routes_every_secs:g} s between a plain dtab and a 90/10 split over "
        f"two names for the same replicas; every {o.reload_every_secs:g} s meshd.yaml changes (failure accrual "
        "5 or 6 failures, so the router is rebuilt) and POST /admin/reload applies it. RSS, open descriptors "
        f"and the p99 of the requests sent in each {o.sample_every_secs:g} s are sampled; growth is judged "
        f"from {o.steady_after_secs:g} s on, descriptors as the median over one kill cycle from there against "
        f"the median over the last one. The generator reuses its most recently idle connection and closes any "
        f"idle for {o.client_idle_secs:g} s, as ordinary HTTP clients do."
    )
    return ScenarioResult(name=NAME, options=dict(asdict(options)), rows=tuple(rows),
                          skipped=tuple(collected.skipped), commands=tuple(collected.commands),
                          notes=tuple(collected.notes))


def _soak(ctx: RunContext, world: _World, collected: Collected) -> tuple[OpenLoopResult, list[_Sample]]:
    """The open loop, with the changes and the samples driven from its wait callback."""
    options = world.options
    assert world.meshd is not None
    pid = world.meshd.pid
    samples: list[_Sample] = []
    started: list[float] = []
    due = {"kill": options.kill_every_secs, "routes": options.routes_every_secs,
           "reload": options.reload_every_secs, "sample": 0.0}
    back_at: dict[str, float] = {}
    names = list(world.upstreams)

    def on_start(start_at: float) -> None:
        started.append(start_at)

    def tick() -> None:
        if not started:
            return
        now = time.monotonic() - started[0]
        if now < 0:
            return
        if now >= due["sample"] and now <= options.duration_secs:  # not in the drain after the last request
            rss = sum(p.rss_kb for p in tree_memory(pid)) / 1024.0
            fds = float(len(os.listdir(f"/proc/{pid}/fd")))  # before the metrics request opens one
            downstream, upstream = _connections(world.admin_port)
            samples.append(_Sample(now, rss, fds, downstream, upstream))
            due["sample"] += options.sample_every_secs
        for name, when in list(back_at.items()):
            if now >= when:
                world.restarts += 1
                world.start_replica(name)
                world.write_disco()
                del back_at[name]
        if now >= due["kill"] and now < options.duration_secs:
            name = names[world.kills % len(names)]
            world.kill_replica(name)
            world.write_disco()
            back_at[name] = now + options.down_secs
            due["kill"] += options.kill_every_secs
        if now >= due["routes"] and now < options.duration_secs:
            world.routes_edits += 1
            world.write_routes()
            due["routes"] += options.routes_every_secs
        if now >= due["reload"] and now < options.duration_secs:
            world.reload()
            due["reload"] += options.reload_every_secs

    result = run_open_loop(
        ctx.supervisor, addresses=((LOOPBACK, world.port),), hosts=[SERVICE], rate_per_sec=options.rate,
        duration_secs=options.duration_secs, workdir=world.workdir, name="load", connections=ctx.connections,
        start_in_secs=ctx.start_margin_secs, on_start=on_start, on_wait=tick,
        poll_secs=min(0.5, options.sample_every_secs / 4), commands=collected.commands, timeline=True,
        idle_close_secs=options.client_idle_secs,
    )
    return result, samples


def _row(options: SoakOptions, world: _World, result: OpenLoopResult, samples: list[_Sample]) -> Row:
    window = options.sample_every_secs
    buckets: dict[int, list[float]] = {}
    for intended, latency in zip(result.intended, result.latencies, strict=False):
        buckets.setdefault(int(intended // window), []).append(latency)
    failures: dict[int, int] = {}
    for intended, _what in result.failures:
        failures[int(intended // window)] = failures.get(int(intended // window), 0) + 1
    series = []
    for sample in samples:
        index = int(sample.t_secs // window) - 1  # the window that ended at this sample
        latencies = sorted(buckets.get(index, []))
        series.append({
            "t_secs": sample.t_secs,
            "rss_mb": sample.rss_mb,
            "fds": sample.fds,
            "downstream": sample.downstream,
            "upstream": sample.upstream,
            "p99_ms": 1e3 * percentile(latencies, 99.0) if latencies else 0.0,
            "requests": float(len(latencies)),
            "failed": float(failures.get(index, 0)),
        })
    steady = next((s for s in samples if s.t_secs >= options.steady_after_secs), samples[-1] if samples else None)
    last = samples[-1] if samples else None
    cycle = options.kill_every_secs
    fds_steady = _median_fds(samples, options.steady_after_secs, options.steady_after_secs + cycle, steady)
    fds_end = _median_fds(samples, options.duration_secs - cycle, options.duration_secs + 1.0, last)
    rss_steady = steady.rss_mb if steady else 0.0
    rss_end = last.rss_mb if last else 0.0
    metrics = {
        "scheduled": float(result.scheduled),
        "success_rate": result.success_rate,
        "failed": float(result.scheduled - result.successes),
        "rss_mb_steady": rss_steady,
        "rss_mb_end": rss_end,
        "rss_mb_max": max((s.rss_mb for s in samples), default=0.0),
        "rss_growth": (rss_end - rss_steady) / rss_steady if rss_steady else 0.0,
        "fds_steady": fds_steady,
        "fds_end": fds_end,
        "fds_max": max((s.fds for s in samples), default=0.0),
        "downstream_steady": steady.downstream if steady else -1.0,
        "downstream_end": last.downstream if last else -1.0,
        "upstream_end": last.upstream if last else -1.0,
        "client_connections_opened": float(result.connections_opened),
        "client_connections_closed_idle": float(result.connections_closed_idle),
        "kills": float(world.kills),
        "restarts": float(world.restarts),
        "routes_edits": float(world.routes_edits),
        "reloads": float(world.reloads),
        "reload_failures": float(world.reload_failures),
    }
    note = ""
    if result.failures:
        first = ", ".join(f"{t:.1f} s: {what}" for t, what in result.failures[:5])
        note = f"failed requests (intended send time: outcome), first {min(5, len(result.failures))}: {first}"
    return Row(target="meshd", metrics=metrics, latency=summarize(result.latencies), runs=tuple(series),
               note=note)



def _median_fds(samples: list[_Sample], start: float, end: float, fallback: _Sample | None) -> float:
    """The median descriptor count of the samples taken in [start, end), or `fallback`'s."""
    window = [s.fds for s in samples if start <= s.t_secs < end]
    if window:
        return float(statistics.median(window))
    return fallback.fds if fallback is not None else 0.0
