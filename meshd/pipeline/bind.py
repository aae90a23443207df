"""Bind: logical name (+ the request's local dtab) -> a chooser of bound destinations, cached.

Delegation is pure (`routing.delegate.bind`); this stage caches its result per (logical name,
local dtab) so the hot path does no delegation work. The cache is dropped whenever the base dtab
changes (routing file reload) or a namer says its answers may have changed (a service appeared
or vanished). Endpoint-set changes do not invalidate bindings: clients follow those themselves.
A binding that waits on a namer (pending) is retried when that namer changes, up to the binding
timeout. A request keeps the chooser it started with (on its `RouteContext`), so a reload never
changes a request's rules mid-way (its retries included).

A request's local dtab (`l5d-dtab`, `l5d-ctx-dtab`) is written by a client, so a binding that
involves one is bounded (`LOCAL_DTAB_MAX_WORK`, about a millisecond of CPU at most) and built
without a trace. Failures are cached like successes (a malformed header, a binding past the
work or depth limit), so a client repeating a costly header costs a dict lookup per request.
The caches are bounded apart: base bindings (no local dtab) up to `MAX_CACHED_BINDINGS`,
bindings with a local dtab up to `MAX_CACHED_LOCAL_BINDINGS`, failures up to
`MAX_CACHED_FAILURES`; past a bound the oldest entry of that cache goes, so clients inventing
local dtabs never evict the base bindings.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Container, Mapping, Sequence
from typing import Protocol

from meshd.clock import MONOTONIC, Clock
from meshd.errors import BadRequest, FaultInjected, MeshdError, NoSuchService, RequestTimeout
from meshd.explain import namer_reasons
from meshd.http.messages import Response
from meshd.observable import Observable
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Service
from routing.delegate import (
    LOCAL_DTAB_MAX_WORK,
    Binding,
    Chooser,
    DelegationError,
    bind,
    compile_choice,
    parse_dtab_header,
)
from routing.dtab import Dtab
from routing.match import MatchRule, MatchRules, fault_for, matched_dtab
from routing.namer import Namer
from routing.parser import DtabSyntaxError
from routing.path import Path

MAX_CACHED_BINDINGS = 10000
MAX_CACHED_LOCAL_BINDINGS = 1000
MAX_CACHED_FAILURES = 1000

_Key = tuple[Path, str]


class Binder:
    def __init__(
        self,
        base_dtab: Observable[Dtab],
        namers: Mapping[Path, Namer],
        versions: list[Observable[int]],
        *,
        binding_timeout_s: float,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._base = base_dtab
        self._namers = dict(namers)
        self._versions = versions
        self._binding_timeout_s = binding_timeout_s
        self._clock = clock
        self._cache: dict[tuple[Path, str], Chooser] = {}
        # insertion order of the cached keys, to evict the oldest (each key is in one deque once)
        self._base_keys: deque[_Key] = deque()
        self._local_keys: deque[_Key] = deque()
        # failed bindings: the error's class and message, raised again without binding again
        self._failed: dict[_Key, tuple[type[MeshdError], str]] = {}
        self._failed_keys: deque[_Key] = deque()
        # why the namers said no, for bindings with a local dtab that gave ~ (error path only)
        self._reasons: dict[_Key, str] = {}
        self.epoch = 0
        self._unsubscribe = [base_dtab.subscribe(self._invalidate, replay=False)]
        self._unsubscribe += [v.subscribe(self._invalidate, replay=False) for v in versions]

    @property
    def cache(self) -> dict[tuple[Path, str], Chooser]:
        """The binding cache (read-only for callers; never replaced, only cleared)."""
        return self._cache

    @property
    def namers(self) -> Mapping[Path, Namer]:
        return self._namers

    @property
    def base_dtab(self) -> Dtab:
        return self._base.get()

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    @property
    def failures(self) -> Mapping[tuple[Path, str], tuple[type[MeshdError], str]]:
        """The failed bindings cached (read-only; for tests and the admin)."""
        return self._failed

    def cached(self, path: Path, local_dtab: str) -> Chooser | None:
        return self._cache.get((path, local_dtab))

    async def bind(self, path: Path, local_dtab: str) -> Chooser:
        key = (path, local_dtab)
        chooser = self._cache.get(key)
        if chooser is not None:
            return chooser
        failed = self._failed.get(key)
        if failed is not None:
            raise failed[0](failed[1])
        epoch = self.epoch
        dtab = self._base.get()
        if local_dtab:
            try:
                dtab = dtab + parse_dtab_header(local_dtab)
            except DtabSyntaxError as exc:
                raise self._fail(
                    key, epoch, BadRequest, f"malformed l5d-dtab / l5d-ctx-dtab header: {exc.short}"
                ) from None
        max_work = LOCAL_DTAB_MAX_WORK if local_dtab else None
        binding: Binding | None = None
        try:
            async with self._clock.timeout(self._binding_timeout_s):
                while True:
                    try:
                        binding = bind(dtab, path, self._namers, max_work=max_work, trace=False)
                    except DelegationError as exc:
                        raise self._fail(key, epoch, NoSuchService, f"cannot bind {path.show()}: {exc}") from None
                    if not binding.pending:
                        break
                    await self._wait_any_change()
        except TimeoutError:
            why = "a namer has not answered yet"
            if binding is not None:  # the error path: bind once more, with a trace, to say why
                try:
                    traced = bind(dtab, path, self._namers, max_work=max_work)
                except DelegationError:
                    traced = binding
                reasons = namer_reasons(traced.trace, self._namers, answer="pending")
                why = "; ".join(reasons) if reasons else why
            raise RequestTimeout(
                f"binding {path.show()} did not complete within {self._binding_timeout_s * 1000:.0f} ms: {why}"
            ) from None
        chooser = compile_choice(binding.tree)
        if self.epoch == epoch:
            keys = self._local_keys if local_dtab else self._base_keys
            if len(keys) >= (MAX_CACHED_LOCAL_BINDINGS if local_dtab else MAX_CACHED_BINDINGS):
                self._cache.pop(keys.popleft(), None)
            keys.append(key)
            self._cache[key] = chooser
        return chooser

    def negative_reasons(self, path: Path, local_dtab: str) -> str:
        """On the error path only: why the namers said no to `path` (bind again with a trace).

        With a local dtab the binding is bounded as the request's was, and the answer is
        cached until the dtab or a namer changes: a client repeating a header that binds to
        `~` costs a lookup, not a traced binding, per request.
        """
        key = (path, local_dtab)
        if local_dtab:
            cached = self._reasons.get(key)
            if cached is not None:
                return cached
        epoch = self.epoch
        dtab = self._base.get()
        if local_dtab:
            try:
                dtab = dtab + parse_dtab_header(local_dtab)
            except DtabSyntaxError:
                return ""
        try:
            binding = bind(dtab, path, self._namers, max_work=LOCAL_DTAB_MAX_WORK if local_dtab else None)
        except DelegationError:
            reasons = ""
        else:
            reasons = "; ".join(namer_reasons(binding.trace, self._namers, answer="~"))
        if local_dtab and self.epoch == epoch:
            if len(self._reasons) >= MAX_CACHED_FAILURES:
                self._reasons.clear()  # only explanations of local-dtab failures: cheap to rebuild
            self._reasons[key] = reasons
        return reasons

    def retain(self, paths: Container[Path]) -> None:
        """Forget the bindings (and error-path explanations) of every logical name not in `paths`:
        the router calls this with its live services after dropping idle ones. Cached failures
        stay (at most MAX_CACHED_FAILURES, the oldest going first)."""
        cache = self._cache  # changed in place: the bind step holds this dict
        for key in [key for key in cache if key[0] not in paths]:
            del cache[key]
        self._base_keys = deque(key for key in self._base_keys if key in cache)
        self._local_keys = deque(key for key in self._local_keys if key in cache)
        for key in [key for key in self._reasons if key[0] not in paths]:
            del self._reasons[key]

    def _fail(self, key: _Key, epoch: int, error: type[MeshdError], message: str) -> MeshdError:
        """The error for a binding that failed, remembered (if nothing changed meanwhile) so
        that the same name and local dtab fail again at the cost of a lookup."""
        if self.epoch == epoch and key not in self._failed:
            if len(self._failed_keys) >= MAX_CACHED_FAILURES:
                self._failed.pop(self._failed_keys.popleft(), None)
            self._failed_keys.append(key)
            self._failed[key] = (error, message)
        return error(message)

    def _invalidate(self, _value: object) -> None:
        self.epoch += 1
        self._cache.clear()
        self._base_keys.clear()
        self._local_keys.clear()
        self._failed.clear()
        self._failed_keys.clear()
        self._reasons.clear()

    async def _wait_any_change(self) -> None:
        waits = [asyncio.ensure_future(v.wait_changed()) for v in self._versions]
        if not waits:
            raise NoSuchService("binding is pending but no namer can change")
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


class Copier(Protocol):
    """Request mirroring (meshd/pipeline/mirror.py): starts the copies a request gets, at once."""

    def copy(self, rules: Sequence[MatchRule], path: Path, ctx: RouteContext) -> None: ...


class ServiceLookup(Protocol):
    """What the bind step needs from the router: the service-level stack of a logical name."""

    def service_for(self, path: Path) -> Service: ...


def bind_service(
    binder: Binder,
    services: ServiceLookup,
    matching: MatchRules | None = None,
    *,
    rng: random.Random | None = None,
    clock: Clock = MONOTONIC,
    mirroring: Copier | None = None,
) -> Service:
    """The innermost router-level step: bind, then hand over to the logical name's service stack.

    `matching` holds the routing file's rules with `match:` and its fault rules. A fault rule
    that applies to a request (its share drawn from `rng`) answers it with its status
    (`FaultInjected`) or delays it on `clock`; then the dentries of the match rules that hold
    are added after the request's local dtab for binding (not forwarded downstream). Mirror
    rules hand the request to `mirroring`, which starts its copies without delaying it (a
    request a fault aborts is not copied). With no such rules a request costs one attribute
    test here.
    """

    cache = binder.cache
    service_for = services.service_for
    held = matching if matching is not None else MatchRules()
    draw = (rng or random.Random()).random

    def bind_request(ctx: RouteContext) -> Awaitable[Response]:
        path = ctx.logical_path
        assert path is not None, "the identifier runs before the binder"
        if held.active:
            return with_rules(ctx, path)
        local = ctx.local_dtab
        chooser = cache.get((path, local))
        if chooser is None:
            return bind_then_serve(ctx, path, local)
        ctx.chooser = chooser
        return service_for(path)(ctx)  # a tail call: no coroutine frame for this step

    def with_rules(ctx: RouteContext, path: Path) -> Awaitable[Response]:
        if held.faults:
            rule = fault_for(held.faults, path, ctx.request, draw())
            if rule is not None and rule.fault is not None:
                fault = rule.fault
                key = (rule.name, fault.kind)
                held.injected[key] = held.injected.get(key, 0) + 1
                if fault.abort is not None:
                    raise FaultInjected(
                        f"fault injected by routing rule {rule.name}: abort {fault.abort} for "
                        f"{fault.share:.0%} of {rule.prefix.show()}",
                        fault.abort,
                    )
                if held.mirrors and mirroring is not None:
                    mirroring.copy(held.mirrors, path, ctx)  # a delayed request is copied at once
                return delayed(ctx, path, (fault.delay_ms or 0) / 1000.0)
        if held.mirrors and mirroring is not None:
            mirroring.copy(held.mirrors, path, ctx)
        return matched(ctx, path)

    async def delayed(ctx: RouteContext, path: Path, delay_s: float) -> Response:
        await clock.sleep(delay_s)
        return await matched(ctx, path)

    def matched(ctx: RouteContext, path: Path) -> Awaitable[Response]:
        local = ctx.local_dtab
        if held.rules:
            extra = matched_dtab(held.rules, path, ctx.request)
            if extra:
                local = local + ";" + extra if local else extra
        chooser = cache.get((path, local))
        if chooser is None:
            return bind_then_serve(ctx, path, local)
        ctx.chooser = chooser
        return service_for(path)(ctx)

    async def bind_then_serve(ctx: RouteContext, path: Path, local: str) -> Response:
        ctx.chooser = await binder.bind(path, local)
        return await service_for(path)(ctx)

    return bind_request
