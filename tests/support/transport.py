"""FakeTransport: an in-memory asyncio transport, so protocol classes run in tests without sockets.

It records what the protocol writes, remembers whether reading is paused, and, like a real
transport, tells the protocol `connection_lost` on the next loop iteration after `close()` or
`abort()`. `connect(protocol)` makes one and calls `connection_made`.
"""

from __future__ import annotations

import asyncio
from typing import Any


class FakeTransport(asyncio.Transport):
    def __init__(
        self, protocol: asyncio.BaseProtocol, *, peername: tuple[str, int] = ("127.0.0.1", 40000)
    ) -> None:
        super().__init__()
        self._protocol = protocol
        self._peername = peername
        self._loop = asyncio.get_running_loop()
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.eof_written = False

    # -- what a test looks at ------------------------------------------------------------------
    def take(self) -> bytes:
        """Everything written since the last `take()`."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def peer_closes(self, exc: Exception | None = None) -> None:
        """The other end went away: the protocol hears `connection_lost` at once."""
        if not self.closing:
            self.closing = True
            self._protocol.connection_lost(exc)

    # -- asyncio.Transport ---------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peername if name == "peername" else default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol


def connect(protocol: asyncio.Protocol, *, peername: tuple[str, int] = ("127.0.0.1", 40000)) -> FakeTransport:
    """A FakeTransport already `connection_made` to `protocol`."""
    transport = FakeTransport(protocol, peername=peername)
    protocol.connection_made(transport)
    return transport
