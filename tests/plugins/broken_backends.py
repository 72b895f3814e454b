"""Test-only backends with one bug each, registered as a plugin exactly as a user's would be.

Each subclasses a real built-in and breaks one thing, so that what the harness reports
about it can be asserted: the kind, the backend and the op index.  None runs by default.
"""

from __future__ import annotations

import os
import time

from difftest import ENOMEM, PROT_W, hookimpl
from difftest.machine import PAGE_SIZE
from impls.arm32 import Arm32Refcount
from impls.arm32_core import PGSHIFT, PT_H, PT_W, Pmap, pv_key


class WrongPaOnReplace(Arm32Refcount):
    """Replacing a mapping with a new PA maps the page after it instead."""

    name = "bug-wrongpa"
    description = "test-only: a replace maps pa + 4 KiB"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        old = self.walk(pmap, va)
        if old is not None and old.pa != pa:
            pa += PAGE_SIZE
        return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)


class WrongPaOnce(Arm32Refcount):
    """The first replace with a new PA maps the page after it; every later op is right."""

    name = "bug-wrongpa-once"
    description = "test-only: one replace maps pa + 4 KiB"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        old = self.walk(pmap, va)
        if old is not None and old.pa != pa and not getattr(self, "_fired", False):
            self._fired = True
            pa += PAGE_SIZE
        return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)


class LosesModOnRemove(Arm32Refcount):
    """pmap_remove forgets the MOD bit of the pages it unmaps."""

    name = "bug-modloss"
    description = "test-only: remove clears MOD"
    run_by_default = False

    def pmap_remove(self, pmap, sva, eva):
        pages = [t.pa for _, t in self.walk_range(pmap, sva, eva)]
        super().pmap_remove(pmap, sva, eva)
        for pa in pages:
            self.pmap_clear_modify(pa)


class TwoBugs(WrongPaOnReplace, LosesModOnRemove):
    """Two independent bugs: a replace with a new PA maps the page after it, and
    pmap_remove forgets the MOD bit of the pages it unmaps (both parents' overrides)."""

    name = "bug-two"
    description = "test-only: a replace maps pa + 4 KiB, and remove clears MOD"
    run_by_default = False


class UnwireKeepsCount(Arm32Refcount):
    """pmap_unwire clears the wired bit but does not decrement pm_stats.wired_count."""

    name = "bug-wiredcount"
    description = "test-only: unwire does not decrement the wired count"
    run_by_default = False

    def pmap_unwire(self, pmap, va):
        pm: Pmap = self._pmaps[pmap]
        before = pm.wired
        super().pmap_unwire(pmap, va)
        pm.wired = before


class EnomemLeavesATrace(Arm32Refcount):
    """pmap_enter with canfail counts the mapping before it finds there is no PT frame:
    ENOMEM with the resident count one too high."""

    name = "bug-enomem-trace"
    description = "test-only: ENOMEM leaves the resident count raised"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        res = super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        if res == ENOMEM:
            self._pmaps[pmap].resident += 1
        return res


class ProtectRaises(Arm32Refcount):
    name = "bug-protect-raises"
    description = "test-only: pmap_protect raises"
    run_by_default = False

    def pmap_protect(self, pmap, sva, eva, prot):
        raise RuntimeError(f"pmap_protect: bad range {sva:#x}-{eva:#x}")


class FreesLivePt(Arm32Refcount):
    """Off by one: the PT frame goes back to the pool when ONE live PTE is left, while the
    L1 still points at it (a use-after-free)."""

    name = "bug-ptfree"
    description = "test-only: frees a PT frame that still has an entry"
    run_by_default = False

    def pmap_pte_delref(self, pm, region, frame, count):
        left = self._occ[frame] - count
        self._occ[frame] = left
        if left == 1 and pm.id != 0:
            self.pool.free(frame)
        elif left == 0 and pm.id != 0 and self.pool.tag_of(frame) != 0:
            self.pmap_free_ptp(pm, region)


class FreesLiveKernelPt(Arm32Refcount):
    """kremove gives a kernel PT page back to the pool while one kernel mapping in it is
    still live (the L1 still points at it): a use-after-free the kernel-frames check sees."""

    name = "bug-kpt-free"
    description = "test-only: kremove frees a kernel PT page that still has an entry"
    run_by_default = False

    def pmap_pte_delref(self, pm, region, frame, count):
        super().pmap_pte_delref(pm, region, frame, count)
        if pm.id == 0 and self._occ[frame] == 1 and self.pool.tag_of(frame) != 0:
            self.pool.free(frame)


