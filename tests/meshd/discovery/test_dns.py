"""Unit tests of the dns namer: config, name parsing, SRV/A resolution and the refresh state machine.

DNS is a scripted `FakeDns`; time is the one `FakeClock` (tests/support/clock.py), whose
`sleep()` wakes only when the test advances it (`slept` lists the delays, `wait_sleeps(n)` waits
until the namer has gone to sleep n times, i.e. settled), so TTLs, backoff and idle expiry are checked exactly and instantly. The same namer
against a real DNS server (dnsmasq) is in test_dns_dnsmasq.py.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Literal, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.discovery.addr import NEG, PENDING, Addr, Address, Bound, Failed
from meshd.discovery.base import Namer
from meshd.discovery.dns import (
    DnsFailure,
    DnsNamer,
    DnsNamerConfig,
    HostName,
    Records,
    SrvName,
    SrvRecord,
    parse_nameserver,
    resolve,
)
from meshd.exposition import Registry
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG as NEG_TREE
from routing.nametree import Leaf
from routing.path import Path
from tests.support.clock import FakeClock

SRV = "_http._tcp.web.test"
SRV_ID = Path.read(f"/#/dns/srv/{SRV}")
API_ID = Path.read("/#/dns/a/api.test/80")
EMPTY: Records[str] = Records((), None)
T = TypeVar("T")


class FakeDns:
    """Answers from a table the test edits; a missing entry is a negative answer without TTL."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Records[SrvRecord] | Records[str] | DnsFailure] = {}
        self.queries: list[tuple[str, str]] = []

    def set_ips(
        self, host: str, v4: tuple[str, ...] = (), v6: tuple[str, ...] = (), ttl: float = 30.0
    ) -> None:
        self.answers[(host, "A")] = Records(v4, ttl)
        self.answers[(host, "AAAA")] = Records(v6, ttl)

    def fail(self, name: str, rdtype: str, reason: str = "SERVFAIL") -> None:
        self.answers[(name, rdtype)] = DnsFailure(reason)

    async def query_srv(self, name: str) -> Records[SrvRecord]:
        answer = self._answer(name, "SRV")
        assert all(isinstance(v, SrvRecord) for v in answer.values)
        return answer  # type: ignore[return-value]

    async def query_ips(self, host: str, rdtype: Literal["A", "AAAA"]) -> Records[str]:
        return self._answer(host, rdtype)  # type: ignore[return-value]

    def _answer(self, name: str, rdtype: str) -> Records[SrvRecord] | Records[str]:
        self.queries.append((name, rdtype))
        answer = self.answers.get((name, rdtype), EMPTY)
        if isinstance(answer, DnsFailure):
            raise answer
        return answer


@pytest.fixture
def dns() -> FakeDns:
    fake = FakeDns()
    fake.answers[(SRV, "SRV")] = Records((SrvRecord(0, 10, 8080, "web1.test."),), 30.0)
    fake.set_ips("web1.test.", v4=("10.0.0.1",))
    fake.set_ips("api.test", v4=("10.0.1.1",), v6=("fd00::1",), ttl=20.0)
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def registry() -> Registry:
    return Registry()


NamerFactory = Callable[..., DnsNamer]


@pytest.fixture
async def make_namer(
    dns: FakeDns, clock: FakeClock, registry: Registry
) -> AsyncIterator[NamerFactory]:
    namers: list[DnsNamer] = []

    def make(**config: float) -> DnsNamer:
        settings_ = {"min_ttl_secs": 5.0, "max_ttl_secs": 300.0, "idle_ttl_secs": 600.0, **config}
        namer = DnsNamer(
            DnsNamerConfig(**settings_),  # type: ignore[arg-type]
            dns,
            clock=clock,
            rng=random.Random(7),
            registry=registry,
        )
        namers.append(namer)
        return namer

    yield make
    for namer in namers:
        await namer.close()


async def started(namer: DnsNamer) -> DnsNamer:
    await namer.start()
    return namer


async def wait_until(obs: Observable[T], predicate: Callable[[T], bool], timeout: float = 2.0) -> T:
    """Wait until `predicate(obs.get())` holds and return that value.

    It re-reads the current value after every wake-up because several `set()`s may happen before
    the waiter runs; `Observable.wait_for` judges the (older) value it was woken with and can then
    wait forever.
    """
    async with asyncio.timeout(timeout):
        while not predicate(obs.get()):
            await obs.wait_changed()
    return obs.get()


