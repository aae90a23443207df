"""The HTTP/1 codec: bytes in, events out, for both directions, with no socket and no clock.

`RequestCodec` reads what a downstream client sends (the listener's side); `ResponseCodec` reads
what an upstream answers (the upstream connection's side). Both are sans-IO in the manner of h11:
the owner calls `feed(data)` with whatever bytes a read brought and gets back the events those
bytes completed, in order:

- a message head: a `Request` (request side) or a `Response` (response side), whose `Body` is
  created here, empty and open, ready to be fed;
- `bytes`: a piece of the body of the message whose head came last;
- `EndOfMessage`: that message is complete (with its trailers, if any); every head is followed
  by one, a bodiless message's at once;
- `ParseError`: the bytes are malformed or over a limit. It is the last event the codec ever
  returns: a connection that sent one is answered with the error and closed, so the codec stops.

Everything the two directions share is written once, in `_Http1Codec`: the header-size and
header-count limits (counted per header line as llhttp reports them, and per read while a head is
incomplete, because llhttp keeps an unfinished line to itself, so one endless header only shows in
the read sizes), framing (Content-Length, Transfer-Encoding), `Connection` (close, and the fields
it names, which are hop-by-hop for this hop only and removed), the hop-by-hop fields of RFC 9110
§7.6.1, and trailers. What differs is small and is in the subclasses: a request's `Host`,
`Expect`, `l5d-*` and forwarding fields, and which trailers it drops; a response's interim 1xx
heads, its Via, the 2**63-1 bound on its length, and the responses that never have a body
(to HEAD, 204, 304) or run until the connection closes.

The parser underneath is llhttp (through httptools) in strict mode, which already refuses the
request-smuggling shapes: Content-Length together with Transfer-Encoding, duplicate or
conflicting lengths, a final coding that is not `chunked`, bad chunk sizes, bare LF. The codec
adds the checks above, HTTP/2.0 and HTTP/0.9 request lines (505), CONNECT and upgrades (501),
duplicate `Host` (400), and Transfer-Encoding in an HTTP/1.0 request (400, RFC 9112 §6.1).

Timers (slow heads, idle bodies) are the owner's: the codec says whether a head is being read
(`in_head`) and the owner times it on its clock.
"""

from __future__ import annotations

import logging
from typing import Final

import httptools

from meshd.errors import (
    BadRequest,
    HeadersTooLarge,
    MeshdError,
    NotImplementedMethod,
    UpstreamFailed,
    VersionNotSupported,
)
from meshd.http.body import Body, FlowControl, Trailers
from meshd.http.headers import (
    HOP_BY_HOP,
    PLAIN_REQUEST_FIELDS,
    PLAIN_RESPONSE_FIELDS,
    TRAILER_DROPPED,
    connection_tokens,
)
from meshd.http.messages import Headers, Request, Response
from routing.identifiers.base import authority_of

log = logging.getLogger("meshd.http.codec")

#: the largest response Content-Length meshd forwards: 2**63 - 1, the largest signed 64-bit integer,
#: which is what nginx, Go's net/http and curl (`curl_off_t`) can hold. A larger value is not a real
#: body and a client could not parse it, so it is refused rather than forwarded and then truncated.
MAX_CONTENT_LENGTH: Final = 2**63 - 1

_SLASH: Final = ord("/")
_LOWER_L: Final = ord("l")
_UPPER_L: Final = ord("L")


def _lengths(names: frozenset[bytes]) -> bytes:
    """A table indexed by a field name's length: 1 where some name in `names` has that length."""
    table = bytearray(32)
    for name in names:
        table[len(name)] = 1
    return bytes(table)


#: The lengths of the request fields the codec acts on (framing, hop-by-hop, Host, Expect and
#: the forwarding fields; `l5d-*` names are told by their first letter). Lower-casing keeps a
#: name's length (llhttp admits only ASCII token characters in one), so a field of any other
#: length is end-to-end and is appended without hashing or lower-casing its name: most fields.
_REQUEST_ACTED_ON: Final = _lengths(
    HOP_BY_HOP | frozenset({b"content-length", b"host", b"expect", b"via", b"x-forwarded-for"})
)
#: The same for response fields (framing, hop-by-hop, Via).
_RESPONSE_ACTED_ON: Final = _lengths(HOP_BY_HOP | frozenset({b"content-length", b"via"}))
_NO_BODY_STATUS: Final = frozenset({204, 304})
#: method names as str without a decode per request
_METHODS: Final = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}


