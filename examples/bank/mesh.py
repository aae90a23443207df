"""Calls to other services through the local meshd: the Host header names the destination service.

A service never learns where its peers run. It sends every call to its meshd (`--meshd`, by default
http://127.0.0.1:4140) with `Host: <service>`; meshd picks a replica, retries and balances. The `l5d-ctx-*`
headers of the request being served (the deadline, per-request dtab overrides) are copied onto the calls made
for it, which is how a routing override or a deadline follows a request through the whole call graph.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
from aiohttp import web

CONTEXT_PREFIX: Final = "l5d-ctx-"
DEADLINE_HEADER: Final = "l5d-ctx-deadline"
DEFAULT_TIMEOUT_SECS: Final = 3.0

Method = Literal["GET", "PUT", "POST", "DELETE"]


def context_headers(incoming: Mapping[str, str], *, keep_deadline: bool = True) -> dict[str, str]:
    """The `l5d-ctx-*` headers to forward from a request being served.

    Work done after the response has been sent must drop the deadline (`keep_deadline=False`): it belonged to
    the caller who is no longer waiting, and meshd would refuse every call made past it.
    """
    context: dict[str, str] = {}
    for name, value in incoming.items():
        lowered = name.lower()
        if not lowered.startswith(CONTEXT_PREFIX):
            continue
        if lowered == DEADLINE_HEADER and not keep_deadline:
            continue
        context[lowered] = value
    return context


@dataclass(frozen=True, slots=True)
class MeshReply:
    """An HTTP answer from a peer (or from meshd itself, which adds `l5d-err` when it fails a request).

    Header names are lower-cased.
    """

    status: int
    body: dict[str, object]
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class MeshUnavailable(Exception):
    """No HTTP answer at all: meshd refused the connection, reset it, or the call timed out."""


class MeshClient:
    """Sends calls to services by name through meshd; one per service process, sharing its session."""

    def __init__(
        self, session: aiohttp.ClientSession, meshd_url: str, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS
    ) -> None:
        self._session = session
        self._base = meshd_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_secs)

    def __repr__(self) -> str:
        return f"MeshClient({self._base!r})"

    async def call(
        self,
        service: str,
        method: Method,
        path: str,
        *,
        body: Mapping[str, object] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> MeshReply:
        headers = {"Host": service, **(context or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, self._base + path, data=data, headers=headers, timeout=self._timeout
            ) as response:
                raw = await response.read()
                headers = {name.lower(): value for name, value in response.headers.items()}
                return MeshReply(response.status, _decode(raw), headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MeshUnavailable(f"{method} {service}{path}: {type(exc).__name__}: {exc}") from exc


def _decode(raw: bytes) -> dict[str, object]:
    """JSON object bodies as they are; anything else (meshd's plain-text errors) wrapped as {"text": ...}."""
    try:
        value: object = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"text": raw.decode("utf-8", "replace")}
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    return {"value": value}


MESH: Final = web.AppKey("mesh", MeshClient)


def attach_mesh(app: web.Application, meshd_url: str, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS) -> None:
    """Give the app a MeshClient (and the HTTP session under it) for as long as the app runs."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[MESH] = MeshClient(session, meshd_url, timeout_secs=timeout_secs)
            yield

    app.cleanup_ctx.append(lifecycle)
