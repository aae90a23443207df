"""Request matching for routing-file rules with `match:` (header value, method, path prefix).

A rule with `match:` is not part of the router's dtab. For each request whose logical name the
rule's `prefix` matches and which the `match` conditions all hold for, the rule's dentry is
added after the dtab for that request only, as a per-request dtab would be, so it wins and the
dtab stays its fallback. `matched_dtab` returns those dentries as dtab text (the binding cache
key); the router keeps the compiled rules in a `MatchRules` holder, whose `rules` is empty when
the routing file has none (then the request path does one attribute test and nothing else).

Matching is string comparison: a header's first value equal to a text (`exact`), starting
with it (`prefix`), or matching a regular expression in full (`regex`, compiled by RE2 in
`routing/regex.py`: linear time in the value's length, so no request can make matching slow),
the method equal to a token, the request path equal to a path prefix or below it (segment by
segment: `/v2` matches `/v2` and `/v2/x`, not `/v2x`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from routing.dtab import Prefix
from routing.path import Path
from routing.regex import Pattern, compile_regex


class RequestView(Protocol):
    """What matching reads of a request."""

    @property
    def method(self) -> str: ...

    @property
    def target(self) -> str: ...

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None."""
        ...


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition: the header's first value is `value` (exact), starts with it
    (prefix), or matches the regular expression `value` in full (regex, compiled at creation;
    raises routing.regex.RegexError for a pattern that is refused)."""

    name: str  # lower-case
    value: str
    how: Literal["exact", "prefix", "regex"] = "exact"
    pattern: Pattern | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.how == "regex" and self.pattern is None:
            object.__setattr__(self, "pattern", compile_regex(self.value))

    def holds(self, request: RequestView) -> bool:
        value = request.header(self.name)
        if value is None:
            return False
        if self.how == "exact":
            return value == self.value
        if self.how == "prefix":
            return value.startswith(self.value)
        pattern = self.pattern
        return pattern is not None and pattern.fullmatch(value) is not None

    def show(self) -> str:
        if self.how == "regex":
            return f"{self.name} ~ /{self.value}/"
        return f"{self.name}: {self.value}" if self.how == "exact" else f"{self.name}: {self.value}*"


@dataclass(frozen=True, slots=True)
class Match:
    """Conditions that must all hold: every header, the method, the path prefix (those given)."""

    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None
    path_prefix: str | None = None

    def holds(self, request: RequestView) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if self.path_prefix is not None and not _under(request_path(request.target), self.path_prefix):
            return False
        return all(h.holds(request) for h in self.headers)

    def show(self) -> str:
        parts = [h.show() for h in self.headers]
        if self.method is not None:
            parts.append(f"method {self.method}")
        if self.path_prefix is not None:
            parts.append(f"path {self.path_prefix}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.headers:
            out["headers"] = {h.name: {h.how: h.value} for h in self.headers}
        if self.method is not None:
            out["method"] = self.method
        if self.path_prefix is not None:
            out["pathPrefix"] = self.path_prefix
        return out


def request_path(target: str) -> str:
    """The path of a request target: origin form as it is, absolute form without scheme and
    authority; the query is dropped."""
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end >= 0:
            slash = target.find("/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else "/"
    query = target.find("?")
    return target if query < 0 else target[:query]


def _under(path: str, prefix: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base + "/")


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection (for game days): for `share` of the matching requests, answer `abort`
    (a status) at once, or wait `delay_ms` before routing them."""

    share: float
    abort: int | None = None
    delay_ms: int | None = None

    @property
    def kind(self) -> str:
        return "abort" if self.abort is not None else "delay"

    def show(self) -> str:
        what = f"abort {self.abort}" if self.abort is not None else f"delay {self.delay_ms} ms"
        return f"{what} for {self.share:.0%} of matching requests"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"share": self.share}
        if self.abort is not None:
            out["abort"] = self.abort
        if self.delay_ms is not None:
            out["delayMs"] = self.delay_ms
        return out


@dataclass(frozen=True, slots=True)
class Mirror:
    """Request mirroring: for `share` of the matching requests, a copy goes to `dst` (a path,
    bound through the router's dtab) and its answer is dropped. The copy is never retried and is
    skipped when `max_in_flight` copies of this rule are already under way or the body is over
    `max_body_bytes`; `timeout_ms` bounds each copy (its body wait, binding, answer and body)."""

    dst: Path
    share: float
    max_in_flight: int = 100
    max_body_bytes: int = 64 * 1024
    timeout_ms: int = 1000

    def show(self) -> str:
        return f"copy {self.share:.0%} of matching requests to {self.dst.show()}"

    def to_json(self) -> dict[str, object]:
        return {
            "dst": self.dst.show(),
            "share": self.share,
            "maxInFlight": self.max_in_flight,
            "maxBodyBytes": self.max_body_bytes,
            "timeoutMs": self.timeout_ms,
        }


@dataclass(frozen=True, slots=True)
class MatchRule:
    """A rule as the request path uses it: the names it applies to, its conditions, and its
    dentry (a match rule) or its fault (a fault rule)."""

    prefix: Prefix
    match: Match
    dentry: str  # the dentry as dtab text (`/svc/accounts=>/#/fs/accounts-v2`); "" for a fault rule
    name: str = ""
    fault: Fault | None = None
    mirror: Mirror | None = None


@dataclass(slots=True)
class MatchRules:
    """The router's current match, fault and mirror rules (replaced whole on a routing-file reload).

    `active` is true when there is any: the request path tests it and nothing else otherwise.
    `injected` counts the faults injected, by (rule name, kind).
    """

    rules: tuple[MatchRule, ...] = field(default=())
    faults: tuple[MatchRule, ...] = field(default=())
    active: bool = False
    injected: dict[tuple[str, str], int] = field(default_factory=dict)
    mirrors: tuple[MatchRule, ...] = field(default=())

    def set(
        self, rules: tuple[MatchRule, ...], faults: tuple[MatchRule, ...], mirrors: tuple[MatchRule, ...] = ()
    ) -> None:
        self.rules = rules
        self.faults = faults
        self.mirrors = mirrors
        self.active = bool(rules or faults or mirrors)


def fault_for(faults: Sequence[MatchRule], path: Path, request: RequestView, draw: float) -> MatchRule | None:
    """The first fault rule that applies to this request and whose share `draw` (in [0, 1)) falls in."""
    for rule in faults:
        fault = rule.fault
        if fault is not None and draw < fault.share and rule.prefix.matches(path) and rule.match.holds(request):
            return rule
    return None


def matched_dtab(rules: Sequence[MatchRule], path: Path, request: RequestView) -> str:
    """The dentries of the rules that apply to this request, joined as dtab text ("" for none)."""
    texts = [rule.dentry for rule in rules if rule.prefix.matches(path) and rule.match.holds(request)]
    return ";".join(texts)
