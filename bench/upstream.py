"""The programmable upstream: an HTTP/1.1 server process hosting several replicas, one port each.

Run as `python -m bench.upstream --spec '<json>'`. Each replica ("instance") answers `GET` with a tiny
body after its configured latency (a fixed part plus an optional log-normal spread), fails a fraction
of requests with 503, and can be told to stall (answer every request after a long delay) for a window
of time. It counts what it served. Control requests under `/_bench/` are never counted:

- `GET  /_bench/stats`  -> `{"name": ..., "requests": n, "failures": n, "stalled": n}`
- `POST /_bench/reset`  -> zero the counters
- `POST /_bench/stall?afterSecs=A&forSecs=F&latencyMs=L` -> from A seconds from now, for F seconds,
  answer every request after L ms.

When all instances listen, it prints one line, `{"ready": {"<name>": <port>, ...}}`, and exits by itself
after `--max-lifetime-secs` or when its parent dies.

How this works: the per-request decision (`Behaviour.decide`) is pure: the time and a seeded random
source go in, a delay and a status come out. The asyncio protocol only parses (httptools), asks, and
writes the answer when its time comes. Answers on one connection go out in request order, so a
pipelined request never overtakes a slower one ahead of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Final, cast
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop

CONTROL_PREFIX: Final = b"/_bench/"
OK_BODY: Final = b"ok\n"
FAIL_BODY: Final = b"unavailable\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceSpec:
    """One replica's behaviour. Latency = `latency_ms` + log-normal(median `spread_median_ms`, `spread_sigma`)."""

    name: str
    port: int = 0
    latency_ms: float = 0.0
    spread_median_ms: float = 0.0
    spread_sigma: float = 0.0
    failure_rate: float = 0.0
    failure_status: int = 503
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"instance name must be a non-empty word, got {self.name!r}")
        if self.latency_ms < 0 or self.spread_median_ms < 0 or self.spread_sigma < 0:
            raise ValueError(f"{self.name}: latencies must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"{self.name}: failureRate must be between 0 and 1, got {self.failure_rate}")


@dataclass(frozen=True, slots=True)
class StallWindow:
    """From `start` to `end` (monotonic seconds) every request takes `latency_secs`."""

    start: float
    end: float
    latency_secs: float

    def covers(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class InstanceStats:
    name: str
    requests: int
    failures: int
    stalled: int


@dataclass(frozen=True, slots=True)
class Decision:
    delay_secs: float
    status: int


@dataclass(slots=True)
class Behaviour:
    """The state of one replica: its spec, its stall windows and its counters."""

    spec: InstanceSpec
    rng: random.Random
    stalls: list[StallWindow] = field(default_factory=list)
    requests: int = 0
    failures: int = 0
    stalled: int = 0

    @classmethod
    def from_spec(cls, spec: InstanceSpec) -> Behaviour:
        return cls(spec=spec, rng=random.Random(spec.seed))

    def decide(self, now: float) -> Decision:
        """Count one request and choose how long it waits and which status it gets."""
        self.requests += 1
        stall = next((w for w in self.stalls if w.covers(now)), None)
        if stall is not None:
            self.stalled += 1
            delay = stall.latency_secs
        else:
            delay = self.spec.latency_ms / 1000.0
            if self.spec.spread_median_ms > 0:
                spread = self.spec.spread_median_ms * math.exp(self.spec.spread_sigma * self.rng.gauss(0.0, 1.0))
                delay += spread / 1000.0
        status = 200
        if self.spec.failure_rate > 0 and self.rng.random() < self.spec.failure_rate:
            status = self.spec.failure_status
            self.failures += 1
        return Decision(delay_secs=delay, status=status)

    def add_stall(self, now: float, after_secs: float, for_secs: float, latency_secs: float) -> None:
        self.stalls.append(StallWindow(now + after_secs, now + after_secs + for_secs, latency_secs))

    def reset(self) -> None:
        self.requests = self.failures = self.stalled = 0

    def statistics(self) -> InstanceStats:
        return InstanceStats(self.spec.name, self.requests, self.failures, self.stalled)


def parse_specs(text: str) -> list[InstanceSpec]:
    """`[{"name": "r0", "latencyMs": 1, ...}, ...]` (camelCase keys, like meshd's YAML) to specs."""
    items = json.loads(text)
    if not isinstance(items, list) or not items:
        raise ValueError("spec must be a non-empty JSON list of instances")
    names = {"name", "port", "latencyMs", "spreadMedianMs", "spreadSigma", "failureRate", "failureStatus", "seed"}
    specs = []
    for item in items:
        unknown = set(item) - names
        if unknown:
            raise ValueError(f"unknown instance keys {sorted(unknown)}; known: {sorted(names)}")
        specs.append(
            InstanceSpec(
                name=str(item["name"]),
                port=int(item.get("port", 0)),
                latency_ms=float(item.get("latencyMs", 0.0)),
                spread_median_ms=float(item.get("spreadMedianMs", 0.0)),
                spread_sigma=float(item.get("spreadSigma", 0.0)),
                failure_rate=float(item.get("failureRate", 0.0)),
                failure_status=int(item.get("failureStatus", 503)),
                seed=int(item.get("seed", 0)),
            )
        )
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("instance names must be unique")
    return specs


def spec_json(specs: list[InstanceSpec]) -> str:
    """The inverse of `parse_specs`."""
    return json.dumps(
        [
            {
                "name": s.name,
                "port": s.port,
                "latencyMs": s.latency_ms,
                "spreadMedianMs": s.spread_median_ms,
                "spreadSigma": s.spread_sigma,
                "failureRate": s.failure_rate,
                "failureStatus": s.failure_status,
                "seed": s.seed,
            }
            for s in specs
        ]
    )


# -- the I/O shell ------------------------------------------------------------------------------------

_REASONS: Final = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error",
                   502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


def _response(status: int, body: bytes, instance: str, *, close: bool = False) -> bytes:
    reason = _REASONS.get(status, b"Status")
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\nX-Bench-Instance: %s\r\n" % (
        status, reason, len(body), instance.encode())
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class _ServerConnection(asyncio.Protocol):
    __slots__ = ("_behaviour", "_loop", "_transport", "_parser", "_url", "_queue", "_timer", "_responses",
                 "_closing")

    def __init__(self, behaviour: Behaviour, loop: asyncio.AbstractEventLoop, responses: dict[int, bytes]) -> None:
        self._behaviour = behaviour
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._queue: deque[tuple[float, bytes, bool]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._responses = responses
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_response(400, b"bad request\n", self._behaviour.spec.name, close=True))
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        url, self._url = self._url, b""
        keep_alive = bool(self._parser.should_keep_alive())
        now = time.monotonic()
        if url.startswith(CONTROL_PREFIX):
            self._enqueue(now, _control(self._behaviour, url, self._parser.get_method(), now), keep_alive)
            return
        decision = self._behaviour.decide(now)
        payload = self._responses.get(decision.status)
        if payload is None:
            payload = _response(decision.status, FAIL_BODY, self._behaviour.spec.name)
        self._enqueue(now + decision.delay_secs, payload, keep_alive)

    def _enqueue(self, ready_at: float, payload: bytes, keep_alive: bool) -> None:
        if self._queue:
            ready_at = max(ready_at, self._queue[-1][0])
        self._queue.append((ready_at, payload, keep_alive))
        if len(self._queue) == 1:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._queue and not self._closing:
            ready_at, payload, keep_alive = self._queue[0]
            if ready_at > now:
                self._timer = self._loop.call_at(ready_at, self._flush)
                return
            self._queue.popleft()
            if self._transport is None:
                return
            self._transport.write(payload)
            if not keep_alive:
                self._closing = True
                self._transport.close()


def _control(behaviour: Behaviour, url: bytes, method: bytes, now: float) -> bytes:
    name = behaviour.spec.name
    parts = urlsplit(url.decode("latin-1"))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        if parts.path == "/_bench/stats":
            body = json.dumps(asdict(behaviour.statistics())).encode()
        elif parts.path == "/_bench/reset" and method == b"POST":
            behaviour.reset()
            body = b'{"reset": true}'
        elif parts.path == "/_bench/stall" and method == b"POST":
            behaviour.add_stall(
                now,
                after_secs=float(query.get("afterSecs", "0")),
                for_secs=float(query["forSecs"]),
                latency_secs=float(query["latencyMs"]) / 1000.0,
            )
            body = b'{"stall": true}'
        else:
            return _response(404, b"unknown control path\n", name)
    except (KeyError, ValueError) as exc:
        return _response(400, f"bad control request: {exc}\n".encode(), name)
    return _response(200, body + b"\n", name)


async def serve(specs: list[InstanceSpec], max_lifetime_secs: float) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    ports: dict[str, int] = {}
    for spec in specs:
        behaviour = Behaviour.from_spec(spec)
        responses = {200: _response(200, OK_BODY, spec.name)}

        def factory(b: Behaviour = behaviour, r: dict[int, bytes] = responses) -> _ServerConnection:
            return _ServerConnection(b, loop, r)

        server = await loop.create_server(factory, "127.0.0.1", spec.port, backlog=4096, reuse_address=True)
        servers.append(server)
        ports[spec.name] = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"ready": ports}) + "\n")
    sys.stdout.flush()
    parent = os.getppid()
    deadline = loop.time() + max_lifetime_secs
    # Stop by ourselves: when the lifetime runs out or our parent is gone (re-parented to another pid).
    while loop.time() < deadline and os.getppid() == parent:
        await asyncio.sleep(0.5)
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="JSON list of instances (see bench/upstream.py)")
    parser.add_argument("--max-lifetime-secs", type=float, default=3600.0)
    args = parser.parse_args(argv)
    specs = parse_specs(args.spec)
    uvloop.run(serve(specs, args.max_lifetime_secs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
