"""Config loader: YAML text into a tree of frozen dataclasses, or one ConfigError listing every problem.

How this works
--------------
`yaml.compose` turns the text into nodes that remember their line numbers. The loader walks
those nodes side by side with the target dataclass's type hints and builds every value
itself: scalars are resolved by PyYAML's `SafeConstructor` (so `yes`, `0x1F`, `~` mean what
YAML 1.1 says), then the field's type decides whether the value is acceptable. Working on
nodes rather than on `yaml.safe_load` output is what lets every problem name its line, and
lets us see duplicate keys, which `safe_load` silently collapses to the last one.

The contract with config classes (it is generic: any tree following it loads):

* Classes are `@dataclass(frozen=True, slots=True, kw_only=True)`. A field's YAML key is
  `yaml_key(field.name)`, the camelCase of its snake_case name (`decay_time_ms` is
  `decayTimeMs`), unless `field(metadata={"yaml": "name"})` overrides it. Fields with
  `init=False` are not configurable.
* Field types: `bool`, `int`, `float` (an integer is accepted), `str`, `X | None`,
  `tuple[X, ...]` (a YAML list), `Literal[...]`, `Mapping[str, X]` (loaded read-only) or
  `dict[str, X]`, nested dataclasses. No coercion: `true` is not an integer, `"80"` and
  `41x0` are not numbers, `80` is not a string, and null is only accepted by `X | None`.
* Field metadata: `"min"`/`"max"` are inclusive bounds on numbers (applied to each element of
  a list); `"registry"` makes the field a plug-in: a dict from `kind` string to config class.
  The YAML mapping's `kind:` picks the class; without `kind:` the class of the field's
  default is used, and with no default it is an error. `kind` is not a field of the class
  (the class names itself in `KIND: ClassVar[str]`). The registry also applies to each
  element of `tuple[...]`, each value of `Mapping[...]` and to `X | None`. `"check"` is a
  function of the field's value that raises ValueError when the value is unacceptable on its
  own; it runs even when other keys of the same mapping have problems (so one mistake does
  not hide another), and an error with `line`/`column` attributes relative to the value's
  text (a DtabSyntaxError) is reported at that line and column of the file.
* Invariants: `__post_init__` raises `ValueError("plain message")`. The problem is reported
  at the path and line of the mapping that built the object, except when the message starts
  with a key of that mapping followed by ": " (`"port: must not be 0"`; the YAML key or the
  Python field name): then it is reported at that key, with the rest of the message.
* Problems are collected over the whole file, not just the first. A value with a problem
  is not looked into further (an unknown `kind:` hides that mapping's other keys), and an
  object whose parts had problems is not constructed, so its `__post_init__` does not run.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import json
import os
import pathlib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import Field
from typing import Any, Literal, NamedTuple, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshd.config.errors import ConfigError, ConfigProblem
from routing.rules import scalar_position
from routing.suggest import did_you_mean as _did_you_mean

T = TypeVar("T")

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_KIND = "kind"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class ConfigField(NamedTuple):
    """One configurable key, as `iter_fields` reports it for docs and tests."""

    pattern: str
    """YAML path with `[*]` for list items, `.*` for mapping values and `[kind=k]` for plug-ins."""
    field: Field[object]
    type: object
    """The resolved type hint (a class, or a generic alias such as `tuple[str, ...]`)."""


def yaml_key(field_name: str) -> str:
    """The YAML key for a Python field name: `max_retries_per_sec` -> `maxRetriesPerSec`."""
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def field_yaml_key(f: Field[object]) -> str:
    """The YAML key of a dataclass field: its `metadata["yaml"]` if set, else `yaml_key(f.name)`."""
    override = f.metadata.get("yaml")
    return override if isinstance(override, str) else yaml_key(f.name)


def load_config(text: str, root: type[T], *, source: str = "<config>") -> T:
    """Parse `text` into an instance of the dataclass `root`; raise ConfigError naming every problem."""
    if not (isinstance(root, type) and dataclasses.is_dataclass(root)):
        raise TypeError(f"load_config needs a dataclass type, got {root!r}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_problem(exc, text)], source=source, text=text) from exc
    if node is None:  # an empty file, or only comments: every field takes its default
        node = MappingNode(_MAP_TAG, [])
    walker = _Walker(text)
    value = walker.convert(node, root, _Where("", _line_of(node)), _NO_RULES)
    if walker.problems:
        ordered = sorted(dict.fromkeys(walker.problems), key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(ordered, source=source, text=text)
    if not isinstance(value, root):
        raise AssertionError(f"loader built {value!r} without reporting a problem")
    return value


def load_config_file(path: str | os.PathLike[str], root: type[T]) -> T:
    """Read and load a config file; an unreadable file is a ConfigError too, so callers handle one error."""
    source = os.fspath(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", None, f"cannot read the file: {exc}")], source=source) from exc
    return load_config(text, root, source=source)


def to_yaml_dict(obj: object) -> dict[str, object]:
    """The inverse of `load_config`: plain dicts/lists/scalars with YAML keys, and `kind` for plug-ins.

    Every configurable field is included, defaults too, so `/admin/config` shows the
    effective configuration. `yaml.safe_dump` of the result loads back to an equal object.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_yaml_dict needs a dataclass instance, got {obj!r}")
    return _dump_dataclass(obj, None)


