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

A file that cannot be used raises one `RoutesError` listing every problem found, each with
the YAML path and the line in the file, in the format of meshd's config errors
(`routes.yaml: rules[1].weights["/#/fs/b"]: line 12: ...`); for errors inside dtab text it
also gives the column, counted in the file, and shows the line with a caret. Line numbers
are exact for block literals (`dtab: |`), the recommended form, and for one-line scalars;
for other multi-line scalar styles they point at the scalar's first line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from routing.authz import AuthzRule, Policy, check_pattern
from routing.delegate import JsonValue
from routing.dtab import Dentry, Dtab, Prefix
from routing.match import Fault, HeaderMatch, Match, MatchRule, Mirror
from routing.nametree import NEG, Leaf, NameTree, Union, Weighted, show
from routing.parser import DtabSyntaxError, context_lines, parse_dtab, parse_path, parse_prefix, parse_tree
from routing.path import Path
from routing.regex import RegexError
from routing.suggest import closest, did_you_mean

_STR: Final = "tag:yaml.org,2002:str"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_TOP_KEYS: Final = ("dtab", "rules", "authorization")
_AUTHZ_KEYS: Final = ("default", "rules")
_AUTHZ_RULE_KEYS: Final = ("name", "prefix", "allow")
_RULE_KEYS: Final = ("name", "description", "prefix", "match", "dst", "weights", "fault", "mirror", "enabled")
_FAULT_KEYS: Final = ("share", "abort", "delayMs")
_MIRROR_KEYS: Final = ("dst", "share", "maxInFlight", "maxBodyBytes", "timeoutMs")
_MATCH_KEYS: Final = ("headers", "method", "pathPrefix")
_HEADER_MATCH_KEYS: Final = ("exact", "prefix", "regex")
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_X = TypeVar("_X", covariant=True)

#: the default limit on a routing file's size (`routesMaxBytes`); a dtab of 1 MiB is thousands
#: of rules, and PyYAML takes about 0.3 s of CPU to parse one that size
ROUTES_MAX_BYTES: Final = 1024 * 1024

#: opens a file for reading in binary; a parameter so tests can inject failures (EMFILE)
Opener = Callable[[pathlib.Path], BinaryIO]


class _Parse(Protocol[_X]):
    def __call__(self, text: str, /) -> _X: ...


@dataclass(frozen=True, slots=True)
class RoutesProblem:
    """One thing wrong with a routing file: the YAML path (`rules[0].dst`, "" for the file
    itself), the 1-based line in the file, the column when known, and the reason.

    `str()` is written exactly as meshd's config problems are: `rules[0].dst: line 4, column
    12: reason`, so `meshd check` reports both kinds of file in one format.
    """

    where: str
    line: int
    reason: str
    column: int | None = None

    def __str__(self) -> str:
        position = f"line {self.line}" if self.column is None else f"line {self.line}, column {self.column}"
        return f"{self.where}: {position}: {self.reason}" if self.where else f"{position}: {self.reason}"


