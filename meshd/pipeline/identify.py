"""Identify: the identifier names the request's logical service (`Host: accounts` -> `/svc/accounts`).

The identifier (routing/identifiers) reads the wire request through the `RequestHead` protocol;
the name goes on the route context (`logical_path`, `logical_name`), a rewritten target on the
request itself.
"""

from __future__ import annotations

from typing import Final

from meshd.errors import IdentificationFailed
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Filter
from routing.identifiers.base import IdentificationError, Identifier
from routing.identifiers.header import HeaderIdentifier
from routing.path import Path

#: bound on each remembered-answer table (a client inventing names cannot grow memory forever)
MAX_REMEMBERED: Final = 10_000


def identify_filter(identifier: Identifier) -> Filter:
    names: dict[Path, str] = {}
    identify_request = identifier.identify
    # The Host identifier (the default) names a request after its Host alone when the target is
    # in origin-form (`/x`), so its answer can be remembered per Host value: one dict lookup
    # per request instead of the identifier's own work.
    by_host = isinstance(identifier, HeaderIdentifier) and identifier.identifies_by_host
    hosts: dict[str, tuple[Path, str]] = {}

    def identify(ctx: RouteContext) -> None:
        request = ctx.request
        host = request.host
        if by_host and host is not None and request.target[:1] == "/":
            known = hosts.get(host)
            if known is not None:
                ctx.logical_path, ctx.logical_name = known
                return
        try:
            identified = identify_request(request)
        except IdentificationError as exc:
            raise IdentificationFailed(f"cannot identify the destination service: {exc}") from None
        path = identified.path
        ctx.logical_path = path
        name = names.get(path)
        if name is None:
            if len(names) > MAX_REMEMBERED:
                names.clear()
            name = names[path] = path.show()
        ctx.logical_name = name
        if identified.target is not None:
            request.target = identified.target
        elif by_host and host is not None and request.target[:1] == "/":
            if len(hosts) > MAX_REMEMBERED:
                hosts.clear()
            hosts[host] = (path, name)

    return identify
