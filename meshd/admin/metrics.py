"""Every metric meshd exports, in one place, rendered at scrape time from plain counters.

The hot path only increments ints on small objects (router stats, retry counters, pool and
balancer statistics); this module turns them into the Prometheus text format when `/metrics` is
scraped, so recording costs about 0.1 µs instead of prometheus-client's ~1 µs per `.labels()`.
Metrics registered directly on the runtime's registry by namers (fs, k8s, dns) are exported too.
No process meshd runs imports prometheus-client: the text format's writer, reader, registry and
the namers' counter are meshd/exposition.py.

Label sets carry `router` as well as the names the issues define, so two routers serving the
same service name never produce duplicate series.

A scrape shares the event loop with the proxy, so it must never hold it for long. Every
per-service family is bounded by the request stats' label cap (`MAX_SERVICES` labels and
`_other`, see meshd/pipeline/stats.py), and the text is written here directly (prometheus-client
builds several objects per sample: about 130 ms for 1,000 services), in slices of at most
`SLICE_S` with the event loop running in between. A slice reads the counters of whole services
or clients at once, so each series is a consistent reading; concurrent scrapes share one
rendering. The output is what prometheus-client's `generate_latest` would write (label order,
number format); tests/meshd/test_exposition.py checks it against prometheus-client's parser.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from meshd.admin.view import MetricsView
from meshd.exposition import Family, Registry, escape_label_value, format_value, parse
from meshd.pipeline.retries import RetryCounters
from meshd.pipeline.stats import BUCKETS, OVERFLOW_SERVICE, AttemptStats
from meshd.pipeline.timeouts import TimeoutCounters

#: name -> help text; docs/metrics.md documents each, and a test checks it.
METRICS: Final[dict[str, str]] = {
    "meshd_requests_total": "Requests answered, by router, logical service and status class (1xx..5xx).",
    "meshd_request_duration_seconds": "Time from request head to response head, by router and service.",
    "meshd_pool_connections": "Upstream connections per client by state (idle, busy, dialing).",
    "meshd_pool_waiters": "Requests waiting for an upstream connection, per client.",
    "meshd_pool_queue_timeouts_total": "Requests failed (503) after waiting pool.queueTimeoutMs for a connection.",
    "meshd_endpoints": "Endpoints currently known for a client (bound name).",
    "meshd_endpoint_pending": "Requests in flight to one endpoint.",
    "meshd_endpoint_ewma_seconds": "Peak EWMA latency of one endpoint (0 for balancers that do not track it).",
    "meshd_endpoint_state": "1 for the endpoint's current failure-accrual state (live, ejected, probing).",
    "meshd_ejections_total": "Endpoints ejected by failure accrual, per client.",
    "meshd_client_requests_total": "Attempts sent to a client's endpoints (retries included), per client (bound name).",
    "meshd_client_failures_total": "Attempts to a client's endpoints that failed (error, or a response the classifier calls a failure).",
    "meshd_client_request_duration_seconds": "Time from an attempt's start to the end of its response body, per client.",
    "meshd_client_retries_total": "Attempts to a client that were retries (the request's second or later attempt).",
    "meshd_endpoint_requests_total": "Attempts sent to one endpoint (the first 64 endpoints of a client; later ones as endpoint=\"_other\").",
    "meshd_endpoint_failures_total": "Attempts to one endpoint that failed (same cap as meshd_endpoint_requests_total).",
    "meshd_endpoint_request_duration_seconds": "Time from an attempt's start to the end of its response body, per endpoint (same cap).",
    "meshd_all_ejected_picks_total": "Picks made while every endpoint was ejected (meshd picked anyway).",
    "meshd_client_requests_in_flight": "Attempts in flight to a client's endpoints now (circuitBreakers.maxRequests bounds it).",
    "meshd_circuit_breaker_overflows_total": "Attempts a client's circuit breaker refused with 503, by limit (maxRequests, maxPendingRequests, maxRetries).",
    "meshd_panic_picks_total": "Picks made in panic mode: fewer endpoints available than panicThresholdPercent.",
    "meshd_balancer_panic": "1 while a client's balancer is in panic mode (ignores health), else 0.",
    "meshd_ejections_prevented_total": "Ejections failure accrual asked for and maxEjectionPercent refused.",
    "meshd_retries_total": "Retries sent, by service and reason (response, error, requeue).",
    "meshd_retry_budget_exhausted_total": "Retries refused because the service's retry budget was empty.",
    "meshd_retry_limit_reached_total": "Retries refused because the request had reached maxRetries or maxRequeues.",
    "meshd_retry_budget_balance": "Retries the service's budget would allow right now.",
    "meshd_timeouts_total": "Requests that timed out, by service and kind (total, deadline, attempt).",
    "meshd_config_reloads_total": "Routing-file reloads by result (success, error).",
    "meshd_routes_version": "1 for the routing-file version a router serves (labels: source, version, digest).",
    "meshd_routes_loaded_timestamp_seconds": "When the routing-file version in force was applied (Unix time).",
    "meshd_fault_rules_active": "Fault-injection rules in force (routing file); anything but 0 means requests fail on purpose.",
    "meshd_faults_injected_total": "Requests a fault-injection rule aborted or delayed, by rule and kind (abort, delay).",
    "meshd_mirrored_requests_total": "Mirrored copies of requests (routing file's mirror rules), by rule and result "
    "(success, failure, error, timeout); the answers are dropped.",
    "meshd_mirror_skipped_total": "Copies a mirror rule did not make, by rule and reason (in_flight_limit, body_too_large, "
    "body_incomplete).",
    "meshd_connections_accepted_total": "Downstream connections accepted, per router.",
    "meshd_connections_open": "Downstream connections open now, per router.",
    "meshd_requests_in_flight": "Requests a router is serving now (admitted, response head not yet written).",
    "meshd_requests_pending": "Requests waiting for a turn now, past maxConcurrentRequests.",
    "meshd_requests_queued_total": "Requests that had to wait for a turn (maxConcurrentRequests reached).",
    "meshd_overloaded_total": "Requests refused with 503 by admission control, by reason (queue_full, pending_timeout).",
    "meshd_concurrency_limit": "Requests the router admits at once now: maxConcurrentRequests, or the adaptive limit below it.",
    "meshd_config_file_reloads_total": "Whole-config reloads (SIGHUP, POST /admin/reload), by result: applied, unchanged, refused.",
    "meshd_config_loaded_timestamp_seconds": "When the running meshd.yaml was loaded (Unix time).",
    "meshd_worker_up": "With --workers: 1 while a worker answers the supervisor's heartbeats, 0 once its last answer is over 3 s old.",
    "meshd_worker_heartbeat_age_seconds": "With --workers: seconds since a worker last answered a heartbeat (or since it started).",
    "meshd_worker_restarts_total": "With --workers: times the supervisor restarted a worker that died.",
    "meshd_discovery_last_update_age_seconds": "Seconds since a namer last knew the data it serves for a name to be current.",
    "meshd_discovery_stale": "1 while a namer serves last-known-good data for a name after a failure, else 0.",
    "meshd_daemonset_forwarded_total": "Attempts a router sent to another node's meshd (daemonset transformer).",
    "meshd_tls_handshakes_total": "TLS handshakes completed, by router (and client for meshd's own), and whether the session was resumed.",
    "meshd_tls_handshake_failures_total": "TLS handshakes that failed, by router (and client for meshd's own) and reason.",
    "meshd_tls_cert_reloads_total": "Changed TLS files read again, by certificate path and result (success, error).",
    "meshd_tls_cert_expiry_timestamp_seconds": "When the certificate in use expires (Unix time), by path.",
    "meshd_authz_denied_total": "Requests refused (403) by a router's authorization policy, by rule.",
    "meshd_h2_connection_errors_total": "HTTP/2 connections meshd closed for a protocol error or a flood, by router and reason.",
    "meshd_h2_streams_reset_total": "HTTP/2 client streams meshd reset itself, by router and reason (zero_window, malformed).",
    "meshd_h2_streams_refused_total": "Upstream HTTP/2 streams refused (GOAWAY, REFUSED_STREAM) and so retried elsewhere.",
    "meshd_h2_ping_timeouts_total": "Upstream HTTP/2 connections closed because a PING went unanswered.",
    "meshd_trace_spans_exported_total": "Spans the OTLP collector accepted (tracing).",
    "meshd_trace_spans_dropped_total": "Spans dropped instead of exported, by reason (queue_full, unreachable, timeout, bad_response, rejected, shutdown).",
    "meshd_trace_spans_queued": "Finished spans waiting for the exporter now (at most 2048).",
    "meshd_trace_malformed_headers_total": "Trace context headers that could not be parsed (a new trace was started), by header.",
    "meshd_grpc_timeouts_total": "grpc-timeout values read from gRPC requests, by router and result (applied, malformed).",
    "meshd_grpc_responses_total": "gRPC calls answered, by router, service and grpc_status (OK, UNAVAILABLE, ...; NONE: no grpc-status).",
}

_STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
_STATES: Final = ("live", "ejected", "probing")
_LE: Final = tuple(repr(bound) for bound in BUCKETS)

#: A scrape renders for at most about this long before letting the event loop run other work.
SLICE_S: Final = 0.001


#: a label value as the text format needs it (backslash, newline and double quote escaped)
_esc: Final = escape_label_value
#: a sample value as Go writes it (`3.0`, `1.5e+06`, `+Inf`), as prometheus-client does
_n: Final = format_value


class _Text:
    """The lines of every family meshd renders, by metric name (METRICS order).

    `flush()` turns the lines gathered so far into bytes, so that no single step joins and
    encodes the whole text (about 3 ms for 2.4 MB): the async renderer flushes every slice.
    """

    __slots__ = ("lines", "_chunks")

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {name: [] for name in METRICS}
        self._chunks: dict[str, list[bytes]] = {name: [] for name in METRICS}

    def flush(self) -> None:
        for name, lines in self.lines.items():
            if lines:
                self._chunks[name].append("".join(lines).encode("utf-8"))
                lines.clear()

    def render(self) -> bytes:
        self.flush()
        out: list[bytes] = []
        for name, chunks in self._chunks.items():
            kind = "counter" if name.endswith("_total") else "histogram" if "duration" in name else "gauge"
            out.append(f"# HELP {name} {METRICS[name]}\n# TYPE {name} {kind}\n".encode())
            out.extend(chunks)
        return b"".join(out)


def _steps(daemon: MetricsView, text: _Text) -> Iterator[None]:
    """Append every meshd series to `text`, yielding after each service, client and router:
    the points where a scrape may let the event loop run."""
    f = text.lines
    requests = f["meshd_requests_total"]
    duration = f["meshd_request_duration_seconds"]
    balance = f["meshd_retry_budget_balance"]
    pool = f["meshd_pool_connections"]
    waiters = f["meshd_pool_waiters"]
    queue_timeouts = f["meshd_pool_queue_timeouts_total"]
    endpoints = f["meshd_endpoints"]
    pending = f["meshd_endpoint_pending"]
    ewma = f["meshd_endpoint_ewma_seconds"]
    state = f["meshd_endpoint_state"]
    ejections = f["meshd_ejections_total"]
    all_ejected = f["meshd_all_ejected_picks_total"]
    reloads = f["meshd_config_reloads_total"]
    routes_version = f["meshd_routes_version"]
    routes_loaded = f["meshd_routes_loaded_timestamp_seconds"]
    faults_active = f["meshd_fault_rules_active"]
    faults_injected = f["meshd_faults_injected_total"]
    accepted = f["meshd_connections_accepted_total"]
    open_conns = f["meshd_connections_open"]
    forwarded = f["meshd_daemonset_forwarded_total"]
    for router in list(daemon.routers):
        r = f'router="{_esc(router.label)}"'
        for service, stats in list(router.stats.services.items()):
            rs = f'{r},service="{_esc(service)}"'
            for i, cls in enumerate(_STATUS_CLASSES, start=1):
                count = stats.by_class[i]
                if count:
                    requests.append(f'meshd_requests_total{{{rs},status_class="{cls}"}} {_n(count)}\n')
            cumulative = 0
            for le, n in zip(_LE, stats.buckets, strict=False):
                cumulative += n
                duration.append(f'meshd_request_duration_seconds_bucket{{le="{le}",{rs}}} {_n(cumulative)}\n')
            duration.append(f'meshd_request_duration_seconds_bucket{{le="+Inf",{rs}}} {_n(stats.count)}\n')
            duration.append(f"meshd_request_duration_seconds_count{{{rs}}} {_n(stats.count)}\n")
            duration.append(f"meshd_request_duration_seconds_sum{{{rs}}} {_n(stats.latency_sum)}\n")
            yield
        # named services under their own label, then every folded one under `_other`: their
        # counters are shared, so evicted services' counts stay in; the budget gauge has no sum
        # that would mean anything, so `_other` has none
        for name, service_state in list(router.named.items()):
            rs = f'{r},service="{_esc(name)}"'
            balance.append(f"meshd_retry_budget_balance{{{rs}}} {_n(service_state.budget.balance)}\n")
            _service_counters(rs, service_state.retries, service_state.timeouts, text)
            yield
        if router.folded_created:
            rs = f'{r},service="{OVERFLOW_SERVICE}"'
            _service_counters(rs, router.folded_retries, router.folded_timeouts, text)
        for client in list(router.clients.values()):
            rc = f'client="{_esc(client.label)}",{r}'
            ps = client.pool_statistics()
            pool.append(f'meshd_pool_connections{{{rc},state="idle"}} {_n(ps.idle)}\n')
            pool.append(f'meshd_pool_connections{{{rc},state="busy"}} {_n(ps.busy)}\n')
            pool.append(f'meshd_pool_connections{{{rc},state="dialing"}} {_n(ps.dialing)}\n')
            waiters.append(f"meshd_pool_waiters{{{rc}}} {_n(ps.waiters)}\n")
            queue_timeouts.append(f"meshd_pool_queue_timeouts_total{{{rc}}} {_n(ps.queue_timeouts)}\n")
            f["meshd_client_requests_in_flight"].append(f"meshd_client_requests_in_flight{{{rc}}} {_n(client.inflight)}\n")
            overflows = f["meshd_circuit_breaker_overflows_total"]
            overflows.append(
                f'meshd_circuit_breaker_overflows_total{{{rc},limit="maxRequests"}} {_n(client.overflows_requests)}\n'
            )
            overflows.append(
                f'meshd_circuit_breaker_overflows_total{{{rc},limit="maxPendingRequests"}} {_n(client.pending.overflows)}\n'
            )
            overflows.append(
                f'meshd_circuit_breaker_overflows_total{{{rc},limit="maxRetries"}} {_n(client.overflows_retries)}\n'
            )
            nodes = client.balancer.nodes()
            endpoints.append(f"meshd_endpoints{{{rc}}} {_n(len(nodes))}\n")
            cl = _esc(client.label)
            for node in nodes:
                rce = f'client="{cl}",endpoint="{_esc(node.member.label)}",{r}'
                pending.append(f"meshd_endpoint_pending{{{rce}}} {_n(node.pending)}\n")
                ewma.append(f"meshd_endpoint_ewma_seconds{{{rce}}} {_n(node.ewma_seconds)}\n")
                current = node.state
                for st in _STATES:
                    state.append(f'meshd_endpoint_state{{{rce},state="{st}"}} {"1.0" if st == current else "0.0"}\n')
            _attempt_series("meshd_client", rc, client.attempt_totals(), text)
            f["meshd_client_retries_total"].append(f"meshd_client_retries_total{{{rc}}} {_n(client.retries)}\n")
            for label, es in client.endpoint_stats():
                _attempt_series("meshd_endpoint", f'client="{cl}",endpoint="{_esc(label)}",{r}', es, text)
            bs = client.balancer.statistics()
            ejections.append(f"meshd_ejections_total{{{rc}}} {_n(bs.ejections)}\n")
            all_ejected.append(f"meshd_all_ejected_picks_total{{{rc}}} {_n(bs.all_ejected_picks)}\n")
            f["meshd_panic_picks_total"].append(f"meshd_panic_picks_total{{{rc}}} {_n(bs.panic_picks)}\n")
            f["meshd_balancer_panic"].append(f"meshd_balancer_panic{{{rc}}} {1 if bs.panic else 0}\n")
            f["meshd_ejections_prevented_total"].append(
                f"meshd_ejections_prevented_total{{{rc}}} {_n(bs.ejections_prevented)}\n"
            )
            yield
        watcher = daemon.routes_watchers.get(router.label)
        if watcher is not None:
            reloads.append(f'meshd_config_reloads_total{{result="success",{r}}} {_n(watcher.successes)}\n')
            reloads.append(f'meshd_config_reloads_total{{result="error",{r}}} {_n(watcher.errors)}\n')
            if watcher.version is not None and watcher.loaded_at is not None:
                labels = (f'{r},source="{_esc(watcher.source)}",version="{_esc(watcher.version)}",'
                          f'digest="{_esc(watcher.digest or "")}"')
                routes_version.append(f"meshd_routes_version{{{labels}}} 1.0\n")
                routes_loaded.append(f"meshd_routes_loaded_timestamp_seconds{{{r}}} {_n(watcher.loaded_at)}\n")
        if watcher is not None:
            held = router.match_rules
            faults_active.append(f"meshd_fault_rules_active{{{r}}} {_n(len(held.faults))}\n")
            for (rule, kind), count in list(held.injected.items()):
                labels = f'{r},rule="{_esc(rule)}",kind="{kind}"'
                faults_injected.append(f"meshd_faults_injected_total{{{labels}}} {_n(count)}\n")
            mirroring = router.mirroring
            for (rule, result), count in list(mirroring.sent.items()):
                labels = f'{r},rule="{_esc(rule)}",result="{result}"'
                f["meshd_mirrored_requests_total"].append(f"meshd_mirrored_requests_total{{{labels}}} {_n(count)}\n")
            for (rule, reason), count in list(mirroring.skipped.items()):
                labels = f'{r},rule="{_esc(rule)}",reason="{reason}"'
                f["meshd_mirror_skipped_total"].append(f"meshd_mirror_skipped_total{{{labels}}} {_n(count)}\n")
        listeners = daemon.listeners_of(router.label)
        accepted.append(f"meshd_connections_accepted_total{{{r}}} {_n(sum(lst.accepted for lst in listeners))}\n")
        open_conns.append(f"meshd_connections_open{{{r}}} {_n(sum(len(lst.connections) for lst in listeners))}\n")
        adm = router.admission
        f["meshd_requests_in_flight"].append(f"meshd_requests_in_flight{{{r}}} {_n(adm.inflight)}\n")
        f["meshd_requests_pending"].append(f"meshd_requests_pending{{{r}}} {_n(adm.pending)}\n")
        f["meshd_concurrency_limit"].append(f"meshd_concurrency_limit{{{r}}} {_n(adm.max_concurrent)}\n")
        f["meshd_requests_queued_total"].append(f"meshd_requests_queued_total{{{r}}} {_n(adm.queued)}\n")
        overloaded = f["meshd_overloaded_total"]
        overloaded.append(f'meshd_overloaded_total{{reason="queue_full",{r}}} {_n(adm.rejected_full)}\n')
        overloaded.append(f'meshd_overloaded_total{{reason="pending_timeout",{r}}} {_n(adm.rejected_timeout)}\n')
        if router.transformers:
            # clients dropped while idle took their counts with them: the router kept those
            total = router.evicted_forwarded + sum(c.forwarded for c in list(router.clients.values()))
            forwarded.append(f"meshd_daemonset_forwarded_total{{{r}}} {_n(total)}\n")
        yield
    _discovery(daemon, text)
    reloads_total = f["meshd_config_file_reloads_total"]
    for result, count in sorted(daemon.config_reloads.items()):
        reloads_total.append(f'meshd_config_file_reloads_total{{result="{result}"}} {_n(count)}\n')
    f["meshd_config_loaded_timestamp_seconds"].append(
        f"meshd_config_loaded_timestamp_seconds {_n(daemon.config_loaded_at)}\n"
    )
    _tls_steps(daemon, text)
    _h2_steps(daemon, text)
    _tracing(daemon, text)
    _grpc_steps(daemon, text)
    yield


#: the drop reasons always exported (at 0 too), so that a rate() over them starts at once
_DROP_REASONS: Final = ("queue_full", "unreachable", "timeout", "bad_response", "rejected", "shutdown")


def _tracing(daemon: MetricsView, text: _Text) -> None:
    """The tracer's counters (meshd/tracing/spans.py), when tracing is on."""
    tracer = getattr(getattr(daemon, "runtime", None), "tracer", None)
    if tracer is None:
        return
    f = text.lines
    f["meshd_trace_spans_exported_total"].append(f"meshd_trace_spans_exported_total {_n(tracer.exported)}\n")
    dropped = dict.fromkeys(_DROP_REASONS, 0) | dict(tracer.dropped)
    for reason, count in sorted(dropped.items()):
        f["meshd_trace_spans_dropped_total"].append(
            f'meshd_trace_spans_dropped_total{{reason="{_esc(reason)}"}} {_n(count)}\n'
        )
    f["meshd_trace_spans_queued"].append(f"meshd_trace_spans_queued {_n(len(tracer.queue))}\n")
    for header, count in sorted(tracer.malformed.items()):
        f["meshd_trace_malformed_headers_total"].append(
            f'meshd_trace_malformed_headers_total{{header="{_esc(header)}"}} {_n(count)}\n'
        )


