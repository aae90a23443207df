"""The meshd-bench command line: scenario options become flags, --time-scale shortens, errors exit 2."""

import pytest

from bench.cli import build_parser, main
from bench.scenarios.latency import LatencyOptions
from bench.scenarios.registry import SCENARIOS
from bench.scenarios.stall import StallOptions
from bench.scenarios.throughput import ThroughputOptions


def test_every_scenario_and_all_and_report_are_commands():
    parser = build_parser()
    for name in [*SCENARIOS, "all", "report"]:
        assert parser.parse_args([name]).command == name


def test_defaults_are_the_documented_ones():
    assert SCENARIOS["throughput"].options() == ThroughputOptions(connections=64, duration_secs=10, repeats=3)
    assert SCENARIOS["latency"].options() == LatencyOptions(rate=1000, duration_secs=15)
    stall = SCENARIOS["stall"].options()
    assert isinstance(stall, StallOptions)
    assert (stall.rate, stall.replicas, stall.stall_ms, stall.stall_secs) == (1000, 11, 2000, 30)


def test_time_scale_shortens_every_duration_and_flags_override():
    stall = SCENARIOS["stall"].options(time_scale=0.1, overrides={"rate": 500.0})
    assert isinstance(stall, StallOptions)
    assert stall.duration_secs == pytest.approx(6.0)
    assert stall.stall_start_secs == pytest.approx(1.5) and stall.stall_secs == pytest.approx(3.0)
    assert stall.rate == 500.0 and stall.stall_ms == 2000.0
    assert SCENARIOS["throughput"].options(time_scale=0.01) == ThroughputOptions(duration_secs=1.0, tracing_run_secs=1.0)


def test_soak_lasts_30_minutes_scales_every_interval_and_is_not_part_of_all():
    from bench.scenarios.registry import IN_ALL
    from bench.scenarios.soak import SoakOptions

    soak = SCENARIOS["soak"].options()
    assert isinstance(soak, SoakOptions)
    assert (soak.duration_secs, soak.kill_every_secs, soak.routes_every_secs, soak.reload_every_secs,
            soak.sample_every_secs, soak.steady_after_secs) == (1800, 120, 60, 300, 10, 300)
    short = SCENARIOS["soak"].options(time_scale=0.02)
    assert isinstance(short, SoakOptions)
    assert short.duration_secs == pytest.approx(36.0) and short.sample_every_secs == pytest.approx(0.2)
    assert short.routes_every_secs == pytest.approx(1.2) and short.rate == soak.rate
    assert "soak" not in IN_ALL and set(IN_ALL) == set(SCENARIOS) - {"soak"}


def test_option_flags_are_parsed_with_their_types():
    args = build_parser().parse_args(["stall", "--duration-secs", "20", "--stall-start-secs", "5",
                                      "--replicas", "5", "--targets", "meshd,envoy"])
    assert (args.opt_duration_secs, args.opt_stall_start_secs, args.opt_replicas) == (20.0, 5.0, 5)
    assert args.targets == "meshd,envoy"
    assert build_parser().parse_args(["memory", "--no-include-peers"]).opt_include_peers is False


@pytest.mark.parametrize(
    "argv",
    [
        ["latency", "--targets", "direct,apache"],
        ["stall", "--stall-start-secs", "50", "--duration-secs", "60"],  # window past the end of the run
        ["throughput", "--duration-secs", "0.5"],  # wrk runs whole seconds
        ["throughput", "--tracing-sample-rate", "0,1.5"],  # a rate is from 0 to 1
    ],
)
def test_bad_options_exit_with_2_before_anything_starts(argv, tmp_path, capsys):
    assert main([*argv, "--results-root", str(tmp_path)]) == 2
    assert "meshd-bench:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
