"""The configuration tree: frozen dataclasses with linkerd 1's defaults (and meshd's three exceptions).

YAML keys are the camelCase of the field names (the loader maps them by one rule). Every class
checks its own invariants in `__post_init__`; a message that starts with a key name (`"port:
..."`) is reported at that key's line. docs/configuration.md documents every field here, and a
test checks that it does.

meshd's deliberate differences from linkerd 1's defaults: the balancer is `ewma` (P2C + Peak
EWMA; linkerd: `p2c`), the classifier is `retryableIdempotent5XX` (linkerd: `nonRetryable5XX`),
and retries back off with jitter (linkerd: constant 0).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from balancers.configs import ConsecutiveFailuresConfig, EwmaConfig, NoAccrualConfig, SuccessRateConfig
from balancers.registry import ACCRUALS, BALANCERS, BalancerConfig
from meshd.discovery.k8s_config import K8sNamerConfig
from meshd.discovery.registry import NAMERS, NamerConfig
from meshd.grpc.classifiers import GRPC_CLASSIFIERS
from meshd.retry.backoff import BACKOFFS, BackoffConfig, RetryJitteredBackoffConfig
from meshd.retry.budget_config import RetryBudgetConfig
from meshd.retry.classifiers import CLASSIFIERS, ResponseClassifierConfig, RetryableIdempotent5XXConfig
from meshd.transformers import TRANSFORMERS, DaemonSetConfig, TransformerConfig
from routing.authz import Policy, build_policy, check_pattern
from routing.identifiers.base import IdentifierConfig
from routing.identifiers.header import HeaderIdentifierConfig
from routing.identifiers.registry import IDENTIFIERS
from routing.parser import parse_dtab, parse_prefix
from routing.path import Path

#: the HTTP classifier kinds and the gRPC ones (`grpc.*`, meshd/grpc/classifiers.py)
_CLASSIFIER_KINDS: dict[str, type[ResponseClassifierConfig]] = {**CLASSIFIERS, **GRPC_CLASSIFIERS}

AccrualConfig = ConsecutiveFailuresConfig | SuccessRateConfig | NoAccrualConfig

_PORT = {"min": 0, "max": 65535}
_Section = TypeVar("_Section", "ServiceConfig", "ClientConfig")


def _check_ip(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{key}: expected an IP address, got {value!r}") from None


# Field checks (`metadata={"check": ...}`): the loader runs them on each value by itself, even
# when another key of the same mapping is wrong, so one mistake never hides another; the
# classes' __post_init__ call them too, for objects built in code.


def _prefix_ok(text: str) -> None:
    parse_prefix(text)  # a DtabSyntaxError knows its line and column in the text


def _label_ok(label: str) -> None:
    if not label or not all(c.isalnum() or c in "-_." for c in label):
        raise ValueError(f"must be letters, digits, '-', '_' or '.', got {label!r}")


def _protocol_ok(protocol: str) -> None:
    if protocol not in ("http", "h2"):
        raise ValueError(f"expected 'http' (HTTP/1.1) or 'h2' (HTTP/2), got {protocol!r}")


def _servers_ok(servers: tuple[ServerConfig, ...]) -> None:
    if not servers:
        raise ValueError("a router needs at least one server")


def _dtab_ok(dtab: str) -> None:
    parse_dtab(dtab)  # a DtabSyntaxError knows its line and column in the text


def _networks_ok(cidrs: tuple[str, ...]) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network (e.g. 10.0.0.0/8)") from None


def _k8s_name_ok(value: str) -> None:
    """A DNS-1123 subdomain, as Kubernetes requires of namespace and ConfigMap names."""
    labels = value.split(".")
    if not value or len(value) > 253 or not all(
        label and label[0].isalnum() and label[-1].isalnum() and all(c.islower() or c.isdigit() or c == "-" for c in label)
        for label in labels
    ):
        raise ValueError(f"must be a Kubernetes name (lower-case letters, digits, '-' and '.'), got {value!r}")


def _keyed(key: str, check: Callable[[], None]) -> None:
    """Run a field check for __post_init__, naming the key in its message ("dtab: line 1, ...")."""
    try:
        check()
    except ValueError as exc:
        raise ValueError(f"{key}: {getattr(exc, 'short', exc)}") from None


_PREFIX_FIELD: dict[str, object] = {"check": _prefix_ok}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin HTTP server: metrics, readiness, config and routing views, dashboard."""

    ip: str = "127.0.0.1"
    port: int = field(default=9990, metadata=_PORT)

    def __post_init__(self) -> None:
        _check_ip("ip", self.ip)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTlsConfig:
    """TLS on one server (docs/tls.md): its certificate and key, and the CA its clients' certificates must chain to."""

    cert_path: str
    key_path: str
    #: with it, client certificates are verified (and their identity read); without it, none is asked for
    ca_path: str | None = None
    require_client_cert: bool = False
    handshake_timeout_ms: int = field(default=10_000, metadata={"min": 1})

    def __post_init__(self) -> None:
        if self.require_client_cert and not self.ca_path:
            raise ValueError("requireClientCert: needs caPath (the CA that client certificates must chain to)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """One listening socket of a router."""

    ip: str = "127.0.0.1"
    port: int = field(default=4140, metadata=_PORT)
    max_header_bytes: int = field(default=64 * 1024, metadata={"min": 1024, "max": 16 * 1024 * 1024})
    max_headers: int = field(default=100, metadata={"min": 8, "max": 100_000})
    header_timeout_ms: int = field(default=10_000, metadata={"min": 1})
    idle_timeout_ms: int = field(default=60_000, metadata={"min": 1})
    body_idle_timeout_ms: int = field(default=60_000, metadata={"min": 1})
    tls: ServerTlsConfig | None = None

    def __post_init__(self) -> None:
        _check_ip("ip", self.ip)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """Per-endpoint connection pool limits."""

    max_connections: int = field(default=1000, metadata={"min": 1})
    max_waiters: int = field(default=10_000, metadata={"min": 0})
    idle_time_ms: int = field(default=10_000, metadata={"min": 0})
    connect_timeout_ms: int = field(default=1000, metadata={"min": 1})
    queue_timeout_ms: int = field(default=5000, metadata={"min": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakersConfig:
    """Envoy-style circuit breakers of one client (replica set): past a limit an attempt is
    refused at once with 503 (docs/configuration.md)."""

    #: attempts in flight to the replica set at once
    max_requests: int = field(default=2048, metadata={"min": 1})
    #: attempts waiting for a connection across the replica set's pools at once
    max_pending_requests: int = field(default=1024, metadata={"min": 0})
    #: retries (second and later attempts) in flight to the replica set at once
    max_retries: int = field(default=64, metadata={"min": 0})


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTlsConfig:
    """TLS to a client's endpoints (docs/tls.md); the server's certificate is always verified."""

    #: the name the server's certificate must carry; `{N}` is segment N of the bound name (`{-1}`
    #: the last); unset: the endpoint's IP address
    server_name: str | None = None
    #: the CA file the server's certificate must chain to; unset: the system's trust store
    ca_path: str | None = None
    #: this meshd's certificate and key, for servers that require client certificates (mutual TLS)
    cert_path: str | None = None
    key_path: str | None = None
    handshake_timeout_ms: int = field(default=10_000, metadata={"min": 1})

    def __post_init__(self) -> None:
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("certPath and keyPath go together: give both (mutual TLS) or neither")
        if self.server_name is not None:
            try:
                server_name_for(self.server_name, Path.read("/a"), check=True)
            except ValueError as exc:
                raise ValueError(f"serverName: {exc}") from None


def server_name_for(template: str, id: Path, *, check: bool = False) -> str:
    """`template` with each `{N}` replaced by segment N of the bound name `id` (`{-1}`: the last).

    `check=True` only validates the template's syntax (no segment lookups fail)."""
    out: list[str] = []
    rest = template
    while rest:
        start = rest.find("{")
        if start < 0:
            if "}" in rest:
                raise ValueError(f"unmatched '}}' in {template!r}")
            out.append(rest)
            break
        out.append(rest[:start])
        end = rest.find("}", start)
        if end < 0:
            raise ValueError(f"unmatched '{{' in {template!r}")
        field_text = rest[start + 1 : end]
        try:
            index = int(field_text)
        except ValueError:
            raise ValueError(f"{{{field_text}}} in {template!r}: use {{N}}, segment N of the bound name ({{-1}}: the last)") from None
        if not check:
            if not -len(id) <= index < len(id):
                raise ValueError(f"{template!r}: {id.show()} has no segment {index}")
            out.append(id[index])
        rest = rest[end + 1 :]
    return "".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Client-level settings: one client per bound name (replica set)."""

    load_balancer: BalancerConfig = field(default_factory=EwmaConfig, metadata={"registry": BALANCERS})
    failure_accrual: AccrualConfig = field(default_factory=ConsecutiveFailuresConfig, metadata={"registry": ACCRUALS})
    pool: PoolConfig = field(default_factory=PoolConfig)
    request_attempt_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    max_response_header_bytes: int = field(default=64 * 1024, metadata={"min": 1024, "max": 16 * 1024 * 1024})
    response_idle_timeout_ms: int = field(default=300_000, metadata={"min": 1})
    response_head_timeout_ms: int = field(default=60_000, metadata={"min": 1})
    max_response_headers: int = field(default=100, metadata={"min": 1, "max": 10_000})
    #: failure accrual never takes more than this share of the replica set out (at least one node)
    max_ejection_percent: int = field(default=50, metadata={"min": 0, "max": 100})
    #: below this share of the replica set available, picks ignore health (panic mode)
    panic_threshold_percent: int = field(default=50, metadata={"min": 0, "max": 100})
    circuit_breakers: CircuitBreakersConfig = field(default_factory=CircuitBreakersConfig)
    tls: ClientTlsConfig | None = None
    #: what meshd speaks to these upstreams: `http` (HTTP/1.1) or `h2`; None: the router's
    #: `protocol` (docs/http2.md, "Protocols and defaults")
    protocol: str | None = field(default=None, metadata={"check": _protocol_ok})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetriesConfig:
    """Retries of failed requests, within a budget, with backoff."""

    budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    backoff: BackoffConfig = field(default_factory=RetryJitteredBackoffConfig, metadata={"registry": BACKOFFS})
    #: per request: retries after the request was written (5xx, errors after writing); docs/retries.md
    max_retries: int = field(default=2, metadata={"min": 0, "max": 100})
    #: per request: re-sends of a request that never reached an upstream (connect refused)
    max_requeues: int = field(default=10, metadata={"min": 0, "max": 100})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """Service-level settings: one service per logical name."""

    total_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    response_classifier: ResponseClassifierConfig = field(
        default_factory=RetryableIdempotent5XXConfig, metadata={"registry": _CLASSIFIER_KINDS}
    )
    retries: RetriesConfig = field(default_factory=RetriesConfig)
    replay_buffer_bytes: int = field(default=64 * 1024, metadata={"min": 0})
    add_success_class_header: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOverride:
    """Settings for the logical names under `prefix` (`*` matches one segment); unset keys inherit.

    Like linkerd's per-prefix configs: every override whose prefix matches a name applies, in
    file order, over the router's `service` section; a key given replaces the inherited value
    whole (a `retries:` given here replaces the whole `retries` section).
    """

    prefix: str = field(metadata=_PREFIX_FIELD)
    total_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    response_classifier: ResponseClassifierConfig | None = field(default=None, metadata={"registry": _CLASSIFIER_KINDS})
    retries: RetriesConfig | None = None
    replay_buffer_bytes: int | None = field(default=None, metadata={"min": 0})
    add_success_class_header: bool | None = None

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)

    def apply(self, base: ServiceConfig) -> ServiceConfig:
        return _apply(self, base, ("prefix",))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOverride:
    """Settings for the bound names (clients) under `prefix`, e.g. `/#/fs/ledger`; unset keys inherit."""

    prefix: str = field(metadata=_PREFIX_FIELD)
    load_balancer: BalancerConfig | None = field(default=None, metadata={"registry": BALANCERS})
    failure_accrual: AccrualConfig | None = field(default=None, metadata={"registry": ACCRUALS})
    pool: PoolConfig | None = None
    request_attempt_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    max_response_header_bytes: int | None = field(default=None, metadata={"min": 1024, "max": 16 * 1024 * 1024})
    response_idle_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    response_head_timeout_ms: int | None = field(default=None, metadata={"min": 1})
    max_response_headers: int | None = field(default=None, metadata={"min": 1, "max": 10_000})
    tls: ClientTlsConfig | None = None
    protocol: str | None = field(default=None, metadata={"check": _protocol_ok})

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)

    def apply(self, base: ClientConfig) -> ClientConfig:
        return _apply(self, base, ("prefix",))


def _check_prefix(text: str) -> None:
    try:
        _prefix_ok(text)
    except ValueError as exc:
        raise ValueError(f"prefix: {getattr(exc, 'short', exc)}") from None




def _apply(override: object, base: _Section, skip: tuple[str, ...]) -> _Section:
    changes = {
        f.name: getattr(override, f.name)
        for f in dataclasses.fields(override)  # type: ignore[arg-type]
        if f.name not in skip and getattr(override, f.name) is not None
    }
    return dataclasses.replace(base, **changes) if changes else base


def resolve_section(base: _Section, overrides: tuple[ServiceOverride, ...] | tuple[ClientOverride, ...], path: Path) -> _Section:
    """The settings for `path`: `base` with every matching override applied in order."""
    result = base
    for override in overrides:
        if parse_prefix(override.prefix).matches(path):
            result = _apply(override, result, ("prefix",))
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveConcurrencyConfig:
    """The router's concurrency limit found from latency (meshd/adaptive.py, docs/operations.md)."""

    initial_limit: int = field(default=20, metadata={"min": 1})
    #: the floor, and the limit while the no-load latency is measured
    min_limit: int = field(default=3, metadata={"min": 1})
    #: latency allowed above the no-load latency before the limit shrinks (1.25: 25% more)
    tolerance: float = field(default=1.25, metadata={"min": 1.0, "max": 10.0})
    window_ms: int = field(default=250, metadata={"min": 10})
    min_samples: int = field(default=10, metadata={"min": 1})
    min_latency_interval_secs: int = field(default=60, metadata={"min": 1})
    min_latency_samples: int = field(default=50, metadata={"min": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingCacheConfig:
    """What a router keeps per name, and for how long (linkerd 1's `bindingCache`)."""

    #: services, clients and bindings unused for this long are dropped (linkerd's 10 minutes)
    idle_ttl_secs: int = field(default=600, metadata={"min": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutesConfigMapConfig:
    """A routing file kept in a Kubernetes ConfigMap, watched through the API (docs/routing.md)."""

    namespace: str = field(metadata={"check": _k8s_name_ok})
    name: str = field(metadata={"check": _k8s_name_ok})
    #: the key of the ConfigMap's `data` that holds the routing file
    key: str = "routes.yaml"
    #: the prefix of the k8s namer whose API connection to use (default: the first k8s namer)
    namer: str | None = None

    def __post_init__(self) -> None:
        _keyed("namespace", lambda: _k8s_name_ok(self.namespace))
        _keyed("name", lambda: _k8s_name_ok(self.name))
        if not self.key or not all(c.isalnum() or c in "-_." for c in self.key):
            raise ValueError(f"key: a ConfigMap key is letters, digits, '-', '_' or '.', got {self.key!r}")

    def describe(self) -> str:
        return f"configmap {self.namespace}/{self.name} key {self.key}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRuleConfig:
    """Callers allowed to call the logical names under `prefix` (routing/authz.py, docs/tls.md)."""

    name: str
    prefix: str
    #: identities (`spiffe://...`), or text ending in `*` (any identity starting with it)
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name: must not be empty")
        _check_prefix(self.prefix)
        for pattern in self.allow:
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"allow: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationConfig:
    """Which identities may call which logical names; the routes file's `authorization`, when it
    has one, replaces this (docs/tls.md)."""

    #: what a name that no rule covers gets
    default: Literal["allow", "deny"] = "deny"
    rules: tuple[AuthorizationRuleConfig, ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: rule names must be unique, repeated: {', '.join(dupes)}")

    def build(self, source: str = "config") -> Policy:
        return build_policy([(r.name, r.prefix, r.allow) for r in self.rules], self.default, source)


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Config:
    """HTTP/2 on a router with `protocol: h2` (docs/http2.md): the SETTINGS meshd advertises on
    both sides, HTTP/1.1 on the same port, and the connection-level timers."""

    max_concurrent_streams: int = field(default=100, metadata={"min": 1, "max": 2**31 - 1})
    initial_window_size: int = field(default=65_535, metadata={"min": 1, "max": 2**31 - 1})
    max_frame_size: int = field(default=16_384, metadata={"min": 16_384, "max": 16_777_215})
    max_header_list_size: int = field(default=65_536, metadata={"min": 1024, "max": 16 * 1024 * 1024})
    accept_http1: bool = False
    zero_window_timeout_ms: int = field(default=30_000, metadata={"min": 1})
    ping_interval_ms: int = field(default=10_000, metadata={"min": 1})
    ping_timeout_ms: int = field(default=5_000, metadata={"min": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    """One router: listeners, how requests are named and bound, and the service and client stacks."""

    label: str = field(metadata={"check": _label_ok})
    protocol: str = field(default="http", metadata={"check": _protocol_ok})
    h2: H2Config = field(default_factory=H2Config)
    servers: tuple[ServerConfig, ...] = field(default=(ServerConfig(),), metadata={"check": _servers_ok})
    identifier: IdentifierConfig = field(default_factory=HeaderIdentifierConfig, metadata={"registry": IDENTIFIERS})
    dtab: str = field(default="", metadata={"check": _dtab_ok})
    routes: str | None = None
    routes_config_map: RoutesConfigMapConfig | None = None
    routes_max_bytes: int = field(default=1024 * 1024, metadata={"min": 1})
    trusted_sources: tuple[str, ...] = field(default=("127.0.0.0/8", "::1/128"), metadata={"check": _networks_ok})
    binding_timeout_ms: int = field(default=10_000, metadata={"min": 1})
    binding_cache: BindingCacheConfig = field(default_factory=BindingCacheConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    services: tuple[ServiceOverride, ...] = ()
    clients: tuple[ClientOverride, ...] = ()
    access_log: bool = False
    authorization: AuthorizationConfig | None = None
    transformers: tuple[TransformerConfig, ...] = field(default=(), metadata={"registry": TRANSFORMERS})
    #: admission control (meshd/admission.py): requests served at once, waiting for a turn, how long
    max_concurrent_requests: int = field(default=10_000, metadata={"min": 1})
    max_pending_requests: int = field(default=1_000, metadata={"min": 0})
    pending_timeout_ms: int = field(default=1_000, metadata={"min": 1})
    #: find the concurrency limit from latency, below `max_concurrent_requests` (off: None)
    adaptive_concurrency: AdaptiveConcurrencyConfig | None = None

    def service_for(self, path: Path) -> ServiceConfig:
        return resolve_section(self.service, self.services, path)

    def client_for(self, path: Path) -> ClientConfig:
        return resolve_section(self.client, self.clients, path)

    @property
    def speaks_h2(self) -> bool:
        """Whether any side of this router speaks HTTP/2: its clients (`protocol: h2`) or some of
        its upstreams (a client section with `protocol: h2`)."""
        return self.protocol == "h2" or self.client.protocol == "h2" or any(c.protocol == "h2" for c in self.clients)

    def upstream_protocol(self, client: ClientConfig) -> str:
        """What meshd speaks to the upstreams of `client` (one of this router's client sections):
        its own `protocol`, else the router's."""
        return client.protocol or self.protocol

    def __post_init__(self) -> None:
        _keyed("label", lambda: _label_ok(self.label))
        _keyed("protocol", lambda: _protocol_ok(self.protocol))
        _keyed("servers", lambda: _servers_ok(self.servers))
        _keyed("dtab", lambda: _dtab_ok(self.dtab))
        _keyed("trustedSources", lambda: _networks_ok(self.trusted_sources))
        if self.routes is not None and self.routes_config_map is not None:
            raise ValueError("routesConfigMap: give routes (a file) or routesConfigMap, not both")


def _collector_ok(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"expected an http:// or https:// URL of an OTLP collector, got {url!r}")
    try:
        parsed.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """Distributed tracing (docs/tracing.md): spans exported over OTLP/HTTP to `collector`."""

    #: the collector's OTLP/HTTP URL (`http://host:4318`; `/v1/traces` is added when there is no
    #: path); without one tracing is off and costs nothing
    collector: str | None = field(default=None, metadata={"check": _collector_ok})
    #: the share of requests sampled when the caller has not decided (linkerd 1's default)
    sample_rate: float = field(default=0.001, metadata={"min": 0.0, "max": 1.0})
    #: the `service.name` resource attribute of every span
    service_name: str = "meshd"

    def __post_init__(self) -> None:
        if self.collector is not None:
            _keyed("collector", lambda: _collector_ok(self.collector or ""))
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sampleRate: expected a number from 0 to 1, got {self.sample_rate}")
        if not self.service_name:
            raise ValueError("serviceName: must not be empty")

    @property
    def enabled(self) -> bool:
        return self.collector is not None

    @property
    def traces_url(self) -> str:
        """The URL spans are POSTed to: the collector's, with `/v1/traces` when it has no path."""
        url = self.collector or ""
        return url.rstrip("/") + "/v1/traces" if urllib.parse.urlsplit(url).path in ("", "/") else url


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshdConfig:
    """The whole file."""

    admin: AdminConfig = field(default_factory=AdminConfig)
    namers: tuple[NamerConfig, ...] = field(default=(), metadata={"registry": NAMERS})
    routers: tuple[RouterConfig, ...]
    drain_timeout_ms: int = field(default=30_000, metadata={"min": 0})
    tracing: TracingConfig | None = None

    def __post_init__(self) -> None:
        if not self.routers:
            raise ValueError("routers: at least one router is required")
        labels = [r.label for r in self.routers]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"routers: router labels must be unique, repeated: {', '.join(dupes)}")
        seen: dict[tuple[str, int], str] = {}
        for router in self.routers:
            for server in router.servers:
                key = (server.ip, server.port)
                if server.port and key in seen:
                    raise ValueError(
                        f"routers: {router.label} and {seen[key]} both listen on {server.ip}:{server.port}"
                    )
                seen[key] = router.label
        prefixes = [n.prefix for n in self.namers]
        dup_prefixes = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if dup_prefixes:
            raise ValueError(f"namers: two namers share the prefix {dup_prefixes[0]}; give one a different prefix")
        k8s_prefixes = [n.prefix for n in self.namers if isinstance(n, K8sNamerConfig)]
        for router in self.routers:
            cm = router.routes_config_map
            if cm is None:
                continue
            if not k8s_prefixes:
                raise ValueError(
                    f"routers: router {router.label}, routesConfigMap: meshd reads ConfigMaps through a k8s "
                    "namer's API connection; configure a namer of kind k8s"
                )
            if cm.namer is not None and cm.namer not in k8s_prefixes:
                raise ValueError(
                    f"routers: router {router.label}, routesConfigMap.namer: no k8s namer has the prefix "
                    f"{cm.namer} (k8s namers: {', '.join(k8s_prefixes)})"
                )
        # A daemonset transformer finds the meshds through a namer: without one, the router
        # could not start, so `meshd check` says so rather than `meshd run` failing later.
        namer_paths = [Path.read(p) for p in prefixes]
        for router in self.routers:
            for j, transformer in enumerate(router.transformers):
                if not isinstance(transformer, DaemonSetConfig):
                    continue
                if not any(Path.read(transformer.path).starts_with(p) for p in namer_paths):
                    known = ", ".join(prefixes) or "none"
                    raise ValueError(
                        f"routers: router {router.label}, transformers[{j}] (daemonset): no namer serves "
                        f"{transformer.path} (namer prefixes: {known})"
                    )
