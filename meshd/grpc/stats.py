"""What a router counts about gRPC: `grpc-timeout` values, and calls by `grpc-status`.

One `GrpcStats` per router that can carry gRPC (`protocol: h2`); HTTP/1-only routers have none
and pay nothing. Plain ints in a dict, read by the metrics exporter at scrape time
(`meshd_grpc_timeouts_total`, `meshd_grpc_responses_total`; docs/metrics.md).

The label set is bounded: the service label is the router's bounded one (`RouterStats.label_for`:
at most 1,000 names, then `_other`) and the status label is one of the 17 code names or `NONE`
(`status.status_label`), so a peer sending odd `grpc-status` values cannot grow it.
"""

from __future__ import annotations

from collections.abc import Callable

from meshd.grpc.status import status_label
from meshd.grpc.timeout import GrpcTimeoutCounters


def _same(name: str) -> str:
    return name


class GrpcStats:
    __slots__ = ("timeouts", "responses", "_label_for")

    def __init__(self, label_for: Callable[[str], str] = _same) -> None:
        #: the router's bounded service label of a logical name (`RouterStats.label_for`)
        self._label_for = label_for
        #: `grpc-timeout` values read by the timeouts stage (malformed, applied)
        self.timeouts = GrpcTimeoutCounters()
        #: gRPC calls answered, by (service label, grpc-status label)
        self.responses: dict[tuple[str, str], int] = {}

    def count_response(self, service: str, status: str) -> None:
        key = (service, status)
        self.responses[key] = self.responses.get(key, 0) + 1

    def observe(self, name: str, code: int | None) -> None:
        """One gRPC call answered to a client: its logical name and `grpc-status` (None: none)."""
        self.count_response(self._label_for(name), status_label(code))
