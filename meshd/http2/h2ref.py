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
    INTERNAL_ERROR,
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
        self._out: dict[int, _Outbound] = {}
        self._client_side = client_side

    # -- opening and bytes in/out -------------------------------------------------------------

    def start(self) -> None:
        self._h2.initiate_connection()
        extra = self.settings.connection_window_size - 65_535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def receive(self, data: bytes) -> list[H2Event]:
        import h2.events
        import h2.exceptions

        try:
            raw = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = int(getattr(exc, "error_code", 1))
            self._h2.close_connection(error_code=code)
            return [ConnectionError(code, _reason(exc))]
        events: list[H2Event] = []
        flush = False
        for ev in raw:
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
                events.append(StreamReset(ev.stream_id, int(ev.error_code), bool(ev.remote_reset)))
            elif isinstance(ev, h2.events.WindowUpdated):
                flush = True
                events.append(WindowUpdated(ev.stream_id))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                flush = True
                events.append(RemoteSettingsChanged(self.peer_max_concurrent_streams))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                events.append(GoAwayReceived(ev.last_stream_id or 0, int(ev.error_code or 0),
                                             ev.additional_data or b""))
                if not ev.error_code:
                    # A graceful GOAWAY: the streams at or below its last id still complete
                    # (RFC 9113 §6.8). `h2` closes its whole connection state on any GOAWAY and
                    # would refuse their frames, so its state is put back to open.
                    self._reopen()
            elif isinstance(ev, h2.events.PingAckReceived):
                events.append(PingAcked(ev.ping_data))
        if flush:
            self._flush_all()
        return events

    def data_to_send(self) -> bytes:
        return bytes(self._h2.data_to_send())

    # -- sending ------------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        return int(self._h2.get_next_available_stream_id())

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        if data:
            out.chunks.append(data)
            out.size += len(data)
        out.end = out.end or end_stream
        self._flush(stream_id, out)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
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
        self._h2.close_connection(error_code=error_code, last_stream_id=last_stream_id)
        if error_code == 0:
            self._reopen()  # graceful: the streams already accepted are still answered (see receive)

    def _reopen(self) -> None:
        import h2.connection

        state = h2.connection.ConnectionState
        self._h2.state_machine.state = state.CLIENT_OPEN if self._client_side else state.SERVER_OPEN

    @property
    def open_outbound_streams(self) -> int:
        return int(self._h2.open_outbound_streams)

    @property
    def open_inbound_streams(self) -> int:
        return int(self._h2.open_inbound_streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

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
                    return
            if out.end:
                del self._out[stream_id]
                if out.trailers is not None:
                    h2c.send_headers(stream_id, out.trailers, end_stream=True)
                else:
                    h2c.end_stream(stream_id)
        except h2.exceptions.StreamClosedError:
            self._out.pop(stream_id, None)
        except h2.exceptions.ProtocolError:
            self._out.pop(stream_id, None)
            self._h2.reset_stream(stream_id, error_code=INTERNAL_ERROR)


def _headers(pairs: Any) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in pairs]


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
