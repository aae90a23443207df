"""At start meshd raises its soft open-file limit to the hard limit (as Envoy and nginx advise)."""

from __future__ import annotations

import logging
import resource

import pytest

from meshd.daemon import raise_open_file_limit


def test_the_soft_limit_is_raised_to_the_hard_limit_for_real(caplog):
    caplog.set_level(logging.INFO, logger="meshd")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard limit above 256, got {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert f"open-file limit (RLIMIT_NOFILE): {hard}" in caplog.messages
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_refused_raise_keeps_the_soft_limit_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="meshd")

    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    assert raise_open_file_limit(lambda _: (1024, 4096), refuse) == 1024
    assert any("could not raise the open-file limit from 1024 to 4096" in m for m in caplog.messages)
    assert "open-file limit (RLIMIT_NOFILE): 1024" in caplog.messages


def test_an_unlimited_hard_limit_is_capped_and_a_high_soft_limit_is_left_alone():
    calls: list[tuple[int, int]] = []
    infinity = resource.RLIM_INFINITY
    assert raise_open_file_limit(lambda _: (1024, infinity), lambda _, lim: calls.append(lim)) == 1024 * 1024
    assert calls == [(1024 * 1024, infinity)]
    calls.clear()
    assert raise_open_file_limit(lambda _: (4096, 4096), lambda _, lim: calls.append(lim)) == 4096
    assert calls == []