class EndOfMessage:
    """The body of the message whose head came last is complete."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Trailers | None) -> None:
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"


#: the end of a message without trailers (nearly all of them): one shared event
END: Final = EndOfMessage(None)


class ParseError:
    """The input is malformed or over a limit; `error` says how (its status and `l5d-err`).

    `abandons`: the head returned just before this event must not be acted on (an upgrade
    request: llhttp stops after its head, and meshd answers 501 instead of forwarding it).
    """

    __slots__ = ("error", "abandons")

    def __init__(self, error: MeshdError, abandons: bool = False) -> None:
        self.error = error
        self.abandons = abandons

    def __repr__(self) -> str:
        return f"ParseError({self.error!r}, abandons={self.abandons})"


Event = Request | Response | bytes | EndOfMessage | ParseError


#: what `_events` points at between two `feed` calls (callbacks only run inside one), so that a
#: codec keeps nothing of the last message while its connection waits for the next
_DETACHED: Final[list[Event]] = []
#: what a detached codec holds instead of its parser (`detach`): parsers that refer to nothing
_NO_REQUEST_PARSER: Final = httptools.HttpRequestParser(None)
_NO_RESPONSE_PARSER: Final = httptools.HttpResponseParser(None)


class _StopAfterHead(Exception):
    """Raised inside the parser callback to stop llhttp after a HEAD response's head."""


class _Http1Codec:
    """What both directions share: limits, framing headers, Connection, hop-by-hop, trailers."""

    def __init__(self, max_head_bytes: int, max_headers: int, producer: FlowControl | None) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        #: given to every body this codec creates: the body pauses it when its consumer lags
        self.producer = producer
        self._events: list[Event] = _DETACHED
        self._failed = False
        #: a head has begun and is not complete yet (the owner times it)
        self.in_head = False
        # per-message state
        self._head_bytes = 0
        self._head_count = 0
        self._head_spill = 0
        self._headers: Headers = []
        self._content_length: int | None = None
        self._chunked = False
        self._has_connection = False
        self._conn_close = False
        self._conn_named: set[bytes] | None = None
        self._in_body = False
        self._trailers: Trailers | None = None

    @property
    def failed(self) -> bool:
        """A `ParseError` was returned: the codec takes no more input."""
        return self._failed

    def _reset_message(self) -> None:
        """A new message begins: its head counters and its fields start over."""
        self._head_bytes = 0
        self._head_count = 0
        self._head_spill = 0
        self._reset_fields()

    def _reset_fields(self) -> None:
        """The per-message fields (not the head counters: a response's interim heads count too)."""
        self._headers = []
        self._content_length = None
        self._chunked = False
        self._has_connection = False
        self._conn_close = False
        self._conn_named = None
        self._in_body = False
        self._trailers = None

    def _spilled(self, data: bytes, was_in_head: bool) -> bool:
        """Count a read that began and ended inside a head; True when that passes the byte limit."""
        if was_in_head and self.in_head:
            self._head_spill += len(data)
            return self._head_spill > self.max_head_bytes
        return False

    def _count(self, name: bytes, value: bytes) -> None:
        """Charge one header (or trailer) line against the byte and count limits."""
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            raise self._too_large()
        self._head_count += 1
        if self._head_count > self.max_headers:
            raise self._too_many()

    def _framing_or_hop(self, lname: bytes, value: bytes) -> bool:
        """Take a framing, Connection or hop-by-hop field out of the head; True if it was one."""
        if lname == b"content-length":
            self._content_length = content_length(value)  # llhttp has validated it and duplicates
        elif lname == b"transfer-encoding":
            self._chunked = True  # llhttp has checked that the final coding is chunked
        elif lname == b"connection":
            self._has_connection = True
            if value == b"keep-alive" or value == b"Keep-Alive":
                return True  # the usual value: nothing more to remember
            tokens = connection_tokens(value)
            if b"close" in tokens:
                self._conn_close = True
            named = {t for t in tokens if t != b"close" and t != b"keep-alive"}
            if named:
                self._conn_named = named if self._conn_named is None else self._conn_named | named
        elif lname not in HOP_BY_HOP:
            return False
        return True

    def _end_events(self) -> None:
        self._in_body = False
        self._events.append(END if self._trailers is None else EndOfMessage(self._trailers))

    def feed(self, data: bytes) -> list[Event]:
        """The events the bytes `data` complete, in order (empty once a `ParseError` was returned)."""
        events: list[Event] = []
        self._events = events
        if self._failed:
            return events
        was_in_head = self.in_head
        try:
            self._feed_parser(data)
        except httptools.HttpParserCallbackError as exc:
            self._callback_failed(exc.__context__)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserError as exc:
            self._malformed(exc)
        else:
            if self._spilled(data, was_in_head):
                self._fail(self._too_large())
        self._events = _DETACHED
        return events

    def _fail(self, error: MeshdError, abandons: bool = False) -> None:
        self._failed = True
        self.in_head = False
        self._events.append(ParseError(error, abandons))

    def detach(self) -> None:
        """The connection is gone: take no more input and let go of the connection and the parser.

        The codec and its parser refer to each other (llhttp calls the codec's methods), and the
        codec refers to its connection (`producer`), which refers to the codec: a cycle that only
        the cyclic garbage collector would free, and meshd runs it rarely (meshd/daemon.py
        `_tune_gc`). Breaking it here lets reference counting free a closed connection at once."""
        self._failed = True
        self.producer = None
        self._drop_parser()

    # -- what each direction has of its own: its parser and its errors -----------------------
    def _feed_parser(self, data: bytes) -> None:
        raise NotImplementedError

    def _drop_parser(self) -> None:
        """Replace the parser by one that refers to nothing (see `detach`)."""
        raise NotImplementedError

    def _callback_failed(self, cause: BaseException | None) -> None:
        """A callback raised `cause` (a MeshdError for a refused message); llhttp stopped."""
        raise NotImplementedError

    def _upgraded(self) -> None:
        """llhttp stopped after a head that switches protocols."""
        raise NotImplementedError

    def _malformed(self, exc: Exception) -> None:
        """llhttp refused the bytes (`exc` says how)."""
        raise NotImplementedError

    def _too_large(self) -> MeshdError:
        raise NotImplementedError

    def _too_many(self) -> MeshdError:
        raise NotImplementedError

    # -- httptools callbacks shared by both sides ---------------------------------------------
    def on_body(self, data: bytes) -> None:
        if self._in_body:
            self._events.append(data)

    def on_message_complete(self) -> None:
        self._end_events()


