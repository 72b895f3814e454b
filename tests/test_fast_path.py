"""The fast path (``difftest fuzz``'s default) against the precise path (per-op invariants,
what replay, shrink and ``--invariants per-op`` use): over many seeded streams, with the
built-ins and with every test-only broken backend, both report the same divergences,
field by field, at the same op; a break the fast path only sees at an audit is
localised by the precise re-run to the op the precise path names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from difftest.harness import Harness
from difftest.machine import PAGE_SIZE
from difftest.ops import PROT_R, PROT_W, Create, Enter, Extract, Remove
from difftest.plugins import PluginHost
from difftest.streams import make_stream

PLUGINS = Path(__file__).parent / "plugins"
BUILTINS = ["alpha-ref", "arm32-leaky", "arm32-refcount"]
# Every test-only backend that runs to the end of a stream (bug-hang and bug-exit do not).
BROKEN = ["bug-wrongpa", "bug-wrongpa-once", "bug-modloss", "bug-two", "bug-wiredcount", "bug-protect-raises",
          "bug-ptfree", "bug-extra", "bug-kpt-free", "bug-protect-past-eva", "bug-pv-unlink", "bug-ref-reset",
          "bug-pv-flags", "shrinkbug-extract", "shrinkbug-wiredpp", "shrinkbug-destroy"]


@pytest.fixture(scope="module")
def registry():
    sys.path.insert(0, str(PLUGINS))
    try:
        host = PluginHost()
        host.load(["broken_backends", "shrink_bugs"])
        yield host.registry
    finally:
        sys.path.remove(str(PLUGINS))


def everything(result):
    """All a run reports, in order, every field (observations and attribution included)."""
    divs = [(d.op_index, d.kind, d.backend, d.signature, d.op, d.message, d.location, d.attribution,
             tuple(sorted(d.observations.items())), d.traceback) for d in result.divergences]
    return divs, result.allowed, dict(result.allowed_counts), result.stopped, result.ops_run, result.checkpoints


def pair(registry, backends, **kw):
    fast = Harness.from_registry(registry, backends, "alpha-ref", fast=True, **kw)
    precise = Harness.from_registry(registry, backends, "alpha-ref", invariants_per_op=True, **kw)
    return fast, precise


@pytest.mark.parametrize("bug", [None] + BROKEN)
def test_fast_and_precise_report_the_same_on_seeded_streams(registry, bug):
    backends = BUILTINS + ([bug] if bug else [])
    fast, precise = pair(registry, backends, checkpoint_every=64)
    gen = registry.generators["random"]
    found = 0
    for seed in range(12):
        # small machines too, so that ENOMEM and out-of-memory paths are compared
        stream = gen.generate(seed, 300, 8192 if seed % 3 else 320)
        a, b = fast.run(stream), precise.run(stream)
        assert everything(a) == everything(b), (bug, seed)
        found += len(b.divergences)
        if bug is None:
            # the built-ins break no invariant: the fast path never needs the precise re-run
            assert not a.localised
    assert found  # arm32-leaky's leak at least: the comparison compared something


def test_a_break_first_seen_at_an_audit_is_reported_at_its_op(registry):
    """bug-ptfree frees a PT frame with one live entry left: an invariant breaks at the
    remove (op 3).  The fast path checks invariants only in the audits; it re-runs the
    stream on the precise path and reports the op index and signature the precise path gives."""
    va, pa = 0x00400000, 0x00200000
    ops = [Create(), Enter(1, va, pa, PROT_R | PROT_W, 0, False, False),
           Enter(1, va + PAGE_SIZE, pa + PAGE_SIZE, PROT_R | PROT_W, 0, False, False),
           Remove(1, va, va + PAGE_SIZE), Extract(1, va + PAGE_SIZE)]
    stream = make_stream(ops)
    fast, precise = pair(registry, ["alpha-ref", "bug-ptfree"])
    a, b = fast.run(stream), precise.run(stream)
    assert a.localised and not b.localised
    inv = [d for d in a.divergences if d.kind == "invariant"]
    assert inv and min(d.op_index for d in inv) == 3
    assert [(d.op_index, d.signature) for d in a.divergences] == [(d.op_index, d.signature) for d in b.divergences]
    # without the re-run (invariants at checkpoints only) the break is pinned on the audit
    late = Harness.from_registry(registry, ["alpha-ref", "bug-ptfree"], "alpha-ref", invariants_per_op=False).run(stream)
    assert {d.op_kind for d in late.divergences if d.kind == "invariant"} == {"audit"}


def test_precise_twin_of_a_fast_harness(registry):
    """Shrinking in a campaign uses the precise twin of the campaign's harness."""
    fast, _ = pair(registry, BUILTINS, checkpoint_every=50)
    twin = fast.precise()
    assert twin is not fast and not twin.fast and twin.invariants_per_op
    assert (twin.specs, twin.reference, twin.checkpoint_every) == (fast.specs, fast.reference, 50)
    assert twin.precise() is twin
    stream = registry.generators["random"].generate(3, 200, 8192)
    assert everything(twin.run(stream)) == everything(fast.run(stream))


