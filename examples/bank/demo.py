"""The meshd bank demo: start the whole bank behind meshd, tell the story under card traffic, check the books.

`python -m examples.bank.demo --duration 60 --rate 50` starts every service replica and meshd on free loopback
ports (config, fs-namer files, routes, databases and logs in a fresh directory under `--workdir`), seeds the
accounts, then runs the card-network simulator for the whole story while the phases play out (see
`story/phases.py`): steady, chaos, slow replica, canary. It prints a table per phase and ends with the
integrity check; the exit status is 0 only if the books are right. Ctrl-C (or SIGTERM) at any point stops
every process it started.

`run_demo()` returns a `DemoResult`; `--json-out FILE` writes it as JSON for tools (the system test reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from examples.bank.authorisation import DECISIONS_TOPIC
from examples.bank.simulator import Cardholders, LoopClock, MeshAuthoriser, Simulator, plan_traffic
from examples.bank.story.cluster import running_cluster
from examples.bank.story.eventlog import (
    LagSamples,
    PayrollPlan,
    PayrollResult,
    replay_into_fresh_group,
    run_payroll,
    sample_lag,
)
from examples.bank.story.grpc_hop import probe_grpc_hop
from examples.bank.story.integrity import check_integrity, read_bank_state
from examples.bank.story.mtls import probe_mtls
from examples.bank.story.phases import Story, StoryPlan
from examples.bank.story.probing import StartupError
from examples.bank.story.report import DemoResult, render, summarise_phase
from examples.bank.story.topology import plan_layout

EXIT_MISMATCH: Final = 1
EXIT_STARTUP: Final = 2
EXIT_INTERRUPTED: Final = 130
TRAFFIC_LEAD_SECS: Final = 0.5

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    duration_secs: float = 60.0
    rate: float = 50.0
    workdir: Path = Path(".demo")
    cardholders: int = 500
    seed: int = 1
    meshd_command: tuple[str, ...] = (sys.executable, "-m", "meshd")
    startup_timeout_secs: float = 30.0
    json_out: Path | None = None
    bus: str = "sqlite"
    #: payments -> ledger as the gRPC call bank.Ledger/Post through meshd's HTTP/2 router (`protocol: h2`);
    #: the default: `--no-grpc` posts over HTTP/1.1 instead
    grpc: bool = True

    def __post_init__(self) -> None:
        if self.duration_secs <= 0:
            raise ValueError(f"duration must be positive, got {self.duration_secs}")
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.cardholders < 1:
            raise ValueError(f"cardholders must be at least 1, got {self.cardholders}")
        if not self.meshd_command:
            raise ValueError("meshd command must not be empty")
        if self.bus not in ("sqlite", "nats"):
            raise ValueError(f"bus must be sqlite or nats, got {self.bus!r}")
        if self.startup_timeout_secs <= 0:
            raise ValueError(f"startup timeout must be positive, got {self.startup_timeout_secs}")


async def run_demo(options: DemoOptions, *, log: Log) -> DemoResult:
    rng = random.Random(options.seed)
    cardholders = Cardholders.generate(options.cardholders, random.Random(options.seed))
    layout = plan_layout(
        options.workdir / time.strftime(f"run-%Y%m%d-%H%M%S-{os.getpid()}"), bus=options.bus, grpc=options.grpc
    )
    plan = StoryPlan.for_duration(options.duration_secs)
    log(
        f"work directory {layout.workdir}; story of {plan.total_secs:.0f}s at {options.rate:g} authorisations/s"
    )
    async with running_cluster(
        layout,
        opening_balances=cardholders.opening_balances,
        meshd_command=options.meshd_command,
        startup_timeout_secs=options.startup_timeout_secs,
        log=log,
    ) as cluster:
        clock = LoopClock()
        start = clock.now() + TRAFFIC_LEAD_SECS
        run_id = f"{time.strftime('%H%M%S')}{rng.randrange(16**4):04x}"
        traffic = plan_traffic(
            rate_per_sec=options.rate,
            duration_secs=plan.total_secs,
            start=start,
            cardholders=cardholders,
            rng=rng,
            run_id=run_id,
        )
        story = Story(
            cluster,
            plan,
            clock,
            random.Random(rng.random()),
            account_ids=cardholders.account_ids,
            log=log,
        )
        payroll_plan = PayrollPlan.for_traffic(
            rate=options.rate, customers=len(cardholders.account_ids), duration_secs=plan.total_secs
        )
        payroll, lags = PayrollResult(), LagSamples()
        # No connection limit: an open-loop client must never queue requests behind slow ones.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            simulator = Simulator(MeshAuthoriser(session, layout.meshd_url), clock)
            events_urls = [replica.url for replica in layout.of("events")]
            sampler = asyncio.create_task(sample_lag(session, events_urls, clock, lags))
            try:
                async with asyncio.TaskGroup() as group:
                    told = group.create_task(story.run(start))
                    sent = group.create_task(simulator.run(traffic))
                    group.create_task(
                        run_payroll(
                            session,
                            layout.meshd_url,
                            clock,
                            plan=payroll_plan,
                            account_ids=cardholders.account_ids,
                            run_id=run_id,
                            start=start,
                            end=start + plan.total_secs,
                            result=payroll,
                        )
                    )
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        outcome, results = told.result(), sent.result()
        log(f"{payroll.salaries} salaries paid on {payroll.paydays} paydays")
        log(f"{len(results)} authorisations answered; checking the books")
        state = await read_bank_state(cluster.session, layout)
        replay_group = f"replay-{run_id}"
        log(f"replaying {DECISIONS_TOPIC} from offset 1 into a fresh group, {replay_group}")
        replay = await replay_into_fresh_group(
            cluster.session, layout.meshd_url, DECISIONS_TOPIC, replay_group
        )
        mtls = await probe_mtls(cluster.session, layout)
        grpc_hop = await probe_grpc_hop(cluster.session, layout) if layout.grpc_port else None
    phases = tuple(
        summarise_phase(
            window.name,
            start=window.start,
            end=window.end,
            results=results,
            counters=window.counters,
            notes=window.notes,
            max_lag=lags.max_between(window.start, window.end),
        )
        for window in outcome.windows
    )
    return DemoResult(
        workdir=str(layout.workdir),
        duration_secs=options.duration_secs,
        rate=options.rate,
        kills=outcome.kills,
        phases=phases,
        slow_replica=outcome.slow_replica,
        canary=outcome.canary,
        integrity=check_integrity(results, state, cardholders.opening_balances, replay=replay),
        payroll={
            "paydays": payroll.paydays,
            "salaries": payroll.salaries,
            "cents": payroll.cents,
            "failed_batches": payroll.failed_batches,
            "period_secs": round(payroll_plan.period_secs, 1),
            "salary_cents": payroll_plan.salary_cents,
        },
        replay=replay.to_json(),
        mtls=mtls,
        grpc_hop=grpc_hop,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    try:
        result = asyncio.run(_run_until_signalled(options))
    except StartupError as exc:
        print(f"demo: could not start the bank: {exc}", file=sys.stderr, flush=True)
        _write_json(options.json_out, {"ok": False, "error": str(exc)})
        return EXIT_STARTUP
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("demo: interrupted; every process it started has been stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(render(result), flush=True)
    _write_json(options.json_out, result.to_json())
    return 0 if result.ok else EXIT_MISMATCH


async def _run_until_signalled(options: DemoOptions) -> DemoResult:
    """SIGINT already cancels the main task under asyncio.run; make SIGTERM do the same, so both clean up."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_demo(options, log=_log)