def iter_fields(cls: type) -> Iterator[ConfigField]:
    """Every configurable key of the tree rooted at `cls`, including the fields of every registry class.

    Also checks that every field type is one the loader supports (TypeError otherwise), so a
    test that walks the whole tree catches a bad config class before any user does.
    """
    yield from _iter_class(cls, "", frozenset())


# --- class introspection ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Rules:
    """What a field's metadata says about its values; passed down into list and mapping elements."""

    registry: Mapping[str, type] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    default_class: type | None = None  # class of the field's default, for a plug-in without `kind:`

    def for_elements(self) -> _Rules:
        """Elements of a list or mapping have no default of their own."""
        return dataclasses.replace(self, default_class=None)


_NO_RULES = _Rules()


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    key: str
    field: Field[Any]
    type: object
    required: bool
    rules: _Rules


@functools.cache
def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    specs: list[_FieldSpec] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = field_yaml_key(f)
        if any(s.key == key for s in specs):
            raise TypeError(f"{cls.__qualname__}: two fields use the YAML key {key!r}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append(_FieldSpec(key, f, hints[f.name], required, _rules_of(cls, f)))
    return tuple(specs)


def _rules_of(cls: type, f: Field[Any]) -> _Rules:
    registry = f.metadata.get("registry")
    if registry is not None and not isinstance(registry, Mapping):
        raise TypeError(f"{cls.__qualname__}.{f.name}: metadata 'registry' must be a mapping")
    bounds = [f.metadata.get("min"), f.metadata.get("max")]
    for bound in bounds:
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)):
            raise TypeError(f"{cls.__qualname__}.{f.name}: metadata 'min'/'max' must be numbers")
    default_class: type | None = None
    if registry is not None:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            default_class = type(default)
    return _Rules(registry, bounds[0], bounds[1], default_class)


def _is_union(tp: object) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_mapping(tp: object) -> bool:
    return typing.get_origin(tp) in (dict, collections.abc.Mapping)


