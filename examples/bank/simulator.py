"""Card-network simulator: open-loop authorisation traffic through meshd, with each result recorded.

How this works: the whole schedule of send times is drawn before the run starts (a Poisson process at the
configured rate, from a seeded random source), and each authorisation is sent at its time whether or not
earlier ones have been answered. Latency is measured from the *intended* send time, not from when the request
actually left: if the simulator or the system falls behind, the delay shows up in the latencies instead of
silently lowering the offered load. (A closed-loop client that waits for each answer before sending the next
would send less exactly when the system is slow, and report flattering numbers: coordinated omission.)

Run alone against a seeded bank: `python -m examples.bank.simulator --meshd http://127.0.0.1:4140 --rate 50
--duration 10`; the demo (`examples.bank.demo`) runs it for you alongside its story.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

import aiohttp

from examples.bank.authorisation import AuthRequest
from examples.bank.merchants import MERCHANT_IDS

Outcome = Literal["approved", "declined", "failed"]

DEFAULT_TIMEOUT_SECS: Final = 5.0
UNKNOWN_ACCOUNT_RATE: Final = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    outcome: Outcome
    reason: str = ""
    replica: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedAuth:
    send_at: float
    request: AuthRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """One authorisation as the card network saw it. `intended_at` is on the simulator's clock."""

    request: AuthRequest
    intended_at: float
    outcome: Outcome
    latency_ms: float
    reason: str = ""
    replica: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            **self.request.to_json(),
            "intended_at": self.intended_at,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_ms, 3),
            "reason": self.reason,
            "replica": self.replica,
        }


class Authoriser(Protocol):
    async def authorise(self, request: AuthRequest) -> Reply:
        """Ask for an authorisation; never raises: a lost request is a `failed` reply."""


class SimClock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class Cardholders:
    """The accounts the simulated cards draw on, with the balances the bank opens them with."""

    opening_balances: Mapping[str, int]
    account_ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.opening_balances:
            raise ValueError("there must be at least one cardholder")
        object.__setattr__(self, "account_ids", tuple(sorted(self.opening_balances)))

    @classmethod
    def generate(
        cls, count: int, rng: random.Random, *, min_balance: int = 20_000, max_balance: int = 100_000
    ) -> Cardholders:
        return cls({f"c-{index:05d}": rng.randint(min_balance, max_balance) for index in range(1, count + 1)})

    def draw(self, rng: random.Random, auth_id: str) -> AuthRequest:
        """A plausible purchase: mostly small amounts, some large ones, now and then an unknown card."""
        if rng.random() < UNKNOWN_ACCOUNT_RATE:
            account_id = f"x-{rng.randrange(10**6):06d}"
        else:
            account_id = rng.choice(self.account_ids)
        amount = rng.randint(100, 3_000) if rng.random() < 0.9 else rng.randint(3_000, 20_000)
        return AuthRequest(
            auth_id=auth_id, account_id=account_id, merchant_id=rng.choice(MERCHANT_IDS), amount=amount
        )


def arrival_offsets(rate_per_sec: float, duration_secs: float, rng: random.Random) -> list[float]:
    """Send times of a Poisson process in [0, duration): exponential gaps with mean 1/rate."""
    if rate_per_sec <= 0 or duration_secs <= 0:
        raise ValueError("rate and duration must be positive")
    offsets: list[float] = []
    at = rng.expovariate(rate_per_sec)
    while at < duration_secs:
        offsets.append(at)
        at += rng.expovariate(rate_per_sec)
    return offsets


def plan_traffic(
    *,
    rate_per_sec: float,
    duration_secs: float,
    start: float,
    cardholders: Cardholders,
    rng: random.Random,
    run_id: str,
) -> list[PlannedAuth]:
    """The whole run, fixed in advance; auth ids are `<run_id>-<n>`, unique across runs with distinct ids."""
    return [
        PlannedAuth(send_at=start + offset, request=cardholders.draw(rng, f"{run_id}-{index:07d}"))
        for index, offset in enumerate(arrival_offsets(rate_per_sec, duration_secs, rng))
    ]