def _discovery(daemon: MetricsView, text: _Text) -> None:
    """Each namer's freshness per name (namers without `freshness()` export nothing)."""
    age = text.lines["meshd_discovery_last_update_age_seconds"]
    stale = text.lines["meshd_discovery_stale"]
    now = daemon.runtime.clock.now()
    for prefix, namer in list(daemon.namers.items()):
        freshness = getattr(namer, "freshness", None)
        if freshness is None:
            continue
        n = _esc(prefix.show())
        for entry in freshness():
            labels = f'namer="{n}",name="{_esc(entry.name)}"'
            if entry.confirmed_at is not None:
                age.append(f"meshd_discovery_last_update_age_seconds{{{labels}}} {max(now - entry.confirmed_at, 0.0):.3f}\n")
            stale.append(f"meshd_discovery_stale{{{labels}}} {1 if entry.stale else 0}\n")


def _h2_steps(daemon: MetricsView, text: _Text) -> None:
    """The HTTP/2 families (meshd/http2/guard.py `H2Stats`), for routers that speak HTTP/2 on either
    side (`protocol: h2`, or clients with `protocol: h2`)."""
    f = text.lines
    for router in list(daemon.routers):
        stats = getattr(router, "h2_stats", None)
        if stats is None or not getattr(getattr(router, "config", None), "speaks_h2", False):
            continue
        r = f'router="{_esc(router.label)}"'
        for reason, count in sorted(stats.connection_errors.items()):
            f["meshd_h2_connection_errors_total"].append(
                f'meshd_h2_connection_errors_total{{reason="{_esc(reason)}",{r}}} {_n(count)}\n'
            )
        for reason, count in sorted(stats.streams_reset.items()):
            f["meshd_h2_streams_reset_total"].append(
                f'meshd_h2_streams_reset_total{{reason="{_esc(reason)}",{r}}} {_n(count)}\n'
            )
        f["meshd_h2_streams_refused_total"].append(f"meshd_h2_streams_refused_total{{{r}}} {_n(stats.streams_refused)}\n")
        f["meshd_h2_ping_timeouts_total"].append(f"meshd_h2_ping_timeouts_total{{{r}}} {_n(stats.ping_timeouts)}\n")


