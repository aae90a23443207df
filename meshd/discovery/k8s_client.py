"""The k8s namer's edge to kubernetes_asyncio: connection setup, list and watch calls, and the
translation of every library and transport failure into `KubeApiError`.

Imported only when a k8s namer actually connects, because kubernetes_asyncio costs ~40 MB RSS.

How this works: lists are sent with `_preload_content=False`, so we read the raw JSON and check
the status ourselves (one code path for 2xx, Status bodies and proxies' HTML pages). Watches use
the library's `Watch` (with no return type, so events stay plain dicts and cost no model
deserialisation) and always pass `timeout_seconds` (so EOF ends the stream and we own the
re-watch, README §8) and a client-side read timeout a little longer than it (so a silently
dead TCP connection cannot hang a watch forever). `Watch` raises a bare `Exception` for a JSON
line that is not an event; `_TolerantWatch` turns that into a MALFORMED event instead, so one
bad line does not tear the stream down.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from meshd.discovery.k8s_informer import MALFORMED, KubeApiError, ListResult, WatchEvent
from meshd.discovery.k8s_model import SERVICE_NAME_LABEL, resource_version

_HINTS: Final = {
    401: " (the token was refused: check the kubeconfig user or the service-account token)",
    403: " (RBAC: meshd's ClusterRole needs get/list/watch on endpointslices, endpoints and services, and on the"
         " routes ConfigMap when a router takes its routes from one)",
}


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How to reach the API server; exactly one mode is used (see `K8sNamerConfig`)."""

    mode: str  # "url" | "in_cluster" | "kubeconfig"
    api_url: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    watch_timeout_secs: int = 300
    request_timeout_secs: float = 30.0
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    environ: Mapping[str, str] | None = None  # None: os.environ


