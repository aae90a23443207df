"""Where a request's CPU goes, from a `perf` profile: `python -m bench.perf_split perf.txt --us 18.9`.

Record the meshd process under the throughput scenario's load with DWARF call graphs (mypyc's C
code and CPython keep no frame pointers, so `-g` alone loses the callers), then print the samples:

    perf record -F 499 --call-graph dwarf,16384 -p <meshd pid> -o perf.data -- sleep 5
    perf script -i perf.data > perf.txt

Each sample is charged to one row: a sample under `write()` to the kernel's writes (on loopback
the write also delivers into the peer's socket and wakes it, in meshd's own context), another
kernel sample to `epoll_wait` or to the reads, and a user-space sample to the first row of
`ROWS` that any of its compiled frames (`CPyDef_...`) or httptools frames matches; the rest to
uvloop or to the interpreter. With `--us`, the CPU microseconds per request measured in the same
runs, each share is also given in microseconds. docs/benchmarks-analysis.md has a table made
with it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

WRITES: Final = "kernel: the write() calls (loopback delivery to the peer, its wake-up, preemption)"
EPOLL: Final = "kernel: epoll_wait"
READS: Final = "kernel: the read() calls and the rest"
UVLOOP: Final = "uvloop's user side (read dispatch, the loop)"
OTHER: Final = "other user time (interpreter, allocator)"

#: user-space rows, first match wins: (row, pattern searched in the sample's compiled frames)
ROWS: Final[tuple[tuple[str, str], ...]] = (
    ("parsing: httptools and the codec's callbacks", r"Http1Codec|RequestCodec|ResponseCodec|httptools|llhttp"),
    ("serialising the two heads", r"serialize_|request_head|head_for"),
    ("stats, the recent-requests ring, admission's sampler", r"RequestStats|RecentRequests|RouterStats|observe"),
    ("the balancer: pick, EWMA, accrual, the attempt's begin and settle",
     r"balancers|node___|p2c|peak_ewma|accrual|Client___(begin|settle|pick|_finish)|membership"),
    ("the retry budget", r"budget"),
    ("the router's filters", r"hygiene|identify|identity|filter"),
    ("the pool", r"pool___Pool"),
    ("the fast path and the two connections' own code", r"fastpath|listener|connection___"),
)

_OFFSET: Final = re.compile(r"\+0x[0-9a-f]+$")


def samples(text: str) -> list[list[str]]:
    """`perf script` output as one list of frames per sample, innermost first (symbols only).

    A frame line reads `<address> <symbol>+<offset> (<object>)`; the object is kept in the symbol
    when it is the kernel's, so that kernel frames can be told apart."""
    out: list[list[str]] = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.strip().split("\n")[1:] if line.strip()]
        frames: list[str] = []
        for line in lines:
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            symbol, _, where = parts[1].partition(" (")
            symbol = _OFFSET.sub("", symbol)
            frames.append(symbol + (" [kernel]" if "kernel" in where else ""))
        if frames:
            out.append(frames)
    return out


def row_of(frames: Sequence[str]) -> str:
    """The row one sample is charged to."""
    if any("libc_write" in f or f.startswith("write ") or f == "write" for f in frames):
        return WRITES
    if frames[0].endswith(" [kernel]"):
        return EPOLL if any("epoll" in f for f in frames) else READS
    named = [f for f in frames if f.startswith("CPyDef_") or "httptools" in f or "llhttp" in f]
    for row, pattern in ROWS:
        if any(re.search(pattern, f) for f in named):
            return row
    if any("uv__" in f or "uvloop" in f for f in frames):
        return UVLOOP
    return OTHER


def split(all_samples: Iterable[Sequence[str]]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for frames in all_samples:
        counts[row_of(frames)] += 1
        total += 1
    return counts, total


def table(counts: Counter[str], total: int, us_per_request: float | None) -> str:
    head = "| where | share |" + (" µs per request |" if us_per_request else "")
    rule = "|:---|---:|" + ("---:|" if us_per_request else "")
    lines = [head, rule]
    for row, n in counts.most_common():
        share = n / total if total else 0.0
        cells = f"| {row} | {share * 100:.1f}% |"
        if us_per_request:
            cells += f" {share * us_per_request:.2f} |"
        lines.append(cells)
    lines.append(f"\n{total} samples")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf_split", description=__doc__.split("\n")[0])
    parser.add_argument("script", type=Path, help="`perf script` output of a DWARF call-graph profile")
    parser.add_argument("--us", type=float, default=None, help="CPU µs per request measured in the same runs")
    args = parser.parse_args(argv)
    counts, total = split(samples(args.script.read_text(errors="replace")))
    if not total:
        print("no samples with call graphs in the file", file=sys.stderr)
        return 1
    print(table(counts, total, args.us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
