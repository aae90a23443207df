"""The POSIX shell client: an authorisation through "meshd" with nothing but curl."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

import examples
from examples.bank.harness import running_bank

SCRIPT = Path(examples.__file__).parent / "bank" / "clients" / "authorise.sh"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the shell client needs curl")


async def run_script(*args: str, meshd: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "sh",
        str(SCRIPT),
        *args,
        env={**os.environ, "MESHD": meshd},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_shell_client_authorises_through_the_mesh_and_replays_safely(tmp_path):
    async with running_bank(tmp_path) as bank, aiohttp.ClientSession() as session:
        async with session.put(f"{bank.url('accounts')}/accounts/c-1", json={"opening_balance": 5_000}) as r:
            assert r.status == 201
        first = await run_script("c-1", "1234", "m-002", "sh-1", meshd=bank.router_url)
        again = await run_script("c-1", "1234", "m-002", "sh-1", meshd=bank.router_url)
        async with session.get(f"{bank.url('accounts')}/accounts/c-1") as r:
            account = await r.json()
    assert first[0] == 0, first
    assert json.loads(first[1]) == {
        "auth_id": "sh-1",
        "decision": "approved",
        "reason": "",
        "replayed": False,
    }
    assert json.loads(again[1])["replayed"] is True
    assert account["available"] == 5_000 - 1_234
    assert ("payments", "POST", "/authorisations") in [
        (c.service, c.method, c.path) for c in bank.router.calls
    ]


async def test_shell_client_refuses_ids_that_would_break_the_json(tmp_path):
    status, _, stderr = await run_script('c"1', "100", meshd="http://127.0.0.1:9")
    assert status == 64
    assert "ids may contain only" in stderr
    status, _, stderr = await run_script("c-1", "12.50", meshd="http://127.0.0.1:9")
    assert (status, "whole number of cents" in stderr) == (64, True)
