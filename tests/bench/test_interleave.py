"""Interleaved comparisons (bench/interleave.py) and how the tls and throughput scenarios and their goals
use them: the round order, the median of per-round ratios on a known table, and the goals reading it."""

from __future__ import annotations

import pytest

from bench import goals, interleave
from bench.results import BenchRun, Machine, Row, ScenarioResult
from bench.scenarios.throughput import TRACING_CHANGE, tracing_rows
from bench.scenarios.tls import HOP_H2, MTLS_CPU_COST, MTLS_CPU_COST_VS_HTTP1, TwoHop, interleaved_rows
from bench.tables import scenario_markdown, scenario_text

PLAINTEXT, MTLS = TwoHop("meshd", False), TwoHop("meshd", True)
PLAINTEXT_H2, MTLS_H2 = TwoHop("meshd", False, HOP_H2), TwoHop("meshd", True, HOP_H2)
#: CPU µs per request of five rounds on a machine that drifts: both variants move together from round
#: to round. The per-round ratios are 1.10, 1.10, 1.20, 1.05 and 1.80 (round 5 was disturbed while
#: mTLS ran): their median is 1.10. The ratio of the two medians would be 54 / 50 = 1.08.
PLAIN_US = [40.0, 60.0, 45.0, 50.0, 70.0]
MTLS_US = [44.0, 66.0, 54.0, 52.5, 126.0]


def runs(values: list[float], metric: str = "cpu_us_per_req") -> list[dict[str, float]]:
    return [{metric: v, "rps": 1000.0 + i} for i, v in enumerate(values)]


def test_each_round_reverses_the_order_of_the_last():
    assert [v for _, v in interleave.schedule(["plaintext", "mtls"], 4)] == [
        "plaintext", "mtls", "mtls", "plaintext", "plaintext", "mtls", "mtls", "plaintext"]
    assert interleave.schedule(["w1", "t0", "t1"], 2) == [
        (0, "w1"), (0, "t0"), (0, "t1"), (1, "t1"), (1, "t0"), (1, "w1")]
    # every variant runs once per round
    for index in range(5):
        assert sorted(interleave.round_order(["a", "b", "c"], index)) == ["a", "b", "c"]


def test_the_comparison_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    per_round = interleave.changes(runs(MTLS_US), runs(PLAIN_US), "cpu_us_per_req")
    assert per_round == pytest.approx([0.10, 0.10, 0.20, 0.05, 0.80])
    spread = interleave.spread(per_round)
    assert spread is not None
    assert (spread.median, spread.low, spread.high, spread.rounds) == pytest.approx((0.10, 0.05, 0.80, 5))
    assert spread.metrics("cost") == pytest.approx({"cost": 0.10, "cost_min": 0.05, "cost_max": 0.80,
                                                    "cost_rounds": 5.0})


def test_only_rounds_with_both_figures_count():
    # the baseline failed after two rounds; a zero baseline gives no ratio
    per_round = interleave.changes(runs([11.0, 12.0, 13.0]), runs([10.0, 0.0]), "cpu_us_per_req")
    assert per_round == pytest.approx([0.10, None, None])
    spread = interleave.spread(per_round)
    assert spread is not None and spread.rounds == 1 and spread.median == pytest.approx(0.10)
    assert interleave.spread([None, None]) is None
    assert interleave.changes(runs([1.0]), runs([1.0]), "missing") == [None]


def test_runs_keep_their_rounds_figure_and_the_rounds_file_lists_every_run():
    marked = interleave.with_round_figure(runs([11.0, 13.0]), "cost", [0.1, None])
    assert marked[0]["cost"] == 0.1 and "cost" not in marked[1]
    text = interleave.rounds_text([(0, "a", {"x": 1.5}), (0, "b", {"x": 2.0}), (1, "b", {})], ("x",))
    assert text.splitlines() == ["round\tvariant\tx", "1\ta\t1.5", "1\tb\t2", "2\tb\t"]


def test_tls_rows_carry_the_median_of_per_round_ratios_and_each_rounds_figure():
    plain_row, mtls_row = interleaved_rows({MTLS: runs(MTLS_US), PLAINTEXT: runs(PLAIN_US)})
    assert (plain_row.variant, mtls_row.variant) == ("plaintext", "mtls")  # plaintext first, whatever the order
    assert plain_row.metrics["cpu_us_per_req"] == 50.0 and mtls_row.metrics["cpu_us_per_req"] == 54.0  # medians
    assert mtls_row.metrics[MTLS_CPU_COST] == pytest.approx(0.10)
    assert mtls_row.metrics[f"{MTLS_CPU_COST}_max"] == pytest.approx(0.80)
    assert [r[MTLS_CPU_COST] for r in mtls_row.runs] == pytest.approx([0.10, 0.10, 0.20, 0.05, 0.80])
    assert MTLS_CPU_COST not in plain_row.metrics
    # without its plaintext pair, no cost
    [alone] = interleaved_rows({MTLS: runs(MTLS_US)})
    assert MTLS_CPU_COST not in alone.metrics