# --- config ---------------------------------------------------------------------------------------


def test_default_config_is_valid_and_builds_a_namer_on_the_runtime() -> None:
    runtime = Runtime()
    namer: Namer = DnsNamerConfig(nameservers=("127.0.0.1:5353",)).build(runtime)  # mypy checks the protocol
    assert namer.prefix == Path.read("/#/dns")
    assert runtime.registry.get_sample_value("meshd_dns_lookups_total", {"result": "ok"}) == 0.0
    assert DnsNamerConfig.KIND == "dns"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "dns"}, "prefix"),
        ({"nameservers": ("dns.example:53",)}, "IP address"),
        ({"nameservers": ("127.0.0.1:0",)}, "port"),
        ({"min_ttl_secs": 0}, "minTtlSecs"),
        ({"min_ttl_secs": 10, "max_ttl_secs": 5}, "maxTtlSecs"),
        ({"timeout_ms": 0}, "timeoutMs"),
        ({"idle_ttl_secs": -1}, "idleTtlSecs"),
    ],
)
def test_bad_config_is_refused_with_a_plain_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DnsNamerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("[::1]:53", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("[fd00::2]", ("fd00::2", 53)),
    ],
)
def test_nameservers_are_ip_and_optional_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


def test_two_dns_namers_share_the_lookup_counter_of_one_registry() -> None:
    runtime = Runtime()
    DnsNamerConfig().build(runtime)
    DnsNamerConfig(prefix="/#/dns2").build(runtime)  # must not raise "Duplicated timeseries"


def test_importing_the_module_does_not_import_dnspython() -> None:
    code = "import sys, meshd.discovery.dns; print('dns' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- resolution -------------------------------------------------------------------------------------


async def test_srv_uses_only_the_lowest_priority_group_with_srv_ports_and_weights(dns: FakeDns) -> None:
    dns.answers[(SRV, "SRV")] = Records(
        (
            SrvRecord(10, 5, 8080, "web1.test."),
            SrvRecord(10, 15, 8081, "web2.test."),
            SrvRecord(20, 100, 9090, "backup.test."),
        ),
        60.0,
    )
    dns.set_ips("web2.test.", v4=("10.0.0.2",), v6=("fd00::2",), ttl=12.0)
    dns.set_ips("backup.test.", v4=("10.0.9.9",))
    state, ttl = await resolve(dns, SrvName(SRV))
    assert state == Bound(
        frozenset(
            {Address("10.0.0.1", 8080, 5.0), Address("10.0.0.2", 8081, 15.0), Address("fd00::2", 8081, 15.0)}
        )
    )
    assert ttl == 12.0  # the shortest TTL of the SRV set and the targets' address sets
    assert ("backup.test.", "A") not in dns.queries


async def test_srv_all_zero_weights_are_equal_and_a_zero_among_others_is_tiny(dns: FakeDns) -> None:
    dns.set_ips("web2.test.", v4=("10.0.0.2",))
    dns.answers[(SRV, "SRV")] = Records(
        (SrvRecord(0, 0, 1, "web1.test."), SrvRecord(0, 0, 2, "web2.test.")), 5.0
    )
    state, _ = await resolve(dns, SrvName(SRV))
    assert isinstance(state, Bound) and {a.weight for a in state.addresses} == {1.0}
    dns.answers[(SRV, "SRV")] = Records(
        (SrvRecord(0, 0, 1, "web1.test."), SrvRecord(0, 3, 2, "web2.test.")), 5.0
    )
    state, _ = await resolve(dns, SrvName(SRV))
    assert isinstance(state, Bound)
    weights = {a.port: a.weight for a in state.addresses}
    assert weights[2] == 3.0 and 0 < weights[1] < 0.01


async def test_srv_records_to_one_address_add_their_weights(dns: FakeDns) -> None:
    dns.set_ips("alias.test.", v4=("10.0.0.1",))
    dns.answers[(SRV, "SRV")] = Records(
        (SrvRecord(0, 2, 80, "web1.test."), SrvRecord(0, 3, 80, "alias.test.")), 5.0
    )
    state, _ = await resolve(dns, SrvName(SRV))
    assert state == Bound(frozenset({Address("10.0.0.1", 80, 5.0)}))


