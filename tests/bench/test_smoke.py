"""Smoke test: every scenario runs for half a second or so at tiny rates against direct and the peers that are
installed, and produces results of the right shape. Nothing here is timed; it checks structure.

meshd targets are skipped unless MESHD_BENCH_SMOKE_MESHD=1 (then a meshd that cannot start fails the test).
Under CI=true, nginx, HAProxy and wrk are required: their absence fails with the install command.
"""

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.cli import main
from bench.processes import Supervisor
from bench.progress import Progress
from bench.results import ScenarioResult, from_json, load, to_json
from bench.scenarios import failing_replica, grpc, latency, memory, slow_replica, soak, stall, throughput, tls
from bench.scenarios.context import RunContext
from bench.targets.catalog import FAMILIES, Selection
from bench.targets.peers import envoy_binary, haproxy_binary, nginx_binary

WITH_MESHD = os.environ.get("MESHD_BENCH_SMOKE_MESHD") == "1"
IN_CI = os.environ.get("CI") == "true"
CI_TOOLS: dict[str, Callable[[], str | None]] = {
    "nginx": nginx_binary, "haproxy": haproxy_binary, "wrk": lambda: shutil.which("wrk"),
    "h2load": lambda: shutil.which("h2load"),
    "nghttpd": lambda: shutil.which("nghttpd") or ("/usr/sbin/nghttpd" if Path("/usr/sbin/nghttpd").exists() else None),
}
INSTALL = "apt-get install -y haproxy nginx wrk nghttp2-client nghttp2-server"
PEERS_AVAILABLE = {
    name for name, found in (("envoy", envoy_binary()), ("haproxy", haproxy_binary()), ("nginx", nginx_binary()))
    if found
}


@pytest.fixture(scope="module", autouse=True)
def required_tools():
    missing = [name for name, find in CI_TOOLS.items() if not find()]
    if missing and IN_CI:
        pytest.fail(f"CI needs {', '.join(missing)} for the bench smoke test: {INSTALL}")


@pytest.fixture
def ctx(tmp_path):
    families = set(FAMILIES) if WITH_MESHD else set(FAMILIES) - {"meshd"}
    with Supervisor() as supervisor:
        context = RunContext(
            supervisor=supervisor,
            progress=Progress(io.StringIO(), live=False),
            selection=Selection(frozenset(families)),
            workdir=tmp_path / "work",
            warmup_secs=0.0,
            connections=4,
            start_margin_secs=0.15,
        )
        yield context
        # Every process a scenario starts is stopped by the time it returns.
        assert supervisor.running() == []


def expected_targets(*meshd_names: str, direct: bool = True, peers: bool = True) -> set[str]:
    names = {"direct"} if direct else set()
    if WITH_MESHD:
        names |= set(meshd_names)
    return names | (PEERS_AVAILABLE if peers else set())


def check_common(result: ScenarioResult, name: str) -> None:
    assert result.name == name
    assert from_json(to_json_run(result)).scenarios[0] == result  # results survive JSON
    failed = [s for s in result.skipped if "not installed" not in s.reason]
    assert failed == [], f"targets failed: {failed}"
    for skip in result.skipped:  # a missing peer is skipped with its exact install command
        assert "install" in skip.reason


def to_json_run(result: ScenarioResult) -> str:
    from bench.machine import describe
    from bench.results import BenchRun

    return to_json(BenchRun(started_at="now", finished_at="now", invocation="test", machine=describe(),
                            scenarios=(result,)))


def check_open_loop_rows(result: ScenarioResult, scheduled: int) -> None:
    for row in result.rows:
        assert row.latency is not None and row.latency.count > 0, row.label
        assert row.metrics["scheduled"] == scheduled
        assert 0.0 <= row.metrics["success_rate"] <= 1.0
        assert set(row.latency.percentiles_ms) == {"50", "90", "99", "99.9", "99.99", "99.999"}
        values = [row.latency.percentiles_ms[k] for k in ("50", "90", "99", "99.9")]
        assert values == sorted(values)


