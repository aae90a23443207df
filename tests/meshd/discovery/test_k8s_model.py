"""Pure rules of the k8s namer: parsing the API's objects, readiness, port mapping.

Its reconnect backoff is the `exponential` kind of balancers/backoff.py (test_k8s_config.py)."""

from __future__ import annotations

import json
import pathlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.discovery.addr import NEG, Address, Bound
from meshd.discovery.k8s_model import (
    EndpointGroup,
    GroupEndpoint,
    GroupPort,
    MalformedObject,
    ServiceName,
    ServicePort,
    ServiceSpec,
    object_name,
    parse_endpoint_slice,
    parse_endpoints,
    parse_service,
    parse_service_name,
    resolve,
)

FIXTURES = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "k8s-api" / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def fixture_groups() -> list[EndpointGroup]:
    return [g for item in fixture("endpointslice-list.json")["items"] for g in parse_endpoint_slice(item)]


def test_slice_fixture_readiness_follows_the_conditions():
    by_ip = {ep.address: ep for g in fixture_groups() for ep in g.endpoints}
    assert by_ip["10.244.1.17"].ready and by_ip["10.244.2.9"].ready
    assert not by_ip["10.244.1.23"].ready  # ready: false
    assert not by_ip["10.244.3.4"].ready  # terminating (still serving): never used
    assert by_ip["10.244.1.17"] == GroupEndpoint("10.244.1.17", True, "node-a", "us-east-1a", "web-5d8f7c9b6-2xkqv")


def test_missing_ready_means_ready_but_terminating_never_is():
    raw = {"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {}},
                         {"addresses": ["10.0.0.3"], "conditions": {"terminating": True}}],
           "ports": [{"name": "http", "port": 80}]}
    [group] = parse_endpoint_slice(raw)
    assert [ep.ready for ep in group.endpoints] == [True, True, False]
    assert group.ports == (GroupPort("http", 80, "TCP"),)


def test_empty_slice_with_null_lists_is_an_empty_group():
    [group] = parse_endpoint_slice(fixture("endpointslice-empty.json"))
    assert group == EndpointGroup((), ())


def test_endpoints_fixture_uses_addresses_and_not_ready_addresses():
    web, api = fixture("endpoints-list.json")["items"]
    [subset] = parse_endpoints(web)
    assert [(ep.address, ep.ready) for ep in subset.endpoints] == [
        ("10.244.1.17", True), ("10.244.2.9", True), ("10.244.1.23", False)]
    assert parse_endpoints(api) == ()  # no `subsets` key at all
    assert parse_endpoints(fixture("endpoints-get.json")) == (subset,)


def test_service_fixture_keeps_int_or_string_target_ports():
    spec = parse_service(fixture("service-get.json"))
    assert spec.ports == (ServicePort("http", 80, "http", "TCP"), ServicePort("admin", 9990, 9990, "TCP"))


@pytest.mark.parametrize("raw", [
    {"metadata": {}},
    {"metadata": "x", "endpoints": []},
    {"metadata": {"name": "a"}, "endpoints": [{"addresses": []}]},
    {"metadata": {"name": "a"}, "endpoints": [{"addresses": ["1.1.1.1"], "conditions": {"ready": "yes"}}]},
    {"metadata": {"name": "a"}, "endpoints": "none"},
    {"metadata": {"name": "a"}, "ports": [{"name": "http", "port": "80"}]},
    {"kind": "Service", "metadata": {"name": "a"}},
])
def test_malformed_slices_raise_malformed_object(raw):
    with pytest.raises(MalformedObject):
        object_name(raw)
        parse_endpoint_slice(raw)


def test_malformed_services_raise_malformed_object():
    for spec in ({"ports": "x"}, {"ports": [{"port": True}]}, {"ports": [{"port": 80, "targetPort": 1.5}]}):
        with pytest.raises(MalformedObject):
            parse_service({"metadata": {"name": "a"}, "spec": spec})


