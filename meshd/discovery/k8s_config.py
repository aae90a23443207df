"""The `k8s` namer's config (`kind: k8s`), apart from the namer (meshd/discovery/k8s.py) so that
loading a config does not load the namer, its watches and its model: a process that does not
configure a k8s namer never imports them (about 0.4 MB; docs/benchmarks-analysis.md, "Where the
memory goes")."""

from __future__ import annotations

import pathlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, Literal

from balancers.backoff import NS_PER_MS, Backoff, EqualJitteredBackoff
from routing.path import Path, PathError

if TYPE_CHECKING:
    from meshd.discovery.k8s import K8sNamer
    from meshd.runtime import Runtime

SERVICE_ACCOUNT_DIR: Final = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
ConnectionMode = Literal["url", "in_cluster", "kubeconfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class K8sBackoffConfig:
    """Reconnect backoff: equal-jittered exponential (kind `exponential` of `balancers/backoff.py`)
    from `minMs` up to `maxMs`: `minMs`, then between `minMs * 2**(k-1)` and twice that, until a
    delay would reach `maxMs`, then `maxMs`."""

    min_ms: int = 100
    max_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.min_ms <= 0:
            raise ValueError(f"minMs must be positive, got {self.min_ms}")
        if self.max_ms < self.min_ms:
            raise ValueError(f"maxMs must be at least minMs ({self.min_ms}), got {self.max_ms}")

    def build(self, rng: random.Random) -> Backoff:
        return EqualJitteredBackoff(self.min_ms * NS_PER_MS, self.max_ms * NS_PER_MS, rng)


@dataclass(frozen=True, slots=True, kw_only=True)
class K8sNamerConfig:
    """`kind: k8s` — Kubernetes service discovery.

    Connection: `apiUrl` (plain http, e.g. `kubectl proxy`) if set; otherwise in-cluster
    (service-account token and CA) when `inCluster` is true, or when it is unset and the pod's
    service-account files and KUBERNETES_SERVICE_HOST exist; otherwise `kubeconfig`/`context`
    (default: $KUBECONFIG or ~/.kube/config, current context).
    """

    KIND: ClassVar[str] = "k8s"
    prefix: str = "/#/k8s"
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool | None = None
    api_url: str | None = None
    watch_timeout_secs: int = 300
    request_timeout_secs: float = 30.0
    idle_ttl_secs: float = 600.0
    backoff: K8sBackoffConfig = field(default_factory=K8sBackoffConfig)
    use_endpoint_slices: bool | None = None

    def __post_init__(self) -> None:
        try:
            Path.read(self.prefix)
        except PathError as exc:
            raise ValueError(f"prefix must be a path like /#/k8s, got {self.prefix!r}") from exc
        if self.api_url is not None:
            if not self.api_url.startswith(("http://", "https://")):
                raise ValueError(f"apiUrl must start with http:// or https://, got {self.api_url!r}")
            if self.in_cluster or self.kubeconfig is not None or self.context is not None:
                raise ValueError("apiUrl cannot be combined with inCluster, kubeconfig or context")
        if self.in_cluster and (self.kubeconfig is not None or self.context is not None):
            raise ValueError("inCluster: true cannot be combined with kubeconfig or context")
        if not 1 <= self.watch_timeout_secs <= 3600:
            raise ValueError(f"watchTimeoutSecs must be between 1 and 3600, got {self.watch_timeout_secs}")
        if not self.request_timeout_secs > 0:
            raise ValueError(f"requestTimeoutSecs must be positive, got {self.request_timeout_secs}")
        if self.idle_ttl_secs < 0:
            raise ValueError(f"idleTtlSecs must not be negative, got {self.idle_ttl_secs}")

    def connection_mode(
        self, environ: Mapping[str, str], service_account_dir: pathlib.Path = SERVICE_ACCOUNT_DIR
    ) -> ConnectionMode:
        """Which way to reach the API server (see the class docstring)."""
        if self.api_url is not None:
            return "url"
        if self.in_cluster is not None:
            return "in_cluster" if self.in_cluster else "kubeconfig"
        if self.kubeconfig is not None or self.context is not None:
            return "kubeconfig"
        if environ.get("KUBERNETES_SERVICE_HOST") and (service_account_dir / "token").is_file():
            return "in_cluster"
        return "kubeconfig"

    def build(self, runtime: Runtime) -> K8sNamer:
        from meshd.discovery.k8s import K8sNamer  # the namer and its watches load only when configured

        return K8sNamer(self, runtime)
