"""Canary splits from a routing file, measured at the upstreams, and changed under load.

meshd runs in-process in front of `accounts` v1 and v2 (two replicas each) on loopback; its routes
file splits `/svc/accounts` between them. Load is 16 keep-alive connections sending requests one
after another; each version is counted where it is served (at its replicas), not from responses.

Why 5% +- 1% over 10,000 requests is a sound bound: the v2 count is binomial(10,000, 0.05), whose
standard deviation is 21.8 requests (0.22%), so +-1% is 4.6 standard deviations. After the edit to
50/50, at least 4,000 requests are measured: sd 0.79%, and the +-3% bound is 3.8 sd.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from tests.support.client import ConnectionClosed, RawConnection
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until

CONNECTIONS = 16
PER_CONNECTION = 625

CANARY_95_5 = """\
rules:
  - name: accounts-canary
    description: 5% of accounts traffic to v2
    prefix: /svc/accounts
    weights: {/#/fs/accounts: 95, /#/fs/accounts-v2: 5}
"""

CANARY_50_50 = CANARY_95_5.replace("95, ", "50, ").replace(": 5}", ": 50}")


@dataclass
class Load:
    """What the client side saw: statuses, bodies (which version answered) and transport errors."""

    statuses: Counter[int] = field(default_factory=Counter)
    bodies: Counter[bytes] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    sent: int = 0

    @property
    def failed(self) -> int:
        return len(self.errors) + sum(n for status, n in self.statuses.items() if status != 200)


def version_handler(version: str) -> Callable[[Received], Awaitable[Reply]]:
    async def handler(request: Received) -> Reply:
        return Reply(200, [("X-Version", version)], version.encode())

    return handler


async def start_accounts(make_upstream, mesh, replicas: int = 2) -> tuple[list[Upstream], list[Upstream]]:
    """`accounts` (v1) and `accounts-v2` replicas, registered with the mesh's fs namer."""
    v1 = [await make_upstream(version_handler("v1")) for _ in range(replicas)]
    v2 = [await make_upstream(version_handler("v2")) for _ in range(replicas)]
    mesh.register("accounts", *v1)
    mesh.register("accounts-v2", *v2)
    return v1, v2


def served(upstreams: list[Upstream]) -> int:
    return sum(up.requests for up in upstreams)


async def drive(
    port: int,
    *,
    connections: int = CONNECTIONS,
    per_connection: int = PER_CONNECTION,
    host: str = "accounts",
    headers: list[tuple[str, str]] | None = None,
    stop: asyncio.Event | None = None,
) -> Load:
    """`connections` keep-alive connections, each sending up to `per_connection` GETs in turn.

    With `stop`, each connection ends early once the event is set (the request count still
    bounds the run). A connection that meshd closes is reopened, and the error recorded.
    """
    load = Load()

    async def one_connection() -> None:
        conn = await RawConnection.open(port)
        try:
            for _ in range(per_connection):
                if stop is not None and stop.is_set():
                    return
                load.sent += 1
                try:
                    response = await conn.request("GET", "/balance", headers, host=host)
                except (ConnectionClosed, OSError) as exc:
                    load.errors.append(repr(exc))
                    await conn.close()
                    conn = await RawConnection.open(port)
                    continue
                load.statuses[response.status] += 1
                load.bodies[response.body] += 1
                if response.header("connection") == "close":
                    await conn.close()
                    conn = await RawConnection.open(port)
        finally:
            await conn.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return load


async def test_95_5_split_sends_5_percent_to_v2_over_10000_requests(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    v1, v2 = await start_accounts(make_upstream, mesh)

    load = await drive(mesh.port)

    assert load.sent == 10_000
    assert load.failed == 0, (load.statuses, load.errors[:3])
    assert served(v1) + served(v2) == 10_000
    share = served(v2) / 10_000
    assert 0.04 <= share <= 0.06, f"v2 got {share:.2%}"
    # both replicas of each version take part: the split is between versions, not replicas
    assert all(up.requests > 0 for up in v1 + v2)
    # the client-side view agrees with what the upstreams counted
    assert load.bodies == {b"v1": served(v1), b"v2": served(v2)}


@pytest.mark.parametrize("save", ["atomic-rename", "in-place"])
async def test_editing_the_split_to_50_50_under_load_fails_no_request(make_mesh, make_upstream, save):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    v1, v2 = await start_accounts(make_upstream, mesh)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    stop = asyncio.Event()
    load_task = asyncio.create_task(drive(mesh.port, per_connection=2_000, stop=stop))

    await wait_until(lambda: served(v1) + served(v2) >= 2_000, timeout=20, message="load before the edit")
    before = (served(v1), served(v2))
    reloads = watcher.successes
    routes = mesh.root / "routes.yaml"
    if save == "atomic-rename":  # as most editors save, and as a ConfigMap volume updates
        staged = mesh.root / "routes.yaml.new"
        staged.write_text(CANARY_50_50)
        staged.replace(routes)
    else:  # truncate, then write: the watcher must not apply (or refuse) a half-written file
        routes.write_text(CANARY_50_50)
    await wait_until(lambda: watcher.successes > reloads, timeout=5, message="the reload")
    # Requests in flight at the reload (at most one per connection, 16 of the 4,000+ measured
    # below) finish on the old split: they move the measured share by at most 0.4%.
    after_reload = (served(v1), served(v2))
    await wait_until(
        lambda: served(v1) + served(v2) >= sum(after_reload) + 4_000, timeout=20, message="load after the edit"
    )
    stop.set()
    load = await load_task

    assert load.failed == 0, (load.statuses, load.errors[:3])
    assert watcher.errors == 0
    early_share = before[1] / sum(before)
    assert 0.03 <= early_share <= 0.07, f"v2 got {early_share:.2%} before the edit"
    late_v1 = served(v1) - after_reload[0]
    late_v2 = served(v2) - after_reload[1]
    late_share = late_v2 / (late_v1 + late_v2)
    assert 0.47 <= late_share <= 0.53, f"v2 got {late_share:.2%} after the edit ({late_v1} v1, {late_v2} v2)"


async def test_broken_edit_is_refused_and_the_split_stays(make_mesh, make_upstream, caplog):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    v1, v2 = await start_accounts(make_upstream, mesh)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    broken = CANARY_50_50.replace("weights: {/#/fs/accounts: 50", "weights: {/#/fs/accounts: -50")
    (mesh.root / "routes.yaml").write_text(broken)
    await wait_until(lambda: watcher.errors == 1, timeout=5, message="the refusal")

    load = await drive(mesh.port)

    assert load.failed == 0
    share = served(v2) / (served(v1) + served(v2))
    assert 0.04 <= share <= 0.06, f"v2 got {share:.2%}; the broken 50/50 edit must not apply"
    assert watcher.successes == 1  # only the file loaded at start-up
    refusals = [r.getMessage() for r in caplog.records if r.name == "meshd.reload" and r.levelname == "ERROR"]
    assert len(refusals) == 1
    assert 'routes.yaml: rules[0].weights["/#/fs/accounts"]: line 5: ' in refusals[0]
    assert "weight must be a finite number >= 0, got -50" in refusals[0]


async def test_removing_the_rule_sends_everything_back_to_v1(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    v1, v2 = await start_accounts(make_upstream, mesh)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    (mesh.root / "routes.yaml").write_text(CANARY_95_5.replace("prefix:", "enabled: false\n    prefix:"))
    await wait_until(lambda: watcher.successes == 2, timeout=5, message="the reload")

    load = await drive(mesh.port, connections=4, per_connection=100)

    assert load.failed == 0
    assert served(v2) == 0 and served(v1) == 400


async def test_a_vanished_canary_falls_back_to_v1_without_failures(make_mesh, make_upstream):
    """If accounts-v2 is deleted from discovery, its union branch is dropped (docs E7), not failed."""
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_50_50})
    v1, v2 = await start_accounts(make_upstream, mesh)
    (mesh.disco / "accounts-v2").unlink()
    mesh.register("accounts", *v1)  # rescans the directory

    load = await drive(mesh.port, connections=4, per_connection=100)

    assert load.failed == 0, load.statuses
    assert served(v2) == 0 and served(v1) == 400