class Simulator:
    """Sends a plan open-loop; every send is its own task, owned by the run's task group."""

    def __init__(self, authoriser: Authoriser, clock: SimClock) -> None:
        self._authoriser = authoriser
        self._clock = clock
        self._results: list[AuthResult] = []

    def __repr__(self) -> str:
        return f"Simulator(results={len(self._results)})"

    @property
    def results(self) -> Sequence[AuthResult]:
        """Answers received so far, in the order they arrived."""
        return tuple(self._results)

    async def run(
        self, plan: Sequence[PlannedAuth], *, stop: asyncio.Event | None = None
    ) -> list[AuthResult]:
        """Send every planned authorisation at its time (unless `stop` is set) and wait for all answers."""
        async with asyncio.TaskGroup() as group:
            for planned in plan:
                await self._clock.sleep_until(planned.send_at)
                if stop is not None and stop.is_set():
                    break
                group.create_task(self._send(planned))
        return sorted(self._results, key=lambda result: result.intended_at)

    async def _send(self, planned: PlannedAuth) -> None:
        reply = await self._authoriser.authorise(planned.request)
        latency_ms = (self._clock.now() - planned.send_at) * 1000.0
        self._results.append(
            AuthResult(
                request=planned.request,
                intended_at=planned.send_at,
                outcome=reply.outcome,
                latency_ms=latency_ms,
                reason=reply.reason,
                replica=reply.replica,
            )
        )


class MeshAuthoriser:
    """Sends `POST /authorisations` to meshd with `Host: payments`, as a card network's gateway would."""

    def __init__(
        self, session: aiohttp.ClientSession, meshd_url: str, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS
    ) -> None:
        self._session = session
        self._url = meshd_url.rstrip("/") + "/authorisations"
        self._timeout = aiohttp.ClientTimeout(total=timeout_secs)

    def __repr__(self) -> str:
        return f"MeshAuthoriser({self._url!r})"

    async def authorise(self, request: AuthRequest) -> Reply:
        try:
            async with self._session.post(
                self._url, json=request.to_json(), headers={"Host": "payments"}, timeout=self._timeout
            ) as response:
                raw = await response.read()
                replica = response.headers.get("x-replica", "")
                if response.status != 200:
                    why = response.headers.get("l5d-err") or raw[:120].decode("utf-8", "replace")
                    return Reply(outcome="failed", reason=f"HTTP {response.status}: {why}", replica=replica)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Reply(outcome="failed", reason=f"{type(exc).__name__}: {exc}")
        return _reply_from_body(raw, replica)


def _reply_from_body(raw: bytes, replica: str) -> Reply:
    try:
        body: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Reply(outcome="failed", reason="answer is not JSON", replica=replica)
    decision = body.get("decision") if isinstance(body, dict) else None
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    if decision == "approved":
        return Reply(outcome="approved", replica=replica)
    if decision == "declined":
        return Reply(outcome="declined", reason=str(reason), replica=replica)
    return Reply(outcome="failed", reason=f"unexpected decision {decision!r}", replica=replica)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


async def _main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    clock = LoopClock()
    cardholders = Cardholders.generate(args.cardholders, random.Random(args.seed))
    plan = plan_traffic(
        rate_per_sec=args.rate,
        duration_secs=args.duration,
        start=clock.now() + 0.2,
        cardholders=cardholders,
        rng=rng,
        run_id=f"sim{rng.randrange(16**6):06x}",
    )
    async with aiohttp.ClientSession() as session:
        results = await Simulator(MeshAuthoriser(session, args.meshd), clock).run(plan)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(result.to_json()) + "\n" for result in results))
    latencies = [result.latency_ms for result in results]
    counts = {
        outcome: sum(r.outcome == outcome for r in results) for outcome in ("approved", "declined", "failed")
    }
    print(
        f"{len(results)} authorisations: {counts['approved']} approved, {counts['declined']} declined, "
        f"{counts['failed']} failed; p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
    )
    return 0 if counts["failed"] == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bank.simulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--meshd", default="http://127.0.0.1:4140", help="meshd's outgoing router")
    parser.add_argument("--rate", type=float, default=50.0, help="authorisations per second (mean)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    parser.add_argument("--cardholders", type=int, default=500, help="accounts c-00001.. (must be seeded)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the schedule and the purchases")
    parser.add_argument("--out", type=Path, default=None, help="write every result as JSON lines here")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
