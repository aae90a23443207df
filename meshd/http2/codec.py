"""The HTTP/2 codec interface: one sans-IO connection state machine, whichever library is underneath.

How this works: the connection's protocol (server listener or upstream pool) owns sockets and
streams; the codec owns HTTP/2 framing, HPACK, flow-control windows and stream states. Bytes read
from the socket go to `receive()`, which returns events; whatever the codec wants written (the
preface, SETTINGS, frames the caller asked for, WINDOW_UPDATE, PING and SETTINGS acks, GOAWAY) is
collected by `data_to_send()` after each call. No I/O, no clock, no tasks: a test can drive two
codecs against each other, or one against the `h2` library as a scripted peer.

Choices made once here so every backend behaves alike:
- Headers are `(name, value)` byte pairs, names lower-case, pseudo-headers (`:method`, `:status`,
  ...) first, as on the wire.
- End of stream is a flag on the event that carries it (`HeadersReceived.end_stream`,
  `DataReceived.end_stream`); trailers always end the stream.
- Sending: `send_data` accepts every byte at once and keeps what the peer's windows do not allow
  yet; `buffered(stream_id)` says how much is waiting, so the caller pauses its source past a mark
  and resumes on `WindowUpdated`. Trailers and end-of-stream queue behind the buffered data.
- Receiving: the codec never opens a window by itself. The caller calls `consumed(stream_id, n)`
  with each `DataReceived.flow_length` once it has passed the data on (written to the other side's
  socket), so a slow reader holds the peer back: that is back-pressure end to end.
- A protocol violation by the peer yields `ConnectionError` with the HTTP/2 error code and a
  reason from `REASONS`; the codec has already queued GOAWAY. The caller flushes
  `data_to_send()`, counts the reason (a metric label) and closes the connection.
- Defences against the known HTTP/2 denial-of-service patterns live here, alike in every backend
  (limits in `H2Settings`): a decoded header list over `max_header_list_size` (an HPACK bomb), a
  header block in too many CONTINUATION frames, more than `max_pending_acks` PING and SETTINGS
  frames answered since the caller last took `data_to_send()` (so the caller flushes after each
  receive, and stops reading while its socket's write buffer is full), and streams the peer
  opens and resets faster than they complete (`reset_budget`).
"""

from __future__ import annotations

from typing import Final, Protocol

Headers = list[tuple[bytes, bytes]]

# RFC 9113 section 7 error codes
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
CONNECT_ERROR: Final = 0xA
ENHANCE_YOUR_CALM: Final = 0xB
INADEQUATE_SECURITY: Final = 0xC
HTTP_1_1_REQUIRED: Final = 0xD

#: `ConnectionError.reason`: a small fixed vocabulary, so a metric can carry it as a label.
#: - "protocol": the peer broke RFC 9113 (bad preface, frame on the wrong stream, bad headers)
#: - "flow_control": a window overflowed past 2**31-1 or the peer sent beyond our window
#: - "frame_size": a frame over our SETTINGS_MAX_FRAME_SIZE, or of an impossible size
#: - "compression": an HPACK block that does not decode
#: - "headers_too_large": a decoded header list over max_header_list_size (an HPACK bomb)
#: - "flood": too many control frames (PING, SETTINGS) or CONTINUATION frames
#: - "rapid_reset": the peer reset more streams than completed, past reset_budget
#: - "internal": the codec itself failed (out of memory)
#: - "idle": not produced by a codec; the proxy's own name for a connection closed while idle
REASONS: Final = ("protocol", "flow_control", "frame_size", "compression", "headers_too_large",
                  "flood", "rapid_reset", "internal", "idle")

#: the highest stream id (RFC 9113 section 5.1.1): a client past it opens no more streams
MAX_STREAM_ID: Final = 2**31 - 1

#: what a client sends first on an HTTP/2 connection (RFC 9113 section 3.4)
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Settings:
    """The local SETTINGS a codec advertises, and its connection-level receive window.

    Defaults are safe for a proxy: 100 concurrent streams (RFC 9113's recommended minimum, and
    what Envoy and nghttp2 use), the protocol's 64 KiB stream window, 16 KiB frames, and a
    64 KiB cap on a decoded header list (an HPACK bomb stops there).

    Defences (codec.py's docstring): `max_pending_acks` PING and SETTINGS frames may wait for
    their answer to be taken by `data_to_send()` (nghttp2's own default is 1000 too);
    `reset_budget` streams the peer opened and then reset are forgiven, and each stream that
    completes normally earns one back (a budget, not a rate, so no clock is involved: the
    CVE-2023-44487 "rapid reset" pattern exhausts it at once, a client that cancels now and then
    never does).

    `first_stream_id` (client side; odd, 1 by default) is the id of the first stream this side
    opens. Not a setting on the wire: it lets a test start a connection near the end of the id
    space (2**31-1) to see it run out, on every backend alike.
    """

    __slots__ = (
        "max_concurrent_streams",
        "initial_window_size",
        "max_frame_size",
        "max_header_list_size",
        "header_table_size",
        "connection_window_size",
        "max_pending_acks",
        "reset_budget",
        "first_stream_id",
    )

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = 65_535,
        max_frame_size: int = 16_384,
        max_header_list_size: int = 65_536,
        header_table_size: int = 4_096,
        connection_window_size: int = 1_048_576,
        max_pending_acks: int = 1000,
        reset_budget: int = 200,
        first_stream_id: int = 1,
    ) -> None:
        if not (0 < first_stream_id <= MAX_STREAM_ID and first_stream_id % 2 == 1):
            raise ValueError(f"first_stream_id must be odd, 1 to 2**31-1: {first_stream_id}")
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        self.header_table_size = header_table_size
        self.connection_window_size = connection_window_size
        self.max_pending_acks = max_pending_acks
        self.reset_budget = reset_budget
        self.first_stream_id = first_stream_id


