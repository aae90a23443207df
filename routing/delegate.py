"""Delegation: bind a logical path through a dtab and namers to bound names, with a trace.

How binding works (Finagle `Namer.bind` with linkerd's `ConfiguredNamersInterpreter`); it is
recursive and every step is recorded in a `TraceNode`:

- `Leaf(path)`: look the path up in the dtab (`Dtab.lookup`). If that gives a tree other
  than `~`, bind that tree one level deeper. If it gives `~` (no dentry matched, or the
  only match says `~`), ask the configured namers whose prefix starts the path, longest
  prefix first, then in the mapping's order; a namer answering `NEG` passes to the next,
  `None` makes the result pending. Last comes the system namer for `/$/...`. What a namer
  answers is bound one level deeper too; anything no one knows is `NEG`.
- `Leaf(BoundName)`: done.
- `Alt(t1, t2, ...)`: bind t1; `FAIL` stops (no fallback), `NEG` tries t2, anything else
  (including `EMPTY`, or a bound name with no replicas) is the answer; all `NEG` -> `NEG`.
  A pending or failed alternative makes the Alt pending or failed: the later ones cannot be
  decided before it.
- `Union(w1*t1, ...)`: bind every branch, then keep the branches that bound to a tree and
  simplify: `NEG` and `FAIL` branches are dropped, `EMPTY` stays (it fails its share of
  requests). If no branch bound (all pending or failed), the union is pending, or failed
  with the first failure (Finagle `bindUnion`).
- `NEG`, `FAIL`, `EMPTY` bind to themselves.
- Depth: each dtab or namer rewrite goes one level deeper; beyond `max_depth` (100, as
  Finagle) binding fails with "Max recursion level: 100 reached". As a guard against dtabs
  whose unions multiply (`/a => /a/x & /a/y`), binding also stops after `max_steps` nodes.

Work is bounded, because a per-request dtab (`l5d-dtab`) is written by a client:
- Within one `bind`, a path met again at the same depth is not delegated again: its result
  (and trace) is reused, and costs one step. Binding is deterministic, so this changes no
  result; it makes chains that repeat a name (`/x0 => /x1 | /x1; /x1 => /x2 | /x2; ...`,
  exponential when bound naively, as in Finagle) cost one step per distinct path.
- `max_work`, when given, bounds the work of the whole binding: one unit per node visited
  (a reused path included), plus, for each dtab lookup, one per index probe and `*` prefix
  compared and the node count of every tree the lookup rewrites. Bindings that involve a
  per-request dtab get `LOCAL_DTAB_MAX_WORK` (meshd's binder passes it); past it binding
  fails with a `DelegationError` that says so. A unit is a few hundred nanoseconds of CPU
  (see docs/routing.md for measurements), so the limit bounds what a header can cost.
- `trace=False` builds no trace (the request path needs only the result); the nodes are
  then a placeholder and `Binding.trace` says only the path and dtab.

A failure (the depth limit, an unknown `/$/` namer) raises `DelegationError`, which carries
the trace up to that point. A result that is still pending gives `Binding.pending`.

Per request, meshd does not bind again: it compiles the bound tree once with
`compile_choice` and calls `Chooser.choose(rng)`, which picks a union branch by weight
(Finagle's `Drv.fromWeights`: weights are relative and normalised, all-zero is uniform).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Final, Literal, TypeAlias

from routing.dtab import Dtab
from routing.namer import SYSTEM_NAMER, SYSTEM_PREFIX, BoundName, Namer, SystemNamerError
from routing.nametree import (
    EMPTY,
    FAIL,
    NEG,
    Alt,
    Empty,
    Fail,
    Leaf,
    NameTree,
    Neg,
    Union,
    Weighted,
    map_leaves,
    show,
    show_weight,
    simplify,
)
from routing.parser import DtabSyntaxError, parse_dtab
from routing.path import Path

DEFAULT_MAX_DEPTH: Final = 100
DEFAULT_MAX_STEPS: Final = 10_000
#: The work limit of a binding that involves a per-request dtab (see the module docstring).
LOCAL_DTAB_MAX_WORK: Final = 1_000
#: Per-request dtab headers (`l5d-dtab`, `l5d-ctx-dtab`): at most this many bytes each (and
#: together, as forwarded), and at most this many dentries in all.
MAX_LOCAL_DTAB_BYTES: Final = 4096
MAX_LOCAL_DENTRIES: Final = 100
HEADER_CACHE_SIZE: Final = 256

JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
StepKind = Literal["path", "alt", "union", "bound", "neg", "fail", "empty"]
Outcome = Literal["bound", "union", "neg", "fail", "empty", "pending", "error"]
Choice: TypeAlias = "BoundName | Neg | Fail | Empty"


class DelegationError(Exception):
    """Binding failed (loop past the depth limit, unknown system namer). `trace` shows how far
    it got."""

    def __init__(self, message: str, trace: Trace) -> None:
        super().__init__(message)
        self.message = message
        self.trace = trace


@dataclass(frozen=True, slots=True)
class DentryStep:
    """A dentry that matched a path: its index in the dtab, its text, and the rewrite."""

    index: int
    dentry: str
    rewrite: str


@dataclass(frozen=True, slots=True)
class NamerStep:
    """A namer asked about a path: its prefix, the path after it, and its answer (a tree,
    `pending`, or `error: ...`)."""

    prefix: Path
    path: Path
    answer: str


@dataclass(frozen=True, slots=True)
class TraceNode:
    """One node visited while binding.

    `kind` says what the node was (`path` to delegate, `alt`, `union`, a `bound` name, or a
    constant `neg`/`fail`/`empty`); `text` is it in dtab syntax; `outcome` and `result` say
    what it bound to. A `path` node lists the matching `dentries` (last first, as tried) and
    the `namers` asked, and has at most one child: the tree it was rewritten to. An `alt`
    node's children are the alternatives tried, in order, and `skipped` the ones not tried.
    A `union` node's children are all branches, with `weights` in the same order.
    """

    kind: StepKind
    text: str
    depth: int
    outcome: Outcome
    result: str
    dentries: tuple[DentryStep, ...] = ()
    namers: tuple[NamerStep, ...] = ()
    children: tuple[TraceNode, ...] = ()
    weights: tuple[float, ...] = ()
    skipped: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "kind": self.kind,
            "text": self.text,
            "depth": self.depth,
            "outcome": self.outcome,
            "result": self.result,
            "dentries": [{"index": d.index, "dentry": d.dentry, "rewrite": d.rewrite} for d in self.dentries],
            "namers": [
                {"prefix": n.prefix.show(), "path": n.path.show(), "answer": n.answer} for n in self.namers
            ],
            "children": [c.to_json() for c in self.children],
            "weights": list(self.weights),
            "skipped": list(self.skipped),
            "note": self.note,
        }
        return out


@dataclass(frozen=True, slots=True)
class Trace:
    """The explanation of one binding: the path, the dtab used and the tree of steps."""

    path: Path
    dtab: Dtab
    root: TraceNode
    result: str
    pending: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, JsonValue]:
        """JSON-ready form with stable keys (for `/admin/delegator` and `meshd dtab explain`)."""
        return {
            "path": self.path.show(),
            "dtab": [d.show() for d in self.dtab.dentries],
            "result": self.result,
            "pending": self.pending,
            "error": self.error,
            "root": self.root.to_json(),
        }

    def render(self) -> str:
        """An indented, human-readable explanation, like linkerd's delegator."""
        lines = [f"delegating {self.path.show()}"]
        if self.dtab.dentries:
            lines.append("dtab:")
            width = len(str(len(self.dtab.dentries) - 1))
            lines.extend(f"  #{i:<{width}} {d.show()}" for i, d in enumerate(self.dtab.dentries))
        else:
            lines.append("dtab: (empty)")
        lines.append("")
        _render(self.root, "", "", lines)
        lines.append("")
        if self.error is not None:
            lines.append(f"result: error: {self.error}")
        elif self.pending:
            lines.append("result: pending (a namer has not answered yet)")
        else:
            lines.append(f"result: {self.result}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Binding:
    """The outcome of `bind`.

    `tree` is bound and simplified: only Leaf(BoundName), Union, Neg, Fail and Empty remain.
    `pending` is true when the answer is not known yet because a namer answered `None` where
    the result depends on it; `tree` is then `NEG` and must not be served: wait for the
    namers in `waiting_on` to change and bind again. `waiting_on` lists every namer prefix
    that answered `None`, even when the result did not depend on it (a union serves its
    known branches meanwhile, as Finagle does); re-bind when those namers change.
    `work` is the work the binding took, as `max_work` counts it.
    """

    tree: NameTree[BoundName]
    pending: bool
    trace: Trace
    waiting_on: tuple[Path, ...] = field(default=())
    work: int = 0


def bind(
    dtab: Dtab,
    path: Path,
    namers: Mapping[Path, Namer],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_steps: int = DEFAULT_MAX_STEPS,
    max_work: int | None = None,
    trace: bool = True,
    memo: bool = True,
) -> Binding:
    """Bind `path` through `dtab` and `namers` (prefix -> namer); see the module docstring.

    `max_work` (None: unbounded) limits the work as the module docstring counts it; give
    `LOCAL_DTAB_MAX_WORK` when `dtab` includes a per-request dtab. With `trace=False` no
    trace is built (cheaper; `Binding.trace` and `DelegationError.trace` are then bare).
    `memo=False` binds a path again each time it is met (only to check that reusing gives
    the same results).
    """
    binder = _Binder(dtab, namers, max_depth, max_steps, max_work, trace, memo)
    try:
        result, root = binder.bind(Leaf(path), 0)
    except _TooManySteps:
        message = f"binding {path.show()} visited more than {max_steps} nodes; the dtab probably recurses"
        root = TraceNode("path", path.show(), 0, "error", f"error: {message}", note=message)
        raise DelegationError(message, Trace(path, dtab, root, f"error: {message}", error=message)) from None
    except _TooMuchWork:
        message = (
            f"binding {path.show()} needed more than {max_work} steps of work, the limit for a binding "
            "with a per-request dtab (l5d-dtab, l5d-ctx-dtab)"
        )
        root = TraceNode("path", path.show(), 0, "error", f"error: {message}", note=message)
        raise DelegationError(message, Trace(path, dtab, root, f"error: {message}", error=message)) from None
    waiting = tuple(binder.waiting_on)
    if isinstance(result, _Failed):
        raise DelegationError(
            result.message, Trace(path, dtab, root, f"error: {result.message}", error=result.message)
        )
    if isinstance(result, _Pending):
        return Binding(NEG, True, Trace(path, dtab, root, "pending", pending=True), waiting, binder.work)
    tree = simplify(result)
    return Binding(tree, False, Trace(path, dtab, root, describe(tree) if trace else ""), waiting, binder.work)


def describe(tree: NameTree[BoundName]) -> str:
    """A bound tree in dtab syntax with residuals: `/#/fs/a (residual /x)`, `~`, ..."""
    if isinstance(tree, Leaf):
        return tree.value.describe()
    if isinstance(tree, Neg | Fail | Empty):
        return show(tree)
    return show(map_leaves(tree, _Described))


class Chooser:
    """Picks the destination of one request from a bound tree; built by `compile_choice`.

    The tree is flattened once into outcomes with probabilities (nested union weights
    multiply through) and cumulative sums, so `choose` is one `random()` and a bisection.
    A tree with a single possible outcome returns it without drawing a number.
    """

    __slots__ = ("single", "_choices", "_cumulative", "_branches")

    def __init__(self, branches: tuple[tuple[float, Choice], ...]) -> None:
        self._branches = branches
        self._choices = tuple(c for _, c in branches)
        self._cumulative = tuple(accumulate(p for p, _ in branches))
        #: the outcome when there is only one (no draw needed); callers on the hot path read it
        #: before calling `choose` (an attribute read is cheaper than a call)
        self.single: Choice | None = self._choices[0] if len(self._choices) == 1 else None

    @property
    def branches(self) -> tuple[tuple[float, Choice], ...]:
        """(probability, outcome) pairs; probabilities sum to 1."""
        return self._branches

    def choose(self, rng: random.Random) -> Choice:
        single = self.single
        if single is not None:
            return single
        i = bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        return self._choices[i if i < len(self._choices) else -1]

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{p:.4f}: {c.show() if isinstance(c, BoundName) else show(c)}" for p, c in self._branches
        )
        return f"Chooser({inner})"


