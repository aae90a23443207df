"""The fake kube-apiserver, checked with the real kubernetes_asyncio client against README §11."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.k8s_api import (
    ENDPOINTS_WARNING,
    FakeKubeApi,
    Fault,
    LabelSelector,
    endpoint_slice,
    parse_go_bool,
    service,
    service_port,
    slice_endpoint,
    slice_port,
)

FIXTURES = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "k8s-api" / "fixtures"
SELECT_WEB = "kubernetes.io/service-name=web"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as server:
        server.load_fixture(fixture("endpointslice-list.json"))
        server.load_fixture(fixture("service-get.json"))
        yield server


@pytest.fixture
async def apis(api: FakeKubeApi) -> AsyncIterator[tuple[client.CoreV1Api, client.DiscoveryV1Api]]:
    conf = await api.client_configuration()
    async with client.ApiClient(conf) as api_client:
        yield client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)


async def raw_get(api: FakeKubeApi, path: str, **params: str) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {api.token}"}
    async with aiohttp.ClientSession() as session, session.get(api.url + path, params=params, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def watch_body(api: FakeKubeApi, path: str, **params: str) -> tuple[int, dict[str, Any], str]:
    """A raw watch request, ended by the server once it is open (instead of waiting out a timeout)."""
    task = asyncio.create_task(raw_get(api, path, watch="true", timeoutSeconds="30", **params))
    await api.open_watches.wait_for(lambda n: n > 0)
    api.end_watches()
    return await asyncio.wait_for(task, 5)


async def collect(api_call: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every event of one watch (with timeout_seconds, so EOF ends it) as {type, raw_object}."""
    events = []
    async with watch.Watch() as w:
        async for ev in w.stream(api_call, *args, **kwargs):
            if isinstance(ev, str):  # Watch yields a line that is not JSON as a plain string
                events.append({"type": "STRING", "line": ev})
            else:
                events.append({"type": ev["type"], "object": ev["object"], "raw": ev["raw_object"]})
    return events


async def test_list_items_have_no_kind_and_list_reports_current_revision(api, apis):
    status, headers, text = await raw_get(api, "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
                                          labelSelector=SELECT_WEB)
    body = json.loads(text)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert text.endswith("\n") and "\n" not in text[:-1]
    assert body["kind"] == "EndpointSliceList" and body["apiVersion"] == "discovery.k8s.io/v1"
    assert body["metadata"] == {"resourceVersion": str(api.revision)}
    assert [i["metadata"]["name"] for i in body["items"]] == ["web-7xk2p", "web-q9z4m"]
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])
    # The real client parses it into models.
    _, discovery = apis
    slices = await discovery.list_namespaced_endpoint_slice("shop", label_selector=SELECT_WEB)
    assert slices.metadata.resource_version == str(api.revision)
    assert slices.items[0].endpoints[0].conditions.ready is True


async def test_get_carries_kind_and_missing_object_is_a_404_status(api, apis):
    core, _ = apis
    svc = await core.read_namespaced_service("web", "shop")
    assert svc.kind == "Service" and svc.spec.ports[0].target_port == "http"
    with pytest.raises(ApiException) as err:
        await core.read_namespaced_service("nope", "shop")
    assert err.value.status == 404
    body = json.loads(err.value.body or b"")
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404


async def test_empty_list_is_an_empty_array_and_empty_slice_has_null_lists(api):
    api.load_fixture(fixture("endpointslice-empty.json"))
    _, _, text = await raw_get(api, "/apis/discovery.k8s.io/v1/namespaces/nowhere/endpointslices")
    assert json.loads(text)["items"] == []
    api.apply(endpoint_slice("shop", "api", name="api-8kq2f"))
    _, _, text = await raw_get(api, "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/api-8kq2f")
    body = json.loads(text)
    assert body["endpoints"] is None and body["ports"] is None


async def test_go_booleans_are_accepted_and_nonsense_is_a_400(api):
    assert [parse_go_bool(v) for v in ("True", "true", "1", "T", "FALSE", "0", "yes")] == [
        True, True, True, True, False, False, None]
    for value in ("true", "1", "True"):
        task = asyncio.create_task(raw_get(api, "/api/v1/namespaces/shop/services", watch=value,
                                           resourceVersion=str(api.revision)))
        await api.open_watches.wait_for(lambda n: n == 1)  # it is a watch: it stays open
        api.end_watches()
        status, _, text = await asyncio.wait_for(task, 5)
        assert status == 200 and text == ""
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", watch="yes")
    assert status == 400 and json.loads(text)["reason"] == "BadRequest"


