"""The ledger posting as a gRPC call: `bank.Ledger/Post`, the bank's one gRPC hop (payments -> ledger).

The same operation as `PUT /transactions/{key}` (ledger.py), spoken as gRPC so that the demo shows meshd
carrying gRPC beside HTTP/1.1: a unary call to `/bank.Ledger/Post` over h2c whose request and response are
JSON documents in the gRPC message (grpcio's generic handlers with no serializers pass the bytes as they are,
so no .proto file and no protoc step are needed):

    request:  {"key": "auth:a-1", "legs": [{"account", "direction", "amount"}, ...]}
    response: {"key": "auth:a-1", "status": "posted" | "replayed", "legs": [...]}

Outcomes, and the HTTP status the payments code already understands (`MeshReply`):

| gRPC status          | when                                         | as HTTP |
|----------------------|----------------------------------------------|---------|
| OK, status "posted"  | the key was new, the transaction is posted   | 201     |
| OK, status "replayed"| the same legs again: nothing posted twice    | 200     |
| ALREADY_EXISTS       | the key is used with other legs              | 409     |
| INVALID_ARGUMENT     | the message is not a valid transaction       | 422     |
| UNAVAILABLE          | the replica's chaos knob failed it, or meshd or the replica could not be reached | 503 |
| DEADLINE_EXCEEDED    | the call's deadline passed                   | 504     |

Posting is idempotent under its key, which is what makes UNAVAILABLE safe to retry (meshd's classifier
`grpc.default` retries it, as it retries PUTs for the HTTP hop).

Switching: the ledger serves this when started with `--grpc-port P`; payments uses it instead of the HTTP PUT
when started with `--ledger-grpc HOST:PORT`, the address of meshd's HTTP/2 router (`protocol: h2`, identifier
`grpc`: `/bank.Ledger/Post` is named `/svc/bank.Ledger`). Without `--ledger-grpc` payments posts over HTTP/1.1
as before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, Protocol

import grpc
import grpc.aio
from aiohttp import web

from examples.bank.ledger_book import Leg, parse_legs
from examples.bank.mesh import MeshClient, MeshReply, MeshUnavailable
from examples.bank.payloads import InvalidPayload
from examples.bank.replica import CHAOS, IDENTITY, STATS

SERVICE: Final = "bank.Ledger"
METHOD: Final = "Post"
POST_PATH: Final = f"/{SERVICE}/{METHOD}"
#: meshd's logical name for the service with the `grpc` identifier; the fs namer file the demo writes
LOGICAL_NAME: Final = SERVICE
_CHANNEL_OPTIONS: Final = (("grpc.enable_http_proxy", 0),)

_AS_HTTP: Final = {
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}

# -- server side (the ledger) ------------------------------------------------------------------------------


PostTransaction = Callable[[web.Application, str, Sequence[Leg]], Awaitable[tuple[int, dict[str, object]]]]
"""The ledger's posting (ledger.py): 201 posted, 200 the same legs again, 409 other legs under the key."""


def post_handler(app: web.Application, post_transaction: PostTransaction) -> grpc.GenericRpcHandler:
    """`bank.Ledger/Post` on the ledger app, counted in its `/_stats` and subject to its chaos knob like an
    HTTP business request."""

    async def post(message: bytes, context: grpc.aio.ServicerContext) -> bytes:
        stats, chaos, identity = app[STATS], app[CHAOS], app[IDENTITY]
        stats.record_start()
        await context.send_initial_metadata((("x-replica", identity.replica), ("x-service", identity.service)))
        await chaos.delay()
        if chaos.should_fail():
            stats.record_finish(503)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "chaos: injected failure")
        try:
            key, legs = _parse_request(message)
        except InvalidPayload as exc:
            stats.record_finish(422)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        status, answer = await post_transaction(app, key, legs)
        stats.record_finish(status)
        if status == 409:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(answer["error"]))
        return json.dumps(answer).encode()

    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(post)})


GRPC_PORT: Final = web.AppKey("grpc_port", int)
"""The port the gRPC server listens on once the app runs (the one asked for, or the kernel's choice for 0)."""