async def test_srv_target_without_addresses_is_skipped_and_dot_target_means_no_service(dns: FakeDns) -> None:
    dns.answers[(SRV, "SRV")] = Records(
        (SrvRecord(0, 1, 80, "web1.test."), SrvRecord(0, 1, 81, "gone.test.")), 5.0
    )
    state, _ = await resolve(dns, SrvName(SRV))
    assert state == Bound(frozenset({Address("10.0.0.1", 80, 1.0)}))
    dns.answers[(SRV, "SRV")] = Records((SrvRecord(0, 0, 0, "."),), 5.0)
    assert (await resolve(dns, SrvName(SRV)))[0] == NEG


async def test_a_name_merges_a_and_aaaa_and_negative_only_when_both_are_empty(dns: FakeDns) -> None:
    state, ttl = await resolve(dns, HostName("api.test", 80))
    assert state == Bound(frozenset({Address("10.0.1.1", 80), Address("fd00::1", 80)}))
    assert ttl == 20.0
    dns.answers[("none.test", "A")] = Records((), 3.0)
    assert await resolve(dns, HostName("none.test", 80)) == (NEG, 3.0)


async def test_one_family_failing_resolves_to_the_other_familys_answers_and_retries_soon(dns: FakeDns) -> None:
    # (This once failed the whole resolution; issue #17 asks for the answers that were got.)
    dns.fail("api.test", "AAAA", "SERVFAIL")
    assert await resolve(dns, HostName("api.test", 80)) == (Bound(frozenset({Address("10.0.1.1", 80)})), 0.0)
    dns.set_ips("api.test", v4=(), v6=("fd00::1",), ttl=20.0)
    dns.fail("api.test", "A", "REFUSED")
    assert await resolve(dns, HostName("api.test", 80)) == (Bound(frozenset({Address("fd00::1", 80)})), 0.0)


async def test_one_family_failing_and_the_other_empty_is_a_failure_not_a_negative(dns: FakeDns) -> None:
    dns.set_ips("api.test", v4=(), v6=())
    dns.fail("api.test", "AAAA", "timed out")
    with pytest.raises(DnsFailure, match="timed out"):
        await resolve(dns, HostName("api.test", 80))


async def test_both_families_failing_fails(dns: FakeDns) -> None:
    dns.fail("api.test", "A", "SERVFAIL")
    dns.fail("api.test", "AAAA", "SERVFAIL")
    with pytest.raises(DnsFailure, match="SERVFAIL"):
        await resolve(dns, HostName("api.test", 80))


async def test_a_partial_answer_is_served_and_refreshed_at_the_ttl_floor(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    dns.fail("api.test", "AAAA", "SERVFAIL")
    namer = await started(make_namer(min_ttl_secs=5, max_ttl_secs=300))
    obs = namer.addr(API_ID)
    assert await wait_until(obs, lambda a: isinstance(a, Bound)) == Bound(frozenset({Address("10.0.1.1", 80)}))
    await clock.wait_sleeps(1)
    assert clock.slept == [5.0]  # not the answer's 20 s TTL: the failed family is asked again soon
    dns.set_ips("api.test", v4=("10.0.1.1",), v6=("fd00::1",), ttl=20.0)
    clock.advance(5.0)
    both = Bound(frozenset({Address("10.0.1.1", 80), Address("fd00::1", 80)}))
    assert await wait_until(obs, lambda a: a == both) == both


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(1, 65535), st.sampled_from("abcd")),
        min_size=1,
        max_size=8,
    )
)
async def test_srv_property_addresses_come_only_from_the_lowest_priority_group(
    records: list[tuple[int, int, int, str]],
) -> None:
    fake = FakeDns()
    fake.answers[(SRV, "SRV")] = Records(
        tuple(SrvRecord(p, w, port, f"{t}.test.") for p, w, port, t in records), 9.0
    )
    for target in "abcd":
        fake.set_ips(f"{target}.test.", v4=(f"10.0.0.{ord(target)}",))
    state, _ = await resolve(fake, SrvName(SRV))
    lowest = min(p for p, *_ in records)
    group = [(w, port, t) for p, w, port, t in records if p == lowest]
    assert isinstance(state, Bound)
    assert {a.key for a in state.addresses} == {(f"10.0.0.{ord(t)}", port) for _, port, t in group}
    assert all(a.weight > 0 for a in state.addresses)
    if any(w > 0 for w, _, _ in group):  # weights are the SRV weights, summed per address
        total = sum(w for w, _, _ in group)
        assert sum(a.weight for a in state.addresses) == pytest.approx(
            total + 0.001 * sum(1 for w, _, _ in group if w == 0)
        )


