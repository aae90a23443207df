"""Runs wrk (the closed-loop generator of the throughput scenario) and reads its output.

wrk prints a human summary; `--latency` adds a 50/75/90/99% distribution. For exact percentiles the
bench also passes a Lua script whose `done()` hook prints one line, `WRK_JSON {...}`, with wrk's own
percentiles (its histogram has 1 µs resolution) and error counts. The parser reads both and prefers
the JSON line when present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

WRK_INSTALL: Final = "apt-get install wrk"

REPORT_SCRIPT: Final = """\
-- Written by meshd-bench: print wrk's exact percentiles as one JSON line.
done = function(summary, latency, requests)
  local ps = {50, 75, 90, 99, 99.9, 99.99}
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,', summary.requests,
    summary.duration, summary.bytes))
  io.write(string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},',
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format('"latency_mean_us":%f,"latency_max_us":%d,"latency_us":{', latency.mean, latency.max))
  for i, p in ipairs(ps) do
    if i > 1 then io.write(",") end
    io.write(string.format('"%g":%d', p, latency:percentile(p)))
  end
  io.write("}}\\n")
end
"""

_UNITS_SECS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DIST_LINE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$")
_REQUESTS_LINE: Final = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h)")
_RPS_LINE: Final = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)")
_NON2XX_LINE: Final = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS: Final = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    requests: int
    duration_secs: float
    requests_per_sec: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def command(
    url: str,
    *,
    connections: int,
    duration_secs: float,
    threads: int,
    host_header: str,
    script: Path,
    wrk: str = "wrk",
) -> list[str]:
    """The wrk argv: fixed connections (closed loop), --latency, our report script, a Host header."""
    return [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_secs))}s",
        "--latency",
        "-s",
        str(script),
        "-H",
        f"Host: {host_header}",
        url,
    ]


def write_script(directory: Path) -> Path:
    path = directory / "wrk_report.lua"
    path.write_text(REPORT_SCRIPT)
    return path


def parse_output(text: str) -> WrkResult:
    """Read wrk's stdout; raises ValueError when it has neither a JSON line nor a request count."""
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            return _from_json(json.loads(line[len("WRK_JSON ") :]), text)
    return _from_text(text)


def _secs(value: str, unit: str) -> float:
    return float(value) * _UNITS_SECS[unit]


def _from_json(data: dict[str, object], text: str) -> WrkResult:
    requests = _as_int(data["requests"])
    duration = _as_int(data["duration_us"]) / 1e6
    latencies = data["latency_us"]
    errors = data["errors"]
    if not isinstance(latencies, dict) or not isinstance(errors, dict):
        raise ValueError("WRK_JSON: latency_us and errors must be objects")
    latency_ms = {str(p): _as_int(us) / 1000.0 for p, us in latencies.items()}
    latency_ms["mean"] = float(str(data["latency_mean_us"])) / 1000.0
    latency_ms["max"] = _as_int(data["latency_max_us"]) / 1000.0
    rps_match = next((m for m in map(_RPS_LINE.match, text.splitlines()) if m), None)
    rps = float(rps_match.group(1)) if rps_match else (requests / duration if duration > 0 else 0.0)
    return WrkResult(
        requests=requests,
        duration_secs=duration,
        requests_per_sec=rps,
        latency_ms=latency_ms,
        errors={str(k): _as_int(v) for k, v in errors.items() if _as_int(v)},
    )


def _from_text(text: str) -> WrkResult:
    requests: int | None = None
    duration = 0.0
    rps: float | None = None
    latency_ms: dict[str, float] = {}
    errors: dict[str, int] = {}
    for line in text.splitlines():
        if m := _DIST_LINE.match(line):
            latency_ms[f"{float(m.group(1)):g}"] = _secs(m.group(2), m.group(3)) * 1000.0
        elif m := _REQUESTS_LINE.match(line):
            requests, duration = int(m.group(1)), _secs(m.group(2), m.group(3))
        elif m := _RPS_LINE.match(line):
            rps = float(m.group(1))
        elif m := _NON2XX_LINE.match(line):
            errors["status"] = int(m.group(1))
        elif m := _SOCKET_ERRORS.search(line):
            for name, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
                if int(value):
                    errors[name] = int(value)
    if requests is None:
        raise ValueError("not wrk output: no 'N requests in T' line")
    return WrkResult(
        requests=requests,
        duration_secs=duration,
        requests_per_sec=rps if rps is not None else (requests / duration if duration else 0.0),
        latency_ms=latency_ms,
        errors=errors,
    )


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    return int(float(value))
