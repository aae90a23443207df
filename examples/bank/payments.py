"""The payments service: answers card authorisations within tens of milliseconds, safely under retries.

`POST /authorisations` with `{"auth_id", "account_id", "merchant_id", "amount"}`:

1. claim the auth id (a duplicate waits for the first request's decision and answers the same);
2. `GET accounts/accounts/{id}` through meshd: unknown account -> declined;
3. `PUT accounts/holds/{auth_id}`: the accounts service places the hold only if the money is there
   -> `declined` (insufficient_funds) otherwise;
4. `PUT ledger/transactions/auth:{auth_id}` debiting the customer and crediting the merchant (with
   `--ledger-grpc HOST:PORT`, the gRPC call `bank.Ledger/Post` through meshd's HTTP/2 router instead:
   ledger_grpc.py);
5. record the decision with its after-response steps (one transaction), answer `approved`/`declined`;
6. after the answer is on the wire: enrichment (merchants), feed entry, push notification, via the outbox.

Calls go through meshd with the caller's `l5d-ctx-*` headers; meshd retries the idempotent ones (GET, PUT), and
the ids make those retries harmless. A failure before anything was written answers 503 and is forgotten, so the
card network may retry the same id; a hold that got no clear answer is released afterwards. If the ledger
cannot take the posting in time, the card is still approved (the hold reserves the money) and the posting is
the first after-response step. `POST /outbox/replay` re-runs whatever after-response work is still pending;
`GET /outbox` shows it.

With `--events` (what the demo runs) steps 5-6 go through the event log instead: the decision and its event
are written in one transaction (a transactional outbox), a relay (relay.py) publishes the event to the
`events` service through meshd, and ledger catch-up, enrichment, the feed and the push are consumers of it
(consumer.py). Publishing never blocks an answer: when the log is down the events wait and the relay catches up.

Run `python -m examples.bank.payments --port P --db payments.db --replica payments-1 --meshd URL [--events]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final

from aiohttp import web

from examples.bank.authorisation import (
    DECISIONS_TOPIC,
    AuthRequest,
    Outcome,
    Step,
    approved,
    decision_event,
    declined,
    failed_before_writes,
    failed_during_hold,
    outcome_of_hold,
)
from examples.bank.ledger_grpc import GRPC_LEDGER, HttpLedger, LedgerPoster, attach_grpc_ledger
from examples.bank.mesh import MESH, MeshClient, MeshUnavailable, attach_mesh, context_headers
from examples.bank.options import ServiceOptions
from examples.bank.outbox import AfterWork, Outbox, RetryPolicy, StepRunner
from examples.bank.payloads import read_object
from examples.bank.payments_store import SCHEMA, AuthorisationRecord, PaymentsStore
from examples.bank.relay import EventRelay, Leadership
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, attach_database

STORE: Final = web.AppKey("payments_store", PaymentsStore)
OUTBOX: Final = web.AppKey("outbox", Outbox)
AFTER_WORK: Final = web.AppKey("after_work", AfterWork)
RELAY: Final = web.AppKey("event_relay", EventRelay)
ON_THE_LOG: Final = web.AppKey("on_the_log", bool)

SYNC_CALL_TIMEOUT_SECS: Final = 2.0


class AuthorisationFlow:
    """Steps 2-4 above: ask accounts and ledger, and turn their answers into an Outcome."""

    def __init__(self, mesh: MeshClient, ledger: LedgerPoster | None = None) -> None:
        self._mesh = mesh
        self._ledger = ledger if ledger is not None else HttpLedger(mesh)

    def __repr__(self) -> str:
        return f"AuthorisationFlow({self._mesh!r})"

    async def run(self, request: AuthRequest, context: Mapping[str, str]) -> Outcome:
        try:
            account = await self._mesh.call(
                "accounts", "GET", f"/accounts/{request.account_id}", context=context
            )
        except MeshUnavailable as exc:
            return failed_before_writes(f"accounts unavailable: {exc}")
        if account.status == 404:
            return declined("no_such_account")
        if not account.ok:
            return failed_before_writes(f"accounts answered {account.status}")

        try:
            hold = await self._mesh.call(
                "accounts", "PUT", f"/holds/{request.auth_id}", body=request.hold_body(), context=context
            )
        except MeshUnavailable as exc:
            return failed_during_hold(f"hold unanswered: {exc}")
        if hold.status == 404:
            return declined("no_such_account")
        if hold.status == 409:
            return Outcome("failed", "hold_conflict", ())  # someone else's hold under this id: leave it alone
        if not hold.ok:
            return failed_during_hold(f"hold answered {hold.status}")
        decided = outcome_of_hold(hold.body.get("status"))
        if decided is not None:
            return decided

        try:
            posting = await self._ledger.post(request.ledger_key, request.ledger_legs(), context)
        except MeshUnavailable:
            return approved(ledger_posted=False)
        return approved(ledger_posted=posting.status in (200, 201))


FLOW: Final = web.AppKey("authorisation_flow", AuthorisationFlow)


def create_app(options: ServiceOptions, *, retry_policy: RetryPolicy | None = None) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    attach_mesh(app, options.meshd, timeout_secs=SYNC_CALL_TIMEOUT_SECS)
    if options.ledger_grpc is not None:
        attach_grpc_ledger(app, options.ledger_grpc, timeout_secs=SYNC_CALL_TIMEOUT_SECS)
    policy = retry_policy if retry_policy is not None else RetryPolicy()
    app[ON_THE_LOG] = options.events

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = PaymentsStore(app[DATABASE])
        app[STORE] = store
        ledger: LedgerPoster = app[GRPC_LEDGER] if options.ledger_grpc is not None else HttpLedger(app[MESH])
        app[FLOW] = AuthorisationFlow(app[MESH], ledger)
        app[OUTBOX] = Outbox(store, StepRunner(app[MESH], store, ledger), policy)
        app[AFTER_WORK] = AfterWork(app[OUTBOX])
        leadership = Leadership(app[MESH], options.replica) if options.events else None
        app[RELAY] = EventRelay(store, app[MESH], leadership=leadership)
        if options.events:
            app[RELAY].start()
        yield
        await app[RELAY].aclose()
        await app[AFTER_WORK].aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/authorisations", _authorise)
    app.router.add_get("/authorisations/{auth_id}", _get_authorisation)
    app.router.add_post("/outbox/replay", _replay_outbox)
    app.router.add_get("/outbox", _show_outbox)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    serve("payments", create_app, argv)


async def _authorise(request: web.Request) -> web.StreamResponse:
    auth = AuthRequest.from_json(await read_object(request))
    store = request.app[STORE]
    claim = await store.claim(auth)
    if claim.kind == "conflict":
        return web.json_response(
            {"error": f"authorisation {auth.auth_id} was sent with other content"}, status=409
        )
    if claim.kind == "decided" and claim.record is not None:
        return _answer(claim.record, replayed=True)

    try:
        outcome = await request.app[FLOW].run(auth, context_headers(request.headers))
    except BaseException:
        await asyncio.shield(store.abandon(auth.auth_id))
        raise
    if not outcome.remember:
        await store.abandon(auth.auth_id)
        return web.json_response(
            {"auth_id": auth.auth_id, "decision": outcome.decision, "reason": outcome.reason}, status=503
        )
    on_the_log = request.app[ON_THE_LOG]
    if on_the_log:
        # The decision and its event in one transaction; only payments' own compensation (releasing a hold
        # that got no clear answer) stays a step of its own outbox.
        events = (
            []
            if outcome.decision == "failed"
            else [(DECISIONS_TOPIC, auth.auth_id, decision_event(auth, outcome))]
        )
        steps: tuple[Step, ...] = tuple(step for step in outcome.steps if step == "release")
        record = await store.finish(auth, dataclasses.replace(outcome, steps=steps), events=events)
    else:
        steps = outcome.steps
        record = await store.finish(auth, outcome)
    response = _answer(record, replayed=record.decision != outcome.decision)
    # Put the answer on the wire first: the card network must not wait for enrichment or the feed.
    await response.prepare(request)
    await response.write_eof()
    if on_the_log:
        request.app[RELAY].wake()
    if steps:
        request.app[AFTER_WORK].spawn(auth.auth_id, context_headers(request.headers, keep_deadline=False))
    return response


async def _get_authorisation(request: web.Request) -> web.Response:
    record = await request.app[STORE].get(request.match_info["auth_id"])
    if record is None:
        return web.json_response({"error": "no such authorisation"}, status=404)
    return _answer(record, replayed=True)


async def _replay_outbox(request: web.Request) -> web.Response:
    report = await request.app[OUTBOX].replay()
    return web.json_response(report.to_json())


async def _show_outbox(request: web.Request) -> web.Response:
    store = request.app[STORE]
    pending = await store.all_pending(limit=100)
    relay = request.app[RELAY]
    return web.json_response(
        {
            "counts": await store.outbox_counts(),
            "pending": [row.to_json() for row in pending],
            "events": await store.event_outbox_counts(),
            "relay": None if relay.leadership is None else relay.leadership.to_json(),
        }
    )


def _answer(record: AuthorisationRecord, *, replayed: bool) -> web.Response:
    status = 503 if record.decision == "failed" else 200
    body = {
        "auth_id": record.request.auth_id,
        "decision": record.decision,
        "reason": record.reason,
        "replayed": replayed,
    }
    return web.json_response(body, status=status)


if __name__ == "__main__":
    main()