def test_tracing_rows_compare_requests_per_cpu_second_with_meshd_w1_round_by_round():
    rows = tracing_rows({
        "meshd-w1": runs([50_000.0, 40_000.0, 60_000.0], "req_per_cpu_sec"),
        "meshd-w1-tracing-0": runs([48_000.0, 39_000.0, 57_000.0], "req_per_cpu_sec"),
    })
    base, traced = rows
    assert TRACING_CHANGE not in base.metrics
    assert [r[TRACING_CHANGE] for r in traced.runs] == pytest.approx([-0.04, -0.025, -0.05])
    assert traced.metrics[TRACING_CHANGE] == pytest.approx(-0.04)
    assert (traced.metrics[f"{TRACING_CHANGE}_min"], traced.metrics[f"{TRACING_CHANGE}_max"]) == pytest.approx(
        (-0.05, -0.025))


def evaluated(*scenarios: ScenarioResult) -> list[goals.Goal]:
    machine = Machine(cores=2, cpu_model="test", kernel="test", python="test", memory_gb=1.0)
    return goals.evaluate(BenchRun(started_at="", finished_at="", invocation="", machine=machine,
                                   scenarios=scenarios))


TLS_COST_GOAL = "tls: mTLS between the meshds costs <= 25% more CPU per request than the plaintext two-hop path"


def test_the_tls_cost_goal_reads_the_median_of_per_round_ratios():
    scenario = ScenarioResult(name="tls", rows=tuple(interleaved_rows({PLAINTEXT: runs(PLAIN_US),
                                                                        MTLS: runs(MTLS_US)})))
    [_, _, cost] = goals.for_scenario(evaluated(scenario), "tls")
    assert cost.goal == TLS_COST_GOAL
    assert cost.met is True  # +10%, although the ratio of the medians (+8%) or the worst round (+80%) differ
    assert cost.measured == "+10.0% (HTTP/1.1 hop; 54.0 vs 50.0 µs per request; median of 5 rounds, +5.0% to +80.0%)"
    # the table shows the median and its range
    assert "| meshd | mtls |" in scenario_markdown(scenario) and "+10.0% (+5.0 to +80.0)" in scenario_markdown(scenario)
    worse = ScenarioResult(name="tls", rows=tuple(interleaved_rows({PLAINTEXT: runs(PLAIN_US),
                                                                    MTLS: runs([v * 1.3 for v in PLAIN_US])})))
    assert goals.for_scenario(evaluated(worse), "tls")[2].met is False


def test_the_h2_hop_is_compared_with_both_plaintext_paths_and_the_worse_decides():
    # per round: plaintext over HTTP/1.1 50, over HTTP/2 40; mTLS over HTTP/1.1 +30%, over HTTP/2 +10%
    plain, plain_h2 = [50.0] * 3, [40.0, 44.0, 40.0]
    mtls_h2 = [44.0, 46.2, 48.0]  # +10%, +5%, +20% over HTTP/2's plaintext; -12%, -7.6%, -4% over HTTP/1.1's
    rows = interleaved_rows({MTLS_H2: runs(mtls_h2), PLAINTEXT: runs(plain), MTLS: runs([65.0] * 3),
                             PLAINTEXT_H2: runs(plain_h2)})
    assert [r.variant for r in rows] == ["plaintext", "mtls", "plaintext-h2", "mtls-h2"]
    h2_row = rows[3]
    assert h2_row.metrics[MTLS_CPU_COST] == pytest.approx(0.10)
    assert h2_row.metrics[MTLS_CPU_COST_VS_HTTP1] == pytest.approx(-0.076)
    assert MTLS_CPU_COST_VS_HTTP1 not in rows[1].metrics and MTLS_CPU_COST_VS_HTTP1 not in rows[2].metrics
    assert [r[MTLS_CPU_COST_VS_HTTP1] for r in h2_row.runs] == pytest.approx([-0.12, -0.076, -0.04])
    scenario = ScenarioResult(name="tls", rows=tuple(rows))
    [_, _, cost] = goals.for_scenario(evaluated(scenario), "tls")
    assert cost.goal == TLS_COST_GOAL
    assert (cost.met, cost.measured.split(" (")[0]) == (True, "+10.0%")  # the worse of +10% and -7.6%
    assert "the HTTP/1.1 hop's mTLS: +30.0%" in cost.measured
    assert "-7.6% (-12.0 to -4.0)" in scenario_markdown(scenario)
    # an HTTP/2 hop that is cheap against its own plaintext but dear against HTTP/1.1's misses the goal
    dear = interleaved_rows({PLAINTEXT: runs([30.0] * 3), PLAINTEXT_H2: runs(plain_h2), MTLS_H2: runs(mtls_h2)})
    assert goals.for_scenario(evaluated(ScenarioResult(name="tls", rows=tuple(dear))), "tls")[2].met is False


