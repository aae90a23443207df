"""Identify: the identifier names the request's logical service (`Host: accounts` -> `/svc/accounts`)."""

from __future__ import annotations

from meshd.errors import IdentificationFailed
from meshd.http.messages import Request, Response
from meshd.pipeline.stack import Service, Stage
from routing.identifiers.base import IdentificationError, Identifier
from routing.path import Path


def identify_stage(identifier: Identifier) -> Stage:
    def wrap(next_service: Service) -> Service:
        names: dict[Path, str] = {}

        async def identify(request: Request) -> Response:
            try:
                identified = identifier.identify(request)
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
            return await next_service(request)

        return identify

    return wrap
