"""Informer: keeps a local copy of one Kubernetes collection current by list-then-watch, the way
client-go's Reflector does, and never gives up.

How this works (states: starting -> listing -> watching, with backoff in between):

* List: fetch every matching object and the list's resourceVersion (RV); *replace* the local
  state with it (objects missing from the list were deleted while we were not watching).
* Watch from that RV. Each ADDED/MODIFIED/DELETED event updates the state and the RV; a
  BOOKMARK only advances the RV. RVs are opaque: compared for equality, never ordered.
* EOF (timeoutSeconds reached, API server restart) is normal: watch again from the last RV at
  once, unless the watch ended empty within a second (then back off, so that a proxy closing
  every stream cannot make us spin).
* 410 Expired (HTTP status or ERROR event): the RV is gone from the server's history, so drop
  it and list again; re-watching from the same RV could never succeed.
* Any other failure (unreachable, timeout, 403, 500, garbage): back off (the namer's
  `backoff`, equal-jittered exponential, `balancers/backoff.py`), then resume. Each failure in
  a row takes the next delay; a success restarts the sequence. The state is kept as it was:
  an API hiccup never empties an address set.
* A malformed object or line is logged and counted, then skipped.

The informer knows nothing of kubernetes_asyncio: it talks to a `Collection` (implemented in
`k8s_client.py`), which translates every library or transport error into `KubeApiError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar

from balancers.backoff import Backoff
from meshd.clock import Clock
from meshd.discovery.k8s_model import MalformedObject, object_name

T = TypeVar("T")

InformerState = Literal["starting", "listing", "watching", "backoff"]
MALFORMED: Final = "MALFORMED"
QUICK_EOF_SECS: Final = 1.0


class KubeApiError(Exception):
    """A failed API call. `code` is the metrics label: the HTTP status ("403"), or "unreachable",
    "timeout", "invalid_json", "config"."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def is_expired(self) -> bool:
        return self.status == 410