@pytest.mark.skipif(shutil.which("wrk") is None and not IN_CI, reason=f"wrk is not installed: {INSTALL}")
def test_throughput(ctx):
    options = throughput.ThroughputOptions(connections=4, duration_secs=1, repeats=1)
    result = throughput.run(ctx, options)
    check_common(result, "throughput")
    assert {r.target for r in result.rows} == expected_targets("meshd-w1", "meshd-w1-roundRobin", "meshd-w2")
    for row in result.rows:
        assert row.metrics["rps"] > 0 and len(row.runs) == 1
        if row.target != "direct":
            assert row.metrics["proxy_cpu_secs"] > 0 and row.metrics["req_per_cpu_sec"] > 0
    assert any(c.startswith("wrk -t1 -c4 -d1s --latency") for c in result.commands)


@pytest.mark.skipif(not WITH_MESHD, reason="meshd targets only: set MESHD_BENCH_SMOKE_MESHD=1")
@pytest.mark.skipif(shutil.which("wrk") is None and not IN_CI, reason=f"wrk is not installed: {INSTALL}")
def test_throughput_measures_the_tracing_rows_interleaved_with_meshd_w1(ctx):
    ctx.selection = Selection(frozenset({"meshd"}))
    options = throughput.ThroughputOptions(connections=4, duration_secs=1, repeats=1, tracing_sample_rate="0",
                                           tracing_rounds=2, tracing_run_secs=1)
    result = throughput.run(ctx, options)
    check_common(result, "throughput")
    rows = {r.target: r for r in result.rows}
    assert set(rows) == {"meshd-w1", "meshd-w1-roundRobin", "meshd-w2", "meshd-w1-tracing-0"}
    assert len(rows["meshd-w1"].runs) == 2 and len(rows["meshd-w1-roundRobin"].runs) == 1
    traced = rows["meshd-w1-tracing-0"]
    assert len(traced.runs) == 2 and all(throughput.TRACING_CHANGE in run for run in traced.runs)
    assert traced.metrics[f"{throughput.TRACING_CHANGE}_rounds"] == 2
    # every interleaved run, in the order they ran: w1, tracing, then tracing, w1
    lines = (ctx.workdir / "throughput" / "tracing-rounds.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        ["1", "meshd-w1"], ["1", "meshd-w1-tracing-0"], ["2", "meshd-w1-tracing-0"], ["2", "meshd-w1"]]


def test_latency(ctx):
    ctx.warmup_secs = 0.2  # this scenario also exercises the warm-up runs
    result = latency.run(ctx, latency.LatencyOptions(rate=100, duration_secs=0.5))
    check_common(result, "latency")
    assert {r.target for r in result.rows} == expected_targets("meshd")
    check_open_loop_rows(result, scheduled=50)
    for row in result.rows:
        assert row.metrics["success_rate"] == 1.0, row.label
        if row.target != "direct":
            assert {"added_p50_ms", "added_p99_ms"} <= set(row.metrics)
    assert any("Generator overhead" in note for note in result.notes)


def test_slow_replica(ctx):
    result = slow_replica.run(ctx, slow_replica.SlowReplicaOptions(rate=60, duration_secs=0.5, slow_ms=20))
    check_common(result, "slow-replica")
    assert {r.target for r in result.rows} == expected_targets("meshd", "meshd-p2c", "meshd-roundRobin")
    check_open_loop_rows(result, scheduled=30)
    direct = result.row("direct")
    assert direct is not None and direct.shares["r2"] == 0.0  # direct uses only the fast replicas
    for row in result.rows:
        assert set(row.shares) == {"r0", "r1", "r2"}
        assert sum(row.shares.values()) == pytest.approx(1.0)


def test_failing_replica(ctx):
    result = failing_replica.run(ctx, failing_replica.FailingReplicaOptions(rate=60, duration_secs=0.5))
    check_common(result, "failing-replica")
    assert {r.target for r in result.rows} == expected_targets("meshd", "meshd-p2c", "meshd-roundRobin", "meshd-noretries")
    check_open_loop_rows(result, scheduled=30)
    direct = result.row("direct")
    assert direct is not None
    assert direct.metrics["amplification"] == 1.0 and direct.metrics["success_rate"] == 1.0
    for row in result.rows:
        assert row.metrics["upstream_requests"] >= row.metrics["client_requests"] > 0


def test_stall(ctx):
    options = stall.StallOptions(rate=60, duration_secs=0.5, stall_start_secs=0.1, stall_secs=0.3, stall_ms=100,
                                 replicas=3)
    result = stall.run(ctx, options)
    check_common(result, "stall")
    expected = expected_targets("meshd-roundRobin", "meshd-p2c", "meshd-ewma", direct=False)
    assert {(r.target, r.variant) for r in result.rows} == {(t, v) for t in expected for v in ("no stall", "stall")}
    check_open_loop_rows(result, scheduled=30)
    for row in result.rows:
        if row.variant == "no stall":
            assert row.metrics["stalled_requests"] == 0


def test_memory(ctx):
    options = memory.MemoryOptions(rate=50, duration_secs=0.5, services=20, settle_secs=0.1)
    result = memory.run(ctx, options)
    check_common(result, "memory")
    variants = {(r.target, r.variant) for r in result.rows}
    expected = {(p, v) for p in PEERS_AVAILABLE for v in ("idle", "under load")}
    if WITH_MESHD:
        expected |= {("meshd", v) for v in ("idle", "under load", "many services, idle", "many services, touched")}
    assert variants == expected
    for row in result.rows:
        assert row.metrics["rss_mb"] > 0 and row.metrics["rss_mb_per_worker"] <= row.metrics["rss_mb"]


@pytest.mark.skipif(shutil.which("wrk") is None and not IN_CI, reason=f"wrk is not installed: {INSTALL}")
def test_tls(ctx):
    options = tls.TlsOptions(connections=4, duration_secs=1, repeats=2, handshake_secs=1, handshake_clients=1)
    result = tls.run(ctx, options)
    check_common(result, "tls")
    families = ({"meshd"} if WITH_MESHD else set()) | ({"envoy"} & PEERS_AVAILABLE)
    variants = ("plaintext", "mtls", "plaintext-h2", "mtls-h2")
    assert {(r.target, r.variant) for r in result.rows} == {(f, v) for f in families for v in variants}
    for family in families:  # every pair measured in rounds, the order reversed every round
        lines = (ctx.workdir / "tls" / f"{family}-rounds.tsv").read_text().splitlines()
        order = [f"{family}-{v}" for v in variants]
        assert [line.split("\t")[:2] for line in lines[1:]] == (
            [["1", name] for name in order] + [["2", name] for name in reversed(order)])
    for row in result.rows:
        assert row.metrics["rps"] > 0 and row.metrics["errors"] == 0 and len(row.runs) == 2
        assert row.metrics["front_cpu_secs"] > 0 and row.metrics["back_cpu_secs"] > 0
        assert row.metrics["req_per_cpu_sec"] > 0
        if row.variant == "mtls-h2":
            # compared with both plaintext paths, round by round
            assert row.metrics["mtls_cpu_cost_rounds"] == 2 and row.metrics["mtls_cpu_cost_vs_http1_rounds"] == 2
            assert "handshakes" not in row.metrics  # measured once, on the HTTP/1.1 hop's pair
        if row.variant == "mtls":
            # each s_time connection is a full mutual-TLS handshake answered 200 by the second proxy
            assert row.metrics["handshakes"] > 0 and row.metrics["handshakes_per_cpu_sec"] > 0
            assert row.metrics["mtls_cpu_cost_rounds"] == 2 and all("mtls_cpu_cost" in run for run in row.runs)
            assert row.metrics["mtls_cpu_cost_min"] <= row.metrics["mtls_cpu_cost"] <= row.metrics["mtls_cpu_cost_max"]


@pytest.mark.skipif(
    (CI_TOOLS["h2load"]() is None or CI_TOOLS["nghttpd"]() is None) and not IN_CI,
    reason="h2load and nghttpd are not installed: apt-get install nghttp2-client nghttp2-server",
)
def test_grpc(ctx):
    result = grpc.run(ctx, grpc.GrpcOptions(duration_secs=0.5, rate=100, rate_clients=2, clients=2, streams=5))
    check_common(result, "grpc")
    assert result.skipped == () or all(s.target in ("meshd", "envoy") for s in result.skipped)
    envoy = {"envoy"} & PEERS_AVAILABLE
    # meshd speaks HTTP/2 (`protocol: h2`): with meshd targets on, its row must run, never be skipped
    meshd_rows = {"meshd"} if WITH_MESHD else set()
    assert not any(s.target == "meshd" for s in result.skipped) or not WITH_MESHD, result.skipped
    assert {r.target for r in result.rows} == {"direct"} | envoy | meshd_rows
    for row in result.rows:
        assert row.metrics["rps"] > 0 and row.metrics["errors"] == 0, row.label
        assert row.metrics["success_rate"] == 1.0, row.label
        if row.variant == grpc.CLOSED and row.target != "direct":
            assert row.metrics["req_per_cpu_sec"] > 0
        if row.variant != grpc.CLOSED:
            assert row.latency is not None and row.latency.count > 0
        if row.variant == grpc.RATE and row.target != "direct":
            assert {"added_p50_ms", "added_p99_ms"} <= set(row.metrics)
        if row.variant == grpc.MUX:
            # the most connections open to the upstream during the run: h2load's one when direct; a
            # proxy multiplexes the streams onto few
            assert 1 <= row.metrics["upstream_connections"] <= 4, row.label
    assert any(c.startswith("h2load -c 2 -m 5") and "content-type: application/grpc" in c for c in result.commands)


def test_soak(ctx):
    options = soak.SoakOptions(rate=50, duration_secs=4.0, replicas=2, kill_every_secs=1.0, down_secs=0.4,
                               routes_every_secs=0.5, reload_every_secs=1.5, sample_every_secs=0.25,
                               steady_after_secs=1.0)
    result = soak.run(ctx, options)
    check_common(result, "soak")
    if not WITH_MESHD:
        assert result.rows == ()
        return
    [row] = result.rows
    m = row.metrics
    assert m["scheduled"] == 200 and m["failed"] == 0, row.note  # every kill's victims saved by retries
    assert m["kills"] >= 3 and m["restarts"] >= 2 and m["routes_edits"] >= 6 and m["reloads"] >= 2
    assert m["reload_failures"] == 0
    assert m["rss_mb_end"] > 0 and m["fds_end"] > 0
    assert len(row.runs) >= 12 and all(sample["t_secs"] <= options.duration_secs for sample in row.runs)
    # meshd's own connection counts, read from /metrics with each sample
    assert all(sample["downstream"] >= 1 and sample["upstream"] >= 0 for sample in row.runs[1:]), row.runs
    assert m["client_connections_opened"] >= 1 and m["client_connections_closed_idle"] >= 0


def test_cli_writes_results_report_and_charts(tmp_path: Path):
    argv = ["latency", "--targets", "direct", "--rate", "50", "--duration-secs", "0.3", "--warmup-secs", "0",
            "--results-root", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    [folder] = list(tmp_path.iterdir())
    run = load(folder)
    assert run.invocation == "meshd-bench " + " ".join(argv)
    assert [r.target for r in run.scenarios[0].rows] == ["direct"]
    assert any(note.startswith("Other processes used") for note in run.scenarios[0].notes)
    assert run.finished_at and run.finished_at != "interrupted"
    assert "## latency" in (folder / "report.md").read_text()
    assert (folder / "charts" / "latency-latency.png").is_file()
