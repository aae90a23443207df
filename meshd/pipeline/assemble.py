"""The canonical order of the request pipeline, and why each stage sits where it does.

Every stage takes the request's `RouteContext` (context.py), made by the listener: the wire
request plus what the stages learn; each stage below says which of its fields it sets. The path
of one request, function by function from the listener's socket to the upstream connection, is
written out in meshd/pipeline/__init__.py.

Router level (one chain per router, in this order, outermost first):
(`trace`, only when `tracing` is configured: reads the caller's trace context, decides sampling,
   sets `ctx.trace_id` and, for a sampled request, `ctx.span`; first, so that an error raised by
   any later stage, hygiene's included, is answered with the trace id. It asks the same trust
   policy as hygiene whether the caller may force sampling; see meshd/pipeline/tracing.py.)
1. (stats and errors) — not stages: the listener records every response it writes, by router,
   service, status class and latency, meshd's own errors and its 400s to malformed requests
   included; and it is the error responder: every MeshdError raised below becomes a response
   carrying `l5d-err`, so nothing below needs to build error responses.
2. `hygiene` (a filter) — before anything reads `l5d-*` headers: untrusted ones are stripped, trusted
   context is adopted (`ctx.local_dtab`; the deadline header is left for `timeouts`), forwarding
   headers and the request id (`ctx.reqid`) are added.
(`identity`, only on routers that verify client certificates: `ctx.peer_identity` goes to the
   upstream and to identifiers as `l5d-client-id`; after hygiene, which drops a caller's own.)
3. `identify` (a filter) — the identifier names the logical service (`/svc/accounts`):
   `ctx.logical_path`, `ctx.logical_name`.
(`authorize`, only on routers with an authorization policy or a routes file: the policy decides
   on the logical name and `ctx.peer_identity`; a denial is a 403 before anything is bound.)
Then the terminal `bind` step binds the name through the dtab (cached) into `ctx.chooser` and
hands the context to that logical name's service chain.

Service level (one chain per logical name):
(`access_log`, only when the router has `accessLog: true` — absent otherwise, so a disabled log
   costs nothing.) Outermost at this level, so it sees the request's final outcome: the response
   the client gets after every retry, or the error (a total-timeout or deadline 504 included)
   that the error responder will turn into one, together with `ctx.attempts` and, through
   the retry stage's attempt hook, where each attempt went. It sits at the service level
   rather than the router level because it needs the service's retry stage to report attempts;
   requests that fail before a service is chosen (unidentified, unbound) are not logged.
4. `classify` (a filter) — attaches the service's response classifier (`ctx.classifier`), which
   failure accrual below uses too.
5. `timeouts` — total timeout and deadline propagation (`ctx.deadline`); above retries, so the whole retry loop
   (backoff included) is bounded by the caller's deadline, and an expired incoming deadline is
   refused before the retry budget or any upstream is touched.
6. `retries` — above the choice of destination, so every attempt picks again: another union
   branch (canary) and, in the client, another endpoint (`ctx.last_node` is avoided). Counts
   `ctx.attempts`.
Then the terminal step picks the bound destination for this attempt with `ctx.chooser` and calls
its client.

Filters (sync request-only stages) run inside one coroutine in front of the next stage; see
`stack.py` for why.

Client level (one per bound name, see meshd/client.py): the balancer picks an endpoint (P2C over
Peak EWMA by default) and failure accrual skips ejected ones; the attempt timeout bounds one
attempt; dispatch sends the wire request (`ctx.request`) over a pooled connection.
"""

from __future__ import annotations

import random
from typing import Final

