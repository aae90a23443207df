"""Stage and Stack: how the request pipeline is composed.

A service is an async callable from request to response. A stage wraps the next service and
returns a new one. A `Stack` is an ordered list of named stages (outermost first) that tests and
features can change by role (`insert_before`, `replace`, `remove`) without editing the assembly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshd.http.messages import Request, Response

Service = Callable[[Request], Awaitable[Response]]
Stage = Callable[[Service], Service]


@dataclass(frozen=True, slots=True)
class Layer:
    role: str
    stage: Stage


class Stack:
    """An ordered, editable list of stages; `build(terminal)` composes them around `terminal`."""

    __slots__ = ("_layers",)

    def __init__(self, layers: list[Layer] | None = None) -> None:
        self._layers: list[Layer] = list(layers or [])

    def push(self, role: str, stage: Stage) -> Stack:
        self._layers.append(Layer(role, stage))
        return self

    def roles(self) -> list[str]:
        return [layer.role for layer in self._layers]

    def insert_before(self, role: str, new_role: str, stage: Stage) -> Stack:
        self._layers.insert(self._index(role), Layer(new_role, stage))
        return self

    def insert_after(self, role: str, new_role: str, stage: Stage) -> Stack:
        self._layers.insert(self._index(role) + 1, Layer(new_role, stage))
        return self

    def replace(self, role: str, stage: Stage) -> Stack:
        self._layers[self._index(role)] = Layer(role, stage)
        return self

    def remove(self, role: str) -> Stack:
        del self._layers[self._index(role)]
        return self

    def build(self, terminal: Service) -> Service:
        service = terminal
        for layer in reversed(self._layers):
            service = layer.stage(service)
        return service

    def _index(self, role: str) -> int:
        for i, layer in enumerate(self._layers):
            if layer.role == role:
                return i
        raise KeyError(f"no stage with role {role!r} in {self.roles()}")

    def __repr__(self) -> str:
        return f"Stack({' -> '.join(self.roles())})"
