"""Publish throughput and publish -> acknowledgement latency of the events service, on either engine.

`python -m examples.bank.events.bench --backend sqlite|nats [--nats URL] [--rate 200] [--seconds 10]` starts the
events service in this process (SQLite in a temporary directory, or NATS at `--nats`, which must be running
with `-js`) and measures over plain HTTP on loopback, without meshd in between:

1. **throughput**: `--publishers` concurrent publishers each send batches of `--batch` events as fast as the
   service answers, for `--seconds`; the figure is events stored per second;
2. **latency**: one publisher sends single events open-loop at `--rate` per second (send times fixed in
   advance, so a slow service shows up as latency, not as a lower rate) while one consumer fetches with a
   long poll and acknowledges; each event's latency runs from its *intended* send time to the moment its
   acknowledgement was answered. The figures are p50 and p99 in milliseconds.

The result is printed and, with `--json-out`, written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from examples.bank.events.log import LogSettings
from examples.bank.events.service import EventsOptions, create_app
from examples.bank.options import ServiceOptions
from examples.bank.simulator import percentile


@dataclass(frozen=True, slots=True)
class BenchResult:
    backend: str
    throughput_events_per_sec: float
    rate: float
    latency_events: int
    p50_ms: float
    p99_ms: float


async def throughput(
    session: aiohttp.ClientSession, url: str, *, seconds: float, publishers: int, batch: int
) -> float:
    stored = 0
    deadline = time.monotonic() + seconds

    async def publisher(index: int) -> None:
        nonlocal stored
        n = 0
        while time.monotonic() < deadline:
            events = [{"id": f"t{index}-{n + k}", "payload": {"n": n + k}} for k in range(batch)]
            async with session.post(f"{url}/topics/bench-throughput", json={"events": events}) as response:
                response.raise_for_status()
                await response.read()
            n += batch
            stored += batch

    started = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    return stored / (time.monotonic() - started)


async def latency(session: aiohttp.ClientSession, url: str, *, rate: float, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    count = max(1, int(rate * seconds))
    start = loop.time() + 0.2
    intended = {f"l{n}": start + n / rate for n in range(count)}
    latencies: list[float] = []

    async def publish_one(event_id: str) -> None:
        async with session.post(
            f"{url}/topics/bench-latency", json={"id": event_id, "payload": {}}
        ) as response:
            response.raise_for_status()
            await response.read()

    async def publisher() -> None:
        async with asyncio.TaskGroup() as group:
            for event_id, when in intended.items():
                await asyncio.sleep(max(0.0, when - loop.time()))
                group.create_task(publish_one(event_id))

    async def consumer() -> None:
        base = f"{url}/topics/bench-latency/groups/bench"
        while len(latencies) < count:
            async with session.post(f"{base}/fetch", json={"max": 100, "wait_ms": 1000}) as response:
                events = (await response.json())["events"]
            if not events:
                continue
            async with session.post(
                f"{base}/ack", json={"receipts": [e["receipt"] for e in events]}
            ) as response:
                response.raise_for_status()
            acked_at = loop.time()
            latencies.extend((acked_at - intended[e["id"]]) * 1000.0 for e in events)

    await asyncio.gather(publisher(), asyncio.wait_for(consumer(), timeout=seconds + 30))
    return latencies


async def run(
    backend: str,
    *,
    nats: Sequence[str],
    rate: float,
    seconds: float,
    publishers: int,
    batch: int,
    directory: Path,
) -> BenchResult:
    options = EventsOptions(
        backend=backend, nats_servers=tuple(nats) or ("nats://127.0.0.1:4222",), settings=LogSettings()
    )
    service = ServiceOptions(service="events", db=directory / "events.db", replica="events-bench")
    runner = web.AppRunner(create_app(service, options), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            per_sec = await throughput(session, url, seconds=seconds, publishers=publishers, batch=batch)
            latencies = await latency(session, url, rate=rate, seconds=seconds)
    finally:
        await runner.cleanup()
    return BenchResult(
        backend,
        round(per_sec, 1),
        rate,
        len(latencies),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bank.events.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--nats", action="append", default=[], help="NATS server URL (repeatable)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        result = asyncio.run(
            run(
                args.backend,
                nats=args.nats,
                rate=args.rate,
                seconds=args.seconds,
                publishers=args.publishers,
                batch=args.batch,
                directory=Path(directory),
            )
        )
    print(
        f"{result.backend}: publish throughput {result.throughput_events_per_sec:.0f} events/s; "
        f"publish -> ack latency at {result.rate:g}/s over {result.latency_events} events: "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
    )
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
