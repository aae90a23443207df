"""Interleaved comparisons: variants measured in alternating rounds, compared by the median of per-round ratios.

How this works. Two figures measured minutes apart on a shared two-core machine differ by several
percent for reasons that have nothing to do with what is compared: other processes, the CPU's clock,
caches. So the variants run side by side (all started once, idle while another is measured) and are
measured in rounds: one short run of each variant per round, the order reversed every other round
(A B, B A, A B...: for two variants the ABBA order, which cancels a drift that is linear across two
rounds). Each round gives one ratio, a variant's figure over the baseline's figure *of the same
round*; the comparison of record is the median of those ratios, and their range (lowest to highest)
shows how much the rounds disagreed. The median is not the ratio of the medians: a round disturbed
by a burst of other work moves both of its runs and drops out as one outlier.

Runs are kept in round order, so `runs[i]` is round i for every variant; a variant that failed
part-way has fewer runs, and only rounds where both sides were measured give a ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Spread:
    """The per-round ratios of one comparison, reduced: their median, lowest, highest, and how many."""

    median: float
    low: float
    high: float
    rounds: int

    def metrics(self, key: str) -> dict[str, float]:
        """Flat metrics for a results row: `key` (the median), `key_min`, `key_max`, `key_rounds`."""
        return {key: self.median, f"{key}_min": self.low, f"{key}_max": self.high, f"{key}_rounds": float(self.rounds)}


def round_order(variants: Sequence[T], round_index: int) -> list[T]:
    """The order of the variants in round `round_index` (from 0): as given in even rounds, reversed in odd."""
    return list(variants) if round_index % 2 == 0 else list(reversed(variants))


def schedule(variants: Sequence[T], rounds: int) -> list[tuple[int, T]]:
    """Every run of an interleaved measurement, in the order they happen: (round index, variant)."""
    return [(index, variant) for index in range(rounds) for variant in round_order(variants, index)]


def changes(runs: Sequence[Mapping[str, float]], base_runs: Sequence[Mapping[str, float]],
            metric: str) -> list[float | None]:
    """For each round of `runs`, `metric` over the baseline's in the same round, minus one (+0.10: 10%
    more); None for a round that lacks either figure or whose baseline figure is not positive."""
    out: list[float | None] = []
    for index, run in enumerate(runs):
        base = base_runs[index].get(metric) if index < len(base_runs) else None
        mine = run.get(metric)
        out.append(mine / base - 1.0 if mine is not None and base is not None and base > 0 else None)
    return out


def spread(values: Sequence[float | None]) -> Spread | None:
    """Median, lowest and highest of the rounds that gave a figure; None if none did."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def with_round_figure(runs: Sequence[Mapping[str, float]], key: str,
                      values: Sequence[float | None]) -> tuple[dict[str, float], ...]:
    """The runs, each round's figure added under `key` (where that round gave one), so the results
    file shows every ratio the median was taken from."""
    out = []
    for index, run in enumerate(runs):
        value = values[index] if index < len(values) else None
        out.append({**run, key: value} if value is not None else dict(run))
    return tuple(out)


def rounds_text(runs_in_order: Sequence[tuple[int, str, Mapping[str, float]]], columns: Sequence[str]) -> str:
    """Every run of an interleaved measurement as tab-separated text, in the order they ran: round
    (from 1), variant, then the named figures (blank where a run lacks one)."""
    lines = ["\t".join(["round", "variant", *columns])]
    for index, variant, run in runs_in_order:
        cells = [f"{run[c]:.6g}" if c in run else "" for c in columns]
        lines.append("\t".join([str(index + 1), variant, *cells]))
    return "\n".join(lines) + "\n"


def run_rounds(
    variants: Sequence[K], rounds: int, measure: Callable[[int, K], dict[str, float] | None],
    label: Callable[[K], str], columns: Sequence[str],
) -> tuple[dict[K, list[dict[str, float]]], str]:
    """Measure `variants` in `rounds` interleaved rounds (`schedule`): `measure(round, variant)` makes
    one run, None if the variant failed, which ends the rounds (that variant is dropped; the others keep
    their runs so far). Returns each variant's runs in round order and `rounds_text` of every run (its
    `columns`), in the order they ran ("" if none did)."""
    runs: dict[K, list[dict[str, float]]] = {variant: [] for variant in variants}
    in_order: list[tuple[int, str, Mapping[str, float]]] = []
    for round_index, variant in schedule(variants, rounds):
        result = measure(round_index, variant)
        if result is None:
            del runs[variant]
            break
        runs[variant].append(result)
        in_order.append((round_index, label(variant), result))
    return runs, rounds_text(in_order, columns) if in_order else ""


def compared(runs: Sequence[Mapping[str, float]], base_runs: Sequence[Mapping[str, float]], metric: str,
             key: str) -> tuple[dict[str, float], tuple[dict[str, float], ...]]:
    """One variant against the baseline, round by round: the metrics to add to its row (`key`, its range
    and round count: `Spread.metrics`; none if no round gave a ratio) and its runs with each round's
    figure (`with_round_figure`)."""
    per_round = changes(runs, base_runs, metric)
    found = spread(per_round)
    if found is None:
        return {}, tuple(dict(run) for run in runs)
    return found.metrics(key), with_round_figure(runs, key, per_round)
