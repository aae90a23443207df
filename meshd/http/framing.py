"""Pure framing rules: how a message's body is delimited on the wire (RFC 9112 §6), and serialising heads.

Framing of a body we send is one of NONE (no body at all), LENGTH (Content-Length), CHUNKED, or
CLOSE (read until the connection closes — only for responses to HTTP/1.0 clients that cannot
take chunked encoding). The parser has already rejected smuggling shapes (both Content-Length and
Transfer-Encoding, conflicting lengths, a Transfer-Encoding whose last coding is not chunked);
these functions decide what to *write*.
"""

from __future__ import annotations

import enum
from typing import Final

from meshd.http.body import Body, Trailers
from meshd.http.messages import Headers


class Framing(enum.Enum):
    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3


_STATUS_NO_BODY: Final = frozenset({204, 304})
_REASONS: Final[dict[int, bytes]] = {}


def reason_phrase(status: int) -> bytes:
    reason = _REASONS.get(status)
    if reason is None:
        from http import HTTPStatus

        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
        _REASONS[status] = reason
    return reason


def response_has_body(request_method: str, status: int) -> bool:
    """RFC 9112 §6.3: HEAD responses, 1xx, 204 and 304 never carry a body."""
    return not (request_method == "HEAD" or status < 200 or status in _STATUS_NO_BODY)


def _may_carry_length(status: int) -> bool:
    """May a response without a body keep the upstream's Content-Length? RFC 9110 §8.6: a 1xx or
    204 must not carry one (dropped); a 304 or a response to HEAD may, giving the length a 200 or
    a GET would have had (kept)."""
    return status >= 200 and status != 204


def response_framing(request_method: str, request_version: str, status: int, body: Body) -> Framing:
    if not response_has_body(request_method, status):
        return Framing.NONE
    if body.length is not None:
        return Framing.LENGTH
    if request_version == "1.1":
        return Framing.CHUNKED
    return Framing.CLOSE


def request_framing(body: Body) -> Framing:
    if body.length is not None:
        return Framing.LENGTH
    if body.chunked:
        return Framing.CHUNKED
    return Framing.NONE


def serialize_request_head(
    method: str,
    target: str,
    headers: Headers,
    framing: Framing,
    length: int | None,
    extra: bytes = b"",
) -> bytes:
    """`extra`: header lines already serialised (each ending in CRLF), written after `headers`."""
    # One %-format over joined "name: value" lines: about a third cheaper than extending a
    # list of parts, and this runs for every request and every response.
    lines = [b"%s: %s" % (name, value) for name, value in headers]
    if framing is Framing.LENGTH:
        lines.append(b"Content-Length: %d" % (length or 0))
    elif framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked")
    if lines:
        lines.append(b"")
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (
        method.encode("ascii"), target.encode("latin-1"), b"\r\n".join(lines), extra
    )


def serialize_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    framing: Framing,
    length: int | None,
    *,
    keep_alive: bool,
    client_version: str,
) -> bytes:
    lines = [b"%s: %s" % (name, value) for name, value in headers]
    if length is not None and (framing is Framing.LENGTH or (framing is Framing.NONE and _may_carry_length(status))):
        lines.append(b"Content-Length: %d" % length)
    elif framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked")
    if not keep_alive:
        lines.append(b"Connection: close")
    elif client_version == "1.0":
        lines.append(b"Connection: keep-alive")
    if not lines:
        return b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason or reason_phrase(status))
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (status, reason or reason_phrase(status), b"\r\n".join(lines))


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Trailers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
