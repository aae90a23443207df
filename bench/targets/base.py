"""The Target protocol: something that fronts a set of upstream replicas and can be started and stopped."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from bench.processes import ManagedProcess, Supervisor

PEERS_DIR: Final = Path(__file__).resolve().parent.parent / "peers"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream replica's address."""

    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A logical service (the Host header clients send) and its replicas."""

    name: str
    backends: tuple[Backend, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """What a scenario asks a target to front.

    `services[0]` is the one the load goes to; peers front only that one. `healthy` is where the
    *direct* target sends: the replicas a perfect balancer would use, with no proxy in between.
    """

    services: tuple[Service, ...]
    healthy: tuple[Backend, ...]

    @property
    def main(self) -> Service:
        return self.services[0]

    @classmethod
    def single(cls, name: str, backends: tuple[Backend, ...], healthy: tuple[Backend, ...] | None = None) -> Deployment:
        return cls(services=(Service(name=name, backends=backends),), healthy=healthy or backends)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningTarget:
    """A started target: where clients connect, and the process whose CPU and memory count as the proxy's."""

    name: str
    addresses: tuple[tuple[str, int], ...]
    process: ManagedProcess | None
    commands: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host, port = self.addresses[0]
        return f"http://{host}:{port}/"


class Target(Protocol):
    """A thing to measure. `family` groups variants ("meshd-w1" and "meshd-w2" are both "meshd")."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    def unavailable(self) -> str | None:
        """None when the target can run here; otherwise why not and the exact command that fixes it."""
        ...

    def start(self, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> RunningTarget: ...


@contextmanager
def running(target: Target, deployment: Deployment, supervisor: Supervisor, workdir: Path) -> Iterator[RunningTarget]:
    """Start `target`, yield it, and stop it however the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = target.start(deployment, supervisor, workdir)
    try:
        yield started
    finally:
        if started.process is not None:
            supervisor.stop(started.process)


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill `{{ name }}` placeholders. A placeholder without a value, or a value without a placeholder,
    is an error: a typo in a template should fail loudly, not produce a config that half works."""
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        used.add(name)
        return values[name]

    text = _PLACEHOLDER.sub(fill, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"values without a placeholder: {sorted(unused)}")
    return text


def render_peer_file(template_name: str, values: Mapping[str, str], destination: Path) -> Path:
    destination.write_text(render((PEERS_DIR / template_name).read_text(), values))
    return destination
