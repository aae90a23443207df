"""Checks `meshd check` runs on a config that loaded: destinations that can never bind.

A weighted branch whose name nobody knows gets 0% of the traffic without any error: binding
drops a `~` branch from a union (docs/routing.md, E7), which is what makes a canary safe to
roll back, and also what makes a misspelled canary (`/#/fs/acounts-v2`) silent. So `meshd
check` binds every weighted branch, and every rule's destination, through the router's
effective dtab with *static* namers, and warns about each one that comes out `~`:

* a namer path (`/#/<prefix>/...`) with no namer configured for its prefix is `~`;
* the fs namer knows its files: when its `rootDir` exists where `meshd check` runs, a name
  with no file is `~` (with a suggestion among the files);
* every other namer (k8s, dns) is assumed to know every name: `meshd check` never talks to
  the Kubernetes API or to DNS, so it cannot tell, and it does not guess.

Only destinations are checked, not every dentry: a dentry such as `/svc => /#/fs` rewrites a
prefix and means nothing without the rest of the name.

The warnings are `ConfigProblem`s with `severity="warning"`, located at the file's own line
and column of the destination's text (inside `dtab: |` blocks too).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshd.config.errors import ConfigError, ConfigProblem
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig, RouterConfig
from meshd.discovery.fs import FsNamerConfig
from routing.delegate import DelegationError, bind
from routing.dtab import Dentry, Dtab, Prefix
from routing.namer import BoundName
from routing.nametree import NEG, Alt, Leaf, NameTree, Neg, Union, Weighted, leaves, show
from routing.parser import DtabSyntaxError, parse_dtab
from routing.path import Path
from routing.rules import ROUTES_MAX_BYTES, Routes, RoutesError, load_routes, read_routes_file
from routing.suggest import did_you_mean

#: the name a destination is bound under, alone: no real dtab uses it
_PROBE = Path.read("/meshd.check.destination")


@dataclass(frozen=True, slots=True)
class _StaticNamer:
    """A namer that answers from what is known without any I/O: `names` (None: every name)."""

    prefix: Path
    names: frozenset[str] | None
    where: str

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        if not path:  # the rest of the name comes with the request (`/svc => /#/fs`)
            return Leaf(BoundName(self.prefix, path))
        if self.names is not None and path[0] not in self.names:
            return NEG
        return Leaf(BoundName(self.prefix.concat(Path((path[0],))), path.drop(1)))

    def why(self, path: Path) -> str:
        name = path[0] if path else ""
        reason = f'the {self.prefix.show()} namer has no file "{name}" in {self.where}'
        return reason + did_you_mean(name, sorted(self.names or ()))


@dataclass(frozen=True, slots=True)
class _Site:
    """One destination to check: where it is written, and the tree to bind."""

    where: str
    node: Node | None  # the YAML scalar holding its text (None: not known)
    tree: NameTree[Path]
    kind: str  # "branch" (of a union), "rule" (a rule's whole destination) or "mirror" (a mirror's dst)


def static_namers(config: MeshdConfig, base_dir: pathlib.Path) -> dict[Path, _StaticNamer]:
    """The config's namers as `meshd check` sees them: fs namers list their files, others know all."""
    namers: dict[Path, _StaticNamer] = {}
    for namer_config in config.namers:
        prefix = Path.read(namer_config.prefix)
        names: frozenset[str] | None = None
        where = ""
        if isinstance(namer_config, FsNamerConfig):
            root = pathlib.Path(namer_config.root_dir)
            root = root if root.is_absolute() else base_dir / root
            where = namer_config.root_dir
            names = _files_in(root)
        namers[prefix] = _StaticNamer(prefix, names, where)
    return namers


