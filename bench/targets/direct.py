"""The baseline: the generator talks straight to the healthy replicas, with no proxy in between."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.processes import Supervisor
from bench.targets.base import Deployment, RunningTarget


@dataclass(frozen=True, slots=True)
class DirectTarget:
    name: str = "direct"
    family: str = "direct"

    def unavailable(self) -> str | None:
        return None

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget:
        return RunningTarget(
            name=self.name,
            addresses=tuple((b.host, b.port) for b in deployment.healthy),
            process=None,
        )