def _grpc_steps(daemon: MetricsView, text: _Text) -> None:
    """The gRPC families (meshd/grpc/stats.py `GrpcStats`), for routers that carry gRPC."""
    f = text.lines
    for router in list(daemon.routers):
        stats = getattr(router, "grpc_stats", None)
        if stats is None:
            continue
        r = f'router="{_esc(router.label)}"'
        t = stats.timeouts
        f["meshd_grpc_timeouts_total"].append(f'meshd_grpc_timeouts_total{{result="applied",{r}}} {_n(t.applied)}\n')
        f["meshd_grpc_timeouts_total"].append(f'meshd_grpc_timeouts_total{{result="malformed",{r}}} {_n(t.malformed)}\n')
        for (service, status), count in sorted(stats.responses.items()):
            f["meshd_grpc_responses_total"].append(
                f'meshd_grpc_responses_total{{grpc_status="{status}",{r},service="{_esc(service)}"}} {_n(count)}\n'
            )


def _tls_steps(daemon: MetricsView, text: _Text) -> None:
    """The TLS and authorization families (meshd/tls/stats.py, meshd/pipeline/authorize.py)."""
    f = text.lines
    failures = f["meshd_tls_handshake_failures_total"]
    for router in list(daemon.routers):
        listeners = daemon.listeners_of(router.label)
        refused = sum(getattr(lst, "tls_on_plaintext", 0) for lst in listeners)
        if refused:
            r = f'router="{_esc(router.label)}"'
            failures.append(f'meshd_tls_handshake_failures_total{{reason="tls_on_plaintext_port",{r}}} {_n(refused)}\n')
        authorization = getattr(router, "authorization", None)
        if authorization is not None:
            r = f'router="{_esc(router.label)}"'
            for rule, count in sorted(authorization.denied.items()):
                f["meshd_authz_denied_total"].append(f'meshd_authz_denied_total{{{r},rule="{_esc(rule)}"}} {_n(count)}\n')
    runtime = getattr(daemon, "runtime", None)
    stats = getattr(runtime, "tls", None)
    if stats is None:
        return
    for (router, client, reason), count in sorted(stats.failures.items()):
        labels = f'client="{_esc(client)}",' if client else ""
        failures.append(
            f'meshd_tls_handshake_failures_total{{{labels}reason="{_esc(reason)}",router="{_esc(router)}"}} {_n(count)}\n'
        )
    for (router, client, resumed), count in sorted(stats.handshakes.items()):
        labels = f'client="{_esc(client)}",' if client else ""
        f["meshd_tls_handshakes_total"].append(
            f'meshd_tls_handshakes_total{{{labels}resumed="{resumed}",router="{_esc(router)}"}} {_n(count)}\n'
        )
    for (path, result), count in sorted(stats.reloads.items()):
        f["meshd_tls_cert_reloads_total"].append(
            f'meshd_tls_cert_reloads_total{{path="{_esc(path)}",result="{result}"}} {_n(count)}\n'
        )
    for path, expiry in sorted(stats.expiry.items()):
        f["meshd_tls_cert_expiry_timestamp_seconds"].append(
            f'meshd_tls_cert_expiry_timestamp_seconds{{path="{_esc(path)}"}} {_n(expiry)}\n'
        )


