"""The live progress display: what runs now and how far it is, redrawn in place on a terminal.

The bench's work happens in blocking calls (a wrk run, a generator run), so a small daemon thread
redraws one status line a few times a second from the current `Step` and the clock. When stderr is not
a terminal, each step is printed once as a plain line instead. `render()` is pure so it can be tested.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

BAR_WIDTH: Final = 24
REFRESH_SECS: Final = 0.25


@dataclass(frozen=True, slots=True)
class Step:
    """One timed piece of work: which scenario, which step of how many, what, and how long it should take."""

    scenario: str
    index: int
    total: int
    label: str
    expected_secs: float
    started_at: float


def render(step: Step, now: float, width: int = BAR_WIDTH) -> str:
    """`[latency 2/5] envoy: measuring ▕██████░░░░▏ 6.0/15.0 s` (the bar stops at full when over time)."""
    elapsed = max(0.0, now - step.started_at)
    head = f"[{step.scenario} {step.index}/{step.total}] {step.label}"
    if step.expected_secs <= 0:
        return f"{head} {elapsed:5.1f} s"
    fraction = min(1.0, elapsed / step.expected_secs)
    filled = round(fraction * width)
    bar = "█" * filled + "░" * (width - filled)
    return f"{head} ▕{bar}▏ {elapsed:5.1f}/{step.expected_secs:.1f} s"


class Progress:
    """Shows the current step; `note()` prints a line above it (a result, a skipped target)."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty() if live is None else live
        self._clock = clock
        self._lock = threading.Lock()
        self._step: Step | None = None
        self._scenario = ""
        self._index = 0
        self._total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_width = 0

    def begin_scenario(self, name: str, total_steps: int) -> None:
        with self._lock:
            self._scenario, self._index, self._total = name, 0, total_steps
        self.note(f"== {name} ==")

    def step(self, label: str, expected_secs: float = 0.0) -> None:
        with self._lock:
            self._index += 1
            self._step = Step(self._scenario, min(self._index, self._total), self._total, label, expected_secs,
                              self._clock())
            step = self._step
        if self._live:
            self._ensure_thread()
            self._redraw()
        else:
            self._write(render(step, step.started_at) + "\n")

    def add_steps(self, count: int) -> None:
        """Grow the step count when a scenario discovers more work (a target turned out to be skippable)."""
        with self._lock:
            self._total += count

    def note(self, text: str) -> None:
        with self._lock:
            self._clear_line()
            self._stream.write(text + "\n")
            self._stream.flush()
        if self._live and self._step is not None:
            self._redraw()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._clear_line()
            self._step = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_SECS):
            self._redraw()

    def _redraw(self) -> None:
        with self._lock:
            if self._step is None:
                return
            line = render(self._step, self._clock())
            self._clear_line()
            self._stream.write(line)
            self._stream.flush()
            self._last_width = len(line)

    def _clear_line(self) -> None:
        if self._live and self._last_width:
            self._stream.write("\r" + " " * self._last_width + "\r")
            self._last_width = 0

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
