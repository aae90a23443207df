"""Timeouts: the total timeout of a request (retries included) and deadline propagation.

The deadline enforced is the earlier of the caller's `l5d-ctx-deadline` (when it came from a
trusted source), now + `totalTimeoutMs` and, for a gRPC request on a router that carries gRPC,
now + its `grpc-timeout` (meshd/grpc/timeout.py; each attempt then sends the time left as
`grpc-timeout`, see meshd/client.py). It is passed downstream in `l5d-ctx-deadline`, so a
chain of services never works past the original caller's deadline. A deadline that has already
passed is refused with 504 before any upstream is called (and before the retry budget is touched).

The deadline is read on the wall clock (it crosses hosts), then enforced on meshd's clock
(meshd.clock, injected: a test's fake clock fires it at the exact instant): a timer on that clock
cancels the request's task, and the cancellation is turned into the 504, as `asyncio.timeout_at`
does on the loop's clock. The route context's `deadline` holds that clock's instant so the retry stage below
can tell whether a backoff would end past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from meshd.clock import MONOTONIC, Clock
from meshd.errors import RequestTimeout
from meshd.expiry import Expiry
from meshd.grpc import timeout as grpc_timeout
from meshd.grpc.status import is_grpc_request
from meshd.grpc.timeout import GrpcTimeoutCounters
from meshd.http.messages import Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Service, Stage
from meshd.retry.deadline import HEADER, Deadline, WallClock, combine, format_deadline, parse_deadline

log = logging.getLogger("meshd.timeouts")
_HEADER_BYTES = HEADER.encode("ascii")


class TimeoutCounters:
    """Counts of timeouts by kind (`total`, `deadline`, `attempt`), read by the metrics exporter."""

    __slots__ = ("total", "deadline", "attempt")

    def __init__(self) -> None:
        self.total = 0
        self.deadline = 0
        self.attempt = 0


def timeout_stage(
    total_timeout_ms: int | None,
    wall: WallClock,
    counters: TimeoutCounters,
    clock: Clock = MONOTONIC,
    grpc: GrpcTimeoutCounters | None = None,
) -> Stage:
    """`grpc`: given on routers that can carry gRPC (`protocol: h2`): a gRPC request's
    `grpc-timeout` is then read as a deadline too (docs/grpc.md) and the request marked
    (`ctx.grpc`) so that each attempt sends the time left downstream. None (HTTP/1-only routers):
    no header is scanned, the path is as without gRPC."""
    total_s = total_timeout_ms / 1000.0 if total_timeout_ms else None

    def wrap(next_service: Service) -> Service:
        async def bound(ctx: RouteContext) -> Response:
            request = ctx.request
            incoming_raw = request.l5d.get(HEADER) if request.l5d else None
            incoming: Deadline | None = None
            if incoming_raw is not None:
                incoming = parse_deadline(incoming_raw.decode("latin-1"))
                if incoming is None:
                    log.info("ignoring malformed l5d-ctx-deadline %r", incoming_raw)
            now = 0
            from_grpc = False
            if grpc is not None and is_grpc_request(request.headers):
                ctx.grpc = True
                now = wall()
                with_header = grpc_timeout.request_deadline(request.headers, incoming, now, grpc)
                from_grpc = with_header is not incoming
                incoming = with_header
            if incoming is None and total_s is None:
                return await next_service(ctx)
            if not now:
                now = wall()
            if total_s is not None:
                deadline = combine(incoming, Deadline.of_timeout(now, total_s))
            else:
                assert incoming is not None
                deadline = incoming
            remaining = deadline.remaining(now)
            from_caller = incoming is not None and deadline.deadline_ns == incoming.deadline_ns
            which = "grpc-timeout or l5d-ctx-deadline" if from_grpc else "l5d-ctx-deadline"
            if remaining <= 0:
                counters.deadline += 1
                raise RequestTimeout(f"the caller's deadline ({which}) had expired; upstream not called")
            request.headers.append((_HEADER_BYTES, format_deadline(deadline).encode("ascii")))
            clock_deadline = clock.now() + remaining
            # the retry loop below reads this to skip a retry whose backoff would end too late
            ctx.deadline = clock_deadline
            task = asyncio.current_task()
            assert task is not None
            expiry = Expiry(task)
            timer = clock.call_at(clock_deadline, expiry.fire)
            try:
                return await next_service(ctx)
            except asyncio.CancelledError:
                if not expiry.caused():
                    raise
            finally:
                timer.cancel()
            if from_caller:
                counters.deadline += 1
                raise RequestTimeout(
                    f"the caller's deadline ({which}) expired after {remaining * 1000:.0f} ms"
                ) from None
            counters.total += 1
            raise RequestTimeout(f"request exceeded totalTimeoutMs ({total_timeout_ms} ms)") from None

        if total_s is not None:
            return bound

        if grpc is not None:

            def bound_if_deadline_or_grpc(ctx: RouteContext) -> Awaitable[Response]:
                # a router that carries gRPC: a gRPC request may carry its deadline in grpc-timeout
                request = ctx.request
                l5d = request.l5d
                if (l5d and HEADER in l5d) or is_grpc_request(request.headers):
                    return bound(ctx)
                return next_service(ctx)

            return bound_if_deadline_or_grpc

        def bound_if_deadline(ctx: RouteContext) -> Awaitable[Response]:
            # No total timeout configured: only a request carrying a deadline needs the bounded
            # coroutine; every other one goes straight on (a tail call, no coroutine frame).
            l5d = ctx.request.l5d
            if l5d and HEADER in l5d:
                return bound(ctx)
            return next_service(ctx)

        return bound_if_deadline

    return wrap
