"""Retries: classify every attempt, retry what is safe, within the service's retry budget, with backoff.

How this works: every request deposits into the budget once; each retry must withdraw. An
attempt is retried when the classifier calls it a retryable failure: a 5xx on a method it deems
retryable, a transport error after writing on such a method, or any error before the request
was written (connect refused, pool exhausted: nothing reached the upstream, so every method is
safe). Besides the budget, each request has two bounds of its own (`maxRetries` for retries
after the request was written, `maxRequeues` for re-sends of a request that never reached an
upstream): the budget's floor of `minRetriesPerSec` would otherwise let one request to a broken
replica go round for ever at a few attempts a second. A request that reaches its bound gets
its last failure, its `l5d-err` saying so; the common case (the first attempt succeeds) pays
two local ints for them. Each retry picks again (the balancer is asked to avoid the node that just failed) and may
bind to another union branch. Retries sit below the total timeout, so the whole loop, backoff
included, is bounded by it; a retry whose backoff would end past the request's deadline is not
attempted: the last failure is returned at once instead of a 504 later.

What is never retried, and why:
- after the request was written, a request whose body outgrew the replay buffer (the router's
  copy, or this service's smaller `replayBufferBytes`): the bytes to send again are gone. (A
  failure before writing took no byte of the body, so it is retried whatever the body's size.)
- a non-idempotent request that reached the upstream (the classifier says FAILURE for it);
- after the request was written, a request whose body the client is still sending: the old
  upstream connection may still hold (or, after a cancelled attempt, later release) the body's
  sink, so replaying now could interleave two attempts on one body. Before-write failures never
  attached the body, so they are retried whatever the body's state.

gRPC (the `grpc.*` classifiers, docs/grpc.md): the outcome is `grpc-status`, not the HTTP status.
A trailers-only head decides at once. Otherwise the trailers decide: when a retry is still
possible (the request body complete and kept, `maxRetries` not reached), the answer is held
(`hold_until_trailers`: at most `HOLD_LIMIT_BYTES`, and `HOLD_AFTER_MESSAGE_S` after its first
message) so that a unary call's trailers can be read before its bytes go to the caller; an answer
that turns out to stream is passed on as it comes and never retried (its trailers then count for
failure accrual only). HTTP/1-style classifiers never hold anything.

A retried 5xx's response body is discarded: a small rest with a known length is read and thrown
away so the keep-alive connection survives (bounded by `DRAIN_TIMEOUT_S`); anything else is
cancelled, which aborts that upstream connection.

Cancellation (the client went away, the total timeout fired) propagates through the attempt or
the backoff sleep; the attempt in flight aborts its upstream connection (see dispatch.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from balancers.backoff import Backoff
from meshd.clock import MONOTONIC, Clock, Timer
from meshd.errors import (
    AttemptTimeout,
    CircuitOpen,
    MeshdError,
    NoEndpoints,
    NoSuchService,
    RequestTimeout,
    UpstreamFailed,
)
from meshd.grpc.classifiers import GrpcClassifier
from meshd.http.body import Body, NotReplayable, Trailers
from meshd.http.headers import L5D_RETRYABLE, L5D_SUCCESS_CLASS
from meshd.http.messages import Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Service
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.retry.budget import RetryBudget
from meshd.retry.classifiers import ResponseClass, ResponseClassifier, success_class

AttemptHook = Callable[[RouteContext, "int | MeshdError", "str | None"], None]
"""Told of every attempt's outcome (a status or the error) and the retry reason, or None when the
attempt is final. Only the access log uses it; without it the loop pays one `is None` check."""

#: a gRPC answer is held (to read its trailers before deciding on a retry) up to this many bytes
HOLD_LIMIT_BYTES: Final = 64 * 1024
#: ...and for at most this long after its first message, waiting for the trailers to follow
HOLD_AFTER_MESSAGE_S: Final = 0.05
#: a discarded response body with at most this much left is read to its end, to keep the connection
DRAIN_LIMIT_BYTES: Final = 64 * 1024
#: ...but for at most this long; then the connection is aborted after all
DRAIN_TIMEOUT_S: Final = 1.0

_SUCCESS = {cls: success_class(cls).encode("ascii") for cls in ResponseClass}


class Resumable(Protocol):
    """The retry stage's service: called with a request's context it runs the whole loop; called
    with `first` too, the request's first attempt is that awaitable, already begun and counted in
    `ctx.attempts` by the fast path (meshd/fastpath.py), and the loop takes over from its outcome
    exactly as if it had made that attempt itself."""

    def __call__(self, ctx: RouteContext, first: Awaitable[Response] | None = None) -> Awaitable[Response]: ...


RetriesStage = Callable[[Service], Resumable]


class RetryCounters:
    """Per-service retry counts by reason, read by the metrics exporter."""

    __slots__ = ("response", "error", "requeue", "budget_exhausted", "not_replayable", "deadline", "limit")

    def __init__(self) -> None:
        self.response = 0
        self.error = 0
        self.requeue = 0
        self.budget_exhausted = 0
        self.not_replayable = 0
        #: retries not attempted because the backoff would end past the deadline
        self.deadline = 0
        #: retries not attempted because the request reached `maxRetries` or `maxRequeues`
        self.limit = 0


class RetryDiscarded(Exception):
    """The response of an attempt that is being retried was discarded."""


def classify_error(classifier: ResponseClassifier, method: str, exc: MeshdError) -> ResponseClass:
    if isinstance(exc, NoSuchService | NoEndpoints | CircuitOpen):
        return ResponseClass.FAILURE  # another pick cannot help; a full breaker sheds load
    if not exc.written:
        return ResponseClass.RETRYABLE_FAILURE
    if isinstance(exc, UpstreamFailed | RequestTimeout):
        return classifier.classify_error(method, True)
    return ResponseClass.FAILURE


def retries_stage(
    classifier: ResponseClassifier,
    budget: RetryBudget,
    backoff: Backoff,
    counters: RetryCounters,
    timeouts: TimeoutCounters,
    *,
    add_success_class: bool,
    replay_limit: int | None = None,
    max_retries: int = 2,
    max_requeues: int = 10,
    on_attempt: AttemptHook | None = None,
    clock: Clock = MONOTONIC,
) -> RetriesStage:
    """`replay_limit`: this service's `replayBufferBytes` (None: whatever the router's body kept);
    `max_retries`, `max_requeues`: the per-request bounds (`maxRetries`, `maxRequeues`);
    `clock`: the backoff sleeps, the deadline check (`RouteContext.deadline` is on this clock) and the
    drain timer of a discarded body."""
    sleep = clock.sleep
    # the gRPC kinds classify by grpc-status (meshd/grpc/classifiers.py); None: by HTTP status
    grpc = classifier if isinstance(classifier, GrpcClassifier) else None

    def wrap(next_service: Service) -> Resumable:
        async def retry(ctx: RouteContext, first: Awaitable[Response] | None = None) -> Response:
            method = ctx.request.method
            budget.deposit()
            schedule = None
            retried = 0  # retries after the request was written: at most max_retries
            requeued = 0  # re-sends of a request never written: at most max_requeues
            # The previous attempt's outcome while its retry is under way: a complete response (its
            # body all received, so keeping it holds no connection) or its error. A retry that a
            # client's circuit breaker refuses gives the caller this instead of the breaker's 503,
            # as an exhausted retry budget would (Envoy's retry overflow does the same).
            held: Response | None = None
            held_class = ResponseClass.RETRYABLE_FAILURE
            held_exc: MeshdError | None = None
            while True:
                if first is None:
                    ctx.attempts += 1
                try:
                    if first is None:
                        response = await next_service(ctx)
                    else:
                        # the fast path's first attempt, handed over (see `Resumable`)
                        began, first = first, None
                        response = await began
                except MeshdError as exc:
                    if isinstance(exc, CircuitOpen) and (held is not None or held_exc is not None):
                        if on_attempt is not None:
                            on_attempt(ctx, exc, None)
                        if held_exc is not None:
                            raise held_exc from None
                        assert held is not None
                        if add_success_class:
                            held.headers.append((L5D_SUCCESS_CLASS, _SUCCESS[held_class]))
                        return held
                    held = held_exc = None
                    if isinstance(exc, AttemptTimeout):
                        timeouts.attempt += 1
                    if classify_error(classifier, method, exc) is not ResponseClass.RETRYABLE_FAILURE:
                        if on_attempt is not None:
                            on_attempt(ctx, exc, None)
                        raise
                    if exc.written:
                        reason = "error"
                        at_limit = retried >= max_retries
                    else:
                        reason = "requeue"
                        at_limit = requeued >= max_requeues
                    if at_limit:
                        counters.limit += 1
                        if exc.written:
                            _gave_up(exc, ctx.attempts, "maxRetries", max_retries)
                        else:
                            _gave_up(exc, ctx.attempts, "maxRequeues", max_requeues)
                        if on_attempt is not None:
                            on_attempt(ctx, exc, None)
                        raise
                    if schedule is None:
                        schedule = backoff.delays()
                    delay = next(schedule)
                    if not _may_retry(ctx, exc.written, delay, budget, counters, replay_limit, clock):
                        if on_attempt is not None:
                            on_attempt(ctx, exc, None)
                        raise
                    if on_attempt is not None:
                        on_attempt(ctx, exc, reason)
                    held_exc = exc
                else:
                    held = held_exc = None
                    status = response.status
                    if grpc is not None:
                        # grpc-status decides: a trailers-only head at once, else the trailers (a
                        # small unary answer is held until they come; a streaming one goes on)
                        decided = grpc.classify_head(status, response.headers)
                        if decided is None:
                            body = response.body
                            if retried < max_retries and _replayable(ctx, replay_limit):
                                unary = await hold_until_trailers(body, clock)
                            else:
                                unary = body.ended
                            if unary and body.ended and body.error is None:
                                decided = grpc.classify_trailers(body.trailers)
                        if decided is None:
                            # passed on as it streams (failure accrual still judges its trailers)
                            if on_attempt is not None:
                                on_attempt(ctx, status, None)
                            return response
                        cls = decided
                    else:
                        if status < 500:
                            if add_success_class:
                                response.headers.append((L5D_SUCCESS_CLASS, b"1.0"))
                            if on_attempt is not None:
                                on_attempt(ctx, status, None)
                            return response
                        hint = any(
                            n.lower() == L5D_RETRYABLE and v.strip().lower() == b"true" for n, v in response.headers
                        )
                        cls = classifier.classify_response(method, status, hint)
                    if cls is not ResponseClass.RETRYABLE_FAILURE:
                        retrying = False
                    elif retried >= max_retries:
                        counters.limit += 1  # the upstream's own response goes back unchanged
                        retrying = False
                    elif not response.body.ended and not _breaker_admits_retry(ctx):
                        retrying = False  # its body cannot be kept while the retry runs: ask first
                    else:
                        if schedule is None:
                            schedule = backoff.delays()
                        delay = next(schedule)
                        retrying = _may_retry(ctx, True, delay, budget, counters, replay_limit, clock)
                    if not retrying:
                        if add_success_class:
                            response.headers.append((L5D_SUCCESS_CLASS, _SUCCESS[cls]))
                        if on_attempt is not None:
                            on_attempt(ctx, status, None)
                        return response
                    reason = "response"
                    if on_attempt is not None:
                        on_attempt(ctx, status, reason)
                    if response.body.ended:
                        held = response  # nothing left to read: kept in case the retry is refused
                        held_class = cls
                    else:
                        _discard(response.body, clock)
                if reason == "requeue":
                    counters.requeue += 1
                    requeued += 1
                else:
                    retried += 1
                    if reason == "response":
                        counters.response += 1
                    else:
                        counters.error += 1
                if delay > 0:
                    await sleep(delay)

        return retry

    return wrap


def _may_retry(
    ctx: RouteContext,
    written: bool,
    delay: float,
    budget: RetryBudget,
    counters: RetryCounters,
    replay_limit: int | None,
    clock: Clock,
) -> bool:
    """Whether this retryable failure is retried; rewinds the body when it is. Cheap checks first,
    so that a retry that cannot happen never spends a budget token.

    A failure before the request was written never took a byte of the body (it is still all
    buffered, or not yet sent by the client), so it needs no replay copy and no rewind.
    """
    body = ctx.request.body
    if written and (
        not body.ended
        or not body.replayable
        or (replay_limit is not None and body.received > replay_limit)
    ):
        counters.not_replayable += 1
        return False
    deadline = ctx.deadline
    if deadline is not None and clock.now() + delay >= deadline:
        counters.deadline += 1
        return False
    if not budget.try_withdraw():
        counters.budget_exhausted += 1
        return False
    if written:
        try:
            body.rewind()
        except NotReplayable:  # pragma: no cover - `replayable` above already said it can rewind
            counters.not_replayable += 1
            return False
    return True


def _replayable(ctx: RouteContext, replay_limit: int | None) -> bool:
    """Whether the request could be sent again now (its body complete and all kept)."""
    body = ctx.request.body
    return body.ended and body.replayable and (replay_limit is None or body.received <= replay_limit)


class _Holder:
    """Holds a gRPC answer's first bytes until it shows whether it is a unary answer (its trailers
    came) or a stream: a second message began, `HOLD_LIMIT_BYTES` arrived, or no trailers followed
    the first message within `HOLD_AFTER_MESSAGE_S`. Then `done` is set and the body gets its
    bytes back (`Body.give_back`) for the caller."""

    __slots__ = ("chunks", "size", "done", "released", "boundary", "clock", "timer", "unary", "arriving")

    def __init__(self, clock: Clock) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        #: made only when the answer must be waited for (not for one that arrived whole)
        self.done: asyncio.Future[None] | None = None
        self.released = False
        #: where the first message ends (-1 until its 5-byte prefix has arrived)
        self.boundary = -1
        self.clock = clock
        self.timer: Timer | None = None
        #: still looks like a unary answer (at most one message, within the limits)
        self.unary = True
        #: the body was still arriving when held: an answer that had ended (the common unary
        #: case) hands over its end right after its data, so it needs no timer
        self.arriving = True

    def release(self) -> None:
        if not self.released:
            self.released = True
            done = self.done
            if done is not None and not done.done():
                done.set_result(None)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_data(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HOLD_LIMIT_BYTES:
            self.unary = False
            self.release()
            return
        if self.boundary < 0 and self.size >= 5:
            prefix = b"".join(self.chunks)[:5]
            self.boundary = 5 + int.from_bytes(prefix[1:5], "big")
        if self.boundary >= 0:
            if self.size > self.boundary:
                self.unary = False  # a second message: a stream
                self.release()
            elif self.size == self.boundary and self.timer is None and not self.released and self.arriving:
                self.timer = self.clock.call_later(HOLD_AFTER_MESSAGE_S, self.timed_out)

    def timed_out(self) -> None:
        self.timer = None
        if not self.released:
            self.unary = False  # no trailers after its message: a stream that is slow to go on
            self.release()

    def on_end(self, trailers: Trailers | None) -> None:
        self.release()

    def on_error(self, exc: BaseException) -> None:
        self.release()


async def hold_until_trailers(body: Body, clock: Clock) -> bool:
    """Hold a gRPC response body until its trailers arrive or it turns out to stream (`_Holder`);
    either way its bytes are back in it afterwards, for the caller. True when it is a unary
    answer: it ended with at most one message (a stream that arrived whole is still a stream:
    as gRPC's own retry policy, meshd never retries a call whose answer carried several
    messages). Cancelled (deadline, client gone), the body is cancelled too, which resets the
    upstream stream."""
    holder = _Holder(clock)
    holder.arriving = not body.ended
    body.attach(holder)
    if not holder.released:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        holder.done = done
        try:
            await done
        except asyncio.CancelledError:
            holder.stop_timer()
            body.cancel(RetryDiscarded("response abandoned: the request was cancelled"))
            raise
    holder.stop_timer()
    body.give_back(holder.chunks)
    return holder.unary and body.ended


def _breaker_admits_retry(ctx: RouteContext) -> bool:
    """Whether the circuit breaker of the client that answered the last attempt has room for a
    retry, asked before a response whose body is still arriving is discarded for one (Envoy asks
    its retry breaker at the same point). Only that case asks: a complete response is kept and
    given back if the retry is refused (see the retry loop). The client sits above the pipeline,
    hence the untyped look-up; an endpoint without one (a test double) always admits."""
    node = ctx.last_node
    client = getattr(node.member, "client", None) if node is not None else None
    if client is None:
        return True
    admits: bool = client.admits_retry(ctx.attempts > 1)
    return admits


def _gave_up(exc: MeshdError, attempts: int, key: str, bound: int) -> None:
    """Say in the error's `l5d-err` that the request's own bound on attempts ended it (rare path:
    the error is the one this request's last attempt raised, so changing it in place is safe)."""
    plural = "attempt" if attempts == 1 else "attempts"
    exc.message = f"{exc.message}; gave up after {attempts} {plural} ({key} {bound})"
    exc.args = (exc.message,)


class _DiscardSink:
    """Reads a discarded response body to its end and drops the bytes."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None:
        pass

    def on_end(self, trailers: Trailers | None) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        pass


_DISCARD: Final = _DiscardSink()


def _discard(body: Body, clock: Clock) -> None:
    """Throw away the body of a response that is being retried, keeping its connection if cheap.

    Aborting costs the upstream a connection and meshd a handshake on the next attempt; reading a
    few more bytes of an error page costs nearly nothing. A body of unknown length (chunked, or
    until close) or with much left is cancelled at once; so is one that stalls.
    """
    if body.ended:
        return
    length = body.length
    if length is None or length - body.received > DRAIN_LIMIT_BYTES:
        body.cancel(RetryDiscarded("response discarded: the request is retried"))
        return
    body.attach(_DISCARD)
    if not body.ended:
        timer = clock.call_later(
            DRAIN_TIMEOUT_S, lambda: body.cancel(RetryDiscarded("discarded response body did not finish in time"))
        )
        body.add_done_callback(lambda _error: timer.cancel())
