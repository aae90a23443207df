"""grpc: unary gRPC over h2c with h2load, meshd (`protocol: h2`) vs Envoy (h2 upstream) vs direct:
requests per proxy CPU-second (closed loop), added p50/p99 at a fixed rate, and 100 concurrent streams
on one client connection (how many upstream connections the proxy opens for them)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from bench import h2load
from bench.percentiles import summarize
from bench.processes import LOOPBACK, ManagedProcess, ProcessFailed, Supervisor, free_port, wait_listening
from bench.procstat import tree_cpu_seconds
from bench.results import Row, ScenarioResult, Skip
from bench.scenarios.context import Collected, RunContext, choose, started
from bench.targets.base import Backend, Deployment, RunningTarget, Target
from bench.targets.direct import DirectTarget
from bench.targets.meshd import MeshdTarget
from bench.targets.peers import EnvoyGrpcTarget

NAME: Final = "grpc"
#: the gRPC service the calls go to (`/bench.Echo/Call`); meshd's `grpc` identifier names it /svc/bench.Echo
SERVICE: Final = "bench.Echo"
METHOD_PATH: Final = "/bench.Echo/Call"
NGHTTPD_INSTALL: Final = "apt-get install nghttp2-server"
CLOSED: Final = "closed loop"
RATE: Final = "fixed rate"
MUX: Final = "100 streams, 1 connection"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcOptions:
    #: closed loop: connections, and concurrent streams on each (4 x 25 = 100 calls in flight)
    clients: int = 4
    streams: int = 25
    #: fixed rate, calls per second in all, spread over `rate_clients` connections
    rate: float = 1000.0
    rate_clients: int = 10
    #: the multiplexing run: this many concurrent streams on one client connection
    mux_streams: int = 100
    duration_secs: float = 10.0
    #: size of the gRPC message in each request and in each answer
    message_bytes: int = 64

    def __post_init__(self) -> None:
        if min(self.clients, self.streams, self.rate_clients, self.mux_streams) < 1:
            raise ValueError("clients, streams, rate_clients and mux_streams must be at least 1")
        if self.rate <= 0 or self.duration_secs <= 0 or self.message_bytes < 0:
            raise ValueError("rate and duration must be positive, message_bytes not negative")

    def scaled(self, factor: float) -> GrpcOptions:
        return replace(self, duration_secs=max(0.5, self.duration_secs * factor))


@dataclass(frozen=True, slots=True)
class GrpcUpstream:
    backend: Backend
    process: ManagedProcess


def targets() -> list[Target]:
    return [DirectTarget(), MeshdTarget(name="meshd", protocol="h2"), EnvoyGrpcTarget()]


def run(ctx: RunContext, options: GrpcOptions) -> ScenarioResult:
    collected = Collected()
    for program, install in (("h2load", h2load.H2LOAD_INSTALL), ("nghttpd", NGHTTPD_INSTALL)):
        if _program(program) is None:
            reason = f"{program} is not installed: {install}"
            ctx.progress.note(f"  skipped {NAME}: {reason}")
            return ScenarioResult(name=NAME, options=dict(asdict(options)), skipped=(Skip(target="*", reason=reason),))
    chosen = choose(ctx, targets(), collected)
    ctx.progress.begin_scenario(NAME, len(chosen) * 3)
    workdir = ctx.scenario_dir(NAME)
    body = h2load.write_request_body(workdir, options.message_bytes)
    rows: list[Row] = []
    with grpc_upstream(ctx.supervisor, workdir / "upstream", options.message_bytes) as upstream:
        collected.notes.append(
            "Upstream: nghttpd (nghttp2's C server, h2c) answering each call with one "
            f"{options.message_bytes}-byte message and the trailer grpc-status: 0. Load: h2load, gRPC-shaped "
            f"requests (POST, content-type application/grpc, te: trailers, one {options.message_bytes}-byte "
            "length-prefixed message)."
        )
        deployment = Deployment.single(SERVICE, (upstream.backend,))
        for target in chosen:
            with started(ctx, target, deployment, NAME, collected) as running_target:
                if running_target is None:
                    continue
                url = running_target.url.rstrip("/") + METHOD_PATH
                here = ctx.scenario_dir(NAME) / target.name
                ctx.progress.step(f"{target.name}: closed loop", options.duration_secs)
                rows.append(_measure(running_target, upstream, url, body, here, collected, variant=CLOSED,
                                     clients=options.clients, streams=options.streams, secs=options.duration_secs))
                ctx.progress.step(f"{target.name}: fixed rate", options.duration_secs)
                per_client = options.rate / options.rate_clients
                rows.append(_measure(running_target, upstream, url, body, here, collected, variant=RATE,
                                     clients=options.rate_clients, streams=10, secs=options.duration_secs,
                                     rps_per_client=per_client))
                ctx.progress.step(f"{target.name}: {options.mux_streams} streams on one connection",
                                  options.duration_secs)
                rows.append(_measure(running_target, upstream, url, body, here, collected, variant=MUX,
                                     clients=1, streams=options.mux_streams, secs=options.duration_secs))
                closed = rows[-3]
                ctx.progress.note(f"  {target.name}: {closed.metrics['rps']:.0f} calls/s closed loop"
                                  + (f", {closed.metrics['req_per_cpu_sec']:.0f} per proxy CPU-second"
                                     if "req_per_cpu_sec" in closed.metrics else ""))
    return ScenarioResult(
        name=NAME,
        options=dict(asdict(options)),
        rows=tuple(with_added_latency(rows)),
        skipped=tuple(collected.skipped),
        commands=tuple(collected.commands),
        notes=tuple(collected.notes),
    )


def _measure(running_target: RunningTarget, upstream: GrpcUpstream, url: str, body: Path, workdir: Path,
             collected: Collected, *, variant: str, clients: int, streams: int, secs: float,
             rps_per_client: float | None = None) -> Row:
    """One h2load run with the proxy's and the upstream's CPU read from /proc around it."""
    log = workdir / f"h2load-{variant.split()[0]}.log"
    log.unlink(missing_ok=True)
    argv = h2load.command(url, body=body, clients=clients, streams=streams, duration_secs=secs,
                          rps_per_client=rps_per_client, log_file=None if variant == CLOSED else log)
    proxy = running_target.process
    cpu_before = tree_cpu_seconds(proxy.pid) if proxy else 0.0
    upstream_before = tree_cpu_seconds(upstream.process.pid)
    stdout, returncode, peak_connections = _run_sampling(argv, secs + 60, upstream.backend.port)
    cpu = (tree_cpu_seconds(proxy.pid) - cpu_before) if proxy else 0.0
    upstream_cpu = tree_cpu_seconds(upstream.process.pid) - upstream_before
    if returncode != 0:
        raise ProcessFailed(f"h2load failed with code {returncode}: {stdout.strip()[-300:]}")
    try:
        result = h2load.parse_output(stdout)
    except ValueError as exc:
        raise ProcessFailed(f"unreadable h2load output: {stdout[-300:]!r}") from exc
    shown = [*argv[:-1], "http://127.0.0.1:<port>" + METHOD_PATH]
    shown[shown.index("-d") + 1] = "grpc-request.bin"
    if "--log-file" in shown:
        shown[shown.index("--log-file") + 1] = "h2load.log"
    command = shlex.join(shown)
    if command not in collected.commands:
        collected.commands.append(command)
    duration = result.duration_secs or secs
    metrics: dict[str, float] = {
        "rps": result.requests_per_sec,
        "requests": float(result.done),
        "errors": float(result.errors),
        "success_rate": result.succeeded / result.done if result.done else 0.0,
        "upstream_cpu_util": upstream_cpu / duration,
        "upstream_connections": float(peak_connections),
    }
    if proxy is not None:
        metrics["proxy_cpu_secs"] = cpu
        metrics["proxy_cpu_util"] = cpu / duration
        metrics["req_per_cpu_sec"] = result.done / cpu if cpu > 0 else 0.0
    if variant == MUX and metrics["upstream_connections"] > 0:
        metrics["streams_per_upstream_connection"] = streams / metrics["upstream_connections"]
    latency = summarize(h2load.read_log(log)) if variant != CLOSED and log.exists() else None
    if latency is not None:
        metrics["p50_ms"] = latency.at("50") or 0.0
        metrics["p99_ms"] = latency.at("99") or 0.0
    return Row(target=running_target.name, variant=variant, metrics=metrics, latency=latency)


def _run_sampling(argv: list[str], timeout_secs: float, port: int) -> tuple[str, int, int]:
    """Run h2load to its end (stdout and stderr together), sampling every 50 ms how many connections
    are open to the upstream; returns the output, the exit code and the most connections seen."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        peak = 0
        deadline = time.monotonic() + timeout_secs
        while True:
            peak = max(peak, established_to(port))
            try:
                process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise ProcessFailed(f"h2load did not finish within {timeout_secs:g} s") from None
        out.seek(0)
        return out.read(), process.returncode, peak


