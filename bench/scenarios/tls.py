"""tls: the two-hop path client -> proxy -> proxy -> upstream with mutual TLS between the two proxies,
meshd against Envoy, each also in plaintext for the cost of mTLS, and each over HTTP/1.1 and over HTTP/2
between the two proxies (the client and the upstream speak HTTP/1.1 either way; meshd's DaemonSet over
mTLS speaks HTTP/2 between the meshds, docs/tls.md). A family's pairs run side by side and are measured
interleaved: wrk keeps 64 connections busy for 10 s against one pair, then the next, the order reversed
every round, three rounds. Each row shows medians over its rounds; requests per proxy CPU-second count
both proxies' CPU; the mTLS CPU cost is the median of the per-round ratios (mTLS CPU per request over
the plaintext pair's over the same hop protocol, in the same round), with the lowest and highest round,
and the HTTP/2 hop's also against the plaintext HTTP/1.1 hop. Then `openssl s_time -new` opens
connections to the second proxy that each do a fresh full mutual-TLS handshake (and one request): new
handshakes per CPU-second of that proxy."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml

from bench import interleave, wrk
from bench.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessFailed,
    Supervisor,
    free_port,
    wait_http_ok,
    wait_listening,
)
from bench.procstat import tree_cpu_seconds
from bench.results import Row, ScenarioResult, Skip
from bench.scenarios.context import Collected, RunContext, median_metrics, record_failure
from bench.targets.base import Backend, Deployment, render_peer_file
from bench.targets.catalog import TinyUpstream, tiny_upstream
from bench.targets.meshd import READY_TIMEOUT_SECS, MeshdTarget, write_disco
from bench.targets.peers import ENVOY_INSTALL, envoy_binary
from bench.upstream_control import bench_env
from meshd.tls.certs import make_ca, make_cert, write_pair

NAME: Final = "tls"
SERVICE: Final = "bench"
#: the name in the second proxy's certificate, which the first one checks (and sends as SNI)
BACK_NAME: Final = "back.bench.local"
MTLS: Final = "mtls"
PLAINTEXT: Final = "plaintext"
#: what the two proxies speak to each other: HTTP/1.1 keep-alive, or HTTP/2 (one multiplexed
#: connection; meshd's `client.protocol: h2` to an `h2` router, docs/http2.md)
HOP_HTTP1: Final = "http"
HOP_H2: Final = "h2"
HOPS: Final = (HOP_HTTP1, HOP_H2)
#: an mTLS row's metric: median over the rounds of (mTLS CPU per request / the plaintext pair's over
#: the same hop protocol, same round) - 1
MTLS_CPU_COST: Final = "mtls_cpu_cost"
#: the HTTP/2 hop's mTLS row also against the plaintext HTTP/1.1 hop (the default two-hop path)
MTLS_CPU_COST_VS_HTTP1: Final = "mtls_cpu_cost_vs_http1"
#: the figures of every run written to work/tls/<family>-rounds.tsv
ROUND_COLUMNS: Final = ("requests", "rps", "proxy_cpu_secs", "cpu_us_per_req", "req_per_cpu_sec", "p50_ms", "p99_ms")
OPENSSL_INSTALL: Final = "apt-get install openssl"
_S_TIME_LINE: Final = re.compile(r"^(\d+) connections in (\d+(?:\.\d+)?) real seconds", re.MULTILINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    connections: int = 64
    duration_secs: float = 10.0
    repeats: int = 3
    threads: int = 1
    handshake_secs: float = 10.0
    #: `openssl s_time` processes opening connections at once
    handshake_clients: int = 2
    include_plaintext: bool = True
    #: the protocols between the two proxies, each measured with and without mTLS: `http`, `h2`
    hops: str = ",".join(HOPS)

    def __post_init__(self) -> None:
        if not self.hop_list or any(hop not in HOPS for hop in self.hop_list):
            raise ValueError(f"hops: a comma-separated list of {', '.join(HOPS)}, got {self.hops!r}")
        if self.connections < 1 or self.repeats < 1 or self.threads < 1 or self.handshake_clients < 0:
            raise ValueError("connections, repeats and threads must be at least 1, handshake clients at least 0")
        if self.duration_secs < 1 or self.handshake_secs < 1:
            raise ValueError("wrk and s_time run for whole seconds: durations must be at least 1 s")

    @property
    def hop_list(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.hops.split(",") if h.strip())

    def scaled(self, factor: float) -> TlsOptions:
        return replace(self, duration_secs=max(1.0, round(self.duration_secs * factor)),
                       handshake_secs=max(1.0, round(self.handshake_secs * factor)))


@dataclass(frozen=True, slots=True)
class Certs:
    """The scenario's own CA, the second proxy's server certificate (also a client one), the first
    proxy's client certificate, and one for the handshake client."""

    ca: Path
    back_cert: Path
    back_key: Path
    front_cert: Path
    front_key: Path
    client_cert: Path
    client_key: Path