@pytest.mark.slow
def test_fuzz_default_and_per_op_write_the_same_report(tmp_path):
    """End to end: ``difftest fuzz`` on the fast path (the default, ``--invariants auto``)
    and on the precise path (``--invariants per-op``) write the same report, test-only
    bugs included; only the recorded setting and the timings differ."""
    import json

    from cliutil import clean_env, run_difftest

    args = ["-p", "broken_backends", "fuzz", "--no-progress", "--streams", "4", "--ops-per-stream", "400",
            "--seed", "21", "--workers", "1", "--shrink-budget", "0", "--checkpoint-every", "100",
            "--backends", "alpha-ref,arm32-leaky,bug-ptfree,bug-modloss,bug-protect-past-eva"]
    reports = {}
    for mode in ("auto", "per-op"):
        out = tmp_path / mode
        proc = run_difftest(*args, "--invariants", mode, "--out", str(out), env=clean_env([PLUGINS]),
                            cwd=tmp_path, timeout=240)
        assert proc.returncode == 1, proc.stderr  # the bugs are new divergences
        doc = json.loads((out / "report.json").read_text())
        assert doc["campaign"].pop("invariants") == mode
        doc.pop("timing", None)
        reports[mode] = doc
    assert {d["backend"] for d in reports["auto"]["divergences"]} >= {"bug-ptfree", "bug-modloss"}
    assert reports["auto"] == reports["per-op"]


def test_nonzero_finds_every_live_entry_in_order():
    from impls.arm32_core import _nonzero

    assert _nonzero([0] * 8) == []
    assert _nonzero([0, 5, 0, 5, 0, 0, 7]) == [(1, 5), (3, 5), (6, 7)]
    assert _nonzero([3, 3, 0, 9]) == [(0, 3), (1, 3), (3, 9)]
    assert _nonzero([1 << 40]) == [(0, 1 << 40)]


