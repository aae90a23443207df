"""ServiceWatch: what the k8s namer knows about one (namespace, service), kept current by two
informers (its EndpointSlices or Endpoints, and its Service), shared by every name that uses it.

How this works: `run()` first obtains the two collections from the namer (connecting and
detecting whether EndpointSlices are served, with backoff on failure), then runs both informers
side by side. Whenever either changes, `_publish()` recomputes, for every port label in use,
the address set (`resolve()` in k8s_model) and the lookup answer:

* until both first lists succeeded the answer is pending and the address is `Pending`, or
  `Failed(reason)` while the API cannot be reached: the only time Failed is published;
* afterwards it is `Bound(ready addresses)` or `NEG`, and stays at the last known value
  through API failures (the informers keep their state).

Observables are only `set()` when the value really changed, so balancers see every change once
and nothing else; `on_answers_changed` fires when some lookup answer changed (the namer then
bumps its version so binding caches ask again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from balancers.backoff import Backoff
from meshd.clock import Clock
from meshd.discovery.addr import PENDING, Addr, Bound, Failed, Neg
from meshd.discovery.k8s_informer import Collection, Informer, InformerHooks, KubeApiError
from meshd.discovery.k8s_model import EndpointGroup, ServiceSpec, explain_negative, parse_service, resolve
from meshd.observable import Observable

Answer = Literal["pending", "neg", "bound"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sources:
    """The collections a ServiceWatch lists and watches, and how to read endpoint objects."""

    endpoints: Collection
    parse_endpoints: Callable[[Mapping[str, object]], tuple[EndpointGroup, ...]]
    service: Collection
    kind: Literal["endpointslices", "endpoints"]


@dataclass(frozen=True, slots=True)
class PortStats:
    port: str
    answer: Answer
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WatchStats:
    """One watched service, for /admin and tests."""

    namespace: str
    service: str
    state: str
    source: str | None
    refcount: int
    endpoints_rv: str | None
    service_rv: str | None
    endpoint_objects: int
    service_exists: bool
    ports: tuple[PortStats, ...]
    consecutive_failures: int
    last_error: str | None


class ServiceWatch:
    def __init__(
        self,
        namespace: str,
        service: str,
        *,
        open_sources: Callable[[], Awaitable[Sources]],
        hooks: InformerHooks,
        backoff: Backoff,
        clock: Clock,
        log: logging.Logger,
        on_answers_changed: Callable[[], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.refcount = 0
        self.last_used = clock.now()
        self._open_sources = open_sources
        self._hooks = hooks
        self._backoff = backoff
        self._clock = clock
        self._log = log
        self._on_answers_changed = on_answers_changed
        self._sleep = sleep
        self._sources: Sources | None = None
        self._endpoints: Informer[tuple[EndpointGroup, ...]] | None = None
        self._service: Informer[ServiceSpec] | None = None
        self._addrs: dict[str, Observable[Addr]] = {}
        self._answers: dict[str, Answer] = {}
        self._setup_error: str | None = None
        self._setup_failures = 0

    # -- what the namer asks --------------------------------------------------------------------

    def answer(self, port: str) -> Answer:
        """The lookup answer for a port label now; the port is remembered so changes are noticed."""
        if port not in self._answers:
            self._answers[port] = _answer(self._addr_now(port))
        return self._answers[port]

    def addr(self, port: str) -> Observable[Addr]:
        obs = self._addrs.get(port)
        if obs is None:
            obs = Observable(self._addr_now(port))
            self._addrs[port] = obs
        return obs

    def touch(self) -> None:
        self.last_used = self._clock.now()

    @property
    def has_answers(self) -> bool:
        return bool(self._answers)

    def statistics(self) -> WatchStats:
        ep, svc = self._endpoints, self._service
        ports = tuple(
            PortStats(port, _answer(value), tuple(sorted(a.show() for a in value.addresses))
                      if isinstance(value, Bound) else ())
            for port, value in sorted((p, self._addr_now(p)) for p in self._answers.keys() | self._addrs.keys())
        )
        informers = [i for i in (ep, svc) if i is not None]
        errors = [i.last_error for i in informers if i.last_error] + ([self._setup_error] if self._setup_error else [])
        return WatchStats(
            namespace=self.namespace,
            service=self.service,
            state=self._state(),
            source=self._sources.kind if self._sources is not None else None,
            refcount=self.refcount,
            endpoints_rv=ep.resource_version if ep is not None else None,
            service_rv=svc.resource_version if svc is not None else None,
            endpoint_objects=len(ep.items) if ep is not None else 0,
            service_exists=bool(svc.items) if svc is not None else False,
            ports=ports,
            consecutive_failures=max([i.consecutive_failures for i in informers] + [self._setup_failures]),
            last_error=errors[0] if errors else None,
        )

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, then list and watch both collections until cancelled."""
        sources = await self._setup()
        self._sources = sources
        self._endpoints = self._informer(sources.endpoints, sources.parse_endpoints)
        self._service = self._informer(sources.service, parse_service)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._endpoints.run(), name=f"k8s endpoints {self.namespace}/{self.service}")
            tg.create_task(self._service.run(), name=f"k8s service {self.namespace}/{self.service}")

    async def _setup(self) -> Sources:
        delays = self._backoff.delays()  # each failure in a row waits the next delay
        while True:
            try:
                return await self._open_sources()
            except KubeApiError as exc:
                self._setup_failures += 1
                self._setup_error = f"{exc.code}: {exc}"
                self._hooks.api_error(exc.code)
                self._log.warning("k8s %s/%s: %s (failure %d in a row)", self.namespace, self.service,
                                  self._setup_error, self._setup_failures)
                self._publish()
                await self._sleep(next(delays))

    # -- internals ------------------------------------------------------------------------------

    def _informer(self, collection: Collection, parse: Callable[[Mapping[str, object]], T]) -> Informer[T]:
        return Informer(collection, parse=parse, on_change=self._publish, hooks=self._hooks,
                        backoff=self._backoff, clock=self._clock, log=self._log, sleep=self._sleep)

    def _synced(self) -> bool:
        return (self._endpoints is not None and self._endpoints.synced
                and self._service is not None and self._service.synced)

    def freshness(self, now: float) -> tuple[float | None, bool]:
        """(when the data served was last known current, whether it is last-known-good after a
        failure). A listed service whose watches are healthy is current now; while an API call
        fails, its data is as of the first failure. (None, False) until both lists succeed."""
        informers = [i for i in (self._endpoints, self._service) if i is not None]
        if len(informers) < 2 or not all(i.synced for i in informers):
            return None, False
        failing = [since for i in informers if (since := i.failing_since) is not None]
        if failing:
            return min(failing), True
        return now, False

    def _state(self) -> str:
        if self._endpoints is None or self._service is None:
            return "connecting" if self._setup_error is None else "backoff"
        states = {self._endpoints.state, self._service.state}
        for state in ("backoff", "listing", "starting"):
            if state in states:
                return state
        return "watching"

    def why(self, port: str) -> str | None:
        """Why this port label is not bound now (negative, failed or still pending), or None."""
        value = self._addr_now(port)
        if isinstance(value, Failed):
            return f"the Kubernetes API failed: {value.reason}"
        if isinstance(value, Neg):
            ep, svc = self._endpoints, self._service
            groups = [g for groups in ep.items.values() for g in groups] if ep is not None else []
            return explain_negative(port, svc.items.get(self.service) if svc is not None else None, groups)
        if isinstance(value, Bound):
            return None
        errors = [i.last_error for i in (self._endpoints, self._service) if i is not None and i.last_error]
        if self._setup_error:
            errors.append(self._setup_error)
        if errors:
            return f"waiting for the Kubernetes API, which failed: {errors[0]}"
        return "waiting for the first answer from the Kubernetes API"

    def _addr_now(self, port: str) -> Addr:
        ep, svc = self._endpoints, self._service
        if ep is None or svc is None or not self._synced():
            error = self._current_error()
            return Failed(error) if error is not None else PENDING
        groups = [g for groups in ep.items.values() for g in groups]
        return resolve(port, svc.items.get(self.service), groups)

    def _current_error(self) -> str | None:
        """The reason to publish Failed while nothing is known: a failure not yet retried."""
        if self._endpoints is None or self._service is None:
            return self._setup_error
        for informer in (self._endpoints, self._service):
            if informer.state == "backoff" and informer.last_error is not None:
                return informer.last_error
        return None

    def _publish(self) -> None:
        for port, obs in self._addrs.items():
            value = self._addr_now(port)
            if value != obs.get():
                obs.set(value)
        changed = False
        for port, previous in self._answers.items():
            now = _answer(self._addr_now(port))
            if now != previous:
                self._answers[port] = now
                changed = True
        if changed:
            self._on_answers_changed()

    def __repr__(self) -> str:
        return f"<ServiceWatch {self.namespace}/{self.service} {self._state()} refs={self.refcount}>"


def _answer(value: Addr) -> Answer:
    if isinstance(value, Neg):
        return "neg"
    if isinstance(value, Bound):
        return "bound"
    return "pending"