class RoutesError(ValueError):
    """A routing file that cannot be used, with every problem found in it (`problems`, in file
    order). `where`, `line`, `column` and `reason` are the first problem's.

    `short` is one line per problem, each `<source>: <problem>`; `str()` adds, under each
    problem that has a column, the lines of the file around it with a caret.
    """

    def __init__(
        self,
        source: str,
        where: str = "",
        line: int = 1,
        reason: str = "",
        *,
        column: int | None = None,
        context: str = "",
        problems: Sequence[RoutesProblem] = (),
        text: str = "",
    ) -> None:
        self.source = source
        self.problems: tuple[RoutesProblem, ...] = tuple(problems) or (RoutesProblem(where, line, reason, column),)
        self.text = text
        first = self.problems[0]
        self.where, self.line, self.column, self.reason = first.where, first.line, first.column, first.reason
        self.short = "\n".join(f"{source}: {p}" for p in self.problems)
        blocks: list[str] = []
        for problem in self.problems:
            blocks.append(f"{source}: {problem}")
            if problems and text and problem.column is not None:
                blocks.append(context_lines(text, problem.line, problem.column))
            elif not problems and context:
                blocks.append(context)
        super().__init__("\n".join(blocks))


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
    #: conditions on the request; a rule with a match applies per request, not in the dtab
    match: Match | None = None
    #: fault injection; a fault rule has no destination (its `dst` is `~`) and is not in the dtab
    fault: Fault | None = None
    #: request mirroring; a mirror rule has no destination of its own either (`dst` is `~`)
    mirror: Mirror | None = None

    @property
    def dentry(self) -> Dentry:
        return Dentry(self.prefix, self.dst)

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "name": self.name,
            "description": self.description,
            "prefix": self.prefix.show(),
            "dst": show(self.dst),
            "enabled": self.enabled,
            "line": self.line,
        }
        if self.match is not None:
            out["match"] = self.match.to_json()  # type: ignore[assignment]
        if self.fault is not None:
            del out["dst"]
            out["fault"] = self.fault.to_json()  # type: ignore[assignment]
        if self.mirror is not None:
            del out["dst"]
            out["mirror"] = self.mirror.to_json()  # type: ignore[assignment]
        return out


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

    @property
    def dtab_rules(self) -> tuple[Rule, ...]:
        """The enabled rules whose dentries are in `dtab` (no `match`, `fault` or `mirror`), in order."""
        return tuple(r for r in self.rules if r.enabled and r.match is None and r.fault is None and r.mirror is None)

    @property
    def match_rules(self) -> tuple[MatchRule, ...]:
        """The enabled rules with `match` (and a destination), as the request path applies them."""
        return tuple(
            MatchRule(r.prefix, r.match, r.dentry.show(), r.name)
            for r in self.rules
            if r.enabled and r.match is not None and r.fault is None and r.mirror is None
        )

    @property
    def mirror_rules(self) -> tuple[MatchRule, ...]:
        """The enabled mirror rules, as the request path applies them (no `match`: every request)."""
        return tuple(
            MatchRule(r.prefix, r.match or Match(), "", r.name, None, r.mirror) for r in self.rules if r.enabled and r.mirror
        )

    @property
    def fault_rules(self) -> tuple[MatchRule, ...]:
        """The enabled fault rules, as the request path applies them (no `match`: every request)."""
        return tuple(
            MatchRule(r.prefix, r.match or Match(), "", r.name, r.fault) for r in self.rules if r.enabled and r.fault
        )

    def to_json(self) -> dict[str, JsonValue]:
        dentries: list[JsonValue] = [{"dentry": d.show(), "from": "dtab"} for d in self.text_dtab.dentries]
        dentries.extend({"dentry": r.dentry.show(), "from": f"rule {r.name}"} for r in self.dtab_rules)
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
    """One load of a routing file: every problem is collected, none stops the others from
    being found; `load()` raises one RoutesError listing them all, in file order."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.problems: list[RoutesProblem] = []
        #: the keys that the unknown keys of the last mapping were taken to mean
        self.meant: set[str] = set()

    def load(self) -> Routes:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            column = mark.column + 1 if mark is not None else None
            self.report("", line, f"not valid YAML: {exc.problem or exc.context}", column=column)
            raise self.failure() from None
        except yaml.YAMLError as exc:
            raise RoutesError(self.source, "", 1, f"not valid YAML: {exc}") from None
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            return Routes(Dtab(), (), Dtab(), self.source)
        if not isinstance(root, MappingNode):
            self.report("", _line(root), "the routing file must be a mapping with the keys dtab and rules")
            raise self.failure()
        fields = self.mapping(root, "", _TOP_KEYS)
        text_dtab = Dtab()
        if "dtab" in fields:
            text_dtab = self.dtab(fields["dtab"][1]) or Dtab()
        rules: tuple[Rule, ...] = ()
        if "rules" in fields:
            rules = self.rules(fields["rules"][1])
        policy = self.authorization(fields["authorization"][1]) if "authorization" in fields else None
        if self.problems:
            raise self.failure()
        applied = tuple(r.dentry for r in rules if r.enabled and r.match is None and r.fault is None and r.mirror is None)
        return Routes(text_dtab + Dtab(applied), rules, text_dtab, self.source, policy)

    def authorization(self, node: Node) -> Policy | None:
        """The `authorization` section (docs/tls.md): `default` and `rules` of name, prefix, allow.
        Every problem is reported; None when there was one."""
        if not isinstance(node, MappingNode):
            self.report("authorization", _line(node), "must be a mapping with the keys default and rules")
            return None
        fields = self.mapping(node, "authorization", _AUTHZ_KEYS)
        ok = True
        default_allow = False
        if "default" in fields:
            value_node = fields["default"][1]
            value = self.string(value_node, "authorization.default")
            if value is None:
                ok = False
            elif value not in ("allow", "deny"):
                self.report("authorization.default", _line(value_node), f"must be allow or deny, got {value!r}")
                ok = False
            else:
                default_allow = value == "allow"
        rules: list[AuthzRule] = []
        if "rules" in fields:
            rules_node = fields["rules"][1]
            if not isinstance(rules_node, SequenceNode):
                self.report("authorization.rules", _line(rules_node), "must be a list of rules")
                ok = False
            else:
                seen: dict[str, int] = {}
                for i, item in enumerate(rules_node.value):
                    rule = self.authz_rule(item, f"authorization.rules[{i}]", seen)
                    if rule is None:
                        ok = False
                    else:
                        rules.append(rule)
        return Policy(tuple(rules), default_allow, self.source) if ok else None

    def authz_rule(self, item: Node, where: str, seen: dict[str, int]) -> AuthzRule | None:
        """One rule of `authorization.rules`: name (unique), prefix, allow (identities)."""
        if not isinstance(item, MappingNode):
            self.report(where, _line(item), "a rule must be a mapping with name, prefix and allow")
            return None
        fields = self.mapping(item, where, _AUTHZ_RULE_KEYS)
        missing = [key for key in _AUTHZ_RULE_KEYS if key not in fields]
        for key in missing:
            self.report(where, _line(item), f"a rule needs {key!r}")
        if missing:
            return None
        name_node = fields["name"][1]
        name = self.string(name_node, f"{where}.name")
        ok = name is not None
        if name is not None:
            name = name.strip()
            if not name:
                self.report(f"{where}.name", _line(name_node), "must not be empty")
                ok = False
            elif name in seen:
                self.report(f"{where}.name", _line(name_node), f"rule name {name!r} is already used on line {seen[name]}")
                ok = False
            else:
                seen[name] = _line(name_node)
        prefix = self.parsed(fields["prefix"][1], f"{where}.prefix", parse_prefix)
        ok = ok and prefix is not None
        allow_node = fields["allow"][1]
        allow: list[str] = []
        if not isinstance(allow_node, SequenceNode):
            self.report(f"{where}.allow", _line(allow_node), "must be a list of identities")
            ok = False
        else:
            for j, pattern_node in enumerate(allow_node.value):
                pattern = self.string(pattern_node, f"{where}.allow[{j}]")
                if pattern is None:
                    ok = False
                    continue
                try:
                    check_pattern(pattern)
                except ValueError as exc:
                    self.report(f"{where}.allow[{j}]", _line(pattern_node), str(exc))
                    ok = False
                    continue
                allow.append(pattern)
        if not ok or name is None or prefix is None:
            return None
        return AuthzRule(name, prefix, tuple(allow), _line(name_node))

    # -- sections ------------------------------------------------------------------------

    def dtab(self, node: Node) -> Dtab | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return Dtab()
        return self.parsed(node, "dtab", parse_dtab)

    def rules(self, node: Node) -> tuple[Rule, ...]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return ()
        if not isinstance(node, SequenceNode):
            self.report("rules", _line(node), f"expected a list of rules, got {_describe(node)}")
            return ()
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(node.value):
            where = f"rules[{i}]"
            rule = self.rule(item, where)
            name_node = _value_of(item, "name")
            if isinstance(name_node, ScalarNode) and name_node.tag == _STR and name_node.value.strip():
                name = str(name_node.value).strip()
                if name in seen:
                    self.report(
                        f"{where}.name", _line(name_node), f'rule name "{name}" is already used (first at line {seen[name]})'
                    )
                    continue
                seen[name] = _line(name_node)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, node: Node, where: str) -> Rule | None:
        if not isinstance(node, MappingNode):
            self.report(
                where, _line(node), f"expected a rule (a mapping with name, prefix and dst or weights), got {_describe(node)}"
            )
            return None
        before = len(self.problems)
        self.meant = set()
        fields = self.mapping(node, where, _RULE_KEYS)
        # a misspelled key (`dts`) is one mistake: it is not also reported as the key missing
        for required in ("name", "prefix"):
            if required not in fields and required not in self.meant:
                self.report(where, _line(node), f'missing required key "{required}"')
        misspelled = bool(self.meant & {"dst", "weights", "fault", "mirror"})
        if "fault" in fields and "mirror" in fields:
            self.report(where, _line(node), 'give "fault" or "mirror", not both (one rule for each)')
        elif "fault" in fields:
            if "dst" in fields or "weights" in fields:
                self.report(where, _line(node), 'a fault rule has no destination: give "fault" or "dst"/"weights", not both')
        elif "mirror" in fields:
            if "dst" in fields or "weights" in fields:
                self.report(
                    where, _line(node),
                    'a mirror rule has no destination of its own (the copy goes to mirror.dst, the request '
                    'where the dtab says): give "mirror" or "dst"/"weights", not both',
                )
        elif ("dst" in fields) == ("weights" in fields) and not (
            misspelled and "dst" not in fields and "weights" not in fields
        ):
            self.report(where, _line(node), 'a rule needs exactly one of "dst" and "weights"')

        name: str | None = None
        name_line = _line(node)
        if "name" in fields:
            name_node = fields["name"][1]
            name_line = _line(name_node)
            name = self.string(name_node, f"{where}.name")
            if name is not None:
                name = name.strip()
                if not name:
                    self.report(f"{where}.name", name_line, "must not be empty")
        description = ""
        if "description" in fields:
            description = self.string(fields["description"][1], f"{where}.description") or ""
        enabled: bool | None = True
        if "enabled" in fields:
            enabled = self.boolean(fields["enabled"][1], f"{where}.enabled")
        prefix = self.parsed(fields["prefix"][1], f"{where}.prefix", parse_prefix) if "prefix" in fields else None
        dst: NameTree[Path] | None = None
        if "dst" in fields:
            dst = self.parsed(fields["dst"][1], f"{where}.dst", parse_tree)
        elif "weights" in fields:
            dst = self.weights(fields["weights"][1], f"{where}.weights")
        match: Match | None = None
        if "match" in fields:
            match = self.match(fields["match"][1], f"{where}.match")
        fault: Fault | None = None
        if "fault" in fields:
            fault = self.fault(fields["fault"][1], f"{where}.fault")
            dst = NEG
        mirror: Mirror | None = None
        if "mirror" in fields:
            mirror = self.mirror(fields["mirror"][1], f"{where}.mirror")
            dst = NEG
        if len(self.problems) > before or name is None or prefix is None or dst is None or enabled is None:
            return None
        return Rule(name, prefix, dst, description, enabled, name_line, match, fault, mirror)

    def mirror(self, node: Node, where: str) -> Mirror | None:
        if not isinstance(node, MappingNode):
            self.report(where, _line(node), f"expected a mapping with dst and share, got {_describe(node)}")
            return None
        before = len(self.problems)
        fields = self.mapping(node, where, _MIRROR_KEYS)
        for required, why in (("dst", "the path to copy requests to"), ("share", "the fraction of matching requests")):
            if required not in fields:
                self.report(where, _line(node), f'missing required key "{required}" ({why})')
        dst = self.parsed(fields["dst"][1], f"{where}.dst", parse_path) if "dst" in fields else None
        share = self.number(fields["share"][1], f"{where}.share", what="share") if "share" in fields else None
        if share is not None and not 0 < share <= 1:
            self.report(f"{where}.share", _line(fields["share"][1]), f"expected a fraction > 0 and <= 1, got {share:g}")
        defaults = Mirror(Path(()), 1.0)
        limits = (
            ("maxInFlight", 1, 10_000, defaults.max_in_flight),
            ("maxBodyBytes", 0, 16 * 1024 * 1024, defaults.max_body_bytes),
            ("timeoutMs", 1, 60_000, defaults.timeout_ms),
        )
        values: list[int] = []
        for key, low, high, default in limits:
            value = self.integer(fields[key][1], f"{where}.{key}", low, high) if key in fields else default
            values.append(value if value is not None else default)
        if len(self.problems) > before or dst is None or share is None:
            return None
        return Mirror(dst, share, values[0], values[1], values[2])

    def fault(self, node: Node, where: str) -> Fault | None:
        if not isinstance(node, MappingNode):
            self.report(where, _line(node), f"expected a mapping with share and abort or delayMs, got {_describe(node)}")
            return None
        before = len(self.problems)
        fields = self.mapping(node, where, _FAULT_KEYS)
        if "share" not in fields:
            self.report(where, _line(node), 'missing required key "share" (the fraction of matching requests, e.g. 0.1)')
        if ("abort" in fields) == ("delayMs" in fields):
            self.report(where, _line(node), 'give exactly one of "abort" (a status) and "delayMs"')
        share = self.number(fields["share"][1], f"{where}.share", what="share") if "share" in fields else None
        if share is not None and not 0 < share <= 1:
            self.report(f"{where}.share", _line(fields["share"][1]), f"expected a fraction > 0 and <= 1, got {share:g}")
        abort = self.integer(fields["abort"][1], f"{where}.abort", 400, 599) if "abort" in fields else None
        delay = self.integer(fields["delayMs"][1], f"{where}.delayMs", 1, 60_000) if "delayMs" in fields else None
        if len(self.problems) > before or share is None:
            return None
        return Fault(share, abort, delay)

    def integer(self, node: Node, where: str, low: int, high: int) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.report(where, _line(node), f"expected an integer {low}-{high}, got {_describe(node)}")
            return None
        value = int(yaml.constructor.SafeConstructor().construct_object(node))
        if not low <= value <= high:
            self.report(where, _line(node), f"expected an integer {low}-{high}, got {value}")
            return None
        return value

    def match(self, node: Node, where: str) -> Match | None:
        if not isinstance(node, MappingNode):
            self.report(where, _line(node), f"expected a mapping with headers, method or pathPrefix, got {_describe(node)}")
            return None
        before = len(self.problems)
        fields = self.mapping(node, where, _MATCH_KEYS)
        if not fields and len(self.problems) == before:
            self.report(where, _line(node), "give at least one of headers, method and pathPrefix")
        headers: list[HeaderMatch] = []
        if "headers" in fields:
            headers = self.header_matches(fields["headers"][1], f"{where}.headers")
        method: str | None = None
        if "method" in fields:
            method_node = fields["method"][1]
            method = self.string(method_node, f"{where}.method")
            if method is not None and (not method or any(c not in _TOKEN_CHARS for c in method) or method != method.upper()):
                self.report(f"{where}.method", _line(method_node), f'expected an HTTP method in capitals (GET, POST, ...), got "{method}"')
        path_prefix: str | None = None
        if "pathPrefix" in fields:
            prefix_node = fields["pathPrefix"][1]
            path_prefix = self.string(prefix_node, f"{where}.pathPrefix")
            if path_prefix is not None and (not path_prefix.startswith("/") or any(c in path_prefix for c in " ?#")):
                self.report(f"{where}.pathPrefix", _line(prefix_node), f'expected a path starting with "/" (no query), got "{path_prefix}"')
        if len(self.problems) > before:
            return None
        return Match(tuple(headers), method, path_prefix)

    def header_matches(self, node: Node, where: str) -> list[HeaderMatch]:
        if not isinstance(node, MappingNode) or not node.value:
            self.report(where, _line(node), f"expected a mapping from header name to value, got {_describe(node)}")
            return []
        out: list[HeaderMatch] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            name = self.string(key_node, where)
            if name is None:
                continue
            at = f"{where}.{name}"
            if not name or any(c not in _TOKEN_CHARS for c in name):
                self.report(at, _line(key_node), f'expected a header name, got "{name}"')
                continue
            if name.lower() in seen:
                self.report(at, _line(key_node), f'header "{name}" is given twice')
                continue
            seen.add(name.lower())
            if isinstance(value_node, ScalarNode) and value_node.tag in (_STR, _INT):
                out.append(HeaderMatch(name.lower(), str(value_node.value)))  # `x-user: 42` means the text 42
                continue
            if not isinstance(value_node, MappingNode):
                self.report(
                    at,
                    _line(value_node),
                    f"expected a value, or {{exact: ...}}, {{prefix: ...}} or {{regex: ...}}, got {_describe(value_node)}",
                )
                continue
            how_fields = self.mapping(value_node, at, _HEADER_MATCH_KEYS)
            if len(how_fields) != 1:
                if how_fields:
                    self.report(at, _line(value_node), "give one of exact, prefix and regex")
                elif not value_node.value:
                    self.report(at, _line(value_node), "give one of exact, prefix and regex")
                continue
            ((how, (_k, text_node)),) = how_fields.items()
            if not (isinstance(text_node, ScalarNode) and text_node.tag in (_STR, _INT)):
                self.report(f"{at}.{how}", _line(text_node), f"expected text, got {_describe(text_node)}")
                continue
            text = str(text_node.value)
            if how == "regex":
                try:
                    out.append(HeaderMatch(name.lower(), text, "regex"))
                except RegexError as exc:
                    self.report(f"{at}.regex", _line(text_node), f"{exc}: {_describe(text_node)}")
                continue
            out.append(HeaderMatch(name.lower(), text, "exact" if how == "exact" else "prefix"))
        return out

    def weights(self, node: Node, where: str) -> NameTree[Path] | None:
        if not isinstance(node, MappingNode) or not node.value:
            self.report(
                where, _line(node), f"expected a mapping from destination path to weight, got {_describe(node)}"
            )
            return None
        branches: list[Weighted[Path]] = []
        seen: dict[Path, int] = {}
        ok = True
        for key_node, value_node in node.value:
            key_text = self.string(key_node, where)
            if key_text is None:
                ok = False
                continue
            at = f"{where}[{json.dumps(key_text, ensure_ascii=False)}]"
            path = self.parsed(key_node, at, parse_path)
            weight = self.number(value_node, at)
            if path is None or weight is None:
                ok = False
                continue
            if path in seen:
                self.report(at, _line(key_node), f"destination {path.show()} is listed twice (first at line {seen[path]})")
                ok = False
                continue
            seen[path] = _line(key_node)
            branches.append(Weighted(weight, Leaf(path)))
        if not ok:
            return None
        if len(branches) == 1:
            return branches[0].tree
        total = sum(b.weight for b in branches)
        if total > 0:  # shown as fractions (0.95*/a & 0.05*/b); only the proportions matter
            branches = [Weighted(b.weight / total, b.tree) for b in branches]
        return Union(tuple(branches))

    # -- scalars and mappings --------------------------------------------------------------

    def mapping(self, node: MappingNode, where: str, allowed: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        """The mapping's known keys; unknown and repeated keys are reported, and the others kept."""
        fields: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, where)
            if key is None:
                continue
            at = f"{where}.{key}" if where else key
            if key not in allowed:
                meant = closest(key, allowed)
                if meant is not None:
                    self.meant.add(meant)
                suggestion = did_you_mean(key, allowed) or f"; known keys: {', '.join(allowed)}"
                self.report(at, _line(key_node), f'unknown key "{key}"{suggestion}')
                continue
            if key in fields:
                self.report(at, _line(key_node), f'duplicate key "{key}" (first at line {_line(fields[key][0])})')
                continue
            fields[key] = (key_node, value_node)
        return fields

    def string(self, node: Node, where: str) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.report(where, _line(node), f"expected text, got {_describe(node)}")
            return None
        return str(node.value)

    def boolean(self, node: Node, where: str) -> bool | None:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.report(where, _line(node), f"expected true or false, got {_describe(node)}")
            return None
        return bool(yaml.constructor.SafeConstructor().construct_object(node))

    def number(self, node: Node, where: str, *, what: str = "weight") -> float | None:
        if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
            self.report(where, _line(node), f"{what} must be a number, got {_describe(node)}")
            return None
        value = float(yaml.constructor.SafeConstructor().construct_object(node))
        if not (value >= 0 and math.isfinite(value)):
            self.report(where, _line(node), f"{what} must be a finite number >= 0, got {node.value}")
            return None
        return value

    def parsed(self, node: Node, where: str, parse: _Parse[_X]) -> _X | None:
        """A scalar parsed with dtab syntax; syntax errors point into the file."""
        text = self.string(node, where)
        if text is None:
            return None
        try:
            return parse(text)
        except DtabSyntaxError as exc:
            line, column = scalar_position(self.text, node, exc.line, exc.column)
            self.report(where, line, exc.reason, column=column)
            return None

    # -- errors ------------------------------------------------------------------------------

    def report(self, where: str, line: int, reason: str, *, column: int | None = None) -> None:
        self.problems.append(RoutesProblem(where, line, reason, column))

    def failure(self) -> RoutesError:
        ordered = sorted(dict.fromkeys(self.problems), key=lambda p: (p.line, p.column or 0))
        return RoutesError(self.source, problems=ordered, text=self.text)


def _value_of(node: Node, key: str) -> Node | None:
    """The value of `key` in a mapping node (the first one), or None."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key and isinstance(value_node, Node):
                return value_node
    return None


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(node: Node) -> str:
    """What the user wrote, as meshd's config errors show it: text in double quotes, other
    scalars as written, `a mapping`, `a list` or `null`."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode) and node.tag == _NULL:
        return "null"
    if isinstance(node, ScalarNode):
        text = str(node.value)
        text = text if len(text) <= 40 else text[:37] + "..."
        return json.dumps(text, ensure_ascii=False) if node.tag == _STR else text
    return "a value"


def scalar_position(text: str, node: Node, line: int, column: int) -> tuple[int, int]:
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
