"""Header rules: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers, the l5d-* names meshd speaks."""

from __future__ import annotations

from typing import Final

#: Hop-by-hop fields a proxy must not forward (RFC 9110 §7.6.1, RFC 9112 §7.1 for TE/Transfer-Encoding),
#: plus Proxy-Connection, which old clients still send.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Request trailer fields meshd drops instead of forwarding (besides every `l5d-*` field): the
#: routing and trust decisions are made on the head, and RFC 9110 §6.5.1 (RFC 7230 §4.1.2 lists
#: them) forbids in trailers what must be known before the content: framing (Content-Length,
#: Transfer-Encoding, Trailer, TE), routing (Host, and the forwarding fields meshd itself sets:
#: Via, X-Forwarded-For, Forwarded), request modifiers (Expect, Max-Forwards, Range, conditionals,
#: Cache-Control, Pragma), authentication (Authorization, Proxy-Authorization, Cookie) and how to
#: process the content (Content-Encoding, Content-Type, Content-Range). Hop-by-hop fields too.
TRAILER_DROPPED: Final = HOP_BY_HOP | frozenset(
    {
        b"content-length",
        b"host",
        b"via",
        b"x-forwarded-for",
        b"forwarded",
        b"expect",
        b"max-forwards",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"cache-control",
        b"pragma",
        b"authorization",
        b"cookie",
        b"content-encoding",
        b"content-type",
        b"content-range",
    }
)


def _both_cases(*names: bytes) -> frozenset[bytes]:
    return frozenset(names) | frozenset(n.lower() for n in names)


#: Common end-to-end request fields that need no decision: appended as they are, without
#: lower-casing and comparing them (an exact-case set lookup is the cheapest test there is).
PLAIN_REQUEST_FIELDS: Final = _both_cases(
    b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Content-Type", b"Authorization",
    b"Cookie", b"Referer", b"Origin", b"Cache-Control", b"Pragma", b"If-None-Match", b"If-Modified-Since",
    b"X-Request-Id", b"Idempotency-Key", b"Accept-Charset", b"Range", b"If-Match",
)
#: The same for response fields.
PLAIN_RESPONSE_FIELDS: Final = _both_cases(
    b"Server", b"Date", b"Content-Type", b"Cache-Control", b"ETag", b"Last-Modified", b"Expires", b"Vary",
    b"Set-Cookie", b"Accept-Ranges", b"Age", b"Location", b"X-Content-Type-Options", b"Content-Encoding",
    b"Content-Language", b"Retry-After", b"X-Request-Id",
)

L5D_DST_SERVICE: Final = b"l5d-dst-service"
L5D_DST_CLIENT: Final = b"l5d-dst-client"
L5D_REQID: Final = b"l5d-reqid"
L5D_ERR: Final = b"l5d-err"
L5D_DTAB: Final = "l5d-dtab"
L5D_CTX_DTAB: Final = "l5d-ctx-dtab"
L5D_CTX_DEADLINE: Final = "l5d-ctx-deadline"
L5D_RETRYABLE: Final = b"l5d-retryable"
L5D_SUCCESS_CLASS: Final = b"l5d-success-class"

#: l5d-* request headers that travel on downstream when the request came from a trusted source.
#: (l5d-dtab is folded into l5d-ctx-dtab; the rest are re-set by meshd.)
PROPAGATED_CTX: Final = ("l5d-ctx-deadline", "l5d-ctx-trace")


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a Connection header value (`close`, `keep-alive`, field names)."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def remove_named(headers: list[tuple[bytes, bytes]], names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """Drop the fields listed in a Connection header (they are hop-by-hop for this hop only)."""
    if not names:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in names]


def append_forwarded_for(headers: list[tuple[bytes, bytes]], client_ip: str) -> None:
    """Add the client's address to X-Forwarded-For, joining an existing chain (de-facto standard)."""
    ip = client_ip.encode("ascii")
    for i, (n, v) in enumerate(headers):
        if len(n) == 15 and n.lower() == b"x-forwarded-for":
            headers[i] = (n, v + b", " + ip)
            return
    headers.append((b"X-Forwarded-For", ip))


def append_via(headers: list[tuple[bytes, bytes]], version: str, pseudonym: bytes) -> None:
    """Add this hop to Via (RFC 9110 §7.6.3): `1.1 meshd`."""
    hop = version.encode("ascii") + b" " + pseudonym
    for i, (n, v) in enumerate(headers):
        if len(n) == 3 and n.lower() == b"via":
            headers[i] = (n, v + b", " + hop)
            return
    headers.append((b"Via", hop))


def set_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """Replace every field called `name` (lower-case) with one value."""
    headers[:] = [(n, v) for n, v in headers if n.lower() != name]
    headers.append((name, value))