class RequestCodec(_Http1Codec):
    """Reads requests from a downstream client: bytes in, `Request`s and their bodies out."""

    def __init__(
        self,
        *,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
        replay_limit: int = 64 * 1024,
        producer: FlowControl | None = None,
        client_ip: str = "",
    ) -> None:
        super().__init__(max_head_bytes, max_headers, producer)
        self.replay_limit = replay_limit
        self.client_ip = client_ip
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._l5d: dict[str, bytes] = {}
        self._host: bytes | None = None
        self._expect_continue = False
        self._forwarded = False

    def _feed_parser(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def _drop_parser(self) -> None:
        self._parser = _NO_REQUEST_PARSER

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, MeshdError):
            self._fail(cause)
        else:
            log.exception("request codec callback failed", exc_info=cause)
            self._fail(BadRequest("malformed request"))

    def _upgraded(self) -> None:
        # llhttp stops after the head of a request asking to switch protocols; that request is
        # answered 501 instead of being forwarded without its Upgrade.
        self._fail(NotImplementedMethod("protocol upgrades (Upgrade, CONNECT) are not supported"), abandons=True)

    def _malformed(self, exc: Exception) -> None:
        self._fail(BadRequest(f"malformed request: {exc}"))

    def _too_large(self) -> MeshdError:
        return _headers_too_large(self.max_head_bytes)

    def _too_many(self) -> MeshdError:
        return HeadersTooLarge(f"more than {self.max_headers} header fields (maxHeaders)")

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_message()
        self._url = b""
        self._l5d = {}
        self._host = None
        self._expect_continue = False
        self._forwarded = False
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.max_head_bytes:
            raise _headers_too_large(self.max_head_bytes)
        self._url = self._url + url if self._url else url  # llhttp may report it in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(name, value)
        if self._in_body:
            # Trailers: the routing and trust decisions were made on the head, so nothing that
            # steers routing, framing or authentication may follow in them (see TRAILER_DROPPED).
            lname = name.lower()
            if lname in TRAILER_DROPPED or lname.startswith(b"l5d-"):
                return
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            return
        size = len(name)
        if size == 0:
            lname = name
        else:
            first = name[0]
            if (size >= 32 or not _REQUEST_ACTED_ON[size]) and first != _LOWER_L and first != _UPPER_L:
                self._headers.append((name, value))
                return
            if name == b"Host":  # the one field every request has, in the case nearly all send
                lname = b"host"
            elif name in PLAIN_REQUEST_FIELDS:
                self._headers.append((name, value))
                return
            else:
                lname = name.lower()
        if lname == b"host":
            if self._host is not None:
                raise BadRequest("more than one Host header")
            self._host = value
            self._headers.append((name, value))
        elif self._framing_or_hop(lname, value):
            pass
        elif lname == b"expect":
            if value.lower() == b"100-continue":
                self._expect_continue = True
            else:
                self._headers.append((name, value))
        elif lname.startswith(b"l5d-"):
            self._l5d[lname.decode("latin-1")] = value
        else:
            if lname == b"via" or lname == b"x-forwarded-for":
                self._forwarded = True
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        if method == "CONNECT":
            raise NotImplementedMethod("CONNECT is not supported")
        keep_alive = parser.should_keep_alive()
        version = request_version(parser, keep_alive, self._has_connection)
        if version != "1.1" and version != "1.0":
            # llhttp accepts 0.9 and 2.0 in a request line; neither is HTTP/1 (nginx answers 505).
            raise VersionNotSupported(f"HTTP/{version} is not supported: meshd speaks HTTP/1.1 and HTTP/1.0 here")
        if self._chunked and version == "1.0":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise BadRequest("malformed request: Transfer-Encoding in an HTTP/1.0 request")
        headers = self._headers
        l5d = self._l5d
        named = self._conn_named
        if named:
            headers = [(n, v) for n, v in headers if n.lower() not in named]
            l5d = {k: v for k, v in l5d.items() if k.encode("latin-1") not in named}
        if self._chunked:
            body = Body(chunked=True, replay_limit=self.replay_limit, producer=self.producer)
        elif self._content_length:
            body = Body(length=self._content_length, replay_limit=self.replay_limit, producer=self.producer)
        else:
            body = Body.empty(self._content_length)
        self._in_body = True
        url = self._url
        host = self._host
        if url[0] != _SLASH and url != b"*":  # absolute-form (origin-form is the usual case)
            host = _absolute_form_host(url, headers, host)
        request = Request(
            method,
            url.decode("latin-1"),
            version,
            headers,
            body,
            l5d=l5d,
            keep_alive=keep_alive,
            host=host.decode("latin-1") if host is not None else None,
            client_ip=self.client_ip,
            expect_continue=self._expect_continue,
        )
        request.forwarded = self._forwarded
        self._events.append(request)