def test_walk_fields_and_audit_views_agree_with_the_plain_reads(registry):
    """What the per-op path reads (walk_fields) is walk's translation field for field, and
    an audit's shared scans (audit_memo) give the walks and invariant messages a backend
    gives without them: on real streams, with backends whose invariants break too."""
    from difftest.backend import Backend
    from difftest.machine import KERNEL_MAX, KERNEL_MIN, USER_MAX, USER_MIN

    harness = Harness.from_registry(registry, BUILTINS + ["bug-ptfree", "bug-kpt-free"], "alpha-ref")
    gen = registry.generators["random"]
    compared = messages = 0
    for seed in range(3):
        stream = gen.generate(seed, 240, 8192)
        run = harness.start(stream)
        for index, op in enumerate(stream.ops):
            run.step(index, op)
            if index % 60 != 59:
                continue
            for lane in run.lanes:
                b = lane.backend
                if lane.stopped is not None:
                    continue
                plain = {}
                for pmap in lane.state.pmaps():
                    lo, hi = (KERNEL_MIN, KERNEL_MAX) if pmap == 0 else (USER_MIN, USER_MAX)
                    plain[pmap] = list(b.walk_range(pmap, lo, hi))
                    as_fields = {va: (t.pa, t.prot, t.wired) for va, t in plain[pmap]}
                    assert b.walk_range_fields(pmap, lo, hi) == as_fields == lane.read_range(pmap, lo, hi)
                    mid = (lo + hi) // 2 & -PAGE_SIZE
                    assert b.walk_range_fields(pmap, lo, mid) == {va: f for va, f in as_fields.items() if va < mid}
                    for va, t in plain[pmap]:
                        assert b.walk_fields(pmap, va) == (t.pa, t.prot, t.wired)
                        # the one-place read: the three reads it fuses, its own and the default
                        for where, page in ((va, t.pa), (va + PAGE_SIZE, t.pa)):
                            one_by_one = (b.walk_fields(pmap, where), *b.read_counts(pmap), *b.read_attributes(page))
                            assert b.read_place(pmap, where, page) == one_by_one
                            assert Backend.read_place(b, pmap, where, page) == one_by_one
                        assert lane.read(pmap, va) == (t.pa, t.prot, t.wired)
                        compared += 1
                    probes = (lo, (lo + hi) // 2 & -PAGE_SIZE, hi - PAGE_SIZE)
                    for va in probes:
                        t = b.walk(pmap, va)
                        assert b.walk_fields(pmap, va) == (None if t is None else (t.pa, t.prot, t.wired))
                    # the many-places read (range ops): the same, its own and the default
                    vas = [va for va, _ in plain[pmap]] + [va + PAGE_SIZE for va, _ in plain[pmap][:8]]
                    vas += probes
                    one_by_one = [b.walk_fields(pmap, va) for va in vas]
                    assert b.walk_fields_many(pmap, vas) == one_by_one
                    assert lane.read_many(pmap, vas) == one_by_one
                    assert Backend.walk_fields_many(b, pmap, vas) == one_by_one
                    assert None in one_by_one or not probes
                assert b.walk_fields_many(10_000, [USER_MIN, 0x00400000]) == [None, None]  # no such pmap
                assert b.read_place(10_000, USER_MIN, 0) is None  # no such pmap: read one by one
                plain_msgs = [list(inv.check(b, None)) for inv in lane.invariants]
                b.audit_memo = {}
                try:
                    for pmap, walked in plain.items():
                        lo, hi = (KERNEL_MIN, KERNEL_MAX) if pmap == 0 else (USER_MIN, USER_MAX)
                        assert list(b.walk_range(pmap, lo, hi)) == walked
                        assert list(b.walk_range(pmap, lo, hi)) == walked  # from the memo
                        assert b.walk_range_fields(pmap, lo, hi) == Backend.walk_range_fields(b, pmap, lo, hi)
                    shared_msgs = [list(inv.check(b, None)) for inv in lane.invariants]
                finally:
                    b.audit_memo = None
                assert shared_msgs == plain_msgs, (seed, index, lane.name)
                messages += sum(map(len, plain_msgs))
        run.audit(len(stream.ops) - 1, final=True)
        assert all(lane.backend.audit_memo is None for lane in run.lanes)
    assert compared > 100 and messages  # mappings compared, and broken invariants among them


def test_a_subclass_that_changes_walk_is_read_through_its_walk():
    """A backend that overrides ``walk`` (or a counter) below a class with its own fused
    read (``walk_fields``, ``read_counts``) is read through the plain read it changed,
    so a changed read is never bypassed: its wrong protection is reported at the op, on
    both paths."""
    from difftest.backend import BackendSpec, Translation, fused_reader, own_fused_reader
    from difftest.ops import PROT_X
    from impls.arm32 import Arm32Refcount

    class WalkShowsExec(Arm32Refcount):
        name = "walk-shows-exec"

        def walk(self, pmap, va):
            t = super().walk(pmap, va)
            return None if t is None else Translation(t.pa, t.prot | PROT_X, t.wired)

    class Plain(Arm32Refcount):
        name = "plain-subclass"

    from difftest.machine import PhysPool

    from difftest.backend import Backend
    from impls.arm32_core import Arm32Core

    plain, changed = Plain(PhysPool(64)), WalkShowsExec(PhysPool(64))
    for name in ("walk_fields", "walk_fields_many", "read_counts", "read_attributes"):  # its own: fast
        assert fused_reader(plain, name).__func__ is getattr(Arm32Core, name)
    assert fused_reader(changed, "walk_fields").func is Backend.walk_fields  # through its walk
    assert fused_reader(changed, "walk_fields_many").func is Backend.walk_fields_many
    assert fused_reader(changed, "walk_range_fields").__func__ is Arm32Core.walk_range_fields  # walk only
    # the one-place read only where the backend has its own, never past a changed plain read
    assert own_fused_reader(plain, "read_place").__func__ is Arm32Core.read_place
    assert own_fused_reader(changed, "read_place") is None

    class RangeShowsNothing(Arm32Refcount):
        name = "range-shows-nothing"

        def walk_range(self, pmap, sva, eva):
            return iter(())

    assert fused_reader(RangeShowsNothing(PhysPool(64)), "walk_range_fields").func is Backend.walk_range_fields
    assert fused_reader(changed, "read_counts").__func__ is Arm32Core.read_counts  # walk only
    sys.path.insert(0, str(PLUGINS))
    try:
        from shrink_bugs import RevokeOfOnceWired  # overrides pmap_resident_count
    finally:
        sys.path.remove(str(PLUGINS))
    assert fused_reader(RevokeOfOnceWired(PhysPool(64)), "read_counts").func is Backend.read_counts
    assert own_fused_reader(RevokeOfOnceWired(PhysPool(64)), "read_place") is None
    va, pa = 0x00400000, 0x00200000
    stream = make_stream([Create(), Enter(1, va, pa, PROT_R | PROT_W, 0, False, False), Extract(1, va)])
    specs = [BackendSpec.from_class(Arm32Refcount), BackendSpec.from_class(WalkShowsExec)]
    reports = []
    for fast in (True, False):
        result = Harness(specs, "arm32-refcount", fast=fast).run(stream)
        # (its walk_range still shows the tables as they are: the final audit sees that too)
        assert [(d.op_index, d.backend, d.field, d.cls) for d in result.divergences][0] == (
            1, "walk-shows-exec", "prot", "prot-mismatch")
        reports.append(everything(result))
    assert reports[0] == reports[1]
    # The many-places read of a range op goes through the changed walk too.
    run = Harness(specs, "arm32-refcount", fast=True).start(stream)
    for index, op in enumerate(stream.ops):
        run.step(index, op)
    lanes = {lane.name: lane for lane in run.lanes}
    assert lanes["walk-shows-exec"].read_many(1, [va, va + PAGE_SIZE]) == [(pa, PROT_R | PROT_W | PROT_X, False), None]
    assert lanes["arm32-refcount"].read_many(1, [va, va + PAGE_SIZE]) == [(pa, PROT_R | PROT_W, False), None]
    # A changed walk_range is what the audit reads: the mapping it hides is reported there.
    specs = [BackendSpec.from_class(Arm32Refcount), BackendSpec.from_class(RangeShowsNothing)]
    result = Harness(specs, "arm32-refcount", fast=True).run(stream)
    assert [(d.op_index, d.backend, d.kind, d.cls, d.location) for d in result.divergences][0] == (
        2, "range-shows-nothing", "translation", "mapping-missing", f"pmap 1 va {va:#010x}")


def test_the_fast_paths_one_gap_a_break_that_heals_before_the_audit():
    """The fast path's documented gap (harness docstring, README): an invariant that one op
    breaks and a later one restores before the next audit, with no other symptom, is seen
    only on the precise path.  Here the PT count is one too high after the extract and
    right again after the update."""
    from difftest.backend import BackendSpec
    from difftest.ops import Update
    from impls.arm32 import Arm32Refcount

    class CountsOneTooManyForAWhile(Arm32Refcount):
        name = "counts-one-too-many-for-a-while"

        def pmap_extract(self, pmap, va):
            self._occ[self._pmaps[pmap].l1[va >> 20][0]] += 1
            return super().pmap_extract(pmap, va)

        def pmap_update(self, pmap):
            for frame in self._occ:
                self._occ[frame] = 1024 - self._ptes[frame].count(0)

    va, pa = 0x00400000, 0x00200000
    stream = make_stream([Create(), Enter(1, va, pa, PROT_R | PROT_W, 0, False, False), Extract(1, va),
                          Update(1), Extract(1, va + PAGE_SIZE)])
    registry = PluginHost()
    registry.load()
    specs = [BackendSpec.from_class(Arm32Refcount), BackendSpec.from_class(CountsOneTooManyForAWhile)]
    invariants = registry.registry.invariants + [
        inv.__class__(inv.name, inv.check, inv.backends + ("counts-one-too-many-for-a-while",), inv.description)
        for inv in registry.registry.invariants if inv.name == "pt-count"]
    precise = Harness(specs, "arm32-refcount", invariants, invariants_per_op=True).run(stream)
    fast = Harness(specs, "arm32-refcount", invariants, fast=True).run(stream)
    # Broken again at op 4 and still broken at the final audit: the fast path re-runs the
    # stream on the precise path, which reports the first break, at op 2 (the same
    # message again at op 4 is the same open violation).
    for result in (precise, fast):
        assert [(d.op_index, d.kind, d.field) for d in result.divergences] == [(2, "invariant", "pt-count")]
    assert fast.localised
    # Healed before the audit, no other symptom: only the precise path sees it.
    healed = make_stream(stream.ops[:4])
    assert Harness(specs, "arm32-refcount", invariants, fast=True).run(healed).divergences == []
    assert [(d.op_index, d.field) for d in Harness(specs, "arm32-refcount", invariants,
                                                   invariants_per_op=True).run(healed).divergences] == [
        (2, "pt-count")]
