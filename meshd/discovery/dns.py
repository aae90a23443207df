"""DNS namer: binds `/#/dns/srv/<name>` and `/#/dns/a/<host>/<port>` to addresses, refreshed by TTL.

How this works. Every name that `lookup()` or `addr()` is asked about gets one entry with one
refresh loop (a task the namer owns). The loop resolves the name, publishes the result on the
entry's `Observable[Addr]`, and sleeps for the answer's TTL clamped to
[`min_ttl_secs`, `max_ttl_secs`] before resolving again. Results map to states as follows:

- records found        -> `Bound(addresses)`
- NXDOMAIN / no record -> `Neg`
- SERVFAIL, timeout    -> the last `Bound`/`Neg` is kept and the loop retries with equal-jittered
                          exponential backoff (`balancers/backoff.py`, kind `exponential`) from
                          `min_ttl_secs` up to `min(max_ttl_secs, 30 s)`; only a name that never
                          had an answer becomes `Failed(reason)`.

`lookup()` answers from the entry: `None` while `Pending`, `NEG` for `Neg`, otherwise a `Leaf`.
Whenever that answer changes (first answer, name appears, name disappears) the namer bumps
`version`, so binding caches ask again. Entries count their `addr()` holders; once none is left
and nobody looked the name up for `idle_ttl_secs`, the loop stops and the entry is forgotten
(that too bumps `version`, because `lookup()` would now answer `None`).

SRV (RFC 2782): only the lowest-priority group is used; targets are resolved to A and AAAA;
each address gets the port and the weight of its SRV record.

dnspython is imported only when a namer is built, so configurations without a dns namer do not
pay for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

from balancers.backoff import Backoff, EqualJitteredBackoff, secs_to_ns
from meshd.clock import Clock
from meshd.discovery.addr import NEG, PENDING, Addr, Address, Bound, Failed, Neg, Pending
from meshd.discovery.base import Freshness
from meshd.discovery.dns_config import DnsNamerConfig
from meshd.discovery.dns_config import parse_nameserver as parse_nameserver  # re-exported
from meshd.exposition import Counter, Registry
from meshd.observable import Observable
from routing.namer import BoundName
from routing.nametree import NEG as NEG_TREE
from routing.nametree import Leaf, NameTree
from routing.path import Path

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.message

# --- metrics: every metric this module exports, registered on `runtime.registry` ---------------
LOOKUPS_TOTAL: Final = "meshd_dns_lookups_total"
LOOKUPS_TOTAL_HELP: Final = "DNS namer resolutions of one name, by result (ok, negative, error)"
LookupResult = Literal["ok", "negative", "error"]
LOOKUP_RESULTS: Final[tuple[LookupResult, ...]] = ("ok", "negative", "error")
# ------------------------------------------------------------------------------------------------

_ZERO_WEIGHT: Final = 0.001  # RFC 2782: weight 0 "should have a very small chance of being selected"
_MAX_BACKOFF_SECS: Final = 30.0  # after an outage, the last good answer must not stay stale for long
_log = logging.getLogger(__name__)

T = TypeVar("T")


# --- what the namer needs from DNS: a small client protocol, faked in unit tests ---------------


class DnsFailure(Exception):
    """The server could not answer (SERVFAIL, REFUSED, timeout, socket error): not a negative answer."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Records(Generic[T]):
    """One query's answer. No `values` is a negative answer (NXDOMAIN or no record of the type);
    `ttl_secs` is None when the server did not say how long that holds (no SOA)."""

    values: tuple[T, ...]
    ttl_secs: float | None


class DnsClient(Protocol):
    async def query_srv(self, name: str) -> Records[SrvRecord]: ...

    async def query_ips(self, host: str, rdtype: Literal["A", "AAAA"]) -> Records[str]: ...


# --- the namer ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SrvName:
    name: str


@dataclass(frozen=True, slots=True)
class HostName:
    host: str
    port: int


DnsName = SrvName | HostName


@dataclass(frozen=True, slots=True)
class DnsNamerStatistics:
    names: int
    lookups_ok: int
    lookups_negative: int
    lookups_failed: int


