"""Request deadlines and the `l5d-ctx-deadline` header that carries them between hops.

Wire format (linkerd 1 `LinkerdHeaders.Ctx.Deadline`, the same text as Finagle's
`Finagle-Ctx-com.twitter.finagle.Deadline`): two signed 64-bit integers in decimal, separated by
one space: `"<timestamp_ns> <deadline_ns>"`, both nanoseconds since the Unix epoch. `timestamp`
is when the deadline was set, `deadline` when the work must be done. Example:
`l5d-ctx-deadline: 1700000000000000000 1700000000250000000` (250 ms budget).

Because the values are wall-clock instants that cross hosts, time comes from an injected wall
clock (`Callable[[], int]` returning ns, `time.time_ns` in production), never the monotonic clock.

Parsing is strict where linkerd was loose (Java `split(' ')` + `toLong` ignored extra fields and
accepted non-ASCII digits): exactly two ASCII integers that fit in 64 bits, surrounding spaces or
tabs ignored. Anything else is malformed: `parse_deadline` returns None, and meshd ignores the
header (and logs), never fails the request. When a request carries the header several times, the
strictest combination wins (`parse_deadlines`, as linkerd's `Deadline.get`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

HEADER: Final = "l5d-ctx-deadline"

WallClock = Callable[[], int]
"""Nanoseconds since the Unix epoch."""

WALL_CLOCK_NS: Final[WallClock] = time.time_ns
"""The production wall clock."""

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_MAX_INT_CHARS: Final = 32
"""Leading zeros are fine (Java's parseLong takes them); the cap keeps int() cheap and far below
Python's 4300-digit conversion limit, which would raise instead of returning None."""
_DIGITS: Final = frozenset("0123456789")
_OWS: Final = " \t"


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request must be done (`deadline_ns`), and when that was decided (`timestamp_ns`)."""

    timestamp_ns: int
    deadline_ns: int

    def __post_init__(self) -> None:
        for name, value in (("timestamp_ns", self.timestamp_ns), ("deadline_ns", self.deadline_ns)):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"{name} must fit in a signed 64-bit integer, got {value}")

    @classmethod
    def of_timeout(cls, now_wall_ns: int, timeout_secs: float) -> Deadline:
        """A deadline `timeout_secs` from now (Finagle `Deadline.ofTimeout`)."""
        deadline = now_wall_ns + round(timeout_secs * 1e9)
        return cls(now_wall_ns, max(_INT64_MIN, min(deadline, _INT64_MAX)))

    def remaining(self, now_wall_ns: int) -> float:
        """Seconds left; zero or negative once the deadline has passed."""
        return (self.deadline_ns - now_wall_ns) / 1e9

    def has_expired(self, now_wall_ns: int) -> bool:
        """Finagle `Deadline.expired`: strictly after the deadline."""
        return now_wall_ns > self.deadline_ns


def combine(incoming: Deadline | None, own_timeout: Deadline) -> Deadline:
    """The deadline to enforce and pass on: the earlier deadline wins.

    Finagle `Deadline.combined`: earliest deadline, latest timestamp ("the strictest deadline and
    the latest observation"). With no incoming deadline, our own applies.
    """
    if incoming is None:
        return own_timeout
    return Deadline(
        max(incoming.timestamp_ns, own_timeout.timestamp_ns),
        min(incoming.deadline_ns, own_timeout.deadline_ns),
    )


def format_deadline(d: Deadline) -> str:
    """Header value for `d`: `"<timestamp_ns> <deadline_ns>"`."""
    return f"{d.timestamp_ns} {d.deadline_ns}"


def parse_deadline(value: str) -> Deadline | None:
    """The deadline in one `l5d-ctx-deadline` value, or None when it is malformed."""
    parts = value.strip(_OWS).split(" ")
    if len(parts) != 2:
        return None
    timestamp = _parse_int64(parts[0])
    deadline = _parse_int64(parts[1])
    if timestamp is None or deadline is None:
        return None
    return Deadline(timestamp, deadline)


def parse_deadlines(values: Iterable[str]) -> Deadline | None:
    """The strictest combination of every well-formed value; malformed ones are skipped."""
    result: Deadline | None = None
    for value in values:
        parsed = parse_deadline(value)
        if parsed is not None:
            result = parsed if result is None else combine(result, parsed)
    return result


def _parse_int64(text: str) -> int | None:
    # int() alone would accept "1_000", " 7", "+ 7" and non-ASCII digits; check the shape first.
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits or len(digits) > _MAX_INT_CHARS or not _DIGITS.issuperset(digits):
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None
