"""`grpc-timeout`: the caller's deadline as gRPC carries it, read into meshd's deadline and passed on.

Wire format (PROTOCOL-HTTP2.md): `Timeout -> TimeoutValue TimeoutUnit`, the value a positive
integer of at most 8 ASCII digits, the unit one of `H` hours, `M` minutes, `S` seconds,
`m` milliseconds, `u` microseconds, `n` nanoseconds: `1S`, `250m`, `100u`, `5n`, `2H`, `3M`.
meshd also takes `0` (some clients send `0n` for an already-expired deadline).

How meshd uses it (the timeouts stage):
- *Reading*: a request's `grpc-timeout` becomes a deadline `now + timeout` on the wall clock and is
  combined with `l5d-ctx-deadline` and `totalTimeoutMs`: the earliest wins (`combine_deadline`).
  Unlike `l5d-ctx-deadline` it is honoured from every client, trusted or not: it is the standard
  gRPC header, and a client can only shorten its own call with it.
- *Malformed* values (9 digits, no unit, an unknown unit, a sign, spaces, non-ASCII) are ignored,
  as if absent, and counted (`GrpcTimeoutCounters.malformed`); the request is never failed for it.
  A request with several `grpc-timeout` fields uses the first well-formed one.
- *Passing on*: the request goes downstream with `grpc-timeout` set to the time *remaining* when
  the attempt is sent (`downstream_value`), so a chain of services never works past the caller's
  deadline; `l5d-ctx-deadline` goes along as for HTTP/1.

Formatting picks the shortest exact form: the coarsest unit that divides the value and keeps it
within 8 digits (`1_000_000_000 ns` -> `1S`, `1_500_000 ns` -> `1500u`). A value with no exact form
within 8 digits is rounded *down* in the finest unit that fits (so downstream is never given more
time than is left), and anything past 99,999,999 s (about 3.2 years) is sent as `99999999S`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from meshd.retry.deadline import Deadline, combine

Headers = list[tuple[bytes, bytes]]

HEADER: Final = b"grpc-timeout"
_HEADER_LEN: Final = len(HEADER)
MAX_DIGITS: Final = 8
MAX_VALUE: Final = 99_999_999

_UNIT_NS: Final = {
    0x48: 3_600_000_000_000,  # H
    0x4D: 60_000_000_000,  # M
    0x53: 1_000_000_000,  # S
    0x6D: 1_000_000,  # m
    0x75: 1_000,  # u
    0x6E: 1,  # n
}
#: coarsest first, for the exact form
_BY_SIZE: Final = (
    (3_600_000_000_000, b"H"),
    (60_000_000_000, b"M"),
    (1_000_000_000, b"S"),
    (1_000_000, b"m"),
    (1_000, b"u"),
    (1, b"n"),
)
#: finest first, for rounding down: the units 1000 apart only (see `format_timeout`)
_DECIMAL: Final = ((1, b"n"), (1_000, b"u"), (1_000_000, b"m"), (1_000_000_000, b"S"))
#: the longest timeout meshd sends: 99,999,999 s
MAX_SENT_NS: Final = MAX_VALUE * 1_000_000_000


class GrpcTimeoutCounters:
    """What the timeouts stage counts about `grpc-timeout` (exported as metrics by the wiring)."""

    __slots__ = ("malformed", "applied")

    def __init__(self) -> None:
        #: values that were not a gRPC timeout and were ignored
        self.malformed = 0
        #: requests whose deadline came from their `grpc-timeout` (it was the earliest)
        self.applied = 0


def parse_timeout(value: bytes) -> int | None:
    """Nanoseconds in one `grpc-timeout` value, or None when it is malformed. Never raises."""
    n = len(value)
    if not 2 <= n <= MAX_DIGITS + 1:
        return None
    unit = _UNIT_NS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit():  # bytes.isdigit: ASCII 0-9 only
        return None
    return int(digits) * unit


def format_timeout(ns: int) -> bytes:
    """The `grpc-timeout` value for `ns` nanoseconds (negative counts as 0): exact and shortest when
    possible, else rounded down in the finest unit within 8 digits; at most `99999999S`."""
    if ns <= 0:
        return b"0n"
    if ns >= MAX_SENT_NS:
        return b"99999999S"
    for size, unit in _BY_SIZE:
        if ns % size == 0:
            count = ns // size
            if count <= MAX_VALUE:
                return b"%d%s" % (count, unit)
            break  # finer exact units only have more digits
    # No exact form fits: round down in the finest decimal unit that fits. (Minutes and hours are
    # left out here: rounding down to them could send less than a smaller timeout just below a
    # unit boundary was sent, and the result must grow with the input.)
    for size, unit in _DECIMAL:
        count = ns // size
        if count <= MAX_VALUE:
            return b"%d%s" % (count, unit)
    raise AssertionError("unreachable: ns < MAX_SENT_NS fits in seconds")  # pragma: no cover


def first_timeout(headers: Iterable[tuple[bytes, bytes]], counters: GrpcTimeoutCounters | None = None) -> int | None:
    """The first well-formed `grpc-timeout` of a request's headers in ns (malformed ones counted and
    skipped), or None."""
    for name, value in headers:
        # the length first: most names are not this one, and `lower()` makes a new bytes object
        if len(name) == _HEADER_LEN and name.lower() == HEADER:
            ns = parse_timeout(value)
            if ns is not None:
                return ns
            if counters is not None:
                counters.malformed += 1
    return None


def combine_deadline(incoming: Deadline | None, timeout_ns: int, now_wall_ns: int) -> Deadline:
    """The deadline of a request that carries `grpc-timeout` (`timeout_ns`) and maybe an
    `l5d-ctx-deadline` (`incoming`): the earlier wins, as for `totalTimeoutMs`."""
    own = Deadline(now_wall_ns, _clamp(now_wall_ns + timeout_ns))
    return combine(incoming, own)


def request_deadline(
    headers: Iterable[tuple[bytes, bytes]],
    incoming: Deadline | None,
    now_wall_ns: int,
    counters: GrpcTimeoutCounters | None = None,
) -> Deadline | None:
    """The timeouts stage's one call for a gRPC request: its `l5d-ctx-deadline` (`incoming`, parsed by the
    stage as for HTTP/1) combined with its `grpc-timeout`, the earlier winning; `incoming` unchanged when
    the request has no well-formed `grpc-timeout`. Counts malformed values, and `applied` when the
    `grpc-timeout` is what decided."""
    timeout_ns = first_timeout(headers, counters)
    if timeout_ns is None:
        return incoming
    combined = combine_deadline(incoming, timeout_ns, now_wall_ns)
    if counters is not None and (incoming is None or combined.deadline_ns < incoming.deadline_ns):
        counters.applied += 1
    return combined


def downstream_value(remaining_s: float) -> bytes:
    """The `grpc-timeout` to send with an attempt that has `remaining_s` seconds left (rounded down
    to the nanosecond; 0 or less is `0n`)."""
    return format_timeout(int(remaining_s * 1e9))


def set_timeout(headers: Headers, value: bytes) -> None:
    """Replace every `grpc-timeout` of a header list by one carrying `value` (in place)."""
    headers[:] = [h for h in headers if h[0].lower() != HEADER]
    headers.append((HEADER, value))


def _clamp(ns: int) -> int:
    return min(ns, (1 << 63) - 1)
