"""The events benchmark's smoke test: a half-second run on SQLite measures both figures (never timed here)."""

from __future__ import annotations

import math

from examples.bank.events.bench import run


async def test_the_benchmark_measures_throughput_and_every_events_latency(tmp_path):
    result = await run("sqlite", nats=(), rate=20.0, seconds=0.5, publishers=2, batch=10, directory=tmp_path)
    assert result.throughput_events_per_sec > 0
    assert result.latency_events == 10
    assert 0 < result.p50_ms <= result.p99_ms and math.isfinite(result.p99_ms)