def test_resolve_named_and_numeric_ports_on_the_fixtures():
    groups, spec = fixture_groups(), parse_service(fixture("service-get.json"))
    http = {"10.244.1.17:8080", "10.244.2.9:8080"}
    for port in ("http", "80"):
        result = resolve(port, spec, groups)
        assert isinstance(result, Bound) and {a.show() for a in result.addresses} == http
    assert resolve("9990", spec, groups) == resolve("admin", spec, groups)
    assert resolve("8080", spec, groups) is NEG  # not a Service port
    assert resolve("grpc", spec, groups) is NEG
    assert resolve("80", None, groups) is NEG  # a number needs the Service
    assert resolve("http", None, []) is NEG  # no Service, no slices


def test_named_target_port_resolves_per_group():
    spec = ServiceSpec((ServicePort("web", 80, "web-port", "TCP"),))
    old = EndpointGroup((GroupEndpoint("10.0.0.1", True),), (GroupPort("web", 8080, "TCP"),))
    new = EndpointGroup((GroupEndpoint("10.0.0.2", True),), (GroupPort("web", 9090, "TCP"),))
    result = resolve("80", spec, [old, new])
    assert result == Bound(frozenset({Address("10.0.0.1", 8080), Address("10.0.0.2", 9090)}))


def test_unnamed_single_port_and_udp_ports():
    spec = ServiceSpec((ServicePort("", 80, 8080, "TCP"),))
    group = EndpointGroup((GroupEndpoint("10.0.0.1", True),), (GroupPort("", 8080, "TCP"),))
    assert resolve("80", spec, [group]) == Bound(frozenset({Address("10.0.0.1", 8080)}))
    dns = EndpointGroup((GroupEndpoint("10.0.0.9", True),), (GroupPort("dns", 53, "UDP"),))
    assert resolve("dns", None, [dns]) is NEG


def test_known_port_of_a_service_without_endpoints_is_bound_to_nothing():
    spec = ServiceSpec((ServicePort("http", 80, "http", "TCP"),))
    assert resolve("http", spec, []) == Bound(frozenset())
    assert resolve("80", spec, [EndpointGroup((), ())]) == Bound(frozenset())


@pytest.mark.parametrize(("labels", "expected"), [
    (["shop", "http", "web"], ServiceName("shop", "http", "web")),
    (["Shop", "HTTP", "Web", "rest"], ServiceName("shop", "http", "web")),
    (["shop", "8080", "web"], ServiceName("shop", "8080", "web")),
    (["shop", "http"], None),
    (["shop", "0", "web"], None),
    (["shop", "65536", "web"], None),
    (["shop", "-http", "web"], None),
    (["shop", "http-port-name-too-long", "web"], None),
    (["sh_op", "http", "web"], None),
    (["shop", "http", "web.x"], None),
])
def test_parse_service_name(labels, expected):
    assert parse_service_name(labels) == expected


endpoint = st.builds(GroupEndpoint, address=st.sampled_from([f"10.0.0.{i}" for i in range(6)]), ready=st.booleans())
group = st.builds(EndpointGroup, endpoints=st.lists(endpoint, max_size=5).map(tuple),
                  ports=st.just((GroupPort("http", 8080, "TCP"),)))


@settings(max_examples=200)
@given(groups=st.lists(group, max_size=4), seed=st.integers())
def test_resolution_is_the_ready_union_whatever_the_slice_order(groups, seed):
    shuffled = list(groups)
    random.Random(seed).shuffle(shuffled)
    result = resolve("http", None, groups)
    if not groups:
        assert result is NEG
        return
    assert result == resolve("http", None, shuffled)
    assert isinstance(result, Bound)
    ready = {ep.address for g in groups for ep in g.endpoints if ep.ready}
    assert {a.host for a in result.addresses} == ready
    assert len(result.addresses) == len(ready)  # one Address per ip:port, however many slices list it
