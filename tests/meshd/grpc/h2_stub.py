"""A scripted HTTP/2 server (the `h2` library, blocking sockets, one thread) for gRPC interop tests.

Each request's headers are recorded; `answer(headers)` returns the response: a header block (sent
with `:status` 200 prepended unless it has one), then optional DATA and trailers. A trailers-only
answer is a header block and no trailers: it goes out as one HEADERS frame with END_STREAM.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    headers: Headers
    data: bytes = b""
    trailers: Headers | None = None


@dataclass
class H2Stub:
    answer: Callable[[Headers], Answer]
    requests: list[Headers] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        heads: dict[int, Headers] = {}
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        heads[event.stream_id] = [(bytes(n), bytes(v)) for n, v in event.headers]
                    elif isinstance(event, h2.events.DataReceived):
                        h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if isinstance(event, h2.events.StreamEnded):
                        headers = heads.pop(event.stream_id)
                        self.requests.append(headers)
                        self._respond(h2c, event.stream_id, self.answer(headers))
                conn.sendall(h2c.data_to_send())

    @staticmethod
    def _respond(h2c: h2.connection.H2Connection, stream_id: int, answer: Answer) -> None:
        block = answer.headers if answer.headers[:1] and answer.headers[0][0] == b":status" else [(b":status", b"200"), *answer.headers]
        only = answer.trailers is None and not answer.data
        h2c.send_headers(stream_id, block, end_stream=only)
        if only:
            return
        if answer.data:
            h2c.send_data(stream_id, answer.data, end_stream=answer.trailers is None)
        if answer.trailers is not None:
            h2c.send_headers(stream_id, answer.trailers, end_stream=True)


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message: flag 0 (uncompressed), 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
