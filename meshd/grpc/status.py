"""gRPC status codes, how to tell a gRPC request, reading `grpc-status`, and `grpc-message` text.

References: the gRPC over HTTP/2 protocol (PROTOCOL-HTTP2.md in grpc/grpc) for the headers, and
"HTTP to gRPC Status Code Mapping" (doc/http-grpc-status-mapping.md) for what a gRPC client makes
of an HTTP status that did not come from a gRPC server.

Everything here is a pure function of bytes; none of it raises on any input.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

Headers = list[tuple[bytes, bytes]]

GRPC_STATUS: Final = b"grpc-status"
GRPC_MESSAGE: Final = b"grpc-message"
CONTENT_TYPE: Final = b"content-type"
#: what meshd answers with (the spec's default subtype, protobuf, is implied by no subtype)
GRPC_CONTENT_TYPE: Final = b"application/grpc"
_GRPC_STATUS_LEN: Final = len(GRPC_STATUS)
_CONTENT_TYPE_LEN: Final = len(CONTENT_TYPE)


class StatusCode(enum.IntEnum):
    """The 17 gRPC status codes (grpc/grpc doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


MAX_CODE: Final = 16


def is_grpc_content_type(value: bytes | None) -> bool:
    """Whether a `content-type` value is gRPC's: `application/grpc`, alone or with a subtype after
    `+` or `;` parameters (`application/grpc+proto`, `application/grpc+json`,
    `application/grpc; charset=...`), case-insensitive. `application/grpc-web` is not: it is a
    different wire format (a proxy must translate it, not forward it as gRPC)."""
    if value is None:
        return False
    v = value.strip().lower()
    if not v.startswith(GRPC_CONTENT_TYPE):
        return False
    rest = v[len(GRPC_CONTENT_TYPE) :]
    return not rest or rest[:1] in (b"+", b";", b" ", b"\t")


def is_grpc_request(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's header list says it is gRPC (its first `content-type` decides)."""
    for name, value in headers:
        # the length first: most names are not this one, and `lower()` makes a new bytes object
        if len(name) == _CONTENT_TYPE_LEN and name.lower() == CONTENT_TYPE:
            return is_grpc_content_type(value)
    return False


def parse_status(value: bytes) -> int | None:
    """A `grpc-status` value: one to three ASCII digits, 0..16 as the spec lists them, but any
    number up to 999 is kept (a newer server may send a code we do not know; clients treat it as
    UNKNOWN). Anything else (empty, signs, spaces inside, other bytes) is None: malformed."""
    v = value.strip(b" \t")
    if not 0 < len(v) <= 3 or not v.isdigit():
        return None
    return int(v)


def status_of(headers: Iterable[tuple[bytes, bytes]] | None) -> int | None:
    """The code in the first `grpc-status` of a trailer block or a trailers-only response's headers:
    None when there is none; `UNKNOWN` (2) when it is malformed or a code gRPC does not define (what
    grpc clients report for it)."""
    if headers is None:
        return None
    for name, value in headers:
        if len(name) == _GRPC_STATUS_LEN and name.lower() == GRPC_STATUS:  # the length first, as above
            code = parse_status(value)
            return code if code is not None and code <= MAX_CODE else StatusCode.UNKNOWN
    return None


_LABELS: Final = {int(code): code.name for code in StatusCode}


def status_label(code: int | None) -> str:
    """A bounded metric-label value for a call's outcome: the code's name (`OK`, `UNAVAILABLE`, ...),
    `NONE` when the call ended with no `grpc-status` at all. Codes past 16 are already UNKNOWN
    (`status_of`), so a peer cannot grow the label set."""
    if code is None:
        return "NONE"
    return _LABELS.get(code, "UNKNOWN")


def http_status_to_grpc(status: int) -> StatusCode:
    """What a gRPC client reports for an HTTP response that carries no `grpc-status` (the spec's
    "HTTP to gRPC Status Code Mapping"): 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
    404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, anything else UNKNOWN."""
    return _HTTP_TO_GRPC.get(status, StatusCode.UNKNOWN)


_HTTP_TO_GRPC: Final = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}

# -- grpc-message --------------------------------------------------------------------------------
# The spec: Percent-Byte-Unencoded = 1*( %x20-%x24 / %x26-%x7E ) ; space and VCHAR, except %;
# everything else is the UTF-8 bytes of the text, each as %XX.

_UNENCODED: Final = frozenset(range(0x20, 0x7F)) - {0x25}
_HEX: Final = b"0123456789ABCDEF"


def encode_message(text: str) -> bytes:
    """`grpc-message` value for `text`: its UTF-8 bytes, percent-encoded where the spec says
    (`%`, controls, and every byte of a non-ASCII character). A lone surrogate becomes `?`."""
    raw = text.encode("utf-8", "replace") if not text.isascii() else text.encode("ascii")
    if all(b in _UNENCODED for b in raw):
        return raw
    out = bytearray()
    for b in raw:
        if b in _UNENCODED:
            out.append(b)
        else:
            out += b"%" + _HEX[b >> 4 : (b >> 4) + 1] + _HEX[b & 15 : (b & 15) + 1]
    return bytes(out)


def decode_message(value: bytes) -> str:
    """The text of a `grpc-message` value, leniently as the spec asks of receivers: a `%` not
    followed by two hex digits is kept as it is, and bytes that are not UTF-8 become U+FFFD."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    out = bytearray()
    i = 0
    n = len(value)
    while i < n:
        b = value[i]
        if b == 0x25 and i + 2 < n and _is_hex(value[i + 1]) and _is_hex(value[i + 2]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x46 or 0x61 <= b <= 0x66