def _log(message: str) -> None:
    print(f"demo: {message}", flush=True)


def _write_json(path: Path | None, document: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps(document, indent=2) + "\n")


def _parse(argv: Sequence[str] | None) -> DemoOptions:
    parser = argparse.ArgumentParser(prog="python -m examples.bank.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="story length in seconds (phases scale)")
    parser.add_argument("--rate", type=float, default=50.0, help="card authorisations per second (mean)")
    parser.add_argument(
        "--workdir", type=Path, default=Path(".demo"), help="each run gets a new directory here"
    )
    parser.add_argument("--cardholders", type=int, default=500, help="number of customer accounts")
    parser.add_argument("--seed", type=int, default=1, help="seed for balances, purchases and arrival times")
    parser.add_argument(
        "--meshd-command",
        default=shlex.join([sys.executable, "-m", "meshd"]),
        help="how to run meshd; the demo appends `run -c <config>`",
    )
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for each start")
    parser.add_argument("--json-out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument(
        "--bus",
        choices=("sqlite", "nats"),
        default="sqlite",
        help="the event log's engine: embedded SQLite, or a 3-node NATS JetStream cluster the demo starts",
    )
    parser.add_argument(
        "--grpc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="post to the ledger with gRPC (bank.Ledger/Post) through meshd's HTTP/2 router (protocol: h2); "
        "the default, --no-grpc posts over HTTP/1.1",
    )
    args = parser.parse_args(argv)
    try:
        return DemoOptions(
            duration_secs=args.duration,
            rate=args.rate,
            workdir=args.workdir,
            cardholders=args.cardholders,
            seed=args.seed,
            meshd_command=tuple(shlex.split(args.meshd_command)),
            startup_timeout_secs=args.startup_timeout,
            json_out=args.json_out,
            bus=args.bus,
            grpc=args.grpc,
        )
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
