"""The trace filter: read the caller's trace context, decide sampling, pass W3C context on.

In the router's chain only when `tracing` is configured (docs/tracing.md), first, before
hygiene: so every error meshd answers from the pipeline, hygiene's included, carries the
request's trace id (`l5d-trace-id`, added by the listener next to `l5d-err`). It sets
`ctx.trace_id` (except at rate 0 for a request with no context) and `ctx.span` (the request's
SERVER span) when the request is sampled.

Context in: a valid W3C `traceparent` wins; else a B3 single `b3` header; else the B3 multi
headers (`X-B3-TraceId`, ...). A malformed one (or two `traceparent` headers) starts a new trace
and is counted (`meshd_trace_malformed_headers_total`); it is never an error.

Sampling: a trusted caller (the router's `trustedSources`, the same policy hygiene applies to
`l5d-*` headers) may set the rate for this request with linkerd 1's `l5d-sample: <0..1>`
(`1` forces sampling, `0` forbids it), and its sampled flag (traceparent's, B3's) is followed.
From anyone else both are ignored: the request is sampled at `sampleRate`, the trace id kept.

Context out (W3C only: B3 headers are removed): a sampled request's `traceparent` is written
per attempt by the client, naming the attempt's span as the parent. An unsampled request keeps
a valid incoming `traceparent` as it is when its flag already says unsampled (no allocation);
otherwise one `traceparent` with flag 00 replaces it. `tracestate` travels with a valid
`traceparent` and is dropped with an invalid one. One exception: at `sampleRate: 0` a request
that brought no context at all (no `traceparent`, no B3) is not traced: no trace id (so no
`l5d-trace-id`, and `-` in the access log) and no header, as through a meshd without tracing.
"""

from __future__ import annotations

from typing import Final

from meshd.http.messages import Headers, Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.hygiene import TrustPolicy
from meshd.pipeline.stack import Filter
from meshd.tracing.propagation import (
    UNDECIDED,
    TraceParent,
    format_traceparent,
    parse_b3_multi,
    parse_b3_single,
    parse_sample_rate,
    parse_traceparent,
)
from meshd.tracing.spans import SERVER, Span, Tracer

TRACEPARENT: Final = b"traceparent"
L5D_TRACE_ID: Final = b"l5d-trace-id"
L5D_SAMPLE: Final = "l5d-sample"
_T: Final = 116  # "t" (a header name's first byte, lower-cased with | 0x20)
_B: Final = 98  # "b"
_X: Final = 120  # "x"
_ZERO_SPAN: Final = "0" * 16


def trace_filter(tracer: Tracer, trust: TrustPolicy, router: str) -> Filter:
    def trace(ctx: RouteContext) -> None:
        request = ctx.request
        headers = request.headers
        traceparent: bytes | None = None
        traceparents = 0
        b3: bytes | None = None
        b3_multi = False
        for name, value in headers:
            n = len(name)
            if n < 2:
                continue
            c = name[0] | 0x20
            if c == _T:
                if n == 11 and name.lower() == TRACEPARENT:
                    traceparent = value
                    traceparents += 1
            elif c == _B:
                if n == 2 and (name[1] == 51):  # "b3"
                    b3 = value
            elif c == _X:
                if n >= 10 and name[:5].lower() == b"x-b3-":
                    b3_multi = True
        parent: TraceParent | None = None
        from_traceparent = False
        if traceparent is not None:
            if traceparents == 1:
                parent = parse_traceparent(traceparent)
            if parent is None:
                tracer.count_malformed("traceparent")
            else:
                from_traceparent = True
        elif b3 is not None:
            parent = parse_b3_single(b3)
            if parent is None:
                tracer.count_malformed("b3")
        elif b3_multi:
            parent = _b3_multi(headers)
            if parent is None:
                tracer.count_malformed("b3")
        # the sampling decision: a trusted caller's l5d-sample, else a trusted caller's flag, else the rate
        rate = tracer.sample_rate
        l5d = request.l5d
        forced = l5d.get(L5D_SAMPLE) if l5d else None
        if forced is not None and trust.is_trusted(request.client_ip):
            given = parse_sample_rate(forced)
            if given is None:
                tracer.count_malformed(L5D_SAMPLE)
            else:
                rate = given
            sampled = tracer.decide(rate)
        elif parent is not None and parent.sampled != UNDECIDED and trust.is_trusted(request.client_ip):
            sampled = parent.sampled == 1
        else:
            sampled = tracer.decide(rate)
        if parent is not None and parent.trace_id:
            trace_id = parent.trace_id
            parent_id = parent.parent_id
        elif not sampled and tracer.sample_rate == 0.0 and traceparent is None and b3 is None and not b3_multi:
            # rate 0 and no context came in: not traced at all, as through a meshd without tracing
            # (no trace id, no header; docs/tracing.md, "Propagation")
            return
        else:
            trace_id = tracer.new_trace_id()
            parent_id = ""
        ctx.trace_id = trace_id
        if sampled:
            span = Span(tracer, trace_id, tracer.new_span_id(), parent_id, SERVER, router, request.method)
            span.target = request.target
            span.client_ip = request.client_ip
            ctx.span = span
        elif from_traceparent and parent is not None and parent.sampled == 0 and b3 is None and not b3_multi:
            return  # the common unsampled case: the caller's traceparent goes on unchanged
        # rewrite the context headers: drop B3, and traceparent (and tracestate unless it stays valid)
        if traceparent is not None or b3 is not None or b3_multi:
            request.headers = headers = _without_context(headers, keep_tracestate=from_traceparent)
        if not sampled:
            if not parent_id:
                # a new trace, not recorded: the parent id the upstream sees only has to be random
                # and not zero, and the trace id's low half is both (almost always: else a new one)
                parent_id = trace_id[16:]
                if parent_id == _ZERO_SPAN:
                    parent_id = tracer.new_span_id()
            headers.append((TRACEPARENT, format_traceparent(trace_id, parent_id, False)))

    return trace


def _without_context(headers: Headers, *, keep_tracestate: bool) -> Headers:
    """The headers without traceparent and B3 (and tracestate unless it is kept)."""
    kept: Headers = []
    for name, value in headers:
        low = name.lower()
        if low == TRACEPARENT or low == b"b3" or low.startswith(b"x-b3-"):
            continue
        if low == b"tracestate" and not keep_tracestate:
            continue
        kept.append((name, value))
    return kept


def _b3_multi(headers: Headers) -> TraceParent | None:
    trace_id: bytes | None = None
    span_id: bytes | None = None
    sampled: bytes | None = None
    flags: bytes | None = None
    for name, value in headers:
        low = name.lower()
        if low == b"x-b3-traceid":
            trace_id = value
        elif low == b"x-b3-spanid":
            span_id = value
        elif low == b"x-b3-sampled":
            sampled = value
        elif low == b"x-b3-flags":
            flags = value
    return parse_b3_multi(trace_id, span_id, sampled, flags)


def end_request(ctx: RouteContext, span: Span, response: Response) -> None:
    """The listener has the response (meshd's own error response included): end the request's span."""
    span.logical_name = ctx.logical_name
    span.reqid = ctx.reqid
    span.attempt = ctx.attempts
    error = ""
    if response.status >= 400:
        for name, value in response.headers:
            if name == b"l5d-err":
                error = value.decode("latin-1")
                break
    span.end(response.status, "", error)


def trace_id_header(trace_id: str) -> tuple[bytes, bytes]:
    """The `l5d-trace-id` header meshd adds to its own error responses (docs/errors.md)."""
    return (L5D_TRACE_ID, trace_id.encode("ascii"))
