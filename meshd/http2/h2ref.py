"""The reference HTTP/2 codec: the `h2` library (pure Python) behind meshd's codec interface.

`h2` is the most widely used Python HTTP/2 state machine and checks the protocol closely, which
makes it the reference the faster backend is tested against and a convenient scripted peer. It
costs far more CPU per exchange than a C codec (docs/benchmarks.md), so the data path does not
use it by default. It is imported lazily: meshd runs without it installed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from meshd.http2.codec import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    INTERNAL_ERROR,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionError,
    DataReceived,
    GoAwayReceived,
    H2Event,
    H2Settings,
    Headers,
    HeadersReceived,
    PingAcked,
    RemoteSettingsChanged,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)


class _Outbound:
    __slots__ = ("chunks", "size", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: Headers | None = None


class H2RefCodec:
    """`H2Codec` on the `h2` library. See meshd/http2/codec.py for the contract."""

    def __init__(self, *, client_side: bool, settings: H2Settings | None = None) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        self.settings = settings or H2Settings()
        s = self.settings
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=True,
        )
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: s.header_table_size,
            },
        )
        self._h2.max_inbound_frame_size = s.max_frame_size
        if client_side and s.first_stream_id > 1:
            self._h2.highest_outbound_stream_id = s.first_stream_id - 2
        # h2 applies its own limit only when a changed setting is acknowledged
        self._h2.decoder.max_header_list_size = s.max_header_list_size
        # h2 closes the connection on GOAWAY either way; HTTP/2 lets the streams at or below
        # last_stream_id finish (a graceful drain). Receiving: the state goes back to open after
        # the frame (new streams are refused by send_headers, can_open_stream says so).
        import hyperframe.frame

        table: Any = self._h2._frame_dispatch_table
        on_goaway = table[hyperframe.frame.GoAwayFrame]

        opened = (h2.connection.ConnectionState.CLIENT_OPEN if client_side
                  else h2.connection.ConnectionState.SERVER_OPEN)

        def drain(frame: Any) -> Any:
            result = on_goaway(frame)
            self._h2.state_machine.state = opened
            return result

        table[hyperframe.frame.GoAwayFrame] = drain
        self._out: dict[int, _Outbound] = {}
        self._client_side = client_side
        self._failed = False
        self._goaway = False  # sent or received: no new streams
        self._pending_acks = 0
        self._reset_tokens = s.reset_budget

    # -- opening and bytes in/out -------------------------------------------------------------

    def start(self) -> None:
        self._h2.initiate_connection()
        extra = self.settings.connection_window_size - 65_535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def _fail(self, code: int, reason: str, events: list[H2Event]) -> list[H2Event]:
        self._failed = self._goaway = True
        self._h2.clear_outbound_data_buffer()  # the acks of a flood go unanswered
        self._h2.close_connection(error_code=code)
        events.append(ConnectionError(code, reason))
        return events

    def receive(self, data: bytes | bytearray | memoryview) -> list[H2Event]:
        import h2.events
        import h2.exceptions
        import h2.stream

        if self._failed:
            return []
        try:
            raw = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code, reason = _classify(exc)
            return self._fail(code, reason, [])
        events: list[H2Event] = []
        flush = False
        peer_parity = 0 if self._client_side else 1
        for ev in raw:
            if isinstance(ev, (h2.events.PingReceived, h2.events.RemoteSettingsChanged)):
                self._pending_acks += 1
                if self._pending_acks > self.settings.max_pending_acks:
                    return self._fail(ENHANCE_YOUR_CALM, "flood", events)
            if isinstance(ev, (h2.events.RequestReceived, h2.events.ResponseReceived,
                               h2.events.InformationalResponseReceived)):
                events.append(HeadersReceived(ev.stream_id, _headers(ev.headers),
                                              getattr(ev, "stream_ended", None) is not None))
            elif isinstance(ev, h2.events.DataReceived):
                events.append(DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length,
                                           ev.stream_ended is not None))
            elif isinstance(ev, h2.events.TrailersReceived):
                events.append(TrailersReceived(ev.stream_id, _headers(ev.headers)))
            elif isinstance(ev, h2.events.StreamReset):
                self._out.pop(ev.stream_id, None)
                if ev.remote_reset and ev.stream_id % 2 == peer_parity and self.settings.reset_budget > 0:
                    self._reset_tokens -= 1
                    if self._reset_tokens < 0:
                        return self._fail(ENHANCE_YOUR_CALM, "rapid_reset", events)
                events.append(StreamReset(ev.stream_id, int(ev.error_code), bool(ev.remote_reset)))
            elif isinstance(ev, h2.events.WindowUpdated):
                flush = True
                events.append(WindowUpdated(ev.stream_id))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                flush = True
                events.append(RemoteSettingsChanged(self.peer_max_concurrent_streams))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._goaway = True
                last = ev.last_stream_id or 0
                events.append(GoAwayReceived(last, int(ev.error_code or 0), ev.additional_data or b""))
                # our streams above `last` will never be processed: refused, so retryable
                own = 1 - peer_parity
                for sid, stream in sorted(self._h2.streams.items()):
                    if sid > last and sid % 2 == own and not stream.closed:
                        self._out.pop(sid, None)
                        # closed here without a frame (h2 has no call for it): as if reset
                        stream.state_machine.stream_closed_by = h2.stream.StreamClosedBy.SEND_RST_STREAM
                        stream.state_machine.state = h2.stream.StreamState.CLOSED
                        events.append(StreamReset(sid, REFUSED_STREAM, False))
            elif isinstance(ev, h2.events.PingAckReceived):
                events.append(PingAcked(ev.ping_data))
        if flush:
            self._flush_all()
        return events

    def data_to_send(self) -> bytes:
        self._pending_acks = 0
        return bytes(self._h2.data_to_send())

    # -- sending ------------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        import h2.exceptions

        try:
            return int(self._h2.get_next_available_stream_id())
        except h2.exceptions.NoAvailableStreamIDError:
            raise RuntimeError("HTTP/2: no stream ids left on this connection (see can_open_stream)") from None

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        import h2.exceptions

        if self._failed:
            return  # the connection is going: the caller has the ConnectionError
        if self._client_side and stream_id not in self._h2.streams and not self.can_open_stream:
            raise ValueError(f"HTTP/2: cannot open stream {stream_id} (see can_open_stream)")
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            return  # the peer reset it: the caller has the event
        except h2.exceptions.TooManyStreamsError:
            raise ValueError(f"HTTP/2: cannot open stream {stream_id}: the peer allows no more concurrent "
                             "streams (peer_max_concurrent_streams)") from None
        if end_stream:
            self._completed(stream_id)

    def _completed(self, stream_id: int) -> None:
        """This side ended a stream the peer opened: it earns back a rapid-reset token."""
        if stream_id % 2 == (0 if self._client_side else 1):
            self._reset_tokens = min(self.settings.reset_budget, self._reset_tokens + 1)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._failed:
            return
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        if data:
            out.chunks.append(data)
            out.size += len(data)
        out.end = out.end or end_stream
        self._flush(stream_id, out)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self._failed:
            return
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        out.trailers = headers
        out.end = True
        self._flush(stream_id, out)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", True)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        import h2.exceptions

        self._out.pop(stream_id, None)
        if self._failed:
            return
        try:
            self._h2.reset_stream(stream_id, error_code=error_code)
        except h2.exceptions.StreamClosedError:
            pass  # already closed both ways: nothing to reset

    def consumed(self, stream_id: int, length: int) -> None:
        import h2.exceptions

        if length <= 0:
            return
        try:
            self._h2.acknowledge_received_data(length, stream_id)
        except h2.exceptions.StreamClosedError:
            # the stream is gone; the connection's window still needs the bytes back
            self._h2.increment_flow_control_window(length)

    def buffered(self, stream_id: int) -> int:
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def ping(self, data: bytes) -> None:
        self._h2.ping(data)

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        import hyperframe.frame

        self._goaway = True
        if error_code:
            self._h2.close_connection(error_code=error_code, last_stream_id=last_stream_id)
            return
        # graceful: the frame only, so the streams at or below last_stream_id can finish
        if last_stream_id is None:
            last_stream_id = int(self._h2.highest_inbound_stream_id or 0)
        frame = hyperframe.frame.GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0)
        self._h2._data_to_send += frame.serialize()

    @property
    def open_outbound_streams(self) -> int:
        return int(self._h2.open_outbound_streams)

    @property
    def open_inbound_streams(self) -> int:
        return int(self._h2.open_inbound_streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def can_open_stream(self) -> bool:
        if self._failed or self._goaway:
            return False
        return int(self._h2.highest_outbound_stream_id or 0) + 2 <= MAX_STREAM_ID

    # -- flow control on the way out ----------------------------------------------------------

    def _flush_all(self) -> None:
        for stream_id, out in list(self._out.items()):
            self._flush(stream_id, out)

    def _flush(self, stream_id: int, out: _Outbound) -> None:
        import h2.exceptions

        h2c: Any = self._h2
        try:
            while out.chunks:
                window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk = out.chunks[0]
                if len(chunk) > window:
                    out.chunks[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    out.chunks.popleft()
                out.size -= len(chunk)
                last = not out.chunks and out.end and out.trailers is None
                h2c.send_data(stream_id, chunk, end_stream=last)
                if last:
                    del self._out[stream_id]
                    self._completed(stream_id)
                    return
            if out.end:
                del self._out[stream_id]
                if out.trailers is not None:
                    h2c.send_headers(stream_id, out.trailers, end_stream=True)
                else:
                    h2c.end_stream(stream_id)
                self._completed(stream_id)
        except h2.exceptions.StreamClosedError:
            self._out.pop(stream_id, None)
        except h2.exceptions.ProtocolError:
            self._out.pop(stream_id, None)
            self._h2.reset_stream(stream_id, error_code=INTERNAL_ERROR)


def _headers(pairs: Any) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in pairs]


def _classify(exc: Exception) -> tuple[int, str]:
    """The error code and `REASONS` word for an `h2` protocol error (alike nghttp2's)."""
    import h2.exceptions

    text = str(exc)
    if isinstance(exc, h2.exceptions.DenialOfServiceError):
        return ENHANCE_YOUR_CALM, "headers_too_large" if "header" in text.lower() else "flood"
    if "continuation frames" in text:
        return ENHANCE_YOUR_CALM, "flood"
    if isinstance(exc, h2.exceptions.FlowControlError):
        return FLOW_CONTROL_ERROR, "flow_control"
    if isinstance(exc, (h2.exceptions.FrameTooLargeError, h2.exceptions.FrameDataMissingError)):
        return FRAME_SIZE_ERROR, "frame_size"
    if "decoding header block" in text:
        return COMPRESSION_ERROR, "compression"
    if isinstance(exc, h2.exceptions.StreamClosedError):
        # a HEADERS on a stream that ended: h2 says STREAM_CLOSED (RFC 9113 5.1 allows it), the
        # nghttp2 backend PROTOCOL_ERROR (5.1.1: a stream id used again); one code for both
        return PROTOCOL_ERROR, "protocol"
    code = int(getattr(exc, "error_code", 1) or 1)
    return code, {FLOW_CONTROL_ERROR: "flow_control", FRAME_SIZE_ERROR: "frame_size",
                  COMPRESSION_ERROR: "compression", ENHANCE_YOUR_CALM: "flood"}.get(code, "protocol")
