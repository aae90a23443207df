"""start_namers: a namer that fails to start leaves none of the ones before it running."""

from __future__ import annotations

import pytest

from meshd.discovery.addr import Addr
from meshd.discovery.base import Namer
from meshd.discovery.start import close_namers, start_namers
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NameTree
from routing.path import Path


class _Recording:
    def __init__(self, prefix: str, log: list[str], fail: bool = False) -> None:
        self._prefix = Path.read(prefix)
        self._log = log
        self._fail = fail
        self._version: Observable[int] = Observable(0)

    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def version(self) -> Observable[int]:
        return self._version

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        return None

    def addr(self, id: Path) -> Observable[Addr]:
        raise NotImplementedError

    def release(self, id: Path) -> None:
        pass

    async def start(self) -> None:
        if self._fail:
            raise OSError(f"{self._prefix.show()}: cannot list")
        self._log.append(f"start {self._prefix.show()}")

    async def close(self) -> None:
        self._log.append(f"close {self._prefix.show()}")


class _Config:
    def __init__(self, namer: _Recording) -> None:
        self.namer = namer

    def build(self, runtime: Runtime) -> Namer:
        return self.namer


async def test_all_start_in_order_and_close_together() -> None:
    log: list[str] = []
    configs = [_Config(_Recording("/#/a", log)), _Config(_Recording("/#/b", log))]
    namers = await start_namers(configs, Runtime())
    assert [p.show() for p in namers] == ["/#/a", "/#/b"]
    await close_namers(namers)
    assert log == ["start /#/a", "start /#/b", "close /#/a", "close /#/b"]


async def test_a_failed_start_closes_the_ones_already_started() -> None:
    log: list[str] = []
    configs = [_Config(_Recording("/#/a", log)), _Config(_Recording("/#/b", log, fail=True)),
               _Config(_Recording("/#/c", log))]
    with pytest.raises(OSError, match="cannot list"):
        await start_namers(configs, Runtime())
    # /#/b failed in start(): closing it too is harmless and frees anything it opened half-way
    assert log == ["start /#/a", "close /#/a", "close /#/b"]
