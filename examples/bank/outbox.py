"""The work an authorisation needs after its answer has gone out: ledger catch-up, enrichment, feed, push.

How this works: the steps were written to the outbox table together with the decision, before the answer was
sent (see payments_store). `AfterWork` then runs them in the background through meshd; each step is retried
a few times with backoff (meshd retries too, within its budget), steps run in order and stop at the first one
that still fails, and a step row is marked done only after its call succeeded. What is left stays `pending`
with its last error, so a crash, a dead peer or an exhausted retry budget delays the work but never loses it:
`POST /outbox/replay` runs whatever is pending. Every step is idempotent by authorisation id, so running one
twice (a replay racing the background task, two replicas replaying) is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from examples.bank.authorisation import Step, notification_text
from examples.bank.ledger_grpc import HttpLedger, LedgerPoster
from examples.bank.mesh import MeshClient, MeshReply, MeshUnavailable
from examples.bank.payments_store import AuthorisationRecord, PaymentsStore

Sleep = Callable[[float], Awaitable[None]]

DEFAULT_REPLAY_LIMIT: Final = 1000

_log = logging.getLogger(__name__)


class StepFailed(Exception):
    """A step did not complete; the message is kept in the outbox row as its last error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard the service itself tries a step before leaving it in the outbox."""

    attempts: int = 3
    first_backoff_ms: float = 50.0
    multiplier: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.first_backoff_ms < 0:
            raise ValueError(f"first_backoff_ms must not be negative, got {self.first_backoff_ms}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")

    def backoff_secs(self, retry: int) -> float:
        """The pause before retry number `retry` (1 for the first retry)."""
        return self.first_backoff_ms * self.multiplier ** (retry - 1) / 1000.0


@dataclass(frozen=True, slots=True)
class ReplayReport:
    attempted: int
    completed: int
    pending: int

    def to_json(self) -> dict[str, object]:
        return {"attempted": self.attempted, "completed": self.completed, "pending": self.pending}


class StepPerformer(Protocol):
    async def run(self, step: Step, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        """Perform the step, or raise StepFailed."""


class StepRunner:
    """Performs one step through meshd; raises StepFailed unless the peer confirmed it."""

    def __init__(self, mesh: MeshClient, store: PaymentsStore, ledger: LedgerPoster | None = None) -> None:
        self._mesh = mesh
        self._store = store
        self._ledger = ledger if ledger is not None else HttpLedger(mesh)

    async def run(self, step: Step, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        perform = {
            "release": self._release,
            "ledger": self._post_to_ledger,
            "enrich": self._enrich,
            "feed": self._add_to_feed,
            "notify": self._notify,
        }[step]
        try:
            await perform(record, context)
        except MeshUnavailable as exc:
            raise StepFailed(f"{step}: {exc}") from exc

    async def _release(self, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        reply = await self._mesh.call(
            "accounts", "DELETE", f"/holds/{record.request.auth_id}", context=context
        )
        _expect(reply, "release", ok=(200,))

    async def _post_to_ledger(self, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        request = record.request
        reply = await self._ledger.post(request.ledger_key, request.ledger_legs(), context)
        _expect(reply, "ledger", ok=(200, 201))

    async def _add_to_feed(self, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        current = await self._current(record)
        request = current.request
        body: dict[str, object] = {
            "amount": request.amount,
            "merchant_name": current.merchant_name or request.merchant_id,
            "category": current.category or "unknown",
        }
        path = f"/feed/{request.account_id}/{request.auth_id}"
        _expect(await self._mesh.call("feed", "PUT", path, body=body, context=context), "feed", ok=(200, 201))

    async def _notify(self, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        current = await self._current(record)
        request = current.request
        body: dict[str, object] = {
            "customer_id": request.account_id,
            "message": notification_text(request, current.decision, current.reason, current.merchant_name),
        }
        path = f"/notifications/{request.auth_id}"
        reply = await self._mesh.call("notifications", "PUT", path, body=body, context=context)
        _expect(reply, "notify", ok=(200, 201))

    async def _enrich(self, record: AuthorisationRecord, context: Mapping[str, str]) -> None:
        merchant_id = record.request.merchant_id
        reply = await self._mesh.call("merchants", "GET", f"/merchants/{merchant_id}", context=context)
        if reply.status == 404:
            # An unknown merchant is an answer, not a failure: show the raw id rather than block the feed.
            await self._store.set_enrichment(record.request.auth_id, merchant_id, "unknown")
            return
        _expect(reply, "enrich", ok=(200,))
        name, category = reply.body.get("name"), reply.body.get("category")
        if not isinstance(name, str) or not isinstance(category, str):
            raise StepFailed(f"enrich: merchants answered without name and category: {reply.body}")
        await self._store.set_enrichment(record.request.auth_id, name, category)

    async def _current(self, record: AuthorisationRecord) -> AuthorisationRecord:
        """The record as it is now: an earlier step (enrichment) may have added to it."""
        current = await self._store.get(record.request.auth_id)
        return record if current is None else current


class Outbox:
    """Runs pending steps, in order, with the retry policy."""

    def __init__(
        self,
        store: PaymentsStore,
        runner: StepPerformer,
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._runner = runner
        self._policy = policy
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"Outbox({self._policy})"

    async def drain(self, auth_id: str, context: Mapping[str, str], *, attempts: int | None = None) -> bool:
        """Run the authorisation's pending steps, each up to `attempts` times (the policy's by default);
        True when none is left pending."""
        record = await self._store.get(auth_id)
        if record is None:
            return True
        for row in await self._store.pending_steps(auth_id):
            tries = self._policy.attempts if attempts is None else attempts
            if not await self._run_with_retries(row.step, record, context, tries):
                return False
        return True

    async def replay(self, *, limit: int = DEFAULT_REPLAY_LIMIT) -> ReplayReport:
        """Try every authorisation that has pending steps (oldest ids first, at most `limit` of them).

        One attempt per step and no backoff: the replay is itself the retry, and a peer that is still down
        must not make it take minutes.
        """
        auth_ids = await self._store.auth_ids_with_pending_steps(limit)
        completed = 0
        for auth_id in auth_ids:
            if await self.drain(auth_id, {}, attempts=1):
                completed += 1
        return ReplayReport(len(auth_ids), completed, len(auth_ids) - completed)

    async def _run_with_retries(
        self, step: Step, record: AuthorisationRecord, context: Mapping[str, str], attempts: int
    ) -> bool:
        error = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await self._sleep(self._policy.backoff_secs(attempt - 1))
            try:
                await self._runner.run(step, record, context)
            except StepFailed as exc:
                error = str(exc)
                continue
            await self._store.mark_done(record.request.auth_id, step, attempt)
            return True
        await self._store.mark_failed(record.request.auth_id, step, attempts, error)
        return False


class AfterWork:
    """Owns the background tasks that drain an authorisation's steps once its answer has been sent.

    Shutting down cancels what is still running; those steps stay pending in the outbox for a replay.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._tasks: set[asyncio.Task[bool]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"AfterWork(in_flight={len(self._tasks)})"

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def spawn(self, auth_id: str, context: Mapping[str, str]) -> None:
        task = asyncio.get_running_loop().create_task(self._outbox.drain(auth_id, dict(context)))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._forget)

    async def wait_idle(self) -> None:
        """Wait until no after-response work is running (tests use this instead of sleeping)."""
        await self._idle.wait()

    async def aclose(self, *, grace_secs: float = 1.0) -> None:
        """Give running work `grace_secs` to finish, then cancel it."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_secs)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _forget(self, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            # The steps are still pending in the outbox; say why, so the operator knows what to replay.
            _log.error("after-response work failed; its steps stay in the outbox", exc_info=error)


def _expect(reply: MeshReply, step: Step, *, ok: tuple[int, ...]) -> None:
    if reply.status not in ok:
        detail = reply.headers.get("l5d-err") or reply.body.get("error") or reply.body.get("text") or ""
        raise StepFailed(f"{step}: HTTP {reply.status} {detail}".strip())
