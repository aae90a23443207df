"""Reading wrk's output: the human summary, and the WRK_JSON line our Lua script adds."""

from pathlib import Path

import pytest

from bench import wrk

TEXT_OUTPUT = """\
Running 10s test @ http://127.0.0.1:4140/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.44ms    1.20ms  30.11ms   90.12%
    Req/Sec    14.01k   512.33    15.20k    70.00%
  Latency Distribution
     50%    4.43ms
     75%  612.00us
     90%    5.61ms
     99%    1.04s
  139160 requests in 10.00s, 16.59MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 12
Requests/sec:  13916.08
Transfer/sec:      1.66MB
"""

JSON_LINE = (
    'WRK_JSON {"requests":139160,"duration_us":10001234,"bytes":17400000,'
    '"errors":{"connect":0,"read":3,"write":0,"status":12,"timeout":2},'
    '"latency_mean_us":4440.500000,"latency_max_us":30110,'
    '"latency_us":{"50":4431,"75":4900,"90":5611,"99":10400,"99.9":20555,"99.99":30110}}'
)


def test_text_output_is_parsed_with_units():
    result = wrk.parse_output(TEXT_OUTPUT)
    assert result.requests == 139160
    assert result.duration_secs == pytest.approx(10.0)
    assert result.requests_per_sec == pytest.approx(13916.08)
    assert result.latency_ms == pytest.approx({"50": 4.43, "75": 0.612, "90": 5.61, "99": 1040.0})
    assert result.errors == {"read": 3, "timeout": 2, "status": 12}
    assert result.error_count == 17


def test_json_line_wins_and_gives_exact_percentiles():
    result = wrk.parse_output(TEXT_OUTPUT + JSON_LINE + "\n")
    assert result.requests == 139160
    assert result.duration_secs == pytest.approx(10.001234)
    assert result.requests_per_sec == pytest.approx(13916.08)  # wrk's own figure is kept
    assert result.latency_ms["50"] == pytest.approx(4.431)
    assert result.latency_ms["99.9"] == pytest.approx(20.555)
    assert result.latency_ms["max"] == pytest.approx(30.11)
    assert result.errors == {"read": 3, "status": 12, "timeout": 2}


def test_json_line_alone_computes_the_rate():
    result = wrk.parse_output(JSON_LINE)
    assert result.requests_per_sec == pytest.approx(139160 / 10.001234)


def test_output_that_is_not_wrk_is_refused():
    with pytest.raises(ValueError):
        wrk.parse_output("wrk: command not found\n")


def test_command_is_a_closed_loop_with_our_script_and_host_header(tmp_path: Path):
    script = wrk.write_script(tmp_path)
    assert "done = function(summary, latency, requests)" in script.read_text()
    argv = wrk.command("http://127.0.0.1:1/", connections=64, duration_secs=10, threads=1, host_header="bench",
                       script=script)
    assert argv == ["wrk", "-t1", "-c64", "-d10s", "--latency", "-s", str(script), "-H", "Host: bench",
                    "http://127.0.0.1:1/"]