def make_certs(directory: Path) -> Certs:
    """EC P-256 certificates from a fresh CA (meshd's `meshd tls` helpers), written into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("meshd-bench tls scenario CA")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    pairs = {
        "back": make_cert(ca, dns=[BACK_NAME], uris=["spiffe://bench.local/ns/bench/sa/back"]),
        "front": make_cert(ca, dns=["front.bench.local"], uris=["spiffe://bench.local/ns/bench/sa/front"]),
        "client": make_cert(ca, dns=["client.bench.local"], uris=["spiffe://bench.local/ns/bench/sa/client"]),
    }
    for name, issued in pairs.items():
        write_pair(issued, directory / f"{name}.crt", directory / f"{name}.key")
    return Certs(directory / "ca.crt", directory / "back.crt", directory / "back.key", directory / "front.crt",
                 directory / "front.key", directory / "client.crt", directory / "client.key")


@dataclass(frozen=True, slots=True)
class TwoHop:
    """One proxy family's two-hop path, with or without mutual TLS between the two, over HTTP/1.1 or
    HTTP/2 between the two."""

    family: str  # "meshd" or "envoy"
    tls: bool
    hop: str = HOP_HTTP1

    @property
    def variant(self) -> str:
        base = MTLS if self.tls else PLAINTEXT
        return base if self.hop == HOP_HTTP1 else f"{base}-{self.hop}"

    @staticmethod
    def of_variant(family: str, variant: str) -> TwoHop:
        base, _, hop = variant.partition("-")
        return TwoHop(family, base == MTLS, hop or HOP_HTTP1)

    @property
    def name(self) -> str:
        return f"{self.family}-{self.variant}"

    def unavailable(self) -> str | None:
        if self.family == "envoy":
            return None if envoy_binary() else f"Envoy is not installed: {ENVOY_INSTALL}"
        return MeshdTarget().unavailable()


@dataclass(frozen=True, slots=True)
class RunningPair:
    front: ManagedProcess
    back: ManagedProcess
    front_port: int
    back_port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.front_port}/"


def run(ctx: RunContext, options: TlsOptions) -> ScenarioResult:
    collected = Collected()
    if shutil.which("wrk") is None:
        reason = f"wrk is not installed: {wrk.WRK_INSTALL}"
        ctx.progress.note(f"  skipped {NAME}: {reason}")
        return ScenarioResult(name=NAME, options=dict(asdict(options)), skipped=(Skip(target="*", reason=reason),))
    openssl = shutil.which("openssl")
    if openssl is None and options.handshake_clients:
        collected.notes.append(f"Handshakes not measured: openssl is not installed ({OPENSSL_INSTALL}).")
    families: dict[str, list[TwoHop]] = {}
    for family in ("meshd", "envoy"):
        if family not in ctx.selection.families:
            continue
        for hop, tls in [(h, t) for h in options.hop_list
                         for t in ((False, True) if options.include_plaintext else (True,))]:
            pair = TwoHop(family, tls, hop)
            why = pair.unavailable()
            if why is None:
                families.setdefault(family, []).append(pair)
            else:
                collected.skipped.append(Skip(target=pair.name, reason=why))
                ctx.progress.note(f"  skipped {pair.name}: {why}")
    warmup_secs = max(1.0, round(ctx.warmup_secs)) if ctx.warmup_secs > 0 else 0.0
    handshakes = bool(openssl and options.handshake_clients)
    steps = sum(options.repeats + (1 if warmup_secs else 0) + (1 if _measures_handshakes(p, handshakes, options.hop_list) else 0)
                for pairs in families.values() for p in pairs)
    ctx.progress.begin_scenario(NAME, steps)
    workdir = ctx.scenario_dir(NAME)
    certs = make_certs(workdir / "certs")
    script = wrk.write_script(workdir)
    collected.notes.append(
        "Two hops: wrk -> first proxy (HTTP/1.1, plaintext) -> second proxy -> upstream (HTTP/1.1, plaintext); "
        "between the two proxies HTTP/1.1 keep-alive (variants plaintext, mtls) or HTTP/2, many requests on "
        "one connection (variants plaintext-h2, mtls-h2: meshd's client.protocol h2 to an h2 router whose "
        "client.protocol is http; Envoy's http2_protocol_options on the first hop's cluster, codec AUTO on the "
        "second), with mutual TLS (TLS 1.3, EC P-256 certificates from the scenario's own CA, both sides "
        "verified) or in plaintext. Each proxy runs one worker. Requests per proxy CPU-second divide the "
        "requests by both proxies' CPU seconds together."
    )
    collected.notes.append(
        "Interleaved: a family's pairs run side by side and are measured in rounds, one run of each per "
        "round, the order reversed every round (plaintext, mTLS, mTLS, plaintext...). Each row's figures "
        "are medians over the rounds; mTLS CPU cost is the median over the rounds of that round's CPU per "
        "request with mTLS over its CPU per request in plaintext over the same hop protocol, minus one (not "
        "the ratio of the two medians), with the lowest and highest round in brackets; the HTTP/2 hop's "
        "mTLS row also has it against the plaintext HTTP/1.1 hop (mtls_cpu_cost_vs_http1). Every run is in "
        "work/tls/<family>-rounds.tsv."
    )
    measure = _Measure(ctx, options, script, collected)
    with tiny_upstream(ctx.supervisor, workdir / "upstream", 3600.0) as upstream:
        collected.notes.append(f"Upstream: {upstream.kind} answering a 3-byte body.")
        for family, pairs in families.items():
            with ExitStack() as stack:
                running = {}
                for pair in pairs:
                    started = stack.enter_context(
                        _started(ctx, pair, upstream, certs, workdir / pair.name, collected))
                    if started is not None:
                        running[pair] = started
                if warmup_secs:
                    for pair in list(running):
                        ctx.progress.step(f"{pair.name}: warm-up", warmup_secs)
                        if measure.run(pair, running[pair], upstream, warmup_secs) is None:
                            del running[pair]
                runs = _rounds(measure, running, upstream, workdir / f"{family}-rounds.tsv")
                rows = interleaved_rows(runs)
                for row in rows:
                    pair = TwoHop.of_variant(row.target, row.variant)
                    if _measures_handshakes(pair, handshakes, options.hop_list) and openssl is not None:
                        ctx.progress.step(f"{pair.name}: new handshakes", options.handshake_secs)
                        try:
                            row.metrics.update(_handshakes(openssl, running[pair], certs, options,
                                                           workdir / pair.name, collected))
                        except ProcessFailed as exc:
                            record_failure(ctx, collected, pair.name, "failed while its handshakes were measured", exc)
                            continue
                    collected.rows.append(row)
                    ctx.progress.note(f"  {pair.name}: {row.metrics['rps']:.0f} req/s, "
                                      f"{row.metrics.get('req_per_cpu_sec', 0.0):,.0f} req per proxy CPU-s")
                    cost = row.metric(MTLS_CPU_COST)
                    if cost is not None:
                        ctx.progress.note(f"  {pair.name}: mTLS CPU cost {_cost_text(row)}")
                    if row.metric(MTLS_CPU_COST_VS_HTTP1) is not None:
                        ctx.progress.note(f"  {pair.name}: against plaintext over HTTP/1.1 "
                                          f"{_cost_text(row, MTLS_CPU_COST_VS_HTTP1)}")
    return ScenarioResult(
        name=NAME,
        options=dict(asdict(options)),
        rows=tuple(collected.rows),
        skipped=tuple(collected.skipped),
        commands=tuple(collected.commands),
        notes=tuple(collected.notes),
    )


class _Measure:
    """One wrk run against a running pair; a process failure becomes a Skip and None."""

    def __init__(self, ctx: RunContext, options: TlsOptions, script: Path, collected: Collected) -> None:
        self.ctx, self.options, self.script, self.collected = ctx, options, script, collected

    def run(self, pair: TwoHop, running: RunningPair, upstream: TinyUpstream, secs: float) -> dict[str, float] | None:
        try:
            return _wrk_run(running, upstream, self.options, self.script, secs, self.collected)
        except ProcessFailed as exc:
            record_failure(self.ctx, self.collected, pair.name, "failed while measured", exc)
            return None


def _rounds(measure: _Measure, running: dict[TwoHop, RunningPair], upstream: TinyUpstream,
            record: Path) -> dict[TwoHop, list[dict[str, float]]]:
    """The interleaved runs of one family's pairs, each pair's in round order, written to `record`. A pair
    that fails ends the rounds (the other's runs so far are kept: a comparison needs both)."""
    options = measure.options

    def one(round_index: int, pair: TwoHop) -> dict[str, float] | None:
        measure.ctx.progress.step(f"{pair.name}: round {round_index + 1}/{options.repeats}", options.duration_secs)
        return measure.run(pair, running[pair], upstream, options.duration_secs)

    runs, text = interleave.run_rounds(list(running), options.repeats, one, lambda pair: pair.name, ROUND_COLUMNS)
    if text:
        record.write_text(text)
    return runs


def interleaved_rows(runs: dict[TwoHop, list[dict[str, float]]]) -> list[Row]:
    """A row per pair (HTTP/1.1 hop first, plaintext before mTLS), figures the median over its runs; an
    mTLS row also gets `mtls_cpu_cost`, the median of per-round ratios to the plaintext pair over the
    same hop protocol, with its lowest and highest round, and the HTTP/2 hop's mTLS row
    `mtls_cpu_cost_vs_http1`, the same against the plaintext HTTP/1.1 hop."""
    plain = {p.hop: r for p, r in runs.items() if not p.tls}
    rows = []
    for pair, pair_runs in sorted(runs.items(), key=lambda item: (HOPS.index(item[0].hop), item[0].tls)):
        if not pair_runs:
            continue
        metrics = median_metrics(pair_runs)
        kept: tuple[dict[str, float], ...] = tuple(pair_runs)
        same_hop = plain.get(pair.hop)
        if pair.tls and same_hop:
            extra, kept = interleave.compared(kept, same_hop, "cpu_us_per_req", MTLS_CPU_COST)
            metrics.update(extra)
        http1 = plain.get(HOP_HTTP1)
        if pair.tls and pair.hop != HOP_HTTP1 and http1:
            extra, kept = interleave.compared(kept, http1, "cpu_us_per_req", MTLS_CPU_COST_VS_HTTP1)
            metrics.update(extra)
        rows.append(Row(target=pair.family, variant=pair.variant, metrics=metrics, runs=kept))
    return rows


def _measures_handshakes(pair: TwoHop, handshakes: bool, hops: tuple[str, ...]) -> bool:
    """New handshakes are measured once per family, on the mTLS pair of the first hop protocol
    measured (HTTP/1.1's by default): the second proxy's TLS is the same over either."""
    return handshakes and pair.tls and pair.hop == hops[0]


def _cost_text(row: Row, key: str = MTLS_CPU_COST) -> str:
    cost, low, high = (row.metric(key), row.metric(f"{key}_min"), row.metric(f"{key}_max"))
    rounds = row.metric(f"{key}_rounds")
    return f"{cost or 0.0:+.1%} (rounds: {low or 0.0:+.1%} to {high or 0.0:+.1%}, {rounds or 0.0:.0f} rounds)"


@contextmanager
def _started(ctx: RunContext, pair: TwoHop, upstream: TinyUpstream, certs: Certs, workdir: Path,
             collected: Collected) -> Iterator[RunningPair | None]:
    """Both proxies of `pair` started (the second first), stopped however the block ends; a failure to
    start or while measured is recorded as a Skip and the scenario goes on."""
    workdir.mkdir(parents=True, exist_ok=True)
    supervisor = ctx.supervisor
    started: list[ManagedProcess] = []
    try:
        try:
            if pair.family == "meshd":
                running = _start_meshd_pair(pair, upstream, certs, workdir, supervisor, started, collected)
            else:
                running = _start_envoy_pair(pair, upstream, certs, workdir, supervisor, started, collected)
        except ProcessFailed as exc:
            record_failure(ctx, collected, pair.name, "failed to start", exc)
            yield None
            return
        try:
            yield running
        except ProcessFailed as exc:
            record_failure(ctx, collected, pair.name, "failed while measured", exc)
    finally:
        for process in reversed(started):
            supervisor.stop(process)


def meshd_configs(pair: TwoHop, certs: Certs, *, front_port: int, front_admin: int, back_port: int,
                  back_admin: int, disco: Path) -> tuple[dict[str, object], dict[str, object]]:
    """meshd.yaml for the first hop (an `outgoing` router) and the second (`incoming`), configured as
    the throughput scenario's meshd (retries with a budget, ewma, failure accrual) plus the TLS."""
    base = MeshdTarget(name="meshd")
    deployment = Deployment.single(SERVICE, ())
    front = base.config(deployment, port=front_port, admin_port=front_admin, disco=disco)
    back = base.config(deployment, port=back_port, admin_port=back_admin, disco=disco)
    del front["namers"]  # the first hop names the second by address
    front_router: Any = front["routers"][0]  # type: ignore[index]  # the one router, a dict
    back_router: Any = back["routers"][0]  # type: ignore[index]
    front_router["dtab"] = f"/svc => /$/inet/{LOOPBACK}/{back_port};"
    back_router["label"] = "incoming"
    # every request reaching the second hop is for the bench service (s_time sends no Host header)
    back_router["identifier"] = {"kind": "static", "path": "/" + SERVICE}
    if pair.hop == HOP_H2:
        # HTTP/2 between the meshds, HTTP/1.1 on both outer sides (docs/http2.md, "Protocols and
        # defaults"): s_time's HTTP/1.0 over TLS still reaches the second hop (acceptHttp1)
        front_router["client"]["protocol"] = "h2"
        back_router["protocol"] = "h2"
        back_router["h2"] = {"acceptHttp1": True}
        back_router["client"]["protocol"] = "http"
    if pair.tls:
        front_router["client"]["tls"] = {
            "serverName": BACK_NAME,
            "caPath": str(certs.ca),
            "certPath": str(certs.front_cert),
            "keyPath": str(certs.front_key),
        }
        back_router["servers"][0]["tls"] = {
            "certPath": str(certs.back_cert),
            "keyPath": str(certs.back_key),
            "caPath": str(certs.ca),
            "requireClientCert": True,
        }
    return front, back


def _start_meshd_pair(pair: TwoHop, upstream: TinyUpstream, certs: Certs, workdir: Path, supervisor: Supervisor,
                      started: list[ManagedProcess], collected: Collected) -> RunningPair:
    disco = workdir / "disco"
    write_disco(Deployment.single(SERVICE, (upstream.backend,)), disco)
    front_port, front_admin, back_port, back_admin = free_port(), free_port(), free_port(), free_port()
    front, back = meshd_configs(pair, certs, front_port=front_port, front_admin=front_admin, back_port=back_port,
                                back_admin=back_admin, disco=disco)
    processes = []
    for hop, config, admin in (("back", back, back_admin), ("front", front, front_admin)):
        path = workdir / f"meshd-{hop}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "meshd", "run", "-c", str(path), "--workers", "1"]
        process = supervisor.start(f"meshd-{hop}", argv, cwd=workdir, log_path=workdir / f"meshd-{hop}.log",
                                   env=bench_env())
        started.append(process)
        wait_http_ok(process, f"http://{LOOPBACK}:{admin}/admin/ready", READY_TIMEOUT_SECS)
        processes.append(process)
        _record(collected, f"python -m meshd run -c meshd-{hop}.yaml --workers 1")
    return RunningPair(front=processes[1], back=processes[0], front_port=front_port, back_port=back_port)


def envoy_hop_values(pair: TwoHop, certs: Certs) -> tuple[dict[str, str], dict[str, str]]:
    """What the two Envoy templates (first hop, second hop) leave to the pair: the TLS blocks (empty in
    plaintext), the first hop's cluster protocol options (HTTP/2 for the `h2` hop) and the second's codec."""
    h2 = pair.hop == HOP_H2
    upstream_tls, downstream_tls = envoy_tls_blocks(certs, h2=h2) if pair.tls else ("", "")
    protocol = ("      typed_extension_protocol_options:\n"
                "        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                '          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
                "          explicit_http_config: {http2_protocol_options: {}}") if h2 else ""
    return ({"upstream_tls": upstream_tls, "upstream_protocol": protocol},
            {"downstream_tls": downstream_tls, "codec_type": "AUTO" if h2 else "HTTP1"})


def envoy_tls_blocks(certs: Certs, *, h2: bool = False) -> tuple[str, str]:
    """The Envoy YAML for mutual TLS: the first hop's cluster `transport_socket` (verifies the second's
    certificate names BACK_NAME) and the second's listener `transport_socket` (requires a client
    certificate from the CA). TLS 1.2-1.3 and ALPN http/1.1, as meshd's servers and clients use (`h2`:
    the first hop offers h2, the second h2 then http/1.1)."""
    client_alpn, server_alpn = ('["h2"]', '["h2", "http/1.1"]') if h2 else ('["http/1.1"]', '["http/1.1"]')
    upstream = f"""\
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {BACK_NAME}
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: {client_alpn}
            tls_certificates:
              - certificate_chain: {{filename: {certs.front_cert}}}
                private_key: {{filename: {certs.front_key}}}
            validation_context:
              trusted_ca: {{filename: {certs.ca}}}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {{exact: {BACK_NAME}}}"""
    downstream = f"""\
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
              common_tls_context:
                tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
                alpn_protocols: {server_alpn}
                tls_certificates:
                  - certificate_chain: {{filename: {certs.back_cert}}}
                    private_key: {{filename: {certs.back_key}}}
                validation_context:
                  trusted_ca: {{filename: {certs.ca}}}"""
    return upstream, downstream


def _start_envoy_pair(pair: TwoHop, upstream: TinyUpstream, certs: Certs, workdir: Path, supervisor: Supervisor,
                      started: list[ManagedProcess], collected: Collected) -> RunningPair:
    binary = envoy_binary()
    assert binary is not None, "check unavailable() first"
    front_port, front_admin, back_port, back_admin = free_port(), free_port(), free_port(), free_port()
    front_values, back_values = envoy_hop_values(pair, certs)
    back_config = render_peer_file("envoy-tls-back.yaml.tmpl", {
        "listen_port": str(back_port), "admin_port": str(back_admin), "endpoints": _envoy_endpoint(upstream.backend),
        **back_values,
    }, workdir / "envoy-back.yaml")
    front_config = render_peer_file("envoy-tls-front.yaml.tmpl", {
        "listen_port": str(front_port), "admin_port": str(front_admin), "back_port": str(back_port), **front_values,
    }, workdir / "envoy-front.yaml")
    processes = []
    for hop, config, admin, port in (("back", back_config, back_admin, back_port),
                                     ("front", front_config, front_admin, front_port)):
        argv = [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warn",
                "--log-path", str(workdir / f"envoy-{hop}.log")]
        process = supervisor.start(f"envoy-{hop}", argv, cwd=workdir, log_path=workdir / f"envoy-{hop}.stderr")
        started.append(process)
        wait_http_ok(process, f"http://{LOOPBACK}:{admin}/ready", READY_TIMEOUT_SECS)
        wait_listening(process, port, READY_TIMEOUT_SECS)
        processes.append(process)
        _record(collected, f"envoy -c envoy-{hop}.yaml --concurrency 1 --disable-hot-restart -l warn")
    return RunningPair(front=processes[1], back=processes[0], front_port=front_port, back_port=back_port)


def _envoy_endpoint(backend: Backend) -> str:
    return (f"              - endpoint: {{address: {{socket_address: {{address: {backend.host}, "
            f"port_value: {backend.port}}}}}}}")


def _record(collected: Collected, command: str) -> None:
    if command not in collected.commands:
        collected.commands.append(command)


def _wrk_run(running: RunningPair, upstream: TinyUpstream, options: TlsOptions, script: Path, secs: float,
             collected: Collected) -> dict[str, float]:
    """One wrk run against the first hop, with both proxies' CPU seconds read from /proc around it."""
    argv = wrk.command(running.url, connections=options.connections, duration_secs=secs,
                       threads=options.threads, host_header=SERVICE, script=script)
    front_before, back_before = tree_cpu_seconds(running.front.pid), tree_cpu_seconds(running.back.pid)
    upstream_before = tree_cpu_seconds(upstream.process.pid)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailed(f"wrk did not finish within {secs + 60:g} s") from exc
    front_cpu = tree_cpu_seconds(running.front.pid) - front_before
    back_cpu = tree_cpu_seconds(running.back.pid) - back_before
    upstream_cpu = tree_cpu_seconds(upstream.process.pid) - upstream_before
    if done.returncode != 0:
        raise ProcessFailed(f"wrk failed with code {done.returncode}: {done.stderr.strip()}")
    _record(collected, shlex.join(["wrk", *argv[1:5], "-s", "wrk_report.lua", *argv[7:-1], "http://127.0.0.1:<port>/"]))
    try:
        result = wrk.parse_output(done.stdout)
    except ValueError as exc:
        raise ProcessFailed(f"unreadable wrk output: {done.stdout[-300:]!r}") from exc
    duration = result.duration_secs or secs
    cpu = front_cpu + back_cpu
    return {
        "rps": result.requests_per_sec,
        "requests": float(result.requests),
        "p50_ms": result.latency_ms.get("50", 0.0),
        "p99_ms": result.latency_ms.get("99", 0.0),
        "errors": float(result.error_count),
        "front_cpu_secs": front_cpu,
        "back_cpu_secs": back_cpu,
        "proxy_cpu_secs": cpu,
        "proxy_cpu_util": cpu / duration,
        "req_per_cpu_sec": result.requests / cpu if cpu > 0 else 0.0,
        "cpu_us_per_req": 1e6 * cpu / result.requests if result.requests else 0.0,
        "upstream_cpu_util": upstream_cpu / duration,
    }


#: what s_time puts after `GET ` (it writes `GET <this> HTTP/1.0` and a blank line): a Host header rides
#: along as a second header line, so that the request is one any HTTP/1.1 upstream accepts once proxied
S_TIME_TARGET: Final = f"/ HTTP/1.0\r\nHost: {SERVICE}\r\nX-Bench: s_time"


def s_time_command(openssl: str, port: int, certs: Certs, secs: float) -> list[str]:
    """`openssl s_time -new`: connections that each do a full handshake (no session reuse), present the
    client certificate, send `GET / HTTP/1.0` with `Host: bench` and read the answer to its end."""
    return [openssl, "s_time", "-connect", f"{LOOPBACK}:{port}", "-new", "-time", str(int(secs)),
            "-cert", str(certs.client_cert), "-key", str(certs.client_key), "-CAfile", str(certs.ca),
            "-www", S_TIME_TARGET]


def parse_s_time(text: str) -> int:
    """The connections `openssl s_time` completed ("N connections in T real seconds")."""
    match = _S_TIME_LINE.search(text)
    if match is None:
        raise ValueError("no 'connections in ... real seconds' line")
    return int(match.group(1))


def _answers_200(openssl: str, port: int, certs: Certs) -> None:
    """One request as s_time sends it, through `openssl s_client`: the second proxy must answer it with a
    200 from the upstream (a refusal would make the handshake rate meaningless)."""
    argv = [openssl, "s_client", "-connect", f"{LOOPBACK}:{port}", "-cert", str(certs.client_cert), "-key",
            str(certs.client_key), "-CAfile", str(certs.ca), "-quiet"]
    try:
        done = subprocess.run(argv, input=f"GET {S_TIME_TARGET} HTTP/1.0\r\n\r\n", capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailed("openssl s_client: no answer within 30 s") from exc
    status_line = (done.stdout.splitlines() or [""])[0]
    if not re.match(r"HTTP/1\.[01] 200 ", status_line):
        raise ProcessFailed(f"the handshake test's request was not answered 200: {done.stdout[:200]!r} {done.stderr[-200:]!r}")


def _handshakes(openssl: str, running: RunningPair, certs: Certs, options: TlsOptions, workdir: Path,
                collected: Collected) -> dict[str, float]:
    """New mutual-TLS connections per CPU-second of the second proxy, from `handshake_clients` s_time runs."""
    _answers_200(openssl, running.back_port, certs)
    argv = s_time_command(openssl, running.back_port, certs, options.handshake_secs)
    _record(collected, shlex.join(["openssl", *argv[1:3], "127.0.0.1:<port>", *argv[4:7], "-cert", "client.crt",
                                   "-key", "client.key", "-CAfile", "ca.crt"]) + " -www $'" + S_TIME_TARGET.replace(
                                       "\r\n", "\\r\\n") + "'")
    before = tree_cpu_seconds(running.back.pid)
    clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir)
               for _ in range(options.handshake_clients)]
    outputs = []
    try:
        for client in clients:
            out, err = client.communicate(timeout=options.handshake_secs + 60)
            if client.returncode != 0:
                raise ProcessFailed(f"openssl s_time failed with code {client.returncode}: {err.strip()[-300:]}")
            outputs.append(out)
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailed(f"openssl s_time did not finish within {options.handshake_secs + 60:g} s") from exc
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    cpu = tree_cpu_seconds(running.back.pid) - before
    (workdir / "s_time.txt").write_text("\n".join(outputs))
    try:
        count = sum(parse_s_time(out) for out in outputs)
    except ValueError as exc:
        raise ProcessFailed(f"unreadable s_time output: {outputs[-1][-300:]!r}") from exc
    return {
        "handshakes": float(count),
        "handshake_cpu_secs": cpu,
        "handshakes_per_cpu_sec": count / cpu if cpu > 0 else 0.0,
    }
