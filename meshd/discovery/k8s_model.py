"""Pure translation of Kubernetes discovery objects (EndpointSlices, Endpoints, Services) into
meshd address sets, with no I/O: the k8s namer's rules in one testable place.

How this works: an EndpointSlice, or each subset of a core/v1 Endpoints object, becomes an
`EndpointGroup` (endpoints that share one port list). `resolve()` takes the port label of a
name (`http` or `8080`), the Service (or None) and every group of the service, and answers
`Bound(addresses)` or `NEG`, following linkerd 1's `io.l5d.k8s`:

* a port *name* is looked up among the groups' ports, which carry the Service port's name and
  the resolved container port number (README §3); an unknown name is NEG;
* a port *number* is a Service port: it maps through `spec.ports[].port -> targetPort`, to the
  group port of the same Service port name (a named targetPort may resolve to different numbers
  in different groups) or, failing that, to a numeric targetPort; no such Service port is NEG;
* only ready endpoints are used: `conditions.ready` true or absent ("unknown means ready") and
  not terminating. Addresses are deduplicated by (ip, port) across groups, because an endpoint
  moving between slices may briefly appear in both.

Input is untrusted JSON: anything of the wrong shape raises `MalformedObject`, never a
KeyError or TypeError, so one bad object cannot break a watch loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from meshd.discovery.addr import NEG, Address, Bound, Neg

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PORT_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")


class MalformedObject(ValueError):
    """A Kubernetes object that does not have the shape the API guarantees."""


@dataclass(frozen=True, slots=True)
class GroupPort:
    """A port of an EndpointSlice/subset: named after the Service port, numbered by the pod."""

    name: str
    port: int | None
    protocol: str


@dataclass(frozen=True, slots=True)
class GroupEndpoint:
    address: str
    ready: bool
    node_name: str | None = None
    zone: str | None = None
    pod: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """Endpoints sharing one port list: one EndpointSlice, or one subset of an Endpoints object."""

    endpoints: tuple[GroupEndpoint, ...]
    ports: tuple[GroupPort, ...]

    def port_number(self, name: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == "TCP":
                return p.port
        return None


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class ServiceName:
    """The id part of a k8s name: `/<namespace>/<port>/<service>`, lower-cased."""

    namespace: str
    port: str
    service: str


def parse_service_name(labels: Iterable[str]) -> ServiceName | None:
    """The first three labels as a ServiceName, or None when they cannot name a Kubernetes service.

    Names are lower-cased as linkerd did; a namespace/service must be a DNS label and a port a
    number (1-65535) or an IANA service name, so nonsense never reaches the API server.
    """
    first = [label.lower() for label in list(labels)[:3]]
    if len(first) < 3:
        return None
    namespace, port, service = first
    if not (_DNS_LABEL.fullmatch(namespace) and _DNS_LABEL.fullmatch(service)):
        return None
    if port.isdigit():
        if not 0 < int(port) < 65536:
            return None
    elif not (_PORT_NAME.fullmatch(port) and any(c.isalpha() for c in port)):
        return None
    return ServiceName(namespace, port, service)


def object_name(raw: Mapping[str, object]) -> str:
    name = _mapping(raw.get("metadata"), "metadata").get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject("object without metadata.name")
    return name


def resource_version(raw: Mapping[str, object]) -> str | None:
    meta = raw.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) and rv else None


def parse_endpoint_slice(raw: Mapping[str, object]) -> tuple[EndpointGroup, ...]:
    """An EndpointSlice as one group. `endpoints`/`ports` may be null (Service scaled to zero)."""
    _check_kind(raw, "EndpointSlice")
    endpoints: list[GroupEndpoint] = []
    for ep in _list(raw.get("endpoints"), "endpoints"):
        ep = _mapping(ep, "endpoint")
        addresses = _list(ep.get("addresses"), "addresses")
        if not addresses or not isinstance(addresses[0], str):
            raise MalformedObject("endpoint without addresses")
        cond = _mapping(ep.get("conditions") or {}, "conditions")
        ready, terminating = cond.get("ready"), cond.get("terminating")
        if not isinstance(ready, bool | None) or not isinstance(terminating, bool | None):
            raise MalformedObject("endpoint conditions must be booleans")
        endpoints.append(
            GroupEndpoint(
                address=addresses[0],
                # README §5: nil `ready` means unknown, treat as ready; terminating is never used.
                ready=ready is not False and terminating is not True,
                node_name=_opt_str(ep.get("nodeName")),
                zone=_opt_str(ep.get("zone")),
                pod=_pod_name(ep.get("targetRef")),
            )
        )
    return (EndpointGroup(tuple(endpoints), _ports(raw.get("ports"))),)


def parse_endpoints(raw: Mapping[str, object]) -> tuple[EndpointGroup, ...]:
    """A core/v1 Endpoints object: one group per subset; `notReadyAddresses` are not ready."""
    _check_kind(raw, "Endpoints")
    groups: list[EndpointGroup] = []
    for subset in _list(raw.get("subsets"), "subsets"):
        subset = _mapping(subset, "subset")
        endpoints: list[GroupEndpoint] = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in _list(subset.get(key), key):
                a = _mapping(a, "address")
                ip = a.get("ip")
                if not isinstance(ip, str) or not ip:
                    raise MalformedObject("address without ip")
                endpoints.append(GroupEndpoint(ip, ready, _opt_str(a.get("nodeName")), None,
                                               _pod_name(a.get("targetRef"))))
        groups.append(EndpointGroup(tuple(endpoints), _ports(subset.get("ports"))))
    return tuple(groups)


def parse_service(raw: Mapping[str, object]) -> ServiceSpec:
    _check_kind(raw, "Service")
    spec = _mapping(raw.get("spec") or {}, "spec")
    ports: list[ServicePort] = []
    for p in _list(spec.get("ports"), "spec.ports"):
        p = _mapping(p, "service port")
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool):
            raise MalformedObject("service port without a number")
        target = p.get("targetPort", number)
        if not isinstance(target, int | str) or isinstance(target, bool):
            raise MalformedObject("targetPort must be an int or a string")
        ports.append(ServicePort(_opt_str(p.get("name")) or "", number, target,
                                 _opt_str(p.get("protocol")) or "TCP"))
    return ServiceSpec(tuple(ports))


def resolve(port: str, service: ServiceSpec | None, groups: Iterable[EndpointGroup]) -> Bound | Neg:
    """The ready addresses for a port label, or NEG when the service or port does not exist."""
    groups = list(groups)
    if port.isdigit():
        if service is None:
            return NEG
        number = int(port)
        svc_port = next((p for p in service.ports if p.port == number and p.protocol == "TCP"), None)
        if svc_port is None:
            return NEG
        fallback = svc_port.target_port if isinstance(svc_port.target_port, int) else None
        return Bound(_addresses(groups, lambda g: _or(g.port_number(svc_port.name), fallback)))
    known = any(p.name == port for p in service.ports) if service is not None else False
    if not known and not any(g.port_number(port) is not None for g in groups):
        return NEG
    return Bound(_addresses(groups, lambda g: g.port_number(port)))


def explain_negative(port: str, service: ServiceSpec | None, groups: Iterable[EndpointGroup]) -> str:
    """Why `resolve` answers NEG for this port label: for `l5d-err` and the delegator."""
    groups = list(groups)
    if service is None and not groups:
        return "no such Service (and no EndpointSlices for it)"
    if port.isdigit():
        if service is None:
            return f"port {port} is a number, which needs the Service to map it, and there is no Service"
        known = ", ".join(str(p.port) for p in service.ports if p.protocol == "TCP") or "none"
        return f"the Service has no TCP port {port} (its ports: {known})"
    names = sorted({p.name for p in service.ports if p.name} if service is not None else set())
    return f"no port named {port!r} on the Service or its endpoints (named ports: {', '.join(names) or 'none'})"


# ---------------------------------------------------------------------------------------------


def _addresses(groups: list[EndpointGroup], port_of: Callable[[EndpointGroup], int | None]) -> frozenset[Address]:
    found: dict[tuple[str, int], Address] = {}
    for group in groups:
        number = port_of(group)
        if number is None:
            continue
        for ep in group.endpoints:
            if ep.ready and (ep.address, number) not in found:
                meta = (("pod", ep.pod),) if ep.pod else ()
                found[(ep.address, number)] = Address(ep.address, number, node_name=ep.node_name, zone=ep.zone,
                                                      meta=meta)
    return frozenset(found.values())


def _or(a: int | None, b: int | None) -> int | None:
    return a if a is not None else b


def _ports(value: object) -> tuple[GroupPort, ...]:
    ports: list[GroupPort] = []
    for p in _list(value, "ports"):
        p = _mapping(p, "port")
        number = p.get("port")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise MalformedObject("port number must be an integer")
        ports.append(GroupPort(_opt_str(p.get("name")) or "", number, _opt_str(p.get("protocol")) or "TCP"))
    return tuple(ports)


def _check_kind(raw: Mapping[str, object], kind: str) -> None:
    """Watch events and GETs carry `kind`; list items do not (README §2), so absent is fine."""
    found = raw.get("kind")
    if found is not None and found != kind:
        raise MalformedObject(f"expected a {kind}, got kind {found!r}")


def _pod_name(ref: object) -> str | None:
    if isinstance(ref, Mapping) and ref.get("kind") == "Pod":
        return _opt_str(ref.get("name"))
    return None


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{what} must be an object")
    return value


def _list(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject(f"{what} must be a list or null")
    return value


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedObject("expected a string")
    return value or None
