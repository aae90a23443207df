"""Where meshd's resident memory goes: `python -m bench.memory_profile [--config meshd.yaml]`.

Two measurements, each in a fresh interpreter (a child process), printed as tables:

1. **Imports**: the interpreter's RSS before and after importing each module of `IMPORTS` in that
   order. A module is charged only what the ones before it did not already import, so the order
   is the daemon's own (event loop first, meshd last); the modules after `LAZY` are ones a plain
   config does not import, charged as if they were.
2. **The daemon**: a real `meshd.daemon.Daemon` started in-process with the config (default: a
   plain one, fs namer, one router, no TLS, admin server on), the same way `meshd run` starts it
   (uvloop, the collector tuned); then its RSS split into anonymous memory (the Python heap) and
   file-backed pages (shared libraries), its threads, and the modules it imported, by package.

RSS figures depend on the Python build and the libraries installed; the docs' table
(docs/benchmarks-analysis.md, "Where the memory goes") says which ones it was taken with.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Final

#: the daemon's imports in the order it needs them; each line is charged what it adds
IMPORTS: Final = (
    "asyncio",
    "uvloop",
    "httptools",
    "yaml",
    "routing.rules",
    "balancers.registry",
    "meshd.config.model",
    "meshd.router",
    "meshd.listener",
    "meshd.admin.app",
    "meshd.daemon",
)
#: imported only by what a plain config does not use (TLS, the Kubernetes and DNS namers, aiohttp
#: for the Kubernetes client and the OTLP exporter, the exporter's protobuf classes, RE2 for the
#: routing files' regex conditions), and
#: prometheus_client, which no meshd process imports any more
#: (meshd/exposition.py; the tests use its parser): charged as if they were
LAZY: Final = ("aiohttp", "aiohttp.web", "cryptography.x509", "dns.asyncresolver", "kubernetes_asyncio",
               "meshd.tracing.exporter", "re2", "prometheus_client")
#: packages a plain config's daemon must not import (tests/system/test_lean_imports.py checks the same)
HEAVY: Final = ("aiohttp", "cryptography", "dns", "kubernetes_asyncio", "prometheus_client", "opentelemetry", "google",
                "re2")

PLAIN_CONFIG: Final = """\
admin: {ip: 127.0.0.1, port: 0}
namers:
- {kind: fs, rootDir: ./disco}
routers:
- label: outgoing
  servers: [{ip: 127.0.0.1, port: 0}]
  identifier: {kind: header, header: host}
  dtab: /svc => /#/fs;
  service:
    retries: {budget: {ttlSecs: 10, minRetriesPerSec: 10, percentCanRetry: 0.2}}
    responseClassifier: {kind: retryableIdempotent5XX}
  client:
    loadBalancer: {kind: ewma}
    failureAccrual: {kind: consecutiveFailures, failures: 5}
"""


#: the children run only this code and the imports measured, so the interpreter's own line is bare
_CHILD_COMMON: Final = """\
import json, sys
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
"""
_CHILD_IMPORTS: Final = _CHILD_COMMON + """\
import importlib
rows = [("(interpreter)", rss_kb(), len(sys.modules))]
for name in sys.argv[1].split(","):
    before, count = rss_kb(), len(sys.modules)
    importlib.import_module(name)
    rows.append((name, rss_kb() - before, len(sys.modules) - count))
print(json.dumps(rows))
"""
_CHILD_DAEMON: Final = _CHILD_COMMON + """\
import asyncio, collections, pathlib
import uvloop
from meshd.daemon import Daemon, load_config_path
from meshd.runtime import Runtime
path = pathlib.Path(sys.argv[1])
async def run():
    daemon = Daemon(load_config_path(path), Runtime(base_dir=path.parent), tune_gc=True, config_path=path)
    await daemon.start()
    await asyncio.sleep(0)
    rollup = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            rollup[parts[0].rstrip(":")] = int(parts[1])
    report = {
        "rss_kb": rss_kb(),
        "rollup": rollup,
        "threads": len(list(pathlib.Path("/proc/self/task").iterdir())),
        "modules": len(sys.modules),
        "packages": collections.Counter(name.split(".")[0] for name in sys.modules).most_common(),
        "heavy": sorted(name for name in sys.argv[2].split(",") if name in sys.modules),
    }
    await daemon.shutdown(0.0)
    return report
print(json.dumps(uvloop.run(run())))
"""


def _child(code: str, args: list[str], cwd: pathlib.Path | None = None) -> object:
    env = dict(os.environ)
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, cwd=cwd,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mb(kb: float) -> str:
    return f"{kb / 1024.0:.1f}"


def report(config: pathlib.Path | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        label = str(config)
        if config is None:
            (workdir / "disco").mkdir()
            (workdir / "disco" / "bench").write_text("127.0.0.1 9\n")
            config = workdir / "meshd.yaml"
            config.write_text(PLAIN_CONFIG)
            label = "the plain config: fs namer, one router, no TLS"
        daemon = _child(_CHILD_DAEMON, [str(config.resolve()), ",".join(HEAVY)], cwd=workdir)
    assert isinstance(daemon, dict)
    heavy = daemon["heavy"]
    rows = _child(_CHILD_IMPORTS, [",".join(IMPORTS + LAZY)])
    assert isinstance(rows, list)
    lines = ["| import (in this order) | RSS added, MB | modules added |", "|:---|---:|---:|"]
    total = 0
    for name, kb, count in rows:
        if name == LAZY[0]:
            lines.append(f"| **the daemon's imports** | **{_mb(total)}** | |")
        total += kb
        lazy = name in LAZY and name.split(".")[0] not in heavy
        lines.append(f"| `{name}`{' (not imported by this config)' if lazy else ''} | {_mb(kb)} | {count} |")
    rollup = daemon["rollup"]
    lines += [
        "",
        f"A started daemon ({label}): RSS {_mb(daemon['rss_kb'])} MB = anonymous {_mb(rollup['Anonymous'])} MB "
        f"(the Python heap) + file-backed {_mb(rollup['Rss'] - rollup['Anonymous'])} MB (shared libraries, mostly "
        f"shared with other processes: their PSS is {_mb(rollup.get('Pss_File', 0))} MB); {daemon['threads']} "
        f"threads; {daemon['modules']} modules; of {', '.join(HEAVY)} it imported: {', '.join(heavy) or 'none'}.",
        "",
        "Its modules by package: " + ", ".join(f"{name} {count}" for name, count in daemon["packages"] if count > 1) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=pathlib.Path, help="a meshd.yaml (default: a plain fs-namer config)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(report(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
