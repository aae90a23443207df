"""Body: a streaming message body from one producer to one consumer, with back-pressure and replay.

How this works: the producer (a connection reading from a socket) calls `feed()`, `end()` or
`fail()`. The consumer attaches a `BodySink` once it is ready to write the data somewhere; until
then data is held in a small buffer and the producer is paused once that buffer passes
`HIGH_WATER`. The consumer applies its own back-pressure with `pause_producing()` /
`resume_producing()` (e.g. when its transport's write buffer is full).

Replay: the body keeps a reference to every chunk while the total stays within `replay_limit`, so a
retry can `rewind()` and send the same bytes again to another endpoint. Past the limit the copy is
dropped and `rewind()` raises `NotReplayable`: such a request is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

HIGH_WATER: Final = 64 * 1024

Trailers = list[tuple[bytes, bytes]]


class NotReplayable(Exception):
    """The body was streamed beyond the replay buffer; it cannot be sent again."""


class BodySink(Protocol):
    def on_data(self, data: bytes) -> None: ...

    def on_end(self, trailers: Trailers | None) -> None: ...

    def on_error(self, exc: BaseException) -> None: ...


class FlowControl(Protocol):
    """What a producer exposes so the body can pause and resume it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Body:
    """A one-consumer streaming body. `length` is the declared Content-Length, or None if chunked/unknown."""

    __slots__ = (
        "length",
        "chunked",
        "_buf",
        "_buffered",
        "_kept",
        "_kept_size",
        "_replay_limit",
        "ended",
        "_trailers",
        "_error",
        "_sink",
        "_producer",
        "_producer_paused",
        "_consumer_paused",
        "received",
        "_on_attach",
        "_done_callbacks",
        "_canceller",
    )

    def __init__(
        self,
        *,
        length: int | None = None,
        chunked: bool = False,
        replay_limit: int = 0,
        producer: FlowControl | None = None,
    ) -> None:
        self.length = length
        self.chunked = chunked
        self._buf: list[bytes] = []
        self._buffered = 0
        self._kept: list[bytes] | None = [] if replay_limit > 0 else None
        self._kept_size = 0
        self._replay_limit = replay_limit
        #: the producer has finished (or failed: see `error`); a plain attribute rather than a
        #: property because the proxy path reads it several times per request. Only the body sets it.
        self.ended = False
        self._trailers: Trailers | None = None
        self._error: BaseException | None = None
        self._sink: BodySink | None = None
        self._producer = producer
        self._producer_paused = False
        self._consumer_paused = False
        #: bytes received from the producer so far
        self.received = 0
        self._on_attach: Callable[[], None] | None = None
        self._done_callbacks: list[Callable[[BaseException | None], None]] | None = None
        self._canceller: Callable[[], None] | None = None

    @classmethod
    def empty(cls, length: int | None = None) -> Body:
        """An already-ended body (`length` is kept for framing, e.g. `Content-Length: 0`).

        Shared instances: an ended body with no data never changes state (attaching delivers
        the end at once and keeps no reference to the sink), so one object serves every GET.
        """
        if length is None:
            return _EMPTY
        if length == 0:
            return _EMPTY_0
        body = cls(length=length)
        body.ended = True
        return body

    @classmethod
    def of(cls, data: bytes) -> Body:
        """A complete in-memory body (responses meshd makes itself)."""
        body = cls(length=len(data), replay_limit=len(data) + 1)
        if data:
            body.feed(data)
        body.ended = True
        return body

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return self.ended and self.received == 0 and not self.chunked

    @property
    def replayable(self) -> bool:
        return self._kept is not None or (self.received == 0)

    def copy(self) -> bytes | None:
        """Every byte of a body that has ended without error, from the replay buffer (request
        mirroring copies a request this way); None when it is not over yet, failed, or was
        larger than the replay buffer."""
        if not self.ended or self._error is not None:
            return None
        if self.received == 0:
            return b""
        kept = self._kept
        if kept is None:
            return None
        return kept[0] if len(kept) == 1 else b"".join(kept)

    def set_producer(self, producer: FlowControl) -> None:
        self._producer = producer

    # -- producer side -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.received += len(data)
        kept = self._kept
        if kept is not None:
            self._kept_size += len(data)
            if self._kept_size > self._replay_limit:
                self._kept = None
            else:
                kept.append(data)
        sink = self._sink
        if sink is not None:
            sink.on_data(data)
            return
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._producer_paused and self._producer is not None:
            self._producer_paused = True
            self._producer.pause_reading()

    def end(self, trailers: Trailers | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self._trailers = trailers
        if self._producer_paused:
            # the producer has given all of this body: a pause for its sake (a consumer waiting for
            # an upstream's window, a full buffer) must not hold what the producer reads next (an
            # HTTP/1.1 client's next request on the same connection)
            self._producer_paused = False
            producer = self._producer
            if producer is not None:
                producer.resume_reading()
        if self._sink is not None:
            self._sink.on_end(trailers)
        if self._done_callbacks is not None:
            self._run_done(None)

    def fail(self, exc: BaseException) -> None:
        if self.ended:
            return
        self.ended = True
        self._error = exc
        if self._sink is not None:
            self._sink.on_error(exc)
        if self._done_callbacks is not None:
            self._run_done(exc)

    def add_done_callback(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call `callback(error_or_None)` once the producer has ended or failed (now, if it has)."""
        if self.ended:
            callback(self._error)
            return
        if self._done_callbacks is None:
            self._done_callbacks = [callback]
        else:
            self._done_callbacks.append(callback)

    def on_first_attach(self, callback: Callable[[], None]) -> None:
        """Run `callback` when a consumer first attaches (used to send `100 Continue`)."""
        self._on_attach = callback

    def set_canceller(self, canceller: Callable[[], None]) -> None:
        """Producer side: how to stop producing when the consumer goes away (e.g. abort the upstream)."""
        self._canceller = canceller

    def cancel(self, exc: BaseException) -> None:
        """Consumer side: nobody wants the rest; stop the producer and end the body with `exc`."""
        self._sink = None
        canceller, self._canceller = self._canceller, None
        if not self.ended and canceller is not None:
            canceller()
        self.fail(exc)

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def trailers(self) -> Trailers | None:
        """The trailers the body ended with (None while it is open, or when it had none): gRPC's
        `grpc-status` is there (the retry stage and failure accrual read it, docs/grpc.md)."""
        return self._trailers

    def _run_done(self, error: BaseException | None) -> None:
        callbacks, self._done_callbacks = self._done_callbacks or [], None
        for cb in callbacks:
            cb(error)

    # -- consumer side -------------------------------------------------------------------------
    def take_buffered(self) -> bytes:
        """Remove and return what is buffered now (lets a writer coalesce it with a head)."""
        if self._on_attach is not None:
            return b""
        if not self._buf:
            return b""
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf = []
        self._buffered = 0
        self._maybe_resume_producer()
        return data

    def attach(self, sink: BodySink) -> None:
        """Deliver the buffered data, then everything live, then the end (or error), to `sink`."""
        self._sink = sink
        if self._on_attach is not None:
            on_attach, self._on_attach = self._on_attach, None
            on_attach()
        if self._buf:
            buf, self._buf = self._buf, []
            self._buffered = 0
            for chunk in buf:
                sink.on_data(chunk)
                if self._sink is not sink:
                    return
        if self._error is not None:
            self._sink = None
            sink.on_error(self._error)
        elif self.ended:
            self._sink = None
            sink.on_end(self._trailers)
        else:
            self._maybe_resume_producer()

    def give_back(self, chunks: list[bytes]) -> None:
        """Detach the current sink and put `chunks`, the data it was given, back in front of the
        buffer as if never delivered (the retry stage holds a small gRPC answer this way until its
        trailers say whether to retry it). The producer pauses if that leaves too much buffered."""
        self._sink = None
        if chunks:
            self._buf = chunks + self._buf
            self._buffered += sum(len(c) for c in chunks)
            if self._buffered > HIGH_WATER and not self._producer_paused and self._producer is not None:
                self._producer_paused = True
                self._producer.pause_reading()

    def detach(self) -> None:
        """Stop delivering to the current sink; data arriving meanwhile is buffered."""
        self._sink = None

    def rewind(self) -> None:
        """Start over from the first byte for a new sink (a retry). Raises NotReplayable."""
        if self.received == 0:
            self._sink = None
            return
        if self._kept is None:
            raise NotReplayable("request body exceeded the replay buffer")
        self._sink = None
        self._buf = list(self._kept)
        self._buffered = self._kept_size

    def pause_producing(self) -> None:
        if not self._consumer_paused:
            self._consumer_paused = True
            if not self._producer_paused and self._producer is not None:
                self._producer_paused = True
                self._producer.pause_reading()

    def resume_producing(self) -> None:
        if self._consumer_paused:
            self._consumer_paused = False
            self._maybe_resume_producer()

    def _maybe_resume_producer(self) -> None:
        if (
            self._producer_paused
            and not self._consumer_paused
            and self._buffered <= HIGH_WATER
            and self._producer is not None
        ):
            self._producer_paused = False
            self._producer.resume_reading()

    def __repr__(self) -> str:
        state = "ended" if self.ended else "open"
        return f"<Body {state} received={self.received} length={self.length} chunked={self.chunked}>"


def _ended_empty(length: int | None) -> Body:
    body = Body(length=length)
    body.ended = True
    return body


_EMPTY: Final = _ended_empty(None)
_EMPTY_0: Final = _ended_empty(0)
