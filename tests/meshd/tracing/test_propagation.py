"""The trace context parsers (meshd/tracing/propagation.py): W3C traceparent, B3, l5d-sample."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from meshd.tracing.propagation import (
    UNDECIDED,
    TraceParent,
    format_traceparent,
    parse_b3_multi,
    parse_b3_single,
    parse_sample_rate,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
hex_ids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s.strip("0"))
span_ids = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s.strip("0"))


def test_the_w3c_example() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode())
    assert parsed == TraceParent(TRACE, SPAN, 1)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == TraceParent(TRACE, SPAN, 0)
    # only bit 0 of the flags is the sampled flag
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-03".encode()) == TraceParent(TRACE, SPAN, 1)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-02".encode()) == TraceParent(TRACE, SPAN, 0)


def test_malformed_traceparents_are_none() -> None:
    for bad in [
        b"",
        b"00",
        f"00-{TRACE}-{SPAN}".encode(),  # no flags
        f"00-{TRACE.upper()}-{SPAN}-01".encode(),  # upper-case hex
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"ff-{TRACE}-{SPAN}-01".encode(),  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra".encode(),  # version 00 is exactly 55 characters
        f"0g-{TRACE}-{SPAN}-01".encode(),
        f"00_{TRACE}-{SPAN}-01".encode(),
        f"00-{TRACE[:-1]}x-{SPAN}-01".encode(),
        f"00-{TRACE}-{SPAN}-0x".encode(),
        f"00-{TRACE}-{SPAN}-01 ".encode(),
    ]:
        assert parse_traceparent(bad) is None, bad


def test_a_later_version_may_carry_more_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-what-ever".encode()) == TraceParent(TRACE, SPAN, 1)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01".encode()) == TraceParent(TRACE, SPAN, 1)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01x".encode()) is None


@given(hex_ids, span_ids, st.booleans())
def test_format_then_parse_round_trips(trace_id: str, span_id: str, sampled: bool) -> None:
    value = format_traceparent(trace_id, span_id, sampled)
    assert len(value) == 55
    assert parse_traceparent(value) == TraceParent(trace_id, span_id, int(sampled))


@given(st.binary(max_size=80))
@example(b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-\xff\xff")
@example(b"\xff" * 55)
def test_parse_never_raises(value: bytes) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None:  # whatever it accepts has valid ids and formats back to itself
        assert len(parsed.trace_id) == 32 and len(parsed.parent_id) == 16
        again = parse_traceparent(format_traceparent(parsed.trace_id, parsed.parent_id, parsed.sampled == 1))
        assert again == parsed


@given(st.text(alphabet="0123456789abcdef-", min_size=50, max_size=60))
def test_parse_never_raises_on_nearly_valid_text(value: str) -> None:
    parse_traceparent(value.encode())


def test_b3_single() -> None:
    assert parse_b3_single(f"{TRACE}-{SPAN}-1".encode()) == TraceParent(TRACE, SPAN, 1)
    assert parse_b3_single(f"{TRACE}-{SPAN}-0-{SPAN}".encode()) == TraceParent(TRACE, SPAN, 0)
    assert parse_b3_single(f"{TRACE}-{SPAN}-d".encode()) == TraceParent(TRACE, SPAN, 1)
    assert parse_b3_single(f"{TRACE}-{SPAN}".encode()) == TraceParent(TRACE, SPAN, UNDECIDED)
    # a 64-bit trace id is widened with leading zeros; upper case is accepted, written lower
    assert parse_b3_single(f"{SPAN.upper()}-{SPAN}-1".encode()) == TraceParent("0" * 16 + SPAN, SPAN, 1)
    assert parse_b3_single(b"1") == TraceParent("", "", 1)
    assert parse_b3_single(b"0") == TraceParent("", "", 0)
    for bad in [b"", b"x", b"2", f"{TRACE}".encode(), f"{TRACE}-{SPAN}-7".encode(), f"{TRACE}-abc-1".encode(),
                f"{'0' * 32}-{SPAN}-1".encode(), f"{TRACE}-{SPAN}-1-{SPAN}-more".encode(), f"{TRACE}-{SPAN}-1-zz".encode()]:
        assert parse_b3_single(bad) is None, bad


def test_b3_multi() -> None:
    assert parse_b3_multi(TRACE.encode(), SPAN.encode(), b"1", None) == TraceParent(TRACE, SPAN, 1)
    assert parse_b3_multi(SPAN.encode(), SPAN.encode(), b"0", None) == TraceParent("0" * 16 + SPAN, SPAN, 0)
    assert parse_b3_multi(TRACE.encode(), SPAN.encode(), None, b"1") == TraceParent(TRACE, SPAN, 1)  # debug
    assert parse_b3_multi(TRACE.encode(), SPAN.encode(), b"true", None) == TraceParent(TRACE, SPAN, 1)
    assert parse_b3_multi(TRACE.encode(), SPAN.encode(), None, None) == TraceParent(TRACE, SPAN, UNDECIDED)
    assert parse_b3_multi(None, None, b"1", None) == TraceParent("", "", 1)
    assert parse_b3_multi(None, None, None, None) is None
    assert parse_b3_multi(TRACE.encode(), None, b"1", None) is None
    assert parse_b3_multi(TRACE.encode(), SPAN.encode(), b"maybe", None) is None
    assert parse_b3_multi(b"xyz", SPAN.encode(), b"1", None) is None


@given(st.binary(max_size=90), st.one_of(st.none(), st.binary(max_size=20)))
def test_b3_parsers_never_raise(value: bytes, other: bytes | None) -> None:
    parse_b3_single(value)
    parse_b3_multi(value, other, other, other)
    parse_sample_rate(value)


def test_sample_rate() -> None:
    assert parse_sample_rate(b"1") == 1.0
    assert parse_sample_rate(b"0") == 0.0
    assert parse_sample_rate(b"0.25") == 0.25
    for bad in [b"", b"1.5", b"-0.1", b"nan", b"inf", b"half", b"\xff"]:
        assert parse_sample_rate(bad) is None, bad


_REFERENCE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)


def reference(value: str) -> TraceParent | None:
    """The W3C rules written as plainly as possible, to check the parser's fast path against."""
    m = _REFERENCE.fullmatch(value)
    if m is None or m[1] == "ff" or (m[1] == "00" and m[5] is not None):
        return None
    if set(m[2]) == {"0"} or set(m[3]) == {"0"}:
        return None
    return TraceParent(m[2], m[3], int(m[4], 16) & 1)


@given(st.text(alphabet="0123456789abcdefA-", min_size=53, max_size=58))
@example("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
@example("00-" + "1" * 32 + "-" + "1" * 16 + "-0f")
@example("ff-" + "1" * 32 + "-" + "1" * 16 + "-01")
def test_the_parser_agrees_with_the_plain_reading_of_the_spec(value: str) -> None:
    assert parse_traceparent(value.encode()) == reference(value)


@given(hex_ids, span_ids, st.text(alphabet="0123456789abcdef", min_size=2, max_size=2))
def test_every_flags_byte_reads_its_low_bit(trace_id: str, span_id: str, flags: str) -> None:
    parsed = parse_traceparent(f"00-{trace_id}-{span_id}-{flags}".encode())
    assert parsed == TraceParent(trace_id, span_id, int(flags, 16) & 1)
