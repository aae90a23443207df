"""The operators' routing file (`routes.yaml`): dtab text plus named rules, validated.

    dtab: |
      /svc => /#/fs;
    rules:
      - name: accounts-canary
        description: 5% of accounts traffic to v2
        prefix: /svc/accounts
        dst: 0.95 * /#/fs/accounts & 0.05 * /#/fs/accounts-v2
      - name: books-canary
        prefix: /svc/books
        weights: {/#/fs/books: 90, /#/fs/books-v2: 10}

Each rule becomes one dentry `prefix => dst`; `weights` is a friendlier way to write a
union of paths: weights are relative, of any scale, and are stored as fractions of their sum
(`{a: 95, b: 5}` is `0.95*a & 0.05*b`). Rules are appended AFTER the `dtab` text's
dentries, so a rule takes precedence over the text for the paths it matches, and the text's
matching dentries remain its fallbacks (a rule whose destinations are all unknown falls
back to them). A rule with `enabled: false` is kept, shown, and not applied.

Every problem is a `RoutesError` naming the file, the YAML path and the line in the file
(`routes.yaml: rules[1].weights["/#/fs/b"] (line 12): ...`); for errors inside dtab text it
also gives the column, counted in the file, and shows the line with a caret. Line numbers
are exact for block literals (`dtab: |`), the recommended form; for other scalar styles
they point at the scalar's first line.
"""

from __future__ import annotations

import difflib
import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from routing.authz import AuthzRule, Policy, check_pattern
from routing.delegate import JsonValue
from routing.dtab import Dentry, Dtab, Prefix
from routing.nametree import Leaf, NameTree, Union, Weighted, show
from routing.parser import DtabSyntaxError, context_lines, parse_dtab, parse_path, parse_prefix, parse_tree
from routing.path import Path

_STR: Final = "tag:yaml.org,2002:str"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_TOP_KEYS: Final = ("dtab", "rules", "authorization")
_AUTHZ_KEYS: Final = ("default", "rules")
_AUTHZ_RULE_KEYS: Final = ("name", "prefix", "allow")
_RULE_KEYS: Final = ("name", "description", "prefix", "dst", "weights", "enabled")
_X = TypeVar("_X", covariant=True)

#: the default limit on a routing file's size (`routesMaxBytes`); a dtab of 1 MiB is thousands
#: of rules, and PyYAML takes about 0.3 s of CPU to parse one that size
ROUTES_MAX_BYTES: Final = 1024 * 1024

#: opens a file for reading in binary; a parameter so tests can inject failures (EMFILE)
Opener = Callable[[pathlib.Path], BinaryIO]


class _Parse(Protocol[_X]):
    def __call__(self, text: str, /) -> _X: ...


class RoutesError(ValueError):
    """A routing file that cannot be used. `where` is the YAML path, `line` (1-based) the
    line in the file, `column` the column when known."""

    def __init__(
        self, source: str, where: str, line: int, reason: str, *, column: int | None = None, context: str = ""
    ) -> None:
        self.source = source
        self.where = where
        self.line = line
        self.column = column
        self.reason = reason
        position = f"line {line}" if column is None else f"line {line}, column {column}"
        located = f"{where} ({position})" if where else f"({position})"
        self.short = f"{source}: {located}: {reason}"
        super().__init__(self.short + (f"\n{context}" if context else ""))


class RoutesTooLarge(RoutesError):
    """A routing file over the size limit; it was not read. `stamp` is (size, mtime_ns, inode),
    which tells one oversized version from the next without reading it."""

    def __init__(self, source: str, size: int, limit: int, stamp: tuple[int, int, int]) -> None:
        reason = f"the file is {size} bytes, over the limit of {limit} bytes (routesMaxBytes); it was not read"
        super().__init__(source, "", 1, reason)
        self.size = size
        self.limit = limit
        self.stamp = stamp
        self.short = f"{source}: {reason}"
        self.args = (self.short,)


