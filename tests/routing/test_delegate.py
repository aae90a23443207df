"""Delegation: pending namers, namer order, the trace, and properties of binding."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from routing.delegate import (
    _HEADER_CACHE,
    HEADER_CACHE_SIZE,
    LOCAL_DTAB_MAX_WORK,
    Binding,
    DelegationError,
    TraceNode,
    bind,
    describe,
    parse_dtab_header,
)
from routing.dtab import Dentry, Dtab, Prefix
from routing.namer import BoundName
from routing.nametree import EMPTY, FAIL, NEG, Alt, Empty, Fail, Leaf, Neg, Union, Weighted
from routing.parser import DtabSyntaxError, parse_dtab
from routing.path import Path
from tests.routing.fakes import FakeNamer, k8s_namer, namers
from tests.routing.strategies import small_dtabs, small_paths

B = parse_dtab("/k8s => /#/io.l5d.k8s; /srv => /k8s/prod/http; /svc => /srv;")
K = "/#/io.l5d.k8s/prod/http"


def run(dtab: Dtab | str, path: str, *fakes: FakeNamer) -> Binding:
    d = parse_dtab(dtab) if isinstance(dtab, str) else dtab
    return bind(d, Path.read(path), namers(*(fakes or (k8s_namer(),))))


# -- namers --------------------------------------------------------------------------------


def test_pending_namer_makes_the_binding_pending() -> None:
    fs = FakeNamer("/#/fs", pending=["accounts"])
    binding = run("/svc => /#/fs", "/svc/accounts", fs)
    assert binding.pending
    assert binding.tree == NEG
    assert binding.waiting_on == (Path.read("/#/fs"),)
    assert binding.trace.pending and binding.trace.result == "pending"


def test_pending_first_alternative_blocks_the_fallback() -> None:
    fs = FakeNamer("/#/fs", ["b"], pending=["a"])
    binding = run("/svc => /#/fs/a | /#/fs/b", "/svc", fs)
    assert binding.pending
    assert fs.asked == [Path.read("/a")]


def test_pending_union_branch_is_left_out_until_known() -> None:
    fs = FakeNamer("/#/fs", ["b"], pending=["a"])
    binding = run("/svc => /#/fs/a & /#/fs/b", "/svc", fs)
    assert not binding.pending
    assert describe(binding.tree) == "/#/fs/b"
    assert binding.waiting_on == (Path.read("/#/fs"),)


def test_union_of_only_pending_branches_is_pending() -> None:
    fs = FakeNamer("/#/fs", pending=["a", "b"])
    assert run("/svc => /#/fs/a & /#/fs/b", "/svc", fs).pending


def test_namers_are_asked_longest_prefix_first() -> None:
    wide = FakeNamer("/#/k8s", ["prod/users"])
    narrow = FakeNamer("/#/k8s/prod", ["users"])
    binding = bind(Dtab(), Path.read("/#/k8s/prod/users"), {wide.prefix: wide, narrow.prefix: narrow})
    assert describe(binding.tree) == "/#/k8s/prod/users"
    assert narrow.asked == [Path.read("/users")] and wide.asked == []


def test_namer_answering_neg_passes_to_the_next_namer() -> None:
    narrow = FakeNamer("/#/k8s/prod", [])
    wide = FakeNamer("/#/k8s", ["prod/users"])
    binding = bind(Dtab(), Path.read("/#/k8s/prod/users/x"), namers(wide, narrow))
    assert describe(binding.tree) == "/#/k8s/prod/users (residual /x)"
    assert narrow.asked == [Path.read("/users/x")]
    assert wide.asked == [Path.read("/prod/users/x")]
    assert [n.answer for n in binding.trace.root.namers] == ["~", "/#/k8s/prod/users (residual /x)"]


def test_alt_over_two_namers_falls_back_from_the_first() -> None:
    a = FakeNamer("/#/x", [])
    b = FakeNamer("/#/y", ["users"])
    dtab = parse_dtab("/svc => /#/x | /#/y")
    binding = bind(dtab, Path.read("/svc/users"), namers(a, b))
    assert describe(binding.tree) == "/#/y/users"
    assert a.asked == [Path.read("/users")]


def test_namer_can_answer_a_tree() -> None:
    bound_a = BoundName(Path.read("/#/fs/a"))
    bound_b = BoundName(Path.read("/#/fs/b"))
    answer = Union((Weighted(3.0, Leaf(bound_a)), Weighted(1.0, Alt((NEG, Leaf(bound_b))))))
    fs = FakeNamer("/#/fs", answers={"/svc": answer})
    assert describe(run("/x => /#/fs/svc", "/x", fs).tree) == "3.00*/#/fs/a & /#/fs/b"


def test_dtab_entry_for_a_namer_path_wins_over_the_namer() -> None:
    fs = FakeNamer("/#/fs", ["a", "b"])
    binding = run("/#/fs/a => /#/fs/b", "/#/fs/a", fs)
    assert describe(binding.tree) == "/#/fs/b"


def test_dtab_neg_for_a_path_asks_the_namers() -> None:
    fs = FakeNamer("/#/fs", ["a"])
    binding = run("/#/fs/a => ~", "/#/fs/a", fs)
    assert describe(binding.tree) == "/#/fs/a"
    assert binding.trace.root.note.startswith("the dtab gives ~ here")


def test_too_many_nodes_is_an_error() -> None:
    with pytest.raises(DelegationError, match="visited more than 500 nodes") as info:
        bind(parse_dtab("/a => /a/x & /a/y"), Path.read("/a"), {}, max_steps=500)
    assert info.value.trace.error is not None


# -- the trace -----------------------------------------------------------------------------


def test_trace_lists_dentries_alternatives_and_namers() -> None:
    binding = run(B + parse_dtab("/svc/users => /srv/users-v3;"), "/svc/users/v1")
    root = binding.trace.root
    assert root.kind == "path" and root.text == "/svc/users/v1"
    assert [(d.index, d.dentry, d.rewrite) for d in root.dentries] == [
        (3, "/svc/users=>/srv/users-v3", "/srv/users-v3/v1"),
        (2, "/svc=>/srv", "/srv/users/v1"),
    ]
    (alt,) = root.children
    assert alt.kind == "alt"
    assert [c.outcome for c in alt.children] == ["neg", "bound"]
    assert alt.result == f"{K}/users (residual /v1)"

    def deepest(node: TraceNode) -> TraceNode:  # follow single-child path chains
        while node.children and node.kind == "path":
            node = node.children[0]
        return node

    rejected = alt.children[0]
    while rejected.children:
        rejected = rejected.children[0]
    assert rejected.namers[0].prefix == Path.read("/#/io.l5d.k8s")
    assert rejected.namers[0].path == Path.read("/prod/http/users-v3/v1")
    assert rejected.namers[0].answer == "~"
    assert deepest(alt.children[1]).kind == "bound"


def test_trace_records_skipped_alternatives_and_union_weights() -> None:
    binding = run(
        B + parse_dtab("/svc/users => 0.95*/srv/users & 0.05*/srv/nope | /srv/users-v2;"), "/svc/users"
    )
    (alt,) = binding.trace.root.children  # (the rule's tree) | /srv/users
    assert alt.skipped == ("/srv/users",)
    inner = alt.children[0]  # union | /srv/users-v2
    assert inner.kind == "alt" and inner.skipped == ("/srv/users-v2",)
    union = inner.children[0]
    assert union.kind == "union" and union.weights == (0.95, 0.05)
    assert [c.outcome for c in union.children] == ["bound", "neg"]
    assert "1 of 2 branches dropped" in union.note


def test_trace_json_is_serialisable_with_stable_keys() -> None:
    binding = run(B + parse_dtab("/svc/users => 9*/srv/users & /srv/users-v2 | !;"), "/svc/users")
    data = binding.trace.to_json()
    assert list(data) == ["path", "dtab", "result", "pending", "error", "root"]
    root = data["root"]
    assert isinstance(root, dict)
    assert list(root) == [
        "kind",
        "text",
        "depth",
        "outcome",
        "result",
        "dentries",
        "namers",
        "children",
        "weights",
        "skipped",
        "note",
    ]
    assert data["result"] == f"9.00*{K}/users & {K}/users-v2"
    assert json.loads(json.dumps(data)) == data


def test_render_explains_each_step() -> None:
    text = run(B + parse_dtab("/svc/users => /srv/users-v3;"), "/svc/users").trace.render()
    assert "delegating /svc/users" in text
    assert "#3 /svc/users=>/srv/users-v3" in text
    assert "dentry #3 /svc/users=>/srv/users-v3  ->  /srv/users-v3" in text
    assert "namer /#/io.l5d.k8s asked for /prod/http/users-v3  ->  ~" in text
    assert "(negative: the next alternative is tried)" in text
    assert text.rstrip().endswith(f"result: {K}/users")


def test_render_marks_fail_and_untried_alternatives() -> None:
    text = run(B + parse_dtab("/svc/users => !;"), "/svc/users").trace.render()
    assert "1/2 !  (fail: no further alternative is tried)" in text
    assert "2/2 /srv/users  (not tried)" in text
    assert text.rstrip().endswith("result: !")


def test_render_of_pending_and_errors() -> None:
    pending = run("/svc => /#/fs", "/svc/a", FakeNamer("/#/fs", pending=["a"])).trace.render()
    assert "namer /#/fs asked for /a  ->  pending" in pending
    assert pending.rstrip().endswith("result: pending (a namer has not answered yet)")
    with pytest.raises(DelegationError) as info:
        run("/a => /b; /b => /a", "/a")
    assert (
        info.value.trace.render()
        .rstrip()
        .endswith(
            "result: error: Max recursion level: 100 reached in Namer lookup "
            "(at /b; do the dtab's rules rewrite into each other?)"
        )
    )


# -- properties ------------------------------------------------------------------------------

WORLD = {"a", "b/c", "n"}


def world() -> dict[Path, FakeNamer]:
    return namers(FakeNamer("/#", sorted(WORLD)), FakeNamer("/n", ["a"], pending=["b"]))


def outcome(dtab: Dtab, path: Path) -> tuple[str, object]:
    try:
        binding = bind(dtab, path, world(), max_depth=8, max_steps=400)
    except DelegationError as exc:
        return ("error", exc.message)
    return ("ok", (binding.tree, binding.pending, binding.waiting_on, binding.trace.to_json()))


@settings(max_examples=150, deadline=None)
@given(small_dtabs, small_paths)
def test_delegation_is_deterministic(dtab: Dtab, path: Path) -> None:
    assert outcome(dtab, path) == outcome(dtab, path)


@settings(max_examples=150, deadline=None)
@given(small_dtabs, small_paths)
def test_fail_dentry_stops_every_fallback(dtab: Dtab, path: Path) -> None:
    with_fail = dtab + Dtab((Dentry(Prefix.of_path(path), FAIL),))
    kind, value = outcome(with_fail, path)
    assert kind == "ok"
    assert isinstance(value, tuple) and value[0] == FAIL and value[1] is False


@settings(max_examples=150, deadline=None)
@given(small_dtabs, small_paths)
@example(parse_dtab_header("/* => ~"), Path(("#", "a")))
def test_neg_dentry_falls_back_to_what_was_there(dtab: Dtab, path: Path) -> None:
    with_neg = dtab + Dtab((Dentry(Prefix.of_path(path), NEG),))
    before, after = outcome(dtab, path), outcome(with_neg, path)
    found = dtab.matches(path)
    if len(found) == 1 and isinstance(found[0].rewrite, Neg):
        # Finagle's one exception: the lookup now gives Alt(~, ~), which binds to ~ but is not
        # ~ itself, so the namers are not asked (found by hypothesis: `/* => ~` and `/#/a`).
        assert after[0] == "ok" and isinstance(after[1], tuple) and after[1][0] == NEG
        return
    # The step budget (max_steps) is a safety valve, not semantics: the extra `Alt(~, ...)` at
    # every lookup of `path` adds nodes, so a binding that fitted in the budget may not fit any
    # more (found by hypothesis: `/b=>/a; /a=>1*/a/n & 1*(~|~); /*/n=>/b|/a` and `/a`).
    assume(not any(kind == "error" and "visited more than" in str(value) for kind, value in (before, after)))
    assert before[0] == after[0]
    if before[0] == "ok":
        assert isinstance(before[1], tuple) and isinstance(after[1], tuple)
        assert before[1][:3] == after[1][:3]


@settings(max_examples=100, deadline=None)
@given(small_dtabs, small_paths, small_paths)
@example(parse_dtab_header("/a => ~; /* => 1.0 * ~ & 1.0 * /a"), Path.read("/a"), Path.read("/b"))
def test_neg_alternative_is_the_same_as_no_alternative(dtab: Dtab, path: Path, target: Path) -> None:
    plain = dtab + Dtab((Dentry(Prefix.of_path(path), Leaf(target)),))
    with_neg = dtab + Dtab((Dentry(Prefix.of_path(path), Alt((NEG, Leaf(target)))),))
    a, b = outcome(plain, path), outcome(with_neg, path)
    # As in the test above, the step budget is not semantics. The example: `/a` and `/b` both
    # lead back to `/a` through the union `~ & /a`, which binds to `~` (a union keeps its `~`
    # branch and drops the one that fails at the depth limit, as Finagle's `bindUnion`), so
    # both dtabs bind `/a` to `~`; but naively the nodes double at every level, and the extra
    # `Alt(~, /b)` pushed the second binding past 400 nodes. Reusing a path's binding within
    # one `bind` now keeps both far under the budget.
    assume(not any(kind == "error" and "visited more than" in str(value) for kind, value in (a, b)))
    assert a[0] == b[0]
    if a[0] == "ok":
        assert isinstance(a[1], tuple) and isinstance(b[1], tuple)
        assert a[1][:3] == b[1][:3]


def test_the_falsifying_example_of_the_neg_alternative_property_binds_to_neg() -> None:
    """Both dtabs of that example bind `/a` to `~`, well within the properties' 400 steps (the
    second took more than 400 before paths were reused within a binding)."""
    for text in ("/a => ~; /* => ~ & /a; /a => /b", "/a => ~; /* => ~ & /a; /a => ~ | /b"):
        kind, value = outcome(parse_dtab(text), Path.read("/a"))
        assert kind == "ok" and isinstance(value, tuple) and value[:3] == (NEG, False, ()), text


@settings(max_examples=100, deadline=None)
@given(small_dtabs, small_paths)
def test_bound_tree_holds_only_bound_shapes(dtab: Dtab, path: Path) -> None:
    kind, value = outcome(dtab, path)
    if kind != "ok":
        return
    assert isinstance(value, tuple)

    def check(tree: object) -> None:
        assert not isinstance(tree, Alt)
        if isinstance(tree, Union):
            assert len(tree.branches) >= 2
            for b in tree.branches:
                assert not isinstance(b.tree, Neg | Fail)
                check(b.tree)
        elif isinstance(tree, Leaf):
            assert isinstance(tree.value, BoundName)
        else:
            assert isinstance(tree, Neg | Fail | Empty)

    check(value[0])


# -- bounded work: reusing bound paths, the work limit, trace-less binding ---------------------


def full(dtab: Dtab, path: Path, **kwargs: object) -> tuple[str, object]:
    """`outcome` with the work, and options passed to `bind`."""
    try:
        binding = bind(dtab, path, world(), max_depth=8, max_steps=400, **kwargs)  # type: ignore[arg-type]
    except DelegationError as exc:
        return ("error", exc.message)
    return ("ok", (binding.tree, binding.pending, binding.waiting_on, binding.trace.to_json(), binding.work))


def is_budget_error(result: tuple[str, object]) -> bool:
    return result[0] == "error" and ("visited more than" in str(result[1]) or "steps of work" in str(result[1]))


@settings(max_examples=200, deadline=None)
@given(small_dtabs, small_paths)
@example(parse_dtab_header("/a => ~; /* => 1.0 * ~ & 1.0 * /a; /a => ~ | /b"), Path.read("/a"))
def test_reusing_bound_paths_gives_the_same_result_as_binding_them_again(dtab: Dtab, path: Path) -> None:
    reused, again = full(dtab, path), full(dtab, path, memo=False)
    if is_budget_error(again):  # binding again ran out of steps where reusing may not: nothing to compare
        return
    assert reused[0] == again[0]
    if reused[0] == "error":
        assert reused == again
    else:
        assert isinstance(reused[1], tuple) and isinstance(again[1], tuple)
        assert reused[1][:4] == again[1][:4]  # tree, pending, waiting_on and the whole trace
        assert reused[1][4] <= again[1][4]


@settings(max_examples=150, deadline=None)
@given(small_dtabs, small_paths, st.integers(1, 300))
def test_the_work_limit_is_deterministic_and_changes_no_result(dtab: Dtab, path: Path, limit: int) -> None:
    limited = full(dtab, path, max_work=limit)
    assert full(dtab, path, max_work=limit) == limited
    unlimited = full(dtab, path)
    if limited[0] == "error" and "steps of work" in str(limited[1]):
        # only a binding that needs more work than the limit fails for it
        assert unlimited[0] == "error" or (isinstance(unlimited[1], tuple) and unlimited[1][4] > limit)
    else:
        assert limited == unlimited
        if unlimited[0] == "ok":
            assert isinstance(unlimited[1], tuple) and unlimited[1][4] <= limit


@settings(max_examples=150, deadline=None)
@given(small_dtabs, small_paths)
def test_binding_without_a_trace_gives_the_same_result(dtab: Dtab, path: Path) -> None:
    traced, bare = full(dtab, path), full(dtab, path, trace=False)
    assert traced[0] == bare[0]
    if traced[0] == "error":
        assert traced == bare
    else:
        assert isinstance(traced[1], tuple) and isinstance(bare[1], tuple)
        assert traced[1][:3] == bare[1][:3] and traced[1][4] == bare[1][4]


def alternation_chain(n: int) -> Dtab:
    """The header of issue 13: `/xi => /x(i+1) | /x(i+1)`, n dentries (2**n nodes if bound naively)."""
    return parse_dtab("; ".join(f"/x{i} => /x{i + 1} | /x{i + 1}" for i in range(n)))


def test_work_on_chained_alternations_grows_linearly() -> None:
    work = [bind(alternation_chain(n), Path.read("/x0"), {}).work for n in range(1, 60)]
    steps = {b - a for a, b in zip(work, work[1:], strict=False)}
    # each link adds the same work: its lookup, its Alt, its first /x(i+1) and the reused second
    assert len(steps) == 1 and steps.pop() < 20
    # so 40 links (1.5 KB), which used to exhaust 10,000 nodes, now fit in the local limit
    binding = bind(alternation_chain(40), Path.read("/x0"), {}, max_work=LOCAL_DTAB_MAX_WORK)
    assert binding.tree == NEG


def test_work_limit_error_names_the_limit() -> None:
    dtab = parse_dtab("; ".join(f"/x{i} => /x{i + 1}/a | /x{i + 1}/b" for i in range(30)))
    with pytest.raises(DelegationError) as info:
        bind(dtab, Path.read("/x0"), {}, max_work=LOCAL_DTAB_MAX_WORK, trace=False)
    assert info.value.message == (
        f"binding /x0 needed more than {LOCAL_DTAB_MAX_WORK} steps of work, the limit for a binding "
        "with a per-request dtab (l5d-dtab, l5d-ctx-dtab)"
    )


def test_a_long_path_costs_work() -> None:
    """A rule that lengthens the path on every rewrite costs in proportion to the path's length
    (it took 5 s to fail at the depth limit when only nodes were counted)."""
    dtab = parse_dtab("/a => " + "/a" * 1000 + " | " + "/a" * 900)
    with pytest.raises(DelegationError, match="steps of work"):
        bind(dtab, Path.read("/a"), {}, max_work=LOCAL_DTAB_MAX_WORK, trace=False)


# -- headers ---------------------------------------------------------------------------------


def test_parse_dtab_header_and_its_cache() -> None:
    first = parse_dtab_header("/svc/users => /srv/users-v2")
    assert parse_dtab_header("/svc/users => /srv/users-v2") is first
    assert first.show() == "/svc/users=>/srv/users-v2"
    with pytest.raises(DtabSyntaxError):
        parse_dtab_header("/svc/users => ")


def test_a_malformed_header_is_parsed_once() -> None:
    text = "/svc/users => /srv/users-v2 |"
    with pytest.raises(DtabSyntaxError) as first:
        parse_dtab_header(text)
    cached = _HEADER_CACHE[text]
    with pytest.raises(DtabSyntaxError) as second:
        parse_dtab_header(text)
    assert _HEADER_CACHE[text] is cached
    assert second.value.short == first.value.short and str(second.value) == str(first.value)
    assert second.value is not first.value


def test_header_cache_is_bounded() -> None:
    first = parse_dtab_header("/evicted => /x")
    for i in range(HEADER_CACHE_SIZE + 1):
        assert parse_dtab_header(f"/n{i} => /m").dentries[0].prefix == Prefix((f"n{i}",))
    again = parse_dtab_header("/evicted => /x")
    assert again == first and again is not first


def test_empty_alt_and_union_bind_to_neg() -> None:
    fs = FakeNamer("/#/fs", answers={"/a": Alt(()), "/b": Union(())})
    for target in ("a", "b"):
        binding = run(f"/x => /#/fs/{target}", "/x", fs)
        assert binding.tree == NEG and not binding.pending


def test_empty_and_constants_bind_to_themselves() -> None:
    for text, expected in (("~", NEG), ("!", FAIL), ("$", EMPTY)):
        assert run(f"/svc => {text}", "/svc").tree == expected
