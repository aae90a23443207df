"""Runs h2load (nghttp2's HTTP/2 load generator) with gRPC-shaped requests and reads its results.

A unary gRPC call is, on the wire, a POST to `/<package.Service>/<Method>` with `content-type:
application/grpc` and `te: trailers`, whose body is one length-prefixed message (a 0 flag byte, a
4-byte big-endian length, the message). h2load sends exactly that with `-d <file>` (the file is
the framed message; `-d` makes the request a POST) and two `-H` headers; it counts a response
as succeeded by its HTTP status, which is 200 for every gRPC response, so the bench's upstream
always answers `grpc-status: 0` and the scenario checks that nothing failed at the HTTP level.

h2load prints a summary (`finished in 1.00s, 23400.00 req/s`, `requests: N total, ... N
succeeded, N failed, N errored, N timeout`); with `--log-file` it also writes one line per
request, `<start µs since the epoch>\t<status>\t<duration µs>`, from which the bench takes exact
percentiles (h2load's summary has only min, max, mean and sd).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

H2LOAD_INSTALL: Final = "apt-get install nghttp2-client"

_FINISHED: Final = re.compile(r"^finished in (\d+(?:\.\d+)?)(us|ms|s), (\d+(?:\.\d+)?) req/s", re.M)
_REQUESTS: Final = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
    re.M,
)
_UNIT_SECS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed gRPC message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def write_request_body(directory: Path, message_bytes: int) -> Path:
    """A file holding one framed gRPC message of `message_bytes` bytes (h2load's `-d`)."""
    path = directory / "grpc-request.bin"
    path.write_bytes(grpc_frame(b"m" * message_bytes))
    return path


def command(
    url: str,
    *,
    body: Path,
    clients: int,
    streams: int,
    duration_secs: float,
    rps_per_client: float | None = None,
    log_file: Path | None = None,
    warmup_secs: float = 0.0,
) -> list[str]:
    """The h2load argv for a unary gRPC load: `clients` h2c connections, each with up to `streams`
    concurrent streams, for `duration_secs`; at most `rps_per_client` calls per second on each
    connection when given (a fixed rate), else as fast as the answers come (closed loop)."""
    argv = [
        "h2load",
        "-c", str(clients),
        "-m", str(streams),
        "-t", "1",
        "-D", f"{max(1, round(duration_secs * 1000))}ms",
        "-d", str(body),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
    ]
    if warmup_secs > 0:
        argv += ["--warm-up-time", f"{round(warmup_secs * 1000)}ms"]
    if rps_per_client is not None:
        argv += ["--rps", f"{max(1, round(rps_per_client))}"]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(url)
    return argv


@dataclass(frozen=True, slots=True, kw_only=True)
class H2loadResult:
    duration_secs: float
    requests_per_sec: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeouts: int

    @property
    def errors(self) -> int:
        """Calls that did not get a 2xx/3xx answer: failed (other status), errored (reset, closed), timed out."""
        return self.failed + self.errored + self.timeouts


def parse_output(text: str) -> H2loadResult:
    """h2load's summary; ValueError when the lines it always prints are missing."""
    finished = _FINISHED.search(text)
    requests = _REQUESTS.search(text)
    if finished is None or requests is None:
        raise ValueError("h2load printed no summary")
    _total, _started, done, succeeded, failed, errored, timeouts = (int(g) for g in requests.groups())
    return H2loadResult(
        duration_secs=float(finished.group(1)) * _UNIT_SECS[finished.group(2)],
        requests_per_sec=float(finished.group(3)),
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeouts=timeouts,
    )


def read_log(path: Path) -> list[float]:
    """Latencies in seconds of the successful (2xx) requests in an h2load `--log-file`."""
    latencies: list[float] = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].startswith("2") and parts[2].isdigit():
            latencies.append(int(parts[2]) / 1e6)
    return latencies