# --- the namer ------------------------------------------------------------------------------------


async def test_lookup_is_pending_until_the_first_answer_then_a_leaf_with_the_residual(
    make_namer: NamerFactory, clock: FakeClock
) -> None:
    namer = await started(make_namer())
    path = Path.read(f"/srv/{SRV}/users/42")
    assert namer.lookup(path) is None
    await wait_until(namer.version, lambda v: v >= 1)
    assert namer.lookup(path) == Leaf(BoundName(id=SRV_ID, residual=Path.read("/users/42")))
    assert namer.addr(SRV_ID).get() == Bound(frozenset({Address("10.0.0.1", 8080, 10.0)}))
    a_path = Path.read("/a/api.test/80/x")
    assert namer.lookup(a_path) is None
    await wait_until(namer.version, lambda v: v >= 2)
    assert namer.lookup(a_path) == Leaf(BoundName(id=API_ID, residual=Path.read("/x")))


@pytest.mark.parametrize(
    "path", ["/srv", "/a/api.test", "/a/api.test/http", "/a/api.test/70000", "/mx/x", "/"]
)
async def test_malformed_names_are_negative(make_namer: NamerFactory, path: str) -> None:
    namer = await started(make_namer())
    assert namer.lookup(Path.read(path)) == NEG_TREE
    assert namer.statistics().names == 0


async def test_nxdomain_is_neg(make_namer: NamerFactory, dns: FakeDns) -> None:
    namer = await started(make_namer())
    assert namer.lookup(Path.read("/a/nope.test/80")) is None
    await wait_until(namer.version, lambda v: v >= 1)
    assert namer.lookup(Path.read("/a/nope.test/80")) == NEG_TREE
    assert namer.statistics().lookups_negative == 1


