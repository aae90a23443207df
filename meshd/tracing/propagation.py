"""Trace context headers: W3C `traceparent` (read and written) and B3 (read only).

Compiled with the hot path (meshd.COMPILED_MODULES): with tracing on, every request's headers
pass through `parse_traceparent` or the B3 parsers. They never raise: anything malformed is
`None`, and the caller starts a new trace (and counts it).

W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` is
`version-traceid-parentid-flags`, 2, 32, 16 and 2 lower-case hex digits. Version `ff` is
invalid; version `00` is exactly 55 characters; a later version may append fields after a `-`
(its first four are read as version 00's). An all-zero trace id or parent id is invalid.

B3 (https://github.com/openzipkin/b3-propagation): single header `b3:
{traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or only `{sampling}` (`0`, `1`, `d`), and the
multi headers `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`0`/`1`), `X-B3-Flags` (`1`:
debug, meaning sampled). A 64-bit B3 trace id is widened to 128 bits with leading zeros, as
the W3C spec advises. Upper-case hex in B3 is accepted (and written lower-case).
"""

from __future__ import annotations

from typing import Final

HEX: Final = b"0123456789abcdef"
_HEX_ANY_CASE: Final = b"0123456789abcdefABCDEF"
ZERO_TRACE: Final = b"0" * 32
ZERO_SPAN: Final = b"0" * 16
_ZERO_TRACE_TEXT: Final = "0" * 32
_ZERO_SPAN_TEXT: Final = "0" * 16

#: the sampling decision of a B3 header that carries none (`b3: {trace}-{span}`): the receiver decides
UNDECIDED: Final = -1


class TraceParent:
    """A parsed trace context: ids as lower-case hex text, and the sampled flag (1, 0 or UNDECIDED)."""

    __slots__ = ("trace_id", "parent_id", "sampled")

    def __init__(self, trace_id: str, parent_id: str, sampled: int) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.sampled = sampled

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TraceParent)
            and self.trace_id == other.trace_id
            and self.parent_id == other.parent_id
            and self.sampled == other.sampled
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.parent_id, self.sampled))

    def __repr__(self) -> str:
        return f"<TraceParent {self.trace_id}-{self.parent_id} sampled={self.sampled}>"


def _is_hex(value: bytes) -> bool:
    """Only lower-case hex digits (and at least one)."""
    return len(value) > 0 and not value.translate(None, HEX)


def parse_traceparent(value: bytes) -> TraceParent | None:
    """A `traceparent` header value, or None when it is malformed (never raises)."""
    n = len(value)
    if n == 55 and value[2] == 45 and value[35] == 45 and value[52] == 45:
        # version 00's exact shape (the common case) in a few C calls: without its hex digits
        # the value is the three dashes that are where they belong, so every other character
        # is a lower-case hex digit
        if value.translate(None, HEX) != b"---" or value[0:2] == b"ff":
            return None
        text = value.decode("ascii")
        trace_id = text[3:35]
        parent_id = text[36:52]
        if trace_id == _ZERO_TRACE_TEXT or parent_id == _ZERO_SPAN_TEXT:
            return None
        c = value[54]  # the flags' low hex digit: its bit 0 is the sampled flag
        return TraceParent(trace_id, parent_id, (c & 1) if c <= 57 else ((c + 1) & 1))
    if n < 55:
        return None
    version = value[0:2]
    if not _is_hex(version) or version == b"ff":
        return None
    if n > 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    if value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    trace_bytes = value[3:35]
    parent_bytes = value[36:52]
    flags = value[53:55]
    if not _is_hex(trace_bytes) or not _is_hex(parent_bytes) or not _is_hex(flags):
        return None
    if trace_bytes == ZERO_TRACE or parent_bytes == ZERO_SPAN:
        return None
    return TraceParent(trace_bytes.decode("ascii"), parent_bytes.decode("ascii"), int(flags, 16) & 1)


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> bytes:
    """The `traceparent` value meshd sends: version 00, the sampled flag only."""
    return ("00-" + trace_id + "-" + span_id + ("-01" if sampled else "-00")).encode("ascii")


def _b3_id(value: bytes, widths: tuple[int, ...]) -> str | None:
    """A B3 id of one of `widths` hex digits, lower-cased (128-bit trace ids padded), or None."""
    if len(value) not in widths or value.translate(None, _HEX_ANY_CASE):
        return None
    text = value.decode("ascii").lower()
    if len(text) == 16 and 32 in widths:
        text = "0000000000000000" + text
    if not text.strip("0"):
        return None
    return text


def _b3_sampled(value: bytes) -> int | None:
    if value == b"1" or value == b"d" or value == b"true":
        return 1
    if value == b"0" or value == b"false":
        return 0
    return None


def parse_b3_single(value: bytes) -> TraceParent | None:
    """A `b3` header value; None when malformed. A sampling-only value (`b3: 1`) has no ids:
    its trace id and parent id are "" (the receiver starts a trace with that decision)."""
    value = value.strip()
    if len(value) == 1:
        sampled = _b3_sampled(value)
        return TraceParent("", "", sampled) if sampled is not None else None
    parts = value.split(b"-")
    if len(parts) < 2 or len(parts) > 4:
        return None
    trace_id = _b3_id(parts[0], (16, 32))
    span_id = _b3_id(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    decision = UNDECIDED
    if len(parts) >= 3:
        parsed = _b3_sampled(parts[2])
        if parsed is None:
            return None
        decision = parsed
    if len(parts) == 4 and _b3_id(parts[3], (16,)) is None:
        return None
    return TraceParent(trace_id, span_id, decision)


def parse_b3_multi(
    trace_id: bytes | None, span_id: bytes | None, sampled: bytes | None, flags: bytes | None
) -> TraceParent | None:
    """The `X-B3-*` headers (any of them may be absent); None when malformed."""
    decision = UNDECIDED
    if flags is not None and flags.strip() == b"1":
        decision = 1
    elif sampled is not None:
        parsed = _b3_sampled(sampled.strip().lower())
        if parsed is None:
            return None
        decision = parsed
    if trace_id is None and span_id is None:
        return TraceParent("", "", decision) if decision != UNDECIDED else None
    if trace_id is None or span_id is None:
        return None
    tid = _b3_id(trace_id.strip(), (16, 32))
    sid = _b3_id(span_id.strip(), (16,))
    if tid is None or sid is None:
        return None
    return TraceParent(tid, sid, decision)


def parse_sample_rate(value: bytes) -> float | None:
    """An `l5d-sample` value: a rate from 0 to 1 (linkerd 1's header), or None when malformed."""
    try:
        rate = float(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        return None
    return rate
