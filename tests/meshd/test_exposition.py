"""meshd/exposition.py, meshd's own Prometheus text format (it replaced prometheus-client in the
daemon and its workers): label values and numbers survive prometheus-client's parser whatever
they are, the namers' counters and the registry write the text prometheus-client wrote, meshd's
reader agrees with prometheus-client's, and a real meshd's `/metrics` passes `promtool check
metrics` and holds the families it held before."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
from typing import Any

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from meshd.admin.metrics import METRICS
from meshd.exposition import (
    CONTENT_TYPE,
    Counter,
    Family,
    Registry,
    escape_help,
    escape_label_value,
    format_value,
    parse,
    render,
)
from meshd.workers import _Liveness, _Merged
from tests.support.client import RawConnection
from tests.support.prometheus import find_program

#: any text a label value or HELP may hold (no lone surrogates: they cannot be UTF-8)
texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
tricky = st.text(st.sampled_from(['\\', '"', "\n", "n", " ", "}", ",", "=", "{", "é", "#"]), max_size=12)
values = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.0005, 123456.0, 1234567.0, 1e16, 1e-7, 2**53 + 1.0, math.inf, -math.inf]),
)
label_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: not s.startswith("__"))


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@given(values)
def test_numbers_are_written_as_prometheus_client_writes_them_and_read_back_exactly(value: float) -> None:
    text = format_value(value)
    assert text == floatToGoString(value)  # type: ignore[no-untyped-call]
    line = f"x {text}\n"
    (theirs,) = text_string_to_metric_families(line)
    (ours,) = parse(line)
    assert same_number(theirs.samples[0].value, float(value))
    assert same_number(ours.samples[0].value, float(value))


@given(st.one_of(texts, tricky))
def test_any_label_value_round_trips_through_both_parsers(value: str) -> None:
    family = Family("meshd_x", "h", "gauge")
    family.add_sample("meshd_x", {"a": value, "b": "plain"}, 1.0)
    text = render([family]).decode()
    assert text.count("\n") == 3  # escaping leaves one line per sample
    (theirs,) = text_string_to_metric_families(text)
    (ours,) = parse(text)
    assert theirs.samples[0].labels == ours.samples[0].labels == {"a": value, "b": "plain"}
    assert escape_label_value(value).count('"') == escape_label_value(value).count('\\"')


@given(st.one_of(texts, tricky))
def test_any_help_text_round_trips_through_both_parsers(help_text: str) -> None:
    family = Family("meshd_x", help_text, "counter")
    text = render([family]).decode()
    assert text.split("\n")[0] == f"# HELP meshd_x {escape_help(help_text)}"
    (theirs,) = text_string_to_metric_families(text)
    (ours,) = parse(text)
    assert theirs.documentation == ours.documentation
    if help_text == help_text.strip():  # both readers strip the line: surrounding blanks do not survive
        assert ours.documentation == help_text


families_st = st.lists(
    st.tuples(
        st.sampled_from(["counter", "gauge", "histogram"]),
        st.lists(st.tuples(st.dictionaries(label_names, st.one_of(texts, tricky), max_size=3), values), max_size=4),
    ),
    max_size=4,
)


@given(families_st)
def test_what_render_writes_parse_reads_back_and_prometheus_client_reads_the_same(
    spec: list[tuple[str, list[tuple[dict[str, str], float]]]],
) -> None:
    written = []
    for i, (kind, samples) in enumerate(spec):
        name = f"meshd_f{i}_total" if kind == "counter" else f"meshd_f{i}"
        family = Family(name, f"help {i}", kind)
        for labels, value in samples:
            if kind == "histogram":
                family.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, float(value))
                family.add_sample(name + "_count", labels, float(value))
                family.add_sample(name + "_sum", labels, float(value))
            else:
                family.add_sample(name, labels, float(value))
        written.append(family)
    text = render(written).decode()
    ours = list(parse(text))
    assert [(f.name, f.type, f.documentation) for f in ours] == [(f.name, f.type, f.documentation) for f in written]
    for a, b in zip(ours, written, strict=True):
        assert [(s.name, s.labels) for s in a.samples] == [(s.name, s.labels) for s in b.samples]
        assert all(same_number(x.value, y.value) for x, y in zip(a.samples, b.samples, strict=True))
    theirs = list(text_string_to_metric_families(text))
    assert [f.name for f in theirs] == [f.name.removesuffix("_total") for f in written]
    assert [[(s.name, s.labels) for s in f.samples] for f in theirs] == [
        [(s.name, s.labels) for s in f.samples] for f in ours
    ]


_CREATED = re.compile(r"^(\S+_created(?:\{.*\})?) \S+$", re.MULTILINE)


def test_counters_and_the_registry_write_what_prometheus_client_wrote() -> None:
    """The namers' counters (fs, dns, k8s) as prometheus-client's Counter and generate_latest wrote
    them, byte for byte but for the creation times' values."""
    theirs_registry = prometheus_client.CollectorRegistry()
    ours_registry = Registry()
    for module, registry in ((prometheus_client, theirs_registry), (None, ours_registry)):
        make: Any = prometheus_client.Counter if module else Counter
        lookups = make("meshd_dns_lookups_total", "DNS lookups by result.", ["result"], registry=registry)
        for result in ("ok", "nxdomain", "error"):
            lookups.labels(result=result)
        lookups.labels(result="error").inc(7)
        events = make("meshd_k8s_watch_events", 'Watch events (a "quoted" \\ help\nline).',
                      ["namespace", "service", "type"], registry=registry)
        events.labels("default", 'we"ird\\name\n', "ADDED").inc()
        events.labels(namespace="kube-system", service="dns", type="MODIFIED").inc(2.5)
    theirs = prometheus_client.generate_latest(theirs_registry).decode()
    ours = ours_registry.render().decode()
    assert _CREATED.sub(r"\1 T", ours) == _CREATED.sub(r"\1 T", theirs)
    assert ours_registry.get_sample_value("meshd_dns_lookups_total", {"result": "error"}) == 7.0
    assert ours_registry.get_sample_value("meshd_dns_lookups_total", {"result": "nosuch"}) is None


