"""MeshdError: every failure meshd itself produces, with its HTTP status and `l5d-err` text.

The error responder is the only code that turns these into responses (see docs/errors.md for the
table). Low-level exceptions (OSError, TimeoutError, parser errors) are translated into these at
the edge where they happen (dialer, codec, pool), with `raise ... from exc`.

`written` says whether any byte of the request may have reached an upstream: an error with
`written=False` (connect refused, pool closed before use) is safe to retry for any method.
"""

from __future__ import annotations


class MeshdError(Exception):
    status: int = 502
    reason: str = "Bad Gateway"
    #: short machine-friendly name, exported as the `kind` label on error metrics.
    kind: str = "error"
    #: header lines the error's response carries besides `l5d-err` (e.g. `Retry-After`)
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str, *, written: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.written = written

    @property
    def l5d_err(self) -> str:
        return self.message


class BadRequest(MeshdError):
    """Malformed request line, headers, framing or body: 400, connection closed."""

    status = 400
    reason = "Bad Request"
    kind = "bad_request"


class HeadersTooLarge(BadRequest):
    """The header section exceeded `maxHeaderBytes`: 431, connection closed."""

    status = 431
    reason = "Request Header Fields Too Large"
    kind = "headers_too_large"


class NotImplementedMethod(MeshdError):
    """CONNECT and protocol upgrades are not proxied: 501."""

    status = 501
    reason = "Not Implemented"
    kind = "not_implemented"


class IdentificationFailed(BadRequest):
    """The identifier could not name a service (e.g. no Host header): 400."""

    kind = "unidentified"


class NoSuchService(MeshdError):
    """The dtab and namers bind the logical name to nothing (Neg, Fail or Empty): 502, as linkerd."""

    status = 502
    kind = "no_such_service"


class NoEndpoints(MeshdError):
    """The service exists but has no endpoints right now: 503."""

    status = 503
    reason = "Service Unavailable"
    kind = "no_endpoints"


class ConnectFailed(MeshdError):
    """Could not connect to the endpoint (refused, unreachable, connect timeout): 502, never written."""

    status = 502
    kind = "connect_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)


class TlsHandshakeFailed(ConnectFailed):
    """The TLS handshake with the endpoint failed (unknown CA, name mismatch, expired, ...): 502,
    never written; `l5d-err` says what failed (docs/tls.md)."""

    kind = "tls_handshake_failed"


class Forbidden(MeshdError):
    """The router's authorization policy does not let this caller's identity call this name: 403,
    never written (nothing reaches an upstream); `l5d-err` names the rule (docs/tls.md)."""

    status = 403
    reason = "Forbidden"
    kind = "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)


class UpstreamFailed(MeshdError):
    """The upstream reset or closed the connection, or sent a malformed response: 502."""

    status = 502
    kind = "upstream_failed"


class UpstreamReset(UpstreamFailed):
    """An HTTP/2 upstream reset the stream (RST_STREAM): 502 before the response head; after it,
    the downstream HTTP/2 stream is reset with the same error code (`h2_error_code`)."""

    kind = "upstream_reset"

    def __init__(self, message: str, h2_error_code: int) -> None:
        super().__init__(message)
        self.h2_error_code = h2_error_code


class StreamRefused(UpstreamFailed):
    """An HTTP/2 upstream did not process the stream (REFUSED_STREAM, or GOAWAY below its id):
    502, never written, so the retry stage sends it to another endpoint."""

    kind = "stream_refused"

    def __init__(self, message: str) -> None:
        MeshdError.__init__(self, message, written=False)
        self.h2_error_code = 0x7


class MalformedRequest(Exception):
    """An HTTP/2 stream's header block is not a valid request (meshd/http2/convert.py): never an
    answer, the stream is reset with PROTOCOL_ERROR. Here, not in convert.py, because convert.py
    is compiled with mypyc and error classes stay interpreted (see MeshdError)."""


class PoolExhausted(MeshdError):
    """Every connection is busy and `maxWaiters` requests already wait: 503, never written."""

    status = 503
    reason = "Service Unavailable"
    kind = "pool_exhausted"

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)


class QueueTimeout(PoolExhausted):
    """A request waited `pool.queueTimeoutMs` for a connection to its endpoint: 503, never written.

    Error classes live here, in an interpreted module: a subclass compiled by mypyc does not
    override an interpreted base's class attributes (`kind` would read the base's)."""

    kind = "queue_timeout"


class Overloaded(MeshdError):
    """The router serves `maxConcurrentRequests` already and its queue is full, or the request waited
    `pendingTimeoutMs` for a turn: 503 with `Retry-After: 1`, at once, never sent upstream."""

    status = 503
    reason = "Service Unavailable"
    kind = "overloaded"
    headers = ((b"Retry-After", b"1"),)

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)


class CircuitOpen(MeshdError):
    """A client's circuit breaker is full (`client.circuitBreakers`: attempts in flight, waiting for
    a connection, or retries in flight): 503 at once, never written, not retried."""

    status = 503
    reason = "Service Unavailable"
    kind = "circuit_open"
    headers = ((b"Retry-After", b"1"),)

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)


class RequestTimeout(MeshdError):
    """A total, attempt or binding timeout, or an expired deadline: 504."""

    status = 504
    reason = "Gateway Timeout"
    kind = "timeout"


class ShuttingDown(MeshdError):
    """meshd is draining and refuses new work: 503, never written."""

    status = 503
    reason = "Service Unavailable"
    kind = "shutting_down"

    def __init__(self, message: str = "meshd is shutting down") -> None:
        super().__init__(message, written=False)


class HeaderTimeout(BadRequest):
    """The client did not finish sending its request head in time (slow-header defence): 408, closed."""

    status = 408
    reason = "Request Timeout"
    kind = "header_timeout"


class BodyTimeout(BadRequest):
    """The client sent nothing of its request body for `bodyIdleTimeoutMs`: 408, connection closed."""

    status = 408
    reason = "Request Timeout"
    kind = "body_timeout"


class VersionNotSupported(BadRequest):
    """A request line with HTTP/2.0 or HTTP/0.9 (llhttp parses both; neither is HTTP/1): 505, closed."""

    status = 505
    reason = "HTTP Version Not Supported"
    kind = "version_not_supported"


class AttemptTimeout(RequestTimeout):
    """One attempt exceeded `requestAttemptTimeoutMs`: 504 unless a retry succeeds."""

    kind = "attempt_timeout"


class ResponseHeadTimeout(AttemptTimeout):
    """The upstream sent no response head within `client.responseHeadTimeoutMs` of the request
    being fully written: 504, the endpoint's failure; written, so only idempotent requests retry."""

    kind = "response_head_timeout"


class FaultInjected(MeshdError):
    """A fault rule of the routing file answered this request with its `abort` status (game days):
    the status the rule gives, not forwarded, not retried."""

    kind = "fault_injected"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, written=False)
        self.status = status


class MirrorDiscarded(MeshdError):
    """The answer to a mirrored copy of a request (a routing file's `mirror` rule) is dropped:
    its body is cut with this when the copy is over. Never sent to any client."""

    kind = "mirror_discarded"


class LoopDetected(MeshdError):
    """The request already passed through too many meshd hops (its `Via` says so): 508, not forwarded.

    Guards against a dtab or namer that routes a name back to meshd itself, which would
    otherwise forward the request to itself until something times out.
    """

    status = 508
    reason = "Loop Detected"
    kind = "loop"

    def __init__(self, message: str) -> None:
        super().__init__(message, written=False)