@dataclass(frozen=True, slots=True)
class ListResult:
    resource_version: str
    items: tuple[Mapping[str, object], ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event. `obj` is the raw object (None for a line that was not a valid event,
    whose `type` is then MALFORMED)."""

    type: str
    obj: Mapping[str, object] | None
    resource_version: str | None = None


class Collection(Protocol):
    """One watchable set of objects, e.g. the EndpointSlices of service shop/web."""

    @property
    def description(self) -> str: ...

    async def list(self) -> ListResult: ...

    def watch(self, resource_version: str) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]: ...


class InformerHooks(Protocol):
    """Where an informer reports what happened (metrics and per-watch statistics)."""

    def event(self, event_type: str) -> None: ...

    def restart(self, reason: str) -> None: ...

    def api_error(self, code: str) -> None: ...


class Informer(Generic[T]):
    """The list/watch loop for one collection; `items` maps object name -> parsed object."""

    def __init__(
        self,
        collection: Collection,
        *,
        parse: Callable[[Mapping[str, object]], T],
        on_change: Callable[[], None],
        hooks: InformerHooks,
        backoff: Backoff,
        clock: Clock,
        log: logging.Logger,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._collection = collection
        self._parse = parse
        self._on_change = on_change
        self._hooks = hooks
        self._backoff = backoff
        self._clock = clock
        self._log = log
        self._sleep = sleep
        self._items: dict[str, T] = {}
        self._rv: str | None = None
        self._synced = False
        self._state: InformerState = "starting"
        self._last_error: str | None = None
        self._failures = 0
        self._delays: Iterator[float] | None = None  # the current failure streak's backoff
        self._last_event_at: float | None = None
        #: when the current streak of API failures began (None: the last call succeeded)
        self._failing_since: float | None = None

    @property
    def items(self) -> Mapping[str, T]:
        return self._items

    @property
    def synced(self) -> bool:
        """True once a list has succeeded; stays True through later failures (state is kept)."""
        return self._synced

    @property
    def resource_version(self) -> str | None:
        return self._rv

    @property
    def state(self) -> InformerState:
        return self._state

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def last_event_at(self) -> float | None:
        """Clock time of the last list or watch event (None before the first)."""
        return self._last_event_at

    @property
    def description(self) -> str:
        return self._collection.description

    async def run(self) -> None:
        """List and watch until cancelled. Never returns and never raises anything else."""
        relisted_for_410 = False
        while True:
            try:
                if self._rv is None:
                    self._state = "listing"
                    await self._relist()
                    self._recovered()
                self._state = "watching"
                started = self._clock.now()
                progressed = await self._watch_once()
                self._hooks.restart("eof")
                if progressed:
                    relisted_for_410 = False
                    self._recovered()
                if progressed or self._clock.now() - started >= QUICK_EOF_SECS:
                    continue
                # An empty stream that ended at once: something in the path closes every watch.
                # Back off so that it cannot make us spin.
                if self._failures == 0:
                    self._failing_since = self._clock.now()
                self._failures += 1
            except KubeApiError as exc:
                watching = self._state == "watching"
                if exc.is_expired and watching:
                    self._hooks.restart("expired")
                    self._log.info("k8s %s: resourceVersion %s expired (%s); listing again",
                                   self.description, self._rv, exc)
                    self._rv = None
                    if not relisted_for_410:
                        relisted_for_410 = True
                        continue
                    # Expired again right after a fresh list: back off like any other failure.
                elif watching:
                    self._hooks.restart("error")
                self._fail(exc)
            except Exception as exc:
                # Collections translate every expected failure into KubeApiError; this is the
                # last resort that keeps resolution alive if something unexpected slips through.
                self._log.exception("k8s %s: unexpected error in watch loop", self.description)
                self._fail(KubeApiError("internal", f"{type(exc).__name__}: {exc}"))
            if self._delays is None:
                self._delays = self._backoff.delays()
            delay = next(self._delays)
            self._state = "backoff"
            self._on_change()
            await self._sleep(delay)

    # -- internals ----------------------------------------------------------------------------

    async def _relist(self) -> None:
        result = await self._collection.list()
        items: dict[str, T] = {}
        for raw in result.items:
            try:
                items[object_name(raw)] = self._parse(raw)
            except MalformedObject as exc:
                self._malformed(f"listed object: {exc}")
        self._items = items
        self._rv = result.resource_version
        self._synced = True
        self._last_event_at = self._clock.now()
        self._on_change()

    async def _watch_once(self) -> bool:
        """Consume one watch stream until EOF; True if it delivered any event."""
        assert self._rv is not None
        progressed = False
        async with self._collection.watch(self._rv) as events:
            async for event in events:
                progressed = True
                self._last_event_at = self._clock.now()
                self._failing_since = None  # an event (a bookmark too) proves the watch is live
                self._apply(event)
        return progressed

    def _apply(self, event: WatchEvent) -> None:
        """Apply one event and count it once: under its type, or as MALFORMED if it is skipped."""
        if event.type == "BOOKMARK":
            self._hooks.event(event.type)
            if event.resource_version is not None:
                self._rv = event.resource_version
            return
        if event.obj is None or event.type not in ("ADDED", "MODIFIED", "DELETED"):
            self._malformed("line that is not a watch event" if event.type == MALFORMED
                            else f"event of type {event.type!r}")
            return
        try:
            name = object_name(event.obj)
            if event.type == "DELETED":
                self._items.pop(name, None)
            else:
                self._items[name] = self._parse(event.obj)
            self._hooks.event(event.type)
        except MalformedObject as exc:
            self._malformed(f"{event.type} event: {exc}")
        # Advance even past a malformed object: re-reading it would not make it valid.
        if event.resource_version is not None:
            self._rv = event.resource_version
        self._on_change()

    def _malformed(self, what: str) -> None:
        self._hooks.event(MALFORMED)
        self._log.warning("k8s %s: ignoring malformed %s", self.description, what)

    @property
    def failing_since(self) -> float | None:
        """When the current streak of API failures began, on the clock; None while calls succeed."""
        return self._failing_since

    def _fail(self, exc: KubeApiError) -> None:
        if self._failures == 0:
            self._failing_since = self._clock.now()
        self._failures += 1
        self._hooks.api_error(exc.code)
        self._last_error = f"{exc.code}: {exc}"
        self._log.warning("k8s %s: %s (failure %d in a row, keeping the last known state)",
                          self.description, self._last_error, self._failures)

    def _recovered(self) -> None:
        if self._failures:
            self._log.info("k8s %s: API calls succeed again after %d failures", self.description, self._failures)
        self._failures = 0
        self._failing_since = None
        self._delays = None