def _attempt_series(prefix: str, labels: str, stats: AttemptStats, text: _Text) -> None:
    """`{prefix}_requests_total`, `_failures_total` and `_request_duration_seconds` of one
    client's or endpoint's attempt counters."""
    f = text.lines
    f[f"{prefix}_requests_total"].append(f"{prefix}_requests_total{{{labels}}} {_n(stats.requests)}\n")
    f[f"{prefix}_failures_total"].append(f"{prefix}_failures_total{{{labels}}} {_n(stats.failures)}\n")
    duration = f[f"{prefix}_request_duration_seconds"]
    name = f"{prefix}_request_duration_seconds"
    cumulative = 0
    for le, n in zip(_LE, stats.buckets, strict=False):
        cumulative += n
        duration.append(f'{name}_bucket{{le="{le}",{labels}}} {_n(cumulative)}\n')
    duration.append(f'{name}_bucket{{le="+Inf",{labels}}} {_n(stats.requests)}\n')
    duration.append(f"{name}_count{{{labels}}} {_n(stats.requests)}\n")
    duration.append(f"{name}_sum{{{labels}}} {_n(stats.latency_sum)}\n")


def _service_counters(rs: str, c: RetryCounters, t: TimeoutCounters, text: _Text) -> None:
    f = text.lines
    retries = f["meshd_retries_total"]
    retries.append(f'meshd_retries_total{{reason="response",{rs}}} {_n(c.response)}\n')
    retries.append(f'meshd_retries_total{{reason="error",{rs}}} {_n(c.error)}\n')
    retries.append(f'meshd_retries_total{{reason="requeue",{rs}}} {_n(c.requeue)}\n')
    f["meshd_retry_budget_exhausted_total"].append(f"meshd_retry_budget_exhausted_total{{{rs}}} {_n(c.budget_exhausted)}\n")
    f["meshd_retry_limit_reached_total"].append(f"meshd_retry_limit_reached_total{{{rs}}} {_n(c.limit)}\n")
    timeouts = f["meshd_timeouts_total"]
    timeouts.append(f'meshd_timeouts_total{{kind="total",{rs}}} {_n(t.total)}\n')
    timeouts.append(f'meshd_timeouts_total{{kind="deadline",{rs}}} {_n(t.deadline)}\n')
    timeouts.append(f'meshd_timeouts_total{{kind="attempt",{rs}}} {_n(t.attempt)}\n')


