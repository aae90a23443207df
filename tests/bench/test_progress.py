"""The progress line is a pure function of the step and the time; the display writes it."""

import io

from bench.progress import Progress, Step, render


def test_render_shows_scenario_step_label_and_how_far():
    step = Step("latency", 2, 5, "envoy: measuring", expected_secs=10.0, started_at=100.0)
    line = render(step, now=104.0, width=10)
    assert line == "[latency 2/5] envoy: measuring ▕████░░░░░░▏   4.0/10.0 s"


def test_render_stops_the_bar_at_full_when_overdue():
    step = Step("stall", 1, 1, "x", expected_secs=1.0, started_at=0.0)
    assert "▕██████████▏" in render(step, now=5.0, width=10)


def test_render_without_expected_duration_shows_elapsed_only():
    assert render(Step("memory", 1, 2, "settling", 0.0, 0.0), now=2.5) == "[memory 1/2] settling   2.5 s"


def test_plain_output_prints_each_step_and_note_once():
    out = io.StringIO()
    clock_values = iter([10.0, 11.0])
    progress = Progress(out, live=False, clock=lambda: next(clock_values))
    progress.begin_scenario("latency", 2)
    progress.step("direct: measuring", 15.0)
    progress.note("  direct: p50 0.1 ms")
    progress.step("envoy: measuring", 15.0)
    progress.close()
    assert out.getvalue().splitlines() == [
        "== latency ==",
        "[latency 1/2] direct: measuring ▕░░░░░░░░░░░░░░░░░░░░░░░░▏   0.0/15.0 s",
        "  direct: p50 0.1 ms",
        "[latency 2/2] envoy: measuring ▕░░░░░░░░░░░░░░░░░░░░░░░░▏   0.0/15.0 s",
    ]
