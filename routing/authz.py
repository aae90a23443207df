"""Authorization policy: which workload identities may call which logical names.

    authorization:
      default: deny            # names no rule covers: deny (the default) or allow
      rules:
        - name: ledger-callers
          prefix: /svc/ledger
          allow:
            - spiffe://bank.local/ns/bank/sa/payments
            - spiffe://bank.local/ns/bank/sa/accounts
        - name: anyone-in-bank
          prefix: /svc/*
          allow: [spiffe://bank.local/ns/bank/*]

A request's logical name is checked against the rules in order; the first rule whose prefix
matches decides: the caller's identity must match one of its `allow` patterns, else the request
is denied *by that rule*. A name no rule matches gets `default`. A pattern is an identity
(exact), or text ending in `*` (any identity that starts with the text before it); `*` alone
is any authenticated caller. A caller without an identity (no client certificate) matches no
pattern, so it is denied wherever a rule applies. Pure data and matching: the router caches
each (name, identity) decision (meshd/pipeline/authorize.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from routing.dtab import Prefix
from routing.parser import parse_prefix
from routing.path import Path

#: the rule name a denial by `default: deny` reports
DEFAULT_RULE: Final = "default"


@dataclass(frozen=True, slots=True)
class AuthzRule:
    name: str
    prefix: Prefix
    allow: tuple[str, ...]
    line: int = 0

    def allows(self, identity: str) -> bool:
        if not identity:
            return False
        for pattern in self.allow:
            if pattern.endswith("*"):
                if identity.startswith(pattern[:-1]):
                    return True
            elif identity == pattern:
                return True
        return False

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "prefix": self.prefix.show(), "allow": list(self.allow)}


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[AuthzRule, ...] = ()
    default_allow: bool = False
    source: str = ""

    def denied_by(self, name: Path, identity: str) -> str | None:
        """None if `identity` may call `name`; else the name of the rule that denies it."""
        for rule in self.rules:
            if rule.prefix.matches(name):
                return None if rule.allows(identity) else rule.name
        return None if self.default_allow else DEFAULT_RULE

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "default": "allow" if self.default_allow else "deny",
            "rules": [r.to_json() for r in self.rules],
        }


def build_policy(rules: Sequence[tuple[str, str, Sequence[str]]], default: str = "deny", source: str = "") -> Policy:
    """A policy from (name, prefix text, allow patterns) triples; ValueError on a bad prefix,
    a repeated rule name, an empty pattern or a `*` anywhere but at the end."""
    built: list[AuthzRule] = []
    seen: set[str] = set()
    for name, prefix, allow in rules:
        if name in seen:
            raise ValueError(f"rule name {name!r} is used twice")
        seen.add(name)
        for pattern in allow:
            check_pattern(pattern)
        built.append(AuthzRule(name, parse_prefix(prefix), tuple(allow)))
    if default not in ("allow", "deny"):
        raise ValueError(f"default must be allow or deny, got {default!r}")
    return Policy(tuple(built), default == "allow", source)


def check_pattern(pattern: str) -> None:
    if not pattern:
        raise ValueError("an allow pattern must not be empty")
    if "*" in pattern[:-1]:
        raise ValueError(f"{pattern!r}: '*' may only end a pattern")