def with_added_latency(rows: list[Row]) -> list[Row]:
    """At the fixed rate, each proxy's p50 and p99 minus direct's (h2load's own time cancels out)."""
    direct = next((r for r in rows if r.target == "direct" and r.variant == RATE), None)
    if direct is None:
        return rows
    out = []
    for row in rows:
        if row.variant == RATE and row.target != "direct":
            added = {f"added_{k}": row.metrics[k] - direct.metrics[k] for k in ("p50_ms", "p99_ms")
                     if k in row.metrics and k in direct.metrics}
            row = replace(row, metrics={**row.metrics, **added})
        out.append(row)
    return out


def established_to(port: int, proc_net: Path = Path("/proc/net")) -> int:
    """TCP connections in ESTABLISHED state whose remote end is `port` on this host (IPv4 and IPv6):
    the connections clients (a proxy's pool, or h2load when direct) hold to the upstream."""
    count = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@contextmanager
def grpc_upstream(supervisor: Supervisor, workdir: Path, message_bytes: int) -> Iterator[GrpcUpstream]:
    """nghttpd over h2c answering every call to `/bench.Echo/Call` with one `message_bytes` message (a
    file it serves; the request body is read and dropped) and the trailer `grpc-status: 0`: a unary gRPC
    server in C, far faster than any proxy in front of it. (Its `--echo-upload` would echo the request
    instead, but it spools each upload through a temporary file and gets slower with every concurrent
    stream: 3,500 calls/s at 100 streams against 125,000 for the served file, measured here.)"""
    docroot = workdir / "docroot"
    (docroot / SERVICE).mkdir(parents=True, exist_ok=True)
    (docroot / SERVICE / "Call").write_bytes(h2load.grpc_frame(b"r" * message_bytes))
    binary = _program("nghttpd")
    assert binary is not None, "checked by run()"
    port = free_port()
    argv = [binary, "--no-tls", "--trailer", "grpc-status: 0", "-a", LOOPBACK, "-d", str(docroot), str(port)]
    process = supervisor.start("nghttpd", argv, cwd=workdir, log_path=workdir / "nghttpd.log")
    try:
        wait_listening(process, port)
        yield GrpcUpstream(Backend("grpc-upstream", LOOPBACK, port), process)
    finally:
        supervisor.stop(process)


def _program(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path(f"/usr/sbin/{name}").is_file():
        return f"/usr/sbin/{name}"
    return found
