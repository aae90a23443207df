"""FakeKubeApi: an in-process kube-apiserver for the discovery calls meshd makes, faithful enough
that the real `kubernetes_asyncio` client cannot tell it apart (see shared/k8s-api/README.md §11).

How this works: one global revision counter stamps every create/update/delete, exactly like
etcd's revision. Objects live in a dict keyed by (resource, namespace, name) and always carry
`kind`/`apiVersion` (lists strip them, GETs and watch events keep them). Every change is appended
to a bounded history; a watch from resourceVersion X replays the changes after X and then
receives live changes through its own queue. Registration and replay happen in one synchronous
step, so no change can fall between them. Watches are chunked responses, one compact JSON line
per event, ended cleanly after `timeoutSeconds`. A watch from an RV older than the history
window gets HTTP 200 and exactly one ERROR line (Status 410 Expired), as a real server does.

Tests drive it through a small Python API: `create/update/apply/delete` objects (the builders
`service()`, `endpoint_slice()`, `slice_endpoint()`, `endpoints()` and `config_map()` make
realistic ones; ConfigMaps are served under /api/v1 like Services and Endpoints, with the same
list, get, watch, selector, 410 and fault behaviour),
`compact()`, `inject_410()`, `send_bookmarks()`, `end_watches()`, `drop_watches()`,
`inject_line()`, `add_fault()` (403/500 Status, HTML body, dropped connection, stall, early EOF)
and `outage()` (the port refuses connections). Every request is recorded with its query and
headers. The server listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import pathlib
import random
import re
import ssl
import subprocess
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from meshd.observable import Observable

if TYPE_CHECKING:
    from kubernetes_asyncio.client import Configuration

DEFAULT_TOKEN: Final = "meshd-test-token"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
MANAGED_BY_LABEL: Final = "endpointslice.kubernetes.io/managed-by"
ENDPOINTS_WARNING: Final = '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'

JsonObject = dict[str, Any]
FaultAction = Literal["status", "html", "drop", "stall", "eof"]


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """One served resource type: its URL segment, group and the shape of its bookmark object."""

    resource: str
    kind: str
    api_version: str
    bookmark_fields: tuple[tuple[str, Any], ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


SERVICES: Final = ResourceKind("services", "Service", "v1", (("spec", {}), ("status", {"loadBalancer": {}})))
ENDPOINTS: Final = ResourceKind("endpoints", "Endpoints", "v1")
ENDPOINT_SLICES: Final = ResourceKind(
    "endpointslices",
    "EndpointSlice",
    "discovery.k8s.io/v1",
    (("addressType", ""), ("endpoints", None), ("ports", None)),
)
#: ConfigMaps (core/v1). `data` and `binaryData` are `omitempty` in the Go type, so a ConfigMap
#: without data has neither key, and its bookmark is just kind, apiVersion and metadata.
CONFIG_MAPS: Final = ResourceKind("configmaps", "ConfigMap", "v1")
_KINDS: Final = {k.resource: k for k in (SERVICES, ENDPOINTS, ENDPOINT_SLICES, CONFIG_MAPS)}
_BY_KIND: Final = {k.kind: k for k in (SERVICES, ENDPOINTS, ENDPOINT_SLICES, CONFIG_MAPS)}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server saw it (query values are the last of each name). `index` is its
    position in `FakeKubeApi.requests`, so equal-looking requests stay distinguishable."""

    index: int
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]

    @property
    def is_watch(self) -> bool:
        return parse_go_bool(self.query.get("watch", "false")) is True

    @property
    def resource_version(self) -> str | None:
        return self.query.get("resourceVersion")

    @property
    def resource(self) -> str | None:
        """The resource segment of a collection path (`endpointslices`, `services`, ...)."""
        parts = [p for p in self.path.split("/") if p]
        for name in reversed(parts):
            if name in _KINDS:
                return name
        return None


