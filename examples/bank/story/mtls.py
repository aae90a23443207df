"""The node-to-node hop over mutual TLS: what went through it, and one caller it refused.

The outgoing router reaches the ledger through the `incoming` router over mutual TLS, presenting node A's
certificate (identity `NODE_IDENTITY`); the incoming router's policy lets only that identity call the ledger.
After the story, the demo calls the incoming router itself with another workload's certificate: it must be
refused with 403 and an `l5d-err` naming the rule, and the ledger must never see it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from examples.bank.story.topology import INCOMING_NAME, NODE_IDENTITY, STRANGER_IDENTITY, Layout


@dataclass(frozen=True, slots=True, kw_only=True)
class MtlsReport:
    #: ledger requests the incoming router answered (each came over mutual TLS from node A's meshd)
    hop_requests: int
    #: TLS handshakes the incoming router completed (pooled connections: far fewer than requests)
    handshakes: int
    caller: str
    refused_caller: str
    refused_status: int
    refused_error: str

    @property
    def ok(self) -> bool:
        return self.hop_requests > 0 and self.refused_status == 403

    def to_json(self) -> dict[str, object]:
        return {
            "hop_requests": self.hop_requests,
            "handshakes": self.handshakes,
            "caller": self.caller,
            "refused_caller": self.refused_caller,
            "refused_status": self.refused_status,
            "refused_error": self.refused_error,
        }


async def probe_mtls(session: aiohttp.ClientSession, layout: Layout) -> MtlsReport:
    status, error = await _call_as_stranger(layout)
    async with session.get(f"{layout.admin_url}/metrics", timeout=aiohttp.ClientTimeout(total=5.0)) as response:
        text = await response.text()
    hop = handshakes = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("router") != "incoming":
                continue
            if sample.name == "meshd_requests_total" and sample.labels.get("service") == "/svc/ledger":
                hop += sample.value
            elif sample.name == "meshd_tls_handshakes_total":
                handshakes += sample.value
    return MtlsReport(
        hop_requests=int(hop),
        handshakes=int(handshakes),
        caller=NODE_IDENTITY,
        refused_caller=STRANGER_IDENTITY,
        refused_status=status,
        refused_error=error,
    )


async def _call_as_stranger(layout: Layout) -> tuple[int, str]:
    """GET the ledger from the incoming router with a certificate of another workload (a stranger)."""
    tls = layout.tls_dir
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    context.load_cert_chain(tls / "stranger.crt", tls / "stranger.key")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", layout.incoming_port, ssl=context, server_hostname=INCOMING_NAME), 5.0
    )
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    error = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("l5d-err:")), "")
    return status, error