def test_label_selectors():
    labels = {"app": "web", "tier": "front"}
    cases = {
        "app=web": True, "app==web": True, "app!=web": False, "app": True, "!app": False, "missing": False,
        "!missing": True, "app in (web,api)": True, "app notin (web)": False, "app=web,tier in (back)": False,
        "tier notin (back, middle),app": True, "": True,
    }
    for text, expected in cases.items():
        assert LabelSelector.parse(text).matches(labels) is expected, text


async def test_field_selector_and_unsupported_field(api, apis):
    core, _ = apis
    api.apply(service("shop", "api", [service_port("http", 80)]))
    services = await core.list_namespaced_service("shop", field_selector="metadata.name=api")
    assert [s.metadata.name for s in services.items] == ["api"]
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", fieldSelector="spec.type=ClusterIP")
    assert status == 400 and "field selector" in json.loads(text)["message"]


async def test_watch_from_list_rv_gets_only_later_changes_in_order(api, apis):
    _, discovery = apis
    listed = await discovery.list_namespaced_endpoint_slice("shop", label_selector=SELECT_WEB)
    rv = listed.metadata.resource_version
    api.delete("endpointslices", "shop", "web-q9z4m")
    api.apply(endpoint_slice("shop", "web", name="web-new", endpoints=[slice_endpoint("10.0.0.9")],
                             ports=[slice_port("http", 8080)]))
    api.apply(endpoint_slice("shop", "other", name="other-1"))  # does not match the selector
    api.end_watches()  # affects only watches open now: none
    task = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                       resource_version=rv, timeout_seconds=30))
    await api.open_watches.wait_for(lambda n: n == 1)
    api.end_watches()
    events = await asyncio.wait_for(task, 5)
    assert [(e["type"], e["raw"]["metadata"]["name"]) for e in events] == [("DELETED", "web-q9z4m"),
                                                                           ("ADDED", "web-new")]
    assert all(e["raw"]["kind"] == "EndpointSlice" for e in events)
    rvs = [int(e["raw"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


async def test_watch_without_rv_starts_with_synthetic_added(api, apis):
    _, discovery = apis
    task = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                       timeout_seconds=30))
    await api.open_watches.wait_for(lambda n: n == 1)
    api.end_watches()
    events = await asyncio.wait_for(task, 5)
    assert [(e["type"], e["raw"]["metadata"]["name"]) for e in events] == [("ADDED", "web-7xk2p"),
                                                                           ("ADDED", "web-q9z4m")]


async def test_watch_headers_are_flushed_before_any_event(api):
    headers = {"Authorization": f"Bearer {api.token}"}
    async with aiohttp.ClientSession() as session:
        url = f"{api.url}/api/v1/namespaces/shop/services"
        params = {"watch": "True", "resourceVersion": str(api.revision), "timeoutSeconds": "30"}
        async with asyncio.timeout(5), session.get(url, params=params, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert resp.headers["Content-Type"] == "application/json"
            api.apply(service("shop", "late", [service_port("http", 80)]))
            line = await resp.content.readline()
            assert json.loads(line)["type"] == "ADDED"


async def test_selector_transitions_become_added_and_deleted(api, apis):
    _, discovery = apis
    moving = endpoint_slice("shop", "web", name="mover", endpoints=[slice_endpoint("10.0.0.1")])
    api.apply(moving)
    rv = str(api.revision)
    moving["metadata"]["labels"]["kubernetes.io/service-name"] = "other"
    api.apply(moving)  # stops matching: DELETED with its previous content
    moving["metadata"]["labels"]["kubernetes.io/service-name"] = "web"
    api.apply(moving)  # matches again: ADDED
    task = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                       resource_version=rv, timeout_seconds=30))
    await api.open_watches.wait_for(lambda n: n == 1)
    api.end_watches()
    events = await asyncio.wait_for(task, 5)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    assert events[0]["raw"]["metadata"]["labels"]["kubernetes.io/service-name"] == "web"


async def test_bookmarks_only_when_allowed_and_shaped_like_an_empty_object(api, apis):
    _, discovery = apis
    rv = str(api.revision)
    allowed = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                          resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=30))
    silent = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                         resource_version=rv, timeout_seconds=30))
    await api.open_watches.wait_for(lambda n: n == 2)
    assert api.send_bookmarks() == 2
    api.end_watches()
    with_bookmarks, without = await asyncio.wait_for(asyncio.gather(allowed, silent), 5)
    assert without == []
    [bookmark] = with_bookmarks
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["raw"] == {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                               "metadata": {"resourceVersion": str(api.revision), "creationTimestamp": None},
                               "addressType": "", "endpoints": None, "ports": None}