@dataclass(slots=True)
class Fault:
    """A scripted failure for the next matching requests.

    `status`: answer with a Status body of that code; `html`: a proxy's HTML error page (502);
    `drop`: close the TCP connection without an answer; `stall`: never answer (a watch gets its
    headers, then silence, ignoring timeoutSeconds); `eof`: a watch ends at once, cleanly.
    `times=None` keeps the fault until `clear_faults()`.
    """

    action: FaultAction
    status: int = 500
    resource: str | None = None
    watch: bool | None = None
    times: int | None = 1

    def matches(self, req: RecordedRequest) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.resource is not None and req.resource != self.resource:
            return False
        return self.watch is None or self.watch == req.is_watch


def parse_go_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: the Python client sends `watch=True`; None for anything else."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


class SelectorError(ValueError):
    """A label or field selector the server cannot parse."""


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    op: Literal["in", "notin", "exists", "!exists"]
    values: frozenset[str] = frozenset()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        value = labels.get(self.key)
        # `k!=v` and `notin` also match objects without the label, as in Kubernetes.
        return (value in self.values) == (self.op == "in")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed label selector: every requirement must hold."""

    requirements: tuple[_Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a)`, comma-separated."""
        reqs: list[_Requirement] = []
        for raw in _split_outside_parens(text):
            req = raw.strip()
            if not req:
                continue
            m = re.fullmatch(r"([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)", req)
            if m:
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append(_Requirement(m.group(1), "in" if m.group(2) == "in" else "notin", values))
                continue
            m = re.fullmatch(r"([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)", req)
            if m:
                reqs.append(_Requirement(m.group(1), "notin" if m.group(2) == "!=" else "in", frozenset([m.group(3)])))
                continue
            m = re.fullmatch(r"(!?)\s*([^\s!=(),]+)", req)
            if m:
                reqs.append(_Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
                continue
            raise SelectorError(f"unable to parse requirement: {req!r}")
        return cls(tuple(reqs))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.holds(labels) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A parsed field selector over `metadata.name` / `metadata.namespace` (`=`, `==`, `!=`)."""

    requirements: tuple[tuple[str, bool, str], ...]  # (metadata attribute, equal?, value)

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        reqs: list[tuple[str, bool, str]] = []
        for raw in text.split(","):
            req = raw.strip()
            if not req:
                continue
            m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", req)
            if not m:
                raise SelectorError(f"invalid field selector: {req!r}")
            if m.group(1) not in ("metadata.name", "metadata.namespace"):
                raise SelectorError(f'"{m.group(1)}" is not a known field selector: only "metadata.name", '
                                    f'"metadata.namespace"')
            reqs.append((m.group(1).split(".")[1], m.group(2) != "!=", m.group(3)))
        return cls(tuple(reqs))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        return all((meta.get(attr) == value) == equal for attr, equal, value in self.requirements)


def _split_outside_parens(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


# ---------------------------------------------------------------------------------------------
# Object builders: realistic objects, as the controllers would write them.


def service_port(
    name: str | None, port: int, target_port: int | str | None = None, *, protocol: str = "TCP"
) -> JsonObject:
    """A Service port; `targetPort` defaults to `port`, as the API server fills it in."""
    out: JsonObject = {}
    if name:
        out["name"] = name
    out["protocol"] = protocol
    out["port"] = port
    out["targetPort"] = port if target_port is None else target_port
    return out


def service(
    namespace: str,
    name: str,
    ports: Sequence[JsonObject],
    *,
    selector: Mapping[str, str] | None = None,
    cluster_ip: str = "10.96.0.10",
) -> JsonObject:
    spec: JsonObject = {"ports": [dict(p) for p in ports]}
    if selector is not None:
        spec["selector"] = dict(selector)
    spec.update(
        {
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        }
    )
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def slice_endpoint(
    ip: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = False,
    node_name: str | None = None,
    zone: str | None = None,
    pod: str | None = None,
    namespace: str = "default",
) -> JsonObject:
    """One EndpointSlice endpoint. `ready=None` omits the condition (meaning "unknown")."""
    conditions: JsonObject = {}
    if ready is not None:
        conditions["ready"] = ready
    if serving is None and ready is not None:
        serving = ready
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    out: JsonObject = {"addresses": [ip], "conditions": conditions}
    if pod is not None:
        out["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": pod, "uid": str(uuid.uuid4())}
    if node_name is not None:
        out["nodeName"] = node_name
    if zone is not None:
        out["zone"] = zone
    return out


def slice_port(name: str | None, port: int, *, protocol: str = "TCP") -> JsonObject:
    return {"name": name or "", "protocol": protocol, "port": port}


def endpoint_slice(
    namespace: str,
    service_name: str,
    *,
    name: str,
    endpoints: Sequence[JsonObject] = (),
    ports: Sequence[JsonObject] = (),
    address_type: str = "IPv4",
) -> JsonObject:
    """A controller-managed slice of `service_name` (label, managed-by, generateName)."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "generateName": f"{service_name}-",
            "namespace": namespace,
            "labels": {
                "app": service_name,
                MANAGED_BY_LABEL: "endpointslice-controller.k8s.io",
                SERVICE_NAME_LABEL: service_name,
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Service", "name": service_name, "uid": str(uuid.uuid4()),
                 "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "addressType": address_type,
        "endpoints": [dict(e) for e in endpoints],
        "ports": [dict(p) for p in ports],
    }


def endpoints(namespace: str, name: str, subsets: Sequence[JsonObject] = ()) -> JsonObject:
    """A core/v1 Endpoints object; no `subsets` key at all when there are none."""
    out: JsonObject = {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
    }
    if subsets:
        out["subsets"] = [dict(s) for s in subsets]
    return out


def config_map(
    namespace: str,
    name: str,
    data: Mapping[str, str] | None = None,
    *,
    binary_data: Mapping[str, bytes] | None = None,
    labels: Mapping[str, str] | None = None,
) -> JsonObject:
    """A core/v1 ConfigMap, as the API server returns it: `data` (text values) and `binaryData`
    (base64 of bytes) are left out when empty (`omitempty`), never sent as null or {}."""
    out: JsonObject = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, **({"labels": dict(labels)} if labels else {})},
    }
    if data:
        out["data"] = dict(data)
    if binary_data:
        out["binaryData"] = {k: base64.b64encode(v).decode("ascii") for k, v in binary_data.items()}
    return out


