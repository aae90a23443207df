"""l5d-reqid values: 16 lower-case hex digits, a per-process prefix then a counter."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from meshd.pipeline.hygiene import RequestIds

HEX16 = re.compile(r"[0-9a-f]{16}")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_ids_are_the_prefix_then_a_counter_in_16_hex_digits(prefix: int) -> None:
    ids = RequestIds(prefix)
    first, second = ids.next(), ids.next()
    assert HEX16.fullmatch(first) and HEX16.fullmatch(second)
    assert first == f"{prefix:08x}00000001"  # leading zeros of a small prefix are kept
    assert second == f"{prefix:08x}00000002"


def test_ids_are_unique_and_processes_differ() -> None:
    ids = RequestIds()
    seen = {ids.next() for _ in range(10_000)}
    assert len(seen) == 10_000
    prefixes = {RequestIds().next()[:8] for _ in range(20)}
    assert len(prefixes) > 1  # random per process (20 equal 32-bit draws: never in practice)


def test_the_counter_carries_into_the_prefix_after_2_to_the_32_ids() -> None:
    ids = RequestIds(0x0000ABCD)
    ids._count = 2**32 - 2  # as after 2**32 - 2 ids
    assert [ids.next(), ids.next(), ids.next()] == ["0000abcdffffffff", "0000abce00000000", "0000abce00000001"]
    last = RequestIds(0xFFFFFFFF)
    last._count = 2**32 - 1
    assert last.next() == "0000000000000000"  # 16 digits still: the id space wraps after 2**64
