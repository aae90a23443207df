"""The dns namer against a real DNS server: dnsmasq on 127.0.0.1, started by each test.

Records come from files the test writes: SRV records and the `local=/test/` domain (so unknown
names are NXDOMAIN, not REFUSED) from a config file, addresses from an `--addn-hosts` file.
dnsmasq re-reads addn-hosts on SIGHUP but not its config file (dnsmasq(8), SIGHUP), so address
changes use SIGHUP and SRV changes restart the server on the same port. TTLs are 1 s and the
namer's minimum TTL is 1 s, so each change shows within about a second; tests wait on the
namer's observables with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path as FsPath
from typing import Any, TypeVar

import pytest

from meshd.discovery.addr import NEG, Address, Bound
from meshd.discovery.dns import DnsNamer, DnsNamerConfig
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG as NEG_TREE
from routing.nametree import Leaf
from routing.path import Path

DNSMASQ = "/usr/sbin/dnsmasq"
MISSING = "install dnsmasq: apt-get install dnsmasq"
DEADLINE_SECS = 5.0
SRV = "_http._tcp.web.test"
T = TypeVar("T")


def dnsmasq_binary(path: str = DNSMASQ) -> str:
    """The dnsmasq to run; a missing one fails the test under CI and skips it elsewhere."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


