"""Workload identity on the request, and the authorization policy (docs/tls.md).

Two router-level filters, each in the chain only when the router needs it, so a router without
TLS client certificates or a policy pays nothing for them. They run for every request of a TLS
router (`authorize` even while no policy is loaded: a routes file may bring one), so this module
is compiled with the hot path (meshd.COMPILED_MODULES):

- `identity` (after hygiene, on routers with a server that verifies client certificates): the
  identity the listener read from the client's certificate (`ctx.peer_identity`) goes to the
  upstream in `l5d-client-id`, and to identifiers (a `header` identifier on `l5d-client-id`
  routes by caller). The codec sets every `l5d-*` header a client sends apart and hygiene never
  forwards this one (it even drops it from a trusted caller's), so no caller can forge it.
- `authorize` (after identify, on routers with an `authorization` section or a routes file):
  the policy (routing/authz.py) decides per (logical name, identity), remembered per pair; a
  denial is a 403 (`Forbidden`, never written: no upstream is called) naming the rule, counted
  in `meshd_authz_denied_total{router, rule}`.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from meshd.errors import Forbidden
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Filter
from routing.authz import Policy
from routing.path import Path

L5D_CLIENT_ID: Final = b"l5d-client-id"
L5D_CLIENT_ID_NAME: Final = "l5d-client-id"
#: bound on the remembered decisions and header values (callers and names are few; a bound all the same)
MAX_REMEMBERED: Final = 10_000


def identity_filter() -> Filter:
    #: identity -> its header, made once (the header tuple is shared by every request of that caller)
    headers: dict[str, tuple[bytes, bytes]] = {}

    def add_identity(ctx: RouteContext) -> None:
        identity = ctx.peer_identity
        request = ctx.request
        if identity:
            header = headers.get(identity)
            if header is None:
                if len(headers) >= MAX_REMEMBERED:
                    headers.clear()
                header = headers[identity] = (L5D_CLIENT_ID, identity.encode("ascii", "replace"))
            request.headers.append(header)
            request.l5d[L5D_CLIENT_ID_NAME] = header[1]
        elif request.l5d:
            request.l5d.pop(L5D_CLIENT_ID_NAME, None)

    return add_identity


class Authorization:
    """A router's policy in force (None: no policy, everything allowed) and its denial counts."""

    __slots__ = ("policy", "denied", "_decisions")

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy
        #: denials by rule name
        self.denied: Counter[str] = Counter()
        self._decisions: dict[tuple[Path, str], str] = {}

    def set(self, policy: Policy | None) -> None:
        self.policy = policy
        self._decisions = {}

    def denied_by(self, name: Path, identity: str) -> str:
        """"" if allowed, else the denying rule's name (remembered per name and identity)."""
        policy = self.policy
        if policy is None:
            return ""
        key = (name, identity)
        decisions = self._decisions
        rule = decisions.get(key)
        if rule is None:
            if len(decisions) >= MAX_REMEMBERED:
                decisions.clear()
            rule = decisions[key] = policy.denied_by(name, identity) or ""
        return rule


def authorize_filter(authorization: Authorization) -> Filter:
    def authorize(ctx: RouteContext) -> None:
        path = ctx.logical_path
        if path is None or authorization.policy is None:
            return
        rule = authorization.denied_by(path, ctx.peer_identity)
        if rule:
            authorization.denied[rule] += 1
            policy = authorization.policy
            who = ctx.peer_identity or "a caller without a client certificate"
            where = f" ({policy.source})" if policy is not None and policy.source else ""
            raise Forbidden(f"{who} may not call {ctx.logical_name}: denied by authorization rule {rule!r}{where}")

    return authorize
