"""Waiting for things in other processes: poll a condition until it holds or a deadline passes.

Across a process boundary there is no event to wait on, so the demo polls, and every wait has a deadline:
a service that never comes up is reported with its log instead of hanging the demo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import aiohttp

DEFAULT_INTERVAL_SECS: Final = 0.05
PROBE_TIMEOUT: Final = aiohttp.ClientTimeout(total=2.0)


class StartupError(Exception):
    """Something the demo needs did not start; the message says what and shows its last log lines."""


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout_secs: float,
    what: str,
    interval_secs: float = DEFAULT_INTERVAL_SECS,
) -> None:
    """Return once `condition()` is true; raise TimeoutError naming `what` after `timeout_secs`."""
    try:
        async with asyncio.timeout(timeout_secs):
            while not await condition():
                await asyncio.sleep(interval_secs)
    except TimeoutError:
        raise TimeoutError(f"{what}: still not true after {timeout_secs:g}s") from None


async def http_status(
    session: aiohttp.ClientSession, url: str, *, headers: Mapping[str, str] | None = None
) -> int | None:
    """The status of a GET, or None when nothing answered."""
    try:
        async with session.get(url, headers=headers, timeout=PROBE_TIMEOUT) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None
