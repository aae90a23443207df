"""`meshd-bench`: run benchmark scenarios against meshd and its peers, or rebuild docs/benchmarks.md.

    meshd-bench all                         every scenario but soak, default durations (about 25 min)
    meshd-bench soak --time-scale 0.02      the 30-minute soak in 36 s (proves it runs; not a measurement)
    meshd-bench latency --rate 500          one scenario; its options are its flags
    meshd-bench all --time-scale 0.1        every duration shortened tenfold
    meshd-bench all --targets direct,nginx  only some target families
    meshd-bench report                      docs/benchmarks.md from the newest results

Holds no measuring logic: it builds options, runs scenarios under one `Supervisor`, prints a table per
scenario and writes `bench/results/<timestamp>/` (results.json, report.md, charts/).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import time
import types
from datetime import datetime
from pathlib import Path
from typing import Final, NoReturn

from bench import charts, goals, machine
from bench.processes import ProcessFailed, Supervisor
from bench.procstat import CpuSnapshot
from bench.progress import Progress
from bench.report import CHARTS_DIR, run_report, write_docs
from bench.results import BenchRun, ScenarioResult, Skip, save
from bench.scenarios.context import RunContext
from bench.scenarios.registry import IN_ALL, SCENARIOS, Scenario
from bench.tables import scenario_text
from bench.targets.catalog import FAMILIES, Selection

SOURCE_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS: Final = SOURCE_ROOT / "bench" / "results"
DEFAULT_DOCS: Final = SOURCE_ROOT / "docs" / "benchmarks.md"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--targets", help=f"comma-separated target families to run (default: all of {', '.join(FAMILIES)})")
    common.add_argument("--skip-meshd", action="store_true", help="run no meshd target (e.g. while meshd is being built)")
    common.add_argument("--results-root", type=Path, default=DEFAULT_RESULTS, help="where result folders go")
    common.add_argument("--time-scale", type=float, default=1.0, help="multiply every duration by this factor")
    common.add_argument("--warmup-secs", type=float, default=2.0, help="warm-up before each measurement (0: none)")
    common.add_argument("--open-loop-connections", type=int, default=16,
                        help="connections the open-loop generator opens before each run (it adds more as needed)")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="live progress line (default: when stderr is a terminal)")

    parser = argparse.ArgumentParser(prog="meshd-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SCENARIO")
    for scenario in SCENARIOS.values():
        scenario_parser = sub.add_parser(scenario.name, parents=[common], help=scenario.description,
                                         description=scenario.description)
        _add_option_flags(scenario_parser, scenario)
    sub.add_parser("all", parents=[common], help="every scenario but soak, one after the other")
    report = sub.add_parser("report", help="rebuild docs/benchmarks.md from the newest results")
    report.add_argument("--results-root", type=Path, default=DEFAULT_RESULTS)
    report.add_argument("--out", type=Path, default=DEFAULT_DOCS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(args_list)
    if args.command == "report":
        out = write_docs(args.results_root, args.out)
        print(f"wrote {out}")
        return 0
    names = list(IN_ALL) if args.command == "all" else [args.command]
    try:
        options = {name: _options(SCENARIOS[name], args) for name in names}
        selection = Selection.parse(args.targets, skip_meshd=args.skip_meshd)
    except (ValueError, TypeError) as exc:
        print(f"meshd-bench: {exc}", file=sys.stderr)
        return 2
    invocation = "meshd-bench " + shlex.join(args_list)
    results_dir = _new_results_dir(args.results_root)
    run = run_scenarios(names, options, selection=selection, results_dir=results_dir, invocation=invocation,
                        warmup_secs=args.warmup_secs * args.time_scale if args.warmup_secs else 0.0,
                        connections=args.open_loop_connections, live=args.progress)
    print(f"\nresults: {results_dir}")
    return 130 if run.finished_at == "interrupted" else 0


def run_scenarios(names: list[str], options: dict[str, object], *, selection: Selection, results_dir: Path,
                  invocation: str, warmup_secs: float = 2.0, connections: int = 16,
                  live: bool | None = None) -> BenchRun:
    """Run the scenarios in order, saving after each one; Ctrl-C stops cleanly and keeps what is done."""
    progress = Progress(live=live)
    run = BenchRun(started_at=_now(), finished_at="", invocation=invocation, machine=machine.describe())
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with Supervisor() as supervisor:
            ctx = RunContext(supervisor=supervisor, progress=progress, selection=selection,
                             workdir=results_dir / "work", warmup_secs=warmup_secs, connections=connections)
            for name in names:
                before, started = CpuSnapshot.take(os.getpid()), time.monotonic()
                try:
                    result = SCENARIOS[name].run(ctx, options[name])
                except ProcessFailed as exc:
                    progress.note(f"{name} failed: {exc}")
                    reason = f"failed: {exc}".splitlines()[0]
                    result = ScenarioResult(name=name, skipped=(Skip(target="*", reason=reason),))
                result = dataclasses.replace(result, notes=(*result.notes, contention_note(before, started)))
                result = dataclasses.replace(result, charts=tuple(charts.draw_all(result, results_dir / CHARTS_DIR)))
                run = dataclasses.replace(run, scenarios=(*run.scenarios, result))
                save(run, results_dir)
                progress.note("\n" + scenario_text(result, goals.for_scenario(goals.evaluate(run), name)) + "\n")
        run = dataclasses.replace(run, finished_at=_now())
    except KeyboardInterrupt:
        progress.note("interrupted: every process the bench started has been stopped")
        run = dataclasses.replace(run, finished_at="interrupted")
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)
    save(run, results_dir)
    (results_dir / "report.md").write_text(run_report(run))
    return run


def contention_note(before: CpuSnapshot, started: float) -> str:
    """How busy the rest of the machine was while a scenario ran: the bench shares its cores."""
    others = CpuSnapshot.take(os.getpid()).others_since(before)
    wall = max(1e-9, time.monotonic() - started)
    cores = os.cpu_count() or 1
    load = others / wall
    verdict = " (a busy machine: these numbers are noisy; rerun on a quiet one)" if load > 0.1 * cores else ""
    return f"Other processes used {load:.2f} of {cores} cores on average during this scenario{verdict}."


def _add_option_flags(parser: argparse.ArgumentParser, scenario: Scenario) -> None:
    """One flag per field of the scenario's options dataclass: `duration_secs` -> `--duration-secs`."""
    for name, default in scenario.option_defaults().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f"opt_{name}", action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {default}")
        else:
            parser.add_argument(flag, dest=f"opt_{name}", type=type(default), default=None,
                                help=f"default {default:g}" if isinstance(default, float) else f"default {default}")


def _options(scenario: Scenario, args: argparse.Namespace) -> object:
    """Defaults, scaled by --time-scale, then overridden by the flags given explicitly."""
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    return scenario.options(time_scale=args.time_scale, overrides=given)


def _new_results_dir(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _terminate(signum: int, frame: types.FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
