"""Connection-level defences against HTTP/2 floods, independent of the codec underneath.

`FrameGuard` reads the 9-byte header of every frame a peer sends (it never parses payloads) and
keeps a few counters, so that the same limits hold whichever codec backend runs:

- rapid reset (CVE-2023-44487): RST_STREAM frames from the peer, a token bucket of 1,000 that
  refills 33 a second (nghttp2's figures): a client that cancels faster for long is closed.
- SETTINGS and PING floods: non-ACK SETTINGS and PING frames, a bucket of 100 each refilled 10 a
  second; every one of them makes meshd write an ACK, which a peer that does not read would
  otherwise pile up (the outbound bound in meshd/h2server.py catches that case too).
- CONTINUATION flood: a header block (HEADERS or PUSH_PROMISE and its CONTINUATION frames) of more
  than `max_block_bytes` (the advertised header list size: a compressed block is never larger than
  what it decodes to, HPACK's literal encoding being at worst a few bytes longer per field) or more
  than 32 CONTINUATION frames (empty ones included) is refused before the codec buffers any more.

`feed(data, now)` returns the reason ("rapid_reset", "settings_flood", "ping_flood",
"continuation_flood") the first time a limit is passed, else None; the caller sends GOAWAY
(ENHANCE_YOUR_CALM), counts the reason and closes the connection.
"""

from __future__ import annotations

from typing import Final

from meshd.http2.codec import PREFACE

DATA: Final = 0x0
HEADERS: Final = 0x1
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
CONTINUATION: Final = 0x9
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4

RESET_BURST: Final = 1000.0
RESET_RATE: Final = 33.0
CONTROL_BURST: Final = 100.0
CONTROL_RATE: Final = 10.0
MAX_CONTINUATIONS: Final = 32


class TokenBucket:
    __slots__ = ("tokens", "burst", "rate", "at")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.tokens = burst
        self.burst = burst
        self.rate = rate
        self.at = now

    def take(self, now: float) -> bool:
        """Take one token; False when the bucket is empty (the limit is passed)."""
        tokens = self.tokens + (now - self.at) * self.rate
        self.at = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class FrameGuard:
    __slots__ = (
        "_preface_left",
        "_head",
        "_skip",
        "_resets",
        "_settings",
        "_pings",
        "_in_block",
        "_block_bytes",
        "_continuations",
        "max_block_bytes",
    )

    def __init__(self, *, server_side: bool, max_block_bytes: int, now: float) -> None:
        #: bytes of the client's preface still to skip (server side)
        self._preface_left = len(PREFACE) if server_side else 0
        self._head = b""
        self._skip = 0
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, now)
        self._settings = TokenBucket(CONTROL_BURST, CONTROL_RATE, now)
        self._pings = TokenBucket(CONTROL_BURST, CONTROL_RATE, now)
        self._in_block = False
        self._block_bytes = 0
        self._continuations = 0
        self.max_block_bytes = max_block_bytes

    def feed(self, data: bytes, now: float) -> str | None:
        pos = 0
        end = len(data)
        if self._preface_left:
            take = min(self._preface_left, end)
            self._preface_left -= take
            pos = take
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            need = 9 - len(self._head)
            if need < 9 or end - pos < 9:
                piece = data[pos:pos + need]
                self._head += piece
                pos += len(piece)
                if len(self._head) < 9:
                    return None
                head = self._head
                self._head = b""
            else:
                head = data[pos:pos + 9]
                pos += 9
            length = (head[0] << 16) | (head[1] << 8) | head[2]
            reason = self._frame(head[3], head[4], length, now)
            if reason is not None:
                return reason
            self._skip = length
        return None

    def _frame(self, kind: int, flags: int, length: int, now: float) -> str | None:
        if kind == HEADERS or kind == PUSH_PROMISE:
            self._in_block = not flags & FLAG_END_HEADERS
            self._block_bytes = length
            self._continuations = 0
            if length > self.max_block_bytes:
                return "continuation_flood"
        elif kind == CONTINUATION:
            self._continuations += 1
            self._block_bytes += length
            if self._continuations > MAX_CONTINUATIONS or self._block_bytes > self.max_block_bytes:
                return "continuation_flood"
            if flags & FLAG_END_HEADERS:
                self._in_block = False
        elif kind == RST_STREAM:
            if not self._resets.take(now):
                return "rapid_reset"
        elif kind == SETTINGS:
            if not flags & FLAG_ACK and not self._settings.take(now):
                return "settings_flood"
        elif kind == PING:
            if not flags & FLAG_ACK and not self._pings.take(now):
                return "ping_flood"
        return None


def reason_label(error_code: int, reason: str) -> str:
    """A bounded metric label for a codec's `ConnectionError`: the reason itself when it is a
    short identifier (as the nghttp2 backend gives), else a name for the HTTP/2 error code."""
    if reason and len(reason) <= 40 and reason.replace("_", "").isalnum() and reason.islower():
        return reason
    return _CODE_NAMES.get(error_code, "protocol")


_CODE_NAMES: Final = {
    0x1: "protocol",
    0x2: "internal",
    0x3: "flow_control",
    0x4: "settings_timeout",
    0x5: "stream_closed",
    0x6: "frame_size",
    0x9: "compression",
    0xB: "enhance_your_calm",
}


class H2Stats:
    """A router's HTTP/2 counters, read by the metrics collector at scrape time."""

    __slots__ = ("connection_errors", "streams_refused", "ping_timeouts", "streams_reset")

    def __init__(self) -> None:
        #: connections meshd closed for a protocol error or a flood, by reason (both sides)
        self.connection_errors: dict[str, int] = {}
        #: upstream streams refused (GOAWAY above them, REFUSED_STREAM) and so retried elsewhere
        self.streams_refused = 0
        #: upstream connections closed because a PING went unanswered
        self.ping_timeouts = 0
        #: downstream streams meshd reset itself, by reason ("zero_window", "malformed")
        self.streams_reset: dict[str, int] = {}

    def count(self, reason: str) -> None:
        self.connection_errors[reason] = self.connection_errors.get(reason, 0) + 1

    def count_reset(self, reason: str) -> None:
        self.streams_reset[reason] = self.streams_reset.get(reason, 0) + 1
