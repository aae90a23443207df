"""Expiry: the timer callback of one bounded await, compiled because the hot path creates one
per request that has a total or attempt timeout (meshd.clock's `Timeout` uses it too)."""

from __future__ import annotations

import asyncio


class Expiry:
    """The timer callback of one bounded await (a request's total timeout, an attempt's timeout, a
    `Timeout` block): cancels its task, remembering that it did. The caller turns that cancellation,
    and only that one, into its timeout error: `expired and task.uncancel() <= cancelling` (the rule
    `asyncio.timeout` follows)."""

    __slots__ = ("task", "cancelling", "expired")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        #: the task's pending cancellations on entry: only one more than these is ours
        self.cancelling = task.cancelling()
        self.expired = False

    def fire(self) -> None:
        self.expired = True
        self.task.cancel()

    def caused(self) -> bool:
        """In an `except CancelledError`: whether this expiry is the cancellation's cause, and no
        one else also cancelled the task (then the cancellation must go on). Call it once."""
        return self.expired and self.task.uncancel() <= self.cancelling
