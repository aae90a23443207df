"""Small config dataclass trees the loader tests run against (the loader is generic over any tree).

`MeshConfig` mimics the shape of meshd's real config (routers, servers, plug-ins chosen by
`kind:`, a tuple of namer plug-ins, invariants in `__post_init__`); `Leaves` has one field
per supported leaf type for the type-rule tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    ip: str = "127.0.0.1"
    port: int = field(default=4140, metadata={"min": 1, "max": 65535})


# --- balancer plug-ins ---


@dataclass(frozen=True, slots=True, kw_only=True)
class BalancerConfig:
    KIND: ClassVar[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class EwmaConfig(BalancerConfig):
    KIND: ClassVar[str] = "ewma"
    decay_time_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.decay_time_ms <= 0:
            raise ValueError(f"decayTimeMs: must be positive, got {self.decay_time_ms}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRobinConfig(BalancerConfig):
    KIND: ClassVar[str] = "roundRobin"


@dataclass(frozen=True, slots=True, kw_only=True)
class LeastLoadedConfig(BalancerConfig):
    KIND: ClassVar[str] = "leastLoaded"
    max_pending: int | None = field(default=None, metadata={"min": 1})


BALANCERS: dict[str, type[BalancerConfig]] = {
    "ewma": EwmaConfig,
    "roundRobin": RoundRobinConfig,
    "leastLoaded": LeastLoadedConfig,
}


# --- namer plug-ins ---


@dataclass(frozen=True, slots=True, kw_only=True)
class NamerConfig:
    KIND: ClassVar[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class FsNamerConfig(NamerConfig):
    KIND: ClassVar[str] = "fs"
    root_dir: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsNamerConfig(NamerConfig):
    KIND: ClassVar[str] = "dns"
    nameservers: tuple[str, ...] = ()
    refresh_secs: float = field(default=30.0, metadata={"min": 0.5})


NAMERS: dict[str, type[NamerConfig]] = {"fs": FsNamerConfig, "dns": DnsNamerConfig}


# --- the tree ---

Classifier = Literal["retryableIdempotent5XX", "nonRetryable5XX", "retryableRead5XX"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffConfig:
    min_ms: int = field(default=10, metadata={"min": 0})
    max_ms: int = field(default=1000, metadata={"min": 0})

    def __post_init__(self) -> None:
        if self.max_ms < self.min_ms:
            raise ValueError(f"maxMs: must be at least minMs ({self.min_ms}), got {self.max_ms}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    total_timeout_ms: int | None = None
    response_classifier: Classifier = "retryableIdempotent5XX"
    percent_can_retry: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    backoff: BackoffConfig = field(default_factory=BackoffConfig)

    def __post_init__(self) -> None:
        # Uses the Python field name as the prefix: the loader maps it to the YAML key.
        if self.total_timeout_ms is not None and self.total_timeout_ms <= 0:
            raise ValueError(f"total_timeout_ms: must be positive, got {self.total_timeout_ms}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    label: str
    servers: tuple[ServerConfig, ...] = (ServerConfig(),)
    dtab: str = ""
    load_balancer: BalancerConfig = field(default_factory=EwmaConfig, metadata={"registry": BALANCERS})
    backup_balancer: BalancerConfig | None = field(default=None, metadata={"registry": BALANCERS})
    service: ServiceConfig = field(default_factory=ServiceConfig)
    headers: Mapping[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    tls: bool = False

    def __post_init__(self) -> None:
        ports = [server.port for server in self.servers]
        if len(set(ports)) != len(ports):
            raise ValueError("servers must not share a port")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    ip: str = "127.0.0.1"
    port: int = field(default=9990, metadata={"min": 1, "max": 65535})
    enable_5xx_page: bool = field(default=True, metadata={"yaml": "enable5XXPage"})


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    admin: AdminConfig = field(default_factory=AdminConfig)
    namers: tuple[NamerConfig, ...] = field(default=(), metadata={"registry": NAMERS})
    routers: tuple[RouterConfig, ...]


# --- one field per leaf type ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Leaves:
    flag: bool = False
    count: int = 0
    port: int = field(default=1, metadata={"min": 1, "max": 65535})
    floor: int = field(default=0, metadata={"min": 0})
    cap: int = field(default=0, metadata={"max": 10})
    offset: int = field(default=0, metadata={"min": -5, "max": 5})
    ratio: float = 0.0
    percent: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    name: str = ""
    maybe_port: int | None = None
    tags: tuple[str, ...] = ()
    ports: tuple[int, ...] = field(default=(), metadata={"min": 1})
    mode: Literal["fast", "slow"] = "fast"
    level: Literal[1, 2, 3] = 1
    labels: Mapping[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    maybe_server: ServerConfig | None = None
