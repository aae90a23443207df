"""Retries: classify every attempt, retry what is safe, within the service's retry budget, with backoff.

How this works: every request deposits into the budget once; each retry must withdraw. An
attempt is retried when the classifier calls it a retryable failure: a 5xx on a method it deems
retryable, a transport error after writing on such a method, or any error before the request
was written (connect refused, pool exhausted: nothing reached the upstream, so every method is
safe). It is never retried once the request body outgrew the replay buffer, and never after a
non-idempotent request reached the upstream. Each retry picks again (the balancer is asked to
avoid the node that just failed) and may bind to another union branch. Retries sit below the
total timeout, so the whole loop, backoff included, is bounded by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from meshd.errors import (
    AttemptTimeout,
    MeshdError,
    NoEndpoints,
    NoSuchService,
    RequestTimeout,
    UpstreamFailed,
)
from meshd.http.body import NotReplayable
from meshd.http.headers import L5D_RETRYABLE, L5D_SUCCESS_CLASS
from meshd.http.messages import Request, Response
from meshd.pipeline.stack import Service, Stage
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.retry.backoff import BackoffPolicy
from meshd.retry.budget import RetryBudget
from meshd.retry.classifiers import ResponseClass, ResponseClassifier, success_class

Sleep = Callable[[float], Awaitable[None]]

_SUCCESS = {cls: success_class(cls).encode("ascii") for cls in ResponseClass}


class RetryCounters:
    """Per-service retry counts by reason, read by the metrics exporter."""

    __slots__ = ("response", "error", "requeue", "budget_exhausted", "not_replayable")

    def __init__(self) -> None:
        self.response = 0
        self.error = 0
        self.requeue = 0
        self.budget_exhausted = 0
        self.not_replayable = 0


class RetryDiscarded(Exception):
    """The response of an attempt that is being retried was discarded."""


def classify_error(classifier: ResponseClassifier, method: str, exc: MeshdError) -> ResponseClass:
    if isinstance(exc, NoSuchService | NoEndpoints):
        return ResponseClass.FAILURE  # another pick cannot help
    if not exc.written:
        return ResponseClass.RETRYABLE_FAILURE
    if isinstance(exc, UpstreamFailed | RequestTimeout):
        return classifier.classify_error(method, True)
    return ResponseClass.FAILURE


def retries_stage(
    classifier: ResponseClassifier,
    budget: RetryBudget,
    backoff: BackoffPolicy,
    counters: RetryCounters,
    timeouts: TimeoutCounters,
    *,
    add_success_class: bool,
    sleep: Sleep = asyncio.sleep,
) -> Stage:
    def wrap(next_service: Service) -> Service:
        async def retry(request: Request) -> Response:
            budget.deposit()
            schedule = None
            while True:
                request.attempts += 1
                try:
                    response = await next_service(request)
                except MeshdError as exc:
                    if isinstance(exc, AttemptTimeout):
                        timeouts.attempt += 1
                    if classify_error(classifier, request.method, exc) is not ResponseClass.RETRYABLE_FAILURE:
                        raise
                    reason = "requeue" if not exc.written else "error"
                    if not _may_retry(request, budget, counters):
                        raise
                else:
                    status = response.status
                    if status < 500:
                        if add_success_class:
                            response.headers.append((L5D_SUCCESS_CLASS, b"1.0"))
                        return response
                    hint = any(n.lower() == L5D_RETRYABLE and v.strip().lower() == b"true" for n, v in response.headers)
                    cls = classifier.classify_response(request.method, status, hint)
                    if cls is not ResponseClass.RETRYABLE_FAILURE or not _may_retry(request, budget, counters):
                        if add_success_class:
                            response.headers.append((L5D_SUCCESS_CLASS, _SUCCESS[cls]))
                        return response
                    reason = "response"
                    if not response.body.ended:
                        response.body.cancel(RetryDiscarded("response discarded: the request is retried"))
                if reason == "response":
                    counters.response += 1
                elif reason == "error":
                    counters.error += 1
                else:
                    counters.requeue += 1
                if schedule is None:
                    schedule = backoff.schedule()
                delay = next(schedule)
                if delay > 0:
                    await sleep(delay)

        return retry

    return wrap


def _may_retry(request: Request, budget: RetryBudget, counters: RetryCounters) -> bool:
    body = request.body
    if not body.replayable:
        counters.not_replayable += 1
        return False
    if not budget.try_withdraw():
        counters.budget_exhausted += 1
        return False
    try:
        body.rewind()
    except NotReplayable:
        counters.not_replayable += 1
        return False
    return True
