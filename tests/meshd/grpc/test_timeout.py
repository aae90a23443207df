"""grpc-timeout: parsing, formatting and combining with meshd's deadline."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshd.grpc.timeout import (
    MAX_SENT_NS,
    GrpcTimeoutCounters,
    combine_deadline,
    downstream_value,
    first_timeout,
    format_timeout,
    parse_timeout,
    request_deadline,
    set_timeout,
)
from meshd.retry.deadline import Deadline

S = 1_000_000_000
UNITS = {"H": 3600 * S, "M": 60 * S, "S": S, "m": 1_000_000, "u": 1_000, "n": 1}


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (b"1S", S),
        (b"250m", 250_000_000),
        (b"100u", 100_000),
        (b"5n", 5),
        (b"2H", 7200 * S),
        (b"3M", 180 * S),
        (b"0n", 0),
        (b"99999999H", 99_999_999 * 3600 * S),
        (b"00000001S", S),  # 8 digits, leading zeros
    ],
)
def test_parses_every_unit(value: bytes, ns: int) -> None:
    assert parse_timeout(value) == ns


@pytest.mark.parametrize(
    "value",
    [b"", b"S", b"1", b"123456789S", b"1s", b"1 S", b" 1S", b"-1S", b"+1S", b"1.5S", b"1SS", b"\xd9\xa1S", b"1x", b"1_0m"],
)
def test_malformed_values_are_none(value: bytes) -> None:
    assert parse_timeout(value) is None


@given(st.binary(max_size=20))
@example(b"\xd9\xa1\xd9\xa1S")  # Arabic-Indic digits: str.isdigit would take them
def test_parse_never_raises_and_is_strict(value: bytes) -> None:
    ns = parse_timeout(value)
    if ns is not None:
        assert 2 <= len(value) <= 9
        assert value[:-1].decode("ascii").isdigit()
        assert ns == int(value[:-1]) * UNITS[chr(value[-1])]


@pytest.mark.parametrize(
    ("ns", "value"),
    [
        (S, b"1S"),
        (250_000_000, b"250m"),
        (1_500_000, b"1500u"),
        (7200 * S, b"2H"),
        (180 * S, b"3M"),
        (90 * S, b"90S"),
        (5, b"5n"),
        (0, b"0n"),
        (-7, b"0n"),
        (99_999_999, b"99999999n"),
        (123_456_789_012, b"123456m"),  # not exact within 8 digits: rounded down
        (MAX_SENT_NS + 1, b"99999999S"),
        (10**30, b"99999999S"),
    ],
)
def test_formats_shortest_exact_else_rounds_down(ns: int, value: bytes) -> None:
    assert format_timeout(ns) == value


@given(st.integers(min_value=0, max_value=MAX_SENT_NS))
def test_round_trip_never_gives_more_time_and_loses_little(ns: int) -> None:
    text = format_timeout(ns)
    assert len(text) <= 9
    back = parse_timeout(text)
    assert back is not None
    assert back <= ns
    # Rounding down in the finest unit that fits 8 digits loses less than that unit, and the unit
    # is at most a 100,000th of the value (the next finer one did not fit 8 digits).
    assert (ns - back) * 100_000 <= ns


@given(st.sampled_from(list(UNITS.values())), st.integers(min_value=0, max_value=99_999_999))
def test_exact_values_round_trip_exactly(unit: int, count: int) -> None:
    ns = count * unit
    if ns <= MAX_SENT_NS:
        assert parse_timeout(format_timeout(ns)) == ns
        assert len(format_timeout(ns)) <= len(b"%d" % count) + 1  # never longer than the input form


@given(st.integers(min_value=-S, max_value=2 * MAX_SENT_NS), st.integers(min_value=-S, max_value=2 * MAX_SENT_NS))
@example(99_999_990 * S, 100_000_000 * S + 1)  # just below and above the seconds/minutes boundary
@example(99_999_999_500, 100_000_000_001)
def test_monotone(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    lo_back = parse_timeout(format_timeout(lo))
    hi_back = parse_timeout(format_timeout(hi))
    assert lo_back is not None and hi_back is not None
    assert lo_back <= hi_back


def test_first_well_formed_value_wins_and_malformed_ones_are_counted() -> None:
    counters = GrpcTimeoutCounters()
    headers = [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"1.5S"), (b"Grpc-Timeout", b"20m"), (b"grpc-timeout", b"1S")]
    assert first_timeout(headers, counters) == 20_000_000
    assert counters.malformed == 1
    assert first_timeout([(b"grpc-timeout", b"x")], counters) is None
    assert counters.malformed == 2
    assert first_timeout([]) is None


def test_the_earlier_of_grpc_timeout_and_l5d_ctx_deadline_wins() -> None:
    now = 1_700_000_000 * S
    caller = Deadline(now - S, now + 5 * S)
    assert combine_deadline(caller, 2 * S, now) == Deadline(now, now + 2 * S)
    assert combine_deadline(caller, 9 * S, now) == Deadline(now, now + 5 * S)
    assert combine_deadline(None, 250_000_000, now) == Deadline(now, now + 250_000_000)
    # a huge timeout never overflows the 64-bit deadline
    assert combine_deadline(None, 99_999_999 * 3600 * S, now).deadline_ns == (1 << 63) - 1


def test_downstream_value_is_the_time_left() -> None:
    assert downstream_value(1.25) == b"1250m"
    assert downstream_value(0.0) == b"0n"
    assert downstream_value(-3.0) == b"0n"
    headers = [(b"grpc-timeout", b"5S"), (b"te", b"trailers"), (b"GRPC-TIMEOUT", b"1S")]
    set_timeout(headers, downstream_value(0.5))
    assert headers == [(b"te", b"trailers"), (b"grpc-timeout", b"500m")]


def test_request_deadline_is_the_stages_one_call() -> None:
    now = 1_700_000_000 * S
    counters = GrpcTimeoutCounters()
    caller = Deadline(now - S, now + 5 * S)
    grpc_2s = [(b"grpc-timeout", b"2S")]
    assert request_deadline(grpc_2s, caller, now, counters) == Deadline(now, now + 2 * S)
    assert counters.applied == 1
    assert request_deadline([(b"grpc-timeout", b"9S")], caller, now, counters) == Deadline(now, now + 5 * S)
    assert counters.applied == 1  # the caller's l5d-ctx-deadline decided
    assert request_deadline([], caller, now, counters) is caller
    assert request_deadline([(b"grpc-timeout", b"2 S")], None, now, counters) is None
    assert (counters.applied, counters.malformed) == (1, 1)
    assert request_deadline(grpc_2s, None, now, counters) == Deadline(now, now + 2 * S)
    assert counters.applied == 2