def endpoint_subset(
    ready: Iterable[str], ports: Sequence[JsonObject], *, not_ready: Iterable[str] = (), node_name: str | None = None
) -> JsonObject:
    def addr(ip: str) -> JsonObject:
        return {"ip": ip, "nodeName": node_name} if node_name else {"ip": ip}

    out: JsonObject = {}
    ready_list = [addr(ip) for ip in ready]
    not_ready_list = [addr(ip) for ip in not_ready]
    if ready_list:
        out["addresses"] = ready_list
    if not_ready_list:
        out["notReadyAddresses"] = not_ready_list
    out["ports"] = [{k: v for k, v in p.items() if v != "" or k != "name"} for p in ports]
    return out


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1, to serve the API over TLS as a
    cluster does (the in-cluster client always uses https and the service-account CA)."""

    ca_cert: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path

    @classmethod
    def create(cls, directory: pathlib.Path) -> TlsFiles:
        """Generate the files with the openssl command line (EC keys: fast)."""
        d = directory
        (d / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for cmd in (
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=meshd-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
        ):
            subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True, timeout=30)
        return cls(d / "ca.crt", d / "server.crt", d / "server.key")

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        return ctx


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change:
    revision: int
    kind: ResourceKind
    old: JsonObject | None
    new: JsonObject | None


@dataclass(eq=False, slots=True)
class _Watcher:
    kind: ResourceKind
    namespace: str | None
    matches: Callable[[JsonObject], bool]
    bookmarks: bool
    transport: asyncio.Transport | None
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def event_for(self, change: _Change) -> bytes | None:
        """The line this watcher sees for a change, after namespace and selector filtering."""
        old_match = change.old is not None and self._visible(change.old)
        new_match = change.new is not None and self._visible(change.new)
        if new_match and change.new is not None:
            return _event_line("MODIFIED" if old_match else "ADDED", change.new)
        if old_match and change.old is not None:
            gone = copy.deepcopy(change.old)
            gone["metadata"]["resourceVersion"] = str(change.revision)
            return _event_line("DELETED", gone)
        return None

    def _visible(self, obj: JsonObject) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.matches(obj)


class FakeKubeApi:
    """The fake API server. Use as `async with FakeKubeApi() as api:`."""

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        history_size: int = 1000,
        serve_endpoint_slices: bool = True,
        empty_slices_as_null: bool = True,
        default_watch_timeout_secs: float = 1800.0,
        bookmark_interval_secs: float | None = None,
        chunk_size: int | None = None,
        endpoints_deprecation_warning: bool = False,
        initial_revision: int = 184400,
        seed: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.token = token
        self.ssl_context = ssl_context
        self.serve_endpoint_slices = serve_endpoint_slices
        self.empty_slices_as_null = empty_slices_as_null
        self.default_watch_timeout_secs = default_watch_timeout_secs
        self.bookmark_interval_secs = bookmark_interval_secs
        self.chunk_size = chunk_size
        self.endpoints_deprecation_warning = endpoints_deprecation_warning
        self.open_watches: Observable[int] = Observable(0)
        self._revision = initial_revision
        self._compacted = initial_revision
        self._history: deque[_Change] = deque(maxlen=history_size)
        self._objects: dict[tuple[str, str, str], JsonObject] = {}
        self._watchers: set[_Watcher] = set()
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._request_seen: Observable[int] = Observable(0)
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._port = 0
        self._in_outage = False
        self._closed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up cancels its watch handler at once, so
        # `open_watches` drops without waiting for the next write to fail.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await self._listen()

    async def close(self) -> None:
        self._closed.set()
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    def kubeconfig(self, *, token: str | None = None, namespace: str = "default") -> JsonObject:
        """A kubeconfig dict for `load_kube_config_from_dict()` (or to write to a file)."""
        user: JsonObject = {"token": token or self.token or "unused"}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "meshd", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "meshd", "namespace": namespace}}],
            "current-context": "fake",
        }

    async def client_configuration(self) -> Configuration:
        """A kubernetes_asyncio Configuration pointed at this server, via load_kube_config_from_dict."""
        from kubernetes_asyncio import client, config

        conf = client.Configuration()
        await config.load_kube_config_from_dict(self.kubeconfig(), client_configuration=conf)
        return conf

    # -- objects ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, resource: str, namespace: str, name: str) -> JsonObject | None:
        obj = self._objects.get((resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, obj: Mapping[str, Any]) -> JsonObject:
        kind, key = self._key(obj)
        if key in self._objects:
            raise ValueError(f"{kind.resource} {key[1]}/{key[2]} already exists")
        return self._commit(kind, key, obj)

    def update(self, obj: Mapping[str, Any]) -> JsonObject:
        kind, key = self._key(obj)
        if key not in self._objects:
            raise KeyError(f"{kind.resource} {key[1]}/{key[2]} not found")
        return self._commit(kind, key, obj)

    def apply(self, obj: Mapping[str, Any]) -> JsonObject:
        """Create or replace."""
        kind, key = self._key(obj)
        return self._commit(kind, key, obj)

    def delete(self, resource: str, namespace: str, name: str) -> JsonObject:
        kind = _KINDS[resource]
        key = (resource, namespace, name)
        old = self._objects.pop(key)
        self._record(_Change(self._next_revision(), kind, old, None))
        return copy.deepcopy(old)

    def load_fixture(self, document: Mapping[str, Any]) -> list[JsonObject]:
        """Create every object of a fixture (a `<Kind>List` whose items lack kind, or one object)."""
        kind_name = str(document.get("kind", ""))
        if kind_name.endswith("List"):
            kind = _BY_KIND[kind_name[: -len("List")]]
            items = [{"kind": kind.kind, "apiVersion": kind.api_version, **item} for item in document["items"]]
        else:
            items = [dict(document)]
        return [self.apply(item) for item in items]

    # -- history and watch control ------------------------------------------------------------

    def compact(self, to_revision: int | None = None) -> None:
        """Forget history up to `to_revision` (default: now); older watches get 410 Expired."""
        target = self._revision if to_revision is None else to_revision
        self._compacted = max(self._compacted, target)
        while self._history and self._history[0].revision <= self._compacted:
            self._history.popleft()

    def inject_410(self) -> int:
        """Send an ERROR 410 line to every open watch and end it (as an etcd-served watch may)."""
        line = _event_line("ERROR", _status_body(410, "Expired", f"too old resource version: {self._compacted} "
                                                                 f"({self._compacted + 1})"))
        return self._broadcast(lambda w: line, end=True)

    def send_bookmarks(self) -> int:
        """A BOOKMARK with the current revision to every open watch that allowed bookmarks."""
        return self._broadcast(lambda w: _event_line("BOOKMARK", self._bookmark(w.kind)) if w.bookmarks else None)

    def end_watches(self) -> int:
        """End every open watch cleanly (a server restart or timeoutSeconds reached)."""
        return self._broadcast(lambda w: None, end=True)

    def drop_watches(self) -> int:
        """Abort the TCP connection of every open watch, mid-stream."""
        count = 0
        for w in list(self._watchers):
            if w.transport is not None:
                w.transport.abort()
                count += 1
        return count

    def inject_line(self, line: bytes) -> int:
        """Write raw bytes (say a malformed event) into every open watch."""
        return self._broadcast(lambda w: line)

    def add_fault(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self._faults.clear()

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """While inside, the API is unreachable: connections are refused and open ones are cut."""
        self._in_outage = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_watches()
        try:
            yield
        finally:
            self._in_outage = False
            if not self._closed.is_set():
                await self._listen()

    # -- recorded requests --------------------------------------------------------------------

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        return tuple(self._requests)

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool], *, after: int = 0
    ) -> RecordedRequest:
        """The first recorded request at index >= `after` that satisfies `predicate` (waits)."""
        while True:
            for req in self._requests[after:]:
                if predicate(req):
                    return req
            after = len(self._requests)
            await self._request_seen.wait_changed()

    # -- internals: store ---------------------------------------------------------------------

    def _key(self, obj: Mapping[str, Any]) -> tuple[ResourceKind, tuple[str, str, str]]:
        kind = _BY_KIND[str(obj["kind"])]
        meta = obj["metadata"]
        return kind, (kind.resource, str(meta.get("namespace") or "default"), str(meta["name"]))

    def _commit(self, kind: ResourceKind, key: tuple[str, str, str], obj: Mapping[str, Any]) -> JsonObject:
        new: JsonObject = json.loads(json.dumps(obj))
        new["kind"], new["apiVersion"] = kind.kind, kind.api_version
        old = self._objects.get(key)
        meta = new["metadata"]
        meta["namespace"] = key[1]
        revision = self._next_revision()
        meta["resourceVersion"] = str(revision)
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.UUID(int=self._rng.getrandbits(128), version=4)))
            meta.setdefault("creationTimestamp", _now())
        if kind is ENDPOINT_SLICES:
            empty: list[Any] | None = None if self.empty_slices_as_null else []
            for list_field in ("endpoints", "ports"):
                if not new.get(list_field):
                    new[list_field] = empty
        self._objects[key] = new
        self._record(_Change(revision, kind, old, new))
        return copy.deepcopy(new)

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _record(self, change: _Change) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].revision
        self._history.append(change)
        for w in list(self._watchers):
            if w.kind is change.kind:
                line = w.event_for(change)
                if line is not None:
                    w.queue.put_nowait(line)

    def _broadcast(self, line_for: Callable[[_Watcher], bytes | None], *, end: bool = False) -> int:
        count = 0
        for w in list(self._watchers):
            line = line_for(w)
            if line is not None:
                w.queue.put_nowait(line)
            if end:
                w.queue.put_nowait(None)
            count += 1
        return count

    def _bookmark(self, kind: ResourceKind) -> JsonObject:
        obj: JsonObject = {
            "kind": kind.kind,
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._revision), "creationTimestamp": None},
        }
        obj.update({k: copy.deepcopy(v) for k, v in kind.bookmark_fields})
        return obj

    async def _listen(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._runner.server, "127.0.0.1", self._port, ssl=self.ssl_context)
        self._port = self._server.sockets[0].getsockname()[1]

    # -- internals: HTTP ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = RecordedRequest(
            index=len(self._requests),
            method=request.method,
            path=request.path,
            query={k: v for k, v in request.query.items()},
            headers={k: v for k, v in request.headers.items()},
        )
        self._requests.append(rec)
        self._request_seen.set(len(self._requests))
        if self._in_outage:
            return await self._drop(request)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status_response(401, "Unauthorized", "Unauthorized")
        fault = next((f for f in self._faults if f.matches(rec)), None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
            return await self._apply_fault(fault, rec, request)
        if request.method != "GET":
            return _status_response(405, "MethodNotAllowed", f"the server does not allow this method on the "
                                                             f"requested resource ({request.method})")
        return await self._route(rec, request)

    async def _route(self, rec: RecordedRequest, request: web.Request) -> web.StreamResponse:
        parts = [p for p in rec.path.split("/") if p]
        if parts == ["version"]:
            return _json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-meshd-fake"})
        if parts[:2] == ["api", "v1"]:
            group_kinds: tuple[ResourceKind, ...] = (SERVICES, ENDPOINTS, CONFIG_MAPS)
            rest = parts[2:]
        elif parts[:3] == ["apis", "discovery.k8s.io", "v1"] and self.serve_endpoint_slices:
            group_kinds = (ENDPOINT_SLICES,)
            rest = parts[3:]
        else:
            return _not_found()
        if not rest:
            group_version = "v1" if parts[0] == "api" else "discovery.k8s.io/v1"
            return _json_response(_resource_list(group_version, group_kinds))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = _KINDS.get(rest[0])
        if kind is None or kind not in group_kinds or len(rest) > 2:
            return _not_found()
        if len(rest) == 2:
            if namespace is None:
                return _not_found()
            return self._get_one(kind, namespace, rest[1])
        try:
            matches = _selector(rec.query)
        except SelectorError as exc:
            return _status_response(400, "BadRequest", str(exc))
        watch = parse_go_bool(rec.query.get("watch", "false"))
        if watch is None:
            return _status_response(400, "BadRequest", f"invalid boolean value for watch: {rec.query['watch']!r}")
        if watch:
            return await self._watch(kind, namespace, matches, rec, request)
        return self._list(kind, namespace, matches, rec)

    def _get_one(self, kind: ResourceKind, namespace: str, name: str) -> web.StreamResponse:
        obj = self._objects.get((kind.resource, namespace, name))
        if obj is None:
            plural = kind.resource if kind.group == "" else f"{kind.resource}.{kind.group}"
            return _status_response(404, "NotFound", f'{plural} "{name}" not found',
                                    details={"name": name, "group": kind.group or None, "kind": kind.resource})
        return self._with_warning(kind, _json_response(obj))

    def _matching(self, kind: ResourceKind, namespace: str | None,
                  matches: Callable[[JsonObject], bool]) -> list[JsonObject]:
        found = [o for (res, ns, _), o in self._objects.items()
                 if res == kind.resource and (namespace is None or ns == namespace) and matches(o)]
        return sorted(found, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    def _list(self, kind: ResourceKind, namespace: str | None, matches: Callable[[JsonObject], bool],
              rec: RecordedRequest) -> web.StreamResponse:
        items = self._matching(kind, namespace, matches)
        list_rv = self._revision
        token = rec.query.get("continue")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, start = int(decoded["rv"]), str(decoded["start"])
            except (ValueError, KeyError, TypeError):
                return _status_response(400, "BadRequest", "continue key is not valid")
            if list_rv < self._compacted:
                return _status_response(410, "Expired", "The provided continue parameter is too old to display a "
                                        "consistent list result. You can start a new list without the continue "
                                        "parameter.")
            items = [o for o in items if _sort_key(o) > start]
        meta: JsonObject = {"resourceVersion": str(list_rv)}
        limit = _int_param(rec.query, "limit")
        if limit is None:
            return _status_response(400, "BadRequest", f"invalid limit: {rec.query['limit']!r}")
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"v": "meta.k8s.io/v1", "rv": list_rv, "start": _sort_key(items[-1])}).encode()
            ).decode()
            meta["remainingItemCount"] = remaining
        body = {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items],
        }
        return self._with_warning(kind, _json_response(body))

    async def _watch(self, kind: ResourceKind, namespace: str | None, matches: Callable[[JsonObject], bool],
                     rec: RecordedRequest, request: web.Request) -> web.StreamResponse:
        bookmarks = parse_go_bool(rec.query.get("allowWatchBookmarks", "false")) is True
        seconds = _int_param(rec.query, "timeoutSeconds")
        if seconds is None:
            return _status_response(400, "BadRequest", f"invalid timeoutSeconds: {rec.query['timeoutSeconds']!r}")
        timeout = seconds or self.default_watch_timeout_secs  # 0 is "unset"
        rv = rec.query.get("resourceVersion") or "0"
        if not rv.isdigit():
            return _status_response(400, "BadRequest", f"invalid resource version: {rv!r}")
        watcher = _Watcher(kind, namespace, matches, bookmarks, request.transport)
        if rv == "0":
            for obj in self._matching(kind, namespace, matches):
                watcher.queue.put_nowait(_event_line("ADDED", obj))
        elif int(rv) < self._compacted:
            message = f"too old resource version: {rv} ({self._compacted + 1})"
            watcher.queue.put_nowait(_event_line("ERROR", _status_body(410, "Expired", message)))
            watcher.queue.put_nowait(None)
        else:
            for change in self._history:
                if change.revision > int(rv) and change.kind is kind:
                    replayed = watcher.event_for(change)
                    if replayed is not None:
                        watcher.queue.put_nowait(replayed)
        self._watchers.add(watcher)
        self.open_watches.set(len(self._watchers))
        if self._closed.is_set():
            # close() already ended the watches it knew of; one whose handler got here after that
            # must end too, or the runner's cleanup waits for it until the watch times out.
            watcher.queue.put_nowait(None)
        elif self._in_outage and request.transport is not None:
            # The same race with outage(): a connection accepted just before it began is cut too.
            request.transport.abort()
        try:
            resp = self._with_warning(kind, web.StreamResponse(status=200, headers={"Content-Type": "application/json"}))
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await self._pump(watcher, resp, timeout)
            return resp
        finally:
            self._watchers.discard(watcher)
            self.open_watches.set(len(self._watchers))

    async def _pump(self, watcher: _Watcher, resp: web.StreamResponse, timeout: float) -> None:
        """Write queued lines until the timeout, an end marker, or the client hanging up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval_secs if self.bookmark_interval_secs else None
        try:
            while True:
                wake = deadline if next_bookmark is None else min(deadline, next_bookmark)
                try:
                    async with asyncio.timeout_at(wake):
                        first: bytes | None = await watcher.queue.get()
                except TimeoutError:
                    # Woken for a bookmark rather than the deadline (compare the wake-up we asked
                    # for, not the clock: uvloop's millisecond timers can fire a hair early).
                    if next_bookmark is not None and wake == next_bookmark and next_bookmark < deadline:
                        next_bookmark = loop.time() + (self.bookmark_interval_secs or 0)
                        if watcher.bookmarks:
                            await self._write(resp, _event_line("BOOKMARK", self._bookmark(watcher.kind)))
                        continue
                    break
                # Coalesce whatever is queued into one write, as the real server flushes only
                # when its queue is empty; an end marker (None) stops the stream after it.
                lines: list[bytes] = []
                end = False
                item = first
                while True:
                    if item is None:
                        end = True
                        break
                    lines.append(item)
                    if watcher.queue.empty():
                        break
                    item = watcher.queue.get_nowait()
                if lines:
                    await self._write(resp, b"".join(lines))
                if end:
                    break
            await resp.write_eof()
        except ConnectionError:
            # The client went away mid-write (aiohttp's ClientConnectionResetError); nothing to do.
            return

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        if not self.chunk_size:
            await resp.write(data)
            return
        for i in range(0, len(data), self.chunk_size):
            await resp.write(data[i : i + self.chunk_size])

    async def _apply_fault(self, fault: Fault, rec: RecordedRequest, request: web.Request) -> web.StreamResponse:
        if fault.action == "status":
            return _fault_status(fault.status, rec)
        if fault.action == "html":
            return web.Response(status=502, text=_HTML_502, content_type="text/html")
        if fault.action == "drop":
            return await self._drop(request)
        if fault.action == "stall":
            if rec.is_watch:
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
            await self._closed.wait()
            raise asyncio.CancelledError
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # The abort makes aiohttp cancel this handler (handler_cancellation); wait for that.
        await self._closed.wait()
        raise asyncio.CancelledError

    def _with_warning(self, kind: ResourceKind, resp: web.StreamResponse) -> web.StreamResponse:
        if self.endpoints_deprecation_warning and kind is ENDPOINTS:
            resp.headers["Warning"] = ENDPOINTS_WARNING
        return resp