class H2Event:
    __slots__ = ()


class HeadersReceived(H2Event):
    """A request head (server side) or a response head, final or 1xx (client side)."""

    __slots__ = ("stream_id", "headers", "end_stream")

    def __init__(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream

    def __repr__(self) -> str:
        return f"<HeadersReceived {self.stream_id} {self.headers!r} end={self.end_stream}>"


class TrailersReceived(H2Event):
    """Trailing headers; the stream has ended."""

    __slots__ = ("stream_id", "headers")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers

    def __repr__(self) -> str:
        return f"<TrailersReceived {self.stream_id} {self.headers!r}>"


class DataReceived(H2Event):
    """Body bytes. `flow_length` (data plus padding) goes back to `consumed()` once passed on."""

    __slots__ = ("stream_id", "data", "flow_length", "end_stream")

    def __init__(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_length = flow_length
        self.end_stream = end_stream

    def __repr__(self) -> str:
        return f"<DataReceived {self.stream_id} {len(self.data)}B end={self.end_stream}>"


class StreamReset(H2Event):
    """RST_STREAM from the peer (`remote`), or a stream the codec reset itself for a stream error.

    Also (not remote, REFUSED_STREAM): a request above the `last_stream_id` of the peer's
    GOAWAY, which the peer will never process, so it may be retried on another connection.
    """

    __slots__ = ("stream_id", "error_code", "remote")

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote

    def __repr__(self) -> str:
        return f"<StreamReset {self.stream_id} code={self.error_code} remote={self.remote}>"


class WindowUpdated(H2Event):
    """The peer opened a window (stream 0: the connection's); buffered data may have gone out."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RemoteSettingsChanged(H2Event):
    """The peer's SETTINGS took effect (acknowledged by the codec)."""

    __slots__ = ("max_concurrent_streams",)

    def __init__(self, max_concurrent_streams: int) -> None:
        self.max_concurrent_streams = max_concurrent_streams


class GoAwayReceived(H2Event):
    """The peer will accept no stream above `last_stream_id`; those may be retried elsewhere.

    Streams at or below it carry on to their end. The codec follows this event with a
    `StreamReset(REFUSED_STREAM, remote=False)` for each of its own open streams above it.
    """

    __slots__ = ("last_stream_id", "error_code", "debug_data")

    def __init__(self, last_stream_id: int, error_code: int, debug_data: bytes) -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code
        self.debug_data = debug_data


class PingAcked(H2Event):
    """The answer to our `ping()` (the codec answers the peer's pings by itself)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ConnectionError(H2Event):  # noqa: A001 - an HTTP/2 connection error, not the OSError
    """The peer broke the protocol; GOAWAY with `error_code` is queued. Close after flushing."""

    __slots__ = ("error_code", "reason")

    def __init__(self, error_code: int, reason: str) -> None:
        self.error_code = error_code
        self.reason = reason

    def __repr__(self) -> str:
        return f"<ConnectionError code={self.error_code} {self.reason}>"


class H2Codec(Protocol):
    """One HTTP/2 connection, client or server side.

    Backends: h2ref.py (the `h2` library, pure Python: the reference) and nghttp2.py (libnghttp2
    through a cffi binding: the fast one). `meshd.http2.backends.codec_factory()` picks one.
    Sending on a stream that has already closed (the peer reset it, say) is ignored: the caller
    learnt of the close from an event.
    """

    def start(self) -> None:
        """Queue the opening: the client's preface and SETTINGS, or the server's SETTINGS."""

    def receive(self, data: bytes | bytearray | memoryview) -> list[H2Event]:
        """Bytes read from the socket; the events they complete, in order. A bytearray or
        memoryview (a BufferedProtocol's buffer) may be reused afterwards: events own their bytes."""

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call (b"" when nothing)."""

    def next_stream_id(self) -> int:
        """Client side: the id the next `send_headers` on a new stream must use (RuntimeError
        when the connection has none left: check `can_open_stream` first)."""

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """A request head (client) or response head (server); 1xx heads too on the server.
        A new stream when `can_open_stream` is False, or past `peer_max_concurrent_streams`
        open ones, raises ValueError: the pool checks both first."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Body bytes; kept in the codec while the peer's windows are closed."""

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailing headers, ending the stream (after any buffered data)."""

    def end_stream(self, stream_id: int) -> None:
        """An empty END_STREAM (after any buffered data)."""

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM; buffered data for the stream is dropped."""

    def consumed(self, stream_id: int, length: int) -> None:
        """`length` flow-controlled bytes of the stream were passed on: open the windows again."""

    def buffered(self, stream_id: int) -> int:
        """Body bytes accepted by `send_data` and not yet framed for lack of window."""

    def ping(self, data: bytes) -> None:
        """PING with 8 bytes of opaque data; `PingAcked` brings them back."""

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        """GOAWAY. `last_stream_id` defaults to the highest stream the peer opened."""

    @property
    def open_outbound_streams(self) -> int:
        """Streams this side opened that are not closed (client side: requests in flight)."""

    @property
    def open_inbound_streams(self) -> int:
        """Streams the peer opened that are not closed."""

    @property
    def peer_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (2**31-1 until it says otherwise)."""

    @property
    def can_open_stream(self) -> bool:
        """Client side: a new stream may be opened here. False once the stream ids are used up
        (2**31-1), after a GOAWAY either way or a connection error: the pool opens another
        connection instead."""
