"""Request and Response: the HTTP messages as they cross the wire, and nothing else.

Headers are lists of `(name, value)` byte pairs in arrival order with the original case of names.
The parser removes hop-by-hop and framing headers (Content-Length, Transfer-Encoding) as it reads
them and records framing on the `Body`; `l5d-*` headers are held apart in `l5d` (lower-case name ->
value) so the hygiene stage decides which travel on. What routing learns about a request (logical
name, local dtab, binding, deadline, attempts) is not here: it is the pipeline's `RouteContext`
(meshd/pipeline/context.py), which holds the request.
"""

from __future__ import annotations

from meshd.http.body import Body

Headers = list[tuple[bytes, bytes]]


class Request:
    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "l5d",
        "body",
        "keep_alive",
        "host",
        "client_ip",
        "expect_continue",
        "forwarded",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: Headers,
        body: Body,
        *,
        l5d: dict[str, bytes] | None = None,
        keep_alive: bool = True,
        host: str | None = None,
        client_ip: str = "",
        expect_continue: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.l5d: dict[str, bytes] = l5d if l5d is not None else {}
        self.body = body
        self.keep_alive = keep_alive
        self.host = host
        self.client_ip = client_ip
        self.expect_continue = expect_continue
        #: the request arrived with Via or X-Forwarded-For (so they must be extended, not added)
        self.forwarded = False

    def header(self, name: str) -> str | None:
        """First value of header `name` (lower-case), decoded as latin-1. Used by identifiers."""
        if name == "host":
            return self.host
        key = name.encode("latin-1")
        if key.startswith(b"l5d-"):
            value = self.l5d.get(name)
            return value.decode("latin-1") if value is not None else None
        for n, v in self.headers:
            if len(n) == len(key) and n.lower() == key:
                return v.decode("latin-1")
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} host={self.host!r}>"


class Response:
    __slots__ = ("status", "reason", "headers", "body", "keep_alive", "content_length", "has_via")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        body: Body,
        *,
        keep_alive: bool = True,
        content_length: int | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        #: the Content-Length header value as received (kept for HEAD and 304 responses)
        self.content_length = content_length
        #: the upstream's response already has a Via header (extend it rather than add one)
        self.has_via = True

    def __repr__(self) -> str:
        return f"<Response {self.status}>"
