"""Who served how much: the replicas' own request counters (`GET /_stats`), and deltas between two readings.

A replica's counter restarts from zero when the replica does; its `boot_id` changes with it, and then the
whole new count is what it served since the earlier reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from examples.bank.story.probing import PROBE_TIMEOUT
from examples.bank.story.topology import Replica


@dataclass(frozen=True, slots=True)
class ReplicaCount:
    boot_id: str
    requests: int


async def read_counts(session: aiohttp.ClientSession, replicas: Iterable[Replica]) -> dict[str, ReplicaCount]:
    """Counters of every replica that answered, by replica name."""
    replicas = tuple(replicas)
    readings = await asyncio.gather(*(_read(session, replica) for replica in replicas))
    return {
        replica.name: count for replica, count in zip(replicas, readings, strict=True) if count is not None
    }


def served_between(before: Mapping[str, ReplicaCount], after: Mapping[str, ReplicaCount]) -> dict[str, int]:
    served: dict[str, int] = {}
    for name, now in after.items():
        then = before.get(name)
        served[name] = (
            now.requests - then.requests if then is not None and then.boot_id == now.boot_id else now.requests
        )
    return served


async def _read(session: aiohttp.ClientSession, replica: Replica) -> ReplicaCount | None:
    try:
        async with session.get(f"{replica.url}/_stats", timeout=PROBE_TIMEOUT) as response:
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return ReplicaCount(str(body["boot_id"]), int(body["requests"]))
