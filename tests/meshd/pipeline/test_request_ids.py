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
