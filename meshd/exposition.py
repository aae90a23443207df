"""meshd's own Prometheus text exposition (format 0.0.4): families, a registry, a labelled counter,
the writer and a reader. It replaces prometheus-client in every process meshd runs.

prometheus-client's package imports its own HTTP and WSGI servers, push-gateway client and
OpenMetrics code (`http.server`, `urllib.request`, `wsgiref`, `email`): 4.3 MB of RSS in every
worker, for a registry, three namers' counters and `generate_latest`
(docs/benchmarks-memory.md). This module is what meshd used of it, on the standard library
modules every meshd process loads anyway.

The text is the one Prometheus scrapes (https://prometheus.io/docs/instrumenting/exposition_formats/):

    # HELP <name> <help, with \\ and newline escaped>
    # TYPE <name> counter|gauge|histogram|summary|untyped
    <name>{<label>="<value, with \\, newline and " escaped>",...} <value> [<timestamp ms>]

written as prometheus-client writes it, so that a scrape reads the same before and after:
labels in name order, numbers as Go's `strconv.FormatFloat(v, 'g')` (`3.0`, `1.5e+06`, `+Inf`,
`-Inf`, `NaN`), a counter's family named with its `_total`, and its children's creation times
in a `<name>_created` gauge family after it. meshd's own families (meshd/admin/metrics.py) are
written with the same two functions (`escape_label_value`, `format_value`) directly, in slices.

`parse` reads such a text back (the workers' supervisor sums its workers' texts with it;
meshd/workers.py); `Registry.get_sample_value` answers from what its collectors hold now.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple, Protocol

#: the Content-Type of the text `render` writes (Prometheus's text format, version 0.0.4)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: family types the text format knows
TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})

#: the sample names a family of each type holds, as suffixes of the family's name
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: one `name="value"` pair of a sample's labels, and what follows it (a comma or the closing brace)
_LABEL: Final = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)\s*', re.DOTALL)
#: a HELP or TYPE line: the keyword, the family's name and the rest, separated by ASCII blanks
#: (as prometheus-client reads them: a HELP text's leading blanks are separator too)
_COMMENT: Final = re.compile(r"#[ \t\r\v\f]+(HELP|TYPE)[ \t\r\v\f]+([^ \t\r\v\f]+)(?:[ \t\r\v\f]+(.*))?", re.DOTALL)
_ESCAPED: Final = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPE: Final = {"\\": "\\", "n": "\n", '"': '"'}


def escape_label_value(value: str) -> str:
    """A label value as it goes between the quotes: backslash, newline and double quote escaped."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def escape_help(text: str) -> str:
    """A HELP text as it goes on its line: backslash and newline escaped (quotes stay)."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """A sample value as Go writes a float64 (`3.0`, `0.0005`, `1.5e+06`, `+Inf`, `-Inf`, `NaN`),
    which is how prometheus-client writes it: Python's shortest repr, with an exponent from 1e+06 up."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class Sample(NamedTuple):
    """One line of a family: the sample's full name (`x_bucket`, `x_total`), labels, value."""

    name: str
    labels: dict[str, str]
    value: float
    #: seconds since the epoch, or None (meshd writes none)
    timestamp: float | None = None


class Family:
    """A metric family: its name as on the TYPE line (a counter's with `_total`), help, type, samples."""

    __slots__ = ("name", "documentation", "type", "samples")

    def __init__(self, name: str, documentation: str, type: str) -> None:
        if type not in TYPES:
            raise ValueError(f"{name}: unknown metric type {type!r}")
        self.name = name
        self.documentation = documentation
        self.type = type
        self.samples: list[Sample] = []

    def add_sample(self, name: str, labels: dict[str, str], value: float, timestamp: float | None = None) -> None:
        self.samples.append(Sample(name, labels, value, timestamp))

    def holds(self, sample_name: str) -> bool:
        """Whether a sample of this name belongs to this family."""
        if not sample_name.startswith(self.name):
            return False
        return sample_name[len(self.name):] in _SUFFIXES[self.type]

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.type!r}, {len(self.samples)} samples)"


def _sample_line(sample: Sample) -> str:
    if sample.labels:
        labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(sample.labels.items()))
        head = f"{sample.name}{{{labels}}}"
    else:
        head = sample.name
    if sample.timestamp is None:
        return f"{head} {format_value(sample.value)}\n"
    return f"{head} {format_value(sample.value)} {int(float(sample.timestamp) * 1000):d}\n"


def render(families: Iterable[Family]) -> bytes:
    """The families as exposition text: HELP, TYPE, then each sample, labels sorted by name."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {escape_help(family.documentation)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        out.extend(_sample_line(sample) for sample in family.samples)
    return "".join(out).encode("utf-8")


class Collector(Protocol):
    """Something a `Registry` asks for its families at scrape time."""

    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The families a process exports beside meshd's own: collectors asked in registration order.

    Two collectors may not export the same family name (`register` refuses the second, as
    prometheus-client does): Prometheus rejects a scrape that has a family twice.
    """

    __slots__ = ("_collectors", "__weakref__")

    def __init__(self) -> None:
        self._collectors: dict[Collector, frozenset[str]] = {}

    def register(self, collector: Collector) -> None:
        names = frozenset(getattr(collector, "names", ()))
        for other, taken in self._collectors.items():
            if names & taken:
                raise ValueError(f"metric families registered twice: {sorted(names & taken)} (by {other!r})")
        self._collectors[collector] = names

    def unregister(self, collector: Collector) -> None:
        del self._collectors[collector]

    def collect(self) -> Iterator[Family]:
        for collector in list(self._collectors):
            yield from collector.collect()

    def render(self) -> bytes:
        return render(self.collect())

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the sample `name` with exactly these labels now, or None (tests and tools)."""
        wanted = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return None


class CounterChild:
    """One labelled series of a `Counter`."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up: inc() takes an amount >= 0")
        self.value += amount

    def get(self) -> float:
        return self.value


