"""VM legality (difftest.legality): each rule refuses what the VM never does and lets the
legal neighbour through."""

from __future__ import annotations

import pytest

from difftest.legality import RULES, VMModel, first_problem, is_vm_legal, legal_stream_problem, vm_legality_problems
from difftest.machine import KERNEL_MIN, USER_MAX, USER_MIN
from difftest.ops import (
    Access,
    Collect,
    Create,
    Destroy,
    Enter,
    KEnter,
    KRemove,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
)
from difftest.streams import Stream

VA, PA, PA2 = 0x00400000, 0x00200000, 0x00201000
KVA = KERNEL_MIN + 0x00400000
RW = 3


def enter(pmap=1, va=VA, pa=PA, wired=False, prot=RW):
    return Enter(pmap, va, pa, prot, 0, wired, False)


def rule_of(ops):
    problems = vm_legality_problems(ops)
    assert problems, "expected a problem"
    return problems[0].split(": ", 1)[1].split(":", 1)[0]


LEGAL = [
    [Create(), enter(), Remove(1, USER_MIN, USER_MAX), Destroy(1)],
    [Create(), enter(), Reference(1), Destroy(1)],  # not the last reference
    [Create(), enter(wired=True), Unwire(1, VA), PageProtect(PA, 0)],
    [Create(), enter(wired=True), PageProtect(PA, 1)],  # write-protecting a wired page is fine
    [Create(), enter(wired=True), PageProtect(PA, 3)],  # a no-op
    [Create(), enter(wired=True), enter(wired=True, prot=1)],  # same page, still wired
    [Create(), enter(), enter(pa=PA2)],  # replace an unwired mapping
    [Create(), enter(wired=True), Remove(1, VA, VA + 4096), enter(pa=PA2)],
    [Create(), enter(wired=True), Protect(1, VA, VA + 4096, 0), PageProtect(PA, 0)],
    [Create(), enter(), Collect(1), Remove(1, VA, VA + 4096), Destroy(1)],
    [KEnter(KVA, PA, RW), KRemove(KVA, 4096), enter(0, KVA), Remove(0, KVA, KVA + 4096)],
    [enter(0, KVA, wired=True), Unwire(0, KVA), KEnter(KVA + 0x1000000, PA2, RW)],
    [Create(), enter(), Create(), enter(2, pa=PA), PageProtect(PA, 0), Destroy(1), Destroy(2)],
    [Create(), Access(1, VA, "w"), Enter(1, VA, PA, RW, 0, False, True), Collect(1)],
]

ILLEGAL = [
    ([Create(), enter(wired=True), PageProtect(PA, 0)], "wired-revoke"),
    ([Create(), enter(wired=True), PageProtect(PA, 4)], "wired-revoke"),  # x only: still a revoke
    ([Create(), enter(), Create(), enter(2, wired=True), PageProtect(PA, 0)], "wired-revoke"),
    ([Create(), enter(), Destroy(1)], "destroy-nonempty"),
    ([Create(), enter(), Reference(1), Destroy(1), Destroy(1)], "destroy-nonempty"),
    ([Create(), Unwire(1, VA)], "unwire-unwired"),
    ([Create(), enter(), Unwire(1, VA)], "unwire-unwired"),
    ([KEnter(KVA, PA, RW), Unwire(0, KVA)], "unwire-unwired"),
    ([Create(), enter(wired=True), enter(pa=PA2, wired=True)], "wired-replace"),
    ([Create(), enter(wired=True), enter(wired=False)], "wired-replace"),
    ([enter(0, KVA), KEnter(KVA, PA2, RW)], "kenter-managed"),
    ([KEnter(KVA, PA, RW), enter(0, KVA)], "kenter-managed"),
    ([KEnter(KVA, PA, RW), Remove(0, KVA - 4096, KVA + 4096)], "kenter-managed"),
    ([KEnter(KVA, PA, RW), Protect(0, KVA, KVA + 4096, 1)], "kenter-managed"),
    ([enter(0, KVA), KRemove(KVA, 8192)], "kenter-managed"),
    ([Collect(0)], "collect-kernel"),
    ([Create(), Destroy(1), Collect(1)], "pmap-lifetime"),
    ([Destroy(0)], "pmap-lifetime"),
]