def _files_in(root: pathlib.Path) -> frozenset[str] | None:
    """The service names the fs namer would find in `root` now, or None if it cannot be read."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    return frozenset(e.name for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=True))


def unbindable(
    config: MeshdConfig,
    config_text: str,
    base_dir: pathlib.Path,
    router_index: int,
    routes: Routes | None = None,
    routes_text: str = "",
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """Warnings for router `router_index`: (those about meshd.yaml, those about its routing file)."""
    router = config.routers[router_index]
    namers = static_namers(config, base_dir)
    dtab = _parse(router.dtab) + (routes.dtab if routes is not None else Dtab())
    config_sites = list(_config_sites(router, router_index, config_text))
    routes_sites = list(_routes_sites(routes, routes_text)) if routes is not None else []
    return (
        [p for s in config_sites if (p := _check(s, dtab, namers, config_text)) is not None],
        [p for s in routes_sites if (p := _check(s, dtab, namers, routes_text)) is not None],
    )


def _parse(text: str) -> Dtab:
    try:
        return parse_dtab(text)
    except DtabSyntaxError:
        return Dtab()


def _check(site: _Site, dtab: Dtab, namers: dict[Path, _StaticNamer], text: str) -> ConfigProblem | None:
    probe = dtab + Dtab((Dentry(Prefix.of_path(_PROBE), site.tree),))
    try:
        binding = bind(probe, _PROBE, namers, trace=False)
    except DelegationError as exc:
        return _problem(site, text, f"{show(site.tree)} cannot be bound: {exc}")
    if not isinstance(binding.tree, Neg) or binding.pending:
        return None
    if any(_extended_by(dentry.prefix, path) for path in leaves(site.tree) for dentry in dtab):
        return None  # a longer dentry may match once the request adds the rest of the name
    reason = _why(site.tree, namers)
    if site.kind == "branch":
        consequence = "this weighted branch gets 0% of the traffic"
    elif site.kind == "mirror":
        consequence = "every copy fails (counted as error); the requests themselves are not affected"
    else:
        consequence = "the rule never applies: its names fall back to the earlier dentries"
    return _problem(site, text, f"{show(site.tree)} can never bind with the namers configured ({reason}); {consequence}")


def _extended_by(prefix: Prefix, path: Path) -> bool:
    """Whether `prefix` is longer than `path` and matches it as far as it goes."""
    return len(prefix) > len(path) and Prefix(prefix.elems[: len(path)]).matches(path)


def _why(tree: NameTree[Path], namers: dict[Path, _StaticNamer]) -> str:
    reasons: list[str] = []
    for path in leaves(tree):
        if len(path) >= 1 and path[0] == "#":
            served = [n for p, n in namers.items() if path.starts_with(p)]
            if not served:
                known = sorted(p.show() for p in namers)
                head = Path(tuple(path)[:2]).show()
                shown = ", ".join(known) or "none"
                reasons.append(f"no namer serves {head} (namers: {shown}){did_you_mean(head, known)}")
                continue
            namer = max(served, key=lambda n: len(n.prefix))
            rest = path.drop(len(namer.prefix))
            if isinstance(namer.lookup(rest), Neg):
                reasons.append(namer.why(rest))
                continue
        reasons.append(f"no dentry and no namer serves {path.show()}")
    return "; ".join(dict.fromkeys(reasons)) or "every branch is ~"


def _problem(site: _Site, text: str, message: str) -> ConfigProblem:
    line, column = _locate(site, text)
    return ConfigProblem(site.where, line, message, column=column, severity="warning")


def _locate(site: _Site, text: str) -> tuple[int | None, int | None]:
    """The line and column of the destination's first path in the file (or the scalar's line)."""
    node = site.node
    if node is None:
        return None, None
    start, end = node.start_mark.index, node.end_mark.index
    found = -1
    for path in leaves(site.tree):
        found = text.find(path.show(), start, max(end, start + 1))
        if found >= 0:
            break
    if found < 0:
        return node.start_mark.line + 1, None
    line = text.count("\n", 0, found) + 1
    column = found - (text.rfind("\n", 0, found) + 1) + 1
    return line, column


# --- where the destinations are -----------------------------------------------------------


def _config_sites(router: RouterConfig, index: int, text: str) -> Iterator[_Site]:
    node = _at(_compose(text), ("routers", index, "dtab"))
    yield from _dtab_sites(_parse(router.dtab), f"routers[{index}].dtab", node)


def _routes_sites(routes: Routes, text: str) -> Iterator[_Site]:
    root = _compose(text)
    yield from _dtab_sites(routes.text_dtab, "dtab", _at(root, ("dtab",)))
    for i, rule in enumerate(routes.rules):
        if rule.enabled and rule.mirror is not None:  # a mirror rule's copies go to mirror.dst
            yield _Site(f"rules[{i}].mirror.dst", _at(root, ("rules", i, "mirror", "dst")), Leaf(rule.mirror.dst), "mirror")
            continue
        if not rule.enabled or rule.fault is not None:  # a fault rule has no destination
            continue
        weights = _at(root, ("rules", i, "weights"))
        if isinstance(weights, MappingNode) and isinstance(rule.dst, Union):
            for key_node, _value in weights.value:
                key = str(key_node.value)
                branch = _branch_for(rule.dst.branches, key)
                if branch is not None and branch.weight > 0:  # a 0-weight branch gets nothing on purpose
                    where = f"rules[{i}].weights[{json.dumps(key, ensure_ascii=False)}]"
                    yield _Site(where, key_node, branch.tree, "branch")
            continue
        where = f"rules[{i}].{'weights' if weights is not None else 'dst'}"
        node = weights if weights is not None else _at(root, ("rules", i, "dst"))
        if isinstance(rule.dst, Union):
            yield from _union_sites(rule.dst, where, node)
        else:
            yield _Site(where, node, rule.dst, "rule")
            yield from _nested_union_sites(rule.dst, where, node)


def _branch_for(branches: Sequence[Weighted[Path]], key: str) -> Weighted[Path] | None:
    try:
        wanted = Path.read(key)
    except ValueError:
        return None
    for branch in branches:
        if isinstance(branch.tree, Leaf) and branch.tree.value == wanted:
            return branch
    return None


def _dtab_sites(dtab: Dtab, where: str, node: Node | None) -> Iterator[_Site]:
    for dentry in dtab:
        yield from _nested_union_sites(dentry.dst, where, node)


def _nested_union_sites(tree: NameTree[Path], where: str, node: Node | None) -> Iterator[_Site]:
    if isinstance(tree, Union):
        yield from _union_sites(tree, where, node)
    elif isinstance(tree, Alt):
        for sub in tree.trees:
            yield from _nested_union_sites(sub, where, node)


def _union_sites(tree: Union[Path], where: str, node: Node | None) -> Iterator[_Site]:
    for branch in tree.branches:
        if branch.weight > 0:  # a 0-weight branch gets nothing on purpose
            yield _Site(where, node, branch.tree, "branch")
        yield from _nested_union_sites(branch.tree, where, node)


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _at(node: Node | None, steps: tuple[str | int, ...]) -> Node | None:
    """The node at a YAML path of mapping keys and list indices, or None."""
    for step in steps:
        if isinstance(step, int) and isinstance(node, SequenceNode) and step < len(node.value):
            node = node.value[step]
        elif isinstance(step, str) and isinstance(node, MappingNode):
            node = next(
                (v for k, v in node.value if isinstance(k, ScalarNode) and k.value == step), None
            )
        else:
            return None
    return node


# --- `meshd check` ------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What `meshd check` found: one block of text per file with problems, and the counts."""

    blocks: list[str] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0
    #: the files checked, in order, as named on the command line or in the config
    checked: list[str] = field(default_factory=list)
    #: things not checked, and how to check them
    notes: list[str] = field(default_factory=list)

    def add(self, source: str, problems: Sequence[ConfigProblem], text: str | None) -> None:
        unique = sorted(dict.fromkeys(problems), key=lambda p: (p.line is None, p.line or 0, p.column or 0))
        if not unique:
            return
        self.blocks.append(ConfigError(unique, source=source, text=text).format())
        self.warnings += sum(1 for p in unique if p.severity == "warning")
        self.errors += sum(1 for p in unique if p.severity != "warning")