def attach_grpc_server(app: web.Application, host: str, port: int, post_transaction: PostTransaction) -> None:
    """Serve `bank.Ledger/Post` over h2c on `host:port` for as long as the app runs."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((post_handler(app, post_transaction),))
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        app[GRPC_PORT] = bound
        await server.start()
        yield
        await server.stop(1.0)

    app.cleanup_ctx.append(lifecycle)


def _parse_request(message: bytes) -> tuple[str, tuple[Leg, ...]]:
    try:
        document = json.loads(message)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"the message is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidPayload("the message must be a JSON object")
    key = document.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidPayload("key must be a non-empty string")
    return key, parse_legs(document.get("legs"))


# -- client side (payments) --------------------------------------------------------------------------------


class LedgerPoster(Protocol):
    """How payments posts a transaction to the ledger: over HTTP/1.1 (`HttpLedger`) or gRPC (`GrpcLedger`)."""

    async def post(self, key: str, legs: Sequence[Leg], context: Mapping[str, str]) -> MeshReply: ...


class HttpLedger:
    """`PUT /transactions/{key}` through meshd's HTTP/1.1 router (`Host: ledger`): the default hop."""

    def __init__(self, mesh: MeshClient) -> None:
        self._mesh = mesh

    def __repr__(self) -> str:
        return f"HttpLedger({self._mesh!r})"

    async def post(self, key: str, legs: Sequence[Leg], context: Mapping[str, str]) -> MeshReply:
        body: dict[str, object] = {"legs": [leg.to_json() for leg in legs]}
        return await self._mesh.call("ledger", "PUT", f"/transactions/{key}", body=body, context=context)


class GrpcLedger:
    """Posts transactions with `bank.Ledger/Post` on one HTTP/2 channel (meshd's h2 router, or a replica).

    Answers come back as a `MeshReply` with the HTTP status of the table above, so callers treat both hops
    alike; `l5d-err` (meshd's reason, when meshd failed the call) and the replica's `x-replica` are in its
    headers."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_secs: float) -> None:
        self._post = channel.unary_unary(POST_PATH)
        self._timeout = timeout_secs

    def __repr__(self) -> str:
        return f"GrpcLedger({POST_PATH})"

    async def post(self, key: str, legs: Sequence[Leg], context: Mapping[str, str]) -> MeshReply:
        message = json.dumps({"key": key, "legs": [leg.to_json() for leg in legs]}).encode()
        # l5d-ctx-* go along as metadata (meshd reads them as headers); grpcio sends the timeout as grpc-timeout
        metadata = tuple((name.lower(), value) for name, value in context.items())
        try:
            call = self._post(message, timeout=self._timeout, metadata=metadata)
            answer = await call
            headers = _metadata(await call.initial_metadata()) | _metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            headers = _metadata(exc.initial_metadata()) | _metadata(exc.trailing_metadata())
            body: dict[str, object] = {"error": exc.details() or exc.code().name, "grpc_status": exc.code().name}
            return MeshReply(_AS_HTTP.get(exc.code(), 500), body, headers)
        except (grpc.RpcError, OSError) as exc:  # pragma: no cover - grpc.aio raises AioRpcError
            raise MeshUnavailable(f"{POST_PATH}: {exc}") from exc
        try:
            document = json.loads(answer)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return MeshReply(502, {"error": "the ledger's answer is not JSON"}, headers)
        if not isinstance(document, dict):
            return MeshReply(502, {"error": "the ledger's answer is not a JSON object"}, headers)
        status = 201 if document.get("status") == "posted" else 200
        return MeshReply(status, {str(k): v for k, v in document.items()}, headers)


def _metadata(pairs: Iterable[tuple[str, object]] | None) -> dict[str, str]:
    """grpc.aio.Metadata (or None) as a dict of its text values, names lower-cased."""
    out: dict[str, str] = {}
    if pairs is None:
        return out
    for name, value in pairs:
        if isinstance(value, str):
            out[str(name).lower()] = value
    return out


GRPC_LEDGER: Final = web.AppKey("grpc_ledger", GrpcLedger)


def attach_grpc_ledger(app: web.Application, target: str, *, timeout_secs: float) -> None:
    """Give the app a GrpcLedger on a channel to `target` (host:port) for as long as the app runs."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        app[GRPC_LEDGER] = GrpcLedger(channel, timeout_secs=timeout_secs)
        yield
        await channel.close()

    app.cleanup_ctx.append(lifecycle)
