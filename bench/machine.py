"""Describes the machine a run happened on: cores, CPU model, kernel, Python and tool versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from bench.results import Machine
from bench.targets.peers import envoy_binary, haproxy_binary, nginx_binary


def describe() -> Machine:
    return Machine(
        cores=os.cpu_count() or 0,
        cpu_model=cpu_model(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""),
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        memory_gb=round(_memory_bytes() / 2**30, 1),
        tools=tool_versions(),
    )


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tool_versions() -> dict[str, str]:
    """First line of each tool's version output; tools that are missing are left out."""
    versions: dict[str, str] = {}
    candidates = {
        "wrk": (["wrk", "--version"], "wrk"),
        "envoy": ([envoy_binary() or "", "--version"], "version:"),
        "haproxy": ([haproxy_binary() or "", "-v"], "HAProxy"),
        "nginx": ([nginx_binary() or "", "-v"], "nginx"),
    }
    for name, (argv, marker) in candidates.items():
        if not argv[0]:
            continue
        line = _first_line_with(argv, marker)
        if line:
            versions[name] = line
    for package in ("uvloop", "httptools"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _first_line_with(argv: list[str], marker: str) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if marker in line:
            # Envoy prints "<path>  version: <sha>/<version>/...": keep what follows the path.
            return line[line.index(marker):].strip()[:160] if marker == "version:" else line.strip()[:160]
    return None


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