@dataclass
class _RoutesFile:
    source: str
    path: pathlib.Path
    max_bytes: int
    routers: list[int] = field(default_factory=list)
    routes: Routes | None = None
    text: str = ""
    problems: list[ConfigProblem] = field(default_factory=list)


def run_check(config_path: str | None, routes_paths: Sequence[str] = (), *, router: str | None = None) -> CheckReport:
    """Check a meshd.yaml, the routing files its routers name, and `routes_paths` (see `meshd check`)."""
    report = CheckReport()
    config: MeshdConfig | None = None
    config_text = ""
    config_problems: list[ConfigProblem] = []
    base_dir = pathlib.Path.cwd()
    if config_path is not None:
        report.checked.append(config_path)
        base_dir = pathlib.Path(config_path).resolve().parent
        try:
            config_text = pathlib.Path(config_path).read_text(encoding="utf-8")
            config = load_config(config_text, MeshdConfig, source=config_path)
        except (OSError, UnicodeDecodeError) as exc:
            config_problems.append(ConfigProblem("", None, f"cannot read the file: {exc}"))
        except ConfigError as exc:
            config_problems.extend(exc.problems)
    files: dict[pathlib.Path, _RoutesFile] = {}
    if config is not None and config_path is not None:
        shown_dir = pathlib.Path(config_path).parent
        for i, router_config in enumerate(config.routers):
            if router_config.routes:
                written = pathlib.Path(router_config.routes)
                path = written if written.is_absolute() else base_dir / written
                shown = str(written if written.is_absolute() else shown_dir / written)
                entry = files.setdefault(path, _RoutesFile(shown, path, router_config.routes_max_bytes))
                entry.routers.append(i)
    if config is not None:
        for i, router_config in enumerate(config.routers):
            cm = router_config.routes_config_map
            if cm is not None:
                report.notes.append(
                    f"routers[{i}].routesConfigMap: the routing file is the {cm.describe()}; meshd check does not "
                    "read the Kubernetes API: check that text with `meshd check -c <config> --routes <file>`"
                )
    chosen = 0
    if config is not None and router is not None:
        labels = [r.label for r in config.routers]
        if router not in labels:
            config_problems.append(ConfigProblem("", None, f"--router {router}: no such router (routers: {', '.join(labels)})"))
        else:
            chosen = labels.index(router)
    for given in routes_paths:
        path = pathlib.Path(given).resolve()
        entry = files.setdefault(path, _RoutesFile(given, path, ROUTES_MAX_BYTES))
        if config is not None and chosen not in entry.routers:
            entry.routers.append(chosen)
    for entry in files.values():
        report.checked.append(entry.source)
        _load_routes(entry)
    if config is not None:
        for i in range(len(config.routers)):
            own: list[_RoutesFile | None] = [f for f in files.values() if i in f.routers] or [None]
            for routes_file in own:
                if routes_file is not None and routes_file.routes is None:
                    continue  # its errors are reported; binding its rules would guess
                routes = routes_file.routes if routes_file is not None else None
                text = routes_file.text if routes_file is not None else ""
                in_config, in_routes = unbindable(config, config_text, base_dir, i, routes, text)
                config_problems.extend(in_config)
                if routes_file is not None:
                    routes_file.problems.extend(in_routes)
    if config_path is not None:
        report.add(config_path, config_problems, config_text or None)
    for entry in files.values():
        report.add(entry.source, entry.problems, entry.text or None)
    return report


def _load_routes(entry: _RoutesFile) -> None:
    try:
        data = read_routes_file(entry.path, entry.max_bytes)
        entry.text = data.decode("utf-8")
        entry.routes = load_routes(entry.text, entry.source)
    except RoutesError as exc:
        entry.problems.extend(ConfigProblem(p.where, p.line, p.reason, column=p.column) for p in exc.problems)
    except (OSError, UnicodeDecodeError) as exc:
        entry.problems.append(ConfigProblem("", None, f"cannot read the file: {exc}"))
