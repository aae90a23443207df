"""Transformers: rewrite a client's address set after discovery (linkerd's interpreter transformers).

A transformer takes the live address set of a bound name and returns another live address set.
Each router applies its `transformers:` in order to every client's set (`Router.transformed_addr_of`).
Two kinds, for running meshd as a DaemonSet (docs/kubernetes.md, "DaemonSet mode"):

* `daemonset` (the outgoing router): replace each replica by the meshd of the replica's node,
  found by node name among the DaemonSet's own pods (a bound name resolved by the configured
  namers, e.g. `/#/k8s/mesh/incoming/meshd`, whose addresses carry `node_name`). That meshd's
  incoming router then delivers the request to a replica on its node. The gateway address
  weighs as much as the replicas it stands for, so a node with three replicas gets three times
  the traffic of a node with one. A replica whose node has no known meshd is sent to directly
  (`fallback: direct`, the default) or left out (`fallback: drop`).
* `localnode` (the incoming router): keep only the replicas on this node (`nodeName`, default
  `$NODE_NAME`). When none is left, use them all (`fallback: all`, the default): the sender saw a
  replica here that this meshd no longer sees (it just stopped), and delivering elsewhere beats
  failing the request. `fallback: none` leaves the set empty (requests get 503).

How this works: the mapping rules are pure functions (`through_daemons`, `on_node`). The
observable plumbing recomputes a client's output whenever its input set or the daemon set
changes, and publishes only real changes. `Pending`, `Neg` and `Failed` inputs pass through
unchanged (a client keeps its last set on Pending/Failed). The daemon set follows the same rule
as clients: `Failed` keeps the last known daemons; `Neg` means there are none. When a client is
evicted (idle, see meshd/router.py) the router calls `release()` with the set `transform()` gave
it: the transformer stops following the input, so the namer's watch can be released in turn.

Addresses that point at another meshd carry `(VIA, kind)` in their metadata; the client counts
every attempt sent to one (`meshd_daemonset_forwarded_total{router}`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol

from meshd.discovery.addr import Addr, Address, Bound, Neg
from meshd.discovery.base import Namer
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.path import Path, PathError

log = logging.getLogger("meshd.transformers")

#: Metadata key of an address that is another meshd forwarding to the replica (value: the transformer kind).
VIA: Final = "via"


class Transformer(Protocol):
    def transform(self, id: Path, addr: Observable[Addr]) -> Observable[Addr]: ...

    def release(self, id: Path, output: Observable[Addr]) -> None:
        """`output` (returned by `transform`) is no longer used: stop following its input."""
        ...


class TransformerConfig(Protocol):
    KIND: ClassVar[str]

    def build(self, runtime: Runtime, namers: dict[Path, Namer]) -> Transformer: ...


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSetConfig:
    """`kind: daemonset` — send each request to the meshd on the chosen replica's node."""

    KIND: ClassVar[str] = "daemonset"
    path: str
    fallback: Literal["direct", "drop"] = "direct"

    def __post_init__(self) -> None:
        try:
            parsed = Path.read(self.path)
        except PathError as exc:
            raise ValueError(f"path: {exc}") from None
        if len(parsed) < 2 or parsed[0] != "#":
            raise ValueError(f"path: must be a bound name served by a namer, like /#/k8s/mesh/incoming/meshd; "
                             f"got {self.path!r}")

    def build(self, runtime: Runtime, namers: Mapping[Path, Namer]) -> DaemonSetTransformer:
        path = Path.read(self.path)
        namer = namer_for(path, namers)
        if namer is None:
            known = ", ".join(p.show() for p in namers) or "none"
            raise ValueError(f"daemonset transformer: no namer serves {self.path} (namer prefixes: {known})")
        return DaemonSetTransformer(path, namer.addr(path), self.fallback, release=lambda: namer.release(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalNodeConfig:
    """`kind: localnode` — keep only the replicas on this node."""

    KIND: ClassVar[str] = "localnode"
    node_name: str | None = None
    fallback: Literal["all", "none"] = "all"

    def __post_init__(self) -> None:
        if self.node_name is not None and not self.node_name.strip():
            raise ValueError("nodeName: must not be empty (leave it out to use $NODE_NAME)")

    def build(self, runtime: Runtime, namers: Mapping[Path, Namer]) -> LocalNodeTransformer:
        node = self.node_name or os.environ.get("NODE_NAME", "").strip()
        if not node:
            raise ValueError("localnode transformer: nodeName is not set and $NODE_NAME is empty "
                             "(set nodeName, or NODE_NAME from the downward API's spec.nodeName)")
        return LocalNodeTransformer(node, self.fallback)


TransformerKind = DaemonSetConfig | LocalNodeConfig

TRANSFORMERS: Final[dict[str, type[TransformerKind]]] = {
    "daemonset": DaemonSetConfig,
    "localnode": LocalNodeConfig,
}


# -- the rules, pure ----------------------------------------------------------------------------


def is_forwarded(address: Address) -> bool:
    """Whether `address` is another meshd that forwards to the replica (a gateway of a transformer)."""
    return any(key == VIA for key, _ in address.meta)


def through_daemons(
    replicas: frozenset[Address], daemons: frozenset[Address] | None, fallback: Literal["direct", "drop"]
) -> frozenset[Address]:
    """Replace every replica by the meshd(s) on its node; `daemons=None` means not known yet.

    A gateway's weight is the sum of the weights of the replicas it stands for, shared among
    the meshds of that node (two during a DaemonSet rollout with surge). Replicas without a node
    name, or on a node without a known meshd, follow `fallback`; while the daemon set is not
    known at all, `direct` sends to every replica directly and `drop` leaves none.
    """
    by_node: dict[str, list[Address]] = {}
    for daemon in daemons or ():
        if daemon.node_name:
            by_node.setdefault(daemon.node_name, []).append(daemon)
    weight_on: dict[str, float] = {}
    out: dict[tuple[str, int], Address] = {}
    for replica in replicas:
        node = replica.node_name
        if node is not None and node in by_node:
            weight_on[node] = weight_on.get(node, 0.0) + replica.weight
        elif fallback == "direct":
            out[replica.key] = replica
    for node, weight in weight_on.items():
        gateways = by_node[node]
        for daemon in gateways:
            meta = tuple(sorted({*daemon.meta, (VIA, DaemonSetConfig.KIND)}))
            gateway = Address(daemon.host, daemon.port, weight=weight / len(gateways), node_name=node,
                              zone=daemon.zone, meta=meta)
            out[gateway.key] = gateway
    return frozenset(out.values())


def on_node(replicas: frozenset[Address], node: str, fallback: Literal["all", "none"]) -> frozenset[Address]:
    """The replicas on `node`; when there are none, all of them (`all`) or none (`none`)."""
    local = frozenset(a for a in replicas if a.node_name == node)
    if local or fallback == "none":
        return local
    return replicas


def namer_for(path: Path, namers: Mapping[Path, Namer]) -> Namer | None:
    """The namer with the longest prefix of `path` (the rule the router uses for clients)."""
    best: tuple[int, Namer] | None = None
    for prefix, namer in namers.items():
        if path.starts_with(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), namer)
    return best[1] if best is not None else None


# -- the observable plumbing --------------------------------------------------------------------


class _Mapped:
    """One client's output: `rule(Bound set)` of its input, recomputed on input or `refresh()`."""

    __slots__ = ("source", "output", "_rule", "_unsubscribe")

    def __init__(self, source: Observable[Addr], rule: Callable[[frozenset[Address]], frozenset[Address]]) -> None:
        self.source = source
        self._rule = rule
        self.output: Observable[Addr] = Observable(self._compute(source.get()))
        self._unsubscribe = source.subscribe(self._on_source, replay=False)

    def close(self) -> None:
        """Stop following the source (its client is gone), so the source can be released."""
        self._unsubscribe()

    def refresh(self) -> None:
        self._on_source(self.source.get())

    def _on_source(self, addr: Addr) -> None:
        value = self._compute(addr)
        if value != self.output.get():
            self.output.set(value)

    def _compute(self, addr: Addr) -> Addr:
        return Bound(self._rule(addr.addresses)) if isinstance(addr, Bound) else addr


class _MappedOutputs:
    """What a transformer keeps per client: the mapped address set it handed out, until released."""

    def __init__(self) -> None:
        self._clients: dict[Observable[Addr], _Mapped] = {}

    def _track(self, mapped: _Mapped) -> Observable[Addr]:
        self._clients[mapped.output] = mapped
        return mapped.output

    def release(self, id: Path, output: Observable[Addr]) -> None:
        mapped = self._clients.pop(output, None)
        if mapped is not None:
            mapped.close()


@dataclass(frozen=True, slots=True)
class DaemonSetStatistics:
    """What a daemonset transformer knows: its daemon set and how many clients it rewrites."""

    path: str
    known: bool
    daemons: tuple[str, ...]
    nodes: tuple[str, ...]
    clients: int


class DaemonSetTransformer(_MappedOutputs):
    """See `DaemonSetConfig` and the module docstring."""

    def __init__(
        self,
        path: Path,
        daemons: Observable[Addr],
        fallback: Literal["direct", "drop"],
        *,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.fallback: Literal["direct", "drop"] = fallback
        self._daemons: frozenset[Address] | None = None
        super().__init__()  # every client's mapping, by its output (an Observable hashes by identity)
        self._unsubscribe = daemons.subscribe(self._on_daemons)
        self._release = release

    def transform(self, id: Path, addr: Observable[Addr]) -> Observable[Addr]:
        mapped = _Mapped(addr, lambda replicas: through_daemons(replicas, self._daemons, self.fallback))
        return self._track(mapped)

    def statistics(self) -> DaemonSetStatistics:
        daemons = self._daemons or frozenset()
        return DaemonSetStatistics(
            path=self.path.show(),
            known=self._daemons is not None,
            daemons=tuple(sorted(a.show() for a in daemons)),
            nodes=tuple(sorted({a.node_name for a in daemons if a.node_name})),
            clients=len(self._clients),
        )

    def close(self) -> None:
        self._unsubscribe()
        if self._release is not None:
            self._release()  # the daemon set's own watch
            self._release = None

    def _on_daemons(self, addr: Addr) -> None:
        if isinstance(addr, Bound):
            daemons = addr.addresses
        elif isinstance(addr, Neg):
            daemons = frozenset()
        else:
            return  # Pending / Failed: keep the last known daemons, as clients keep their replicas
        if daemons == self._daemons:
            return
        unnamed = sorted(a.show() for a in daemons if not a.node_name)
        if unnamed:
            log.warning("daemonset %s: daemons without a node name are ignored: %s", self.path.show(), unnamed)
        if not daemons:
            log.warning("daemonset %s: no meshd daemons known; replicas are %s", self.path.show(),
                        "sent to directly" if self.fallback == "direct" else "unreachable (fallback: drop)")
        self._daemons = daemons
        for client in list(self._clients.values()):
            client.refresh()

    def __repr__(self) -> str:
        known = "unknown" if self._daemons is None else len(self._daemons)
        return f"<DaemonSetTransformer {self.path.show()} daemons={known} clients={len(self._clients)}>"


class LocalNodeTransformer(_MappedOutputs):
    """See `LocalNodeConfig` and the module docstring."""

    def __init__(self, node: str, fallback: Literal["all", "none"]) -> None:
        self.node = node
        self.fallback: Literal["all", "none"] = fallback
        super().__init__()

    def transform(self, id: Path, addr: Observable[Addr]) -> Observable[Addr]:
        remote_only = False

        def rule(replicas: frozenset[Address]) -> frozenset[Address]:
            nonlocal remote_only
            local = on_node(replicas, self.node, self.fallback)
            now_remote_only = bool(replicas) and not any(a.node_name == self.node for a in replicas)
            if now_remote_only != remote_only:
                remote_only = now_remote_only
                if remote_only:
                    log.info("localnode: no replica of %s on node %s; %s", id.show(), self.node,
                             "using the other nodes' replicas" if self.fallback == "all" else "none is used")
                else:
                    log.info("localnode: %s has replicas on node %s again", id.show(), self.node)
            return local

        mapped = _Mapped(addr, rule)
        return self._track(mapped)

    def __repr__(self) -> str:
        return f"<LocalNodeTransformer node={self.node} fallback={self.fallback}>"
