"""The fast HTTP/2 codec: libnghttp2 (C) behind meshd's codec interface, through a cffi binding.

libnghttp2 is the HTTP/2 library curl, Apache httpd and (until 2023) Envoy use. The binding is
cffi in API mode: C glue (nghttp2_glue.c) compiled into `meshd.http2._nghttp2` when meshd is
installed, as the hot path is compiled with mypyc (setup.py; Debian `libnghttp2-dev` to build,
`libnghttp2-14` to run). Every nghttp2 callback is C; Python crosses into C once per codec call
and reads what a receive produced from two flat buffers (see nghttp2_glue.c for their layout).

Without the compiled binding this module still imports: `AVAILABLE` is False, `WHY_UNAVAILABLE`
says why, and constructing `NgHttp2Codec` raises `ImportError` with that text.
"""

from __future__ import annotations

from typing import Any

from meshd.http2.codec import (
    REASONS,
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

#: the glue's version this module decodes (MH_ABI in nghttp2_glue.c): a stale build is refused
ABI = 9



def _stale() -> str | None:
    """In a source checkout: why the built binding is older than its glue, or None."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    if not (here / "nghttp2_glue.c").exists():
        return None  # an installed package: built from what is beside it
    from meshd.http2._nghttp2_build import source_digest

    built = ffi.string(lib.mh_source()).decode()
    if built != source_digest():
        return ("the libnghttp2 binding is older than meshd/http2/nghttp2_glue.c: `make install` "
                "(or `python -m meshd.http2._nghttp2_build`) builds it again")
    return None


ffi: Any
lib: Any
WHY_UNAVAILABLE: str | None
try:
    from meshd.http2._nghttp2 import ffi, lib  # type: ignore[no-redef]
except ImportError as exc:  # not built here (no libnghttp2-dev at install), or no libnghttp2.so
    ffi = lib = None
    WHY_UNAVAILABLE = (
        f"the libnghttp2 binding (meshd.http2._nghttp2) is not built or does not load ({exc}): "
        "apt-get install libnghttp2-dev, then `make install` (or `python -m meshd.http2._nghttp2_build`)"
    )
else:
    if lib.mh_abi() != ABI:
        WHY_UNAVAILABLE = (
            f"the libnghttp2 binding is stale (built from glue version {lib.mh_abi()}, this code "
            f"reads version {ABI}): `make install` builds it again"
        )
        ffi = lib = None
    else:
        WHY_UNAVAILABLE = _stale()
        if WHY_UNAVAILABLE is not None:
            ffi = lib = None

AVAILABLE: bool = WHY_UNAVAILABLE is None

# the glue's record types and reasons (nghttp2_glue.c)
_HEADERS, _DATA, _RESET, _WINDOW, _SETTINGS, _GOAWAY, _PING_ACK, _ERROR = 1, 3, 4, 5, 6, 7, 8, 9
_REASONS = ("protocol", "flow_control", "frame_size", "compression", "headers_too_large", "flood",
            "rapid_reset", "internal")
assert set(_REASONS) <= set(REASONS)


_join = b"\0".join


def _flatten(headers: Headers) -> bytes:
    """Names and values joined by NUL (which no field may hold): what the glue reads them from."""
    return _join(map(_join, headers))


def _refused(what: str, stream_id: int, rv: int) -> ValueError:
    if rv == -509:  # NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE, from the glue's check
        return ValueError(f"HTTP/2: cannot open stream {stream_id}: the peer allows no more concurrent "
                          "streams (peer_max_concurrent_streams)")
    if rv == -516:  # NGHTTP2_ERR_START_STREAM_NOT_ALLOWED
        return ValueError(f"HTTP/2: cannot open stream {stream_id} (see can_open_stream)")
    if rv == -501:  # NGHTTP2_ERR_INVALID_ARGUMENT from the glue's splitting
        return ValueError(f"HTTP/2 {what} on stream {stream_id}: a header name or value holds NUL, or "
                          "the stream id is not the next one")
    return ValueError(f"HTTP/2 {what} on stream {stream_id}: {ffi.string(lib.nghttp2_strerror(rv)).decode()}")


class NgHttp2Codec:
    """`H2Codec` on libnghttp2. See meshd/http2/codec.py for the contract."""

    __slots__ = ("settings", "_c", "_client_side")

    def __init__(self, *, client_side: bool, settings: H2Settings | None = None) -> None:
        if lib is None:
            raise ImportError(WHY_UNAVAILABLE)
        self.settings = settings or H2Settings()
        s = self.settings
        limits = [s.max_concurrent_streams, s.initial_window_size, s.max_frame_size,
                  s.max_header_list_size, s.header_table_size, s.connection_window_size,
                  s.reset_budget, s.max_pending_acks, 32, 8]
        c = lib.mh_new(1 if client_side else 0, limits)
        if c == ffi.NULL:
            raise MemoryError("nghttp2: cannot create a session")
        self._c = ffi.gc(c, lib.mh_free)
        self._client_side = client_side
        if client_side and s.first_stream_id > 1:
            lib.mh_set_next_stream_id(c, s.first_stream_id)

    # -- opening and bytes in/out -------------------------------------------------------------

    def start(self) -> None:
        rv = lib.mh_start(self._c)
        if rv < 0:
            raise RuntimeError(f"nghttp2: {ffi.string(lib.nghttp2_strerror(rv)).decode()}")

    def receive(self, data: bytes | bytearray | memoryview) -> list[H2Event]:
        if type(data) is not bytes:  # a BufferedProtocol's buffer: DATA is sliced from what is passed
            data = bytes(data)
        c = self._c
        n = lib.mh_recv(c, data, len(data))
        if not n:
            return []
        ints: list[int] = ffi.unpack(c.ev, n)
        size = c.blob_len
        blob: bytes = ffi.unpack(c.blob, size) if size else b""
        events: list[H2Event] = []
        append = events.append
        i = pos = 0
        while i < n:
            kind = ints[i]
            if kind == _DATA:
                # sid, end, offset (into `data`; negative: into the blob), length
                off, length = ints[i + 3], ints[i + 4]
                if off >= 0:
                    chunk = data[off:off + length]
                else:
                    start = -1 - off
                    chunk = blob[start:start + length]
                    pos = start + length
                append(DataReceived(ints[i + 1], chunk, length, ints[i + 2] != 0))
                i += 5
            elif kind == _HEADERS:
                # sid, flags, fields, length: name NUL value NUL ... in the blob
                length = ints[i + 4]
                if ints[i + 3]:
                    fields = iter(blob[pos:pos + length].split(b"\0"))
                    headers: Headers = list(zip(fields, fields, strict=False))
                else:
                    headers = []
                pos += length
                flags = ints[i + 2]
                if flags & 2:
                    append(TrailersReceived(ints[i + 1], headers))
                else:
                    append(HeadersReceived(ints[i + 1], headers, flags & 1 != 0))
                i += 5
            elif kind == _WINDOW:
                append(WindowUpdated(ints[i + 1]))
                i += 2
            elif kind == _RESET:
                append(StreamReset(ints[i + 1], ints[i + 2], ints[i + 3] != 0))
                i += 4
            elif kind == _SETTINGS:
                append(RemoteSettingsChanged(ints[i + 1]))
                i += 2
            elif kind == _GOAWAY:
                length = ints[i + 3]
                append(GoAwayReceived(ints[i + 1], ints[i + 2], blob[pos:pos + length]))
                pos += length
                i += 4
            elif kind == _PING_ACK:
                append(PingAcked(blob[pos:pos + 8]))
                pos += 8
                i += 1
            elif kind == _ERROR:
                append(ConnectionError(ints[i + 1], _REASONS[ints[i + 2]]))
                i += 3
            else:  # pragma: no cover - the glue and this decoder disagree
                raise AssertionError(f"nghttp2 glue: unknown record {kind}")
        return events

    def data_to_send(self) -> bytes:
        c = self._c
        n = lib.mh_flush(c)
        if n <= 0:
            return b""
        out: bytes = ffi.unpack(c.out, n)
        return out

    # -- sending ------------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        sid = int(lib.mh_next_stream_id(self._c))
        if sid < 0:
            raise RuntimeError("HTTP/2: no stream ids left on this connection (see can_open_stream)")
        return sid

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        blob = _join(map(_join, headers))
        rv = lib.mh_send_headers(self._c, stream_id, blob, len(blob), len(headers), 1 if end_stream else 0)
        if rv < 0 and rv != -510:  # NGHTTP2_ERR_STREAM_CLOSED: ignored, as the contract says
            raise _refused("send_headers", stream_id, rv)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        lib.mh_send_data(self._c, stream_id, data, len(data), 1 if end_stream else 0)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        blob = _join(map(_join, headers))
        rv = lib.mh_send_trailers(self._c, stream_id, blob, len(blob), len(headers))
        if rv < 0 and rv != -510:
            raise _refused("send_trailers", stream_id, rv)

    def end_stream(self, stream_id: int) -> None:
        lib.mh_send_data(self._c, stream_id, b"", 0, 1)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        lib.mh_reset(self._c, stream_id, error_code)

    def consumed(self, stream_id: int, length: int) -> None:
        if length > 0:
            lib.mh_consumed(self._c, stream_id, length)

    def buffered(self, stream_id: int) -> int:
        return int(lib.mh_buffered(self._c, stream_id))

    def ping(self, data: bytes) -> None:
        if len(data) != 8:
            raise ValueError("HTTP/2 PING carries exactly 8 bytes")
        lib.mh_ping(self._c, data)

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        lib.mh_goaway(self._c, error_code, -1 if last_stream_id is None else last_stream_id)

    @property
    def open_outbound_streams(self) -> int:
        return int(self._c.outbound)

    @property
    def open_inbound_streams(self) -> int:
        return int(self._c.inbound)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(lib.mh_peer_max_concurrent_streams(self._c))

    @property
    def can_open_stream(self) -> bool:
        return bool(lib.mh_can_open_stream(self._c))

    def _memory(self) -> tuple[int, int]:
        """Tests: bytes held now (nghttp2's, counted by its allocator, plus the glue's buffers),
        and the most nghttp2 ever held at once."""
        c = self._c
        return int(c.lib_bytes) + int(lib.mh_own_bytes(c)), int(c.lib_peak)
