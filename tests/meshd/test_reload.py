"""RoutesWatcher, driven directly: reloads apply in order, and running out of file descriptors is not a bad file."""

from __future__ import annotations

import asyncio
import errno
import logging
import pathlib
import threading
from typing import BinaryIO

import pytest

from meshd.reload import RoutesWatcher, parse_routes
from routing.dtab import Dtab
from routing.rules import Routes, RoutesTooLarge, open_binary
from tests.support.waiting import wait_until

V0 = "dtab: /svc => /#/fs/v0;\n"
V1 = "dtab: /svc => /#/fs/v1;\n"
V2 = "dtab: /svc => /#/fs/v2;\n"


class Opener:
    """Opens files normally, or fails like a process out of file descriptors."""

    def __init__(self) -> None:
        self.exhausted = False
        self.calls = 0

    def __call__(self, path: pathlib.Path) -> BinaryIO:
        self.calls += 1
        if self.exhausted:
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return open_binary(path)


def shown(applied: list[Dtab]) -> list[str]:
    return [d.show() for d in applied]


async def test_a_slow_parse_of_an_older_version_never_replaces_a_newer_one(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0)
    entered = threading.Event()
    release = threading.Event()

    def parse(data: bytes, source: str) -> Routes:
        if b"v1" in data:  # the old version's parse is slow
            entered.set()
            release.wait(10)
        return parse_routes(data, source)

    applied: list[Dtab] = []
    watcher = RoutesWatcher(path, applied.append, parse=parse)
    watcher.load_initial()

    path.write_text(V1)
    assert not await watcher.check()  # seen once: a candidate
    slow = asyncio.ensure_future(watcher.check())  # confirmed: parsing v1, slowly
    await wait_until(entered.is_set, timeout=5, message="v1's parse to start")
    path.write_text(V2)
    assert not await watcher.check()
    assert await watcher.check()  # v2 parsed and applied while v1's parse still runs
    release.set()

    assert not await slow  # v1's result arrives last and is dropped
    assert shown(applied) == ["/svc=>/#/fs/v0", "/svc=>/#/fs/v2"]
    assert watcher.current is not None and watcher.current.dtab.show() == "/svc=>/#/fs/v2"
    assert (watcher.successes, watcher.errors) == (2, 0)


async def test_overlapping_checks_act_on_the_newest_read_only(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0)
    applied: list[Dtab] = []
    watcher = RoutesWatcher(path, applied.append)
    watcher.load_initial()
    path.write_text(V1)
    results = await asyncio.gather(*(watcher.check() for _ in range(6)))
    assert results.count(True) <= 1  # the version is applied once, however many reads saw it
    if True not in results:  # the reads that were acted on only made it a candidate
        assert await watcher.check()
    assert not await watcher.check()
    assert shown(applied) == ["/svc=>/#/fs/v0", "/svc=>/#/fs/v1"]
    assert (watcher.successes, watcher.errors) == (2, 0)


async def test_parsing_runs_in_a_worker_thread(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0)
    watcher = RoutesWatcher(path, lambda _: None)
    watcher.load_initial()
    path.write_text(V1)
    await watcher.check()
    assert await watcher.check()
    assert watcher.last_parse_thread not in (None, threading.get_ident())


async def test_out_of_file_descriptors_is_not_a_bad_file(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meshd.reload")
    path = tmp_path / "routes.yaml"
    path.write_text(V0)
    opener = Opener()
    applied: list[Dtab] = []
    watcher = RoutesWatcher(path, applied.append, opener=opener)
    watcher.load_initial()
    path.write_text(V1)

    opener.exhausted = True
    for _ in range(5):  # every poll fails to open the file
        assert not await watcher.check()
    assert opener.calls == 6
    assert watcher.errors == 0 and watcher.last_error is None  # not counted as a reload error
    assert shown(applied) == ["/svc=>/#/fs/v0"]  # the last good rules keep serving
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # once, not on every poll
    assert str(path) in warnings[0] and "out of file descriptors" in warnings[0]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

    opener.exhausted = False  # descriptors free again: the next polls pick the edit up
    assert not await watcher.check()
    assert await watcher.check()
    assert shown(applied) == ["/svc=>/#/fs/v0", "/svc=>/#/fs/v1"]
    assert (watcher.successes, watcher.errors) == (2, 0)


async def test_other_open_errors_are_still_refusals(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0)

    def denied(p: pathlib.Path) -> BinaryIO:
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    watcher = RoutesWatcher(path, lambda _: None, opener=denied)
    assert not await watcher.check()
    assert not await watcher.check()
    assert watcher.errors == 1 and "cannot read" in (watcher.last_error or "")


def test_a_file_over_the_limit_fails_at_start_up(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0 + "#" * 100)
    watcher = RoutesWatcher(path, lambda _: None, max_bytes=64)
    with pytest.raises(RoutesTooLarge, match=r"is 124 bytes, over the limit of 64 bytes \(routesMaxBytes\)"):
        watcher.load_initial()


async def test_a_file_over_the_limit_is_refused_once_per_version(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(V0)
    applied: list[Dtab] = []
    watcher = RoutesWatcher(path, applied.append, max_bytes=64)
    watcher.load_initial()
    path.write_text(V1 + "#" * 100)
    for _ in range(4):
        assert not await watcher.check()
    assert watcher.errors == 1 and "over the limit of 64 bytes" in (watcher.last_error or "")
    path.write_text(V2 + "#" * 101)  # another oversized version: refused (and counted) again
    for _ in range(3):
        assert not await watcher.check()
    assert watcher.errors == 2
    assert shown(applied) == ["/svc=>/#/fs/v0"]