from meshd.clock import MONOTONIC, Clock
from meshd.config.model import ServiceConfig
from meshd.grpc.timeout import GrpcTimeoutCounters
from meshd.pipeline.access_log import AccessLog
from meshd.pipeline.authorize import Authorization, authorize_filter, identity_filter
from meshd.pipeline.context import RouteContext
from meshd.pipeline.hygiene import RequestIds, TrustPolicy, hygiene_filter
from meshd.pipeline.identify import identify_filter
from meshd.pipeline.retries import RetriesStage, RetryCounters, retries_stage
from meshd.pipeline.stack import Filter, Stack
from meshd.pipeline.timeouts import TimeoutCounters, timeout_stage
from meshd.pipeline.tracing import trace_filter
from meshd.retry.budget import RetryBudget
from meshd.retry.classifiers import ResponseClassifier
from meshd.retry.deadline import WallClock
from meshd.tracing.spans import Tracer
from routing.identifiers.base import Identifier

ROUTER_ROLES: Final = ("hygiene", "identify")
"""Without the optional `trace` (first, with tracing on), `identity` (after hygiene) and
`authorize` (after identify)."""
SERVICE_ROLES: Final = ("classify", "timeouts", "retries")
"""Without the optional `access_log`, which goes before `classify` when enabled."""


def router_stack(
    *,
    trust: TrustPolicy,
    ids: RequestIds,
    identifier: Identifier,
    identity: bool = False,
    authorization: Authorization | None = None,
    tracer: Tracer | None = None,
    label: str = "",
) -> Stack:
    """`identity` and `authorize` (meshd/pipeline/authorize.py) are in the chain only when the
    router verifies client certificates, and has a policy or a routes file that may bring one;
    `trace` (meshd/pipeline/tracing.py) only with a `tracer` (tracing configured)."""
    stack = Stack()
    if tracer is not None:
        stack.push_filter("trace", trace_filter(tracer, trust, label))
    stack.push_filter("hygiene", hygiene_filter(trust, ids))
    if identity:
        stack.push_filter("identity", identity_filter())
    stack.push_filter("identify", identify_filter(identifier))
    if authorization is not None:
        stack.push_filter("authorize", authorize_filter(authorization))
    return stack


def service_stack(
    *,
    config: ServiceConfig,
    classifier: ResponseClassifier,
    budget: RetryBudget,
    retry_counters: RetryCounters,
    wall: WallClock,
    timeouts: TimeoutCounters,
    rng: random.Random,
    access_log: AccessLog | None = None,
    clock: Clock = MONOTONIC,
    grpc: GrpcTimeoutCounters | None = None,
    retries: RetriesStage | None = None,
) -> Stack:
    """`grpc`: the router's `grpc-timeout` counters on a router that can carry gRPC (`protocol:
    h2`); None on HTTP/1-only routers, whose timeouts stage then scans no header for gRPC.
    `retries`: the retry stage, when the caller built it with `retries_for` (the router does,
    to give the fast path the same stage); else built here from the same arguments."""
    stack = Stack()
    if access_log is not None:
        stack.push("access_log", access_log.stage())
    if retries is None:
        retries = retries_for(
            config=config, classifier=classifier, budget=budget, retry_counters=retry_counters,
            timeouts=timeouts, rng=rng, access_log=access_log, clock=clock,
        )
    return (
        stack.push_filter("classify", classify_filter(classifier))
        .push("timeouts", timeout_stage(config.total_timeout_ms, wall, timeouts, clock, grpc))
        .push("retries", retries)
    )


def retries_for(
    *,
    config: ServiceConfig,
    classifier: ResponseClassifier,
    budget: RetryBudget,
    retry_counters: RetryCounters,
    timeouts: TimeoutCounters,
    rng: random.Random,
    access_log: AccessLog | None = None,
    clock: Clock = MONOTONIC,
) -> RetriesStage:
    """The service's retry stage, from its config (see `service_stack`)."""
    return retries_stage(
        classifier,
        budget,
        config.retries.backoff.build(rng),
        retry_counters,
        timeouts,
        add_success_class=config.add_success_class_header,
        replay_limit=config.replay_buffer_bytes,
        max_retries=config.retries.max_retries,
        max_requeues=config.retries.max_requeues,
        on_attempt=access_log.on_attempt if access_log is not None else None,
        clock=clock,
    )


def classify_filter(classifier: ResponseClassifier) -> Filter:
    def classify(ctx: RouteContext) -> None:
        ctx.classifier = classifier

    return classify
