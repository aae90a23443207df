"""What a router counts about gRPC: `grpc-timeout` values, and calls by `grpc-status`.

One `GrpcStats` per router that can carry gRPC (`protocol: h2`); HTTP/1-only routers have none
and pay nothing. Plain ints in a dict, read by the metrics exporter at scrape time
(`meshd_grpc_timeouts_total`, `meshd_grpc_responses_total`; docs/metrics.md).

The label set is bounded: the service label is the router's bounded one (`RouterStats.label_for`:
at most 1,000 names, then `_other`) and the status label is one of the 17 code names or `NONE`
(`status.status_label`), so a peer sending odd `grpc-status` values cannot grow it.
"""

from __future__ import annotations

from meshd.grpc.timeout import GrpcTimeoutCounters


class GrpcStats:
    __slots__ = ("timeouts", "responses")

    def __init__(self) -> None:
        #: `grpc-timeout` values read by the timeouts stage (malformed, applied)
        self.timeouts = GrpcTimeoutCounters()
        #: gRPC calls answered, by (service label, grpc-status label)
        self.responses: dict[tuple[str, str], int] = {}

    def count_response(self, service: str, status: str) -> None:
        key = (service, status)
        self.responses[key] = self.responses.get(key, 0) + 1