class ProtectPastEva(Arm32Refcount):
    """pmap_protect lowers one page too many: [sva, eva + 4 KiB)."""

    name = "bug-protect-past-eva"
    description = "test-only: protect also changes the page at eva"
    run_by_default = False

    def pmap_protect(self, pmap, sva, eva, prot):
        super().pmap_protect(pmap, sva, min(eva + PAGE_SIZE, 0xEFC00000), prot)


class ExtraMapping(Arm32Refcount):
    """Every enter also maps the page at va + 64 MiB: only a full audit can see it."""

    name = "bug-extra"
    description = "test-only: enter leaves a second mapping behind"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        res = super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        far = va + (64 << 20)
        if pmap != 0 and far < 0xEFC00000 and self.walk(pmap, far) is None:
            super().pmap_enter(pmap, far, pa, prot, 0, False, canfail)
        return res


class UnlinksAnotherPv(Arm32Refcount):
    """Unmapping one mapping of a page that has others unlinks the page's oldest other pv
    entry instead of its own (the counters as if right): the page keeps a pv entry for
    the mapping just removed, and a live mapping of it has none."""

    name = "bug-pv-unlink"
    description = "test-only: a remove on a shared page unlinks another mapping's pv entry"
    run_by_default = False

    def pmap_remove_pv(self, pm, va, page):
        pvh = self._pv[page]
        key = pv_key(pm.id, va)
        if len(pvh) > 1:
            del pvh[next(k for k in pvh if k != key)]
            flags = pvh[key]
            if flags & PT_W:
                pm.wired -= 1
            return flags
        return super().pmap_remove_pv(pm, va, page)


class EnterResetsReferenced(Arm32Refcount):
    """An enter with no access type clears the page's referenced attribute (PT_H), but
    leaves the page's other mappings valid: they now let the MMU read a page that is not
    marked referenced (REF/MOD emulation broken for every other mapping of the page)."""

    name = "bug-ref-reset"
    description = "test-only: an enter without access clears the page's referenced bit"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        res = super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        if res != ENOMEM and not access:
            self._attrs[pa >> PGSHIFT] &= ~PT_H
        return res


class EnterMarksAnotherWired(Arm32Refcount):
    """An enter with a write access of a page that has other mappings sets the wired flag
    (PT_W) in the pv entry of the page's oldest mapping: if that one is not wired, its
    pv_flags no longer match its PTE.  Nothing the harness compares changes until that mapping goes; only
    the pv-match invariant sees it, and on a page with more than WALK_WHOLE mappings only
    the next audit does (or the next op on that mapping or on the whole page): the per-op
    check of such a page looks at the op's own places."""

    name = "bug-pv-flags"
    description = "test-only: a write enter on a shared page marks another mapping wired in its pv entry"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        res = super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        pvh = self._pv.get(pa >> PGSHIFT, {})
        if res != ENOMEM and access & PROT_W and len(pvh) > 1:
            pvh[next(iter(pvh))] |= PT_W
        return res


class ProtectHangs(Arm32Refcount):
    name = "bug-hang"
    description = "test-only: pmap_protect never returns"
    run_by_default = False

    def pmap_protect(self, pmap, sva, eva, prot):
        while True:
            time.sleep(0.01)


class ProtectKillsProcess(Arm32Refcount):
    name = "bug-exit"
    description = "test-only: pmap_protect ends the process"
    run_by_default = False

    def pmap_protect(self, pmap, sva, eva, prot):
        os._exit(17)


ALL = (WrongPaOnReplace, WrongPaOnce, LosesModOnRemove, TwoBugs, UnwireKeepsCount, EnomemLeavesATrace,
       ProtectRaises, FreesLivePt, FreesLiveKernelPt, ProtectPastEva, ExtraMapping, UnlinksAnotherPv,
       EnterResetsReferenced, EnterMarksAnotherWired, ProtectHangs, ProtectKillsProcess)


@hookimpl
def difftest_register_backends(register):
    for cls in ALL:
        register(cls)


def register_refcount_invariants(register, classes) -> None:
    """The bugs live in subclasses of arm32-refcount: its invariants apply to them too,
    registered under their names (as a third party would reuse them)."""
    from dataclasses import replace

    from impls.arm32 import INVARIANTS, REFCOUNT

    names = tuple(cls.name for cls in classes)
    for inv in INVARIANTS:
        if inv.applies_to(REFCOUNT):
            register(replace(inv, backends=names))


@hookimpl
def difftest_register_invariants(register):
    register_refcount_invariants(register, ALL)
