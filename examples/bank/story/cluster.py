"""Bringing the whole bank up (every replica, the seed data, meshd) and taking all of it down again.

Start order matters: the services come up first, each polled on `/healthz`; the bank is seeded by talking to
one replica of accounts and ledger directly; then meshd starts and is polled on `/admin/ready`; finally the
demo waits until meshd actually routes to every service name. Every wait has a deadline, and a process that
exits while being waited for is reported at once with the tail of its log - most usefully meshd, which is
where a missing or broken meshd shows up.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

import examples
from examples.bank.authorisation import FUNDING_ACCOUNT, customer_ledger_account
from examples.bank.ledger_book import transfer
from examples.bank.relay import RELAY_LOCK
from examples.bank.story.canary import routes_document
from examples.bank.story.metrics import MeshCounters, scrape
from examples.bank.story.probing import StartupError, http_status, wait_until
from examples.bank.story.processes import Supervisor
from examples.bank.story.topology import BrokerNode, Layout, Replica, write_atomically, write_mesh_files

MESHD: Final = "meshd"
SEED_CONCURRENCY: Final = 16

Log = Callable[[str], None]


@dataclass
class Cluster:
    """The running bank: its layout, its processes and an HTTP session for talking to them."""

    layout: Layout
    supervisor: Supervisor
    session: aiohttp.ClientSession
    startup_timeout_secs: float

    async def wait_healthy(self, replica: Replica) -> None:
        async def healthy() -> bool:
            if self.supervisor.returncode(replica.name) is not None:
                raise StartupError(
                    self.exit_report(replica.name, f"{replica.name} exited before it was healthy")
                )
            return await http_status(self.session, f"{replica.url}/healthz") == 200

        try:
            await wait_until(healthy, timeout_secs=self.startup_timeout_secs, what=f"{replica.name} /healthz")
        except TimeoutError as exc:
            raise StartupError(f"{exc}\n{self.supervisor.log_tail(replica.name)}") from None

    async def crash_and_restart(self, replica: Replica) -> None:
        """SIGKILL the replica (no goodbye to meshd, connections just die), start it again, wait until healthy."""
        await self.supervisor.kill(replica.name)
        await self.supervisor.restart(replica.name)
        await self.wait_healthy(replica)

    async def crash_and_restart_broker(self, broker: BrokerNode) -> None:
        """SIGKILL a NATS node and start it again on the same store; JetStream catches it up from its peers."""
        await self.supervisor.kill(broker.name)
        await self.supervisor.restart(broker.name)
        await self.wait_broker(broker)

    async def wait_broker(self, broker: BrokerNode) -> None:
        async def listening() -> bool:
            if self.supervisor.returncode(broker.name) is not None:
                raise StartupError(self.exit_report(broker.name, f"{broker.name} exited"))
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            except OSError:
                return False
            writer.close()
            return True

        try:
            await wait_until(
                listening, timeout_secs=self.startup_timeout_secs, what=f"{broker.name} to listen"
            )
        except TimeoutError as exc:
            raise StartupError(f"{exc}\n{self.supervisor.log_tail(broker.name)}") from None

    def write_disco(self, service: str, replicas: Sequence[Replica]) -> None:
        """Rewrite the fs namer's file for `service` (meshd re-reads it within its poll interval)."""
        lines = "".join(f"127.0.0.1 {replica.port}\n" for replica in replicas)
        write_atomically(self.layout.disco_dir / service, lines)

    async def relay_lease(self) -> dict[str, object] | None:
        """Who holds the outbox relay's lock right now (read from a locks replica directly), or None."""
        locks = self.layout.of("locks")
        if not locks:
            return None
        try:
            async with self.session.get(f"{locks[0].url}/locks/{RELAY_LOCK}") as response:
                if response.status != 200:
                    return None
                lease: dict[str, object] = await response.json()
                return lease
        except aiohttp.ClientError:
            return None

    async def set_chaos(self, replica: Replica, *, latency_ms: float = 0.0, fail_rate: float = 0.0) -> None:
        body = {"latency_ms": latency_ms, "fail_rate": fail_rate}
        async with self.session.post(f"{replica.url}/_chaos", json=body) as response:
            response.raise_for_status()

    async def mesh_counters(self) -> MeshCounters:
        return await scrape(self.session, self.layout.admin_url)

    def route_accounts_to_v2(self, share: float) -> None:
        write_atomically(self.layout.routes_path, routes_document(share))

    def exit_report(self, name: str, what: str) -> str:
        """`what`, the child's exit code and the end of its log."""
        code = self.supervisor.returncode(name)
        return f"{what} (exit code {code}). Last lines of {self.supervisor.log_path(name)}:\n{self.supervisor.log_tail(name)}"