def compile_choice(tree: NameTree[BoundName]) -> Chooser:
    """A `Chooser` for a bound tree.

    Union weights are relative and normalised per union; a union whose weights are all zero
    splits evenly; branches of weight zero in a union with positive weights never win.
    `NEG`, `FAIL` and `EMPTY` (kept by a bound union) are outcomes like any other: meshd fails
    that share of requests. An Alt (not produced by `bind`) picks its first non-`NEG`
    alternative, as binding would.
    """
    out: list[tuple[float, Choice]] = []
    _flatten(tree, 1.0, out)
    return Chooser(tuple(out))


def parse_dtab_header(value: str) -> Dtab:
    """The local dtab carried by an `l5d-ctx-dtab` or `l5d-dtab` header value.

    Raises `DtabSyntaxError` (meshd answers 400). Parsed dtabs are cached by text, because
    the same override usually arrives on many requests, and so are syntax errors (a client
    repeating a malformed header is not parsed again); the cache is bounded. The size limits
    (`MAX_LOCAL_DTAB_BYTES`, `MAX_LOCAL_DENTRIES`) are checked by the caller, which knows the
    header's name.
    """
    cached = _HEADER_CACHE.get(value)
    if cached is None:
        try:
            cached = parse_dtab(value)
        except DtabSyntaxError as exc:
            cached = (exc.reason, exc.offset)
        if len(_HEADER_CACHE) >= HEADER_CACHE_SIZE:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[value] = cached
    if isinstance(cached, Dtab):
        return cached
    raise DtabSyntaxError(cached[0], value, cached[1])  # a new exception: no traceback piles up


