"""The differential harness on real streams through real backends (issue: harness).

Each case names the stream, what each backend must show, and what the harness must
report: kind, backend, op index, signature.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

from cliutil import clean_env, run_difftest
from difftest.harness import Harness
from difftest.machine import PAGE_SIZE, PhysPool, Tag
from difftest.ops import (
    PROT_R,
    PROT_W,
    PROT_X,
    Access,
    ClearModify,
    Collect,
    Create,
    Destroy,
    Enter,
    Extract,
    IsModified,
    IsReferenced,
    KEnter,
    PageProtect,
    Protect,
    Remove,
    Unwire,
)
from difftest.streams import dumps, make_stream

RW = PROT_R | PROT_W
BUILTINS = ["alpha-ref", "arm32-leaky", "arm32-refcount"]
VA = 0x00400000
PA = 0x00200000


def run(registry, ops, backends=None, reference=None, phys_pages=8192, **kw):
    stream = make_stream(ops, phys_pages=phys_pages)
    return Harness.from_registry(registry, backends, reference, **kw).run(stream)


def enter(pmap, va, pa, prot=RW, access=0, wired=False, canfail=False):
    return Enter(pmap, va, pa, prot, access, wired, canfail)


def only(result):
    assert len(result.divergences) == 1, [d.signature for d in result.divergences]
    return result.divergences[0]


# -- the reference cases of the issue ------------------------------------------------------------


def test_default_backends_are_the_three_builtins(registry):
    assert registry.default_backends() == BUILTINS


def test_pr5666_one_leak_divergence_at_the_remove(registry):
    r = run(registry, [Create(), enter(1, VA, PA), Remove(1, VA, VA + PAGE_SIZE)])
    d = only(r)
    assert (d.kind, d.backend, d.op_index, d.op_kind) == ("resource", "arm32-leaky", 2, "remove")
    assert d.signature == "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
    # held vs needed shown for all three backends, side by side
    assert d.observations == {
        "alpha-ref": "held 0 / needed 0",
        "arm32-leaky": "held 1 / needed 0",
        "arm32-refcount": "held 0 / needed 0",
    }
    assert "differs from the reference alpha-ref" in d.attribution
    assert r.stopped == {}


def test_page_table_frames_taken_for_no_pmap_are_found_at_the_audit(registry):
    """A backend that takes a PT frame without naming its pmap as owner (a plugin's slip)
    and keeps it: no pmap's count shows it, the audit's look at the owners does."""
    spec = registry.backends["arm32-refcount"]

    class OwnerlessFrame(type(spec.factory(PhysPool(8192)))):  # type: ignore[misc]
        def pmap_remove(self, pmap, sva, eva):
            super().pmap_remove(pmap, sva, eva)
            self.pool.alloc(Tag.PT)  # scratch, never given back

    odd = replace(spec, name="ownerless", factory=OwnerlessFrame)
    stream = make_stream([Create(), enter(1, VA, PA), Remove(1, VA, VA + PAGE_SIZE), enter(1, VA, PA)])
    d = only(Harness([registry.backends["alpha-ref"], odd], "alpha-ref", registry.invariants).run(stream))
    assert (d.kind, d.backend, d.op_index, d.op_kind) == ("resource", "ownerless", 3, "audit")
    assert d.message == "pmap -1 (no pmap: taken without an owner) holds 1 PT frames, its live mappings need 0"


def test_pr5666_through_replay_json(tmp_path):
    path = tmp_path / "pr5666.json"
    path.write_text(dumps(make_stream([Create(), enter(1, VA, PA), Remove(1, VA, VA + PAGE_SIZE)])))
    proc = run_difftest("replay", str(path), "--json", env=clean_env())
    assert proc.returncode == 0, proc.stderr  # the baseline knows the leak
    doc = json.loads(proc.stdout)
    assert doc["format"] == "difftest.report/1"
    assert doc["backends"] == BUILTINS and doc["reference"] == "alpha-ref"
    assert [e["signature"] for e in doc["divergences"]] == [
        "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
    ]
    entry = doc["divergences"][0]
    assert entry["known"] is True and "5666" in entry["known_reason"] and entry["count"] == 1
    # replay names the input and the ops that reproduce it; --shrink adds a minimised stream
    assert entry["reproducer"] is None
    assert entry["reproducer_ref"] == {"stream": str(path), "start": 0, "end": 3}
    proc = run_difftest("replay", str(path), "--json", "--shrink", env=clean_env())
    assert json.loads(proc.stdout)["divergences"][0]["reproducer"]["ops"][1]["va"] == "0x00400000"


def test_replay_table_shows_each_backend_side_by_side(tmp_path):
    path = tmp_path / "pr5666.json"
    path.write_text(dumps(make_stream([Create(), enter(1, VA, PA), Remove(1, VA, VA + PAGE_SIZE)])))
    proc = run_difftest("replay", "--strict", str(path), env=clean_env(NO_COLOR="1"))
    assert proc.returncode == 1  # known, but --strict
    header = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("op"))
    for name in BUILTINS:
        assert name in header
    assert "held 1 / needed 0" in proc.stdout and "pt-frames-held>needed" in proc.stdout


def test_replay_exit_0_without_divergence(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(dumps(make_stream([Create(), enter(1, VA, PA), Extract(1, VA)])))
    proc = run_difftest("replay", str(path), env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no divergences" in proc.stdout


def test_collect_forgetting_nonwired_is_allowed(registry):
    wired_va, loose_va = VA, VA + 0x00800000  # two different 4 MiB regions
    ops = [Create(), enter(1, wired_va, PA, wired=True), enter(1, loose_va, PA + PAGE_SIZE), Collect(1),
           Extract(1, wired_va), Extract(1, loose_va)]
    r = run(registry, ops)
    assert r.divergences == []
    # arm32-refcount and alpha-ref dropped the non-wired mapping: recorded, not flagged
    forgotten = {b for (b, kind), n in r.allowed_counts.items() if kind == "forgotten"}
    assert forgotten == {"arm32-refcount", "alpha-ref"}
    assert r.allowed_counts[("arm32-refcount", "forgotten")] == 1


def test_collect_forgetting_many_is_counted_and_the_first_few_kept(registry):
    # Two collects dropping 7 and then 2 non-wired mappings (a wired one stays): each drop
    # is counted, the first five kept as examples, in VA order, at the op that dropped them.
    loose = [VA + i * PAGE_SIZE for i in range(7)] + [VA + 0x00800000, VA + 0x00800000 + PAGE_SIZE]
    ops = [Create(), enter(1, VA + 0x01000000, PA, wired=True)]
    ops += [enter(1, va, PA + (1 + i) * PAGE_SIZE) for i, va in enumerate(loose[:7])] + [Collect(1)]
    ops += [enter(1, va, PA) for va in loose[7:]] + [Collect(1)] + [Extract(1, va) for va in loose]
    r = run(registry, ops)
    assert r.divergences == []
    for name in ("alpha-ref", "arm32-refcount"):
        assert r.allowed_counts[(name, "forgotten")] == 9
        kept = [(a.op_index, a.detail) for a in r.allowed if a.backend == name and a.kind == "forgotten"]
        assert kept == [(9, f"pmap 1 va {va:#010x} after collect") for va in loose[:5]]
    assert ("arm32-leaky", "forgotten") not in r.allowed_counts  # it keeps what it may drop


def test_enomem_with_canfail_when_memory_is_really_short_is_allowed(registry):
    # 16 frames: one data frame, the kernel's L1 and a user L1 (4 each for arm32) leave
    # arm32 7 frames for PT pages: one per 4 MiB region, so the 8th region fails.
    ops = [Create()] + [enter(1, (i << 22) + VA, 2 * PAGE_SIZE, canfail=True) for i in range(16)]
    r = run(registry, ops, phys_pages=16)
    assert r.divergences == [], [d.signature for d in r.divergences]
    assert r.allowed_counts[("arm32-refcount", "enomem")] > 0
    assert r.allowed_counts[("alpha-ref", "enomem")] > 0


# -- test-only broken backends: kind, backend, op index ---------------------------------------------


def test_wrong_pa_after_replace_is_a_translation_divergence(registry):
    ops = [Create(), enter(1, VA, PA), enter(1, VA, PA + 2 * PAGE_SIZE)]
    d = only(run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wrongpa"]))
    assert (d.kind, d.backend, d.op_index) == ("translation", "bug-wrongpa", 2)
    assert d.signature == "translation:bug-wrongpa:enter:pa:pa-mismatch"
    assert d.observations["bug-wrongpa"] == "pa 0x00203000 rw"
    assert d.observations["alpha-ref"] == "pa 0x00202000 rw"
    assert "from the majority (2 of 3" in d.attribution


def test_mod_lost_on_remove_is_an_attribute_divergence(registry):
    ops = [Create(), enter(1, VA, PA, access=PROT_W), Remove(1, VA, VA + PAGE_SIZE), IsModified(PA)]
    d = only(run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-modloss"]))
    assert (d.kind, d.backend, d.op_index) == ("attribute", "bug-modloss", 2)
    assert d.signature == "attribute:bug-modloss:remove:modified:mod-lost"


def test_miscounted_wired_count_is_an_accounting_divergence(registry):
    ops = [Create(), enter(1, VA, PA, wired=True), enter(1, VA + PAGE_SIZE, PA, wired=True),
           Unwire(1, VA), Extract(1, VA)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wiredcount"])
    first = r.divergences[0]
    assert (first.kind, first.backend, first.op_index) == ("accounting", "bug-wiredcount", 3)
    assert first.signature == "accounting:bug-wiredcount:unwire:wired_count:count-high"
    assert first.observations["bug-wiredcount"] == "2 (tables: 1)"
    # The backend's own full-audit invariant sees the same bug at the end; nothing else.
    assert {d.kind for d in r.divergences} <= {"accounting", "invariant"}
    assert all(d.backend == "bug-wiredcount" for d in r.divergences)


def test_exception_in_protect_is_a_crash_with_traceback(registry):
    ops = [Create(), enter(1, VA, PA), Protect(1, VA, VA + PAGE_SIZE, PROT_R), Extract(1, VA)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-protect-raises"])
    d = only(r)
    assert (d.kind, d.backend, d.op_index) == ("crash", "bug-protect-raises", 2)
    assert d.signature == "crash:bug-protect-raises:protect:exception:RuntimeError"
    assert "RuntimeError: pmap_protect: bad range" in d.traceback
    assert "bug-protect-raises" in r.stopped
    assert r.ops_run == 4  # the others went on


def test_pt_frame_freed_with_live_entry_is_a_resource_divergence(registry):
    ops = [Create(), enter(1, VA, PA), enter(1, VA + PAGE_SIZE, PA + PAGE_SIZE),
           Remove(1, VA, VA + PAGE_SIZE), Extract(1, VA + PAGE_SIZE)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-ptfree"])
    at_remove = [d for d in r.divergences if d.op_index == 3]
    assert all(d.backend == "bug-ptfree" for d in r.divergences)
    res = [d for d in at_remove if d.kind == "resource"]
    assert [d.signature for d in res] == ["resource:bug-ptfree:remove:pt_frames:pt-frames-held<needed"]
    assert res[0].observations["bug-ptfree"] == "held 0 / needed 1"
    # its own invariant "no PT frame freed while in use" fires at the same op
    assert any(d.kind == "invariant" and d.field == "pt-not-freed" for d in at_remove)


def test_spurious_mapping_is_found_by_the_audit(registry):
    ops = [Create(), enter(1, VA, PA), Extract(1, VA)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-extra"])
    sigs = {d.signature for d in r.divergences}
    assert "translation:bug-extra:audit:mapping:spurious-mapping" in sigs
    audit = r.first("translation:bug-extra:audit:mapping:spurious-mapping")
    assert audit.location == "pmap 1 va 0x04400000"


def test_hang_is_stated_with_its_limit(registry):
    ops = [Create(), enter(1, VA, PA), Protect(1, VA, VA + PAGE_SIZE, PROT_R)]
    stream = make_stream(ops)
    r = Harness.from_registry(registry, ["alpha-ref", "bug-hang"]).run(stream, time_limit=0.5)
    d = only(r)
    assert (d.kind, d.backend, d.op_index) == ("hang", "bug-hang", 2)
    assert "time limit of 0.5 s" in d.message


def test_reference_as_the_odd_one_out_is_said(registry):
    ops = [Create(), enter(1, VA, PA), enter(1, VA, PA + 2 * PAGE_SIZE)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wrongpa"], reference="bug-wrongpa")
    d = only(r)
    assert d.backend == "bug-wrongpa"
    assert d.attribution.startswith("the reference bug-wrongpa is the odd one out")


# -- cascades -------------------------------------------------------------------------------------------


def _busy_ops(rng: random.Random, n: int) -> list:
    """n VM-legal ops on pmap 1 around VA, most touching the badly mapped page."""
    ops = []
    vas = [VA + i * PAGE_SIZE for i in range(8)] + [VA + 0x00200000, VA - PAGE_SIZE]
    pas = [PA + i * PAGE_SIZE for i in range(6)]
    for _ in range(n):
        r = rng.random()
        va = rng.choice(vas)
        if r < 0.25:
            ops.append(Access(1, va, rng.choice("rwx")))
        elif r < 0.40:
            ops.append(Extract(1, va))
        elif r < 0.50:
            ops.append(IsModified(rng.choice(pas)))
        elif r < 0.55:
            ops.append(IsReferenced(rng.choice(pas)))
        elif r < 0.60:
            ops.append(ClearModify(rng.choice(pas)))
        elif r < 0.68:
            ops.append(PageProtect(rng.choice(pas), rng.choice((PROT_R, PROT_R | PROT_X))))
        elif r < 0.74:
            ops.append(Protect(1, va, va + PAGE_SIZE, PROT_R))
        elif r < 0.84 and va != VA:
            ops.append(enter(1, va, rng.choice(pas), prot=RW | PROT_X, access=rng.choice((0, PROT_R, PROT_W))))
        elif r < 0.90 and va != VA:
            ops.append(Remove(1, va, va + PAGE_SIZE))
        else:
            ops.append(Collect(1))
    return ops


def test_one_wrong_pa_then_1000_ops_is_one_signature(registry):
    rng = random.Random(5666)
    ops = [Create(), enter(1, VA, PA, access=PROT_W), enter(1, VA, PA + PAGE_SIZE, prot=RW | PROT_X)]
    ops += _busy_ops(rng, 1000)
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wrongpa-once"], checkpoint_every=100)
    assert r.ops_run == 1003 and r.checkpoints >= 10
    assert r.signatures() == {"translation:bug-wrongpa-once:enter:pa:pa-mismatch"}, sorted(r.signatures())
    assert len(r.divergences) == 1
    assert r.divergences[0].op_index == 2


def test_a_bug_that_fires_on_every_replace_is_still_one_signature(registry):
    rng = random.Random(5666)
    ops = [Create(), enter(1, VA, PA, access=PROT_W), enter(1, VA, PA + PAGE_SIZE, prot=RW | PROT_X)]
    ops += _busy_ops(rng, 1000)
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wrongpa"], checkpoint_every=100)
    assert r.signatures() == {"translation:bug-wrongpa:enter:pa:pa-mismatch"}, sorted(r.signatures())
    # each occurrence is a fresh wrong replace, not a consequence of an earlier one
    assert all(isinstance(ops[d.op_index], Enter) for d in r.divergences)


def test_independent_later_divergence_is_still_reported(registry):
    # The wrong PA at op 2, and much later a different bug of the same backend family:
    # the first must not hide the second.
    ops = [Create(), enter(1, VA, PA), enter(1, VA, PA + 2 * PAGE_SIZE)]
    ops += _busy_ops(random.Random(1), 200)
    ops += [enter(1, 0x10000000, PA + 3 * PAGE_SIZE, access=PROT_W), Remove(1, 0x10000000, 0x10001000)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-wrongpa", "bug-modloss"])
    sigs = r.signatures()
    assert "translation:bug-wrongpa:enter:pa:pa-mismatch" in sigs
    assert "attribute:bug-modloss:remove:modified:mod-lost" in sigs


def test_leak_is_one_line_per_pmap_not_one_per_remove(registry):
    ops = [Create()]
    for i in range(20):
        va = VA + (i << 22)
        ops += [enter(1, va, PA), Remove(1, va, va + PAGE_SIZE)]
    r = run(registry, ops)
    assert [d.signature for d in r.divergences] == ["resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"]


# -- audits and full comparisons ----------------------------------------------------------------------


def test_kernel_pt_frames_are_never_a_leak(registry):
    k = 0xF0000000
    ops = [KEnter(k, PA, RW), KEnter(k + 0x00400000, PA, PROT_R)]
    from difftest.ops import KRemove

    ops += [KRemove(k, 0x00800000), Create(), enter(1, VA, PA), Destroy(1)]
    r = run(registry, ops)
    assert r.divergences == []


def test_destroy_with_mappings_left_returns_every_frame(registry):
    ops = [Create(), enter(1, VA, PA, wired=True), enter(1, 0x20000000, PA + PAGE_SIZE), Destroy(1)]
    r = run(registry, ops)
    assert r.divergences == []


def test_invariants_only_at_checkpoints_still_catch_the_break(registry):
    ops = [Create(), enter(1, VA, PA), enter(1, VA + PAGE_SIZE, PA + PAGE_SIZE),
           Remove(1, VA, VA + PAGE_SIZE), Extract(1, VA + PAGE_SIZE)]
    per_op = run(registry, ops, ["alpha-ref", "bug-ptfree"])
    at_audit = run(registry, ops, ["alpha-ref", "bug-ptfree"], invariants_per_op=False)
    assert any(d.kind == "invariant" and d.op_index == 3 for d in per_op.divergences)
    inv = [d for d in at_audit.divergences if d.kind == "invariant"]
    assert inv and all(d.op_kind == "audit" for d in inv)
    # the harness's own checks do not depend on the setting
    assert {d.signature for d in per_op.divergences if d.kind != "invariant"} == \
        {d.signature for d in at_audit.divergences if d.kind != "invariant"}


# -- the kernel's page-table frames and the edges of range ops ------------------------------------

KVA = 0xF0000000


def test_kernel_pt_page_freed_with_a_live_entry_is_caught_at_the_kremove(registry):
    """Two kernel mappings share one PT page; kremove of the first frees the page although
    the second is live.  The built-ins' "kernel PT pages are never freed" is an allowance
    (held >= needed), not a skip, so held < needed is a resource divergence at op 2."""
    from difftest.ops import KRemove

    ops = [KEnter(KVA, PA, RW), KEnter(KVA + PAGE_SIZE, PA + PAGE_SIZE, RW), KRemove(KVA, PAGE_SIZE),
           Create(), enter(1, VA, PA)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-kpt-free"])
    first = r.divergences[0]
    assert (first.op_index, first.signature) == (2, "resource:bug-kpt-free:kremove:pt_frames:pt-frames-held<needed")
    assert first.location == "pmap 0"
    assert first.observations["bug-kpt-free"] == "held 0 / needed 1"
    assert first.observations["arm32-refcount"] == "held 1 / needed 1"
    assert all(d.backend == "bug-kpt-free" for d in r.divergences)


def test_kernel_needs_its_top_level_table_and_may_keep_its_pt_pages(registry):
    """Kernel frames are compared, not skipped: after kremove the built-ins keep the PT
    pages (allowed: they declare it), and hold exactly their top-level table otherwise."""
    from difftest.ops import KRemove

    ops = [KEnter(KVA, PA, RW), KRemove(KVA, PAGE_SIZE), KEnter(KVA + 0x00800000, PA, RW)]
    r = run(registry, ops, checkpoint_every=1)
    assert r.divergences == []


def test_protect_one_page_past_eva_is_caught_at_the_protect(registry):
    """The page at eva is observed by a range op: a protect that lowers it too is a
    translation divergence at that op, not at some later audit."""
    ops = [Create(), enter(1, VA, PA), enter(1, VA + PAGE_SIZE, PA + PAGE_SIZE),
           Protect(1, VA, VA + PAGE_SIZE, PROT_R), Extract(1, VA)]
    r = run(registry, ops, ["alpha-ref", "arm32-refcount", "bug-protect-past-eva"])
    d = only(r)
    assert (d.op_index, d.signature) == (3, "translation:bug-protect-past-eva:protect:prot:prot-mismatch")
    assert d.location == f"pmap 1 va {VA + PAGE_SIZE:#010x}"
    assert d.observations["alpha-ref"] == f"pa {PA + PAGE_SIZE:#010x} rw"


def test_the_page_before_sva_is_observed_too(registry):
    """A remove whose range ends at a mapped page and starts after one leaves both alone;
    the harness walks both edges (the built-ins agree: nothing reported)."""
    ops = [Create(), enter(1, VA, PA), enter(1, VA + 2 * PAGE_SIZE, PA + PAGE_SIZE),
           enter(1, VA + 3 * PAGE_SIZE, PA + PAGE_SIZE), Remove(1, VA + PAGE_SIZE, VA + 3 * PAGE_SIZE)]
    assert run(registry, ops).divergences == []
    # protect past eva on a range whose eva page is unmapped changes nothing: not reported
    quiet = [Create(), enter(1, VA, PA), Protect(1, VA, VA + PAGE_SIZE, PROT_R)]
    assert run(registry, quiet, ["alpha-ref", "bug-protect-past-eva"]).divergences == []
