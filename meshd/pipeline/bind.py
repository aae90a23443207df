"""Bind: logical name (+ the request's local dtab) -> a chooser of bound destinations, cached.

Delegation is pure (`routing.delegate.bind`); this stage caches its result per (logical name,
local dtab) so the hot path does no delegation work. The cache is dropped whenever the base dtab
changes (routing file reload) or a namer says its answers may have changed (a service appeared
or vanished). Endpoint-set changes do not invalidate bindings: clients follow those themselves.
A binding that waits on a namer (pending) is retried when that namer changes, up to the binding
timeout. Requests keep the chooser they started with, so a reload never changes a request's
rules mid-way (its retries included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Protocol

from meshd.errors import BadRequest, NoSuchService, RequestTimeout
from meshd.explain import namer_reasons
from meshd.http.messages import Request, Response
from meshd.observable import Observable
from meshd.pipeline.stack import Service
from routing.delegate import Binding, Chooser, DelegationError, bind, compile_choice, parse_dtab_header
from routing.dtab import Dtab
from routing.namer import Namer
from routing.parser import DtabSyntaxError
from routing.path import Path

MAX_CACHED_BINDINGS = 10000


class Binder:
    def __init__(
        self,
        base_dtab: Observable[Dtab],
        namers: Mapping[Path, Namer],
        versions: list[Observable[int]],
        *,
        binding_timeout_s: float,
    ) -> None:
        self._base = base_dtab
        self._namers = dict(namers)
        self._versions = versions
        self._binding_timeout_s = binding_timeout_s
        self._cache: dict[tuple[Path, str], Chooser] = {}
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

    def cached(self, path: Path, local_dtab: str) -> Chooser | None:
        return self._cache.get((path, local_dtab))

    async def bind(self, path: Path, local_dtab: str) -> Chooser:
        key = (path, local_dtab)
        chooser = self._cache.get(key)
        if chooser is not None:
            return chooser
        epoch = self.epoch
        dtab = self._base.get()
        if local_dtab:
            try:
                dtab = dtab + parse_dtab_header(local_dtab)
            except DtabSyntaxError as exc:
                raise BadRequest(f"malformed l5d-dtab / l5d-ctx-dtab header: {exc.short}") from None
        binding: Binding | None = None
        try:
            async with asyncio.timeout(self._binding_timeout_s):
                while True:
                    try:
                        binding = bind(dtab, path, self._namers)
                    except DelegationError as exc:
                        raise NoSuchService(f"cannot bind {path.show()}: {exc}") from None
                    if not binding.pending:
                        break
                    await self._wait_any_change()
        except TimeoutError:
            reasons = namer_reasons(binding.trace, self._namers, answer="pending") if binding is not None else []
            why = "; ".join(reasons) if reasons else "a namer has not answered yet"
            raise RequestTimeout(
                f"binding {path.show()} did not complete within {self._binding_timeout_s * 1000:.0f} ms: {why}"
            ) from None
        chooser = compile_choice(binding.tree)
        if self.epoch == epoch:
            if len(self._cache) >= MAX_CACHED_BINDINGS:
                self._cache.clear()
            self._cache[key] = chooser
        return chooser

    def _invalidate(self, _value: object) -> None:
        self.epoch += 1
        self._cache.clear()

    async def _wait_any_change(self) -> None:
        waits = [asyncio.ensure_future(v.wait_changed()) for v in self._versions]
        if not waits:
            raise NoSuchService("binding is pending but no namer can change")
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


class ServiceLookup(Protocol):
    """What the bind step needs from the router: the service-level stack of a logical name."""

    def service_for(self, path: Path) -> Service: ...


def bind_service(binder: Binder, services: ServiceLookup) -> Service:
    """The innermost router-level step: bind, then hand over to the logical name's service stack."""

    cache = binder.cache
    service_for = services.service_for

    def bind_request(request: Request) -> Awaitable[Response]:
        path = request.logical_path
        assert path is not None, "the identifier runs before the binder"
        local = request.local_dtab
        chooser = cache.get((path, local))
        if chooser is None:
            return bind_then_serve(request, path, local)
        request.chooser = chooser
        return service_for(path)(request)  # a tail call: no coroutine frame for this step

    async def bind_then_serve(request: Request, path: Path, local: str) -> Response:
        request.chooser = await binder.bind(path, local)
        return await service_for(path)(request)

    return bind_request
