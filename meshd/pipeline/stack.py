"""Stage and Stack: how the request pipeline is composed.

A service is an async callable from a request's `RouteContext` (meshd/pipeline/context.py: the
wire request and what routing has learnt about it) to a response. A stage wraps the next service
and returns a new one. A *filter* is a stage that only looks at or changes the context on its way
in (hygiene, identification): a plain synchronous function. A `Stack` is an ordered list of named
layers (outermost first) that tests and features can change by role (`insert_before`,
`replace`, `remove`) without editing the assembly.

`build()` runs consecutive filters in one plain function that returns the next stage's
coroutine, so a filter costs a function call, not a coroutine frame: on the proxy's hot path
each coroutine layer costs about a microsecond per request. Pass-through steps elsewhere
(binding, choosing the destination) use the same trick: a plain `def` that returns the next
coroutine is a valid `Service`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshd.http.messages import Response
from meshd.pipeline.context import RouteContext

Service = Callable[[RouteContext], Awaitable[Response]]
Stage = Callable[[Service], Service]
Filter = Callable[[RouteContext], None]


@dataclass(frozen=True, slots=True)
class Layer:
    role: str
    stage: Stage | None = None
    filter: Filter | None = None


class Stack:
    """An ordered, editable list of stages; `build(terminal)` composes them around `terminal`."""

    __slots__ = ("_layers",)

    def __init__(self, layers: list[Layer] | None = None) -> None:
        self._layers: list[Layer] = list(layers or [])

    def push(self, role: str, stage: Stage) -> Stack:
        self._layers.append(Layer(role, stage=stage))
        return self

    def push_filter(self, role: str, request_filter: Filter) -> Stack:
        self._layers.append(Layer(role, filter=request_filter))
        return self

    def roles(self) -> list[str]:
        return [layer.role for layer in self._layers]

    def insert_before(self, role: str, new_role: str, stage: Stage) -> Stack:
        self._layers.insert(self._index(role), Layer(new_role, stage=stage))
        return self

    def insert_after(self, role: str, new_role: str, stage: Stage) -> Stack:
        self._layers.insert(self._index(role) + 1, Layer(new_role, stage=stage))
        return self

    def replace(self, role: str, stage: Stage) -> Stack:
        self._layers[self._index(role)] = Layer(role, stage=stage)
        return self

    def remove(self, role: str) -> Stack:
        del self._layers[self._index(role)]
        return self

    def build(self, terminal: Service) -> Service:
        service = terminal
        filters: list[Filter] = []
        for layer in reversed(self._layers):
            if layer.filter is not None:
                filters.insert(0, layer.filter)
                continue
            if filters:
                service = _filtered(tuple(filters), service)
                filters = []
            assert layer.stage is not None
            service = layer.stage(service)
        if filters:
            service = _filtered(tuple(filters), service)
        return service

    def filters(self) -> tuple[Filter, ...] | None:
        """The filters in order when every layer is a filter (a router's stack), else None: the
        fast path (meshd/fastpath.py) runs them as plain calls."""
        if any(layer.filter is None for layer in self._layers):
            return None
        return tuple(layer.filter for layer in self._layers if layer.filter is not None)

    def _index(self, role: str) -> int:
        for i, layer in enumerate(self._layers):
            if layer.role == role:
                return i
        raise KeyError(f"no stage with role {role!r} in {self.roles()}")

    def __repr__(self) -> str:
        return f"Stack({' -> '.join(self.roles())})"


def _filtered(filters: tuple[Filter, ...], next_service: Service) -> Service:
    # Plain functions returning the next stage's coroutine, not coroutines awaiting it: the caller
    # awaits that coroutine directly, so the filters cost no coroutine frame at all. A filter that
    # raises does so at call time, inside the caller's `await next(...)` expression, exactly
    # where an exception from an awaited stage would surface.
    if len(filters) == 1:
        (only,) = filters

        def one(ctx: RouteContext) -> Awaitable[Response]:
            only(ctx)
            return next_service(ctx)

        return one
    if len(filters) == 2:
        first, second = filters

        def two(ctx: RouteContext) -> Awaitable[Response]:
            first(ctx)
            second(ctx)
            return next_service(ctx)

        return two

    def many(ctx: RouteContext) -> Awaitable[Response]:
        for f in filters:
            f(ctx)
        return next_service(ctx)

    return many