@pytest.mark.parametrize("ops", LEGAL)
def test_legal(ops):
    assert vm_legality_problems(ops) == []
    assert is_vm_legal(Stream(tuple(ops))) and first_problem(ops) is None


@pytest.mark.parametrize("ops,rule", ILLEGAL)
def test_illegal(ops, rule):
    assert rule in RULES
    assert rule_of(ops) == rule
    problem = first_problem(ops)
    assert problem.startswith(f"op {len(ops) - 1} ({ops[-1].name}): {rule}:")


def test_every_rule_is_exercised():
    assert {rule for _, rule in ILLEGAL} == set(RULES)


def test_all_problems_are_listed_and_first_only_stops():
    ops = [Create(), enter(wired=True), PageProtect(PA, 0), Unwire(1, VA + 4096), Collect(0)]
    problems = vm_legality_problems(ops)
    assert [p.split(": ")[1].split(":")[0] for p in problems] == ["wired-revoke", "unwire-unwired", "collect-kernel"]
    assert len(vm_legality_problems(ops, first_only=True)) == 1


def test_revoke_applies_after_a_problem():
    """The op is applied even when it is refused, so later ops are judged on what the
    stream did: after the (illegal) revoke the page has no mapping left."""
    ops = [Create(), enter(wired=True), PageProtect(PA, 0), Destroy(1)]
    assert len(vm_legality_problems(ops)) == 1


def test_legal_stream_problem_checks_the_file_rules_first():
    assert legal_stream_problem(Stream((Create(), enter())), 8192) is None
    assert "before its create" in legal_stream_problem(Stream((enter(),)), 8192)
    assert "wired-revoke" in legal_stream_problem(Stream((Create(), enter(wired=True), PageProtect(PA, 0))))


def test_model_queries():
    m = VMModel()
    for op in [Create(), enter(), enter(va=VA + 0x400000, pa=PA, wired=True), KEnter(KVA, PA2, RW)]:
        assert m.check(op) is None
        m.apply(op)
    assert m.in_range(1, USER_MIN, USER_MAX) == [VA, VA + 0x400000]
    assert m.in_range(1, VA + 4096, VA + 0x400000) == []
    assert m.mappings_of(PA) == [(1, VA), (1, VA + 0x400000)]
    assert m.is_wired_page(PA) and not m.is_wired_page(PA2)
    assert m.kentered_in_range(KERNEL_MIN, KERNEL_MIN + 0x1000000) == [KVA]
    m.apply(Remove(1, USER_MIN, USER_MAX))
    assert not m.is_wired_page(PA) and m.mappings_of(PA) == []


def test_view_unchanged_ops_leave_the_view_as_it_was():
    """``VIEW_UNCHANGED`` (what stream_stats skips applying) is what apply ignores; every
    other op type changes the view of some state."""
    from difftest.legality import VIEW_UNCHANGED
    from difftest.ops import OP_TYPES, ClearModify, ClearReference, Extract, IsModified, IsReferenced, Update

    def state(m):
        return repr((m.refs, m.next_id, m.maps, m.buckets, m.kmaps, m.kbuckets, m.pa_maps, m.pa_wired))

    def made():
        m = VMModel()
        for op in (Create(), enter(wired=True), enter(va=VA + 0x1000, pa=PA2), KEnter(KVA, PA, RW)):
            m.apply(op)
        return m

    quiet = [Access(1, VA, "w"), Extract(1, VA), Collect(1), ClearModify(PA), ClearReference(PA), IsModified(PA),
             IsReferenced(PA), Update(1)]
    assert {type(op) for op in quiet} == VIEW_UNCHANGED
    for op in quiet:
        m = made()
        before = state(m)
        m.apply(op)
        assert state(m) == before, op
    changing = [Create(), Reference(1), Destroy(1), enter(va=VA + 0x2000), Remove(1, VA, VA + 0x2000),
                Protect(1, VA, VA + 0x2000, 0), Unwire(1, VA), KEnter(KVA + 0x1000, PA, RW), KRemove(KVA, 0x1000),
                PageProtect(PA, 0)]
    assert {type(op) for op in changing} | VIEW_UNCHANGED == set(OP_TYPES.values())
    for op in changing:
        m = made()
        before = state(m)
        m.apply(op)
        assert state(m) != before, op
