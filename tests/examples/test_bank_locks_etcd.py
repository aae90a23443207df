"""The locks service on its etcd engine: a real etcd (Debian's etcd-server) on loopback, through its v3 JSON
gateway. Same rules as the SQLite engine: exclusive while live, renewals keep the term, a hand-over raises it,
and a holder that stops renewing loses the lock when etcd expires its lease."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from examples.bank import locks
from examples.bank.harness import serving
from examples.bank.options import ServiceOptions
from tests.support.nats_server import free_ports
from tests.support.waiting import wait_until, wait_until_sync

MISSING = "install etcd-server: apt-get install etcd-server"


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = etcd_binary()
    workdir = tmp_path_factory.mktemp("etcd")
    client, peer = free_ports(2)
    url = f"http://127.0.0.1:{client}"
    with (workdir / "etcd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--name",
                "default",
                "--data-dir",
                str(workdir / "data"),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError((workdir / "etcd.log").read_text())
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until_sync(healthy, timeout=20, message="etcd /health")
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.fixture
async def call(etcd_url, tmp_path):
    options = ServiceOptions(service="locks", db=tmp_path / "unused.db", replica="locks-1")
    async with serving(locks.create_app(options, backend="etcd", etcd_url=etcd_url)) as [url]:
        async with aiohttp.ClientSession() as session:

            async def request(method: str, path: str, body: object = None) -> tuple[int, Any]:
                async with session.request(method, url + path, json=body) as response:
                    return response.status, await response.json()

            yield request


async def test_an_etcd_lock_is_exclusive_renewable_and_handed_over_with_a_higher_term(call):
    status, first = await call("PUT", "/locks/relay", {"holder": "a", "ttl_ms": 2000})
    assert status == 200 and first["holder"] == "a" and first["term"] > 0
    status, other = await call("PUT", "/locks/relay", {"holder": "b", "ttl_ms": 2000})
    assert (status, other["holder"], other["term"]) == (409, "a", first["term"])
    status, renewed = await call("PUT", "/locks/relay", {"holder": "a", "ttl_ms": 2000})
    assert (status, renewed["term"]) == (200, first["term"])
    assert (await call("DELETE", "/locks/relay?holder=b"))[1]["released"] is False
    assert (await call("DELETE", "/locks/relay?holder=a"))[1]["released"] is True
    assert (await call("GET", "/locks/relay"))[0] == 404
    status, second = await call("PUT", "/locks/relay", {"holder": "b", "ttl_ms": 2000})
    assert (status, second["holder"]) == (200, "b") and second["term"] > first["term"]


async def test_a_holder_that_stops_renewing_loses_the_lock_when_its_etcd_lease_expires(call):
    status, first = await call("PUT", "/locks/job", {"holder": "a", "ttl_ms": 2000})
    assert status == 200
    taken: list[Any] = []

    async def b_took_it() -> bool:
        status, lease = await call("PUT", "/locks/job", {"holder": "b", "ttl_ms": 2000})
        if status == 200:
            taken.append(lease)
        return status == 200

    await wait_until(b_took_it, timeout=10, interval=0.2, message="a's etcd lease to expire")
    assert taken[0]["term"] > first["term"]
