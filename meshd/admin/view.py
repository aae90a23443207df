"""What the admin server and the metrics read of a running meshd: a read-only view, as protocols.

The admin package imports this module, never the daemon, router, client, listener or routes
watcher that implement it (an import-linter contract in pyproject.toml checks; see
docs/architecture.md, "Layers"). `meshd.daemon.Daemon` satisfies `MeshdView` as it is, and
mypy checks that where the daemon starts the admin server; tests pass small stand-ins.

Every member is a read-only property or a method that returns a reading, and collections are
`Mapping`/`Sequence`, so the admin code cannot change what it shows. The counters it renders
(`RequestStats`, `RetryCounters`, `TimeoutCounters`, `PoolStatistics`, `BalancerStatistics`)
are plain data and are named by their own types.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from balancers.base import BalancerStatistics
from meshd.config.model import MeshdConfig
from meshd.discovery.addr import Addr
from meshd.discovery.base import Namer
from meshd.pipeline.retries import RetryCounters
from meshd.pipeline.stats import AttemptStats, RecentRequests, RequestStats
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.pool.pool import PoolStatistics
from meshd.runtime import Runtime
from routing.dtab import Dtab
from routing.match import MatchRules
from routing.path import Path
from routing.rules import Routes

T_co = TypeVar("T_co", covariant=True)


class Current(Protocol[T_co]):
    """A value that changes over time, read as it is now (an `Observable` without `set`)."""

    def get(self) -> T_co: ...


class EndpointView(Protocol):
    @property
    def label(self) -> str: ...


class NodeView(Protocol):
    """One endpoint inside a client's balancer."""

    @property
    def member(self) -> EndpointView: ...

    @property
    def pending(self) -> int: ...

    @property
    def ewma_seconds(self) -> float: ...

    @property
    def state(self) -> str: ...


class BalancerView(Protocol):
    def nodes(self) -> Sequence[NodeView]: ...

    def statistics(self) -> BalancerStatistics: ...


class PendingView(Protocol):
    """A client's attempts waiting for a connection (meshd/pool/pool.py `Pending`)."""

    @property
    def overflows(self) -> int: ...


class ClientView(Protocol):
    """One client (bound name): its balancer's nodes and statistics, its pools' statistics."""

    @property
    def label(self) -> str: ...

    @property
    def forwarded(self) -> int: ...

    @property
    def balancer(self) -> BalancerView: ...

    @property
    def inflight(self) -> int: ...

    @property
    def overflows_requests(self) -> int: ...

    @property
    def overflows_retries(self) -> int: ...

    @property
    def pending(self) -> PendingView: ...

    def pool_statistics(self) -> PoolStatistics: ...

    @property
    def retries(self) -> int: ...

    def attempt_totals(self) -> AttemptStats: ...

    def endpoint_stats(self) -> list[tuple[str, AttemptStats]]: ...

    def to_json(self) -> dict[str, object]: ...


class BudgetView(Protocol):
    @property
    def balance(self) -> float: ...


class ServiceStateView(Protocol):
    """One named service's retry budget and counters."""

    @property
    def budget(self) -> BudgetView: ...

    @property
    def retries(self) -> RetryCounters: ...

    @property
    def timeouts(self) -> TimeoutCounters: ...


class RouterStatsView(Protocol):
    @property
    def services(self) -> Mapping[str, RequestStats]: ...

    @property
    def recent(self) -> RecentRequests: ...


class MirroringView(Protocol):
    @property
    def sent(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def skipped(self) -> Mapping[tuple[str, str], int]: ...


class RouterView(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def own_dtab(self) -> Dtab: ...

    @property
    def match_rules(self) -> MatchRules:
        """The routing file's rules with `match:` and fault rules, with the faults injected."""
        ...

    @property
    def mirroring(self) -> MirroringView:
        """The mirror rules' copies, counted (meshd/pipeline/mirror.py)."""
        ...

    @property
    def dtab(self) -> Current[Dtab]: ...

    @property
    def stats(self) -> RouterStatsView: ...

    @property
    def admission(self) -> AdmissionView: ...

    @property
    def named(self) -> Mapping[str, ServiceStateView]: ...

    @property
    def folded_created(self) -> int: ...

    @property
    def folded_retries(self) -> RetryCounters: ...

    @property
    def folded_timeouts(self) -> TimeoutCounters: ...

    @property
    def clients(self) -> Mapping[Path, ClientView]: ...

    @property
    def transformers(self) -> Sequence[object]: ...

    @property
    def evicted_forwarded(self) -> int:
        """Attempts forwarded by clients since dropped as idle (keeps the forwarded count monotonic)."""
        ...

    def addr_of(self, id: Path) -> Current[Addr]: ...


class AdmissionView(Protocol):
    """A router's admission control (meshd/admission.py): gauges and counters."""

    @property
    def inflight(self) -> int: ...

    @property
    def pending(self) -> int: ...

    @property
    def max_concurrent(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def rejected_full(self) -> int: ...

    @property
    def rejected_timeout(self) -> int: ...


class ListenerView(Protocol):
    @property
    def accepted(self) -> int: ...

    @property
    def connections(self) -> Collection[object]: ...


class RoutesWatcherView(Protocol):
    """A router's routing-file watcher (a file, or a ConfigMap): the routes in force, their version, reload counts."""

    @property
    def source(self) -> str:
        """The file's path, or `configmap <namespace>/<name> key <key>`."""
        ...

    @property
    def version(self) -> str | None: ...

    @property
    def digest(self) -> str | None: ...

    @property
    def loaded_at(self) -> float | None: ...

    @property
    def current(self) -> Routes | None: ...

    @property
    def successes(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...


class MetricsView(Protocol):
    """What `/metrics` renders from: the routers, their routes watchers and listeners."""

    @property
    def routers(self) -> Sequence[RouterView]: ...

    @property
    def routes_watchers(self) -> Mapping[str, RoutesWatcherView]: ...

    def listeners_of(self, router: str) -> Sequence[ListenerView]: ...

    @property
    def namers(self) -> Mapping[Path, Namer]: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def config_reloads(self) -> Mapping[str, int]: ...

    @property
    def config_loaded_at(self) -> float: ...


class ReloadOutcomeView(Protocol):
    """What a whole-config reload did (meshd/daemon.py `ReloadOutcome`)."""

    @property
    def result(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def version(self) -> str: ...


class MeshdView(MetricsView, Protocol):
    """Everything the admin endpoints read: the metrics' view, readiness, config, namers."""

    @property
    def ready(self) -> bool: ...

    @property
    def config(self) -> MeshdConfig: ...

    def router(self, label: str) -> RouterView: ...

    @property
    def config_version(self) -> str: ...

    @property
    def config_last_error(self) -> str | None: ...

    async def reload_from_file(self) -> ReloadOutcomeView: ...
