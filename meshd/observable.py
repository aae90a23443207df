"""Observable: a value that changes over time, with synchronous subscribers and async waiters.

Namers publish address sets through it, the routing-file watcher publishes dtabs through it,
and balancers subscribe. `set()` is synchronous and never awaits, so a subscriber sees every
change in order on the event loop thread; `wait_changed()` lets a coroutine wait for the next
value without polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Observable(Generic[T]):
    __slots__ = ("_value", "_subscribers", "_waiters", "_version")

    def __init__(self, value: T) -> None:
        self._value = value
        self._subscribers: list[Callable[[T], None]] = []
        self._waiters: list[asyncio.Future[T]] = []
        self._version = 0

    def get(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        """Counts calls to `set()`, so a cache can tell whether it saw the latest value."""
        return self._version

    def set(self, value: T) -> None:
        """Publish a new value to every subscriber and waiter (even if equal: callers decide)."""
        self._value = value
        self._version += 1
        for callback in list(self._subscribers):
            callback(value)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(value)

    def subscribe(self, callback: Callable[[T], None], *, replay: bool = True) -> Callable[[], None]:
        """Call `callback` on every change (and once now, with `replay`); returns an unsubscribe."""
        self._subscribers.append(callback)
        if replay:
            callback(self._value)

        def unsubscribe() -> None:
            try:
                self._subscribers.remove(callback)
            except ValueError:
                pass

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def wait_changed(self) -> T:
        """Wait for the next `set()` and return its value."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    async def wait_for(self, predicate: Callable[[T], bool]) -> T:
        """Return the current value once `predicate` holds for it (now or after some `set()`)."""
        while not predicate(self._value):
            await self.wait_changed()
        return self._value

    def __repr__(self) -> str:
        return f"Observable({self._value!r}, version={self._version})"