def open_binary(path: pathlib.Path) -> BinaryIO:
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def read_routes_file(path: pathlib.Path, max_bytes: int, opener: Opener = open_binary) -> bytes:
    """The file's bytes, at most `max_bytes` of them: the size is checked with fstat on the open
    file before reading, and at most `max_bytes + 1` bytes are read (a file that grew in between
    is caught too). Raises RoutesTooLarge, or OSError. Pure: safe in a worker thread."""
    with opener(path) as f:
        st = os.fstat(f.fileno())
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if st.st_size > max_bytes:
            raise RoutesTooLarge(str(path), st.st_size, max_bytes, stamp)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RoutesTooLarge(str(path), len(data), max_bytes, (len(data), st.st_mtime_ns, st.st_ino))
    return data


def load_routes_file(path: pathlib.Path, max_bytes: int = ROUTES_MAX_BYTES) -> Routes:
    """Read (within the size limit), decode and validate a routing file. Raises RoutesError or OSError."""
    data = read_routes_file(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoutesError(str(path), "", 1, f"not UTF-8 text: {exc}") from None
    return load_routes(text, str(path))


@dataclass(frozen=True, slots=True)
class Rule:
    """One named rule of a routing file, and the dentry it stands for."""

    name: str
    prefix: Prefix
    dst: NameTree[Path]
    description: str = ""
    enabled: bool = True
    line: int = 0

    @property
    def dentry(self) -> Dentry:
        return Dentry(self.prefix, self.dst)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "name": self.name,
            "description": self.description,
            "prefix": self.prefix.show(),
            "dst": show(self.dst),
            "enabled": self.enabled,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class Routes:
    """A validated routing file. `dtab` is what routing uses: the `dtab` text's dentries,
    then the enabled rules' dentries, in file order. `text_dtab` is the text's part alone."""

    dtab: Dtab
    rules: tuple[Rule, ...]
    text_dtab: Dtab
    source: str = ""
    #: the file's `authorization` section (routing/authz.py), None when it has none
    authorization: Policy | None = None

    def to_json(self) -> dict[str, JsonValue]:
        dentries: list[JsonValue] = [{"dentry": d.show(), "from": "dtab"} for d in self.text_dtab.dentries]
        dentries.extend(
            {"dentry": r.dentry.show(), "from": f"rule {r.name}"} for r in self.rules if r.enabled
        )
        return {
            "source": self.source,
            "dtab": self.dtab.show(),
            "dentries": dentries,
            "rules": [r.to_json() for r in self.rules],
        }


def load_routes(text: str, source: str) -> Routes:
    """Validate routing-file text; `source` names the file in error messages."""
    return _Loader(text, source).load()


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def load(self) -> Routes:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            column = mark.column + 1 if mark is not None else None
            reason = f"not valid YAML: {exc.problem or exc.context}"
            raise self.error("", line, reason, column=column, show_context=column is not None) from None
        except yaml.YAMLError as exc:
            raise RoutesError(self.source, "", 1, f"not valid YAML: {exc}") from None
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            return Routes(Dtab(), (), Dtab(), self.source)
        if not isinstance(root, MappingNode):
            raise self.error(
                "", _line(root), "the routing file must be a mapping with the keys dtab and rules"
            )
        fields = self.mapping(root, "", _TOP_KEYS)
        text_dtab = Dtab()
        if "dtab" in fields:
            text_dtab = self.dtab(fields["dtab"][1])
        rules: tuple[Rule, ...] = ()
        if "rules" in fields:
            rules = self.rules(fields["rules"][1])
        applied = tuple(r.dentry for r in rules if r.enabled)
        policy = self.authorization(fields["authorization"][1]) if "authorization" in fields else None
        return Routes(text_dtab + Dtab(applied), rules, text_dtab, self.source, policy)

    def authorization(self, node: Node) -> Policy:
        """The `authorization` section (docs/tls.md): `default` and `rules` of name, prefix, allow."""
        if not isinstance(node, MappingNode):
            raise self.error("authorization", _line(node), "must be a mapping with the keys default and rules")
        fields = self.mapping(node, "authorization", _AUTHZ_KEYS)
        default_allow = False
        if "default" in fields:
            value_node = fields["default"][1]
            value = self.string(value_node, "authorization.default")
            if value not in ("allow", "deny"):
                raise self.error("authorization.default", _line(value_node), f"must be allow or deny, got {value!r}")
            default_allow = value == "allow"
        rules: list[AuthzRule] = []
        if "rules" in fields:
            rules_node = fields["rules"][1]
            if not isinstance(rules_node, SequenceNode):
                raise self.error("authorization.rules", _line(rules_node), "must be a list of rules")
            seen: dict[str, int] = {}
            for i, item in enumerate(rules_node.value):
                where = f"authorization.rules[{i}]"
                if not isinstance(item, MappingNode):
                    raise self.error(where, _line(item), "a rule must be a mapping with name, prefix and allow")
                rule_fields = self.mapping(item, where, _AUTHZ_RULE_KEYS)
                for required in _AUTHZ_RULE_KEYS:
                    if required not in rule_fields:
                        raise self.error(where, _line(item), f"a rule needs {required!r}")
                name_node = rule_fields["name"][1]
                name = self.string(name_node, f"{where}.name").strip()
                if not name:
                    raise self.error(f"{where}.name", _line(name_node), "must not be empty")
                if name in seen:
                    raise self.error(f"{where}.name", _line(name_node), f"rule name {name!r} is already used on line {seen[name]}")
                seen[name] = _line(name_node)
                prefix = self.parsed(rule_fields["prefix"][1], f"{where}.prefix", parse_prefix)
                allow_node = rule_fields["allow"][1]
                if not isinstance(allow_node, SequenceNode):
                    raise self.error(f"{where}.allow", _line(allow_node), "must be a list of identities")
                allow: list[str] = []
                for j, pattern_node in enumerate(allow_node.value):
                    pattern = self.string(pattern_node, f"{where}.allow[{j}]")
                    try:
                        check_pattern(pattern)
                    except ValueError as exc:
                        raise self.error(f"{where}.allow[{j}]", _line(pattern_node), str(exc)) from None
                    allow.append(pattern)
                rules.append(AuthzRule(name, prefix, tuple(allow), _line(name_node)))
        return Policy(tuple(rules), default_allow, self.source)

    # -- sections ------------------------------------------------------------------------

    def dtab(self, node: Node) -> Dtab:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return Dtab()
        text = self.string(node, "dtab")
        try:
            return parse_dtab(text)
        except DtabSyntaxError as exc:
            raise self.text_error("dtab", node, exc) from None

    def rules(self, node: Node) -> tuple[Rule, ...]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return ()
        if not isinstance(node, SequenceNode):
            raise self.error("rules", _line(node), "must be a list of rules")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(node.value):
            where = f"rules[{i}]"
            rule = self.rule(item, where)
            if rule.name in seen:
                raise self.error(
                    f"{where}.name",
                    rule.line,
                    f"rule name {rule.name!r} is already used on line {seen[rule.name]}",
                )
            seen[rule.name] = rule.line
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: Node, where: str) -> Rule:
        if not isinstance(node, MappingNode):
            raise self.error(
                where, _line(node), "a rule must be a mapping with name, prefix and dst or weights"
            )
        fields = self.mapping(node, where, _RULE_KEYS)
        for required in ("name", "prefix"):
            if required not in fields:
                raise self.error(where, _line(node), f"a rule needs {required!r}")
        if ("dst" in fields) == ("weights" in fields):
            raise self.error(where, _line(node), "a rule needs exactly one of 'dst' and 'weights'")

        name_node = fields["name"][1]
        name = self.string(name_node, f"{where}.name").strip()
        if not name:
            raise self.error(f"{where}.name", _line(name_node), "must not be empty")
        description = ""
        if "description" in fields:
            description = self.string(fields["description"][1], f"{where}.description")
        enabled = True
        if "enabled" in fields:
            enabled = self.boolean(fields["enabled"][1], f"{where}.enabled")

        prefix_node = fields["prefix"][1]
        prefix = self.parsed(prefix_node, f"{where}.prefix", parse_prefix)
        dst: NameTree[Path]
        if "dst" in fields:
            dst = self.parsed(fields["dst"][1], f"{where}.dst", parse_tree)
        else:
            dst = self.weights(fields["weights"][1], f"{where}.weights")
        return Rule(name, prefix, dst, description, enabled, _line(name_node))

    def weights(self, node: Node, where: str) -> NameTree[Path]:
        if not isinstance(node, MappingNode) or not node.value:
            raise self.error(where, _line(node), "must be a mapping from destination path to weight")
        branches: list[Weighted[Path]] = []
        for key_node, value_node in node.value:
            key_text = self.string(key_node, where)
            at = f"{where}[{key_text!r}]"
            path = self.parsed(key_node, at, parse_path)
            weight = self.number(value_node, at)
            branches.append(Weighted(weight, Leaf(path)))
        paths = [b.tree for b in branches]
        for i, p in enumerate(paths):
            if p in paths[:i]:
                raise self.error(where, _line(node.value[i][0]), f"destination {show(p)} is listed twice")
        if len(branches) == 1:
            return branches[0].tree
        total = sum(b.weight for b in branches)
        if total > 0:  # shown as fractions (0.95*/a & 0.05*/b); only the proportions matter
            branches = [Weighted(b.weight / total, b.tree) for b in branches]
        return Union(tuple(branches))

    # -- scalars and mappings --------------------------------------------------------------

    def mapping(
        self, node: MappingNode, where: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Node, Node]]:
        fields: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, where or "(top level)")
            at = f"{where}.{key}" if where else key
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
                raise self.error(at, _line(key_node), f"unknown key {key!r}{suggestion}")
            if key in fields:
                raise self.error(
                    at, _line(key_node), f"{key!r} is given twice (first on line {_line(fields[key][0])})"
                )
            fields[key] = (key_node, value_node)
        return fields

    def string(self, node: Node, where: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            raise self.error(where, _line(node), f"must be text, got {_describe(node)}")
        return str(node.value)

    def boolean(self, node: Node, where: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            raise self.error(where, _line(node), f"must be true or false, got {_describe(node)}")
        return bool(yaml.constructor.SafeConstructor().construct_object(node))

    def number(self, node: Node, where: str) -> float:
        if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
            raise self.error(where, _line(node), f"weight must be a number, got {_describe(node)}")
        value = float(yaml.constructor.SafeConstructor().construct_object(node))
        if not (value >= 0 and math.isfinite(value)):
            raise self.error(where, _line(node), f"weight must be a finite number >= 0, got {node.value}")
        return value

    def parsed(self, node: Node, where: str, parse: _Parse[_X]) -> _X:
        """A scalar parsed with dtab syntax; syntax errors point into the file."""
        text = self.string(node, where)
        try:
            return parse(text)
        except DtabSyntaxError as exc:
            raise self.text_error(where, node, exc) from None

    # -- errors ------------------------------------------------------------------------------

    def error(
        self, where: str, line: int, reason: str, *, column: int | None = None, show_context: bool = False
    ) -> RoutesError:
        context = ""
        if show_context and column is not None:
            context = context_lines(self.text, line, column)
        return RoutesError(self.source, where, line, reason, column=column, context=context)

    def text_error(self, where: str, node: Node, exc: DtabSyntaxError) -> RoutesError:
        """Map a syntax error inside a scalar's text to a line and column of the file."""
        line, column = _file_position(self.text, node, exc.line, exc.column)
        return self.error(where, line, exc.reason, column=column, show_context=True)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode) and node.tag == _NULL:
        return "nothing"
    if isinstance(node, ScalarNode):
        kind = {_INT: "a number", _FLOAT: "a number", _BOOL: "true/false", _STR: "text"}.get(
            node.tag, "a value"
        )
        return f"{kind} ({node.value})"
    return "a value"


def _file_position(text: str, node: Node, line: int, column: int) -> tuple[int, int]:
    """Where (line, column) of a scalar's value sits in the file (1-based).

    Exact for literal blocks (`|`): the value's line k is the k-th line after the indicator,
    indented by the block's indentation. For a scalar on one line, exact on its first line
    (quotes counted). Otherwise the scalar's first line.
    """
    start = node.start_mark
    style = getattr(node, "style", None)
    if style == "|":
        lines = text.split("\n")
        first = start.line + 1  # 0-based index of the block's first content line
        indent = 0
        for body in lines[first : node.end_mark.line + 1]:
            if body.strip():
                indent = len(body) - len(body.lstrip(" "))
                break
        return first + line, indent + column
    if line == 1 and start.line == node.end_mark.line:
        quote = 1 if style in ('"', "'") else 0
        return start.line + 1, start.column + quote + column
    return start.line + line, column
