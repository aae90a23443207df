"""Card authorisations without I/O: the request, the idempotency keys derived from it, and the decision rules.

Everything the payments service writes elsewhere is keyed by the authorisation id the card network sent: the
hold is `PUT /holds/{auth_id}`, the ledger transaction `PUT /transactions/auth:{auth_id}`, the feed entry and
the push are keyed by it too. A retried or duplicated authorisation therefore lands on the same records and
cannot move money twice.

After-response steps run in a fixed order (`STEP_ORDER`): the ledger posting first when it could not be made
while the card network waited, then enrichment, whose result the feed entry and the push show.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final, Literal

from examples.bank.ledger_book import Leg, transfer
from examples.bank.payloads import JsonObject, field_int, field_str

Decision = Literal["approved", "declined", "failed"]
Step = Literal["release", "ledger", "enrich", "feed", "notify"]

STEP_ORDER: Final[tuple[Step, ...]] = ("release", "ledger", "enrich", "feed", "notify")

FUNDING_ACCOUNT: Final = "bank:funding"


def customer_ledger_account(account_id: str) -> str:
    return f"customer:{account_id}"


def merchant_ledger_account(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def ledger_key(auth_id: str) -> str:
    return f"auth:{auth_id}"


def auth_id_from_ledger_key(key: str) -> str | None:
    prefix = ledger_key("")
    return key[len(prefix) :] if key.startswith(prefix) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequest:
    """What the card network asks: may this card pay `amount` (minor units) to this merchant?"""

    auth_id: str
    account_id: str
    merchant_id: str
    amount: int

    def __post_init__(self) -> None:
        if not (self.auth_id and self.account_id and self.merchant_id):
            raise ValueError("auth_id, account_id and merchant_id must not be empty")
        if self.amount <= 0:
            raise ValueError(f"amount must be positive, got {self.amount}")

    @classmethod
    def from_json(cls, body: JsonObject) -> AuthRequest:
        return cls(
            auth_id=field_str(body, "auth_id"),
            account_id=field_str(body, "account_id"),
            merchant_id=field_str(body, "merchant_id"),
            amount=field_int(body, "amount", minimum=1),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "auth_id": self.auth_id,
            "account_id": self.account_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
        }

    @property
    def fingerprint(self) -> str:
        """Identifies the request's content: the same auth id with other content is a conflict, not a retry."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @property
    def ledger_key(self) -> str:
        return ledger_key(self.auth_id)

    def ledger_legs(self) -> tuple[Leg, ...]:
        return transfer(
            customer_ledger_account(self.account_id), merchant_ledger_account(self.merchant_id), self.amount
        )

    def hold_body(self) -> dict[str, object]:
        return {"account_id": self.account_id, "amount": self.amount}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer for the card network and the work that must follow it.

    `remember=False` is for failures that happened before anything was written anywhere: not recording them
    lets the card network retry with the same authorisation id.
    """

    decision: Decision
    reason: str
    steps: tuple[Step, ...]
    remember: bool = True

    def __post_init__(self) -> None:
        if tuple(sorted(self.steps, key=STEP_ORDER.index)) != self.steps:
            raise ValueError(f"steps must follow {STEP_ORDER}, got {self.steps}")


def approved(*, ledger_posted: bool) -> Outcome:
    """The hold is placed, so the money is the merchant's: if the ledger could not take the posting now, the
    posting becomes the first after-response step rather than a reason to refuse the card."""
    steps: tuple[Step, ...] = ("enrich", "feed", "notify")
    return Outcome("approved", "", steps if ledger_posted else ("ledger", *steps))


def declined(reason: str) -> Outcome:
    return Outcome("declined", reason, ("notify",))


def failed_before_writes(reason: str) -> Outcome:
    return Outcome("failed", reason, (), remember=False)


def failed_during_hold(reason: str) -> Outcome:
    """The hold request got no clear answer: it may or may not exist, so it is released afterwards (a release
    of an unknown hold leaves a tombstone that keeps a late hold request from taking effect)."""
    return Outcome("failed", reason, ("release",))


def outcome_of_hold(hold_status: object) -> Outcome | None:
    """The decision a hold answer implies, or None when the hold is placed and the ledger comes next."""
    if hold_status in ("held", "captured"):
        return None
    if hold_status == "declined":
        return declined("insufficient_funds")
    if hold_status == "released":
        return declined("voided")
    return failed_during_hold(f"unexpected hold status {hold_status!r}")


def notification_text(request: AuthRequest, decision: str, reason: str, merchant_name: str | None) -> str:
    where = merchant_name or request.merchant_id
    amount = f"{request.amount // 100}.{request.amount % 100:02d}"
    if decision == "approved":
        return f"You paid {amount} at {where}."
    return f"A card payment of {amount} at {where} was declined ({reason})."


DECISIONS_TOPIC: Final = "authorisations"
"""Payments publishes one event per decided authorisation here (id: the authorisation id)."""
ENRICHED_TOPIC: Final = "authorisations-enriched"
"""Merchants republishes each decision here with the merchant's name and category, for feed and notifications."""
INCOME_TOPIC: Final = "income"
"""Salaries and top-ups (`{"account_id", "amount"}`), credited by the accounts service."""


def decision_event(request: AuthRequest, outcome: Outcome) -> dict[str, object]:
    """The payload of the decision event: the request, the decision, and whether the ledger still needs it."""
    return request.to_json() | {
        "decision": outcome.decision,
        "reason": outcome.reason,
        "ledger_posted": "ledger" not in outcome.steps,
    }


def request_of_event(payload: JsonObject) -> AuthRequest:
    """The authorisation a decision event is about (InvalidPayload if the event is malformed)."""
    return AuthRequest.from_json(payload)


def event_decision(payload: JsonObject) -> tuple[str, str]:
    return field_str(payload, "decision"), str(payload.get("reason", ""))