def test_counters_refuse_what_prometheus_client_refused() -> None:
    registry = Registry()
    counter = Counter("meshd_x_total", "h", ["result"], registry=registry)
    with pytest.raises(ValueError):
        Counter("meshd_x", "again", ["result"], registry=registry)  # the same family twice
    with pytest.raises(ValueError):
        counter.labels(result="ok").inc(-1)
    with pytest.raises(ValueError):
        counter.labels(outcome="ok")
    with pytest.raises(ValueError):
        counter.labels("ok", "extra")
    with pytest.raises(ValueError):
        Counter("meshd-bad", "h")
    registry.unregister(counter)
    Counter("meshd_x", "again", ["result"], registry=registry)


@pytest.mark.parametrize("line", [
    'x{a="1"',  # unclosed
    'x{a=1} 2',  # unquoted value
    'x{a="1" b="2"} 3',  # no comma
    "x",  # no value
    "x one",  # not a number
    "x 1 2 3",  # too many fields
])
def test_malformed_lines_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        list(parse(line + "\n"))


async def test_a_real_meshd_metrics_page_passes_promtool_and_reads_the_same_with_both_parsers(
    make_mesh, make_upstream
) -> None:
    promtool = find_program("promtool")
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    try:
        assert (await conn.request("GET", "/", host="svc")).status == 200
        assert (await conn.request("GET", "/", host="nosuch")).status == 502
    finally:
        await conn.close()
    conn = await RawConnection.open(mesh.admin_port)
    try:
        resp = await asyncio.wait_for(conn.request("GET", "/metrics", host="localhost"), 5)
    finally:
        await conn.close()
    assert resp.status == 200 and resp.header("content-type") == CONTENT_TYPE
    text = resp.body.decode()

    await promtool_accepts(promtool, text)

    theirs = {f.name: f for f in text_string_to_metric_families(text)}
    ours = {f.name.removesuffix("_total") if f.type == "counter" else f.name: f for f in parse(text)}
    assert theirs.keys() == ours.keys()
    for name, family in theirs.items():
        assert (family.type, family.documentation) == (ours[name].type, ours[name].documentation), name
        assert [(s.name, s.labels, s.value) for s in family.samples] == [
            (s.name, s.labels, s.value) for s in ours[name].samples
        ], name
    # the families this config exported with prometheus-client: every one meshd defines but those
    # that need a feature it does not use, and the fs namer's counter with its creation times
    exported = {f.name for f in parse(text)}
    assert {"meshd_requests_total", "meshd_request_duration_seconds", "meshd_client_requests_total",
            "meshd_endpoint_state", "meshd_config_reloads_total", "meshd_fs_reloads_total",
            "meshd_fs_reloads_created"} <= exported
    assert exported - {"meshd_fs_reloads_total", "meshd_fs_reloads_created"} <= set(METRICS)
    assert mesh.daemon.runtime.registry.get_sample_value(
        "meshd_requests_total", {"router": "outgoing", "service": "/svc/svc", "status_class": "2xx"}
    ) == 1.0

    # the workers' supervisor sums such texts (two workers here) and adds its own families: still
    # a text promtool accepts, counters summed, the namer counters' creation times not
    merged_text = render([*_Merged([text, text]).collect(), *_Liveness([(True, 0.5), (True, 0.25)], [0, 1]).collect()])
    await promtool_accepts(promtool, merged_text.decode())
    merged = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(merged_text.decode()) for s in f.samples}
    one = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(text) for s in f.samples}
    key = ("meshd_requests_total", (("router", "outgoing"), ("service", "/svc/svc"), ("status_class", "2xx")))
    assert merged[key] == 2.0
    created = [k for k in one if k[0] == "meshd_fs_reloads_created"]
    assert created and all(merged[k] == one[k] for k in created)
    assert merged[("meshd_worker_restarts_total", (("worker", "1"),))] == 1.0


async def promtool_accepts(promtool: str, text: str) -> None:
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
