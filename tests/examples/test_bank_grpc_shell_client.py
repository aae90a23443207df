"""The non-Python gRPC client: bank.Ledger/Post from the shell with nghttp (nghttp2's C HTTP/2 client)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import examples
from examples.bank import ledger
from examples.bank.harness import serving
from examples.bank.ledger_grpc import GRPC_PORT
from examples.bank.options import ServiceOptions

SCRIPT = Path(examples.__file__).parent / "bank" / "clients" / "ledger_post.sh"
MISSING = "the gRPC shell client needs nghttp: apt-get install nghttp2-client"


@pytest.fixture(autouse=True)
def nghttp() -> None:
    if shutil.which("nghttp") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)


@pytest.fixture
async def ledger_target(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    app = ledger.create_app(ServiceOptions(service="ledger", db=tmp_path / "ledger.db", replica="ledger-1", grpc_port=0))
    async with serving(app) as [url]:
        yield f"127.0.0.1:{app[GRPC_PORT]}", url


async def run_script(*args: str, target: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "sh", str(SCRIPT), *args,
        env={**os.environ, "GRPC_TARGET": target},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_posts_replays_and_reports_a_conflict_by_grpc_status(ledger_target: tuple[str, Any]) -> None:
    target, url = ledger_target
    first = await run_script("auth:sh-1", "customer:c-1", "merchant:m-1", "1234", target=target)
    assert first[0] == 0, first
    assert json.loads(first[1]) == {
        "key": "auth:sh-1",
        "status": "posted",
        "legs": [
            {"account": "customer:c-1", "direction": "debit", "amount": 1234},
            {"account": "merchant:m-1", "direction": "credit", "amount": 1234},
        ],
    }
    again = await run_script("auth:sh-1", "customer:c-1", "merchant:m-1", "1234", target=target)
    assert again[0] == 0 and json.loads(again[1])["status"] == "replayed"
    other = await run_script("auth:sh-1", "customer:c-1", "merchant:m-1", "999", target=target)
    assert other[0] == 6, other  # ALREADY_EXISTS
    assert other[1] == "" and "grpc-status 6: transaction auth:sh-1 exists with different legs" in other[2]


async def test_refuses_bad_arguments_and_says_when_nothing_answers() -> None:
    assert (await run_script('auth"x', "a", "b", "1", target="127.0.0.1:9"))[0] == 64
    assert (await run_script("k", "a", "b", "1.5", target="127.0.0.1:9"))[0] == 64
    assert (await run_script("k", "a", "b", target="127.0.0.1:9"))[0] == 64
    status, _, stderr = await run_script("k", "a", "b", "1", target="127.0.0.1:9")
    assert status == 69 and "127.0.0.1:9" in stderr