class DnsNamer:
    """The `dns` namer (see the module docstring). Implements `meshd.discovery.base.Namer`."""

    def __init__(
        self,
        config: DnsNamerConfig,
        client: DnsClient,
        *,
        clock: Clock,
        rng: random.Random,
        registry: Registry,
        log: logging.Logger = _log,
    ) -> None:
        """`clock` times the entries' idleness and sleeps their TTLs and backoffs (meshd.clock)."""
        self._config = config
        self._client = client
        self._clock = clock
        cap = min(config.max_ttl_secs, _MAX_BACKOFF_SECS)
        self._backoff: Backoff = EqualJitteredBackoff(
            secs_to_ns(min(config.min_ttl_secs, cap)), secs_to_ns(cap), rng
        )
        self._log = log
        self._sleep = clock.sleep
        self._prefix = Path.read(config.prefix)
        self._version = Observable(0)
        self._names: dict[Path, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._lookups = _lookup_counter(registry)
        self._counts: dict[LookupResult, int] = dict.fromkeys(LOOKUP_RESULTS, 0)

    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def version(self) -> Observable[int]:
        return self._version

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        parsed = _parse(path)
        if parsed is None:
            return NEG_TREE
        name, used = parsed
        id = self._prefix.concat(path.take(used))
        entry = self._entry(id, name)
        state = entry.addr.get()
        if isinstance(state, Pending):
            return None
        if isinstance(state, Neg):
            return NEG_TREE
        return Leaf(BoundName(id=id, residual=path.drop(used)))

    def addr(self, id: Path) -> Observable[Addr]:
        parsed = _parse(id.drop(len(self._prefix))) if id.starts_with(self._prefix) else None
        if parsed is None or parsed[1] != len(id) - len(self._prefix):
            return Observable[Addr](Failed(f"not a dns namer id: {id.show()}"))
        entry = self._entry(id, parsed[0])
        entry.holders += 1
        return entry.addr

    def release(self, id: Path) -> None:
        entry = self._names.get(id)
        if entry is not None and entry.holders > 0:
            entry.holders -= 1
            entry.last_used = self._clock.now()

    async def start(self) -> None:
        self._started = True
        for entry in self._names.values():
            self._ensure_refreshing(entry)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def statistics(self) -> DnsNamerStatistics:
        return DnsNamerStatistics(
            names=len(self._names),
            lookups_ok=self._counts["ok"],
            lookups_negative=self._counts["negative"],
            lookups_failed=self._counts["error"],
        )

    def freshness(self) -> list[Freshness]:
        """Each name as of its last resolution; stale while resolving fails and its last answer
        keeps serving."""
        return [
            Freshness(entry.id.show(), entry.resolved_at, entry.failing and entry.resolved_at is not None)
            for entry in sorted(self._names.values(), key=lambda e: e.id.show())
        ]

    def __repr__(self) -> str:
        return f"DnsNamer(prefix={self._prefix.show()}, names={len(self._names)})"

    # internals

    def _entry(self, id: Path, name: DnsName) -> _Entry:
        entry = self._names.get(id)
        if entry is None:
            entry = self._names[id] = _Entry(id, name, self._clock.now())
        else:
            entry.last_used = self._clock.now()
        self._ensure_refreshing(entry)
        return entry

    def _ensure_refreshing(self, entry: _Entry) -> None:
        if entry.task is None and self._started and not self._closed:
            entry.task = asyncio.get_running_loop().create_task(self._refresh_loop(entry))
            self._tasks.add(entry.task)
            entry.task.add_done_callback(self._on_loop_done)

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        """Loops end by idling out or by `close()`; anything else is a bug that must be seen."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("dns refresh loop crashed", exc_info=task.exception())

    async def _refresh_loop(self, entry: _Entry) -> None:
        """Resolve, publish, sleep; until the entry has been idle for `idle_ttl_secs`."""
        failures = 0
        backoff: Iterator[float] | None = None  # the delays of the current failure streak
        while True:
            try:
                state, ttl = await resolve(self._client, entry.name)
            except DnsFailure as exc:
                failures += 1
                entry.failing = True
                self._count("error")
                self._publish_failure(entry, str(exc), failures)
                if backoff is None:
                    backoff = self._backoff.delays()
                delay = next(backoff)
            else:
                failures = 0
                backoff = None
                entry.resolved_at = self._clock.now()
                entry.failing = False
                self._count("ok" if isinstance(state, Bound) else "negative")
                self._publish(entry, state)
                delay = self._clamp(ttl)
            if entry.holders == 0:
                delay = min(delay, self._idle_left(entry))
            await self._sleep(delay)
            if entry.holders == 0 and self._idle_left(entry) <= 0:
                del self._names[entry.id]
                self._log.debug("dns %s: idle, stopped refreshing", entry.id.show())
                self._bump_version()
                return

    def _idle_left(self, entry: _Entry) -> float:
        return entry.last_used + self._config.idle_ttl_secs - self._clock.now()

    def _publish(self, entry: _Entry, state: Bound | Neg) -> None:
        previous = entry.addr.get()
        if state == previous:
            return
        self._log.info("dns %s: %s", entry.id.show(), _describe(state))
        entry.addr.set(state)
        if _answer_kind(previous) != _answer_kind(state):
            self._bump_version()

    def _publish_failure(self, entry: _Entry, reason: str, failures: int) -> None:
        previous = entry.addr.get()
        if isinstance(previous, Bound | Neg):
            if failures == 1:
                self._log.warning("dns %s: %s; keeping the last answer", entry.id.show(), reason)
            return
        if previous != Failed(reason):
            entry.addr.set(Failed(reason))
        if isinstance(previous, Pending):
            self._log.warning("dns %s: %s", entry.id.show(), reason)
            self._bump_version()

    def _bump_version(self) -> None:
        self._version.set(self._version.get() + 1)

    def _count(self, result: LookupResult) -> None:
        self._counts[result] += 1
        self._lookups.labels(result=result).inc()

    def _clamp(self, ttl: float | None) -> float:
        if ttl is None:
            return self._config.min_ttl_secs
        return min(max(ttl, self._config.min_ttl_secs), self._config.max_ttl_secs)


class _Entry:
    """One name being resolved: its published state, who holds it, and its refresh task."""

    __slots__ = ("id", "name", "addr", "holders", "last_used", "task", "resolved_at", "failing")

    def __init__(self, id: Path, name: DnsName, now: float) -> None:
        self.id = id
        self.name = name
        self.addr: Observable[Addr] = Observable(PENDING)
        self.holders = 0
        self.last_used = now
        self.task: asyncio.Task[None] | None = None
        #: when the name last resolved (an answer or a negative one), and whether it fails since
        self.resolved_at: float | None = None
        self.failing = False


# --- resolution: DNS answers -> Addr, pure apart from the client --------------------------------


async def resolve(client: DnsClient, name: DnsName) -> tuple[Bound | Neg, float | None]:
    """The state for `name` and how long it holds (None: unknown). Raises DnsFailure."""
    if isinstance(name, HostName):
        return await _resolve_host(client, name.host, name.port, 1.0)
    srv = await client.query_srv(name.name)
    usable = [r for r in srv.values if r.target not in (".", "")]
    if not usable:
        return NEG, srv.ttl_secs
    lowest = min(r.priority for r in usable)
    group = [r for r in usable if r.priority == lowest]
    all_zero = all(r.weight == 0 for r in group)
    results = await _gather(
        [
            _resolve_host(client, r.target, r.port, 1.0 if all_zero else float(r.weight) or _ZERO_WEIGHT)
            for r in group
        ]
    )
    weights: dict[tuple[str, int], float] = {}
    ttls = [srv.ttl_secs]
    for state, ttl in results:
        ttls.append(ttl)
        if isinstance(state, Bound):
            for address in state.addresses:
                weights[address.key] = weights.get(address.key, 0.0) + address.weight
    addresses = frozenset(Address(host, port, weight) for (host, port), weight in weights.items())
    return Bound(addresses), _min_ttl(ttls)


async def _resolve_host(
    client: DnsClient, host: str, port: int, weight: float
) -> tuple[Bound | Neg, float | None]:
    v4, v6 = await asyncio.gather(
        _or_failure(client.query_ips(host, "A")), _or_failure(client.query_ips(host, "AAAA"))
    )
    if isinstance(v4, DnsFailure) or isinstance(v6, DnsFailure):
        # One family failed (REFUSED, SERVFAIL, a timeout). If the other answered with addresses,
        # resolve to those, and ask again at the TTL floor (`ttl` 0 is clamped up to
        # `minTtlSecs`) so the failed family is soon retried; if it answered nothing, nothing can
        # be concluded (the name may have only addresses of the failed family): the failure stands.
        answered = v6 if isinstance(v4, DnsFailure) else v4
        if isinstance(answered, DnsFailure) or not answered.values:
            raise v4 if isinstance(v4, DnsFailure) else v6  # type: ignore[misc]
        return Bound(frozenset(Address(ip, port, weight) for ip in answered.values)), 0.0
    found = [r for r in (v4, v6) if r.values]
    if not found:
        return NEG, _min_ttl([v4.ttl_secs, v6.ttl_secs])
    addresses = frozenset(Address(ip, port, weight) for r in found for ip in r.values)
    return Bound(addresses), _min_ttl([r.ttl_secs for r in found])


async def _or_failure(query: Coroutine[Any, Any, Records[str]]) -> Records[str] | DnsFailure:
    """The query's records, or the DnsFailure it raised (so one family's failure does not cancel
    the other's query)."""
    try:
        return await query
    except DnsFailure as exc:
        return exc


async def _gather(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; the first DnsFailure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except* DnsFailure as failures:
        raise failures.exceptions[0] from None
    return [t.result() for t in tasks]


def _min_ttl(ttls: list[float | None]) -> float | None:
    known = [t for t in ttls if t is not None]
    return min(known) if known else None


def _answer_kind(state: Addr) -> str:
    """What `lookup()` answers for a state: changes of this are what `version` announces."""
    if isinstance(state, Pending):
        return "pending"
    return "neg" if isinstance(state, Neg) else "leaf"


def _describe(state: Bound | Neg) -> str:
    if isinstance(state, Neg):
        return "no such name"
    return ", ".join(sorted(a.show() for a in state.addresses)) or "no addresses"


def _parse(path: Path) -> tuple[DnsName, int] | None:
    """`srv/<name>` or `a/<host>/<port>` at the start of `path`, and how many labels it used."""
    if len(path) >= 2 and path[0] == "srv" and _is_dns_name(path[1]):
        return SrvName(path[1]), 2
    if len(path) >= 3 and path[0] == "a" and _is_dns_name(path[1]) and path[2].isdigit():
        port = int(path[2])
        if 0 < port < 65536:
            return HostName(path[1], port), 3
    return None


def _is_dns_name(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    return len(text) <= 253 and all(0 < len(label) <= 63 for label in labels)


_COUNTERS: weakref.WeakKeyDictionary[Registry, Counter] = weakref.WeakKeyDictionary()


def _lookup_counter(registry: Registry) -> Counter:
    """One counter per registry, shared by every dns namer registered on it."""
    counter = _COUNTERS.get(registry)
    if counter is None:
        counter = Counter(LOOKUPS_TOTAL, LOOKUPS_TOTAL_HELP, ["result"], registry=registry)
        for result in LOOKUP_RESULTS:
            counter.labels(result=result)
        _COUNTERS[registry] = counter
    return counter


# --- the real client: dnspython's asyncio resolver ----------------------------------------------


class DnspythonClient:
    """`DnsClient` over `dns.asyncresolver`, with its cache off (the namer does its own TTL work)."""

    def __init__(self, nameservers: tuple[tuple[str, int], ...], *, timeout_secs: float) -> None:
        import dns.asyncresolver
        import dns.nameserver
        import dns.resolver

        self._setup_error: str | None = None
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        else:
            try:
                self._resolver.read_resolv_conf("/etc/resolv.conf")
            except dns.resolver.NoResolverConfiguration as exc:
                self._setup_error = f"no system resolver: {exc}"
        self._resolver.timeout = timeout_secs
        self._resolver.lifetime = timeout_secs
        self._resolver.cache = None

    async def query_srv(self, name: str) -> Records[SrvRecord]:
        import dns.rdtypes.IN.SRV

        values, ttl = await self._query(name, "SRV")
        records = [v for v in values if isinstance(v, dns.rdtypes.IN.SRV.SRV)]
        srv = tuple(SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in records)
        return Records(srv, ttl)

    async def query_ips(self, host: str, rdtype: Literal["A", "AAAA"]) -> Records[str]:
        values, ttl = await self._query(host, rdtype)
        return Records(tuple(v.to_text() for v in values), ttl)

    async def _query(self, name: str, rdtype: str) -> tuple[list[Any], float | None]:
        import dns.exception
        import dns.resolver

        if self._setup_error is not None:
            raise DnsFailure(self._setup_error)
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            # dnspython leaves NXDOMAIN.responses() unannotated; it returns {qname: Message}.
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
            return [], _negative_ttl(responses[-1]) if responses else None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsFailure(f"{rdtype} {name}: {exc}") from exc
        if answer.rrset is None:
            return [], _negative_ttl(answer.response)
        # The answer section holds the CNAME chain too; the shortest TTL on it bounds the answer.
        ttl = min(rrset.ttl for rrset in answer.response.answer)
        return list(answer.rrset), float(ttl)


def _negative_ttl(response: dns.message.Message) -> float | None:
    """RFC 2308 §5: a negative answer holds for min(SOA TTL, SOA MINIMUM), if the SOA is there."""
    import dns.rdatatype

    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, *(soa.minimum for soa in rrset)))
    return None
