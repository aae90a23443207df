"""Target names the CLI accepts, and the upstreams the scenarios stand behind them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.processes import LOOPBACK, ManagedProcess, Supervisor, free_port, wait_listening
from bench.targets.base import Backend, Target
from bench.targets.direct import DirectTarget
from bench.targets.meshd import Balancer, MeshdTarget
from bench.targets.peers import EnvoyTarget, HaproxyTarget, NginxTarget, nginx_binary, start_nginx
from bench.upstream import InstanceSpec
from bench.upstream_control import start_upstream

FAMILIES: Final = ("direct", "meshd", "envoy", "haproxy", "nginx")
PEERS: Final[tuple[Target, ...]] = (EnvoyTarget(), HaproxyTarget(), NginxTarget())


@dataclass(frozen=True, slots=True)
class Selection:
    """Which target families to run (`--targets`), and whether meshd is wanted at all."""

    families: frozenset[str] = frozenset(FAMILIES)

    def __post_init__(self) -> None:
        unknown = self.families - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown targets {sorted(unknown)}; known: {', '.join(FAMILIES)}")

    @classmethod
    def parse(cls, text: str | None, *, skip_meshd: bool = False) -> Selection:
        families = set(FAMILIES) if not text else {part.strip() for part in text.split(",") if part.strip()}
        if skip_meshd:
            families.discard("meshd")
        return cls(frozenset(families))

    def wants(self, target: Target) -> bool:
        return target.family in self.families


def meshd(name: str, *, workers: int = 1, balancer: Balancer = "ewma", retries: bool = True,
          tracing_sample_rate: float | None = None, trace_collector: str = "") -> Target:
    return MeshdTarget(name=name, workers=workers, balancer=balancer, retries=retries,
                       tracing_sample_rate=tracing_sample_rate, trace_collector=trace_collector)


def standard(meshd_targets: Sequence[Target]) -> list[Target]:
    """direct, the given meshd variants, then every peer: the usual row order of a table."""
    return [DirectTarget(), *meshd_targets, *PEERS]


@dataclass(frozen=True, slots=True)
class TinyUpstream:
    """The throughput/latency upstream: its address, its process (for CPU), and what it is."""

    backend: Backend
    process: ManagedProcess
    kind: str


@contextmanager
def tiny_upstream(supervisor: Supervisor, workdir: Path, max_lifetime_secs: float) -> Iterator[TinyUpstream]:
    """nginx answering "ok" itself; the bench's own upstream when nginx is not installed."""
    workdir.mkdir(parents=True, exist_ok=True)
    if nginx_binary() is not None:
        port = free_port()
        process = start_nginx(supervisor, "upstream-nginx.conf.tmpl", "upstream-nginx", workdir,
                              {"listen_port": str(port)})
        wait_listening(process, port)
        upstream = TinyUpstream(Backend("upstream", LOOPBACK, port), process, "nginx")
    else:
        started = start_upstream(supervisor, [InstanceSpec(name="upstream")], workdir=workdir,
                                 max_lifetime_secs=max_lifetime_secs)
        replica = started.replicas[0]
        upstream = TinyUpstream(Backend(replica.name, replica.host, replica.port), started.process, "bench.upstream")
    try:
        yield upstream
    finally:
        supervisor.stop(upstream.process)