def render_now(daemon: MetricsView) -> bytes:
    """meshd's own families as Prometheus text, at once (tests, and the registry adapter below)."""
    text = _Text()
    for _ in _steps(daemon, text):
        pass
    return text.render()


async def render(daemon: MetricsView, slice_s: float = SLICE_S) -> bytes:
    """meshd's own families as Prometheus text, letting the event loop run every `slice_s`."""
    text = _Text()
    clock = time.perf_counter
    until = clock() + slice_s
    for _ in _steps(daemon, text):
        if clock() >= until:
            text.flush()
            await asyncio.sleep(0)
            until = clock() + slice_s
    return text.render()


class MeshdCollector:
    """meshd's families on the runtime's registry, for code that reads the registry
    (`registry.get_sample_value(...)`). `/metrics` does not go through it (see `Exporter`)."""

    def __init__(self, daemon: MetricsView) -> None:
        self._daemon = daemon
        self._hidden = False

    def collect(self) -> Iterator[Family]:
        if not self._hidden:
            yield from parse(render_now(self._daemon).decode("utf-8"))

    @contextmanager
    def hidden(self) -> Iterator[None]:
        self._hidden = True
        try:
            yield
        finally:
            self._hidden = False


class Exporter:
    """What `/metrics` serves: meshd's families rendered in slices, then the namers' metrics."""

    def __init__(self, daemon: MetricsView, registry: Registry) -> None:
        self._daemon = daemon
        self._registry = registry
        self._collector = MeshdCollector(daemon)
        registry.register(self._collector)
        self._current: asyncio.Task[bytes] | None = None

    async def scrape(self) -> bytes:
        """The exposition text. Scrapes arriving while one is rendered share its result."""
        task = self._current
        if task is None:
            task = self._current = asyncio.get_running_loop().create_task(self._render(), name="metrics-scrape")
            task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[bytes]) -> None:
        if self._current is task:
            self._current = None

    async def _render(self) -> bytes:
        own = await render(self._daemon)
        with self._collector.hidden():  # the registry's other collectors: the namers' few series
            others = self._registry.render()
        return b"".join((own, others))
