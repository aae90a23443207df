"""The demo as a command: clear failure when meshd cannot run, and nothing left running after Ctrl-C.

These start the real service replicas (a few seconds) but stand in for meshd with a program that never becomes
ready, so they need no working meshd; `tests/system/test_demo_story.py` runs the whole story.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

import examples
from examples.bank.story.probing import wait_until
from tests.examples.test_bank_processes import wait_dead

ROOT = Path(examples.__file__).resolve().parent.parent


def demo_argv(workdir: Path, meshd_program: str, *extra: str) -> list[str]:
    meshd_command = shlex.join([sys.executable, "-c", meshd_program])
    return [
        sys.executable,
        "-m",
        "examples.bank.demo",
        "--duration",
        "5",
        "--rate",
        "5",
        "--cardholders",
        "5",
        "--workdir",
        str(workdir),
        "--meshd-command",
        meshd_command,
        *extra,
    ]


async def start_demo(argv: list[str]) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def started_pids(workdir: Path) -> dict[str, int]:
    """The demo's own record of what it started: `<run dir>/pids`."""
    pids: dict[str, int] = {}
    for pid_file in workdir.glob("run-*/pids"):
        for line in pid_file.read_text().splitlines():
            name, pid = line.split()
            pids[name] = int(pid)
    return pids


def ports_in_use(workdir: Path) -> list[int]:
    in_use = []
    for disco in workdir.glob("run-*/disco/*"):
        for line in disco.read_text().splitlines():
            port = int(line.split()[1])
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    in_use.append(port)
    return in_use


async def test_missing_meshd_is_reported_clearly_and_nothing_is_left_running(tmp_path):
    result = tmp_path / "result.json"
    demo = await start_demo(
        demo_argv(tmp_path, "raise SystemExit('meshd: no such module')", "--json-out", str(result))
    )
    stdout, stderr = await asyncio.wait_for(demo.communicate(), timeout=60)
    message = stderr.decode()
    assert demo.returncode == 2, (stdout.decode(), message)
    assert "meshd exited before it was ready" in message
    assert "Is meshd installed and runnable" in message
    assert "meshd: no such module" in message  # the tail of meshd's own log
    assert json.loads(result.read_text())["ok"] is False
    pids = started_pids(tmp_path)
    assert len(pids) == 16  # fifteen service replicas (events x2 and locks among them) and meshd
    await wait_dead(*pids.values())
    assert ports_in_use(tmp_path) == []


async def test_ctrl_c_stops_every_process_the_demo_started(tmp_path):
    never_ready = "import signal\nwhile True:\n    signal.pause()\n"
    demo = await start_demo(demo_argv(tmp_path, never_ready, "--startup-timeout", "60"))
    try:

        async def meshd_started() -> bool:
            return "meshd" in started_pids(tmp_path)

        await wait_until(meshd_started, timeout_secs=60, what="demo started its processes")
        demo.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(demo.communicate(), timeout=30)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 130
    assert "interrupted" in stderr.decode()
    await wait_dead(*started_pids(tmp_path).values())
    assert ports_in_use(tmp_path) == []
