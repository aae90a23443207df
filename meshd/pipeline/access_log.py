"""Access log: one line per request, with each of its attempts, to the `meshd.access` logger (opt-in).

Enabled by the router's `accessLog: true`. When it is off the stage is not in the chain at all
and the retry loop gets no attempt hook, so a disabled access log costs nothing per request.

A line is logfmt (`key=value`, values with spaces quoted), for example:

    router=outgoing reqid=3fa2c1d000000007 client=127.0.0.1 method=GET target=/balance
    service=/svc/accounts status=200 attempts=2
    tries="127.0.0.1:41001 503 retry=response, 127.0.0.1:41002 200" duration_ms=3.4
    trace_id=4bf92f3577b34da6a3ce929d0e0e4736

`tries` lists every attempt in order: the endpoint it went to (`-` when none was picked), then
its status or meshd's error kind (`connect_failed`, `attempt_timeout`, ...), then `retry=<reason>`
when meshd retried it (`response`, `error` or `requeue`, as in `meshd_retries_total`); a run of
identical attempts is written once with a count (`... retry=requeue x99`). `status` is what the
client got; a request the client abandoned is logged with `status=cancelled`. `trace_id` is the request's trace
id with tracing on (docs/tracing.md; sampled or not), `-` with it off. A request that
arrived over HTTP/2 (docs/http2.md) ends with `proto=h2`. A gRPC call (docs/grpc.md) then ends
with `grpc_status=<name>` (`OK`, `UNAVAILABLE`, ...; `NONE` when it ended without one): read
from a trailers-only head, else from the trailers, so its line is written when the response body
ends; for an error meshd answered itself, `status` is the HTTP status of that error (as on
HTTP/1) and `grpc_status` the code the gRPC client was sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from meshd.clock import Clock
from meshd.errors import MeshdError, NoEndpoints, NoSuchService
from meshd.grpc.errors import grpc_status_for
from meshd.grpc.status import status_label, status_of
from meshd.http.messages import Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Service, Stage

LOGGER: Final = logging.getLogger("meshd.access")


class AccessLog:
    """Collects the attempts of requests in flight and writes one line when each one finishes."""

    __slots__ = ("_router", "_clock", "_logger", "_tries")

    def __init__(self, router: str, clock: Clock, logger: logging.Logger = LOGGER) -> None:
        self._router = router
        self._clock = clock
        self._logger = logger
        #: attempts of the requests in flight, by id(ctx) (the context is alive while listed)
        self._tries: dict[int, list[str]] = {}

    def on_attempt(self, ctx: RouteContext, outcome: int | MeshdError, retry_reason: str | None) -> None:
        """The retry stage's attempt hook: remember where this attempt went and how it ended."""
        tries = self._tries.get(id(ctx))
        if tries is None:
            return  # a request that did not pass through this log's stage
        if isinstance(outcome, MeshdError):
            picked = not isinstance(outcome, NoSuchService | NoEndpoints)
            what = outcome.kind
        else:
            picked = True
            what = str(outcome)
        node = ctx.last_node if picked else None
        endpoint = getattr(node.member, "label", "-") if node is not None else "-"
        entry = f"{endpoint} {what}" if retry_reason is None else f"{endpoint} {what} retry={retry_reason}"
        tries.append(entry)

    def stage(self) -> Stage:
        def wrap(next_service: Service) -> Service:
            now = self._clock.now

            async def log_request(ctx: RouteContext) -> Response:
                key = id(ctx)
                self._tries[key] = []
                start = now()
                status = "error"
                grpc_code = ""
                response: Response | None = None
                try:
                    response = await next_service(ctx)
                except MeshdError as exc:
                    status = str(exc.status)
                    if ctx.grpc:
                        grpc_code = grpc_status_for(exc).name  # what the gRPC client is answered
                    raise
                except asyncio.CancelledError:
                    status = "cancelled"
                    raise
                else:
                    status = str(response.status)
                    return response
                finally:
                    tries = self._tries.pop(key, [])
                    if self._logger.isEnabledFor(logging.INFO):
                        seconds = now() - start
                        if response is not None and ctx.grpc:
                            self._log_grpc(ctx, status, tries, seconds, response)
                        else:
                            self._logger.info("%s", self._line(ctx, status, tries, seconds, grpc_code))

            return log_request

        return wrap

    def _log_grpc(self, ctx: RouteContext, status: str, tries: list[str], seconds: float, response: Response) -> None:
        """A gRPC call's line says its `grpc-status`: from a trailers-only head at once, else from
        the trailers, so the line is written when the response body ends (`NONE`: it ended
        without one, e.g. reset)."""
        code = status_of(response.headers)
        body = response.body
        if code is not None or body.ended:
            if code is None:
                code = status_of(body.trailers)
            self._logger.info("%s", self._line(ctx, status, tries, seconds, status_label(code)))
            return

        def ended(error: BaseException | None) -> None:
            end_code = status_of(body.trailers) if error is None else None
            self._logger.info("%s", self._line(ctx, status, tries, seconds, status_label(end_code)))

        body.add_done_callback(ended)

    def _line(self, ctx: RouteContext, status: str, tries: list[str], seconds: float, grpc_code: str = "") -> str:
        request = ctx.request
        return (
            f"router={self._router} reqid={ctx.reqid or '-'} client={request.client_ip or '-'} "
            f"method={request.method} target={_quote(request.target)} service={ctx.logical_name or '-'} "
            f"status={status} attempts={ctx.attempts} tries={_quote(_collapse(tries))} "
            f"duration_ms={seconds * 1000:.1f} trace_id={ctx.trace_id or '-'}" + (" proto=h2" if request.version == "2" else "")
            + (f" grpc_status={grpc_code}" if grpc_code else "")
        )

    def __repr__(self) -> str:
        return f"<AccessLog {self._router} in_flight={len(self._tries)}>"


def _collapse(tries: list[str]) -> str:
    """Join the attempts, writing a run of identical ones once with a count (`... x99`)."""
    parts: list[str] = []
    i = 0
    while i < len(tries):
        j = i + 1
        while j < len(tries) and tries[j] == tries[i]:
            j += 1
        parts.append(tries[i] if j - i == 1 else f"{tries[i]} x{j - i}")
        i = j
    return ", ".join(parts)


def _quote(value: str) -> str:
    """A logfmt value: bare when it has no space, quote or control character, else quoted."""
    if value and all(c > " " and c not in '"\\=' for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\x{ord(c):02x}" for c in escaped) + '"'