# -- internals -------------------------------------------------------------------------------

_HEADER_CACHE: dict[str, Dtab | tuple[str, int]] = {}


@dataclass(frozen=True, slots=True)
class _Pending:
    """A result that is not known yet (a namer answered None)."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """A result that is an error (Finagle: a failed Activity)."""

    message: str


_PENDING: Final = _Pending()
_Result: TypeAlias = "NameTree[BoundName] | _Pending | _Failed"


class _TooManySteps(Exception):
    pass


class _TooMuchWork(Exception):
    pass


#: The placeholder node of a binding made with `trace=False`.
_NO_TRACE: Final = TraceNode("path", "", 0, "neg", "", note="not traced")


@dataclass(frozen=True, slots=True)
class _Described:
    """A bound name that shows itself with its residual (for trace texts)."""

    name: BoundName

    def show(self) -> str:
        return self.name.describe()


class _Binder:
    """The state of one `bind` call: the inputs, the step and work counters, the paths already
    bound (by path and depth) and the pending namers."""

    def __init__(
        self,
        dtab: Dtab,
        namers: Mapping[Path, Namer],
        max_depth: int,
        max_steps: int,
        max_work: int | None,
        tracing: bool,
        memo: bool = True,
    ) -> None:
        self.dtab = dtab
        # Longest prefix first; `sorted` is stable, so equal lengths keep the mapping's order.
        self.namers = sorted(namers.items(), key=lambda item: -len(item[0]))
        self.max_depth = max_depth
        self.max_steps = max_steps
        self.max_work = max_work if max_work is not None else -1
        self.tracing = tracing
        self.memo = memo
        self.steps = 0
        self.work = 0
        self.done: dict[tuple[Path, int], tuple[_Result, TraceNode]] = {}
        self.waiting_on: list[Path] = []

    def charge(self, work: int) -> None:
        self.work += work
        if self.work > self.max_work >= 0:
            raise _TooMuchWork

    def bind(self, tree: NameTree[Path | BoundName], depth: int) -> tuple[_Result, TraceNode]:
        self.steps += 1
        if self.steps > self.max_steps:
            raise _TooManySteps
        self.charge(1)
        if depth > self.max_depth:
            at = show(tree)
            if len(at) > 120:
                at = at[:117] + "..."
            message = (
                f"Max recursion level: {self.max_depth} reached in Namer lookup "
                f"(at {at}; do the dtab's rules rewrite into each other?)"
            )
            if not self.tracing:
                return _Failed(message), _NO_TRACE
            return _Failed(message), TraceNode(
                _kind(tree), show(tree), depth, "error", f"error: {message}", note=message
            )
        if isinstance(tree, Leaf):
            value = tree.value
            if isinstance(value, BoundName):
                if not self.tracing:
                    return Leaf(value), _NO_TRACE
                text = value.describe()
                return Leaf(value), TraceNode("bound", text, depth, "bound", text)
            if not self.memo:
                return self.bind_path(value, depth)
            key = (value, depth)
            done = self.done.get(key)
            if done is None:
                done = self.done[key] = self.bind_path(value, depth)
            return done
        if isinstance(tree, Alt):
            if len(tree.trees) == 1:
                return self.bind(tree.trees[0], depth)
            return self.bind_alt(tree, depth)
        if isinstance(tree, Union):
            if not tree.branches:  # Finagle: Union() binds to Neg
                if not self.tracing:
                    return NEG, _NO_TRACE
                return NEG, TraceNode(
                    "union", show(tree), depth, "neg", "~", note="an empty union is negative"
                )
            if len(tree.branches) == 1:
                return self.bind(tree.branches[0].tree, depth)
            return self.bind_union(tree, depth)
        if not self.tracing:
            return tree, _NO_TRACE
        return tree, TraceNode(_kind(tree), show(tree), depth, _outcome(tree), _result_text(tree))

    def bind_path(self, path: Path, depth: int) -> tuple[_Result, TraceNode]:
        found, work = self.dtab.matches_with_work(path)
        self.charge(work)
        tracing = self.tracing
        text = path.show() if tracing else ""
        dentries = tuple(DentryStep(m.index, m.dentry.show(), show(m.rewrite)) for m in found) if tracing else ()
        if not found:
            rewritten: NameTree[Path] = NEG
        elif len(found) == 1:
            rewritten = found[0].rewrite
        else:
            rewritten = Alt(tuple(m.rewrite for m in found))
        if not isinstance(rewritten, Neg):
            result, child = self.bind(rewritten, depth + 1)
            if not tracing:
                return result, _NO_TRACE
            return result, _node("path", text, depth, result, dentries=dentries, children=(child,))

        note = "" if not found else "the dtab gives ~ here, so the namers are asked"
        asked: list[NamerStep] = []
        for prefix, namer in self.namers:
            if not path.starts_with(prefix):
                continue
            rest = path.drop(len(prefix))
            answer = namer.lookup(rest)
            if answer is None:
                if prefix not in self.waiting_on:
                    self.waiting_on.append(prefix)
                if not tracing:
                    return _PENDING, _NO_TRACE
                asked.append(NamerStep(prefix, rest, "pending"))
                return _PENDING, _node(
                    "path", text, depth, _PENDING, dentries=dentries, namers=tuple(asked), note=note
                )
            if tracing:
                asked.append(NamerStep(prefix, rest, describe(answer)))
            if isinstance(answer, Neg):
                continue
            result, child = self.bind(answer, depth + 1)
            if not tracing:
                return result, _NO_TRACE
            return result, _node(
                "path",
                text,
                depth,
                result,
                dentries=dentries,
                namers=tuple(asked),
                children=(child,),
                note=note,
            )
        if path.starts_with(SYSTEM_PREFIX):
            rest = path.drop(1)
            try:
                answer = SYSTEM_NAMER.lookup(rest)
            except SystemNamerError as exc:
                failed = _Failed(str(exc))
                if not tracing:
                    return failed, _NO_TRACE
                asked.append(NamerStep(SYSTEM_PREFIX, rest, f"error: {exc}"))
                return failed, _node(
                    "path", text, depth, failed, dentries=dentries, namers=tuple(asked), note=note
                )
            result, child = self.bind(answer, depth + 1)
            if not tracing:
                return result, _NO_TRACE
            asked.append(NamerStep(SYSTEM_PREFIX, rest, describe(answer)))
            return result, _node(
                "path",
                text,
                depth,
                result,
                dentries=dentries,
                namers=tuple(asked),
                children=(child,),
                note=note,
            )
        if not tracing:
            return NEG, _NO_TRACE
        ending = "no namer knows this name" if asked else "no namer serves this path"
        note = f"{note}; {ending}" if note else ending
        return NEG, _node("path", text, depth, NEG, dentries=dentries, namers=tuple(asked), note=note)

    def bind_alt(self, tree: Alt[Path | BoundName], depth: int) -> tuple[_Result, TraceNode]:
        children: list[TraceNode] = []
        result: _Result = NEG
        for alternative in tree.trees:
            result, child = self.bind(alternative, depth)
            children.append(child)
            if not isinstance(result, Neg):
                break
        if not self.tracing:
            return result, _NO_TRACE
        skipped = tuple(show(t) for t in tree.trees[len(children) :])
        if isinstance(result, Neg):
            note = "every alternative is negative"
        elif isinstance(result, Fail):
            note = f"alternative {len(children)} fails, which stops the fallback"
        elif isinstance(result, _Pending | _Failed):
            note = f"alternative {len(children)} is {_outcome(result)}; the rest cannot be decided before it"
        else:
            note = f"alternative {len(children)} answers"
        return result, _node(
            "alt", show(tree), depth, result, children=tuple(children), skipped=skipped, note=note
        )

    def bind_union(self, tree: Union[Path | BoundName], depth: int) -> tuple[_Result, TraceNode]:
        children: list[TraceNode] = []
        oks: list[Weighted[BoundName]] = []
        first_failure: _Failed | None = None
        for branch in tree.branches:
            result, child = self.bind(branch.tree, depth)
            children.append(child)
            if isinstance(result, _Failed):
                first_failure = first_failure or result
            elif not isinstance(result, _Pending):
                oks.append(Weighted(branch.weight, result))
        union_result: _Result
        if oks:
            union_result = simplify(Union(tuple(oks)))
        elif first_failure is not None:
            union_result = first_failure
        else:
            union_result = _PENDING
        if not self.tracing:
            return union_result, _NO_TRACE
        dropped = sum(1 for c in children if c.outcome in ("neg", "fail", "pending", "error"))
        note = (
            f"{dropped} of {len(children)} branches dropped (neg, fail, pending or error)" if dropped else ""
        )
        return union_result, _node(
            "union",
            show(tree),
            depth,
            union_result,
            children=tuple(children),
            weights=tuple(b.weight for b in tree.branches),
            note=note,
        )


def _node(
    kind: StepKind,
    text: str,
    depth: int,
    result: _Result,
    *,
    dentries: tuple[DentryStep, ...] = (),
    namers: tuple[NamerStep, ...] = (),
    children: tuple[TraceNode, ...] = (),
    weights: tuple[float, ...] = (),
    skipped: tuple[str, ...] = (),
    note: str = "",
) -> TraceNode:
    return TraceNode(
        kind,
        text,
        depth,
        _outcome(result),
        _result_text(result),
        dentries,
        namers,
        children,
        weights,
        skipped,
        note,
    )


def _kind(tree: NameTree[Path | BoundName]) -> StepKind:
    if isinstance(tree, Leaf):
        return "bound" if isinstance(tree.value, BoundName) else "path"
    if isinstance(tree, Alt):
        return "alt"
    if isinstance(tree, Union):
        return "union"
    if isinstance(tree, Neg):
        return "neg"
    if isinstance(tree, Fail):
        return "fail"
    return "empty"


def _outcome(result: _Result) -> Outcome:
    if isinstance(result, _Pending):
        return "pending"
    if isinstance(result, _Failed):
        return "error"
    if isinstance(result, Leaf):
        return "bound"
    if isinstance(result, Union):
        return "union"
    if isinstance(result, Neg):
        return "neg"
    if isinstance(result, Fail):
        return "fail"
    if isinstance(result, Empty):
        return "empty"
    raise AssertionError("binding never yields an Alt")


def _result_text(result: _Result) -> str:
    if isinstance(result, _Pending):
        return "pending"
    if isinstance(result, _Failed):
        return f"error: {result.message}"
    return describe(result)


def _render(node: TraceNode, first: str, rest: str, lines: list[str]) -> None:
    """Append `node` to `lines`: its first line starts with `first`, the others with `rest`.

    A chain of rewrites stays at one indentation level; alternatives and union branches are
    indented and numbered, each followed by what it bound to.
    """
    lines.append(first + node.text)
    step = rest + "  "
    if node.kind == "path":
        for d in node.dentries:
            lines.append(f"{step}dentry #{d.index} {d.dentry}  ->  {d.rewrite}")
        if not node.dentries and node.outcome != "error":
            lines.append(f"{step}no dentry matches")
        for n in node.namers:
            lines.append(f"{step}namer {n.prefix.show()} asked for {n.path.show()}  ->  {n.answer}")
        if node.note:
            lines.append(f"{step}({node.note})")
        if node.children:
            child = node.children[0]
            if child.kind == "path":
                _render(child, rest, rest, lines)
            elif child.kind in ("alt", "union"):
                _render(child, step, step, lines)
        return
    if node.kind == "alt":
        total = len(node.children) + len(node.skipped)
        for k, child in enumerate(node.children, 1):
            label = f"{k}/{total} "
            _render_branch(
                child, step + label, step + " " * len(label), _ALT_VERDICTS.get(child.outcome, ""), lines
            )
        for k, text in enumerate(node.skipped, len(node.children) + 1):
            lines.append(f"{step}{k}/{total} {text}  (not tried)")
        return
    if node.kind == "union":
        total_weight = sum(node.weights)
        for weight, child in zip(node.weights, node.children, strict=True):
            share = weight / total_weight if total_weight > 0 else 1.0 / len(node.weights)
            label = f"{show_weight(weight)} * "
            verdict = (
                "  (dropped from the union)" if child.outcome in _DROPPED else f"  ({share:.0%} as written)"
            )
            _render_branch(child, step + label, step + " " * len(label), verdict, lines)


_TERMINAL: Final = frozenset({"bound", "neg", "fail", "empty"})
_DROPPED: Final = frozenset({"neg", "fail", "pending", "error"})
_ALT_VERDICTS: Final = {
    "neg": "  (negative: the next alternative is tried)",
    "fail": "  (fail: no further alternative is tried)",
    "pending": "  (pending: the next alternatives wait for it)",
    "error": "  (error)",
}


def _render_branch(node: TraceNode, first: str, rest: str, verdict: str, lines: list[str]) -> None:
    """An alternative or a union branch, then what it bound to."""
    if node.kind in _TERMINAL:
        lines.append(f"{first}{node.text}{verdict}")
        return
    _render(node, first, rest, lines)
    lines.append(f"{rest}= {node.result}{verdict}")


def _flatten(tree: NameTree[BoundName], p: float, out: list[tuple[float, Choice]]) -> None:
    if isinstance(tree, Leaf):
        out.append((p, tree.value))
    elif isinstance(tree, Union):
        if not tree.branches:
            out.append((p, NEG))
            return
        total = sum(b.weight for b in tree.branches)
        if total > 0:
            for b in tree.branches:
                if b.weight > 0:
                    _flatten(b.tree, p * b.weight / total, out)
        else:
            share = p / len(tree.branches)
            for b in tree.branches:
                _flatten(b.tree, share, out)
    elif isinstance(tree, Alt):
        for alternative in tree.trees:
            s = simplify(alternative)
            if not isinstance(s, Neg):
                _flatten(s, p, out)
                return
        out.append((p, NEG))
    elif isinstance(tree, Neg):
        out.append((p, NEG))
    elif isinstance(tree, Fail):
        out.append((p, FAIL))
    else:
        out.append((p, EMPTY))
