"""The chaos knob: extra latency and a failure rate that the demo (or an operator) sets on one replica at runtime."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass

from examples.bank.payloads import field_float

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosSettings:
    """What the knob is set to. `POST /_chaos` replaces the whole setting: a missing key means 0."""

    latency_ms: float = 0.0
    fail_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.latency_ms <= 60_000.0:
            raise ValueError(f"latency_ms must be between 0 and 60000, got {self.latency_ms}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> ChaosSettings:
        return cls(
            latency_ms=field_float(body, "latency_ms", default=0.0),
            fail_rate=field_float(body, "fail_rate", default=0.0),
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Chaos:
    """Applies the current settings to a request: first the delay, then maybe a failure.

    The random source is injected so a test can make `fail_rate=0.5` deterministic.
    """

    def __init__(self, rng: random.Random, *, sleep: Sleep = asyncio.sleep) -> None:
        self._rng = rng
        self._sleep = sleep
        self._settings = ChaosSettings()

    def __repr__(self) -> str:
        return f"Chaos({self._settings})"

    @property
    def settings(self) -> ChaosSettings:
        return self._settings

    def set(self, settings: ChaosSettings) -> None:
        self._settings = settings

    async def delay(self) -> None:
        if self._settings.latency_ms > 0:
            await self._sleep(self._settings.latency_ms / 1000.0)

    def should_fail(self) -> bool:
        rate = self._settings.fail_rate
        return rate > 0 and self._rng.random() < rate
