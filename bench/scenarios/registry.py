"""Scenario names -> their options class and runner, in the order `meshd-bench all` runs them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from bench.results import ScenarioResult
from bench.scenarios import failing_replica, grpc, latency, memory, slow_replica, soak, stall, throughput, tls
from bench.scenarios.context import RunContext

OptionsT = TypeVar("OptionsT")


class Scenario(Protocol):
    """What the CLI and the report need from a scenario, whatever its options class."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def option_defaults(self) -> dict[str, object]:
        """Each option's name and default value, in declaration order (the CLI makes flags of them)."""
        ...

    def options(self, *, time_scale: float = 1.0, overrides: Mapping[str, object] | None = None) -> object:
        """Default options, every duration multiplied by `time_scale`, then `overrides` applied."""
        ...

    def run(self, ctx: RunContext, options: object) -> ScenarioResult: ...


@dataclass(frozen=True, slots=True)
class ScenarioEntry(Generic[OptionsT]):
    """A scenario module seen through the `Scenario` protocol; its options class is a frozen dataclass."""

    name: str
    module_doc: str
    options_type: type[OptionsT]
    scale: Callable[[OptionsT, float], OptionsT]
    runner: Callable[[RunContext, OptionsT], ScenarioResult]

    @property
    def description(self) -> str:
        """The module docstring without its "name: " lead, on one line."""
        return " ".join(self.module_doc.split()).split(": ", 1)[-1]

    def option_defaults(self) -> dict[str, object]:
        defaults = self.options_type()
        return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}  # type: ignore[arg-type]  # OptionsT is a dataclass

    def options(self, *, time_scale: float = 1.0, overrides: Mapping[str, object] | None = None) -> object:
        options = self.options_type()
        if time_scale != 1.0:
            options = self.scale(options, time_scale)
        if overrides:
            options = dataclasses.replace(options, **overrides)  # type: ignore[type-var]  # OptionsT is a dataclass
        return options

    def run(self, ctx: RunContext, options: object) -> ScenarioResult:
        if not isinstance(options, self.options_type):
            raise TypeError(f"{self.name} needs {self.options_type.__name__}, got {type(options).__name__}")
        return self.runner(ctx, options)


def _entries() -> tuple[Scenario, ...]:
    return (
        ScenarioEntry(throughput.NAME, throughput.__doc__ or "", throughput.ThroughputOptions,
                      throughput.ThroughputOptions.scaled, throughput.run),
        ScenarioEntry(latency.NAME, latency.__doc__ or "", latency.LatencyOptions,
                      latency.LatencyOptions.scaled, latency.run),
        ScenarioEntry(slow_replica.NAME, slow_replica.__doc__ or "", slow_replica.SlowReplicaOptions,
                      slow_replica.SlowReplicaOptions.scaled, slow_replica.run),
        ScenarioEntry(failing_replica.NAME, failing_replica.__doc__ or "", failing_replica.FailingReplicaOptions,
                      failing_replica.FailingReplicaOptions.scaled, failing_replica.run),
        ScenarioEntry(stall.NAME, stall.__doc__ or "", stall.StallOptions, stall.StallOptions.scaled, stall.run),
        ScenarioEntry(memory.NAME, memory.__doc__ or "", memory.MemoryOptions, memory.MemoryOptions.scaled,
                      memory.run),
        ScenarioEntry(tls.NAME, tls.__doc__ or "", tls.TlsOptions, tls.TlsOptions.scaled, tls.run),
        ScenarioEntry(grpc.NAME, grpc.__doc__ or "", grpc.GrpcOptions, grpc.GrpcOptions.scaled, grpc.run),
        ScenarioEntry(soak.NAME, soak.__doc__ or "", soak.SoakOptions, soak.SoakOptions.scaled, soak.run),
    )


SCENARIOS: Final[dict[str, Scenario]] = {entry.name: entry for entry in _entries()}
#: what `meshd-bench all` runs: every scenario but the half-hour soak, which is run on its own
IN_ALL: Final[tuple[str, ...]] = tuple(name for name in SCENARIOS if name != soak.NAME)
