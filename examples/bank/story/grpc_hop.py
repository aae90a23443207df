"""The bank's gRPC hop as meshd saw it: ledger postings as `bank.Ledger/Post` through the `grpc` router.

With the demo's gRPC hop on (the default), payments posts to the ledger as a gRPC call through meshd's
HTTP/2 router (`protocol: h2`, identifier `grpc`, classifier `grpc.default`). After the story the demo
reads meshd's metrics: the calls by the `grpc-status` payments got (`meshd_grpc_responses_total`), and the
attempts meshd retried (`meshd_retries_total`: the UNAVAILABLEs of a ledger replica being killed, and
connections refused while it restarts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from examples.bank.story.topology import Layout

#: the router the demo's gRPC hop goes through (topology.grpc_router)
GRPC_ROUTER = "grpc"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcHopReport:
    #: calls answered to payments, by grpc-status name (OK, UNAVAILABLE, ...)
    by_status: dict[str, int] = field(default_factory=dict)
    #: attempts meshd sent again, by reason (response: a retryable grpc-status; error; requeue)
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(self.by_status.values())

    def to_json(self) -> dict[str, object]:
        return {"by_status": dict(self.by_status), "retries": dict(self.retries)}

    def line(self) -> str:
        statuses = ", ".join(f"{name} {count}" for name, count in sorted(self.by_status.items(), key=lambda kv: -kv[1]))
        retried = sum(self.retries.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.retries.items()) if count)
        return (
            f"gRPC: {self.calls} ledger postings as bank.Ledger/Post through meshd's HTTP/2 router "
            f"({statuses or 'none'}); {retried} attempts retried by meshd" + (f" ({reasons})" if reasons else "")
        )


async def probe_grpc_hop(session: aiohttp.ClientSession, layout: Layout) -> GrpcHopReport:
    async with session.get(f"{layout.admin_url}/metrics", timeout=aiohttp.ClientTimeout(total=5.0)) as response:
        text = await response.text()
    by_status: dict[str, int] = {}
    retries: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("router") != GRPC_ROUTER:
                continue
            if sample.name == "meshd_grpc_responses_total":
                status = sample.labels.get("grpc_status", "NONE")
                by_status[status] = by_status.get(status, 0) + int(sample.value)
            elif sample.name == "meshd_retries_total":
                reason = sample.labels.get("reason", "")
                retries[reason] = retries.get(reason, 0) + int(sample.value)
    return GrpcHopReport(by_status={k: v for k, v in by_status.items() if v}, retries=retries)