class ResponseCodec(_Http1Codec):
    """Reads responses from an upstream: bytes in, `Response`s and their bodies out.

    One response is read per request sent: call `expect(method)` before sending each request, so
    that the response to a HEAD is known to have no body. Interim (1xx) responses are skipped.
    After a head, `keep_alive` says whether the upstream keeps the connection open, and
    `until_close` whether the body runs until the connection closes (then call `eof()`).
    """

    def __init__(
        self,
        label: str,
        *,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
        producer: FlowControl | None = None,
    ) -> None:
        super().__init__(max_head_bytes, max_headers, producer)
        self.label = label
        self._parser = httptools.HttpResponseParser(self)
        self._method = ""
        self._reason = b""
        self._has_via = False
        #: the last response head kept the connection alive
        self.keep_alive = True
        #: the last response's body is delimited by the connection closing
        self.until_close = False

    def expect(self, method: str) -> None:
        """A response to a `method` request is due next (its head is now being waited for)."""
        self._method = method
        self.in_head = True
        self.keep_alive = True
        self.until_close = False
        self._head_bytes = 0
        self._head_count = 0
        self._head_spill = 0

    def _feed_parser(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def _drop_parser(self) -> None:
        self._parser = _NO_RESPONSE_PARSER

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, _StopAfterHead):
            # the response to a HEAD ends with its head; llhttp would wait for a body
            self._parser = httptools.HttpResponseParser(self)
            self._end_head_only()
        elif isinstance(cause, MeshdError):
            self._fail(cause)
        else:
            self._fail(UpstreamFailed(f"malformed response from {self.label}: {cause}"))

    def _upgraded(self) -> None:
        self._fail(UpstreamFailed(f"{self.label} switched protocols unexpectedly"))

    def _malformed(self, exc: Exception) -> None:
        self._fail(UpstreamFailed(f"malformed response from {self.label}: {exc}"))

    def eof(self) -> list[Event]:
        """The upstream closed the connection: ends a body that runs until then."""
        events: list[Event] = []
        self._events = events
        if not self._failed and self.until_close and self._in_body:
            self._end_events()
            self._next_message()
        self._events = _DETACHED
        return events

    def _end_head_only(self) -> None:
        self._in_body = False
        self._events.append(END)
        self._next_message()

    def _next_message(self) -> None:
        """A message (an interim head included) has ended: the next one starts from fresh fields.

        Done here rather than in an `on_message_begin` callback, which this codec does not
        define, so that llhttp makes one Python call less per response; the first message
        starts from the fields `__init__` set."""
        self._reset_fields()
        self._reason = b""
        self._has_via = False

    def _too_large(self) -> MeshdError:
        return UpstreamFailed(
            f"response head from {self.label} exceeds {self.max_head_bytes} bytes (maxResponseHeaderBytes)"
        )

    def _too_many(self) -> MeshdError:
        return UpstreamFailed(f"response from {self.label} has more than {self.max_headers} headers (maxResponseHeaders)")

    # -- httptools callbacks (no `on_message_begin`: see `_next_message`) ---------------------
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(name, value)
        if self._in_body:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            return
        size = len(name)
        if size >= 32 or not _RESPONSE_ACTED_ON[size]:
            self._headers.append((name, value))
            return
        if name == b"Content-Length":  # the two acted-on fields nearly every response has
            lname = b"content-length"
        elif name == b"Connection":
            lname = b"connection"
        elif name in PLAIN_RESPONSE_FIELDS:
            self._headers.append((name, value))
            return
        else:
            lname = name.lower()
        if self._framing_or_hop(lname, value):
            # a value of at most 18 characters is below 10**18, so below the bound
            if len(value) > 18 and lname == b"content-length":
                length = self._content_length
                if length is not None and length > MAX_CONTENT_LENGTH:
                    raise UpstreamFailed(
                        f"malformed response from {self.label}: Content-Length {length} exceeds 2**63-1"
                    )
            return
        if lname == b"via":
            self._has_via = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # interim response: skipped; the real one follows
        self.in_head = False
        headers = self._headers
        named = self._conn_named
        if named:
            headers = [(n, v) for n, v in headers if n.lower() not in named]
        self.keep_alive = parser.should_keep_alive() and not self._conn_close
        is_head = self._method == "HEAD"
        length = self._content_length
        if is_head or status in _NO_BODY_STATUS:
            body = Body.empty()
        elif self._chunked:
            body = Body(chunked=True, producer=self.producer)
        elif length is not None:
            body = Body(length=length, producer=self.producer) if length else Body.empty(0)
        else:
            body = Body(producer=self.producer)
            self.until_close = True
            self.keep_alive = False
        self._in_body = True
        response = Response(status, self._reason, headers, body, content_length=length)
        response.has_via = self._has_via
        self._events.append(response)
        if is_head:
            raise _StopAfterHead()

    def on_message_complete(self) -> None:
        if self._in_body:
            self._end_events()
        # else the end of an interim response; either way the next message starts afresh (the
        # head counters run from `expect()`, across interim heads)
        self._next_message()


