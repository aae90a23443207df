"""The frame guard (meshd/http2/guard.py): limits by frame header, whatever the read boundaries."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http2.codec import PREFACE
from meshd.http2.guard import MAX_CONTINUATIONS, FrameGuard, TokenBucket, reason_label


def _feed_in_pieces(data: bytes, cuts: list[int], now: float = 0.0, **kwargs: object) -> str | None:
    guard = FrameGuard(server_side=True, max_block_bytes=kwargs.get("max_block_bytes", 65536), now=0.0)  # type: ignore[arg-type]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:], strict=False):
        reason = guard.feed(data[start:end], now)
        if reason is not None:
            return reason
    return None


def _headers(sid: int, end_headers: bool = True, payload: bytes = b"\x82") -> HeadersFrame:
    frame = HeadersFrame(sid)
    frame.data = payload
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=30))
def test_rapid_reset_is_found_wherever_the_reads_are_cut(cuts):
    frames = b"".join(_headers(2 * i + 1).serialize() + RstStreamFrame(2 * i + 1, error_code=8).serialize()
                      for i in range(1100))
    assert _feed_in_pieces(PREFACE + frames, cuts) == "rapid_reset"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=30))
def test_ordinary_traffic_passes_wherever_the_reads_are_cut(cuts):
    frames = b""
    for i in range(300):
        sid = 2 * i + 1
        data = DataFrame(sid)
        data.data = b"x" * (i % 50)
        frames += _headers(sid).serialize() + data.serialize()
    frames += SettingsFrame(0).serialize() + PingFrame(0).serialize()
    assert _feed_in_pieces(PREFACE + frames, cuts) is None


def test_resets_refill_with_time():
    guard = FrameGuard(server_side=False, max_block_bytes=65536, now=0.0)
    one = RstStreamFrame(1, error_code=8).serialize()
    assert guard.feed(one * 1000, 0.0) is None
    assert guard.feed(one, 0.0) == "rapid_reset"
    guard = FrameGuard(server_side=False, max_block_bytes=65536, now=0.0)
    assert guard.feed(one * 1000, 0.0) is None
    assert guard.feed(one * 33, 1.0) is None  # 33 a second come back


def test_continuations_are_counted_and_sized():
    empty = ContinuationFrame(1)
    empty.data = b""
    base = _headers(1, end_headers=False).serialize()
    guard = FrameGuard(server_side=False, max_block_bytes=65536, now=0.0)
    assert guard.feed(base + empty.serialize() * MAX_CONTINUATIONS, 0.0) is None
    assert guard.feed(empty.serialize(), 0.0) == "continuation_flood"
    big = ContinuationFrame(1)
    big.data = b"\x00" * 3000
    guard = FrameGuard(server_side=False, max_block_bytes=4096, now=0.0)
    assert guard.feed(base + big.serialize(), 0.0) is None
    assert guard.feed(big.serialize(), 0.0) == "continuation_flood"


def test_acks_do_not_count_as_floods():
    ack = SettingsFrame(0, flags=["ACK"]).serialize() + PingFrame(0, flags=["ACK"]).serialize()
    guard = FrameGuard(server_side=False, max_block_bytes=65536, now=0.0)
    assert guard.feed(ack * 500, 0.0) is None
    assert guard.feed(PingFrame(0).serialize() * 101, 0.0) == "ping_flood"


def test_token_bucket_never_exceeds_its_burst():
    bucket = TokenBucket(3.0, 1.0, 0.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_reason_labels_are_bounded():
    assert reason_label(1, "Invalid input ConnectionInputs.RECV_HEADERS in state ...") == "protocol"
    assert reason_label(3, "Flow control window too large") == "flow_control"
    assert reason_label(9, "header_list_too_large") == "header_list_too_large"
    assert reason_label(0x42, "") == "protocol"