def _is_dataclass_type(tp: object) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _element_type(tp: object) -> object:
    """The X of `tuple[X, ...]` or the value type of `Mapping[str, X]`; TypeError for other shapes."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config lists must be tuple[X, ...], got {tp!r}")
        return args[0]
    if args[0] is not str:
        raise TypeError(f"config mappings must have str keys, got {tp!r}")
    return args[1]


def _iter_class(cls: type, prefix: str, stack: frozenset[type]) -> Iterator[ConfigField]:
    if cls in stack:  # a recursive tree: its keys were listed one level up
        return
    for spec in _specs(cls):
        pattern = f"{prefix}.{spec.key}" if prefix else spec.key
        yield ConfigField(pattern, spec.field, spec.type)
        yield from _iter_type(spec.type, pattern, spec.rules.registry, stack | {cls})


def _iter_type(
    tp: object, pattern: str, registry: Mapping[str, type] | None, stack: frozenset[type]
) -> Iterator[ConfigField]:
    if _is_union(tp):
        others = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(others) != 1 and registry is None:
            raise TypeError(f"{pattern}: unions other than X | None are not supported: {tp!r}")
        yield from _iter_type(others[0], pattern, registry, stack)
    elif typing.get_origin(tp) is tuple:
        yield from _iter_type(_element_type(tp), f"{pattern}[*]", registry, stack)
    elif _is_mapping(tp):
        yield from _iter_type(_element_type(tp), f"{pattern}.*", registry, stack)
    elif registry is not None:
        for kind, kind_class in registry.items():
            yield from _iter_class(kind_class, f"{pattern}[kind={kind}]", stack)
    elif _is_dataclass_type(tp):
        assert isinstance(tp, type)
        yield from _iter_class(tp, pattern, stack)
    elif tp not in (bool, int, float, str) and typing.get_origin(tp) is not Literal:
        raise TypeError(f"{pattern}: unsupported config field type {tp!r}")


# --- loading ----------------------------------------------------------------------------------


class _Invalid(enum.Enum):
    """Returned instead of a value once a problem has been reported for it."""

    INVALID = enum.auto()


_INVALID: typing.Final = _Invalid.INVALID

_Entries = dict[str, tuple[ScalarNode, Node]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Where:
    """The YAML path of the value being loaded and the line problems about it are reported at."""

    path: str
    line: int

    def key(self, name: str, line: int) -> _Where:
        if not _PLAIN_KEY.match(name):
            return _Where(f"{self.path}[{json.dumps(name, ensure_ascii=False)}]", line)
        return _Where(f"{self.path}.{name}" if self.path else name, line)

    def index(self, i: int, line: int) -> _Where:
        return _Where(f"{self.path}[{i}]", line)


class _Walker:
    """One load: converts nodes to values and collects problems on the way."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.problems: list[ConfigProblem] = []
        self._constructor = SafeConstructor()

    def report(self, where: _Where, message: str) -> _Invalid:
        self.problems.append(ConfigProblem(where.path, where.line, message))
        return _INVALID

    def convert(self, node: Node, tp: object, where: _Where, rules: _Rules) -> object:
        """The value of `node` as type `tp`, or _INVALID after reporting why it is not one."""
        if _is_union(tp):
            others = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            if len(others) < len(typing.get_args(tp)) and node.tag == _NULL_TAG:
                return None
            if len(others) == 1:
                return self.convert(node, others[0], where, rules)
            if rules.registry is None:
                raise TypeError(f"unions other than X | None are not supported: {tp!r}")
            return self._plugin(node, where, rules)
        if typing.get_origin(tp) is tuple:
            return self._list(node, _element_type(tp), where, rules.for_elements())
        if _is_mapping(tp):
            return self._mapping(node, tp, where, rules.for_elements())
        if typing.get_origin(tp) is Literal:
            return self._literal(node, typing.get_args(tp), where)
        if rules.registry is not None:
            return self._plugin(node, where, rules)
        if _is_dataclass_type(tp):
            assert isinstance(tp, type)
            found = self._entries(node, where)
            return _INVALID if found is _INVALID else self._build(tp, *found, where, kind=None)
        if tp in (bool, int, float, str):
            return self._scalar(node, tp, where, rules)
        raise TypeError(f"unsupported config field type {tp!r}")

    # -- scalars --

    def _scalar(self, node: Node, tp: object, where: _Where, rules: _Rules) -> object:
        if tp is bool:
            expected = "true or false"
        elif tp is str:
            expected = "a string"
        else:
            expected = ("an integer" if tp is int else "a number") + _bounds_text(rules)
        value = self._value_of(node, where, expected)
        if value is _INVALID:
            return _INVALID
        if tp is bool or tp is str:
            if type(value) is tp:
                return value
            hint = " (quote it to make it a string)" if tp is str and isinstance(node, ScalarNode) else ""
            return self.report(where, f"expected {expected}, got {_show(node, value)}{hint}")
        number_types: tuple[type, ...] = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            hint = _EXPONENT_HINT if tp is float and isinstance(value, str) and _is_exponent(value) else ""
            return self.report(where, f"expected {expected}, got {_show(node, value)}{hint}")
        assert isinstance(value, int | float)
        if (rules.minimum is not None and value < rules.minimum) or (
            rules.maximum is not None and value > rules.maximum
        ):
            return self.report(where, f"expected {expected}, got {_show(node, value)}")
        if tp is int:
            return value
        try:
            return float(value)
        except OverflowError:  # an integer literal beyond the float range
            return self.report(where, f"expected {expected}, got {_show(node, value)} (too large)")

    def _literal(self, node: Node, choices: tuple[object, ...], where: _Where) -> object:
        shown = ", ".join(_show_value(c) for c in choices)
        value = self._value_of(node, where, f"one of {shown}")
        if value is _INVALID:
            return _INVALID
        for choice in choices:
            if type(choice) is type(value) and choice == value:
                return choice
        message = f"expected one of {shown}, got {_show(node, value)}"
        if isinstance(value, str):
            message += _did_you_mean(value, [c for c in choices if isinstance(c, str)])
        return self.report(where, message)

    def _value_of(self, node: Node, where: _Where, expected: str) -> object:
        """The Python value of a scalar node, as YAML 1.1 (SafeLoader) resolves it."""
        if not isinstance(node, ScalarNode):
            return self.report(where, f"expected {expected}, got {_show(node, None)}")
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as exc:  # e.g. an unknown tag such as `!env PORT`
            return self.report(where, f"cannot read this value: {getattr(exc, 'problem', None) or exc}")

    # -- collections --

    def _list(self, node: Node, element_type: object, where: _Where, rules: _Rules) -> object:
        if not isinstance(node, SequenceNode):
            return self.report(where, f"expected a list, got {self._describe(node)}")
        items = [
            self.convert(item, element_type, where.index(i, _line_of(item)), rules)
            for i, item in enumerate(node.value)
        ]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    def _mapping(self, node: Node, tp: object, where: _Where, rules: _Rules) -> object:
        value_type = _element_type(tp)
        found = self._entries(node, where)
        if found is _INVALID:
            return _INVALID
        entries, ok = found
        result = {
            key: self.convert(value_node, value_type, where.key(key, _line_of(key_node)), rules)
            for key, (key_node, value_node) in entries.items()
        }
        if not ok or any(value is _INVALID for value in result.values()):
            return _INVALID
        return result if typing.get_origin(tp) is dict else types.MappingProxyType(result)

    def _entries(self, node: Node, where: _Where) -> tuple[_Entries, bool] | _Invalid:
        """A mapping's keys with their nodes, and whether all keys were fine.

        Reports non-string and duplicate keys (the other keys are still returned, so their
        values get checked too) and resolves `<<` merge keys: keys written in the mapping
        override merged ones and are not duplicates of them; among merged mappings the first
        one wins (YAML merge-key rules).
        """
        if not isinstance(node, MappingNode):
            return self.report(where, f"expected a mapping, got {self._describe(node)}")
        own: _Entries = {}
        inherited: _Entries = {}
        ok = True
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    found = self._entries(source, where)
                    if found is _INVALID:
                        ok = False
                    else:
                        inherited = found[0] | inherited
                        ok = ok and found[1]
                continue
            key = self._value_of(key_node, where, "a key") if isinstance(key_node, ScalarNode) else None
            if key is _INVALID:
                ok = False
            elif not isinstance(key, str):
                self.report(where, f"keys must be strings, got {_show(key_node, key)}")
                ok = False
            elif key in own:
                first = _line_of(own[key][0])
                self.report(
                    where.key(key, _line_of(key_node)), f'duplicate key "{key}" (first at line {first})'
                )
                ok = False
            else:
                own[key] = (key_node, value_node)
        return inherited | own, ok

    def _describe(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            return _show(node, None)
        try:
            return _show(node, self._constructor.construct_object(node))
        except yaml.YAMLError:
            return _show(node, None)

    # -- dataclasses and plug-ins --

    def _plugin(self, node: Node, where: _Where, rules: _Rules) -> object:
        assert rules.registry is not None
        registry = rules.registry
        known = f"known kinds: {', '.join(registry)}"
        if isinstance(node, ScalarNode) and node.tag != _NULL_TAG and node.value in registry:
            return self.report(
                where, f"expected a mapping, got {self._describe(node)}; write {{kind: {node.value}}}"
            )
        found = self._entries(node, where)
        if found is _INVALID:
            return _INVALID
        entries, ok = found
        if _KIND in entries:
            key_node, value_node = entries[_KIND]
            kind_where = where.key(_KIND, _line_of(key_node))
            kind = self._value_of(value_node, kind_where, "a kind name")
            if kind is _INVALID:
                return _INVALID
            if isinstance(kind, str) and kind in registry:
                return self._build(registry[kind], entries, ok, where, kind=kind)
            suggestion = _did_you_mean(kind, list(registry)) if isinstance(kind, str) else ""
            return self.report(kind_where, f"unknown kind {_show(value_node, kind)} ({known}){suggestion}")
        if rules.default_class is None:
            return self.report(where, f'missing "kind" ({known})')
        return self._build(rules.default_class, entries, ok, where, kind=None)

    def _build(self, cls: type, entries: _Entries, ok: bool, where: _Where, *, kind: str | None) -> object:
        """Construct `cls` from checked entries; `ok` is False if the mapping already had a problem.

        `kind` is set when the mapping chose its class with `kind:`, which is then not a field.
        """
        specs = {spec.key: spec for spec in _specs(cls)}
        if kind is not None and _KIND in specs:
            raise TypeError(
                f"{cls.__qualname__}: a plug-in class cannot have a field with the YAML key 'kind'"
            )
        kwargs: dict[str, object] = {}
        for key, (key_node, value_node) in entries.items():
            if kind is not None and key == _KIND:
                continue
            key_where = where.key(key, _line_of(key_node))
            spec = specs.get(key)
            if spec is None:
                self.report(key_where, _unknown_key_message(key, list(specs), kind))
                ok = False
                continue
            value = self.convert(value_node, spec.type, key_where, spec.rules)
            if value is _INVALID or not self._field_check(spec, value, value_node, key_where):
                ok = False
            else:
                kwargs[spec.field.name] = value
        for spec in specs.values():
            if spec.required and spec.key not in entries:
                self.report(where, f'missing required key "{spec.key}"')
                ok = False
        if not ok:
            return _INVALID
        try:
            return cls(**kwargs)
        except ValueError as exc:
            return self._report_invariant(str(exc), cls, entries, where)

    def _field_check(self, spec: _FieldSpec, value: object, node: Node, where: _Where) -> bool:
        """Run the field's own `metadata["check"]`, if any; report its ValueError at the field.

        Field checks run whether or not the rest of the mapping is valid, so a router's dtab is
        checked even when its `client` section has a mistake. An error that knows its place in
        the value's text (`line` and `column` attributes, as a DtabSyntaxError has) is
        reported at that place in the file, inside block scalars too.
        """
        check = spec.field.metadata.get("check")
        if check is None:
            return True
        try:
            check(value)
        except ValueError as exc:
            line, column = getattr(exc, "line", None), getattr(exc, "column", None)
            if isinstance(line, int) and isinstance(column, int) and self.text:
                file_line, file_column = scalar_position(self.text, node, line, column)
                reason = str(getattr(exc, "reason", None) or exc)
                self.problems.append(ConfigProblem(where.path, file_line, reason, column=file_column))
            else:
                self.report(where, str(exc) or "invalid value")
            return False
        return True

    def _report_invariant(self, message: str, cls: type, entries: _Entries, where: _Where) -> _Invalid:
        """Apply the "key: message" convention of __post_init__ errors (see the module docstring)."""
        head, sep, rest = message.partition(": ")
        if sep:
            by_field_name = {spec.field.name: spec.key for spec in _specs(cls)}
            key = head if head in entries else by_field_name.get(head)
            if key is not None and key in entries:
                return self.report(where.key(key, _line_of(entries[key][0])), rest)
        return self.report(where, message or "invalid value")


# --- messages ---------------------------------------------------------------------------------


def _line_of(node: Node) -> int:
    mark = node.start_mark
    return 1 if mark is None else mark.line + 1


def _syntax_problem(exc: yaml.YAMLError, text: str) -> ConfigProblem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        message = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        elif exc.context:
            message += f" ({exc.context})"
        return ConfigProblem("", mark.line + 1, f"YAML syntax error: {message}", column=mark.column + 1)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"YAML syntax error: unacceptable character #x{character:04x}: {exc.reason}"
        return ConfigProblem("", line, message, column=column)
    return ConfigProblem("", None, f"YAML syntax error: {exc}")


_EXPONENT_HINT: typing.Final = " (YAML 1.1 reads an exponent without a dot and sign as text: write 1.0e+3)"


def _is_exponent(text: str) -> bool:
    """A string Python reads as a float with an exponent, which PyYAML's YAML 1.1 rules leave a string."""
    try:
        float(text)
    except ValueError:
        return False
    return "e" in text.lower()


def _bounds_text(rules: _Rules) -> str:
    low, high = rules.minimum, rules.maximum
    if low is not None and high is not None:
        return f" {low}-{high}" if low >= 0 else f" from {low} to {high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def _show(node: Node, value: object) -> str:
    """How to quote what the user wrote: strings in double quotes, other scalars as written."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(value, str):
        return _show_value(value)
    if node.tag == _NULL_TAG:
        return "null"
    text = str(node.value)
    return text if len(text) <= 40 else text[:37] + "..."


def _show_value(value: object) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _unknown_key_message(key: str, known: list[str], kind: str | None) -> str:
    where = f' for kind "{kind}"' if kind is not None else ""
    suggestion = _did_you_mean(key, known)
    if suggestion:
        return f'unknown key "{key}"{where}{suggestion}'
    listed = ", ".join(known + ([_KIND] if kind is not None else [])) or "none"
    return f'unknown key "{key}"{where}; known keys: {listed}'


# --- dumping ----------------------------------------------------------------------------------


def _dump_dataclass(obj: object, registry: Mapping[str, type] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    kind = _kind_of(obj, registry)
    if kind is not None:
        out[_KIND] = kind
    cls: type = type(obj)
    for spec in _specs(cls):
        out[spec.key] = _dump(getattr(obj, spec.field.name), spec.rules.registry)
    return out


def _dump(value: object, registry: Mapping[str, type] | None) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dump_dataclass(value, registry)
    if isinstance(value, tuple | list):
        return [_dump(item, registry) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _dump(item, registry) for key, item in value.items()}
    return value


def _kind_of(obj: object, registry: Mapping[str, type] | None) -> str | None:
    if registry is not None:
        for kind, cls in registry.items():
            if type(obj) is cls:
                return kind
    declared = getattr(type(obj), "KIND", None)
    return declared if isinstance(declared, str) else None