def content_length(value: bytes) -> int:
    """A Content-Length value llhttp has accepted, as an int: `int(value)` without its generic call
    for the usual short value of digits alone (the rest, spaces or 19 digits and more, by `int`)."""
    size = len(value)
    if size == 0 or size > 18:
        return int(value)
    n = 0
    for i in range(size):
        c = value[i]
        if c < 48 or c > 57:
            return int(value)
        n = n * 10 + (c - 48)
    return n


def request_version(parser: httptools.HttpRequestParser, keep_alive: bool, has_connection_header: bool) -> str:
    """The request's HTTP version ("1.1", "1.0", ...), without asking llhttp when it is implied.

    httptools formats the version string with `str.format` on every call, about 1% of the CPU of
    a proxied request. llhttp accepts only 0.9, 1.0, 1.1 and 2.0, and for a request it calls
    the connection persistent without a Connection header only in HTTP/1.1 (1.x with x > 0).
    """
    if keep_alive and not has_connection_header:
        return "1.1"
    return parser.get_http_version()


def _absolute_form_host(url: bytes, headers: Headers, host: bytes | None) -> bytes | None:
    """RFC 9112 §3.2.2: a proxy replaces Host with the authority of an absolute-form target."""
    authority = authority_of(url.decode("latin-1"))
    if authority is None:
        return host
    value = authority.encode("latin-1")
    for i, (name, _) in enumerate(headers):
        if len(name) == 4 and name.lower() == b"host":
            headers[i] = (name, value)
            return value
    headers.append((b"Host", value))
    return value


def _headers_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(f"request line and headers exceed {limit} bytes")
