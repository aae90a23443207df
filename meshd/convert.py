"""`meshd convert linkerd.yaml`: a linkerd 1 config translated into a meshd.yaml, and what was not.

The input is a linkerd 1 config file, or a Kubernetes manifest that carries one in a ConfigMap
(the linkerd examples ship them that way; the first ConfigMap value with `routers:` is used).
What carries over, and how:

* `admin` (ip, port); `namers` of kind `io.l5d.k8s` (prefix `/io.l5d.k8s` becomes
  `/#/io.l5d.k8s`, so dtabs keep working; `host`/`port` of a `kubectl proxy` sidecar become
  `apiUrl`, except localhost:8001, where meshd uses the pod's service account instead) and
  `io.l5d.fs` (`rootDir`);
* `routers` of protocol `http` and `h2` (`protocol: h2`, HTTP/2 and gRPC): `label`, `servers`
  (ip, port), `dtab` (as written), the `identifier` kinds meshd has (`io.l5d.header.token`,
  `io.l5d.methodAndHost`, `io.l5d.path`, `io.l5d.static`; `io.l5d.header.path`, linkerd's h2
  identifier, becomes `grpc` on an h2 router with 1 or 2 segments, else `path`),
  `bindingTimeoutMs`, `bindingCache.idleTtlSecs`;
* `interpreter.transformers`: `io.l5d.k8s.daemonset` (namespace, port, service) becomes
  `daemonset` with `path: /#/<k8s namer>/<namespace>/<port>/<service>`, and
  `io.l5d.k8s.localnode` becomes `localnode`;
* `service` and `client` sections, old style (keys inline) or `kind: io.l5d.global` /
  `io.l5d.static` with `configs`: a config without `prefix` (or `prefix: /`) becomes the
  router's `service` / `client`, the others `services` / `clients` overrides with their prefix
  (`{name}` placeholders become `*`): `totalTimeoutMs`, `responseClassifier` (the `io.l5d.http.`
  and `io.l5d.h2.` kinds, and `io.l5d.h2.grpc.*` as meshd's `grpc.*`), `retries` (`budget`, `backoff`), `loadBalancer` (p2c, ewma, roundRobin),
  `failureAccrual` (consecutiveFailures, successRate, none, with their backoff),
  `requestAttemptTimeoutMs`.

Everything else is left out with a note saying what and why (other protocols, namerd,
telemetry, TLS, namer-level transformers, unknown kinds...). The result is checked with
meshd's own loader before it is printed, so it passes `meshd check`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig

_SILENT = {"experimental", "usage"}  # meaningless to meshd; dropped without a note
_IDENTIFIERS = {
    "io.l5d.header.token": ("header", ("header",)),
    "io.l5d.methodAndHost": ("methodAndHost", ()),
    "io.l5d.path": ("path", ("segments", "consume")),
    "io.l5d.static": ("static", ("path",)),
}
_CLASSIFIERS = {"nonRetryable5XX", "retryableRead5XX", "retryableIdempotent5XX", "allSuccessful"}
_GRPC_CLASSIFIERS = {"grpc.default", "grpc.retryableStatusCodes", "grpc.neverRetryable", "grpc.alwaysRetryable"}
_BALANCERS = {"p2c": ("maxEffort",), "ewma": ("maxEffort", "decayTimeMs"), "roundRobin": ()}
_ACCRUALS = {
    "io.l5d.consecutiveFailures": ("consecutiveFailures", ("failures",)),
    "io.l5d.successRate": ("successRate", ("successRate", "requests")),
    "none": ("none", ()),
}


class ConvertError(ValueError):
    """The input is not a linkerd 1 config meshd can read."""


@dataclass
class Conversion:
    """The meshd config (plain YAML data) and one note per thing left out or changed."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, source: str) -> str:
        head = [f"# meshd.yaml converted from {source} by `meshd convert`."]
        if self.notes:
            head.append("# What was not carried over, or was changed (check each one):")
            head.extend(f"#   - {note}" for note in self.notes)
        body = yaml.dump(self.config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
        return "\n".join(head) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (dtabs) as `|` blocks, as an operator would."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and all(line == line.rstrip() for line in value.split("\n")):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def find_linkerd_config(text: str) -> Mapping[str, Any]:
    """The linkerd config in `text`: the document itself, or a ConfigMap value holding it."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConvertError(f"not valid YAML: {exc}") from None
    for doc in documents:
        if isinstance(doc, Mapping) and "routers" in doc:
            return doc
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "ConfigMap":
            for value in (doc.get("data") or {}).values():
                try:
                    inner = yaml.safe_load(value) if isinstance(value, str) else None
                except yaml.YAMLError:
                    continue
                if isinstance(inner, Mapping) and "routers" in inner:
                    return inner
    raise ConvertError("no linkerd config found: expected a mapping with `routers`, or a ConfigMap holding one")


def convert(text: str) -> Conversion:
    """Translate; raises ConvertError when there is nothing to translate."""
    linkerd = find_linkerd_config(text)
    out = Conversion({})
    c = _Converter(out)
    c.top(linkerd)
    if not out.config.get("routers"):
        raise ConvertError("no router could be carried over: " + "; ".join(out.notes))
    try:
        load_config(yaml.safe_dump(out.config), MeshdConfig, source="converted")
    except ConfigError as exc:  # a bug here, or an input we did not foresee: say so, not a bad file
        raise ConvertError(f"the converted config does not load in meshd:\n{exc}") from None
    return out


class _Converter:
    def __init__(self, out: Conversion) -> None:
        self.out = out
        self.k8s_prefixes: list[str] = []
        #: namer-level daemonset transformers: the namer's meshd prefix -> the daemonset's path
        self.daemonsets: dict[str, str] = {}

    def note(self, where: str, message: str) -> None:
        self.out.notes.append(f"{where}: {message}")

    def top(self, linkerd: Mapping[str, Any]) -> None:
        config = self.out.config
        for key, value in linkerd.items():
            if key == "admin" and isinstance(value, Mapping):
                admin = {k: value[k] for k in ("ip", "port") if k in value}
                self._rest("admin", value, ("ip", "port"))
                if admin:
                    config["admin"] = admin
            elif key == "namers":
                config["namers"] = [n for i, raw in enumerate(value or []) if (n := self.namer(f"namers[{i}]", raw))]
            elif key == "routers":
                pass  # after the namers, which the daemonset transformer needs
            elif key in ("telemetry", "tracers"):
                kinds = ", ".join(str(t.get("kind")) for t in value or [] if isinstance(t, Mapping))
                self.note(key, f"not carried over ({kinds}): meshd always serves Prometheus metrics at /metrics "
                               "and recent routing on /admin; it exports traces over OTLP, not Zipkin, with a "
                               "top-level tracing section (docs/tracing.md)")
            elif key not in _SILENT:
                self.note(key, "not carried over: meshd has no such section")
        routers = []
        for i, raw in enumerate(linkerd.get("routers") or []):
            router = self.router(f"routers[{i}]", raw)
            if router is not None:
                routers.append(router)
        config["routers"] = routers
        if not config.get("namers"):
            config.pop("namers", None)

    # -- namers -------------------------------------------------------------------------------

    def namer(self, where: str, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.note(where, "not a mapping; left out")
            return None
        kind = raw.get("kind")
        prefix = str(raw.get("prefix") or f"/{kind}")
        meshd_prefix = "/#" + (prefix if prefix.startswith("/") else "/" + prefix)
        if kind == "io.l5d.k8s":
            namer: dict[str, Any] = {"kind": "k8s", "prefix": meshd_prefix}
            host, port = raw.get("host"), raw.get("port")
            if host is not None or port is not None:
                host, port = host or "localhost", port or 8001
                if str(host) in ("localhost", "127.0.0.1") and int(port) == 8001:
                    self.note(where, f"host {host}, port {port} (a kubectl proxy sidecar) left out: meshd talks to "
                                     "the API itself with the pod's service account; drop the kubectl sidecar")
                else:
                    namer["apiUrl"] = f"http://{host}:{port}"
            for t in raw.get("transformers") or []:
                if not isinstance(t, Mapping):
                    continue
                if t.get("kind") == "io.l5d.k8s.daemonset" and all(k in t for k in ("namespace", "port", "service")):
                    # meshd applies transformers per router: each router whose dtab uses this namer gets it
                    self.daemonsets[meshd_prefix] = f"{t['namespace']}/{t['port']}/{t['service']}"
                    self.note(where, f"transformer io.l5d.k8s.daemonset moved to the routers whose dtab uses "
                                     f"{meshd_prefix} (meshd applies transformers per router, to all their names)")
                else:
                    self.note(where, f"transformer {t.get('kind')} not carried over: meshd applies transformers per "
                                     "router")
            self._rest(where, raw, ("kind", "prefix", "host", "port", "transformers", "experimental"))
            self.k8s_prefixes.append(meshd_prefix)
            return namer
        if kind == "io.l5d.fs":
            if "rootDir" not in raw:
                self.note(where, "io.l5d.fs without rootDir; left out")
                return None
            self._rest(where, raw, ("kind", "prefix", "rootDir", "experimental"))
            return {"kind": "fs", "rootDir": raw["rootDir"], "prefix": meshd_prefix}
        self.note(where, f"kind {kind} not carried over: meshd's namers are fs, dns and k8s; names under "
                         f"{meshd_prefix} will not bind")
        return None

    # -- routers ------------------------------------------------------------------------------

    def router(self, where: str, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.note(where, "not a mapping; left out")
            return None
        label = str(raw.get("label") or raw.get("protocol") or "router")
        protocol = raw.get("protocol", "http")
        if protocol not in ("http", "h2"):
            self.note(f"{where} ({label})", f"protocol {protocol} not carried over: meshd routes HTTP/1.1 and HTTP/2 only")
            return None
        here = f"{where} ({label})"
        router: dict[str, Any] = {"label": re.sub(r"[^A-Za-z0-9._-]", "-", label)}
        if protocol == "h2":
            router["protocol"] = "h2"
        servers = []
        for j, server in enumerate(raw.get("servers") or []):
            if isinstance(server, Mapping):
                servers.append({k: server[k] for k in ("ip", "port") if k in server})
                self._rest(f"{here}.servers[{j}]", server, ("ip", "port"))
        router["servers"] = servers or [{"ip": "127.0.0.1", "port": 4140}]
        if "identifier" in raw:
            identifier = self.identifier(f"{here}.identifier", raw["identifier"], h2=protocol == "h2")
            if identifier is not None:
                router["identifier"] = identifier
        if "dtab" in raw:
            router["dtab"] = str(raw["dtab"])
            self._system_namers(here, router["dtab"])
        if "bindingTimeoutMs" in raw:
            router["bindingTimeoutMs"] = raw["bindingTimeoutMs"]
        cache = raw.get("bindingCache")
        if isinstance(cache, Mapping) and "idleTtlSecs" in cache:
            router["bindingCache"] = {"idleTtlSecs": cache["idleTtlSecs"]}
        interpreter = raw.get("interpreter")
        if isinstance(interpreter, Mapping):
            if interpreter.get("kind", "default") != "default":
                self.note(f"{here}.interpreter", f"kind {interpreter.get('kind')} (namerd) not carried over: meshd "
                          "binds with its own dtab; put the namerd dtab in `dtab` or a routing file")
            transformers = [t for k, raw_t in enumerate(interpreter.get("transformers") or [])
                            if (t := self.transformer(f"{here}.interpreter.transformers[{k}]", raw_t))]
            if transformers:
                router["transformers"] = transformers
        for namer_prefix, target in self.daemonsets.items():
            uses = re.search(re.escape(namer_prefix) + r"(?![A-Za-z0-9_.:-])", str(raw.get("dtab", "")))
            if uses and not any(t.get("kind") == "daemonset" for t in router.get("transformers", [])):
                base = next((p for p in self.k8s_prefixes if p not in self.daemonsets), self.k8s_prefixes[0])
                router.setdefault("transformers", []).append({"kind": "daemonset", "path": f"{base}/{target}"})
        for section, builder in (("service", self.service_config), ("client", self.client_config)):
            if section in raw:
                self.section(here, section, raw[section], builder, router)
        self._rest(here, raw, ("label", "protocol", "servers", "identifier", "dtab", "bindingTimeoutMs",
                               "bindingCache", "interpreter", "service", "client", "experimental"))
        return router

    def identifier(self, where: str, raw: Any, *, h2: bool = False) -> dict[str, Any] | None:
        entries = raw if isinstance(raw, list) else [raw]
        if len(entries) != 1 or not isinstance(entries[0], Mapping):
            self.note(where, "a list of identifiers is not carried over: meshd has one identifier per router; "
                             "the default (Host header) is used")
            return None
        raw = entries[0]
        kind = raw.get("kind")
        if kind == "io.l5d.header.path":
            return self._header_path(where, raw, h2)
        if kind == "io.l5d.header.token" and str(raw.get("header", ":authority")).lower() == ":authority":
            # linkerd's h2 default; meshd keeps :authority as the request's Host
            out_h: dict[str, Any] = {"kind": "header"}
            if "prefix" in raw:
                out_h["prefix"] = raw["prefix"]
            self._rest(where, raw, ("kind", "prefix", "header"))
            return out_h
        if kind not in _IDENTIFIERS:
            self.note(where, f"kind {kind} not carried over (meshd has header, methodAndHost, path, static, grpc); "
                             "the default (Host header) is used")
            return None
        meshd_kind, keys = _IDENTIFIERS[kind]
        out: dict[str, Any] = {"kind": meshd_kind, **{k: raw[k] for k in keys if k in raw}}
        if "prefix" in raw:
            out["prefix"] = raw["prefix"]
        self._rest(where, raw, ("kind", "prefix", *keys))
        return out

    def _header_path(self, where: str, raw: Mapping[str, Any], h2: bool) -> dict[str, Any]:
        """linkerd's `io.l5d.header.path` (the `:path`'s first `segments`, 1 by default): on an h2
        router, where it names gRPC services, meshd's `grpc` identifier; else `path`."""
        segments = raw.get("segments", 1)
        out: dict[str, Any]
        if h2 and segments in (1, 2):
            out = {"kind": "grpc", **({"segments": segments} if segments != 1 else {})}
            self.note(where, "io.l5d.header.path became identifier grpc (/pkg.Service/Method -> /svc/pkg.Service"
                             + ("/Method" if segments == 2 else "") + "): a path that is not a gRPC method path is "
                             "answered UNIMPLEMENTED; use {kind: path, segments: N} for other HTTP/2 traffic")
        else:
            out = {"kind": "path", "segments": segments}
        if "prefix" in raw:
            out["prefix"] = raw["prefix"]
        self._rest(where, raw, ("kind", "prefix", "segments"))
        return out

    def transformer(self, where: str, raw: Any) -> dict[str, Any] | None:
        kind = raw.get("kind") if isinstance(raw, Mapping) else None
        if kind == "io.l5d.k8s.localnode":
            if raw.get("hostNetwork"):
                self.note(where, "hostNetwork: meshd matches nodes by name (NODE_NAME) in every mode")
            return {"kind": "localnode"}
        if kind == "io.l5d.k8s.daemonset" and isinstance(raw, Mapping):
            if not self.k8s_prefixes:
                self.note(where, "daemonset transformer left out: it needs a k8s namer, and none was carried over")
                return None
            missing = [k for k in ("namespace", "port", "service") if k not in raw]
            if missing:
                self.note(where, f"daemonset transformer without {', '.join(missing)}; left out")
                return None
            if raw.get("hostNetwork"):
                self.note(where, "hostNetwork: meshd matches nodes by name (nodeName) in every mode")
            path = f"{self.k8s_prefixes[0]}/{raw['namespace']}/{raw['port']}/{raw['service']}"
            return {"kind": "daemonset", "path": path}
        self.note(where, f"kind {kind} not carried over: meshd's transformers are daemonset and localnode")
        return None

    # -- service and client sections ------------------------------------------------------------

    def section(self, where: str, name: str, raw: Any, builder: Any, router: dict[str, Any]) -> None:
        if not isinstance(raw, Mapping):
            return
        here = f"{where}.{name}"
        kind = raw.get("kind")
        configs = raw.get("configs") if kind == "io.l5d.static" else [raw]
        if kind not in (None, "io.l5d.global", "io.l5d.static"):
            self.note(here, f"kind {kind} not carried over")
            return
        overrides = []
        for k, cfg in enumerate(configs or []):
            if not isinstance(cfg, Mapping):
                continue
            at = f"{here}.configs[{k}]" if kind == "io.l5d.static" else here
            built = builder(at, cfg)
            prefix = cfg.get("prefix")
            if prefix in ("/", "/*") or (prefix is None and kind != "io.l5d.static"):
                if built:
                    router[name] = {**router.get(name, {}), **built}
                continue
            if prefix is None:
                self.note(at, "a static config without prefix; left out")
                continue
            meshd_prefix = re.sub(r"\{[^}]*\}", "*", str(prefix))
            if meshd_prefix != prefix:
                self.note(at, f"prefix {prefix}: placeholders are not carried over, written as {meshd_prefix}")
            if built:
                overrides.append({"prefix": meshd_prefix, **built})
        if overrides:
            router[f"{name}s"] = overrides

    def service_config(self, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "totalTimeoutMs" in raw:
            out["totalTimeoutMs"] = raw["totalTimeoutMs"]
        classifier = raw.get("responseClassifier")
        if isinstance(classifier, Mapping):
            converted = self.classifier(f"{where}.responseClassifier", classifier)
            if converted is not None:
                out["responseClassifier"] = converted
        retries = raw.get("retries")
        if isinstance(retries, Mapping):
            converted = self.retries(f"{where}.retries", retries)
            if converted:
                out["retries"] = converted
        self._rest(where, raw, ("kind", "prefix", "totalTimeoutMs", "responseClassifier", "retries"))
        return out

    def classifier(self, where: str, raw: Mapping[str, Any]) -> dict[str, Any] | None:
        """The `io.l5d.http.*` and `io.l5d.h2.*` kinds lose their prefix; `io.l5d.h2.grpc.*` become
        meshd's `grpc.*` kinds (docs/grpc.md)."""
        full = str(raw.get("kind", ""))
        kind = full.removeprefix("io.l5d.http.").removeprefix("io.l5d.h2.").removeprefix("io.l5d.")
        if kind in _CLASSIFIERS:
            self._rest(where, raw, ("kind",))
            return {"kind": kind}
        if kind in _GRPC_CLASSIFIERS:
            out: dict[str, Any] = {"kind": kind}
            if kind == "grpc.retryableStatusCodes":
                codes = raw.get("retryableStatusCodes")
                if not isinstance(codes, list) or not codes:
                    self.note(where, f"kind {full} without retryableStatusCodes; left out")
                    return None
                out["retryableStatusCodes"] = codes
            self.note(where, f"kind {full} became {kind}: meshd counts only UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, "
                             "UNAVAILABLE, DATA_LOSS and the retryable codes as failures for failure accrual "
                             "(linkerd counted every code but OK); set failureStatusCodes to change it")
            self._rest(where, raw, ("kind", "retryableStatusCodes"))
            return out
        self.note(where, f"kind {full} not carried over")
        return None

    def retries(self, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        budget = raw.get("budget")
        if isinstance(budget, Mapping):
            out["budget"] = {k: budget[k] for k in ("ttlSecs", "minRetriesPerSec", "percentCanRetry") if k in budget}
        backoff = raw.get("backoff")
        if isinstance(backoff, Mapping):
            kind = backoff.get("kind")
            if kind == "constant":
                out["backoff"] = {"kind": "constant", **({"ms": backoff["ms"]} if "ms" in backoff else {})}
            elif kind == "jittered":
                out["backoff"] = {"kind": "jittered", **{k: backoff[k] for k in ("minMs", "maxMs") if k in backoff}}
            else:
                self.note(f"{where}.backoff", f"kind {kind} not carried over")
        return out

    def client_config(self, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        balancer = raw.get("loadBalancer")
        if isinstance(balancer, Mapping):
            kind = balancer.get("kind")
            if kind in _BALANCERS:
                out["loadBalancer"] = {"kind": kind, **{k: balancer[k] for k in _BALANCERS[kind] if k in balancer}}
            else:
                self.note(f"{where}.loadBalancer", f"kind {kind} not carried over: meshd has p2c, ewma and roundRobin")
        accrual = raw.get("failureAccrual")
        if isinstance(accrual, Mapping):
            kind = accrual.get("kind")
            if kind in _ACCRUALS:
                meshd_kind, keys = _ACCRUALS[kind]
                converted = {"kind": meshd_kind, **{k: accrual[k] for k in keys if k in accrual}}
                backoff = accrual.get("backoff")
                if isinstance(backoff, Mapping) and backoff.get("kind") in ("constant", "jittered"):
                    fields = ("ms",) if backoff["kind"] == "constant" else ("minMs", "maxMs")
                    converted["backoff"] = {"kind": backoff["kind"], **{k: backoff[k] for k in fields if k in backoff}}
                out["failureAccrual"] = converted
            else:
                self.note(f"{where}.failureAccrual", f"kind {kind} not carried over")
        if "requestAttemptTimeoutMs" in raw:
            out["requestAttemptTimeoutMs"] = raw["requestAttemptTimeoutMs"]
        if "tls" in raw:
            self.note(f"{where}.tls", "not carried over: meshd speaks plain HTTP to upstreams")
        self._rest(where, raw, ("kind", "prefix", "loadBalancer", "failureAccrual", "requestAttemptTimeoutMs", "tls"))
        return out

    # -- helpers ------------------------------------------------------------------------------

    def _rest(self, where: str, raw: Mapping[str, Any], used: tuple[str, ...]) -> None:
        left = [k for k in raw if k not in used and k not in _SILENT]
        if left:
            self.note(where, f"{', '.join(map(str, left))} not carried over: meshd has no such setting here")

    def _system_namers(self, where: str, dtab: str) -> None:
        known = {"inet", "fixedinet", "io.buoyant.rinet", "rinet", "nil", "fail"}
        for name in sorted(set(re.findall(r"/\$/([A-Za-z0-9_.:-]+)", dtab)) - known):
            self.note(f"{where}.dtab", f"/$/{name} is a linkerd system namer meshd does not have; names that reach "
                                       "it fail to bind")
