"""A meshd process's open descriptors come back to their baseline after reloads, replica restarts
and routing-file edits (issue #17's soak: "descriptors flat").

meshd runs as a real process over three real upstreams on 127.0.0.1, served to it by the fs
namer, with `pool.idleTimeMs` at 200 ms so pooled connections age out quickly. Four keep-alive
client connections carry the traffic throughout (a fixed number: the client's own choice of
connections is not meshd's to flatten). Each descriptor of the process is read from
/proc/<pid>/fd and classified (a socket by its TCP state and whether meshd accepted it or dialled
it, a file by its path, anon inodes and pipes by kind). The baseline is taken once the warm-up
traffic's upstream connections have idled out; then come 3 replica kills and restarts on new
ports, 2 routing edits that add and remove a second client, and 4 whole-config reloads that
rebuild the router (old clients and pools retired), each followed by traffic. After each of the
three phases every kind of descriptor must come back to its baseline count: connections to dead
replicas reaped, idle ones closed after the idle time, old routers' pools closed, and no admin
connection, file, watch or timer descriptor left behind. (The reloads come last: a replica
restart resets every connection to it, which would hide a retired pool that was never closed.)
"""

from __future__ import annotations

import collections
import os
import pathlib

import yaml

from tests.support.client import RawConnection
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Upstream
from tests.support.waiting import wait_until

ROUTES = (
    "dtab: |\n  /svc/bench => /#/fs/bench;\n",
    "dtab: |\n  /svc/bench => /#/fs/bench;\nrules:\n  - name: canary\n    prefix: /svc/bench\n"
    "    weights:\n      /#/fs/bench: 1\n      /#/fs/bench-canary: 1\n",
)
_STATES = {"01": "established", "06": "time-wait", "08": "close-wait", "0A": "listen"}


def _tcp_sockets() -> dict[str, tuple[int, str]]:
    """Socket inode -> (local port, state) for every TCP socket on the machine."""
    sockets: dict[str, tuple[int, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            sockets[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), _STATES.get(fields[3], fields[3]))
    return sockets


def descriptors(mesh: MeshdProcess) -> collections.Counter[str]:
    """meshd's open descriptors by kind, e.g. `accepted established`, `dialled established`, `file /x`."""
    sockets = _tcp_sockets()
    kinds: collections.Counter[str] = collections.Counter()
    ours = {mesh.port, mesh.admin_port}
    for fd in os.listdir(f"/proc/{mesh.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{mesh.pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            tcp = sockets.get(target[8:-1])
            if tcp is None:
                kinds["socket (not TCP)"] += 1
            else:
                port, state = tcp
                side = "listening" if state == "listen" else "accepted" if port in ours else "dialled"
                kinds[f"{side} {state}"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target] += 1  # e.g. anon_inode:[eventfd]
        else:
            kinds[f"file {target}"] += 1
    return kinds


async def test_descriptors_return_to_baseline_after_reloads_restarts_and_routes_edits(tmp_path: pathlib.Path):
    replicas: list[Upstream] = []
    for _ in range(3):
        replica = Upstream()
        await replica.start()
        replicas.append(replica)

    def config(generation: int) -> dict[str, object]:
        # failure accrual alternates 5 and 6 failures: each reload rebuilds the router
        return process_config({
            "routes": "./routes.yaml",
            "client": {
                "pool": {"idleTimeMs": 200},
                "failureAccrual": {"kind": "consecutiveFailures", "failures": 5 + generation % 2},
            },
        })

    (tmp_path / "routes.yaml").write_text(ROUTES[0])
    mesh = MeshdProcess(tmp_path, config(0))
    mesh.disco.mkdir(parents=True, exist_ok=True)

    def publish() -> None:
        lines = [r.address_line for r in replicas]
        mesh.register("bench", *lines)
        mesh.register("bench-canary", *lines)

    publish()
    clients: list[RawConnection] = []
    try:
        await mesh.start()
        clients = [await RawConnection.open(mesh.port) for _ in range(4)]
        statuses: collections.Counter[int] = collections.Counter()

        async def traffic(n: int = 60) -> None:
            for i in range(n):
                statuses[(await clients[i % len(clients)].request("GET", "/", host="bench")).status] += 1

        def settled() -> bool:
            """No upstream connection, and only the clients' connections accepted (no admin one closing)."""
            kinds = descriptors(mesh)
            accepted = {k: n for k, n in kinds.items() if k.startswith("accepted")}
            return not any(k.startswith("dialled") for k in kinds) and accepted == {"accepted established": len(clients)}

        await traffic()
        await wait_until(settled, timeout=10, message="the warm-up's upstream connections to idle out")
        baseline = descriptors(mesh)

        async def reload(generation: int) -> None:
            mesh.config_path.write_text(yaml.safe_dump(config(generation), sort_keys=False))
            admin = await RawConnection.open(mesh.admin_port)
            try:
                response = await admin.request("POST", "/admin/reload", host="127.0.0.1")
            finally:
                await admin.close()
            assert response.status == 200 and b"applied" in response.body, response.body

        async def back_to_baseline(after: str) -> None:
            try:
                await wait_until(lambda: descriptors(mesh) == baseline, timeout=10, message="the baseline")
            except TimeoutError:
                raise AssertionError(
                    f"after {after}: descriptors {dict(descriptors(mesh))}, baseline {dict(baseline)}"
                ) from None

        for index in range(3):
            await replicas[index].close()  # its connections are reset, as by a killed process
            del replicas[index]
            publish()
            await traffic()
            replica = Upstream()
            await replica.start()
            replicas.insert(index, replica)
            publish()
            await traffic()
        await back_to_baseline("3 replica restarts")
        for edit in (1, 0):
            applied = mesh.log_text().count("routes reloaded")
            (tmp_path / "routes.yaml").write_text(ROUTES[edit])

            def routes_applied(before: int = applied) -> bool:
                return mesh.log_text().count("routes reloaded") > before

            await wait_until(routes_applied, timeout=10, message="the routing edit to apply")
            await traffic()
        await back_to_baseline("2 routing edits")
        for generation in range(1, 5):
            await reload(generation)
            await traffic()
        await back_to_baseline("4 reloads")
        assert set(statuses) == {200}, statuses
    finally:
        for client in clients:
            await client.close()
        await mesh.kill()
        for replica in replicas:
            await replica.close()