class KubeClient:
    """One kubernetes_asyncio ApiClient (one connection pool) shared by every watch of a namer."""

    def __init__(self, api: Any, settings: ConnectionSettings) -> None:
        self._api = api
        self._settings = settings
        self._core = client.CoreV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)

    @classmethod
    async def connect(cls, settings: ConnectionSettings) -> KubeClient:
        """Load the configuration (no network yet); KubeApiError("config") when it is unusable."""
        conf = client.Configuration()
        try:
            if settings.mode == "url":
                assert settings.api_url is not None
                conf.host = settings.api_url.rstrip("/")
            elif settings.mode == "in_cluster":
                # Re-reads the rotated projected token itself (refresh_api_key_hook), at most
                # once a minute.
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=conf,
                    token_filename=os.path.join(settings.service_account_dir, "token"),
                    cert_filename=os.path.join(settings.service_account_dir, "ca.crt"),
                    environ=dict(settings.environ) if settings.environ is not None else os.environ,
                )
            else:
                await config.load_kube_config(
                    config_file=settings.kubeconfig, context=settings.context, client_configuration=conf
                )
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeApiError("config", f"cannot load Kubernetes client configuration: {exc}") from exc
        # Every watched service holds one long-lived connection: do not cap the pool at 100
        # (0 is aiohttp's "no limit").
        conf.connection_pool_maxsize = 0
        return cls(client.ApiClient(conf), settings)

    async def close(self) -> None:
        await self._api.close()

    async def serves_endpoint_slices(self) -> bool:
        """Whether discovery.k8s.io/v1 EndpointSlices are served (404 on the group: they are not)."""
        try:
            body = await self._get_json(self._discovery.get_api_resources)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        resources = body.get("resources")
        return isinstance(resources, list) and any(
            isinstance(r, Mapping) and r.get("name") == "endpointslices" for r in resources
        )

    def endpoint_slices(self, namespace: str, service: str) -> ApiCollection:
        return ApiCollection(self, self._discovery.list_namespaced_endpoint_slice, namespace,
                             {"label_selector": f"{SERVICE_NAME_LABEL}={service}"},
                             f"endpointslices {namespace}/{service}")

    def endpoints(self, namespace: str, service: str) -> ApiCollection:
        return ApiCollection(self, self._core.list_namespaced_endpoints, namespace,
                             {"field_selector": f"metadata.name={service}"}, f"endpoints {namespace}/{service}")

    def services(self, namespace: str, service: str) -> ApiCollection:
        return ApiCollection(self, self._core.list_namespaced_service, namespace,
                             {"field_selector": f"metadata.name={service}"}, f"service {namespace}/{service}")

    def config_maps(self, namespace: str, name: str) -> ApiCollection:
        """One ConfigMap, as a collection of at most one object (list+watch by name, so a
        deletion and a re-creation are seen like any other change)."""
        return ApiCollection(self, self._core.list_namespaced_config_map, namespace,
                             {"field_selector": f"metadata.name={name}"}, f"configmap {namespace}/{name}")

    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    async def _get_json(self, method: Callable[..., Any], *args: object, **kwargs: object) -> Mapping[str, Any]:
        timeout = self._settings.request_timeout_secs
        try:
            resp = await method(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
            try:
                status: int = resp.status
                raw: bytes = await resp.read()
            finally:
                resp.release()
        except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
            raise KubeApiError("timeout", f"no answer from the API server within {timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise KubeApiError("unreachable", f"API server unreachable: {exc!r}") from exc
        if not 200 <= status < 300:
            raise status_error(status, raw)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise KubeApiError("invalid_json", f"HTTP {status} with a body that is not JSON") from exc
        if not isinstance(body, dict):
            raise KubeApiError("invalid_json", f"HTTP {status} with JSON that is not an object")
        return body


class ApiCollection:
    """One list+watch target: a list method of the API, a namespace and a selector."""

    def __init__(self, kube: KubeClient, method: Callable[..., Any], namespace: str,
                 selector: Mapping[str, str], description: str) -> None:
        self._kube = kube
        self._method = method
        self._namespace = namespace
        self._selector = dict(selector)
        self._description = description

    @property
    def description(self) -> str:
        return self._description

    async def list(self) -> ListResult:
        body = await self._kube._get_json(self._method, self._namespace, **self._selector)
        rv = resource_version(body)
        items = body.get("items")
        if rv is None or not isinstance(items, list | None):
            raise KubeApiError("invalid_json", f"list of {self._description} without resourceVersion or items")
        return ListResult(rv, tuple(i for i in (items or []) if isinstance(i, Mapping)))

    @asynccontextmanager
    async def watch(self, resource_version: str) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        settings = self._kube.settings
        async with _TolerantWatch() as w:
            stream = w.stream(
                self._method,
                self._namespace,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=settings.watch_timeout_secs,
                _request_timeout=(settings.request_timeout_secs,
                                  settings.watch_timeout_secs + settings.request_timeout_secs),
                **self._selector,
            )
            yield _events(w, stream)


async def _events(w: watch.Watch, stream: AsyncIterator[Any]) -> AsyncIterator[WatchEvent]:
    try:
        async for item in stream:
            if isinstance(item, str):
                # Watch yields a line that is not JSON as a plain string (README §8). On an error
                # status it is a proxy's error page: fail the watch; on 200, skip the line.
                status = w.resp.status if w.resp is not None else 200
                if status >= 300:
                    raise KubeApiError(str(status), f"HTTP {status} with a non-JSON body: {item[:80]!r}",
                                       status=status)
                yield WatchEvent(MALFORMED, None)
            elif isinstance(item, dict) and isinstance(item.get("raw_object"), Mapping):
                raw = item["raw_object"]
                yield WatchEvent(str(item.get("type")), raw, resource_version(raw))
            else:
                yield WatchEvent(MALFORMED, None)
    except ApiException as exc:
        status = int(exc.status) if isinstance(exc.status, int) else 0
        hint = _HINTS.get(status, "")
        raise KubeApiError(str(status), f"{exc.reason}{hint}", status=status) from exc
    except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
        raise KubeApiError("timeout", "watch went silent past its timeout (dead connection?)") from exc
    except aiohttp.ClientError as exc:
        raise KubeApiError("unreachable", f"watch connection lost: {exc!r}") from exc


class _NoModels:
    """Stands in for the ApiClient a `Watch` keeps only to build model objects, which we never use."""

    def deserialize(self, response: Any, response_type: str) -> Any:  # pragma: no cover - unused
        raise AssertionError("watch events are kept as plain dicts")

    async def close(self) -> None:
        return None


class _TolerantWatch(watch.Watch):
    """`Watch` that yields a MALFORMED marker for JSON lines that are not events instead of
    raising a bare Exception (which would end the stream), and that costs nothing to create.

    `Watch.__init__` builds a whole ApiClient for each watch, only to deserialise models: a new
    SSL context loading the system CA bundle (~18 ms with the event loop blocked, on every
    re-watch of every service) and a ClientSession. We keep events as the API's own dicts, so
    neither is needed: the return type is empty (no deserialisation at all) and `_NoModels`
    takes the client's place.
    """

    def __init__(self) -> None:  # deliberately not super().__init__(): see the class docstring
        self._raw_return_type = None
        self._stop = False
        self._api_client = cast(Any, _NoModels())
        self.resource_version = None
        self.resp = None

    def get_return_type(self, func: object) -> str:
        return ""

    def unmarshal_event(self, data: str | bytes, response_type: str | None) -> Any:
        try:
            return super().unmarshal_event(data, response_type)
        except ApiException:
            raise
        except Exception:  # Watch raises plain Exception (and KeyError) for malformed lines
            return {"type": MALFORMED, "object": None}


def status_error(status: int, raw: bytes) -> KubeApiError:
    """A non-2xx answer: the Status body's reason and message when there is one."""
    hint = _HINTS.get(status, "")
    try:
        body = json.loads(raw)
    except ValueError:
        return KubeApiError(str(status), f"HTTP {status} with a non-JSON body{hint}", status=status)
    if isinstance(body, dict) and body.get("kind") == "Status":
        return KubeApiError(str(status), f"{body.get('reason')}: {body.get('message')}{hint}", status=status)
    return KubeApiError(str(status), f"HTTP {status}{hint}", status=status)

