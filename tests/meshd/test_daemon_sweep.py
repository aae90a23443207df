"""The daemon's periodic sweep (routers' idle connections and binding cache, TLS files) runs as a
timer callback every `SWEEP_INTERVAL_S`, keeps running after a sweep that fails, and stops at
shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

import meshd.daemon
from tests.support.waiting import wait_until


async def test_the_sweep_runs_on_a_timer_survives_a_failure_and_stops_at_shutdown(
    make_mesh: Callable[..., Awaitable[object]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(meshd.daemon, "SWEEP_INTERVAL_S", 0.01)
    mesh = await make_mesh()
    daemon = mesh.daemon  # type: ignore[attr-defined]
    sweeps: list[int] = []
    real_poll = daemon.poll_tls_files

    def poll_tls_files() -> None:  # the sweep's last step (the routers' compiled sweeps cannot be patched)
        sweeps.append(1)
        if len(sweeps) == 2:
            raise RuntimeError("a sweep that fails")
        real_poll()

    monkeypatch.setattr(daemon, "poll_tls_files", poll_tls_files)
    assert type(daemon._sweeper).__name__ == "TimerHandle"  # a timer (asyncio's or uvloop's), not a task
    await wait_until(lambda: len(sweeps) >= 5, timeout=10, message="five sweeps, one of them failing")
    assert "the periodic sweep failed" in caplog.text
    await daemon.shutdown(drain_timeout_s=1.0)
    assert daemon._sweeper is None  # cancelled, and nothing arms another