async def test_nothing_is_resolved_before_start(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = make_namer()
    obs = namer.addr(API_ID)
    assert obs.get() == PENDING and dns.queries == []
    await namer.start()
    assert await wait_until(obs, lambda a: isinstance(a, Bound))


async def test_refresh_waits_the_ttl_clamped_to_min_and_max(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer(min_ttl_secs=5, max_ttl_secs=60))
    dns.set_ips("api.test", v4=("10.0.1.1",), ttl=1.0)
    namer.addr(API_ID)
    await clock.wait_sleeps(1)
    dns.set_ips("api.test", v4=("10.0.1.1",), ttl=3600.0)
    clock.advance(5)
    await clock.wait_sleeps(2)
    dns.answers.pop(("api.test", "A"))  # negative answer without an SOA: refreshed at the min TTL
    dns.answers.pop(("api.test", "AAAA"))
    clock.advance(60)
    await clock.wait_sleeps(3)
    assert clock.slept == [5.0, 60.0, 5.0]


async def test_address_changes_are_published_and_same_answers_are_not(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer())
    obs = namer.addr(API_ID)
    await clock.wait_sleeps(1)
    seen: list[Addr] = []
    obs.subscribe(seen.append, replay=False)
    clock.advance(20)
    await clock.wait_sleeps(2)
    assert seen == []  # same answer: no update, subscribers are not woken
    dns.set_ips("api.test", v4=("10.0.1.2", "10.0.1.3"))
    clock.advance(20)
    await clock.wait_sleeps(3)
    assert seen == [Bound(frozenset({Address("10.0.1.2", 80), Address("10.0.1.3", 80)}))]
    assert namer.version.get() == 1  # still a Leaf: bindings need not be redone


async def test_failure_keeps_the_last_answer_and_retries_with_growing_jittered_backoff(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock, registry: Registry
) -> None:
    namer = await started(make_namer(min_ttl_secs=2, max_ttl_secs=300))
    obs = namer.addr(API_ID)
    bound = await wait_until(obs, lambda a: isinstance(a, Bound))
    await clock.wait_sleeps(1)
    dns.fail("api.test", "A", "SERVFAIL")
    dns.fail("api.test", "AAAA", "SERVFAIL")  # both families: one alone still resolves
    for n in range(2, 9):
        clock.advance(clock.slept[-1])
        await clock.wait_sleeps(n)
    assert obs.get() == bound
    backoffs = clock.slept[1:]
    # The `exponential` kind of balancers/backoff.py (equal jitter) from minTtlSecs up to 30 s:
    # 2, then [2, 4), [4, 8), [8, 16), [16, 30) or 30 once a draw reaches it, then 30 for good.
    assert backoffs[0] == 2.0
    capped = False
    for k, delay in enumerate(backoffs[1:], start=1):
        if capped or delay == 30.0:
            capped = True
            assert delay == 30.0
        else:
            assert 2.0 * 2 ** (k - 1) <= delay < 2.0 * 2**k
    assert backoffs[-2:] == [30.0, 30.0]
    assert namer.statistics().lookups_failed == 7
    assert registry.get_sample_value("meshd_dns_lookups_total", {"result": "error"}) == 7.0
    dns.set_ips("api.test", v4=("10.0.1.9",))
    clock.advance(30)
    assert await wait_until(obs, lambda a: a != bound) == Bound(frozenset({Address("10.0.1.9", 80)}))


async def test_failure_with_nothing_known_is_failed_then_recovers(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    dns.fail("api.test", "A", "timed out")
    dns.fail("api.test", "AAAA", "timed out")  # both families: one alone still resolves
    namer = await started(make_namer())
    assert namer.lookup(Path.read("/a/api.test/80")) is None
    obs = namer.addr(API_ID)
    failed = await wait_until(obs, lambda a: isinstance(a, Failed))
    assert isinstance(failed, Failed) and "timed out" in failed.reason
    assert namer.version.get() == 1
    assert namer.lookup(Path.read("/a/api.test/80")) == Leaf(BoundName(id=API_ID, residual=Path()))
    dns.set_ips("api.test", v4=("10.0.1.1",))
    clock.advance(30)
    assert await wait_until(obs, lambda a: isinstance(a, Bound))
    assert namer.version.get() == 1  # Failed and Bound both bind to a Leaf


async def test_a_name_that_disappears_becomes_neg_and_bumps_version_and_can_come_back(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer())
    obs = namer.addr(SRV_ID)
    await wait_until(obs, lambda a: isinstance(a, Bound))
    assert namer.version.get() == 1
    dns.answers.pop((SRV, "SRV"))
    clock.advance(30)
    assert await wait_until(obs, lambda a: a == NEG)
    assert namer.version.get() == 2
    assert namer.lookup(Path.read(f"/srv/{SRV}")) == NEG_TREE
    dns.answers[(SRV, "SRV")] = Records((SrvRecord(0, 1, 1, "web1.test."),), 30.0)
    clock.advance(5)
    assert await wait_until(obs, lambda a: isinstance(a, Bound))
    assert namer.version.get() == 3


async def test_one_refresh_loop_per_name_shared_by_all_holders(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer())
    first = namer.addr(API_ID)
    second = namer.addr(API_ID)
    namer.lookup(Path.read("/a/api.test/80/residual"))
    assert first is second
    await clock.wait_sleeps(1)
    assert dns.queries == [("api.test", "A"), ("api.test", "AAAA")]
    assert namer.statistics().names == 1


async def test_released_names_stop_after_the_idle_ttl_and_bump_version(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer(idle_ttl_secs=100))
    namer.addr(API_ID)
    namer.addr(API_ID)
    await clock.wait_sleeps(1)
    namer.release(API_ID)
    clock.advance(200)  # still held once: refreshes go on
    await clock.wait_sleeps(2)
    namer.release(API_ID)
    clock.advance(20)
    await clock.wait_sleeps(3)
    assert clock.slept[-1] == 20.0  # the next wake-up is the refresh (TTL 20) ...
    clock.advance(20)
    await clock.wait_sleeps(4)
    assert namer.statistics().names == 1
    clock.advance(60)  # ... then the idle deadline, 100 s after the release
    await wait_until(namer.version, lambda v: v >= 2)
    assert namer.statistics().names == 0
    queries = len(dns.queries)
    clock.advance(1000)
    assert namer.lookup(Path.read("/a/api.test/80")) is None  # forgotten: asked again from scratch
    await clock.wait_sleeps(5)
    assert len(dns.queries) == queries + 2


async def test_a_name_only_looked_up_expires_unless_looked_up_again(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer(idle_ttl_secs=50, min_ttl_secs=30))
    namer.lookup(Path.read("/a/nope.test/80"))
    await clock.wait_sleeps(1)
    clock.advance(30)
    await clock.wait_sleeps(2)
    namer.lookup(Path.read("/a/nope.test/80"))  # used again at t+30: idle deadline is now t+80
    clock.advance(30)
    await clock.wait_sleeps(3)
    assert namer.statistics().names == 1
    clock.advance(20)
    await wait_until(namer.version, lambda v: v >= 2)
    assert namer.statistics().names == 0


async def test_close_cancels_every_refresh_loop(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer())
    namer.addr(API_ID)
    namer.addr(SRV_ID)
    await clock.wait_sleeps(2)
    await namer.close()
    queries = len(dns.queries)
    clock.advance(1000)
    await asyncio.sleep(0)
    assert len(dns.queries) == queries
    assert namer.lookup(Path.read("/a/other.test/80")) is None  # no new loops after close
    assert len(dns.queries) == queries


async def test_addr_of_a_foreign_id_is_failed_not_an_exception(make_namer: NamerFactory) -> None:
    namer = await started(make_namer())
    assert isinstance(namer.addr(Path.read("/#/fs/web")).get(), Failed)
    assert isinstance(namer.addr(Path.read("/#/dns/a/api.test/80/extra")).get(), Failed)
    namer.release(Path.read("/#/fs/web"))  # unknown ids are ignored
    assert namer.statistics().names == 0
    assert "names=0" in repr(namer)


async def test_a_crashed_refresh_loop_is_logged_not_silent(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeDns):
        async def query_srv(self, name: str) -> Records[SrvRecord]:
            raise RuntimeError("bug in the client")

    namer = DnsNamer(
        DnsNamerConfig(),
        Broken(),
        clock=clock,
        rng=random.Random(1),
        registry=Registry(),
    )
    await namer.start()
    obs = namer.addr(SRV_ID)
    with caplog.at_level("ERROR"):
        async with asyncio.timeout(2):
            while not caplog.records:
                await asyncio.sleep(0)
    assert "crashed" in caplog.records[0].getMessage()
    assert obs.get() == PENDING
    await namer.close()


# --- freshness (meshd_discovery_last_update_age_seconds, meshd_discovery_stale) --------------------


async def test_freshness_is_the_last_resolution_and_stale_while_failing_with_an_answer_kept(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    namer = await started(make_namer(min_ttl_secs=20, max_ttl_secs=20))
    obs = namer.addr(API_ID)
    await wait_until(obs, lambda a: isinstance(a, Bound))
    await clock.wait_sleeps(1)
    (entry,) = namer.freshness()
    assert (entry.name, entry.confirmed_at, entry.stale) == (API_ID.show(), 1000.0, False)
    dns.fail("api.test", "A", "SERVFAIL")
    dns.fail("api.test", "AAAA", "SERVFAIL")  # both families: one alone still resolves
    clock.advance(20)  # the refresh at 1020 fails: the answer of 1000 keeps serving
    await clock.wait_sleeps(2)
    (entry,) = namer.freshness()
    assert (entry.confirmed_at, entry.stale) == (1000.0, True)
    dns.set_ips("api.test", v4=("10.0.1.1",))
    clock.advance(clock.slept[-1])
    await clock.wait_sleeps(3)
    (entry,) = namer.freshness()
    assert (entry.confirmed_at, entry.stale) == (clock.now(), False)


async def test_a_name_that_never_resolved_has_no_age_and_is_not_stale(
    make_namer: NamerFactory, dns: FakeDns, clock: FakeClock
) -> None:
    dns.fail("api.test", "A", "timed out")
    dns.fail("api.test", "AAAA", "timed out")  # both families: one alone still resolves
    namer = await started(make_namer())
    obs = namer.addr(API_ID)
    await wait_until(obs, lambda a: isinstance(a, Failed))
    (entry,) = namer.freshness()
    assert (entry.confirmed_at, entry.stale) == (None, False)