@asynccontextmanager
async def running_cluster(
    layout: Layout,
    *,
    opening_balances: Mapping[str, int],
    meshd_command: Sequence[str],
    startup_timeout_secs: float,
    log: Log,
) -> AsyncIterator[Cluster]:
    """Start everything; on leaving (normally, on error, or on Ctrl-C) stop every process that was started."""
    write_mesh_files(layout)
    supervisor = Supervisor(layout.logs_dir, env=_child_environment(), pid_file=layout.pid_file)
    try:
        async with aiohttp.ClientSession() as session:
            cluster = Cluster(layout, supervisor, session, startup_timeout_secs)
            if layout.brokers:
                binary = nats_server_binary()
                log(f"starting a {len(layout.brokers)}-node NATS JetStream cluster ({binary})")
                for broker in layout.brokers:
                    broker.store.mkdir(parents=True, exist_ok=True)
                    await supervisor.start(broker.name, broker.command(binary), cwd=layout.workdir)
                await asyncio.gather(*(cluster.wait_broker(broker) for broker in layout.brokers))
            log(f"starting {len(layout.replicas)} service replicas")
            for replica in layout.replicas:
                await supervisor.start(replica.name, replica.command(layout.meshd_url), cwd=layout.workdir)
            await asyncio.gather(*(cluster.wait_healthy(replica) for replica in layout.replicas))
            log(f"seeding {len(opening_balances)} accounts")
            await _seed(session, layout, opening_balances)
            log(f"starting meshd: {shlex.join(meshd_command)} run -c {layout.config_path}")
            await supervisor.start(
                MESHD, [*meshd_command, "run", "-c", str(layout.config_path)], cwd=layout.workdir
            )
            await _wait_meshd_ready(cluster, meshd_command)
            log(f"meshd ready: router {layout.meshd_url}, admin {layout.admin_url}")
            yield cluster
    finally:
        await asyncio.shield(supervisor.stop_all())
        log("stopped every process the demo started")


async def _wait_meshd_ready(cluster: Cluster, meshd_command: Sequence[str]) -> None:
    layout, supervisor = cluster.layout, cluster.supervisor
    hint = f"Is meshd installed and runnable as `{shlex.join(meshd_command)}`?"

    async def ready() -> bool:
        if supervisor.returncode(MESHD) is not None:
            raise StartupError(cluster.exit_report(MESHD, f"meshd exited before it was ready. {hint}"))
        return await http_status(cluster.session, f"{layout.admin_url}/admin/ready") == 200

    async def routes_everywhere() -> bool:
        names = sorted({replica.service for replica in layout.replicas})
        statuses = await asyncio.gather(
            *(
                http_status(cluster.session, f"{layout.meshd_url}/healthz", headers={"Host": name})
                for name in names
            )
        )
        return all(status == 200 for status in statuses)

    try:
        await wait_until(ready, timeout_secs=cluster.startup_timeout_secs, what="meshd /admin/ready")
        await wait_until(routes_everywhere, timeout_secs=cluster.startup_timeout_secs, what="meshd routing")
    except TimeoutError as exc:
        raise StartupError(f"{exc}. {hint} Last lines of its log:\n{supervisor.log_tail(MESHD)}") from None


async def _seed(session: aiohttp.ClientSession, layout: Layout, opening_balances: Mapping[str, int]) -> None:
    """Open every account and fund it in the ledger; both writes are idempotent, so a re-run is harmless."""
    accounts, ledger = layout.of("accounts")[0].url, layout.of("ledger")[0].url
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def seed_one(account_id: str, balance: int) -> None:
        legs = transfer(FUNDING_ACCOUNT, customer_ledger_account(account_id), balance)
        async with gate:
            async with session.put(
                f"{accounts}/accounts/{account_id}", json={"opening_balance": balance}
            ) as r:
                r.raise_for_status()
            body = {"legs": [leg.to_json() for leg in legs]}
            async with session.put(f"{ledger}/transactions/open:{account_id}", json=body) as r:
                r.raise_for_status()

    await asyncio.gather(*(seed_one(account_id, balance) for account_id, balance in opening_balances.items()))


def nats_server_binary() -> str:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StartupError("--bus nats needs nats-server: apt-get install nats-server (make system-deps does)")


def _child_environment() -> dict[str, str]:
    """The demo's environment, plus the project root on PYTHONPATH so `-m examples.bank.x` and `-m meshd` import
    from this source tree whatever the working directory."""
    root = str(Path(examples.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env
