"""`l5d-ctx-deadline`: linkerd's "<timestamp_ns> <deadline_ns>" text, strict parsing, combining."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.retry.deadline import (
    HEADER,
    Deadline,
    combine,
    format_deadline,
    parse_deadline,
    parse_deadlines,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
WELL_FORMED = re.compile(r"[ \t]*[+-]?[0-9]+ [+-]?[0-9]+[ \t]*", re.ASCII)
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns


def test_header_name():
    assert HEADER == "l5d-ctx-deadline"


def test_linkerd_wire_example():
    d = parse_deadline("1700000000000000000 1700000000250000000")
    assert d == Deadline(T0, T0 + 250_000_000)
    assert format_deadline(d) == "1700000000000000000 1700000000250000000"
    assert d.remaining(T0 + 50_000_000) == pytest.approx(0.2)


@given(INT64, INT64)
def test_format_then_parse_round_trips(timestamp, deadline):
    d = Deadline(timestamp, deadline)
    text = format_deadline(d)
    assert parse_deadline(text) == d
    assert WELL_FORMED.fullmatch(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 1 2 ", Deadline(1, 2)),  # optional whitespace around a field value is not part of it
        ("\t1 2\t", Deadline(1, 2)),
        ("-5 +7", Deadline(-5, 7)),  # Java's parseLong takes either sign
        ("0001 0002", Deadline(1, 2)),
        ("9223372036854775807 -9223372036854775808", Deadline(2**63 - 1, -(2**63))),
    ],
)
def test_accepted_shapes(value, expected):
    assert parse_deadline(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "1",
        "1 ",
        "1 2 3",  # linkerd silently ignored extra fields; meshd calls it malformed
        "1  2",
        "1\t2",
        "1,2",
        "a b",
        "1 b",
        "1.5 2",
        "1e3 2",
        "1_000 2",
        "0x10 2",
        "+ 2",
        "- 2",
        "--1 2",
        "\u0661 2",  # ARABIC-INDIC DIGIT ONE: int() would take it
        "\uff11 2",  # FULLWIDTH DIGIT ONE
        "9223372036854775808 0",  # one past Long.MaxValue
        "0 -9223372036854775809",
        "1" * 5000 + " 2",  # past int()'s digit limit: must be None, not an exception
    ],
)
def test_malformed_values_are_none(value):
    assert parse_deadline(value) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_to_none_or_a_deadline_that_round_trips(text):
    parsed = parse_deadline(text)
    if parsed is None:
        return
    assert WELL_FORMED.fullmatch(text)
    assert parse_deadline(format_deadline(parsed)) == parsed


@settings(max_examples=200, deadline=None)
@given(INT64, INT64, st.sampled_from(["", " ", "\t", "  "]), st.sampled_from(["", "+", "0", "00"]))
def test_padded_and_signed_values_parse(timestamp, deadline, pad, prefix):
    def show(n: int) -> str:
        return f"-{prefix.lstrip('+')}{-n}" if n < 0 else f"{prefix}{n}"

    assert parse_deadline(f"{pad}{show(timestamp)} {show(deadline)}{pad}") == Deadline(timestamp, deadline)


def test_combine_takes_the_earlier_deadline_and_the_later_timestamp():
    incoming = Deadline(T0, T0 + 300)
    own = Deadline(T0 + 10, T0 + 200)
    assert combine(incoming, own) == Deadline(T0 + 10, T0 + 200)
    assert combine(Deadline(T0 + 20, T0 + 100), own) == Deadline(T0 + 20, T0 + 100)
    assert combine(None, own) == own


@given(INT64, INT64, INT64, INT64)
def test_combine_is_the_strictest_of_both(t1, d1, t2, d2):
    a, b = Deadline(t1, d1), Deadline(t2, d2)
    c = combine(a, b)
    assert c == combine(b, a)
    assert c.deadline_ns == min(d1, d2)
    assert c.timestamp_ns == max(t1, t2)


def test_several_header_values_combine_and_malformed_ones_are_skipped():
    values = ["garbage", f"{T0} {T0 + 900}", f"{T0 + 5} {T0 + 400}", "1 2 3"]
    assert parse_deadlines(values) == Deadline(T0 + 5, T0 + 400)
    assert parse_deadlines(["nope", ""]) is None
    assert parse_deadlines([]) is None


def test_of_timeout_remaining_and_expiry():
    d = Deadline.of_timeout(T0, 1.5)
    assert d == Deadline(T0, T0 + 1_500_000_000)
    assert d.remaining(T0) == 1.5
    assert d.remaining(T0 + 2_000_000_000) == -0.5
    assert not d.has_expired(T0 + 1_500_000_000)  # Finagle: expired only strictly after
    assert d.has_expired(T0 + 1_500_000_001)


def test_of_timeout_saturates_at_the_64_bit_limit():
    assert Deadline.of_timeout(2**63 - 10, 5.0).deadline_ns == 2**63 - 1


def test_deadline_refuses_values_outside_64_bits():
    with pytest.raises(ValueError):
        Deadline(2**63, 0)
