"""meshd's own errors answered as gRPC errors: a trailers-only response a gRPC client can read.

A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status: given a
plain `503` it can only guess (the spec's HTTP mapping says UNAVAILABLE) and it loses meshd's
reason. So to a gRPC request (`is_grpc_request`) meshd answers an error it produced itself as
the spec's *trailers-only* response: one HEADERS frame with END_STREAM carrying

    :status 200
    content-type: application/grpc
    grpc-status: <code>
    grpc-message: <l5d-err text, percent-encoded>
    l5d-err: <the same text, as on HTTP/1>

plus the error's own extra headers (`retry-after` on overload). How each error maps
(docs/grpc.md has the table, with reasons):

| meshd error (HTTP status)                                   | grpc-status           |
|-------------------------------------------------------------|-----------------------|
| RequestTimeout and subclasses (504): total, attempt, deadline | DEADLINE_EXCEEDED 4 |
| ConnectFailed, UpstreamFailed, NoSuchService (502)          | UNAVAILABLE 14        |
| NoEndpoints, PoolExhausted, Overloaded, CircuitOpen, ShuttingDown (503) | UNAVAILABLE 14 |
| Forbidden (403)                                             | PERMISSION_DENIED 7   |
| IdentificationFailed (400: the path names no gRPC method)   | UNIMPLEMENTED 12      |
| NotImplementedMethod (501)                                  | UNIMPLEMENTED 12      |
| HeadersTooLarge (431)                                       | RESOURCE_EXHAUSTED 8  |
| other BadRequest (400, 408, 505), LoopDetected (508)        | INTERNAL 13           |
| FaultInjected with status S                                 | the spec's mapping of S (503 -> UNAVAILABLE) |

Load shedding is UNAVAILABLE, not RESOURCE_EXHAUSTED, as Envoy answers its own 503s: gRPC
clients retry UNAVAILABLE when their retry policy allows, and meshd's overload is transient and
not the caller's quota. A name the dtab cannot bind is UNAVAILABLE, not UNIMPLEMENTED: a gRPC
client takes UNIMPLEMENTED as "this method does not exist" for good, while an unbound name is
usually a namer that has not caught up yet.
"""

from __future__ import annotations

from typing import Final

from meshd.errors import (
    BadRequest,
    FaultInjected,
    Forbidden,
    HeadersTooLarge,
    IdentificationFailed,
    LoopDetected,
    MeshdError,
    NotImplementedMethod,
    RequestTimeout,
)
from meshd.grpc.status import (
    CONTENT_TYPE,
    GRPC_CONTENT_TYPE,
    GRPC_MESSAGE,
    GRPC_STATUS,
    Headers,
    StatusCode,
    encode_message,
    http_status_to_grpc,
)

L5D_ERR: Final = b"l5d-err"
#: the HTTP status of every gRPC response, errors included (the outcome is in `grpc-status`)
HTTP_STATUS: Final = 200

_STATUS_BYTES: Final = {code: str(int(code)).encode("ascii") for code in StatusCode}


def grpc_status_for(error: MeshdError) -> StatusCode:
    """The gRPC status a gRPC client should see for one of meshd's own errors (table above)."""
    # Order matters: subclasses before their bases (HeadersTooLarge and IdentificationFailed are
    # BadRequests; every timeout is a RequestTimeout).
    if isinstance(error, RequestTimeout):
        return StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, Forbidden):
        return StatusCode.PERMISSION_DENIED
    if isinstance(error, IdentificationFailed | NotImplementedMethod):
        return StatusCode.UNIMPLEMENTED
    if isinstance(error, HeadersTooLarge):
        return StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, BadRequest | LoopDetected):
        return StatusCode.INTERNAL
    if isinstance(error, FaultInjected):
        return http_status_to_grpc(error.status)
    if error.status == 504:
        return StatusCode.DEADLINE_EXCEEDED
    if error.status in (502, 503):
        return StatusCode.UNAVAILABLE
    return http_status_to_grpc(error.status)


def grpc_error_headers(error: MeshdError) -> Headers:
    """The header block of the trailers-only response for `error`, without `:status` (always
    `HTTP_STATUS`, 200): the HTTP/2 server writes it as one HEADERS frame with END_STREAM.

    Names are lower-case, as HTTP/2 requires; CR, LF and NUL in the text become spaces in
    `l5d-err` (a header value cannot hold them) and are percent-encoded in `grpc-message`."""
    text = error.l5d_err
    headers: Headers = [
        (CONTENT_TYPE, GRPC_CONTENT_TYPE),
        (GRPC_STATUS, _STATUS_BYTES[grpc_status_for(error)]),
        (GRPC_MESSAGE, encode_message(text)),
        (L5D_ERR, _header_safe(text)),
    ]
    for name, value in error.headers:
        headers.append((name.lower(), value))
    return headers


def _header_safe(text: str) -> bytes:
    raw = text.encode("latin-1", "replace")
    return raw.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\0", b" ")
