"""`hold_until_trailers`: telling a unary gRPC answer from a stream, whatever the reads' cuts.

The retry stage holds a gRPC answer until it can tell: a unary answer (at most one message, then
the trailers) may be retried, a stream (a second message, more than `HOLD_LIMIT_BYTES`, or no
trailers soon after its first message) is passed on. The decision must not depend on how the bytes
were cut into DATA frames, and the caller must get every byte back, in order, either way.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http.body import Body
from meshd.pipeline.retries import HOLD_AFTER_MESSAGE_S, HOLD_LIMIT_BYTES, hold_until_trailers
from tests.support.clock import FakeClock

TRAILERS = [(b"grpc-status", b"14")]


def _message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class _Collect:
    def __init__(self) -> None:
        self.data = b""
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.trailers = trailers

    def on_error(self, exc: BaseException) -> None:  # pragma: no cover - not expected here
        raise AssertionError(exc)


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=0, max_size=3),
    points=st.lists(st.integers(0, 2000), max_size=8),
    arrived_whole=st.booleans(),
)
def test_the_decision_and_the_bytes_do_not_depend_on_the_cuts(sizes: list[int], points: list[int], arrived_whole: bool) -> None:
    data = b"".join(_message(bytes([65 + i]) * n) for i, n in enumerate(sizes))
    pieces = _cuts(data, points)

    async def run() -> tuple[bool, _Collect]:
        body = Body()
        clock = FakeClock()
        if arrived_whole:
            for piece in pieces:
                body.feed(piece)
            body.end(TRAILERS)
            unary = await hold_until_trailers(body, clock)
        else:
            held = asyncio.ensure_future(hold_until_trailers(body, clock))
            await asyncio.sleep(0)
            for piece in pieces:
                body.feed(piece)
                await asyncio.sleep(0)
            if not held.done():
                body.end(TRAILERS)
            unary = await held
        sink = _Collect()
        body.attach(sink)
        return unary, sink

    unary, sink = asyncio.run(run())
    assert unary == (len(sizes) <= 1)
    assert sink.data == data  # every byte given back, in order
    if unary:
        assert sink.trailers == TRAILERS


def test_an_answer_larger_than_the_limit_is_a_stream_and_given_back_whole() -> None:
    big = _message(b"x" * (HOLD_LIMIT_BYTES + 10))

    async def run() -> tuple[bool, bytes]:
        body = Body()
        held = asyncio.ensure_future(hold_until_trailers(body, FakeClock()))
        await asyncio.sleep(0)
        body.feed(big[:1000])
        body.feed(big[1000:])
        unary = await held  # released by the size, not by an end
        assert not body.ended
        body.end(TRAILERS)
        sink = _Collect()
        body.attach(sink)
        return unary, sink.data

    unary, data = asyncio.run(run())
    assert unary is False and data == big


def test_no_trailers_soon_after_the_first_message_is_a_stream() -> None:
    clock = FakeClock()

    async def run() -> bool:
        body = Body()
        held = asyncio.ensure_future(hold_until_trailers(body, clock))
        await asyncio.sleep(0)
        body.feed(_message(b"tick"))
        await asyncio.sleep(0)
        assert not held.done()
        clock.advance(HOLD_AFTER_MESSAGE_S)
        return await held

    assert asyncio.run(run()) is False


async def test_an_answer_that_arrived_whole_is_told_without_a_timer() -> None:
    # the common unary call: head, message and trailers came in one read before the retry stage
    # looked, so nothing is waited for and no timer is armed (one per call otherwise)
    body = Body()
    body.feed(_message(b"ok"))
    body.end(TRAILERS)
    clock = FakeClock()
    assert await hold_until_trailers(body, clock) is True
    assert clock.calls == 0 and clock.armed == 0
    out = _Collect()
    body.attach(out)
    assert out.data == _message(b"ok") and out.trailers == TRAILERS
