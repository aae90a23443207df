"""HTTP/2 header blocks to and from meshd's wire `Request` and `Response` (meshd/http/messages.py).

An HTTP/2 stream becomes the same `Request` the HTTP/1 codec builds, so the whole pipeline
(hygiene, identifiers, routing, retries, deadlines) runs unchanged: `:method` is the method,
`:path` the target, `:authority` (or `host`) the host; `l5d-*` fields are set apart for the
hygiene stage. RFC 9113 §8.2.2: connection-specific fields make a request malformed (the
stream is reset with PROTOCOL_ERROR); `te` is allowed with the value `trailers` only, and kept
(gRPC needs it end to end).

Going the other way (a request to an HTTP/2 upstream, a response to an HTTP/2 client), names
are lower-cased, HTTP/1's hop-by-hop fields and `host` are dropped, and the pseudo-headers come
first.
"""

from __future__ import annotations

from typing import Final

from meshd.errors import MalformedRequest as MalformedRequest  # raised here; defined with the errors
from meshd.http.body import Body, FlowControl
from meshd.http.headers import HOP_BY_HOP
from meshd.http.messages import Request, Response
from meshd.http2.codec import Headers

#: fields RFC 9113 §8.2.2 calls connection-specific: a request carrying one is malformed
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
#: the `version` of a `Request` that arrived over HTTP/2 (Via: `2 meshd`)
H2_VERSION: Final = "2"


def request_from_h2(
    headers: Headers,
    end_stream: bool,
    *,
    client_ip: str,
    replay_limit: int,
    producer: FlowControl | None,
) -> Request:
    """The wire `Request` of one stream's header block; its body is open unless `end_stream`."""
    method = path = authority = scheme = None
    regular: Headers = []
    l5d: dict[str, bytes] = {}
    host: bytes | None = None
    length: int | None = None
    forwarded = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            else:
                raise MalformedRequest(f"unknown pseudo-header {name.decode('latin-1')}")
            continue
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific field {name.decode('latin-1')} in an HTTP/2 request")
        if name == b"te":
            if value.strip().lower() != b"trailers":
                raise MalformedRequest("te other than 'trailers' in an HTTP/2 request")
            regular.append((name, value))
            continue
        if name == b"host":
            if host is None:
                host = value
            continue
        if name.startswith(b"l5d-"):
            l5d[name.decode("latin-1")] = value
            continue
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise MalformedRequest("content-length is not a number") from None
            if length < 0:
                raise MalformedRequest("content-length is negative")
            continue
        if name == b"via" or name == b"x-forwarded-for":
            forwarded = True
        regular.append((name, value))
    if method is None:
        raise MalformedRequest("no :method")
    if method == b"CONNECT":
        raise MalformedRequest("CONNECT is not proxied")
    if path is None or scheme is None:
        raise MalformedRequest("no :path or :scheme")
    if authority is None:
        authority = host
    if end_stream:
        body = Body.empty(length if length else None)
    else:
        body = Body(length=length, chunked=length is None, replay_limit=replay_limit, producer=producer)
    request = Request(
        method.decode("ascii", "replace"),
        path.decode("latin-1"),
        H2_VERSION,
        regular,
        body,
        l5d=l5d,
        host=authority.decode("latin-1") if authority is not None else None,
        client_ip=client_ip,
    )
    request.forwarded = forwarded
    return request


def h2_request_headers(request: Request, scheme: bytes, dst: Headers, authority: str | None = None) -> Headers:
    """The header block of `request` for an HTTP/2 upstream, with the attempt's `dst` fields;
    `authority` stands in for a request without a host (an HTTP/1.0 one without Host)."""
    out: Headers = [
        (b":method", request.method.encode("ascii")),
        (b":scheme", scheme),
        (b":authority", (request.host or authority or "").encode("latin-1")),
        (b":path", request.target.encode("latin-1") or b"/"),
    ]
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"te":
            if value.strip().lower() == b"trailers":
                out.append((b"te", b"trailers"))
            continue
        if lower in HOP_BY_HOP or lower == b"host":
            continue
        out.append((lower, value))
    length = request.body.length
    if length is not None and not (length == 0 and request.body.is_empty and request.method in _NO_BODY):
        out.append((b"content-length", b"%d" % length))
    out.extend(dst)
    return out


_NO_BODY: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


def response_from_h2(status: int, headers: Headers, body: Body) -> Response:
    """The wire `Response` of an upstream's HTTP/2 response head (pseudo-headers removed)."""
    regular: Headers = []
    has_via = False
    length: int | None = None
    for name, value in headers:
        if name[:1] == b":":
            continue
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                continue
            continue
        if name == b"via":
            has_via = True
        regular.append((name, value))
    response = Response(status, b"", regular, body, content_length=length)
    response.has_via = has_via
    return response


def h2_response_headers(response: Response, length: int | None) -> Headers:
    """The header block of `response` for an HTTP/2 client (`:status` first, Via extended)."""
    out: Headers = [(b":status", b"%d" % response.status)]
    via = False
    for name, value in response.headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == b"content-length" or lower == b"host":
            continue
        if lower == b"via" and not via:
            via = True
            value = value + b", 2 meshd"
        out.append((lower, value))
    if not via:
        out.append((b"via", b"2 meshd"))
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    return out


def h2_trailers(trailers: Headers) -> Headers:
    """Trailer fields for an HTTP/2 peer: lower-case names, no hop-by-hop or pseudo fields."""
    return [(n.lower(), v) for n, v in trailers if n[:1] != b":" and n.lower() not in HOP_BY_HOP]
