"""Hot reload of a router's routing file: edits, ConfigMap symlink swaps, refusals, in-flight requests.

meshd runs in-process with `routes: ...` and the real `RoutesWatcher` (polling every 250 ms, a
change confirmed by a second read 50 ms later). "Within a second" is checked as a deadline of
one second from the write to the moment the new rules serve requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib

import aiohttp
import pytest

from tests.integration.test_canary import start_accounts
from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

TO_V1 = """\
rules:
  - name: accounts
    prefix: /svc/accounts
    dst: /#/fs/accounts
"""
TO_V2 = TO_V1.replace("/#/fs/accounts\n", "/#/fs/accounts-v2\n")
BAD = TO_V2.replace("dst: /#/fs/accounts-v2", "dst: /#/fs/accounts-v2 &")


async def version_served(port: int) -> str:
    conn = await RawConnection.open(port)
    try:
        response = await conn.request("GET", "/balance", host="accounts")
    finally:
        await conn.close()
    assert response.status == 200, (response.status, response.header("l5d-err"))
    return response.body.decode()


async def admin_get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def reload_metric(text: str, result: str) -> float:
    prefix = f'meshd_config_reloads_total{{result="{result}",router="outgoing"}} '
    alt = f'meshd_config_reloads_total{{router="outgoing",result="{result}"}} '
    for line in text.splitlines():
        if line.startswith((prefix, alt)):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no reload metric for {result} in:\n{text}")


async def _is_v1(port: int) -> bool:
    return await version_served(port) == "v1"


async def _is_v2(port: int) -> bool:
    return await version_served(port) == "v2"


async def test_in_place_edit_serves_the_new_rules_within_a_second(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    assert await version_served(mesh.port) == "v1"

    (mesh.root / "routes.yaml").write_text(TO_V2)
    await wait_until(lambda: _is_v2(mesh.port), timeout=1.0, message="v2 within 1 s")


async def test_configmap_data_symlink_swap_is_picked_up_within_a_second(make_mesh, make_upstream, tmp_path):
    # The kubelet's layout: routes.yaml -> ..data/routes.yaml, ..data -> ..<timestamp>/, and an
    # update writes a new timestamped directory and renames a new ..data symlink over the old one.
    config = tmp_path / "configmap"
    _configmap_version(config, "..2024_01_01_00_00_00.1", TO_V1)
    (config / "routes.yaml").symlink_to("..data/routes.yaml")
    mesh = await make_mesh(routes=str(config / "routes.yaml"))
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    assert await version_served(mesh.port) == "v1"

    _configmap_version(config, "..2024_01_01_00_01_00.2", TO_V2)

    await wait_until(lambda: _is_v2(mesh.port), timeout=1.0, message="v2 after the ..data swap")
    assert (watcher.successes, watcher.errors) == (2, 0)
    assert (config / "routes.yaml").is_symlink() and not (config / "..2024_01_01_00_00_00.1").exists()


def _configmap_version(config: pathlib.Path, name: str, text: str) -> None:
    config.mkdir(exist_ok=True)
    version = config / name
    version.mkdir()
    (version / "routes.yaml").write_text(text)
    old = os.readlink(config / "..data") if (config / "..data").is_symlink() else None
    tmp = config / "..data_tmp"
    tmp.symlink_to(name)
    os.replace(tmp, config / "..data")  # the atomic swap
    if old is not None:
        old_dir = config / old
        (old_dir / "routes.yaml").unlink()
        old_dir.rmdir()


async def test_same_size_edit_in_the_same_timestamp_tick_is_not_missed(make_mesh, make_upstream):
    """Two same-size saves within one mtime tick look identical to stat(); the bytes do not."""
    v2_text = TO_V1.replace("/#/fs/accounts\n", "/#/fs/accounts-v2\n").replace("name: accounts", "name: accou")
    assert len(v2_text) == len(TO_V1)
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    routes = mesh.root / "routes.yaml"
    st = routes.stat()

    routes.write_text(v2_text)
    os.utime(routes, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same inode

    await wait_until(lambda: _is_v2(mesh.port), timeout=1.0, message="v2 after a same-size edit")


async def test_bad_file_is_refused_logged_with_line_and_counted(make_mesh, make_upstream, caplog):
    caplog.set_level(logging.INFO, logger="meshd.reload")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    routes = mesh.root / "routes.yaml"

    routes.write_text(BAD)
    await wait_until(lambda: watcher.errors == 1, timeout=1.0, message="the refusal")

    assert await version_served(mesh.port) == "v1"  # the last good rules keep serving
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1
    assert f"{routes}: rules[0].dst: line 4, column 29: " in refusals[0]
    status, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert status == 200
    assert reload_metric(metrics, "error") == 1
    assert reload_metric(metrics, "success") == 1
    status, body = await admin_get(mesh.admin_port, "/admin/routes")
    assert status == 200
    (shown,) = json.loads(body)
    assert shown["reloads"] == {"success": 1, "error": 1}
    assert shown["lastError"].startswith(f"{routes}: rules[0].dst: line 4, column 29: ")
    assert shown["effectiveDtab"] == "/svc=>/#/fs;/svc/accounts=>/#/fs/accounts"

    # the refused version is not retried on every poll; fixing the file recovers
    routes.write_text(TO_V2)
    await wait_until(lambda: _is_v2(mesh.port), timeout=1.0, message="v2 after the fix")
    assert watcher.errors == 1 and watcher.successes == 2
    _, body = await admin_get(mesh.admin_port, "/admin/routes")
    assert json.loads(body)[0]["lastError"] is None
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert reload_metric(metrics, "success") == 2


async def test_deleted_file_keeps_the_last_good_rules_until_it_returns(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V2})
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    routes = mesh.root / "routes.yaml"

    routes.unlink()
    await wait_until(lambda: watcher.errors == 1, timeout=1.0, message="the missing file to be noticed")
    assert "file is missing" in (watcher.last_error or "")
    assert await version_served(mesh.port) == "v2"

    routes.write_text(TO_V1)
    await wait_until(lambda: _is_v1(mesh.port), timeout=1.0, message="v1 once the file is back")
    assert watcher.errors == 1


async def test_in_flight_request_and_its_retry_keep_the_rules_they_started_with(make_mesh, make_upstream):
    release = asyncio.Event()
    v1_calls = 0

    async def v1_handler(request: Received) -> Reply:
        nonlocal v1_calls
        v1_calls += 1
        if v1_calls == 1:
            await release.wait()  # held until the new rules are live, then failed: GET is retried
            return Reply(503, [], b"busy")
        return Reply(200, [], b"v1")

    async def v2_handler(request: Received) -> Reply:
        return Reply(200, [], b"v2")

    v1 = await make_upstream(v1_handler)
    v2 = await make_upstream(v2_handler)
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    mesh.register("accounts", v1)
    mesh.register("accounts-v2", v2)
    watcher = mesh.daemon.routes_watchers["outgoing"]

    in_flight = asyncio.create_task(version_served(mesh.port))
    await wait_until(lambda: v1.requests == 1, timeout=5, message="the first request to reach v1")
    (mesh.root / "routes.yaml").write_text(TO_V2)
    await wait_until(lambda: watcher.successes == 2, timeout=1.0, message="the reload")
    assert await version_served(mesh.port) == "v2"  # new requests use the new rules
    release.set()

    assert await asyncio.wait_for(in_flight, 10) == "v1"  # retried on v1, as bound when it started
    assert v1.requests == 2
    assert v2.requests == 1


@pytest.mark.parametrize("text", ["", "rules: []\n"])
async def test_empty_routes_file_means_no_rules(make_mesh, make_upstream, text):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V2})
    await start_accounts(make_upstream, mesh, replicas=1)
    (mesh.root / "routes.yaml").write_text(text)
    await wait_until(lambda: _is_v1(mesh.port), timeout=1.0, message="the base dtab only")
    assert mesh.daemon.router("outgoing").dtab.get().show() == "/svc=>/#/fs"