async def test_watch_from_compacted_rv_is_one_error_line_with_http_200(api, apis):
    old_rv = str(api.revision)
    api.apply(service("shop", "api", [service_port("http", 80)]))
    api.compact()
    status, _, text = await raw_get(api, "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
                                    watch="True", resourceVersion=old_rv, timeoutSeconds="30")
    assert status == 200
    [line] = text.splitlines()
    event = json.loads(line)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith(f"too old resource version: {old_rv} (")
    # The real client raises ApiException(410) at once when timeout_seconds is given.
    _, discovery = apis
    with pytest.raises(ApiException) as err:
        await collect(discovery.list_namespaced_endpoint_slice, "shop", resource_version=old_rv, timeout_seconds=30)
    assert err.value.status == 410


async def test_bounded_history_expires_old_resource_versions():
    async with FakeKubeApi(history_size=2) as api:
        start = str(api.revision)
        for i in range(3):
            api.apply(service("shop", f"s{i}", [service_port("http", 80)]))
        status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", watch="1", resourceVersion=start,
                                        timeoutSeconds="30")
        assert json.loads(text)["object"]["code"] == 410
        recent = str(api.revision - 1)
        status, _, text = await watch_body(api, "/api/v1/namespaces/shop/services", resourceVersion=recent)
        assert [json.loads(x)["object"]["metadata"]["name"] for x in text.splitlines()] == ["s2"]


async def test_inject_410_mid_stream_follows_events(api, apis):
    _, discovery = apis
    task = asyncio.create_task(collect(discovery.list_namespaced_endpoint_slice, "shop", label_selector=SELECT_WEB,
                                       resource_version=str(api.revision), timeout_seconds=30))
    await api.open_watches.wait_for(lambda n: n == 1)
    api.delete("endpointslices", "shop", "web-7xk2p")
    api.inject_410()
    with pytest.raises(ApiException) as err:
        await asyncio.wait_for(task, 5)
    assert err.value.status == 410


async def test_limit_and_continue_and_expired_continue_token(api):
    for i in range(3):
        api.apply(service("shop", f"svc-{i}", [service_port("http", 80)]))
    _, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", limit="2")
    first = json.loads(text)
    assert len(first["items"]) == 2 and first["metadata"]["remainingItemCount"] == 2
    _, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", limit="2",
                               **{"continue": first["metadata"]["continue"]})
    second = json.loads(text)
    assert [i["metadata"]["name"] for i in first["items"] + second["items"]] == ["svc-0", "svc-1", "svc-2", "web"]
    assert "continue" not in second["metadata"] and second["metadata"]["resourceVersion"] == \
        first["metadata"]["resourceVersion"]
    api.apply(service("shop", "svc-9", [service_port("http", 80)]))
    api.compact()
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", limit="2",
                                    **{"continue": first["metadata"]["continue"]})
    assert status == 410 and json.loads(text)["reason"] == "Expired"


async def test_wrong_token_is_401_and_requests_are_recorded_with_headers(api, apis):
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", watch="false")
    assert status == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/api/v1/namespaces/shop/services",
                               headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401 and (await resp.json())["reason"] == "Unauthorized"
    core, _ = apis
    await core.list_namespaced_service("shop", label_selector="app=web")
    last = api.requests[-1]
    assert last.path == "/api/v1/namespaces/shop/services" and last.query == {"labelSelector": "app=web"}
    assert last.headers["Authorization"] == f"Bearer {api.token}" and "OpenAPI-Generator" in last.headers["User-Agent"]


async def test_faults_status_html_and_times(api, apis):
    core, _ = apis
    api.add_fault(Fault("status", status=403, resource="services", times=1))
    with pytest.raises(ApiException) as err:
        await core.list_namespaced_service("shop")
    assert err.value.status == 403 and "cannot list resource" in json.loads(err.value.body or b"")["message"]
    assert len((await core.list_namespaced_service("shop")).items) == 1  # the fault was used up
    api.add_fault(Fault("html", times=None))
    status, headers, text = await raw_get(api, "/api/v1/namespaces/shop/services")
    assert status == 502 and headers["Content-Type"].startswith("text/html") and "<html>" in text
    api.clear_faults()
    status, _, _ = await raw_get(api, "/api/v1/namespaces/shop/services")
    assert status == 200


async def test_drop_and_eof_faults_and_dropped_watches(api):
    api.add_fault(Fault("drop", times=None))  # aiohttp retries an idempotent request once by itself
    with pytest.raises(aiohttp.ClientError):
        await raw_get(api, "/api/v1/namespaces/shop/services")
    api.clear_faults()
    api.add_fault(Fault("eof", watch=True))
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", watch="true")
    assert (status, text) == (200, "")
    reader = asyncio.create_task(raw_get(api, "/api/v1/namespaces/shop/services", watch="true",
                                         resourceVersion=str(api.revision), timeoutSeconds="30"))
    await api.open_watches.wait_for(lambda n: n == 1)
    assert api.drop_watches() == 1
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(reader, 5)
    await api.open_watches.wait_for(lambda n: n == 0)


