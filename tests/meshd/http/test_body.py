"""Body: one producer, one consumer, back-pressure both ways, a bounded replay copy for retries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.http.body import HIGH_WATER, Body, NotReplayable, Trailers


class Producer:
    """A FlowControl that records whether the body asked it to stop reading."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused, "resumed while not paused"
        self.paused = False


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended: Trailers | None | bool = False
        self.error: BaseException | None = None

    def on_data(self, data: bytes) -> None:
        assert self.ended is False and self.error is None, "data after the end"
        self.data.append(data)

    def on_end(self, trailers: Trailers | None) -> None:
        assert self.ended is False and self.error is None, "ended twice"
        self.ended = trailers if trailers is not None else True

    def on_error(self, exc: BaseException) -> None:
        assert self.ended is False and self.error is None, "failed after the end"
        self.error = exc

    @property
    def bytes(self) -> bytes:
        return b"".join(self.data)


def test_data_fed_before_attach_is_delivered_first_then_live_data_then_the_end():
    body = Body(chunked=True)
    body.feed(b"a")
    body.feed(b"b")
    sink = Sink()
    body.attach(sink)
    assert sink.data == [b"a", b"b"]
    body.feed(b"c")
    assert sink.data == [b"a", b"b", b"c"]
    body.end([(b"X-Sum", b"3")])
    assert sink.ended == [(b"X-Sum", b"3")]
    assert body.ended and body.received == 3


def test_end_before_attach_is_delivered_on_attach():
    body = Body(length=2)
    body.feed(b"hi")
    body.end()
    sink = Sink()
    body.attach(sink)
    assert (sink.bytes, sink.ended) == (b"hi", True)


def test_producer_is_paused_past_the_high_water_mark_until_a_consumer_takes_the_data():
    producer = Producer()
    body = Body(length=3 * HIGH_WATER, producer=producer)
    body.feed(b"x" * HIGH_WATER)
    assert not producer.paused  # at the mark, not past it
    body.feed(b"x")
    assert producer.paused
    body.feed(b"x" * 100)  # a producer may still deliver what it had already read
    assert producer.pauses == 1
    sink = Sink()
    body.attach(sink)
    assert not producer.paused
    assert len(sink.bytes) == HIGH_WATER + 101


def test_take_buffered_returns_everything_buffered_and_resumes_the_producer():
    producer = Producer()
    body = Body(length=2 * HIGH_WATER + 2, producer=producer)
    body.feed(b"a" * HIGH_WATER)
    body.feed(b"b" * 2)
    assert producer.paused
    assert body.take_buffered() == b"a" * HIGH_WATER + b"bb"
    assert body.take_buffered() == b""
    assert not producer.paused


def test_consumer_back_pressure_pauses_and_resumes_the_producer():
    producer = Producer()
    body = Body(chunked=True, producer=producer)
    sink = Sink()
    body.attach(sink)
    body.pause_producing()
    body.pause_producing()  # idempotent
    assert producer.paused and producer.pauses == 1
    body.feed(b"late")  # what the producer had already read still arrives
    assert sink.data == [b"late"]
    body.resume_producing()
    assert not producer.paused


@pytest.mark.parametrize("why", ["consumer", "buffer"])
def test_a_body_that_ends_while_its_producer_is_paused_lets_the_producer_read_on(why: str):
    # the producer (an HTTP/1.1 client connection) has given all of this body: what it reads next is
    # its next request, which a consumer still waiting for an upstream's window must not hold back
    producer = Producer()
    body = Body(length=HIGH_WATER + 10, producer=producer)
    sink = Sink()
    if why == "consumer":
        body.attach(sink)
        body.pause_producing()  # the consumer's upstream window is full
    body.feed(b"x" * 10)  # without a consumer: over the buffer's mark
    body.feed(b"y" * HIGH_WATER)
    assert producer.paused and producer.pauses == 1
    body.end()
    assert not producer.paused and producer.pauses == 1
    # the consumer's later resume, or its draining the buffer, does not resume it a second time
    body.resume_producing()
    if why == "buffer":
        body.attach(sink)
    assert not producer.paused and sink.ended is not False and b"".join(sink.data).endswith(b"y" * HIGH_WATER)


def test_consumer_resume_waits_for_the_buffer_to_drain_below_the_mark():
    producer = Producer()
    body = Body(chunked=True, producer=producer)
    body.pause_producing()
    body.feed(b"x" * (HIGH_WATER + 1))
    body.resume_producing()
    assert producer.paused  # still over the mark with no consumer attached
    body.attach(Sink())
    assert not producer.paused


def test_detach_makes_later_data_wait_in_the_buffer():
    body = Body(chunked=True)
    first = Sink()
    body.attach(first)
    body.feed(b"one")
    body.detach()
    body.feed(b"two")
    assert first.data == [b"one"]
    second = Sink()
    body.attach(second)
    assert second.data == [b"two"]


