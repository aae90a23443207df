"""PNG charts of a run, drawn with matplotlib (Agg, no display): latency percentile curves per target,
replica share bars, throughput and memory bars. Each function returns the file names it wrote."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.results import Row, ScenarioResult

_CURVE_TICKS: Final = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def draw_all(scenario: ScenarioResult, directory: Path) -> list[str]:
    """Every chart that suits the scenario; an empty list when matplotlib is missing or nothing ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return []
    if not scenario.rows:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    variants = sorted({row.variant for row in scenario.rows if row.latency is not None and row.latency.curve})
    for variant in variants:
        rows = [r for r in scenario.rows if r.variant == variant and r.latency is not None and r.latency.curve]
        suffix = f"-{variant.replace(' ', '-')}" if variant else ""
        name = f"{scenario.name}-latency{suffix}.png"
        title = f"{scenario.name}{f' ({variant})' if variant else ''}: latency by percentile"
        latency_curves(rows, directory / name, title)
        files.append(name)
    share_rows = [r for r in scenario.rows if r.shares and (not r.variant or r.variant == "stall")]
    if share_rows:
        name = f"{scenario.name}-shares.png"
        share_bars(share_rows, directory / name, f"{scenario.name}: share of requests per replica")
        files.append(name)
    if scenario.name == "throughput":
        name = "throughput-bars.png"
        metric_bars(scenario.rows, ("rps", "req_per_cpu_sec"), ("requests/s", "requests per proxy CPU-second"),
                    directory / name, "throughput (median of runs)")
        files.append(name)
    if scenario.name == "soak":
        for row in scenario.rows:
            if row.runs:
                name = f"soak-timeline{'-' + row.target if row.target != 'meshd' else ''}.png"
                timeline(row, directory / name, f"soak ({row.target}): every {_step(row)} s")
                files.append(name)
    if scenario.name == "memory":
        name = "memory-bars.png"
        metric_bars(scenario.rows, ("rss_mb", "rss_mb_per_worker"), ("RSS MB (all processes)", "RSS MB per worker"),
                    directory / name, "memory")
        files.append(name)
    return files


def curve_x(p: float) -> float:
    """Percentile to chart position: 90% -> 1, 99% -> 2, 99.9% -> 3 (log scale of 1 / (1 - p))."""
    return -math.log10(max(1e-9, 1.0 - p / 100.0))


def latency_curves(rows: Sequence[Row], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        assert row.latency is not None
        xs = [curve_x(p) for p, _ in row.latency.curve]
        ys = [max(v, 1e-3) for _, v in row.latency.curve]
        ax.plot(xs, ys, label=row.target, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xticks([curve_x(p) for p in _CURVE_TICKS])
    ax.set_xticklabels([f"{p:g}%" for p in _CURVE_TICKS])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from intended send time (ms, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def share_bars(rows: Sequence[Row], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    replicas = sorted({name for row in rows for name in row.shares}, key=_natural)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(rows) + 0.3 * len(replicas)), 5))
    width = 0.8 / max(1, len(replicas))
    colours = plt.get_cmap("tab20")
    for i, replica in enumerate(replicas):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [100 * row.shares.get(replica, 0.0) for row in rows], width=width, label=replica,
               color=colours(i % 20))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([row.target for row in rows], rotation=15)
    ax.set_ylabel("share of upstream requests (%)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(ncol=min(6, len(replicas)), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_bars(rows: Sequence[Row], metrics: Sequence[str], labels: Sequence[str], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.8))
    for ax, metric, axis_label in zip(axes, metrics, labels, strict=True):
        shown = [r for r in rows if r.metric(metric) is not None]
        ax.bar([r.label for r in shown], [r.metric(metric) or 0.0 for r in shown], color="tab:blue")
        ax.set_title(axis_label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(row: Row) -> str:
    times = [sample.get("t_secs", 0.0) for sample in row.runs]
    return f"{times[1] - times[0]:.3g}" if len(times) > 1 else "?"


def timeline(row: Row, path: Path, title: str) -> None:
    """RSS, open descriptors and p99 against time, one panel each (the soak's samples in `row.runs`)."""
    import matplotlib.pyplot as plt

    minutes = [sample.get("t_secs", 0.0) / 60.0 for sample in row.runs]
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open descriptors"), ("p99_ms", "p99 of the interval (ms)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 7.5), sharex=True)
    for ax, (metric, axis_label) in zip(axes, panels, strict=True):
        ax.plot(minutes, [sample.get(metric, 0.0) for sample in row.runs], linewidth=1.4)
        ax.set_ylabel(axis_label)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    failed = [(m, s.get("failed", 0.0)) for m, s in zip(minutes, row.runs, strict=True) if s.get("failed", 0.0)]
    for m, _count in failed:
        axes[2].axvline(m, color="tab:red", alpha=0.4)
    axes[-1].set_xlabel("minutes" + (" (red: an interval with failed requests)" if failed else ""))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _natural(name: str) -> tuple[str, int]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else 0)
