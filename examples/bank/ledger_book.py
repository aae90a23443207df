"""Double-entry bookkeeping rules for the ledger, with no I/O: legs, their validation and their effect on balances.

A transaction is two or more legs; each leg debits or credits one account by a positive amount in minor units,
and the debits equal the credits. An account's balance is its credits minus its debits, so the balances of all
accounts always sum to zero: money moves, it is never made or lost. The fingerprint identifies a transaction's
content independently of the order its legs were written in; the ledger compares fingerprints to tell a
replayed request (same key, same content) from a conflicting one (same key, different content).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from examples.bank.payloads import InvalidPayload, as_object, field_int, field_str

Direction = Literal["debit", "credit"]


@dataclass(frozen=True, slots=True, order=True)
class Leg:
    account: str
    direction: Direction
    amount: int

    def __post_init__(self) -> None:
        if not self.account:
            raise ValueError("a leg needs an account")
        if self.amount <= 0:
            raise ValueError(f"a leg's amount must be positive, got {self.amount}")

    @property
    def delta(self) -> int:
        """The leg's effect on its account's balance: credits add, debits subtract."""
        return self.amount if self.direction == "credit" else -self.amount

    def to_json(self) -> dict[str, object]:
        return {"account": self.account, "direction": self.direction, "amount": self.amount}


def make_transaction(legs: Iterable[Leg]) -> tuple[Leg, ...]:
    """Check that the legs form a balanced transaction and put them in canonical (sorted) order."""
    canonical = tuple(sorted(legs))
    if len(canonical) < 2:
        raise ValueError("a transaction needs at least two legs")
    debits = sum(leg.amount for leg in canonical if leg.direction == "debit")
    credits = sum(leg.amount for leg in canonical if leg.direction == "credit")
    if debits != credits:
        raise ValueError(f"debits ({debits}) must equal credits ({credits})")
    return canonical


def parse_legs(value: object) -> tuple[Leg, ...]:
    """The `legs` of a request body as a canonical transaction, or InvalidPayload saying what is wrong."""
    if not isinstance(value, list):
        raise InvalidPayload("legs must be a list")
    legs: list[Leg] = []
    for index, item in enumerate(value):
        leg = as_object(item, f"legs[{index}]")
        written = field_str(leg, "direction")
        direction: Direction
        if written == "debit":
            direction = "debit"
        elif written == "credit":
            direction = "credit"
        else:
            raise InvalidPayload(f"legs[{index}].direction must be debit or credit, got {written!r}")
        try:
            legs.append(Leg(field_str(leg, "account"), direction, field_int(leg, "amount", minimum=1)))
        except ValueError as exc:
            raise InvalidPayload(f"legs[{index}]: {exc}") from exc
    try:
        return make_transaction(legs)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from exc


def fingerprint(legs: Iterable[Leg]) -> str:
    """A digest of the transaction's content; equal for the same legs in any order."""
    canonical = [leg.to_json() for leg in sorted(legs)]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def balance_changes(legs: Iterable[Leg]) -> dict[str, int]:
    changes: dict[str, int] = {}
    for leg in legs:
        changes[leg.account] = changes.get(leg.account, 0) + leg.delta
    return changes


def apply(balances: Mapping[str, int], legs: Iterable[Leg]) -> dict[str, int]:
    """The balances after posting `legs`; the input is not changed."""
    result = dict(balances)
    for account, delta in balance_changes(legs).items():
        result[account] = result.get(account, 0) + delta
    return result


def transfer(debit_account: str, credit_account: str, amount: int) -> tuple[Leg, ...]:
    """The common two-leg transaction: move `amount` from one account to another."""
    return make_transaction([Leg(debit_account, "debit", amount), Leg(credit_account, "credit", amount)])
