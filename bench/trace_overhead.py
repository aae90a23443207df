"""Microbenchmark: the per-request cost of tracing's header handling for unsampled requests.

    python -m bench.trace_overhead [--iterations 200000]

Times the trace filter (meshd/pipeline/tracing.py) alone on a request with six ordinary headers,
in the cases an unsampled request meets, and, for reference, a sampled one (its request span, one
attempt span and queuing both). Each case's time is net of building the request and its
`RouteContext` (measured alone and subtracted); best of five runs, in nanoseconds per request.
It measures whatever `meshd` imports: the compiled hot path after `make install`, the sources in
a checkout without it (about twice as slow). Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from meshd.http.body import Body
from meshd.http.messages import Headers, Request, Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.hygiene import TrustPolicy
from meshd.pipeline.tracing import end_request, trace_filter
from meshd.tracing.spans import Tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
_ORDINARY: list[tuple[bytes, bytes]] = [
    (b"User-Agent", b"bank-client/1.4"),
    (b"Accept", b"application/json"),
    (b"Content-Type", b"application/json"),
    (b"X-Request-Start", b"t=1700000000"),
    (b"Authorization", b"Bearer abc"),
    (b"Cookie", b"session=1"),
]
CASES: dict[str, tuple[list[tuple[bytes, bytes]], str, float]] = {
    "no context, rate 0 (not traced)": ([], "127.0.0.1", 0.0),
    "traceparent unsampled, passed on as is": ([(b"traceparent", f"00-{TRACE}-{SPAN}-00".encode())], "127.0.0.1", 0.0),
    "traceparent sampled by an untrusted caller (rewritten)": (
        [(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())], "10.1.2.3", 0.0),
    "b3 single, unsampled (rewritten as W3C)": ([(b"b3", f"{TRACE}-{SPAN}-0".encode())], "127.0.0.1", 0.0),
    "malformed traceparent (new trace, counted)": ([(b"traceparent", b"00-garbage-01")], "127.0.0.1", 0.0),
    "sampled (rate 1): request span + attempt span, queued": ([], "127.0.0.1", 1.0),
}


def _best(run: Callable[[int], None], iterations: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        run(iterations)
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


def _case(extra: list[tuple[bytes, bytes]], ip: str, rate: float, iterations: int) -> float:
    """One case's nanoseconds per request, net of building the request and its context."""
    trust = TrustPolicy(["127.0.0.0/8"])
    body = Body.of(b"")
    response = Response(200, b"OK", [], body)
    tracer = Tracer(rate, rng=random.Random(1))
    trace = trace_filter(tracer, trust, "outgoing")

    def make() -> RouteContext:
        headers: Headers = _ORDINARY + extra
        return RouteContext(Request("GET", "/balance", "1.1", headers, body, client_ip=ip))

    def baseline(n: int) -> None:
        for _ in range(n):
            make()

    queue = tracer.queue

    def traced(n: int) -> None:
        for _ in range(n):
            ctx = make()
            trace(ctx)
            span = ctx.span
            if span is not None:
                span.child("/#/fs/accounts", "127.0.0.1:8080", 1).end(200)
                end_request(ctx, span, response)
                if len(queue) >= 1024:  # as the exporter would: no pile of live spans for the GC
                    queue.clear()
        queue.clear()

    return _best(traced, iterations) - _best(baseline, iterations)


def measure(iterations: int) -> dict[str, float]:
    return {name: _case(extra, ip, rate, iterations) for name, (extra, ip, rate) in CASES.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args(argv)
    import meshd.pipeline.tracing as module

    compiled = not module.__file__ or not module.__file__.endswith(".py")
    print(f"trace filter per request ({'compiled' if compiled else 'interpreted'}), net of building the request:")
    for name, ns in measure(args.iterations).items():
        print(f"  {ns:8.0f} ns  {name}")


if __name__ == "__main__":
    main()
