"""One table per scenario, drawn as aligned text for the terminal or as Markdown for reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from bench.goals import Goal
from bench.results import Row, ScenarioResult


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[Row], str]
    align_right: bool = True
    #: left out of a table where no row has a figure for it
    optional: bool = False


def ms(name: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.metric(name)
        if value is None:
            return "–"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"

    return cell


def added(name: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.metric(name)
        return "–" if value is None else f"{value:+.3f}"

    return cell


def number(name: str, fmt: str = "{:,.0f}") -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.metric(name)
        return "–" if value is None else fmt.format(value)

    return cell


def percent(name: str, digits: int = 2) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.metric(name)
        return "–" if value is None else f"{100 * value:.{digits}f}%"

    return cell


def change_with_range(name: str) -> Callable[[Row], str]:
    """An interleaved comparison: the median of per-round changes, then the lowest and highest round
    when the row has them (`<name>_min`, `<name>_max`): `+12.1% (+5.0 to +20.3)`."""

    def cell(row: Row) -> str:
        value = row.metric(name)
        if value is None:
            return "–"
        low, high = row.metric(f"{name}_min"), row.metric(f"{name}_max")
        text = f"{100 * value:+.1f}%"
        return text if low is None or high is None else f"{text} ({100 * low:+.1f} to {100 * high:+.1f})"

    return cell


def shares(row: Row) -> str:
    return " ".join(f"{name} {100 * share:.0f}%" for name, share in sorted(row.shares.items())) or "–"


def label(row: Row) -> str:
    return row.target


def variant(row: Row) -> str:
    return row.variant or "–"


_TARGET: Final = Column("target", label, align_right=False)

COLUMNS: Final[dict[str, tuple[Column, ...]]] = {
    "throughput": (
        _TARGET,
        Column("req/s", number("rps")),
        Column("p50 ms", ms("p50_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("proxy CPU", percent("proxy_cpu_util", 0)),
        Column("req per CPU-s", number("req_per_cpu_sec")),
        Column("upstream CPU", percent("upstream_cpu_util", 0)),
        Column("errors", number("errors")),
        Column("req per CPU-s vs meshd-w1", change_with_range("tracing_req_per_cpu_change"), optional=True),
    ),
    "latency": (
        _TARGET,
        Column("p50 ms", ms("p50_ms")),
        Column("p90 ms", ms("p90_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("p99.9 ms", ms("p99.9_ms")),
        Column("added p50", added("added_p50_ms")),
        Column("added p99", added("added_p99_ms")),
        Column("added p99.9", added("added_p99.9_ms")),
        Column("success", percent("success_rate", 3)),
        Column("proxy CPU", percent("proxy_cpu_util", 0)),
    ),
    "slow-replica": (
        _TARGET,
        Column("success", percent("success_rate", 3)),
        Column("p50 ms", ms("p50_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("p99.9 ms", ms("p99.9_ms")),
        Column("replica shares", shares, align_right=False),
    ),
    "failing-replica": (
        _TARGET,
        Column("success", percent("success_rate", 3)),
        Column("p50 ms", ms("p50_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("p99.9 ms", ms("p99.9_ms")),
        Column("amplification", number("amplification", "{:.2f}")),
        Column("replica shares", shares, align_right=False),
    ),
    "stall": (
        _TARGET,
        Column("run", variant, align_right=False),
        Column("p90 ms", ms("p90_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("p99.9 ms", ms("p99.9_ms")),
        Column("p99.99 ms", ms("p99.99_ms")),
        Column("p99.999 ms", ms("p99.999_ms")),
        Column("success", percent("success_rate", 3)),
        Column("stalled requests", number("stalled_requests")),
        Column("r0 share", lambda row: f"{100 * row.shares.get('r0', 0.0):.2f}%" if row.shares else "–"),
    ),
    "tls": (
        _TARGET,
        Column("between the hops", variant, align_right=False),
        Column("req/s", number("rps")),
        Column("p50 ms", ms("p50_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("req per CPU-s", number("req_per_cpu_sec")),
        Column("CPU µs per req", number("cpu_us_per_req", "{:.1f}")),
        Column("mTLS CPU cost", change_with_range("mtls_cpu_cost")),
        Column("vs plaintext over HTTP/1.1", change_with_range("mtls_cpu_cost_vs_http1")),
        Column("new handshakes per CPU-s", number("handshakes_per_cpu_sec")),
        Column("errors", number("errors")),
    ),
    "grpc": (
        _TARGET,
        Column("run", variant, align_right=False),
        Column("calls/s", number("rps")),
        Column("proxy CPU", percent("proxy_cpu_util", 0)),
        Column("calls per CPU-s", number("req_per_cpu_sec")),
        Column("p50 ms", ms("p50_ms")),
        Column("p99 ms", ms("p99_ms")),
        Column("added p50", added("added_p50_ms")),
        Column("added p99", added("added_p99_ms")),
        Column("upstream conns", number("upstream_connections")),
        Column("streams per conn", number("streams_per_upstream_connection", "{:.0f}")),
        Column("upstream CPU", percent("upstream_cpu_util", 0)),
        Column("errors", number("errors")),
    ),
    "memory": (
        _TARGET,
        Column("state", variant, align_right=False),
        Column("RSS MB", number("rss_mb", "{:.1f}")),
        Column("per worker MB", number("rss_mb_per_worker", "{:.1f}")),
        Column("PSS MB", number("pss_mb", "{:.1f}")),
        Column("processes", number("processes")),
    ),
    "soak": (
        _TARGET,
        Column("requests", number("scheduled")),
        Column("failed", number("failed")),
        Column("p99 ms", ms("p99_ms")),
        Column("p99.9 ms", ms("p99.9_ms")),
        Column("RSS MB at 5 min", number("rss_mb_steady", "{:.1f}")),
        Column("RSS MB at end", number("rss_mb_end", "{:.1f}")),
        Column("RSS growth", percent("rss_growth", 1)),
        Column("fds at 5 min", number("fds_steady")),
        Column("fds at end", number("fds_end")),
        Column("kills", number("kills")),
        Column("routes edits", number("routes_edits")),
        Column("reloads", number("reloads")),
    ),
}


def cells(scenario: ScenarioResult) -> tuple[list[str], list[list[str]], list[bool]]:
    columns = [c for c in COLUMNS.get(scenario.name, (_TARGET,))
               if not c.optional or any(c.cell(row) != "–" for row in scenario.rows)]
    headers = [c.header for c in columns]
    body = [[c.cell(row) for c in columns] for row in scenario.rows]
    return headers, body, [c.align_right for c in columns]


def text_table(headers: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    def escape(value: str) -> str:
        return value.replace("|", "\\|")

    head = "| " + " | ".join(escape(h) for h in headers) + " |"
    rule = "|" + "|".join("---:" if r else ":---" for r in right) + "|"
    rows = ["| " + " | ".join(escape(v) for v in row) + " |" for row in body]
    return "\n".join([head, rule, *rows])


def scenario_text(scenario: ScenarioResult, goals: Sequence[Goal]) -> str:
    """The terminal rendering: table, skipped targets, goals."""
    headers, body, right = cells(scenario)
    parts = [text_table(headers, body, right) if body else "(no results)"]
    parts += [f"skipped {s.target}: {s.reason}" for s in scenario.skipped]
    parts += [f"goal {g.verdict.upper():>12}: {g.goal} ({g.measured})" for g in goals]
    return "\n".join(parts)


def scenario_markdown(scenario: ScenarioResult) -> str:
    headers, body, right = cells(scenario)
    return markdown_table(headers, body, right) if body else "_No results._"


def goals_markdown(goals: Sequence[Goal]) -> str:
    body = [[g.scenario, g.goal, g.measured, g.verdict] for g in goals]
    return markdown_table(["scenario", "goal", "measured", "met/missed"], body, [False, False, False, False])