_HTML_502: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_REASONS: Final = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
                   409: "AlreadyExists", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
                   503: "ServiceUnavailable", 504: "Timeout"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer query parameter (absent or empty: 0); None when invalid."""
    text = query.get(name, "") or "0"
    return int(text) if text.isdigit() else None


def _sort_key(obj: JsonObject) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


@dataclass(frozen=True, slots=True)
class _Selector:
    labels: LabelSelector
    fields: FieldSelector

    def __call__(self, obj: JsonObject) -> bool:
        return self.labels.matches(obj["metadata"].get("labels") or {}) and self.fields.matches(obj)


def _selector(query: Mapping[str, str]) -> _Selector:
    return _Selector(LabelSelector.parse(query.get("labelSelector", "")),
                     FieldSelector.parse(query.get("fieldSelector", "")))


def _event_line(event_type: str, obj: JsonObject) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _status_body(code: int, reason: str, message: str, details: JsonObject | None = None) -> JsonObject:
    body: JsonObject = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason}
    if details is not None:
        body["details"] = {k: v for k, v in details.items() if v is not None}
    body["code"] = code
    return body


def _json_response(body: JsonObject, status: int = 200) -> web.Response:
    text = json.dumps(body, separators=(",", ":")) + "\n"
    return web.Response(status=status, text=text, content_type="application/json")


def _status_response(code: int, reason: str, message: str, details: JsonObject | None = None) -> web.Response:
    return _json_response(_status_body(code, reason, message, details), status=code)


def _not_found() -> web.Response:
    return _status_response(404, "NotFound", "the server could not find the requested resource", details={})


def _fault_status(code: int, rec: RecordedRequest) -> web.Response:
    reason = _REASONS.get(code, "InternalError")
    if code == 403:
        resource = rec.resource or "resources"
        kind = _KINDS.get(resource)
        group = kind.group if kind is not None else ""
        plural = f"{resource}.{group}" if group else resource
        verb = "watch" if rec.is_watch else "list"
        parts = [p for p in rec.path.split("/") if p]
        ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
        message = (f'{plural} is forbidden: User "system:serviceaccount:mesh:meshd" cannot {verb} resource '
                   f'"{resource}" in API group "{group}" in the namespace "{ns}"')
        return _status_response(403, reason, message, details={"group": group, "kind": resource})
    if code == 500:
        return _status_response(500, reason, "Internal error occurred: etcdserver: request timed out")
    if code == 504:
        return _status_response(504, reason, "Timeout: request did not complete within the allowed duration")
    return _status_response(code, reason, f"injected failure {code}")


def _resource_list(group_version: str, kinds: Sequence[ResourceKind]) -> JsonObject:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": k.resource, "singularName": k.kind.lower(), "namespaced": True, "kind": k.kind,
             "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}
            for k in kinds
        ],
    }