async def test_stall_sends_headers_then_nothing(api):
    api.add_fault(Fault("stall", watch=True))
    headers = {"Authorization": f"Bearer {api.token}"}
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{api.url}/api/v1/namespaces/shop/services",
                               params={"watch": "1", "timeoutSeconds": "1"}, headers=headers) as resp:
            assert resp.status == 200
            with pytest.raises(asyncio.TimeoutError):
                await resp.content.readline()


async def test_outage_refuses_connections_then_recovers_on_same_port(api):
    port = api.port
    async with api.outage():
        with pytest.raises(aiohttp.ClientConnectionError):
            await raw_get(api, "/api/v1/namespaces/shop/services")
    assert api.port == port
    status, _, _ = await raw_get(api, "/api/v1/namespaces/shop/services")
    assert status == 200


async def test_events_split_across_chunks_and_malformed_lines_reach_the_client():
    async with FakeKubeApi(chunk_size=7) as api:
        conf = await api.client_configuration()
        async with client.ApiClient(conf) as api_client:
            core = client.CoreV1Api(api_client)
            task = asyncio.create_task(collect(core.list_namespaced_service, "shop",
                                               resource_version=str(api.revision), timeout_seconds=30))
            await api.open_watches.wait_for(lambda n: n == 1)
            api.apply(service("shop", "web", [service_port("http", 80, "http")]))
            api.inject_line(b"<not json>\n")
            api.end_watches()
            events = await asyncio.wait_for(task, 5)
    assert events[0]["type"] == "ADDED" and events[0]["object"].spec.ports[0].target_port == "http"
    assert events[1:] == [{"type": "STRING", "line": "<not json>\n"}]


async def test_slices_not_served_mode_and_endpoints_warning():
    async with FakeKubeApi(serve_endpoint_slices=False, endpoints_deprecation_warning=True) as api:
        api.load_fixture(fixture("endpoints-list.json"))
        status, _, text = await raw_get(api, "/apis/discovery.k8s.io/v1")
        assert status == 404 and json.loads(text)["reason"] == "NotFound"
        status, headers, text = await raw_get(api, "/api/v1/namespaces/shop/endpoints")
        assert status == 200 and headers["Warning"] == ENDPOINTS_WARNING
        items = json.loads(text)["items"]
        assert [i["metadata"]["name"] for i in items] == ["api", "web"]
        assert "subsets" not in items[0]


async def test_every_fixture_parses_into_the_client_models(apis):
    _, discovery = apis
    api_client = discovery.api_client
    models = {"endpointslice-list.json": "V1EndpointSliceList", "endpointslice-empty.json": "V1EndpointSlice",
              "endpoints-list.json": "V1EndpointsList", "endpoints-get.json": "V1Endpoints",
              "service-get.json": "V1Service", "status-404-notfound.json": "V1Status"}
    for name, model in models.items():
        parsed = api_client._ApiClient__deserialize(fixture(name), model)
        assert type(parsed).__name__ == model


async def test_timeout_seconds_ends_the_watch_cleanly_without_a_final_event(api):
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, text = await raw_get(api, "/api/v1/namespaces/shop/services", watch="True", timeoutSeconds="1",
                                    resourceVersion=str(api.revision))
    assert (status, text) == (200, "")
    assert 0.9 <= loop.time() - started < 3


async def test_periodic_bookmarks_carry_the_current_revision():
    async with FakeKubeApi(bookmark_interval_secs=0.02) as api:
        headers = {"Authorization": f"Bearer {api.token}"}
        params = {"watch": "True", "allowWatchBookmarks": "True", "timeoutSeconds": "30",
                  "resourceVersion": str(api.revision)}
        async with aiohttp.ClientSession() as session, asyncio.timeout(5):
            async with session.get(f"{api.url}/api/v1/namespaces/shop/services", params=params,
                                   headers=headers) as resp:
                first = json.loads(await resp.content.readline())
                api.apply(service("other", "x", [service_port("http", 80)]))  # not in namespace shop
                later = [json.loads(await resp.content.readline())]
                while later[-1]["object"]["metadata"]["resourceVersion"] != str(api.revision):
                    later.append(json.loads(await resp.content.readline()))
    assert first["type"] == "BOOKMARK" and all(e["type"] == "BOOKMARK" for e in later)
    assert first["object"]["kind"] == "Service" and first["object"]["spec"] == {}
    assert first["object"]["metadata"]["resourceVersion"] == str(api.revision - 1)
