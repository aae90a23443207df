"""The trace filter (meshd/pipeline/tracing.py): context in, sampling, W3C context out."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from meshd.http.body import Body
from meshd.http.messages import Headers, Request
from meshd.pipeline.context import RouteContext
from meshd.pipeline.hygiene import TrustPolicy
from meshd.pipeline.tracing import trace_filter
from meshd.tracing.propagation import parse_traceparent
from meshd.tracing.spans import SERVER, Tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRUSTED = "127.0.0.1"
UNTRUSTED = "10.1.2.3"


def run(
    headers: Headers,
    *,
    rate: float = 0.0,
    client_ip: str = TRUSTED,
    l5d: dict[str, bytes] | None = None,
    tracer: Tracer | None = None,
) -> tuple[RouteContext, Tracer]:
    tracer = tracer if tracer is not None else Tracer(rate, rng=random.Random(3))
    request = Request("GET", "/balance", "1.1", headers, Body.of(b""), l5d=l5d, client_ip=client_ip)
    ctx = RouteContext(request)
    trace_filter(tracer, TrustPolicy(["127.0.0.0/8"]), "outgoing")(ctx)
    return ctx, tracer


def sent(ctx: RouteContext, name: bytes) -> list[bytes]:
    return [v for n, v in ctx.request.headers if n.lower() == name]


def test_a_new_unsampled_trace_sends_w3c_context_with_the_flag_off() -> None:
    ctx, tracer = run([(b"Accept", b"*/*")], rate=0.001)  # Random(3)'s first draw is not below 0.001
    assert len(ctx.trace_id) == 32 and ctx.span is None and tracer.sample_rate > 0
    (value,) = sent(ctx, b"traceparent")
    parsed = parse_traceparent(value)
    assert parsed is not None and parsed.trace_id == ctx.trace_id and parsed.sampled == 0


def test_at_rate_zero_a_request_without_context_goes_on_without_one() -> None:
    headers: Headers = [(b"Accept", b"*/*")]
    ctx, _ = run(headers, rate=0.0)
    assert ctx.trace_id == "" and ctx.span is None  # not traced: no id, no header
    assert ctx.request.headers is headers and headers == [(b"Accept", b"*/*")]
    # a trusted caller can still force sampling at rate 0 ...
    forced, _ = run([(b"Accept", b"*/*")], rate=0.0, l5d={"l5d-sample": b"1"})
    assert forced.span is not None
    # ... and context that came in, even malformed, is passed on (a valid one in its place)
    for value in [f"00-{TRACE}-{SPAN}-00".encode(), b"00-nonsense"]:
        ctx, _ = run([(b"traceparent", value)], rate=0.0)
        (out,) = sent(ctx, b"traceparent")
        parsed = parse_traceparent(out)
        assert parsed is not None and parsed.trace_id == ctx.trace_id and parsed.sampled == 0
    b3, _ = run([(b"b3", f"{TRACE}-{SPAN}-0".encode())], rate=0.0)
    assert sent(b3, b"traceparent") == [f"00-{TRACE}-{SPAN}-00".encode()]


def test_a_sampled_request_has_a_server_span_and_leaves_traceparent_to_each_attempt() -> None:
    ctx, _ = run([(b"Accept", b"*/*")], rate=1.0)
    span = ctx.span
    assert span is not None and span.kind == SERVER and span.trace_id == ctx.trace_id
    assert span.parent_id == "" and span.router == "outgoing" and span.method == "GET"
    assert sent(ctx, b"traceparent") == []  # the client writes one per attempt
    child = span.child("/#/fs/accounts", "127.0.0.1:8080", 1)
    assert child.parent_id == span.span_id and child.trace_id == span.trace_id
    assert child.traceparent_line() == f"traceparent: 00-{span.trace_id}-{child.span_id}-01\r\n".encode()


def test_an_unsampled_caller_context_goes_on_untouched() -> None:
    headers: Headers = [(b"traceparent", f"00-{TRACE}-{SPAN}-00".encode()), (b"tracestate", b"a=1")]
    before = list(headers)
    ctx, tracer = run(headers, rate=1.0)  # a trusted caller's "not sampled" wins over the rate
    assert ctx.trace_id == TRACE and ctx.span is None
    assert ctx.request.headers is headers and headers == before
    assert tracer.malformed == {}


def test_a_trusted_callers_sampled_flag_is_followed_and_its_span_is_the_parent() -> None:
    ctx, _ = run([(b"TraceParent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"a=1")], rate=0.0)
    assert ctx.span is not None and ctx.span.trace_id == TRACE and ctx.span.parent_id == SPAN
    assert sent(ctx, b"traceparent") == [] and sent(ctx, b"tracestate") == [b"a=1"]


def test_an_untrusted_caller_cannot_force_sampling() -> None:
    headers: Headers = [(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"a=1")]
    ctx, _ = run(headers, rate=0.0, client_ip=UNTRUSTED, l5d={"l5d-sample": b"1"})
    assert ctx.span is None and ctx.trace_id == TRACE  # the trace goes on, unsampled
    # ... and the next hop (which trusts this meshd) is told "not sampled", with the caller's parent
    assert sent(ctx, b"traceparent") == [f"00-{TRACE}-{SPAN}-00".encode()]
    assert sent(ctx, b"tracestate") == [b"a=1"]


def test_a_trusted_l5d_sample_sets_the_rate_for_the_request() -> None:
    forced, _ = run([], rate=0.0, l5d={"l5d-sample": b"1"})
    assert forced.span is not None
    forbidden, _ = run([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())], rate=1.0, l5d={"l5d-sample": b"0"})
    assert forbidden.span is None
    assert sent(forbidden, b"traceparent") == [f"00-{TRACE}-{SPAN}-00".encode()]
    bad, tracer = run([], rate=1.0, l5d={"l5d-sample": b"lots"})
    assert bad.span is not None and tracer.malformed == {"l5d-sample": 1}  # ignored: the rate decides


def test_a_malformed_traceparent_starts_a_new_trace_and_is_counted() -> None:
    tracer = Tracer(0.0)
    for value in [b"00-nonsense", f"00-{TRACE}-{'0' * 16}-01".encode()]:
        ctx, _ = run([(b"traceparent", value), (b"tracestate", b"a=1")], tracer=tracer)
        assert ctx.trace_id != TRACE and len(ctx.trace_id) == 32
        (out,) = sent(ctx, b"traceparent")
        parsed = parse_traceparent(out)
        assert parsed is not None and parsed.trace_id == ctx.trace_id
        assert sent(ctx, b"tracestate") == []  # it belonged to the invalid traceparent
    assert tracer.malformed == {"traceparent": 2}
    # two traceparent headers are malformed too
    two = f"00-{TRACE}-{SPAN}-01".encode()
    ctx, _ = run([(b"traceparent", two), (b"traceparent", two)], tracer=tracer)
    assert ctx.trace_id != TRACE and tracer.malformed == {"traceparent": 3}


def test_b3_in_w3c_out() -> None:
    ctx, _ = run([(b"B3", f"{TRACE}-{SPAN}-0".encode()), (b"Accept", b"*/*")], rate=1.0)
    assert ctx.trace_id == TRACE and ctx.span is None  # a trusted B3 "not sampled" is followed
    assert sent(ctx, b"b3") == [] and sent(ctx, b"traceparent") == [f"00-{TRACE}-{SPAN}-00".encode()]
    assert sent(ctx, b"accept") == [b"*/*"]
    multi: Headers = [
        (b"X-B3-TraceId", SPAN.encode()),
        (b"X-B3-SpanId", SPAN.encode()),
        (b"X-B3-ParentSpanId", b"0000000000000001"),
        (b"X-B3-Sampled", b"1"),
        (b"X-Forwarded-For", b"10.0.0.1"),
    ]
    ctx, _ = run(multi, rate=0.0)
    assert ctx.span is not None and ctx.trace_id == "0" * 16 + SPAN and ctx.span.parent_id == SPAN
    assert [n for n, _ in ctx.request.headers] == [b"X-Forwarded-For"]
    bad, tracer = run([(b"b3", b"nonsense")])
    assert bad.trace_id and tracer.malformed == {"b3": 1}


def test_sample_rates_zero_one_and_between() -> None:
    tracer = Tracer(0.0, rng=random.Random(5))
    assert not any(run([], tracer=tracer)[0].span for _ in range(200))
    tracer.configure(1.0, "meshd", "")
    assert all(run([], tracer=tracer)[0].span for _ in range(200))
    tracer.configure(0.25, "meshd", "")
    sampled = sum(run([], tracer=tracer)[0].span is not None for _ in range(4000))
    assert 850 < sampled < 1150


_NAMES = st.sampled_from([b"traceparent", b"TraceParent", b"tracestate", b"b3", b"B3", b"X-B3-TraceId",
                          b"x-b3-spanid", b"X-B3-Sampled", b"X-B3-Flags", b"Accept", b"t", b"x"])
_VALUES = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([f"00-{TRACE}-{SPAN}-01".encode(), f"00-{TRACE}-{SPAN}-00".encode(), TRACE.encode(),
                     SPAN.encode(), f"{TRACE}-{SPAN}-1".encode(), b"1", b"0", b"d"]),
)


@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    st.sampled_from([TRUSTED, UNTRUSTED]),
    st.sampled_from([0.0, 1.0]),
    st.one_of(st.none(), st.binary(max_size=5)),
)
def test_whatever_the_headers_the_filter_leaves_one_valid_w3c_context(
    headers: Headers, client_ip: str, rate: float, sample: bytes | None
) -> None:
    headers_in = [(n.lower(), v) for n, v in headers]
    ctx, _ = run(list(headers), rate=rate, client_ip=client_ip, l5d=None if sample is None else {"l5d-sample": sample})
    untraced = rate == 0.0 and not any(n in (b"traceparent", b"b3") or n.startswith(b"x-b3-") for n, _ in headers_in)
    if untraced and ctx.span is None:  # rate 0, no context came in: not traced at all
        assert ctx.trace_id == "" and ctx.request.headers == list(headers)
        return
    assert len(ctx.trace_id) == 32 and not ctx.trace_id.strip("0123456789abcdef") and ctx.trace_id.strip("0")
    names = [n.lower() for n, _ in ctx.request.headers]
    assert not any(n == b"b3" or n.startswith(b"x-b3-") for n in names)
    parents = sent(ctx, b"traceparent")
    if ctx.span is not None:
        assert parents == [] and ctx.span.trace_id == ctx.trace_id  # each attempt writes its own
    else:
        assert len(parents) == 1
        parsed = parse_traceparent(parents[0])
        assert parsed is not None and parsed.trace_id == ctx.trace_id and parsed.sampled == 0