class Counter:
    """A counter with labels, as the namers use prometheus-client's: `c.labels(result="ok").inc()`.

    It exports the family `<name>_total` (the name may be given with or without `_total`) and
    `<name>_created`, a gauge with each series' creation time (Unix seconds), as prometheus-client did.
    """

    __slots__ = ("name", "documentation", "labelnames", "_children", "__weakref__")

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str] = (), registry: Registry | None = None
    ) -> None:
        base = name.removesuffix("_total")
        if _NAME.fullmatch(base) is None:
            raise ValueError(f"invalid metric name {name!r}")
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if _LABEL_NAME.fullmatch(label) is None or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        self.name = base + "_total"
        self.documentation = documentation
        self._children: dict[tuple[str, ...], CounterChild] = {}
        if not self.labelnames:
            self._children[()] = CounterChild()
        if registry is not None:
            registry.register(self)

    @property
    def names(self) -> tuple[str, str]:
        base = self.name.removesuffix("_total")
        return (self.name, base + "_created")

    def labels(self, *values: object, **by_name: object) -> CounterChild:
        """The series with these label values (given in `labelnames` order, or by name), created at 0."""
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if values and by_name:
            raise ValueError(f"{self.name}: label values either by position or by name, not both")
        if by_name:
            if set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name}: labels {sorted(by_name)}, expected {sorted(self.labelnames)}")
            key = tuple(str(by_name[label]) for label in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(values)} label values for {len(self.labelnames)} labels")
            key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        """Increment a counter without labels."""
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: use .labels(...).inc()")
        self._children[()].inc(amount)

    def collect(self) -> list[Family]:
        total = Family(self.name, self.documentation, "counter")
        created_name = self.name.removesuffix("_total") + "_created"
        created = Family(created_name, self.documentation, "gauge")
        for key, child in list(self._children.items()):
            labels = dict(zip(self.labelnames, key, strict=True))
            total.add_sample(self.name, labels, child.value)
            created.add_sample(created_name, labels, child.created)
        return [total, created] if created.samples else [total]

    def __repr__(self) -> str:
        return f"Counter({self.name!r})"


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), "\\" + m.group(1)), value)


def _parse_labels(text: str, line: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos, end = 0, len(text)
    while pos < end:
        match = _LABEL.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"malformed labels in exposition line: {line!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
        if not match.group(3) and pos < end:
            raise ValueError(f"malformed labels in exposition line: {line!r}")
    return labels


def _parse_sample(line: str) -> Sample:
    brace = line.find("{")
    if brace >= 0:
        name = line[:brace].strip()
        close = _closing_brace(line, brace)
        labels = _parse_labels(line[brace + 1:close], line)
        rest = line[close + 1:].split()
    else:
        name, *rest = line.split()
        labels = {}
    if _NAME.fullmatch(name) is None or not 1 <= len(rest) <= 2:
        raise ValueError(f"malformed exposition line: {line!r}")
    try:
        value = float(rest[0])
        timestamp = int(rest[1]) / 1000 if len(rest) == 2 else None
    except ValueError:
        raise ValueError(f"malformed number in exposition line: {line!r}") from None
    return Sample(name, labels, value, timestamp)


def _closing_brace(line: str, brace: int) -> int:
    """The index of the `}` closing the label set that starts at `brace` (skipping quoted values)."""
    i, quoted = brace + 1, False
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "}":
            return i
        i += 1
    raise ValueError(f"unclosed labels in exposition line: {line!r}")


def parse(text: str) -> Iterator[Family]:
    """The families of an exposition text, in the order they appear.

    A family is named as on its TYPE line (a counter's name keeps its `_total`); samples that no
    TYPE line declared form an `untyped` family each. Raises ValueError on a malformed line.
    """
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: Family | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comment = _COMMENT.match(line)
            if comment is None:
                continue  # other comments mean nothing
            keyword, name, rest = comment.groups()
            if keyword == "HELP":
                helps[name] = _unescape(rest or "")
                if name in families:
                    families[name].documentation = helps[name]
            elif rest is not None:
                if name in families:
                    raise ValueError(f"family {name} declared twice")
                current = families[name] = Family(name, helps.get(name, ""), rest)
            else:
                raise ValueError(f"TYPE line without a type: {line!r}")
            continue
        sample = _parse_sample(line)
        if current is None or not current.holds(sample.name):
            current = next((f for f in families.values() if f.holds(sample.name)), None)
            if current is None:
                current = families[sample.name] = Family(sample.name, helps.get(sample.name, ""), "untyped")
        current.samples.append(sample)
    yield from families.values()
