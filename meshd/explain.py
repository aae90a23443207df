"""Explain a binding: every step of delegating a logical name, plus the endpoints it ends at.

Used by `/admin/delegator` and `meshd dtab explain`. Pending namers are waited for (up to a
timeout), so the explanation shows real answers, not "pending". Each dentry of the dtab used is
listed with where it came from (the router's `dtab`, the routing file's `dtab` text or one of its
named rules, or the request's local dtab), so an operator can tell which edit to make.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from meshd.discovery.addr import Addr, Bound, Failed, Neg, Pending
from meshd.discovery.base import Namer
from routing.delegate import Binding, DelegationError, Trace, bind, compile_choice, parse_dtab_header
from routing.dtab import Dtab
from routing.namer import BoundName
from routing.namer import Namer as RoutingNamer
from routing.parser import DtabSyntaxError
from routing.path import Path, PathError
from routing.rules import Routes

JsonDict = dict[str, object]


async def explain(
    path_text: str,
    base: Dtab,
    namers: Mapping[Path, Namer],
    addr_of: Callable[[Path], Addr],
    *,
    local_dtab: str = "",
    origins: Sequence[str] = (),
    timeout_s: float = 5.0,
) -> JsonDict:
    """A JSON-ready explanation; problems (bad path, bad dtab, loop) are reported in `error`.

    `origins` names where each dentry of `base` came from (see `dentry_origins`); the local
    dtab's dentries are named `local dtab`.
    """
    try:
        path = Path.read(path_text)
    except PathError as exc:
        return {"path": path_text, "error": f"bad path: {exc}"}
    dtab = base
    if local_dtab:
        try:
            dtab = base + parse_dtab_header(local_dtab)
        except DtabSyntaxError as exc:
            # one line in `error` (it may end up in a header or a log line); the caret picture apart
            return {"path": path_text, "error": f"bad dtab: {exc.short}", "errorContext": str(exc)}
    dentries = _dentries_json(base, dtab, origins)
    try:
        binding = await _bind_waiting(dtab, path, namers, timeout_s)
    except DelegationError as exc:
        return {
            "path": path.show(),
            "dtab": dtab.show(),
            "dentries": dentries,
            "error": str(exc),
            "trace": exc.trace.to_json(),
            "explanation": exc.trace.render(),
        }
    result: JsonDict = {
        "path": path.show(),
        "dtab": dtab.show(),
        "dentries": dentries,
        "pending": binding.pending,
        "trace": binding.trace.to_json(),
        "explanation": binding.trace.render(),
    }
    outcomes: list[JsonDict] = []
    for probability, choice in compile_choice(binding.tree).branches:
        if isinstance(choice, BoundName):
            addr = addr_of(choice.id)
            outcomes.append(
                {
                    "probability": round(probability, 6),
                    "client": choice.id.show(),
                    "residual": choice.residual.show(),
                    "addr": _addr_json(addr),
                }
            )
        else:
            outcomes.append({"probability": round(probability, 6), "result": type(choice).__name__.lower()})
    result["outcomes"] = outcomes
    return result


def dentry_origins(router_label: str, own: Dtab, routes: Routes | None) -> list[str]:
    """Where each dentry of a router's effective dtab (own dtab, then the routing file's) comes from."""
    origins = [f"router {router_label} dtab"] * len(own.dentries)
    if routes is not None:
        source = routes.source or "routes file"
        origins += [f"{source}: dtab"] * len(routes.text_dtab.dentries)
        origins += [f"{source}: rule {rule.name} (line {rule.line})" for rule in routes.dtab_rules]
    return origins


def _dentries_json(base: Dtab, dtab: Dtab, origins: Sequence[str]) -> list[JsonDict]:
    out: list[JsonDict] = []
    for index, dentry in enumerate(dtab.dentries):
        if index >= len(base.dentries):
            origin = "local dtab"
        elif index < len(origins):
            origin = origins[index]
        else:
            origin = ""
        out.append({"index": index, "dentry": dentry.show(), "from": origin})
    return out


async def _bind_waiting(dtab: Dtab, path: Path, namers: Mapping[Path, Namer], timeout_s: float) -> Binding:
    binding = bind(dtab, path, namers)
    try:
        async with asyncio.timeout(timeout_s):
            while binding.pending:
                waits = [asyncio.ensure_future(n.version.wait_changed()) for n in namers.values()]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                binding = bind(dtab, path, namers)
    except TimeoutError:
        pass
    return binding


def _addr_json(addr: Addr) -> JsonDict:
    if isinstance(addr, Bound):
        return {
            "state": "bound",
            "endpoints": [
                {"address": a.show(), "weight": a.weight, "node": a.node_name}
                for a in sorted(addr.addresses, key=lambda a: (a.host, a.port))
            ],
        }
    if isinstance(addr, Neg):
        return {"state": "neg"}
    if isinstance(addr, Failed):
        return {"state": "failed", "reason": addr.reason}
    assert isinstance(addr, Pending)
    return {"state": "pending"}


def namer_reasons(trace: Trace, namers: Mapping[Path, RoutingNamer], *, answer: str) -> list[str]:
    """Why the namers asked during a binding answered `answer` ("~" negative, "pending").

    Each namer that can say why (an optional `why(path)` method) is asked; the result reads
    `/#/k8s/bank/grpc/accounts: service bank/accounts: no port named 'grpc' ...`. Used only on
    the error path, to make `l5d-err` name the reason.
    """
    reasons: list[str] = []
    stack = [trace.root]
    while stack:
        node = stack.pop()
        for step in node.namers:
            if step.answer != answer:
                continue
            namer = namers.get(step.prefix)
            why = getattr(namer, "why", None)
            reason = why(step.path) if why is not None else None
            text = f"{step.prefix.concat(step.path).show()}: {reason}" if reason else None
            if text and text not in reasons:
                reasons.append(text)
        stack.extend(reversed(node.children))
    return reasons
