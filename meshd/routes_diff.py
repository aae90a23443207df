"""`meshd routes diff old.yaml new.yaml`: where traffic goes for a set of names, before and after an edit.

The check an operator wants before applying a canary step. Both routing files are validated
first (a broken file is reported as `meshd check` reports it, and nothing is compared). Then,
with the config's namers started as `meshd dtab explain` starts them (the fs namer reads its
directory, the k8s namer asks the API), every name is bound twice through the router's
`dtab` followed by each file's entries, and the two outcomes are compared: each bound name
with the share of requests it gets, or the share that fails (`~`, `!`, `$`).

The names are the ones given on the command line, or by default every name the two files
route explicitly: each rule's `prefix` and each dentry prefix of their `dtab` text, when it
has no `*`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

from meshd.config.checks import CheckReport
from meshd.config.errors import ConfigProblem
from meshd.config.model import MeshdConfig, RouterConfig
from meshd.discovery.base import Namer
from meshd.discovery.start import close_namers, start_namers
from meshd.explain import explain
from meshd.router import Router
from meshd.runtime import Runtime
from routing.dtab import AnyElem, Dtab
from routing.path import Path
from routing.rules import Routes, RoutesError, load_routes, read_routes_file

#: how long to wait for namers that have not answered yet (a k8s watch that is starting)
PENDING_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class NameDiff:
    """One name: its outcomes before and after, as {destination: share of requests}."""

    path: str
    before: dict[str, float]
    after: dict[str, float]
    error_before: str | None = None
    error_after: str | None = None

    @property
    def changed(self) -> bool:
        return (
            _rounded(self.before) != _rounded(self.after) or self.error_before != self.error_after
        )

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "changed": self.changed,
            "before": self.before,
            "after": self.after,
            **({"errorBefore": self.error_before} if self.error_before else {}),
            **({"errorAfter": self.error_after} if self.error_after else {}),
        }


def _rounded(shares: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in shares.items() if round(v, 6) > 0}


def load_pair(old: str, new: str, max_bytes: int) -> tuple[Routes | None, Routes | None, CheckReport]:
    """Both routing files, validated; problems go into the report, in `meshd check`'s format."""
    report = CheckReport()
    loaded: list[Routes | None] = []
    for name in (old, new):
        text = ""
        try:
            text = read_routes_file(pathlib.Path(name), max_bytes).decode("utf-8")
            loaded.append(load_routes(text, name))
        except RoutesError as exc:
            report.add(name, [ConfigProblem(p.where, p.line, p.reason, column=p.column) for p in exc.problems], text)
            loaded.append(None)
        except (OSError, UnicodeDecodeError) as exc:
            report.add(name, [ConfigProblem("", None, f"cannot read the file: {exc}")], None)
            loaded.append(None)
    return loaded[0], loaded[1], report


def default_names(*routes: Routes) -> list[str]:
    """Every name the files route explicitly: rule prefixes and dentry prefixes without `*`."""
    names: dict[str, None] = {}
    for r in routes:
        prefixes = [d.prefix for d in r.text_dtab] + [rule.prefix for rule in r.rules]
        for prefix in prefixes:
            if prefix.elems and not any(isinstance(e, AnyElem) for e in prefix.elems):
                names[prefix.show()] = None
    return sorted(names)


async def diff(
    config: MeshdConfig, router_config: RouterConfig, base_dir: pathlib.Path, old: Routes, new: Routes, names: Sequence[str]
) -> list[NameDiff]:
    """Bind every name with the old and the new routes (namers started here and closed after)."""
    runtime = Runtime(base_dir=base_dir)
    namers = await start_namers(config.namers, runtime)
    router: Router | None = None
    try:
        router = Router(router_config, runtime, namers)
        out = []
        for name in names:
            before = await _outcomes(router, namers, router.own_dtab + old.dtab, name)
            after = await _outcomes(router, namers, router.own_dtab + new.dtab, name)
            out.append(NameDiff(name, before[0], after[0], before[1], after[1]))
        return out
    finally:
        if router is not None:
            router.close()
        await close_namers(namers)


async def _outcomes(router: Router, namers: dict[Path, Namer], dtab: Dtab, name: str) -> tuple[dict[str, float], str | None]:
    result = await explain(name, dtab, namers, lambda id: router.addr_of(id).get(), timeout_s=PENDING_TIMEOUT_S)
    shares: dict[str, float] = {}
    outcomes = result.get("outcomes")
    for outcome in outcomes if isinstance(outcomes, list) else []:
        assert isinstance(outcome, dict)
        where = str(outcome["client"]) if "client" in outcome else _FAILS[str(outcome["result"])]
        shares[where] = shares.get(where, 0.0) + float(outcome["probability"])
    error = result.get("error")
    if result.get("pending"):
        error = "pending: a namer did not answer within 2 s"
    return shares, str(error) if error else None


_FAILS = {"neg": "~ (no such name: 502)", "fail": "! (fails: 502)", "empty": "$ (no replicas: 502)"}


def render(router: str, diffs: Sequence[NameDiff]) -> str:
    """The text `meshd routes diff` prints."""
    lines = [f"router {router}:"]
    for d in diffs:
        if not d.changed:
            lines.append(f"  {d.path}: unchanged: {_shares(d.before, d.error_before)}")
            continue
        lines.append(f"  {d.path}: CHANGED")
        lines.append(f"    before: {_shares(d.before, d.error_before)}")
        lines.append(f"    after:  {_shares(d.after, d.error_after)}")
        for dest in sorted(set(d.before) | set(d.after)):
            b, a = d.before.get(dest, 0.0), d.after.get(dest, 0.0)
            if round(a - b, 6) != 0:
                lines.append(f"      {dest}: {b * 100:.2f}% -> {a * 100:.2f}% ({(a - b) * 100:+.2f} points)")
    changed = sum(1 for d in diffs if d.changed)
    lines.append(f"{changed} of {len(diffs)} name{'s' if len(diffs) != 1 else ''} change{'s' if changed == 1 else ''}")
    return "\n".join(lines)


def _shares(shares: dict[str, float], error: str | None) -> str:
    if error:
        return f"error: {error}"
    if not shares:
        return "nothing"
    return ", ".join(f"{p * 100:.2f}% {dest}" for dest, p in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))
