"""Routes from a Kubernetes ConfigMap (`routesConfigMap`), watched through the API stand-in
(tests/support/k8s_api.py) with the real kubernetes_asyncio client: list, watch, 410 expiry,
outage, deletion, 403, text that is not YAML. The watcher tests drive `ConfigMapRoutesWatcher`
with a real k8s namer; the mesh tests run two meshd daemons in-process, with real upstreams,
and check that an edit reaches both within a second and that they agree on the version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yaml

from meshd.discovery.k8s import K8sBackoffConfig, K8sNamer, K8sNamerConfig
from meshd.exposition import Registry
from meshd.reload import ConfigMapRoutesWatcher
from meshd.runtime import Runtime
from routing.dtab import Dtab
from tests.integration.test_canary import start_accounts
from tests.integration.test_routes_reload import admin_get, reload_metric, version_served
from tests.support.k8s_api import FakeKubeApi, Fault, config_map
from tests.support.waiting import wait_until

NS, NAME, KEY = "mesh", "meshd-routes", "routes.yaml"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
SOURCE = f"configmap {NS}/{NAME} key {KEY}"
TO_V1 = "rules:\n  - name: accounts\n    prefix: /svc/accounts\n    dst: /#/fs/accounts\n"
TO_V2 = TO_V1.replace("/#/fs/accounts\n", "/#/fs/accounts-v2\n")
BROKEN = TO_V2.replace("dst: /#/fs/accounts-v2", "dst: /#/fs/accounts-v2 &")


def routes_config_map(text: str | None, **extra: Any) -> dict[str, Any]:
    return config_map(NS, NAME, {KEY: text} if text is not None else None, **extra)


class Applied:
    """The router side of the watcher: records every dtab applied."""

    def __init__(self) -> None:
        self.dtabs: list[str] = []

    def __call__(self, dtab: Dtab) -> None:
        self.dtabs.append(dtab.show())


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as server:
        yield server


@pytest.fixture
async def make_watcher(api: FakeKubeApi, tmp_path: pathlib.Path) -> AsyncIterator[Callable[..., Awaitable[tuple[ConfigMapRoutesWatcher, Applied]]]]:
    made: list[tuple[ConfigMapRoutesWatcher, K8sNamer]] = []
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(api.kubeconfig()))
    runtime = Runtime(rng=random.Random(7), registry=Registry(), base_dir=tmp_path)

    async def no_wait(delay: float) -> None:  # backoff sleeps: never waited out, only a turn of the loop
        await asyncio.sleep(0)

    async def make(**kwargs: Any) -> tuple[ConfigMapRoutesWatcher, Applied]:
        namer = K8sNamer(K8sNamerConfig(kubeconfig="kubeconfig", backoff=K8sBackoffConfig(min_ms=1, max_ms=10)),
                         runtime, sleep=no_wait)
        await namer.start()
        applied = Applied()
        watcher = ConfigMapRoutesWatcher(namer, NS, NAME, KEY, applied, **kwargs)
        await watcher.start()
        made.append((watcher, namer))
        return watcher, applied

    yield make
    for watcher, namer in made:
        await watcher.close()
        await namer.close()


def configmap_requests(api: FakeKubeApi) -> list[Any]:
    return [r for r in api.requests if r.path == CONFIGMAPS]


async def test_list_then_watch_applies_each_version_with_its_resource_version(api: FakeKubeApi, make_watcher):
    created = api.create(routes_config_map(TO_V1))
    watcher, applied = await make_watcher()
    assert await watcher.wait_first(5.0)
    assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts"]
    assert watcher.version == created["metadata"]["resourceVersion"]
    assert watcher.source == SOURCE and watcher.digest is not None and watcher.loaded_at is not None
    first_digest = watcher.digest

    updated = api.update(routes_config_map(TO_V2))
    await wait_until(lambda: watcher.successes == 2, timeout=1.0, message="the edit applied within a second")
    assert applied.dtabs[-1] == "/svc/accounts=>/#/fs/accounts-v2"
    assert watcher.version == updated["metadata"]["resourceVersion"] and watcher.digest != first_digest
    # one list by name, then a watch from the list's resourceVersion
    listed, watched = configmap_requests(api)[:2]
    assert listed.query["fieldSelector"] == f"metadata.name={NAME}" and not listed.is_watch
    assert watched.is_watch and watched.resource_version == created["metadata"]["resourceVersion"]
    # the same text again (another key changed) is not a new version; the next edit is
    api.update(routes_config_map(TO_V2) | {"data": {KEY: TO_V2, "notes": "x"}})
    api.update(routes_config_map(TO_V1))
    await wait_until(lambda: watcher.successes == 3, timeout=1.0, message="the next edit")
    assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts", "/svc/accounts=>/#/fs/accounts-v2",
                             "/svc/accounts=>/#/fs/accounts"]
    assert watcher.errors == 0


async def test_410_expiry_lists_again_and_later_edits_still_apply(api: FakeKubeApi, make_watcher):
    api.create(routes_config_map(TO_V1))
    watcher, applied = await make_watcher()
    assert await watcher.wait_first(5.0)
    await wait_until(lambda: any(r.is_watch for r in configmap_requests(api)), timeout=5.0, message="the watch")
    lists_before = sum(1 for r in configmap_requests(api) if not r.is_watch)
    api.compact()
    assert api.inject_410() >= 1
    await wait_until(lambda: sum(1 for r in configmap_requests(api) if not r.is_watch) > lists_before,
                     timeout=5.0, message="a new list after 410")
    api.update(routes_config_map(TO_V2))
    await wait_until(lambda: watcher.successes == 2, timeout=2.0, message="the edit after the re-list")
    assert watcher.errors == 0 and applied.dtabs[-1].endswith("accounts-v2")


async def test_outage_keeps_the_rules_says_why_and_applies_the_edit_made_meanwhile(api: FakeKubeApi, make_watcher, caplog):
    caplog.set_level(logging.INFO)
    api.create(routes_config_map(TO_V1))
    watcher, applied = await make_watcher()
    assert await watcher.wait_first(5.0)
    async with api.outage():
        api.update(routes_config_map(TO_V2))
        await wait_until(lambda: watcher.last_error is not None, timeout=5.0, message="the outage to show")
        assert "Kubernetes API call failed: unreachable" in (watcher.last_error or "")
        assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts"]  # the last good rules still apply
        assert watcher.errors == 0  # an outage is not a refused version
    await wait_until(lambda: watcher.successes == 2, timeout=5.0, message="the edit made during the outage")
    assert applied.dtabs[-1].endswith("accounts-v2") and watcher.last_error is None


async def test_deleted_configmap_is_refused_once_and_recreating_it_applies(api: FakeKubeApi, make_watcher, caplog):
    caplog.set_level(logging.ERROR, logger="meshd.reload")
    api.create(routes_config_map(TO_V1))
    watcher, applied = await make_watcher()
    assert await watcher.wait_first(5.0)
    api.delete("configmaps", NS, NAME)
    await wait_until(lambda: watcher.errors == 1, timeout=1.0, message="the refusal")
    assert watcher.last_error == f"{SOURCE}: the ConfigMap {NS}/{NAME} does not exist (deleted?); keeping the last good routes"
    assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts"] and watcher.current is not None
    api.create(routes_config_map(TO_V2))
    await wait_until(lambda: watcher.successes == 2, timeout=1.0, message="the re-created ConfigMap")
    assert watcher.errors == 1 and watcher.last_error is None
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1 and "does not exist" in refusals[0]


async def test_forbidden_is_explained_and_retried_until_rbac_allows_it(api: FakeKubeApi, make_watcher):
    api.create(routes_config_map(TO_V1))
    api.add_fault(Fault("status", status=403, resource="configmaps", times=None))
    watcher, applied = await make_watcher()
    await wait_until(lambda: watcher.last_error is not None, timeout=5.0, message="the 403 to show")
    error = watcher.last_error or ""
    assert 'configmaps is forbidden: User "system:serviceaccount:mesh:meshd" cannot list resource "configmaps"' in error
    assert "routes ConfigMap" in error  # the RBAC hint
    assert applied.dtabs == [] and watcher.errors == 0
    api.clear_faults()
    assert await watcher.wait_first(5.0)
    assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts"] and watcher.last_error is None


@pytest.mark.parametrize(
    ("configmap", "reason"),
    [
        (routes_config_map("dtab: [unclosed\n"), f"{SOURCE}: line 2, column 1: not valid YAML: expected ',' or ']'"),
        (routes_config_map(BROKEN), f"{SOURCE}: rules[0].dst: line 4, column 29: expected a path"),
        (config_map(NS, NAME, {"route.yaml": TO_V2}),
         f'{SOURCE}: the ConfigMap has no key "{KEY}" in data (keys: route.yaml); did you mean "route.yaml"?'),
        (config_map(NS, NAME, binary_data={KEY: TO_V2.encode()}), f'{SOURCE}: the key "{KEY}" is in binaryData'),
        (routes_config_map("# " + "x" * 200 + "\n"), f"{SOURCE}: the routing file is 203 bytes, over the limit of 100"),
    ],
    ids=["not-yaml", "broken-rule", "missing-key", "binary-data", "too-large"],
)
async def test_bad_versions_are_refused_and_the_last_good_rules_keep_serving(
    api: FakeKubeApi, make_watcher, configmap: dict[str, Any], reason: str
):
    api.create(routes_config_map(TO_V1))
    watcher, applied = await make_watcher(max_bytes=100)
    assert await watcher.wait_first(5.0)
    api.update(configmap)
    await wait_until(lambda: watcher.errors == 1, timeout=1.0, message="the refusal")
    assert (watcher.last_error or "").startswith(reason), watcher.last_error
    assert applied.dtabs == ["/svc/accounts=>/#/fs/accounts"] and watcher.successes == 1


# --- two meshd daemons on one ConfigMap ------------------------------------------------------


def mesh_config(cluster: FakeKubeApi) -> dict[str, Any]:
    return {
        "admin": {"ip": "127.0.0.1", "port": 0},
        "namers": [{"kind": "fs", "rootDir": "./disco"},
                   {"kind": "k8s", "kubeconfig": "kubeconfig", "backoff": {"minMs": 1, "maxMs": 20}}],
        "routers": [{
            "label": "outgoing",
            "servers": [{"ip": "127.0.0.1", "port": 0}],
            "dtab": "/svc => /#/fs;",
            "routesConfigMap": {"namespace": NS, "name": NAME, "key": KEY},
        }],
    }


async def test_two_nodes_apply_an_edit_within_a_second_and_agree_on_its_version(api: FakeKubeApi, make_mesh, make_upstream):
    api.create(routes_config_map(TO_V1))
    kubeconfig = yaml.safe_dump(api.kubeconfig())
    meshes = [await make_mesh(mesh_config(api), files={"kubeconfig": kubeconfig}) for _ in range(2)]
    for mesh in meshes:
        await start_accounts(make_upstream, mesh, replicas=1)
        assert await version_served(mesh.port) == "v1"  # the first version was loaded before serving

    edited = api.update(routes_config_map(TO_V2))
    started = time.monotonic()
    for mesh in meshes:
        await wait_until(lambda m=mesh: _serves(m.port, "v2"), timeout=1.0 - (time.monotonic() - started),
                         message="v2 within a second of the edit")
    versions = []
    for mesh in meshes:
        status, body = await admin_get(mesh.admin_port, "/admin/routes")
        (shown,) = json.loads(body)
        assert shown["routesFile"] == SOURCE and shown["lastError"] is None
        versions.append((shown["version"], shown["digest"]))
        assert shown["loadedAt"].endswith("Z")
        _, metrics = await admin_get(mesh.admin_port, "/metrics")
        assert reload_metric(metrics, "success") == 2
        assert (f'meshd_routes_version{{router="outgoing",source="{SOURCE}",version="{edited["metadata"]["resourceVersion"]}",'
                f'digest="{shown["digest"]}"}} 1.0') in metrics
        assert 'meshd_routes_loaded_timestamp_seconds{router="outgoing"} ' in metrics
    assert versions[0] == versions[1] and versions[0][0] == edited["metadata"]["resourceVersion"]

    api.update(routes_config_map(BROKEN))  # refused on every node; v2 keeps serving
    for mesh in meshes:
        watcher = mesh.daemon.routes_watchers["outgoing"]
        await wait_until(lambda w=watcher: w.errors == 1, timeout=1.0, message="the refusal on every node")
        assert await version_served(mesh.port) == "v2"


async def _serves(port: int, version: str) -> bool:
    return await version_served(port) == version
