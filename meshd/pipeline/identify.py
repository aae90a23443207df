"""Identify: the identifier names the request's logical service (`Host: accounts` -> `/svc/accounts`)."""

from __future__ import annotations

from meshd.errors import IdentificationFailed
from meshd.http.messages import Request
from meshd.pipeline.stack import Filter
from routing.identifiers.base import IdentificationError, Identifier
from routing.path import Path


def identify_filter(identifier: Identifier) -> Filter:
    names: dict[Path, str] = {}
    identify_request = identifier.identify

    def identify(request: Request) -> None:
        try:
            identified = identify_request(request)
        except IdentificationError as exc:
            raise IdentificationFailed(f"cannot identify the destination service: {exc}") from None
        path = identified.path
        request.logical_path = path
        name = names.get(path)
        if name is None:
            if len(names) > 10000:
                names.clear()
            name = names[path] = path.show()
        request.logical_name = name
        if identified.target is not None:
            request.target = identified.target

    return identify
