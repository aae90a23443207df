"""meshd's counters, read from its admin `/metrics` (Prometheus text), as totals the demo takes deltas of.

The demo only sums: retries over every service and reason, ejections over every client, successful config
reloads over every router (a refused reload must not count as the new routes being live). A counter meshd does
not export reads as 0, so the report still prints when meshd lacks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

RETRIES: Final = "meshd_retries_total"
EJECTIONS: Final = "meshd_ejections_total"
RELOADS: Final = "meshd_config_reloads_total"
REQUESTS: Final = "meshd_requests_total"


@dataclass(frozen=True, slots=True)
class MeshCounters:
    requests: float = 0.0
    retries: float = 0.0
    ejections: float = 0.0
    reloads: float = 0.0

    def minus(self, earlier: MeshCounters) -> MeshCounters:
        return MeshCounters(
            self.requests - earlier.requests,
            self.retries - earlier.retries,
            self.ejections - earlier.ejections,
            self.reloads - earlier.reloads,
        )


def parse_counters(text: str) -> MeshCounters:
    totals = {REQUESTS: 0.0, RETRIES: 0.0, EJECTIONS: 0.0, RELOADS: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RELOADS and sample.labels.get("result", "success") != "success":
                continue
            if sample.name in totals:
                totals[sample.name] += float(sample.value)
    return MeshCounters(totals[REQUESTS], totals[RETRIES], totals[EJECTIONS], totals[RELOADS])


async def scrape(session: aiohttp.ClientSession, admin_url: str) -> MeshCounters:
    async with session.get(f"{admin_url}/metrics", timeout=aiohttp.ClientTimeout(total=5.0)) as response:
        response.raise_for_status()
        return parse_counters(await response.text())