class Dnsmasq:
    """One dnsmasq process serving `srv` lines and a hosts file; restartable on the same port."""

    def __init__(self, binary: str, workdir: FsPath) -> None:
        self._binary = binary
        self._conf = workdir / "dnsmasq.conf"
        self._hosts = workdir / "hosts"
        self._log = workdir / "dnsmasq.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def write(self, *, srv: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> None:
        """`srv`: "name,target,port,priority,weight"; `hosts`: "ip name" lines."""
        lines = ["local=/test/", *(f"srv-host={record}" for record in srv)]
        self._conf.write_text("\n".join(lines) + "\n")
        self._hosts.write_text("\n".join(hosts) + "\n")

    async def start(self) -> None:
        for _ in range(5):  # another process may take the free port before dnsmasq binds it
            self.port = self.port or _free_port()
            if await self._try_start():
                return
            self.port = 0
        raise RuntimeError(f"dnsmasq did not start: {self._log.read_text()}")

    def reload(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._proc = None

    async def restart(self) -> None:
        self.stop()
        await self.start()

    async def _try_start(self) -> bool:
        args = [
            self._binary,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={self._conf}",
            f"--addn-hosts={self._hosts}",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--local-ttl=1",
            "--auth-ttl=1",
            "--pid-file=",
            f"--user={_user_name()}",
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return await self._wait_answering()

    async def _wait_answering(self) -> bool:
        """Poll with a real query until dnsmasq answers, or report that it exited."""
        import dns.asyncquery
        import dns.exception
        import dns.message

        assert self._proc is not None
        query = dns.message.make_query("probe.test", "A")
        async with asyncio.timeout(DEADLINE_SECS):
            while self._proc.poll() is None:
                try:
                    await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, timeout=0.1)
                    return True
                except (dns.exception.Timeout, OSError):
                    continue
        self._proc = None
        return False


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _user_name() -> str:
    """dnsmasq started as root drops to `nobody`, which could not re-read our files on SIGHUP."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
async def dnsmasq(tmp_path: FsPath) -> AsyncIterator[Dnsmasq]:
    server = Dnsmasq(dnsmasq_binary(), tmp_path)
    server.write(
        srv=(f"{SRV},web1.test,8080,0,10", f"{SRV},web2.test,8081,0,20", f"{SRV},backup.test,9090,1,5"),
        hosts=(
            "127.0.0.11 web1.test",
            "::1 web1.test",
            "127.0.0.12 web2.test",
            "127.0.0.19 backup.test",
            "127.0.0.21 api.test",
        ),
    )
    await server.start()
    yield server
    server.stop()


NamerFactory = Callable[..., DnsNamer]


@pytest.fixture
async def make_namer(dnsmasq: Dnsmasq) -> AsyncIterator[NamerFactory]:
    namers: list[DnsNamer] = []

    def make(timeout_ms: int = 500) -> DnsNamer:
        config = DnsNamerConfig(
            nameservers=(f"127.0.0.1:{dnsmasq.port}",), min_ttl_secs=1, max_ttl_secs=2, timeout_ms=timeout_ms
        )
        namer = config.build(Runtime())
        namers.append(namer)
        return namer

    yield make
    for namer in namers:
        await namer.close()


async def started(namer: DnsNamer) -> DnsNamer:
    await namer.start()
    return namer


async def wait_until(obs: Observable[T], predicate: Callable[[T], bool], timeout: float = DEADLINE_SECS) -> T:
    """Wait until `predicate(obs.get())` holds and return that value.

    It re-reads the current value after every wake-up because several `set()`s may happen before
    the waiter runs; `Observable.wait_for` judges the (older) value it was woken with and can then
    wait forever.
    """
    async with asyncio.timeout(timeout):
        while not predicate(obs.get()):
            await obs.wait_changed()
    return obs.get()


async def wait_version(namer: DnsNamer, at_least: int) -> None:
    await wait_until(namer.version, lambda v: v >= at_least)


def bound(*addresses: tuple[str, int, float]) -> Bound:
    return Bound(frozenset(Address(host, port, weight) for host, port, weight in addresses))


async def test_srv_name_binds_the_lowest_priority_targets_with_srv_ports_and_weights(
    make_namer: NamerFactory,
) -> None:
    namer = await started(make_namer())
    path = Path.read(f"/srv/{SRV}/api")
    assert namer.lookup(path) is None
    await wait_version(namer, 1)
    srv_id = Path.read(f"/#/dns/srv/{SRV}")
    assert namer.lookup(path) == Leaf(BoundName(id=srv_id, residual=Path.read("/api")))
    assert namer.addr(srv_id).get() == bound(
        ("127.0.0.11", 8080, 10.0), ("::1", 8080, 10.0), ("127.0.0.12", 8081, 20.0)
    )


async def test_a_name_follows_the_hosts_file_after_sighup(make_namer: NamerFactory, dnsmasq: Dnsmasq) -> None:
    namer = await started(make_namer())
    obs = namer.addr(Path.read("/#/dns/a/api.test/80"))
    assert await wait_until(obs, lambda a: isinstance(a, Bound)) == bound(("127.0.0.21", 80, 1.0))
    dnsmasq.write(hosts=("127.0.0.22 api.test", "127.0.0.23 api.test", "fd00::23 api.test"))
    dnsmasq.reload()
    expected = bound(("127.0.0.22", 80, 1.0), ("127.0.0.23", 80, 1.0), ("fd00::23", 80, 1.0))
    assert await wait_until(obs, lambda a: a == expected) == expected
    assert namer.version.get() == 1  # the binding stayed a Leaf; only the address set moved


async def test_nxdomain_is_neg_and_a_removed_name_becomes_neg_and_comes_back(
    make_namer: NamerFactory, dnsmasq: Dnsmasq
) -> None:
    namer = await started(make_namer())
    assert namer.lookup(Path.read("/a/nope.test/80")) is None
    assert namer.lookup(Path.read("/a/api.test/80")) is None
    await wait_version(namer, 2)
    assert namer.lookup(Path.read("/a/nope.test/80")) == NEG_TREE
    obs = namer.addr(Path.read("/#/dns/a/api.test/80"))
    assert isinstance(obs.get(), Bound)

    dnsmasq.write(hosts=("127.0.0.11 web1.test",))
    dnsmasq.reload()
    assert await wait_until(obs, lambda a: a == NEG) == NEG
    assert namer.version.get() == 3
    assert namer.lookup(Path.read("/a/api.test/80")) == NEG_TREE

    dnsmasq.write(hosts=("127.0.0.24 api.test",))
    dnsmasq.reload()
    assert await wait_until(obs, lambda a: isinstance(a, Bound)) == bound(("127.0.0.24", 80, 1.0))
    assert namer.version.get() == 4


async def test_srv_changes_are_followed_across_a_server_restart(
    make_namer: NamerFactory, dnsmasq: Dnsmasq
) -> None:
    namer = await started(make_namer())
    obs = namer.addr(Path.read(f"/#/dns/srv/{SRV}"))
    await wait_until(obs, lambda a: isinstance(a, Bound))
    dnsmasq.write(
        srv=(f"{SRV},web2.test,9000,5,0", f"{SRV},web1.test,9001,7,1"),
        hosts=("127.0.0.11 web1.test", "127.0.0.12 web2.test"),
    )
    await dnsmasq.restart()
    expected = bound(("127.0.0.12", 9000, 1.0))
    assert await wait_until(obs, lambda a: a == expected) == expected


async def test_stopped_server_keeps_the_last_answer(make_namer: NamerFactory, dnsmasq: Dnsmasq) -> None:
    namer = await started(make_namer(timeout_ms=200))
    obs = namer.addr(Path.read("/#/dns/a/api.test/80"))
    last = await wait_until(obs, lambda a: isinstance(a, Bound))
    dnsmasq.stop()
    # A socket on the dead server's port sees the namer's queries; nothing answers them. Each refresh
    # sends A and AAAA at once and the next one starts only after the previous has timed out, so a
    # third query proves that at least one failed refresh has been handled.
    loop = asyncio.get_running_loop()
    sink = QuerySink()
    transport, _ = await loop.create_datagram_endpoint(lambda: sink, local_addr=("127.0.0.1", dnsmasq.port))
    try:
        await wait_until(sink.received, lambda n: n >= 3)
    finally:
        transport.close()
    assert namer.statistics().lookups_failed >= 1
    assert obs.get() == last
    assert namer.lookup(Path.read("/a/api.test/80")) == Leaf(
        BoundName(id=Path.read("/#/dns/a/api.test/80"), residual=Path())
    )


class QuerySink(asyncio.DatagramProtocol):
    """Counts datagrams and never answers: a DNS server that is down."""

    def __init__(self) -> None:
        self.received = Observable(0)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.set(self.received.get() + 1)


def test_missing_dnsmasq_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=MISSING):
        dnsmasq_binary("/nonexistent/dnsmasq-missing")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        dnsmasq_binary("/nonexistent/dnsmasq-missing")