def test_a_tls_result_from_before_the_rounds_still_reads():
    rows = (Row(target="meshd", variant="plaintext", metrics={"cpu_us_per_req": 35.5}),
            Row(target="meshd", variant="mtls", metrics={"cpu_us_per_req": 50.0, MTLS_CPU_COST: 0.41}))
    [_, _, cost] = goals.for_scenario(evaluated(ScenarioResult(name="tls", rows=rows)), "tls")
    assert (cost.measured, cost.met) == ("+41.0% (HTTP/1.1 hop; 50.0 vs 35.5 µs per request)", False)


def test_the_tracing_goals_read_the_median_of_per_round_ratios():
    w1 = runs([50_000.0, 40_000.0, 60_000.0, 50_000.0], "req_per_cpu_sec")
    rows = tracing_rows({
        "meshd-w1": w1,
        "meshd-w1-tracing-0": runs([48_000.0, 38_800.0, 57_000.0, 49_000.0], "req_per_cpu_sec"),  # -3.5%
        "meshd-w1-tracing-0.01": runs([46_000.0, 37_000.0, 55_000.0, 30_000.0], "req_per_cpu_sec"),  # -8.2%
    })
    scenario = ScenarioResult(name="throughput", rows=tuple(rows))
    tracing = [g for g in goals.for_scenario(evaluated(scenario), "throughput") if "tracing" in g.goal]
    assert [(g.goal, g.met) for g in tracing] == [
        ("meshd (1 worker) with tracing at sample rate 0 keeps >= 97% of meshd-w1's requests per proxy "
         "CPU-second (interleaved)", False),
        ("meshd (1 worker) with tracing at sample rate 0.01 keeps >= 90% of meshd-w1's requests per proxy "
         "CPU-second (interleaved)", True),
    ]
    assert tracing[0].measured == "-3.5% (median of 4 rounds, -5.0% to -2.0%)"
    assert tracing[1].measured == "-8.2% (median of 4 rounds, -40.0% to -7.5%)"
    # the throughput table gains its comparison column only when a row has the figure
    text = scenario_text(scenario, [])
    assert "req per CPU-s vs meshd-w1" in text and "-3.5% (-5.0 to -2.0)" in text
    plain = ScenarioResult(name="throughput", rows=(Row(target="meshd-w1", metrics={"rps": 1.0}),))
    assert "vs meshd-w1" not in scenario_text(plain, [])
    assert all(g.met is None for g in goals.for_scenario(evaluated(plain), "throughput") if "tracing" in g.goal)


def test_run_rounds_measures_in_schedule_order_and_stops_at_a_failure() -> None:
    seen: list[tuple[int, str]] = []

    def measure(round_index: int, variant: str) -> dict[str, float] | None:
        seen.append((round_index, variant))
        if (round_index, variant) == (2, "b"):
            return None  # b fails in its third round
        return {"x": float(10 * round_index + (1 if variant == "b" else 0))}

    runs, text = interleave.run_rounds(["a", "b"], 5, measure, str.upper, ("x",))
    assert seen == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert runs == {"a": [{"x": 0.0}, {"x": 10.0}, {"x": 20.0}]}  # b dropped, a keeps its runs
    assert text.splitlines() == ["round\tvariant\tx", "1\tA\t0", "1\tB\t1", "2\tB\t11", "2\tA\t10", "3\tA\t20"]
    assert interleave.run_rounds(["a"], 3, lambda i, v: None, str, ("x",)) == ({}, "")


def test_compared_adds_the_spread_and_each_rounds_figure() -> None:
    base = [{"m": 100.0}, {"m": 200.0}, {"m": 100.0}]
    mine = [{"m": 110.0}, {"m": 200.0}, {"m": 150.0}]
    extra, kept = interleave.compared(mine, base, "m", "k")
    assert extra == pytest.approx({"k": 0.1, "k_min": 0.0, "k_max": 0.5, "k_rounds": 3.0})
    assert [run["k"] for run in kept] == pytest.approx([0.1, 0.0, 0.5]) and [run["m"] for run in kept] == [110.0, 200.0, 150.0]
    assert interleave.compared(mine, [], "m", "k") == ({}, tuple(mine))
