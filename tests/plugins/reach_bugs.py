"""Test-only backends with one bug each that only a stream *reaching* a state can show:
memory pressure (an ENOMEM that leaves a half-built table behind) and a shared page
write-protected by ``page_protect(pa, r)``.  Registered as a plugin, as a user's would be;
none runs by default.
"""

from __future__ import annotations

from difftest import hookimpl
from difftest.machine import OutOfMemory
from difftest.ops import ENOMEM, PROT_R, PROT_W
from impls.alpha import PG_SHIFT, PG_V, PGU_L2PT, PGU_L3PT, AlphaPmap
from impls.arm32 import Arm32Refcount
from impls.arm32_core import PGSHIFT


class HalfBuiltOnEnomem(AlphaPmap):
    """pmap_enter with canfail does not ask ``has_free`` first, and its error path forgets
    to undo: the L1 / L2 tables made before the allocation that failed stay behind, with
    their references (a half-built path)."""

    name = "bug-enomem-halfbuilt"
    description = "test-only: ENOMEM leaves the tables it made on the way"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        if not canfail:
            return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        pm = self.pmaps[pmap]
        try:
            self._build_path(pm, va)
        except OutOfMemory:
            return ENOMEM  # what was built so far stays
        return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)

    def _build_path(self, pm, va):
        ptmem = self.ptmem
        if pm.pm_lev1map is None:
            self.pmap_lev1map_create(pm)
        l1frame = pm.pm_lev1map
        l1tbl = ptmem[l1frame]
        i1 = va >> self._s1
        if not l1tbl[i1] & PG_V:
            self.pmap_physpage_addref(l1frame)
            self.pmap_ptpage_alloc(pm, l1tbl, i1, PGU_L2PT)
            pm.pm_nlev2 += 1
        l2frame = l1tbl[i1] >> PG_SHIFT
        l2tbl = ptmem[l2frame]
        i2 = (va >> self._s2) & self._m2
        if not l2tbl[i2] & PG_V:
            self.pmap_physpage_addref(l2frame)
            self.pmap_ptpage_alloc(pm, l2tbl, i2, PGU_L3PT)
            pm.pm_nlev3 += 1


class ReadProtectMissesOne(Arm32Refcount):
    """pmap_page_protect(pa, r) walks the page's pv list one entry short: with two or more
    mappings, the last stays writable."""

    name = "bug-pp-read-miss"
    description = "test-only: page_protect(pa, r) leaves one mapping of a shared page writable"
    run_by_default = False

    def pmap_page_protect(self, pa, prot):
        pvh = self._pv.get(pa >> PGSHIFT)
        if prot & PROT_W or not prot & PROT_R or not pvh or len(pvh) < 2:
            return super().pmap_page_protect(pa, prot)
        last = next(reversed(pvh))
        flags = pvh.pop(last)
        try:
            super().pmap_page_protect(pa, prot)
        finally:
            pvh[last] = flags


ALL = (HalfBuiltOnEnomem, ReadProtectMissesOne)


@hookimpl
def difftest_register_backends(register):
    for cls in ALL:
        register(cls)