def test_failure_reaches_the_consumer_and_done_callbacks_once():
    body = Body(length=10)
    sink = Sink()
    body.attach(sink)
    seen: list[BaseException | None] = []
    body.add_done_callback(seen.append)
    error = ConnectionError("gone")
    body.fail(error)
    body.fail(RuntimeError("second failure is ignored"))
    body.end()
    assert sink.error is error
    assert seen == [error]
    assert body.error is error
    late: list[BaseException | None] = []
    body.add_done_callback(late.append)
    assert late == [error]


def test_done_callbacks_get_none_on_a_clean_end():
    body = Body(length=1)
    seen: list[BaseException | None] = []
    body.add_done_callback(seen.append)
    body.add_done_callback(seen.append)
    body.feed(b"x")
    body.end()
    assert seen == [None, None]


def test_cancel_stops_the_producer_and_does_not_call_the_consumer_back():
    body = Body(chunked=True)
    cancelled = []
    body.set_canceller(lambda: cancelled.append(True))
    sink = Sink()
    body.attach(sink)
    body.cancel(RuntimeError("nobody wants it"))
    assert cancelled == [True]
    assert sink.error is None  # the consumer cancelled: it knows
    assert body.ended and isinstance(body.error, RuntimeError)
    body.feed(b"late")
    assert sink.data == []


def test_cancel_of_an_ended_body_does_not_call_the_canceller():
    body = Body.of(b"done")
    cancelled = []
    body.set_canceller(lambda: cancelled.append(True))
    body.cancel(RuntimeError("late"))
    assert cancelled == []


def test_first_attach_runs_the_hook_once_before_any_data_and_holds_back_take_buffered():
    body = Body(length=4)
    events: list[str] = []
    body.on_first_attach(lambda: events.append("100-continue"))
    body.feed(b"ab")
    assert body.take_buffered() == b""  # the hook must run before data moves
    sink = Sink()
    sink.on_data = lambda data: events.append(data.decode())  # type: ignore[method-assign]
    body.attach(sink)
    body.feed(b"cd")
    body.detach()
    body.attach(Sink())
    assert events == ["100-continue", "ab", "cd"]


def test_rewind_replays_every_byte_within_the_replay_limit():
    body = Body(length=6, replay_limit=10)
    first = Sink()
    body.attach(first)
    body.feed(b"abc")
    body.feed(b"def")
    body.end()
    assert body.replayable
    body.rewind()
    again = Sink()
    body.attach(again)
    assert (again.bytes, again.ended) == (b"abcdef", True)


def test_rewind_beyond_the_replay_limit_raises_not_replayable():
    body = Body(length=11, replay_limit=10)
    body.attach(Sink())
    body.feed(b"0123456789")
    assert body.replayable
    body.feed(b"!")
    assert not body.replayable
    with pytest.raises(NotReplayable):
        body.rewind()


def test_body_without_replay_buffer_is_replayable_only_before_its_first_byte():
    body = Body(length=1)
    assert body.replayable
    body.rewind()  # nothing sent yet: nothing to replay
    body.feed(b"x")
    assert not body.replayable
    with pytest.raises(NotReplayable):
        body.rewind()


def test_empty_and_in_memory_bodies():
    empty = Body.empty(0)
    assert empty.ended and empty.is_empty and empty.length == 0
    assert Body.empty().length is None
    full = Body.of(b"hello")
    assert full.ended and not full.is_empty and full.length == 5
    sink = Sink()
    full.attach(sink)
    assert (sink.bytes, sink.ended) == (b"hello", True)
    assert not Body(chunked=True).is_empty
    assert "ended" in repr(full) and "received=5" in repr(full)


@given(
    chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=20),
    attach_at=st.integers(min_value=0, max_value=20),
    replay_limit=st.integers(min_value=0, max_value=400),
)
def test_consumer_gets_exactly_the_bytes_fed_and_replay_depends_only_on_the_limit(
    chunks, attach_at, replay_limit
):
    body = Body(chunked=True, replay_limit=replay_limit)
    sink = Sink()
    for i, chunk in enumerate(chunks):
        if i == attach_at:
            body.attach(sink)
        body.feed(chunk)
    if attach_at >= len(chunks):
        body.attach(sink)
    body.end()
    total = b"".join(chunks)
    assert sink.bytes == total and sink.ended is True
    fits = replay_limit > 0 and len(total) <= replay_limit
    if fits or not total:
        body.rewind()
        again = Sink()
        body.attach(again)
        assert again.bytes == total
    else:
        assert not body.replayable
        with pytest.raises(NotReplayable):
            body.rewind()
