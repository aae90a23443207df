"""meshd's own exposition writer (meshd/admin/metrics.py): the same text prometheus-client would
write, whatever the label values and numbers, rendered in slices or at once alike."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from meshd.admin.metrics import METRICS, Exporter, _esc, _n, render, render_now
from meshd.exposition import Registry
from meshd.pipeline.stats import OVERFLOW_SERVICE
from meshd.runtime import Runtime
from routing.path import Path
from tests.meshd.test_service_table import make_router


class FakeDaemon:
    """What the renderer reads of a daemon: its routers, routes watchers, listeners, namers, clock."""

    def __init__(self, *routers: object) -> None:
        self.routers = list(routers)
        self.routes_watchers: dict[str, object] = {}
        self.namers: dict[Path, object] = {}
        self.runtime = Runtime()
        self.config_reloads = {"applied": 0, "unchanged": 0, "refused": 0}
        self.config_loaded_at = 0.0

    def listeners_of(self, label: str) -> list[object]:
        return []


numbers = st.one_of(
    st.integers(0, 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.0005, 123456.0, 1234567.0, 1e16, 1e-7, math.inf, -math.inf]),
)


@given(numbers)
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert _n(value) == floatToGoString(value)


@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_any_service_name_round_trips_through_the_text_format(name: str) -> None:
    router = make_router()
    router.stats.observe(name, 200, 0.002)
    text = render_now(FakeDaemon(router)).decode()  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["meshd_requests"].samples
    assert sample.labels == {"router": "outgoing", "service": name, "status_class": "2xx"}
    assert sample.value == 1
    assert _esc(name).count("\n") == 0


async def test_a_sliced_rendering_writes_the_same_text_as_one_at_once() -> None:
    router = make_router()
    router.stats.max_services = 50
    for i in range(120):
        path = Path.read(f"/svc/s{i}")
        router.service_for(path)
        router.stats.observe(path.show(), 200 + 100 * (i % 4), i / 1000)
    router.services[Path.read("/svc/s3")].retries.response = 7
    router.folded_timeouts.total = 4
    daemon = FakeDaemon(router)
    sliced = await render(daemon, slice_s=0.0)  # type: ignore[arg-type]  # a yield after every step
    assert sliced == render_now(daemon)  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(sliced.decode())}
    assert set(METRICS) == {
        n + "_total" if f.type == "counter" else n for n, f in families.items()
    }
    services = {s.labels["service"] for s in families["meshd_retries"].samples}
    assert len(services) == 51 and OVERFLOW_SERVICE in services  # 50 named, and `_other`
    retries = {(s.labels["service"], s.labels["reason"]): s.value for s in families["meshd_retries"].samples}
    assert retries[("/svc/s3", "response")] == 7
    timeouts = {(s.labels["service"], s.labels["kind"]): s.value for s in families["meshd_timeouts"].samples}
    assert timeouts[(OVERFLOW_SERVICE, "total")] == 4
    balances = {s.labels["service"] for s in families["meshd_retry_budget_balance"].samples}
    assert OVERFLOW_SERVICE not in balances and len(balances) == 50


async def test_concurrent_scrapes_share_one_rendering() -> None:
    router = make_router()
    router.service_for(Path.read("/svc/a"))
    registry = Registry()
    exporter = Exporter(FakeDaemon(router), registry)  # type: ignore[arg-type]
    first, second = await asyncio.gather(exporter.scrape(), exporter.scrape())
    assert first is second
    third = await exporter.scrape()
    assert third == first and third is not first  # a later scrape renders afresh
    # the registry still sees meshd's families (for code that reads it), once each
    assert registry.get_sample_value("meshd_retries_total", {"router": "outgoing", "service": "/svc/a", "reason": "error"}) == 0
    assert first.count(b"# TYPE meshd_retries_total counter") == 1
