"""Starting a config's namers: one function for the daemon, its reload and the CLI's commands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from meshd.discovery.base import Namer
from meshd.runtime import Runtime
from routing.path import Path


class NamerFactory(Protocol):
    """A `namers:` entry of the config (FsNamerConfig, DnsNamerConfig, K8sNamerConfig)."""

    def build(self, runtime: Runtime) -> Namer: ...


async def start_namers(configs: Iterable[NamerFactory], runtime: Runtime) -> dict[Path, Namer]:
    """Build and start each namer in order (each does its first scan or list), keyed by prefix.

    If one fails to build or start, the ones already started are closed before the error goes on,
    so a refused start or reload leaves no watch or task behind.
    """
    namers: dict[Path, Namer] = {}
    try:
        for config in configs:
            namer = config.build(runtime)
            namers[namer.prefix] = namer
            await namer.start()
    except BaseException:
        await close_namers(namers)
        raise
    return namers


async def close_namers(namers: dict[Path, Namer]) -> None:
    for namer in namers.values():
        await namer.close()
