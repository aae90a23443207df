"""h2load's command line and output, the grpc scenario's helpers and its goal."""

from __future__ import annotations

from pathlib import Path

from bench import goals, h2load
from bench.results import BenchRun, Row, ScenarioResult
from bench.scenarios.grpc import CLOSED, RATE, established_to, with_added_latency

OUTPUT = """\
starting benchmark...
finished in 1.00s, 23400.50 req/s, 1005.77KB/s
requests: 23401 total, 23450 started, 23401 done, 23390 succeeded, 7 failed, 3 errored, 1 timeout
status codes: 23397 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_parse_output() -> None:
    result = h2load.parse_output(OUTPUT)
    assert result.requests_per_sec == 23400.5
    assert result.duration_secs == 1.0
    assert (result.done, result.succeeded, result.errors) == (23401, 23390, 11)
    assert h2load.parse_output(OUTPUT.replace("1.00s", "502.00ms")).duration_secs == 0.502


def test_parse_output_without_a_summary_is_refused() -> None:
    try:
        h2load.parse_output("connect failed")
    except ValueError as exc:
        assert "no summary" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_command_and_request_body(tmp_path: Path) -> None:
    body = h2load.write_request_body(tmp_path, 3)
    assert body.read_bytes() == b"\x00\x00\x00\x00\x03mmm"
    argv = h2load.command("http://127.0.0.1:1/a.B/C", body=body, clients=2, streams=50, duration_secs=0.5,
                          rps_per_client=12.4, log_file=tmp_path / "log")
    assert argv[:9] == ["h2load", "-c", "2", "-m", "50", "-t", "1", "-D", "500ms"]
    assert ["-H", "content-type: application/grpc", "-H", "te: trailers"] == argv[11:15]
    assert ["--rps", "12"] == argv[15:17] and argv[-1] == "http://127.0.0.1:1/a.B/C"


def test_read_log_keeps_successful_requests(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("1796183199600655\t200\t3576\n1796183199600679\t503\t10\n1796183199621451\t200\t231\nbad line\n")
    assert h2load.read_log(log) == [0.003576, 0.000231]


def test_established_to_counts_connections_to_a_port(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 0100007F:9C40 0100007F:1F90 01 0\n"  # to :8080, established
        + "   1: 0100007F:9C41 0100007F:1F90 06 0\n"  # to :8080, TIME_WAIT
        + "   2: 0100007F:1F90 0100007F:9C40 01 0\n"  # the server's side: from :8080
    )
    (tmp_path / "tcp6").write_text(header + "   0: 00000000000000000000000001000000:9C42 00000000000000000000000001000000:1F90 01 0\n")
    assert established_to(8080, tmp_path) == 2


def test_added_latency_is_against_direct_at_the_fixed_rate() -> None:
    rows = [
        Row(target="direct", variant=RATE, metrics={"p50_ms": 0.2, "p99_ms": 0.5}),
        Row(target="envoy", variant=RATE, metrics={"p50_ms": 0.3, "p99_ms": 0.9}),
        Row(target="envoy", variant=CLOSED, metrics={"rps": 1.0}),
    ]
    out = with_added_latency(rows)
    assert round(out[1].metrics["added_p50_ms"], 6) == 0.1 and round(out[1].metrics["added_p99_ms"], 6) == 0.4
    assert "added_p50_ms" not in out[2].metrics


def _run(meshd: float | None, envoy: float) -> BenchRun:
    rows = [Row(target="envoy", variant=CLOSED, metrics={"req_per_cpu_sec": envoy})]
    if meshd is not None:
        rows.append(Row(target="meshd", variant=CLOSED, metrics={"req_per_cpu_sec": meshd}))
    scenario = ScenarioResult(name="grpc", options={}, rows=tuple(rows))
    from bench.machine import describe

    return BenchRun(started_at="now", finished_at="now", invocation="t", machine=describe(), scenarios=(scenario,))


def test_grpc_goal() -> None:
    [goal] = goals.for_scenario(goals.evaluate(_run(30_000, 28_000)), "grpc")
    assert goal.met is True and goal.measured == "30,000 vs Envoy 28,000"
    [goal] = goals.for_scenario(goals.evaluate(_run(9_000, 28_000)), "grpc")
    assert goal.met is False
    [goal] = goals.for_scenario(goals.evaluate(_run(None, 28_000)), "grpc")
    assert goal.met is None and "meshd" in goal.measured
