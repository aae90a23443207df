"""Error responder: the one place a MeshdError becomes a response with `l5d-err`.

It sits just inside the stats stage, so every failure, including meshd's own, is answered with
a status and an explanation and is still counted by status class.
"""

from __future__ import annotations

import asyncio
import logging

from meshd.errors import MeshdError, RequestTimeout
from meshd.http.messages import Request, Response
from meshd.listener import error_response
from meshd.pipeline.stack import Service

log = logging.getLogger("meshd.errors")


def error_responder(next_service: Service) -> Service:
    async def respond_errors(request: Request) -> Response:
        try:
            return await next_service(request)
        except MeshdError as exc:
            if not request.body.ended:
                # the body will never be read now: the connection is closed after this response
                request.keep_alive = False
            return error_response(exc)
        except TimeoutError:
            return error_response(RequestTimeout("request timed out"))
        except asyncio.CancelledError:
            raise

    return respond_errors
