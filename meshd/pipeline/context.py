"""RouteContext: what the pipeline knows about one request, beside the wire message it routes.

The listener parses a `Request` (meshd/http/messages.py: method, target, headers, body, ...) and
wraps it in a `RouteContext` when it runs it (`ServerProtocol._serve`): one object per request.
Every stage, filter and the client take the context; what each one learns about the request
(its logical name, binding, deadline, attempts, ...) is written here, not on the wire message,
so the HTTP layer (`meshd.http`, `meshd.pool`) knows nothing of routing. Who writes each field is
noted next to it; a field's reader always runs after its writer (the order is in assemble.py).
"""

from __future__ import annotations

from typing import Any

from balancers.node import Node
from meshd.http.messages import Request
from meshd.retry.classifiers import ResponseClassifier
from meshd.tracing.spans import Span
from routing.delegate import Chooser
from routing.path import Path


class RouteContext:
    __slots__ = (
        "request",
        "reqid",
        "local_dtab",
        "logical_path",
        "logical_name",
        "chooser",
        "classifier",
        "deadline",
        "attempts",
        "last_node",
        "peer_identity",
        "trace_id",
        "span",
        "grpc",
    )

    def __init__(self, request: Request, peer_identity: str = "") -> None:
        #: the wire message: what the upstream gets (stages may change its target and headers)
        self.request = request
        #: the workload identity in the client's verified TLS certificate, "" without one
        #: (the listener, once per connection: meshd/tls/identity.py)
        self.peer_identity = peer_identity
        #: the request id (`l5d-reqid`): kept from a trusted caller, else a new one (hygiene)
        self.reqid = ""
        #: the local dtab text (l5d-ctx-dtab ++ l5d-dtab) when trusted, else "" (hygiene)
        self.local_dtab = ""
        #: the logical name as a Path, `/svc/accounts` (identify)
        self.logical_path: Path | None = None
        #: the logical name as text: the stats label and `l5d-dst-service` (identify)
        self.logical_name = ""
        #: picks the bound destination of each attempt (bind); kept for the whole request, so a
        #: reload never changes its rules mid-way
        self.chooser: Chooser | None = None
        #: the service's response classifier; failure accrual and retries use it (classify)
        self.classifier: ResponseClassifier | None = None
        #: absolute deadline on meshd's clock (meshd.clock, `Runtime.clock`), or None (timeouts);
        #: the retry loop skips a retry whose backoff would end past it
        self.deadline: float | None = None
        #: attempts made so far (retries; the access log reports it)
        self.attempts = 0
        #: the balancer node of the latest attempt: a retry asks the balancer to avoid it (client);
        #: its member is the client's `Endpoint`, which sits above the pipeline, hence `Any`
        self.last_node: Node[Any] | None = None
        #: the request's trace id (32 hex digits), "" when tracing is off (the trace filter,
        #: meshd/pipeline/tracing.py; the access log and `l5d-trace-id` on errors show it)
        self.trace_id = ""
        #: the request's span when it is sampled, else None (the trace filter); the client adds
        #: a child span per attempt, the listener ends it
        self.span: Span | None = None
        #: a gRPC request on a router that carries gRPC (timeouts): each attempt sends the time
        #: left before `deadline` as `grpc-timeout`, and the access log shows its `grpc-status`
        self.grpc = False

    def __repr__(self) -> str:
        return f"<RouteContext {self.request!r} name={self.logical_name!r} attempts={self.attempts}>"
