"""The alpha-ref backend (impls/alpha.py): hand-computed cases, driven directly.

Frame numbers: every test pool reserves data frames 0x100..0x13f first, so the pool hands
out frames 0, 1, 2, ... in order: the kernel L1 (made at bootstrap) is frame 0, and the
first user L1, L2 and L3 pages are frames 1, 2 and 3.  Freed frames come back LIFO.
"""

from __future__ import annotations

import random

import pytest

from difftest.backend import Touched, Translation, needed_pt_frames
from difftest.machine import KERNEL_MIN, USER_MAX, USER_MIN, OutOfMemory, PhysPool, Tag
from difftest.ops import PROT_NONE, PROT_R, PROT_W, PROT_X
from impls.alpha import (
    ALPHA_4M,
    INVARIANTS,
    PG_FOE,
    PG_FOR,
    PG_FOW,
    PG_PVLIST,
    PG_SHIFT,
    AlphaPmap,
    alpha_geometry,
)

RW = PROT_R | PROT_W
RWX = PROT_R | PROT_W | PROT_X
RX = PROT_R | PROT_X
DATA = range(0x100, 0x140)
KVA = KERNEL_MIN + 0x00400000  # a kernel va


def PA(n: int) -> int:
    return (0x100 + n) << 12


def make(phys_pages: int = 8192, variant: str = "default") -> AlphaPmap:
    pool = PhysPool(phys_pages)
    pool.reserve_data(DATA)
    if variant == "4m":
        return ALPHA_4M.factory(pool)
    return AlphaPmap(pool)


def enter(b, pmap, va, pa, prot=RW, access=PROT_NONE, wired=False, canfail=False):
    return b.pmap_enter(pmap, va, pa, prot, access, wired, canfail)


def messages(b, touched=None, name=None):
    out = []
    for inv in INVARIANTS:
        if name is None or inv.name == name:
            out.extend(inv.check(b, touched))
    return out


def held(b, pmap):
    return b.pool.held(pmap, Tag.L1), b.pool.held(pmap, Tag.PT)


def pte_of(b, pmap, va):
    l3 = b._pmap_l3pt(b.pmaps[pmap], va)
    return b.ptmem[l3][(va >> 12) & b._m3]


# -- registration and geometry -------------------------------------------------------------


def test_geometry_is_accepted_and_declared():
    from difftest.backend import Geometry, Level

    g = Geometry(
        levels=(
            Level("L1", span=1 << 32, entries=4, frames=1, tag=Tag.L1),
            Level("L2", span=1 << 30, entries=512, tag=Tag.PT),
            Level("L3", span=2 << 20, entries=512, tag=Tag.PT),
        ),
        top_level="lazy",
    )
    assert AlphaPmap.geometry == g == alpha_geometry()
    assert g.describe() == "L1 4x1GiB (lazy) > L2 512x2MiB > L3 512x4KiB"
    b4 = make(variant="4m")
    assert b4.name == "alpha-ref-4m" and b4.geometry == ALPHA_4M.geometry
    assert ALPHA_4M.geometry.describe() == "L1 1x4GiB (lazy) > L2 1024x4MiB > L3 1024x4KiB"
    with pytest.raises(ValueError):
        AlphaPmap(PhysPool(64), l1_entries=2, l2_entries=512, l3_entries=512)  # maps 31 bits
    with pytest.raises(ValueError):
        AlphaPmap(PhysPool(64), l1_entries=1, l2_entries=1024, l3_entries=1024)  # 8 KiB tables


def test_plugin_host_registers_backends_and_invariants():
    from difftest.plugins import PluginHost

    h = PluginHost()
    h.load()
    assert "alpha-ref" in h.registry.backends
    assert "alpha-ref-4m" in h.registry.backends
    assert h.registry.backends["alpha-ref"].geometry == alpha_geometry()
    for name in ("alpha-ref", "alpha-ref-4m"):
        names = {inv.name for inv in h.registry.invariants_for(name)}
        assert {inv.name for inv in INVARIANTS} <= names
    spec = h.registry.backends["alpha-ref-4m"]
    assert isinstance(spec.factory(PhysPool(64)), AlphaPmap)
    if hasattr(spec, "default"):  # the variant is opt-in: three backends run by default
        assert spec.default is False and h.registry.backends["alpha-ref"].default is True


# -- enter / remove and the freeing cascade --------------------------------------------------


def test_bootstrap_kernel_l1():
    b = make()
    assert held(b, 0) == (1, 0)
    assert b.pmaps[0].pm_lev1map == 0 and b.pool.tag_of(0) == Tag.L1
    b.pmap_create(1)
    assert held(b, 1) == (0, 0)  # pmap_create allocates no page table
    assert b.pmaps[1].pm_lev1map is None
    assert messages(b) == []


def test_enter_remove_one_page_frees_l3_l2_l1():
    b = make()
    free0 = b.pool.free_frames
    b.pmap_create(1)
    assert enter(b, 1, 0x00400000, PA(0)) == "OK"
    # lev1map frame 1, L2 frame 2 in L1 slot 0, L3 frame 3 in L2 slot 2 (0x400000 >> 21)
    assert held(b, 1) == (1, 2)
    pm = b.pmaps[1]
    assert pm.pm_lev1map == 1 and (pm.pm_nlev2, pm.pm_nlev3) == (1, 1)
    assert b.ptmem[1][0] >> PG_SHIFT == 2
    assert b.ptmem[2][2] >> PG_SHIFT == 3
    assert b.ptmem[3][0] >> PG_SHIFT == 0x100
    assert [b.pvh_refcnt[f] for f in (1, 2, 3)] == [1, 1, 1]
    assert b.walk(1, 0x00400000) == Translation(PA(0), RW, False)
    assert b.pmap_extract(1, 0x00400000) == PA(0)
    assert b.pv_entries(0x100) == [(1, 0x00400000, 3)]
    assert b.pmap_resident_count(1) == 1 and b.pmap_wired_count(1) == 0
    assert messages(b) == []

    b.pmap_remove(1, 0x00400000, 0x00401000)
    assert held(b, 1) == (0, 0)
    assert b.pool.held(1, Tag.PT) == 0 and b.pool.held(1, Tag.L1) == 0
    assert pm.pm_lev1map is None and (pm.pm_nlev2, pm.pm_nlev3) == (0, 0)
    assert b.pool.free_frames == free0 and b.pool.frees == 3
    assert [b.pool.tag_of(f) for f in (1, 2, 3)] == [Tag.FREE] * 3
    assert sum(b.pvh_refcnt[1:4]) == 0 and set(b.ptmem) == {0}
    assert b.walk(1, 0x00400000) is None and b.pmap_extract(1, 0x00400000) is None
    assert 0x100 not in b.pvh_list
    assert b.pmap_resident_count(1) == 0
    assert messages(b) == []


def test_remove_across_2m_boundary():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x001FF000, PA(0))  # L3 #0 of L2 slot 0
    enter(b, 1, 0x00200000, PA(1))  # L3 #1
    assert held(b, 1) == (1, 3)  # 1 L2 + 2 L3
    l2 = b.ptmem[1][0] >> PG_SHIFT
    assert b.pvh_refcnt[l2] == 2
    # remove only the lower page: its L3 goes, the L2 stays with one reference
    b.pmap_remove(1, 0x001FF000, 0x00200000)
    assert held(b, 1) == (1, 2) and b.pvh_refcnt[l2] == 1
    assert b.walk(1, 0x00200000) == Translation(PA(1), RW, False)
    enter(b, 1, 0x001FF000, PA(0))
    b.pmap_remove(1, 0x001FE000, 0x00202000)  # crosses 2 MiB
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


def test_remove_across_4m_and_1g_boundaries():
    b = make()
    b.pmap_create(1)
    for n, va in enumerate((0x003FF000, 0x00400000, 0x3FFFF000, 0x40000000)):
        enter(b, 1, va, PA(n))
    # L1 slots 0 and 1: 2 L2 pages; L3 pages for 2-4 MiB, 4-6 MiB, 1022-1024 MiB, 1024-1026 MiB
    assert held(b, 1) == (1, 6)
    assert (b.pmaps[1].pm_nlev2, b.pmaps[1].pm_nlev3) == (2, 4)
    b.pmap_remove(1, 0x003FF000, 0x00401000)  # crosses 4 MiB: two L3 pages go
    assert held(b, 1) == (1, 4)
    b.pmap_remove(1, 0x3FFFF000, 0x40001000)  # crosses 1 GiB: both L2 pages go, and the L1
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


def test_4m_variant_frame_counts():
    b = make(variant="4m")
    b.pmap_create(1)
    enter(b, 1, 0x001FF000, PA(0))
    enter(b, 1, 0x00200000, PA(1))  # same 4 MiB L3 page
    assert held(b, 1) == (1, 2)
    enter(b, 1, 0x003FF000, PA(2))
    enter(b, 1, 0x00400000, PA(3))  # the next 4 MiB
    assert held(b, 1) == (1, 3)
    assert b.pvh_refcnt[b.pmaps[1].pm_lev1map] == 1  # one L2 page
    assert len(b.ptmem[b.pmaps[1].pm_lev1map]) == 1 and len(b.ptmem[2]) == 1024
    b.pmap_remove(1, 0x003FF000, 0x00401000)
    assert held(b, 1) == (1, 2)
    b.pmap_remove(1, USER_MIN, USER_MAX)
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


def test_remove_skips_absent_tables():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0xEFBFF000, PA(0))
    b.pmap_remove(1, USER_MIN, 0xEFBFF000)  # the whole user space below the one mapping
    assert b.walk(1, 0xEFBFF000) is not None
    # a page-by-page loop would visit ~10^6 pages per remove; table skipping visits only
    # the L3 tables that exist in the range: the mapping's, whatever the range's width
    pm = b.pmaps[1]
    below = [frame for frame, *_ in b._l3_ranges(pm, USER_MIN, 0xEFBFF000)]
    whole = [frame for frame, *_ in b._l3_ranges(pm, USER_MIN, USER_MAX)]
    assert len(whole) == 1 and below == whole
    assert list(b.walk_range(1, 0, 1 << 32)) == [(0xEFBFF000, Translation(PA(0), RW, False))]


def test_replacing_a_mapping_moves_its_pv_entry():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0), access=PROT_W)
    enter(b, 1, 0x11000, PA(0))
    l3 = b._pmap_l3pt(b.pmaps[1], 0x10000)
    assert b.pv_entries(0x100) == [(1, 0x11000, l3), (1, 0x10000, l3)]  # head insertion
    enter(b, 1, 0x10000, PA(1), prot=PROT_R)
    assert b.pv_entries(0x100) == [(1, 0x11000, l3)]
    assert b.pv_entries(0x101) == [(1, 0x10000, l3)]
    assert b.walk(1, 0x10000) == Translation(PA(1), PROT_R, False)
    assert b.pvh_refcnt[l3] == 2 and b.pmap_resident_count(1) == 2
    assert b.pmap_is_modified(PA(0))  # the old page keeps its attributes
    assert not b.pmap_is_modified(PA(1))
    assert messages(b) == []


def test_reenter_same_pa_changes_prot_and_wiring():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0), prot=RW, wired=True)
    assert b.pmap_wired_count(1) == 1
    enter(b, 1, 0x10000, PA(0), prot=PROT_R)  # re-entering without wired unwires
    assert b.walk(1, 0x10000) == Translation(PA(0), PROT_R, False)
    assert b.pmap_wired_count(1) == 0 and b.pmap_resident_count(1) == 1
    enter(b, 1, 0x10000, PA(0), prot=RWX, wired=True)
    assert b.walk(1, 0x10000) == Translation(PA(0), RWX, True)
    assert b.pmap_wired_count(1) == 1
    assert len(b.pvh_list[0x100]) == 1
    assert messages(b) == []


# -- REF / MOD ------------------------------------------------------------------------------


def test_mod_survives_remove_until_clear_modify():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0), access=PROT_W)
    assert b.pmap_is_modified(PA(0)) and b.pmap_is_referenced(PA(0))
    b.pmap_remove(1, 0x10000, 0x11000)
    assert b.pmap_is_modified(PA(0)) and b.pmap_is_referenced(PA(0))
    assert b.pmap_clear_modify(PA(0)) is True
    assert not b.pmap_is_modified(PA(0))
    assert b.pmap_clear_modify(PA(0)) is False
    assert b.pmap_clear_reference(PA(0)) is True
    assert b.pmap_clear_reference(PA(0)) is False


def test_enter_seeds_attributes_and_fault_bits():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0))  # no access: not REF
    assert pte_of(b, 1, 0x10000) & (PG_FOR | PG_FOW | PG_FOE) == PG_FOR | PG_FOW | PG_FOE
    enter(b, 1, 0x20000, PA(1), access=PROT_R)  # REF, not MOD
    assert pte_of(b, 1, 0x20000) & (PG_FOR | PG_FOW | PG_FOE) == PG_FOW
    enter(b, 1, 0x30000, PA(2), access=PROT_W)  # REF and MOD
    assert pte_of(b, 1, 0x30000) & (PG_FOR | PG_FOW | PG_FOE) == 0
    assert pte_of(b, 1, 0x30000) & PG_PVLIST
    assert [b.pmap_is_referenced(PA(n)) for n in range(3)] == [False, True, True]
    assert [b.pmap_is_modified(PA(n)) for n in range(3)] == [False, False, True]


def test_access_driven_ref_mod_on_every_mapping():
    b = make()
    b.pmap_create(1)
    b.pmap_create(2)
    enter(b, 1, 0x10000, PA(0), prot=RW)
    enter(b, 2, 0x50000, PA(0), prot=PROT_R)
    assert not b.pmap_is_referenced(PA(0))
    # a read: REF, fault-on-read/execute cleared on both mappings, fault-on-write stays
    assert b.pmap_access(2, 0x50000, "r") == "OK"
    assert b.pmap_is_referenced(PA(0)) and not b.pmap_is_modified(PA(0))
    for pmap, va in ((1, 0x10000), (2, 0x50000)):
        assert pte_of(b, pmap, va) & (PG_FOR | PG_FOW | PG_FOE) == PG_FOW
    # a write where the prot has no w is a real fault and changes nothing
    assert b.pmap_access(2, 0x50000, "w") == "FAULT"
    assert not b.pmap_is_modified(PA(0))
    assert b.pmap_access(1, 0x10000, "x") == "FAULT"
    assert b.pmap_access(1, 0x20000, "r") == "FAULT"  # no mapping
    assert b.pmap_access(1, 0x7FF00000, "r") == "FAULT"  # no table
    # a write: MOD, all fault bits gone everywhere
    assert b.pmap_access(1, 0x10000, "w") == "OK"
    assert b.pmap_is_modified(PA(0))
    assert pte_of(b, 2, 0x50000) & (PG_FOR | PG_FOW | PG_FOE) == 0
    # clear_reference arms every mapping again; the next access sets REF again
    assert b.pmap_clear_reference(PA(0)) is True
    assert not b.pmap_is_referenced(PA(0))
    for pmap, va in ((1, 0x10000), (2, 0x50000)):
        assert pte_of(b, pmap, va) & (PG_FOR | PG_FOW | PG_FOE) == PG_FOR | PG_FOW | PG_FOE
    assert b.pmap_access(1, 0x10000, "r") == "OK"
    assert b.pmap_is_referenced(PA(0)) and b.pmap_is_modified(PA(0))
    # clear_modify arms fault-on-write only
    assert b.pmap_clear_modify(PA(0)) is True
    assert pte_of(b, 1, 0x10000) & (PG_FOR | PG_FOW | PG_FOE) == PG_FOW
    assert b.pmap_access(1, 0x10000, "w") == "OK" and b.pmap_is_modified(PA(0))
    # logical prot is untouched by emulation
    assert b.walk(1, 0x10000) == Translation(PA(0), RW, False)
    assert b.walk(2, 0x50000) == Translation(PA(0), PROT_R, False)
    assert messages(b) == []


def test_execute_access():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0), prot=PROT_X)  # execute only: no read
    assert b.pmap_access(1, 0x10000, "r") == "FAULT"
    assert b.pmap_access(1, 0x10000, "x") == "OK"
    assert b.pmap_is_referenced(PA(0)) and not b.pmap_is_modified(PA(0))
    assert pte_of(b, 1, 0x10000) & (PG_FOR | PG_FOE) == 0


# -- protect, unwire, extract ----------------------------------------------------------------


def test_protect():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x001FF000, PA(0), prot=RWX)
    enter(b, 1, 0x00200000, PA(1), prot=RW, access=PROT_W)
    b.pmap_protect(1, 0x001FF000, 0x00201000, RW)  # write in prot: nothing
    assert b.walk(1, 0x001FF000).prot == RWX
    b.pmap_protect(1, 0x001FF000, 0x00201000, RX)  # never adds x
    assert b.walk(1, 0x001FF000) == Translation(PA(0), RX, False)
    assert b.walk(1, 0x00200000) == Translation(PA(1), PROT_R, False)
    assert b.pmap_access(1, 0x00200000, "w") == "FAULT"
    assert b.pmap_access(1, 0x00200000, "r") == "OK"
    b.pmap_protect(1, 0x00200000, 0x00201000, PROT_X)  # no read: removes
    assert b.walk(1, 0x00200000) is None
    assert held(b, 1) == (1, 2)  # the second L3 page went
    b.pmap_protect(1, USER_MIN, USER_MAX, PROT_NONE)
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


def test_unwire_and_counts():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x10000, PA(0), wired=True)
    enter(b, 1, 0x11000, PA(1), wired=True)
    enter(b, 1, 0x12000, PA(2))
    assert (b.pmap_resident_count(1), b.pmap_wired_count(1)) == (3, 2)
    b.pmap_unwire(1, 0x10000)
    assert b.walk(1, 0x10000) == Translation(PA(0), RW, False)
    assert (b.pmap_resident_count(1), b.pmap_wired_count(1)) == (3, 1)
    b.pmap_unwire(1, 0x10000)  # already unwired
    b.pmap_unwire(1, 0x13000)  # no mapping
    b.pmap_unwire(1, 0x40000000)  # no table
    assert (b.pmap_resident_count(1), b.pmap_wired_count(1)) == (3, 1)
    b.pmap_remove(1, 0x11000, 0x12000)  # the wired one
    assert (b.pmap_resident_count(1), b.pmap_wired_count(1)) == (2, 0)
    assert messages(b) == []


def test_extract():
    b = make()
    b.pmap_create(1)
    assert b.pmap_extract(1, 0x10000) is None
    enter(b, 1, 0x10000, PA(5))
    assert b.pmap_extract(1, 0x10000) == PA(5)
    assert b.pmap_extract(1, 0x11000) is None
    b.pmap_kenter_pa(KVA, PA(6), PROT_R)
    assert b.pmap_extract(0, KVA) == PA(6)
    assert b.pmap_extract(1, KVA) is None  # separate trees


# -- the kernel pmap ---------------------------------------------------------------------------


def test_kenter_kremove_kernel_tables_never_freed():
    b = make()
    b.pmap_kenter_pa(KVA, PA(0), RW)
    assert held(b, 0) == (1, 2)  # the bootstrap L1 plus an L2 and an L3
    assert b.walk(0, KVA) == Translation(PA(0), RW, True)
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (1, 1)
    assert 0x100 not in b.pvh_list  # unmanaged
    assert not b.pmap_is_referenced(PA(0))
    assert b.pmap_access(0, KVA, "w") == "OK"
    assert not b.pmap_is_modified(PA(0)) and not b.pmap_is_referenced(PA(0))
    assert b.pmap_access(0, KVA, "x") == "FAULT"
    b.pmap_unwire(0, KVA)  # no-op on kenter'd
    b.pmap_remove(0, KERNEL_MIN, 0xFFFFF000)  # remove never removes kenter'd
    b.pmap_protect(0, KERNEL_MIN, 0xFFFFF000, PROT_R)  # nor does protect touch them
    b.pmap_collect(0)
    assert b.walk(0, KVA) == Translation(PA(0), RW, True)
    b.pmap_kenter_pa(KVA, PA(1), PROT_R)  # replaces
    assert b.walk(0, KVA) == Translation(PA(1), PROT_R, True)
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (1, 1)
    b.pmap_kremove(KERNEL_MIN, 0xFFFFF000 - KERNEL_MIN)
    assert b.walk(0, KVA) is None
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (0, 0)
    assert held(b, 0) == (1, 2)  # kernel PT pages stay
    l3 = b._pmap_l3pt(b.pmaps[0], KVA)
    assert b.pvh_refcnt[l3] == 0
    assert messages(b) == []


def test_kernel_managed_enter_and_kenter_replace_each_other():
    b = make()
    b.pmap_kenter_pa(KVA, PA(0), RW)
    assert enter(b, 0, KVA, PA(0), prot=PROT_R) == "OK"  # same pa, but now managed
    assert b.pv_entries(0x100) == [(0, KVA, b._pmap_l3pt(b.pmaps[0], KVA))]
    assert b.walk(0, KVA) == Translation(PA(0), PROT_R, False)
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (1, 0)
    b.pmap_kremove(KVA, 0x1000)  # leaves managed mappings
    assert b.walk(0, KVA) is not None
    b.pmap_kenter_pa(KVA, PA(1), RW)  # replaces the managed one: its pv entry goes
    assert 0x100 not in b.pvh_list
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (1, 1)
    enter(b, 0, KVA + 0x1000, PA(2), wired=True)
    b.pmap_remove(0, KVA, KVA + 0x2000)
    assert b.walk(0, KVA + 0x1000) is None and b.walk(0, KVA) is not None
    assert (b.pmap_resident_count(0), b.pmap_wired_count(0)) == (1, 1)
    assert held(b, 0) == (1, 2)
    assert messages(b) == []


# -- page_protect and collect --------------------------------------------------------------------


def test_page_protect_read_and_none():
    b = make()
    b.pmap_create(1)
    b.pmap_create(2)
    enter(b, 1, 0x10000, PA(0), prot=RWX)
    enter(b, 2, 0x00400000, PA(0), prot=RW, wired=True)
    enter(b, 2, 0x7FF00000, PA(0), prot=RW)
    b.pmap_page_protect(PA(0), RWX)  # write in prot: nothing
    assert b.walk(1, 0x10000).prot == RWX
    b.pmap_page_protect(PA(0), RX)
    assert b.walk(1, 0x10000).prot == RX
    assert b.walk(2, 0x00400000).prot == PROT_R
    assert b.walk(2, 0x7FF00000).prot == PROT_R
    assert held(b, 2) == (1, 4)
    b.pmap_page_protect(PA(0), PROT_NONE)  # removes all but the wired one
    assert b.walk(1, 0x10000) is None and b.walk(2, 0x7FF00000) is None
    assert b.walk(2, 0x00400000) == Translation(PA(0), PROT_R, True)
    assert held(b, 1) == (0, 0)
    assert held(b, 2) == (1, 2)
    assert [pv[:2] for pv in b.pv_entries(0x100)] == [(2, 0x00400000)]
    assert messages(b) == []


def test_collect_keeps_wired_frees_the_rest():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x00400000, PA(0), wired=True)  # L3 for 4-6 MiB
    enter(b, 1, 0x00401000, PA(1))  # same L3, non-wired
    enter(b, 1, 0x00800000, PA(2))  # L3 for 8-10 MiB: only non-wired
    enter(b, 1, 0x80000000, PA(3))  # L1 slot 2: own L2 and L3, only non-wired
    assert held(b, 1) == (1, 5)
    b.pmap_collect(1)
    assert b.walk(1, 0x00400000) == Translation(PA(0), RW, True)
    assert b.walk(1, 0x00401000) is None
    assert b.walk(1, 0x00800000) is None and b.walk(1, 0x80000000) is None
    assert held(b, 1) == (1, 2)
    assert (b.pmap_resident_count(1), b.pmap_wired_count(1)) == (1, 1)
    b.pmap_kenter_pa(KVA, PA(4), PROT_R)
    enter(b, 0, KVA + 0x1000, PA(5))
    b.pmap_collect(0)  # the kernel pmap: nothing
    assert b.walk(0, KVA) is not None and b.walk(0, KVA + 0x1000) is not None
    b.pmap_unwire(1, 0x00400000)
    b.pmap_collect(1)
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


# -- ENOMEM ------------------------------------------------------------------------------------


def _tiny(free: int, variant: str = "default") -> AlphaPmap:
    """A backend whose pool has exactly ``free`` free frames."""
    pool = PhysPool(72)
    pool.reserve_data(range(8, 72))  # 64 data frames, 8 free
    b = ALPHA_4M.factory(pool) if variant == "4m" else AlphaPmap(pool)  # kernel L1: frame 0
    while pool.free_frames > free:
        pool.alloc(Tag.META)
    return b


@pytest.mark.parametrize("free", [0, 1, 2])
def test_enomem_with_canfail_leaves_no_trace(free):
    b = _tiny(free)
    b.pmap_create(1)
    pool_before, state_before = b.pool.snapshot(), b.state_snapshot()
    assert enter(b, 1, 0x00400000, 8 << 12, canfail=True) == "ENOMEM"
    assert b.pool.snapshot() == pool_before
    assert b.state_snapshot() == state_before
    with pytest.raises(OutOfMemory):
        enter(b, 1, 0x00400000, 8 << 12, canfail=False)
    assert messages(b) == []  # even the panic path leaves the tables consistent


def test_enomem_with_an_existing_l1():
    b = _tiny(3)
    b.pmap_create(1)
    assert enter(b, 1, 0x00400000, 8 << 12, canfail=True) == "OK"  # takes all 3
    b.pool.free(b.pool.frames_with(Tag.META)[0], Tag.META)  # one frame free
    before = (b.pool.snapshot(), b.state_snapshot())
    assert enter(b, 1, 0x40000000, 9 << 12, canfail=True) == "ENOMEM"  # needs an L2 and an L3
    assert (b.pool.snapshot(), b.state_snapshot()) == before
    assert enter(b, 1, 0x00800000, 9 << 12, canfail=True) == "OK"  # needs only an L3
    assert held(b, 1) == (1, 3)
    assert enter(b, 1, 0x00801000, 10 << 12, canfail=True) == "OK"  # needs nothing
    assert messages(b) == []


def test_enomem_kernel_canfail():
    b = _tiny(1)
    before = (b.pool.snapshot(), b.state_snapshot())
    assert enter(b, 0, KVA, 8 << 12, canfail=True) == "ENOMEM"  # kernel L2 + L3 needed
    assert (b.pool.snapshot(), b.state_snapshot()) == before
    with pytest.raises(OutOfMemory):
        b.pmap_kenter_pa(KVA, 8 << 12, PROT_R)
    assert b.state_snapshot() == before[1]  # the kernel L2 made by the failed call went


class FailingPool(PhysPool):
    """Refuses the n-th allocation although frames are free (the rollback path)."""

    fail_at = -1

    def alloc(self, tag, owner=-1):
        self.fail_at -= 1
        if self.fail_at == 0:
            raise OutOfMemory("injected")
        return super().alloc(tag, owner)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_enter_error_path_undoes_references(nth):
    pool = FailingPool(8192)
    pool.reserve_data(DATA)
    b = AlphaPmap(pool)
    b.pmap_create(1)
    state, free = b.state_snapshot(), pool.free_frames
    pool.fail_at = nth
    assert enter(b, 1, 0x00400000, PA(0), canfail=True) == "ENOMEM"
    assert b.state_snapshot() == state and pool.free_frames == free
    assert held(b, 1) == (0, 0)
    assert messages(b) == []


def test_enter_error_path_kernel():
    pool = FailingPool(8192)
    pool.reserve_data(DATA)
    b = AlphaPmap(pool)
    state = b.state_snapshot()
    pool.fail_at = 2  # the kernel L3
    assert enter(b, 0, KVA, PA(0), canfail=True) == "ENOMEM"
    assert b.state_snapshot() == state and held(b, 0) == (1, 0)


# -- create / reference / destroy ----------------------------------------------------------------


def test_destroy_returns_every_frame():
    b = make()
    free0 = b.pool.free_frames
    b.pmap_create(1)
    b.pmap_reference(1)
    for n, va in enumerate((0x10000, 0x00400000, 0x40000000, 0xEFBFF000)):
        enter(b, 1, va, PA(n), wired=bool(n % 2))
    assert held(b, 1) == (1, 7)  # L2 in slots 0, 1, 3; L3 pages 0-2, 4-6 MiB, 1 GiB, top
    b.pmap_destroy(1)  # one reference left: nothing happens
    assert held(b, 1) == (1, 7) and 1 in b.pmaps
    b.pmap_remove(1, USER_MIN, USER_MAX)  # what the harness does first
    assert held(b, 1) == (0, 0)
    b.pmap_destroy(1)
    assert 1 not in b.pmaps and b.pool.free_frames == free0
    # a pmap destroyed with mappings still in it (pmap_release's DIAGNOSTIC clean-up)
    b.pmap_create(2)
    enter(b, 2, 0x10000, PA(0), wired=True)
    b.pmap_destroy(2)
    assert held(b, 2) == (0, 0) and b.pool.free_frames == free0
    assert b.pvh_list == {}
    assert messages(b) == []
    assert messages(b, Touched(pmaps=frozenset({1, 2}))) == []


@pytest.mark.parametrize("variant", ["default", "4m"])
def test_ranges_against_brute_force(variant):
    rng = random.Random(5)
    b = make(variant=variant)
    b.pmap_create(1)
    pool = [0x1000 * rng.randrange(1, 0xEFC00) for _ in range(40)]
    pool += [0x001FF000, 0x00200000, 0x003FF000, 0x00400000, 0x3FFFF000, 0x40000000, 0xEFBFF000]
    mapped = {}
    for n, va in enumerate(pool):
        enter(b, 1, va, PA(n % 8))
        mapped[va] = PA(n % 8)
    for _ in range(200):
        sva = rng.choice(pool) - 0x1000 * rng.randrange(3)
        eva = min(USER_MAX, rng.choice(pool) + 0x1000 * rng.randrange(3))
        if eva <= sva:
            sva, eva = eva, sva + 0x1000
        want = sorted(va for va in mapped if sva <= va < eva)
        assert [va for va, _ in b.walk_range(1, sva, eva)] == want
        if rng.random() < 0.3:
            b.pmap_remove(1, sva, eva)
            for va in want:
                del mapped[va]
            for va in pool:
                if va not in mapped and rng.random() < 0.5:
                    enter(b, 1, va, PA(1))
                    mapped[va] = PA(1)
        if rng.random() < 0.1:
            assert messages(b) == []
    assert {va: t.pa for va, t in b.walk_range(1, 0, 1 << 32)} == mapped
    assert messages(b) == []


def test_walk_range_in_order_and_bounded():
    b = make()
    b.pmap_create(1)
    vas = [0x1000, 0x001FF000, 0x00200000, 0x3FFFF000, 0x40000000, 0xEFBFF000]
    for n, va in enumerate(reversed(vas)):
        enter(b, 1, va, PA(n))
    assert [va for va, _ in b.walk_range(1, 0, 1 << 32)] == vas
    assert [va for va, _ in b.walk_range(1, 0x001FF000, 0x40000000)] == vas[1:4]
    assert [va for va, _ in b.walk_range(1, 0x00200000, 0x00201000)] == [0x00200000]
    assert list(b.walk_range(1, 0x00201000, 0x3FFFF000)) == []
    assert list(b.walk_range(7, 0, 1 << 32)) == [] and b.walk(7, 0x1000) is None


# -- invariants: each one fires when the tables are broken -------------------------------------


def _broken_setup():
    b = make()
    b.pmap_create(1)
    enter(b, 1, 0x00400000, PA(0), wired=True)
    enter(b, 1, 0x00401000, PA(1))
    assert messages(b) == []
    return b


def _fires(b, name, touched):
    assert messages(b, touched, name), f"{name} did not fire on {touched}"
    assert messages(b, None, name), f"{name} did not fire in the full audit"


def test_clean_backend_passes_every_invariant_incrementally():
    b = _broken_setup()
    t = Touched(frozenset({0, 1}), ((1, 0x00400000), (1, 0x00401000), (1, 0x10000)), frozenset({PA(0), PA(1)}))
    assert messages(b, t) == []


@pytest.mark.parametrize("level", [1, 2, 3])
def test_invariant_refcounts(level):
    b = _broken_setup()
    frame = {1: 1, 2: 2, 3: 3}[level]
    b.pvh_refcnt[frame] += 1
    _fires(b, "alpha-table-refcounts", Touched(vas=((1, 0x00400000),)))
    # a va whose walk stops at the L1 sees only the L1
    elsewhere = messages(b, Touched(vas=((1, 0x40000000),)), "alpha-table-refcounts")
    assert bool(elsewhere) == (level == 1)


def test_invariant_refcount_on_a_free_page():
    b = _broken_setup()
    b.pvh_refcnt[50] = 1
    assert messages(b, None, "alpha-table-refcounts")


def test_invariant_no_freed_tables():
    b = _broken_setup()
    b.pool.free(3, Tag.PT)  # the L3 page, behind the pmap's back
    _fires(b, "alpha-no-freed-tables", Touched(vas=((1, 0x00401000),)))


def test_invariant_pv_missing_entry():
    b = _broken_setup()
    b.pvh_list[0x101].clear()
    _fires(b, "alpha-pv-mappings", Touched(vas=((1, 0x00401000),)))


def test_invariant_pv_stale_entry():
    b = _broken_setup()
    b.pvh_list.setdefault(0x105, {})[(1, 0x00402000)] = 3
    _fires(b, "alpha-pv-mappings", Touched(pas=frozenset({PA(5)})))


def test_invariant_pv_wrong_pte_pointer():
    b = _broken_setup()
    b.pvh_list[0x100][(1, 0x00400000)] = 2
    _fires(b, "alpha-pv-mappings", Touched(pas=frozenset({PA(0)})))


def test_invariant_stats():
    b = _broken_setup()
    b.pmaps[1].wired_count = 3  # more wired than resident
    _fires(b, "alpha-stats", Touched(pmaps=frozenset({1})))
    b = _broken_setup()
    b.pmaps[1].resident_count = 0  # none resident, but an L1
    _fires(b, "alpha-stats", Touched(pmaps=frozenset({1})))
    b = _broken_setup()
    b.pmaps[1].resident_count += 1  # only the full audit counts PTEs
    assert messages(b, None, "alpha-stats")


def test_invariant_frames_conserved():
    b = _broken_setup()
    b.pool.alloc(Tag.PT, 1)  # a PT frame of pmap 1 in no table: leaked
    _fires(b, "alpha-frames-conserved", Touched(pmaps=frozenset({1})))
    b = _broken_setup()
    b.pmap_remove(1, USER_MIN, USER_MAX)
    b.pmap_destroy(1)
    b.pool.alloc(Tag.L1, 1)  # a destroyed pmap still holding a frame
    _fires(b, "alpha-frames-conserved", Touched(pmaps=frozenset({1})))


def test_invariant_empty_pmap():
    b = _broken_setup()
    b.pmap_remove(1, USER_MIN, USER_MAX)
    b.pool.alloc(Tag.PT, 1)
    _fires(b, "alpha-empty-pmap", Touched(pmaps=frozenset({1})))
    # and with the counters lying: an L1 whose only entry was cleared behind its back
    b = _broken_setup()
    b.ptmem[1][0] = 0
    _fires(b, "alpha-empty-pmap", Touched(vas=((1, 0x00400000),)))


def test_invariant_refmod():
    b = _broken_setup()
    l3 = b.ptmem[3]
    l3[1] &= ~PG_FOW  # writable without fault, page not MOD
    _fires(b, "alpha-refmod-emulation", Touched(vas=((1, 0x00401000),)))
    assert messages(b, Touched(pas=frozenset({PA(1)})), "alpha-refmod-emulation")


def test_invariants_ignore_other_backends():
    class Other:
        pass

    for inv in INVARIANTS:
        assert list(inv.check(Other(), None)) == []
        assert inv.backends == ("alpha-ref", "alpha-ref-4m")


# -- a random stream against a dictionary model ---------------------------------------------------

VAS = [
    0x1000, 0x2000, 0x001FF000, 0x00200000, 0x003FF000, 0x00400000, 0x00401000,
    0x3FFFF000, 0x40000000, 0x7FFFF000, 0xBFFFF000, 0xC0000000, 0xEFBFF000,
]
KVAS = [KERNEL_MIN, KERNEL_MIN + 0x1000, KERNEL_MIN + 0x00400000, 0xFFFFE000]


class Model:
    """What docs/SEMANTICS.md says, as dictionaries."""

    def __init__(self):
        self.maps = {}  # (pmap, va) -> [pa, prot, wired, managed]
        self.mod, self.ref = set(), set()


def _random_op(rng, b, m, pmaps):
    kind = rng.choice(
        ["enter"] * 8 + ["remove", "protect", "unwire", "kenter", "kremove", "page_protect",
                         "clear_modify", "clear_reference", "collect"] + ["access"] * 4
    )
    pa = PA(rng.randrange(8))
    touched_vas, touched_pas, touched_pmaps = [], {pa}, set()
    if kind == "enter":
        pmap = rng.choice(pmaps + [0])
        va = rng.choice(KVAS if pmap == 0 else VAS)
        prot = rng.randrange(1, 8)
        access = prot & rng.randrange(8)
        wired = rng.random() < 0.3
        old = m.maps.get((pmap, va))
        if old and old[3]:
            touched_pas.add(old[0])
        assert b.pmap_enter(pmap, va, pa, prot, access, wired, rng.random() < 0.5) == "OK"
        m.maps[(pmap, va)] = [pa, prot, wired, True]
        if access & PROT_W:
            m.mod.add(pa)
        if access:
            m.ref.add(pa)
        touched_vas.append((pmap, va))
    elif kind in ("remove", "protect"):
        pmap = rng.choice(pmaps)
        i = rng.randrange(len(VAS))
        j = rng.randrange(i, len(VAS))
        sva, eva = VAS[i], VAS[j] + 0x1000
        prot = rng.choice([PROT_NONE, PROT_R, RX, RW, PROT_X])
        if kind == "remove":
            b.pmap_remove(pmap, sva, eva)
        else:
            b.pmap_protect(pmap, sva, eva, prot)
        for (p, va), e in list(m.maps.items()):
            if p == pmap and sva <= va < eva:
                touched_vas.append((p, va))
                touched_pas.add(e[0])
                if kind == "remove" or not prot & PROT_R:
                    del m.maps[(p, va)]
                elif not prot & PROT_W:
                    e[1] &= prot
    elif kind == "unwire":
        pmap = rng.choice(pmaps)
        va = rng.choice(VAS)
        b.pmap_unwire(pmap, va)
        if (pmap, va) in m.maps:
            m.maps[(pmap, va)][2] = False
        touched_vas.append((pmap, va))
    elif kind == "kenter":
        va = rng.choice(KVAS)
        prot = rng.randrange(1, 8)
        b.pmap_kenter_pa(va, pa, prot)
        old = m.maps.get((0, va))
        if old:
            touched_pas.add(old[0])
        m.maps[(0, va)] = [pa, prot, True, False]
        touched_vas.append((0, va))
    elif kind == "kremove":
        va = rng.choice(KVAS)
        size = min(rng.choice([0x1000, 0x00401000, 0x10000000]), 0xFFFFF000 - va)
        b.pmap_kremove(va, size)
        for (p, v), e in list(m.maps.items()):
            if p == 0 and va <= v < va + size and not e[3]:
                del m.maps[(p, v)]
                touched_vas.append((p, v))
    elif kind == "page_protect":
        prot = rng.choice([PROT_NONE, PROT_R, RX, RW])
        b.pmap_page_protect(pa, prot)
        for key, e in list(m.maps.items()):
            if e[0] == pa and e[3]:
                touched_vas.append(key)
                if prot & PROT_W:
                    continue
                if prot & PROT_R:
                    e[1] &= ~PROT_W
                elif not e[2]:
                    del m.maps[key]
    elif kind == "clear_modify":
        assert b.pmap_clear_modify(pa) == (pa in m.mod)
        m.mod.discard(pa)
    elif kind == "clear_reference":
        assert b.pmap_clear_reference(pa) == (pa in m.ref)
        m.ref.discard(pa)
    elif kind == "collect":
        pmap = rng.choice(pmaps + [0])
        b.pmap_collect(pmap)
        touched_pmaps.add(pmap)
        if pmap:
            for key, e in list(m.maps.items()):
                if key[0] == pmap and not e[2]:
                    del m.maps[key]
                    touched_vas.append(key)
                    touched_pas.add(e[0])
    else:  # access
        pmap = rng.choice(pmaps + [0])
        va = rng.choice(KVAS if pmap == 0 else VAS)
        k = rng.choice("rwx")
        e = m.maps.get((pmap, va))
        bit = {"r": PROT_R, "w": PROT_W, "x": PROT_X}[k]
        expect = "OK" if e and e[1] & bit else "FAULT"
        assert b.pmap_access(pmap, va, k) == expect
        if expect == "OK" and e[3]:
            m.ref.add(e[0])
            if k == "w":
                m.mod.add(e[0])
        touched_vas.append((pmap, va))
        if e:
            touched_pas.add(e[0])
    for pmap, _ in touched_vas:
        touched_pmaps.add(pmap)
    return Touched(frozenset(touched_pmaps), tuple(touched_vas), frozenset(touched_pas))


def _compare_all(b, m, pmaps):
    for pmap in [0] + pmaps:
        got = {va: t for va, t in b.walk_range(pmap, 0, 1 << 32)}
        want = {
            va: Translation(e[0], e[1], e[2]) for (p, va), e in m.maps.items() if p == pmap
        }
        assert got == want
        assert b.pmap_resident_count(pmap) == len(want)
        assert b.pmap_wired_count(pmap) == sum(t.wired for t in want.values())
        if pmap:  # a refcounting pmap holds exactly what its mappings need
            need = needed_pt_frames(b.geometry, want)
            assert b.pool.held(pmap, Tag.L1) == need.get(Tag.L1, 0)
            assert b.pool.held(pmap, Tag.PT) == need.get(Tag.PT, 0)
    for n in range(8):
        assert b.pmap_is_modified(PA(n)) == (PA(n) in m.mod)
        assert b.pmap_is_referenced(PA(n)) == (PA(n) in m.ref)
    assert messages(b) == []


@pytest.mark.parametrize("variant,seed", [("default", 1), ("default", 2), ("4m", 3)])
def test_random_stream_matches_the_semantics(variant, seed):
    rng = random.Random(seed)
    b = make(variant=variant)
    m = Model()
    pmaps = [1, 2, 3]
    for p in pmaps:
        b.pmap_create(p)
    for step in range(2500):
        touched = _random_op(rng, b, m, pmaps)
        for pmap, va in touched.vas:
            e = m.maps.get((pmap, va))
            assert b.walk(pmap, va) == (Translation(e[0], e[1], e[2]) if e else None)
        assert messages(b, touched) == []
        if step % 250 == 0:
            _compare_all(b, m, pmaps)
    _compare_all(b, m, pmaps)
    for p in pmaps:
        b.pmap_remove(p, USER_MIN, USER_MAX)
        b.pmap_destroy(p)
        assert held(b, p) == (0, 0)
    assert messages(b) == []


def test_refcounts_audit_names_a_count_outside_every_table():
    """The full table-refcount check finds a reference count on a frame that is in no
    table (and only then walks every count to name it)."""
    b = make()
    b.pmap_create(1)
    assert enter(b, 1, 0x00400000, PA(0)) == "OK"
    assert messages(b, None, "alpha-table-refcounts") == []
    b.pvh_refcnt[0x100] = 2  # a data page counted as if it were a table
    b.pvh_refcnt[0x101] = -1
    assert messages(b, None, "alpha-table-refcounts") == [
        "frame 0x100 is in no page table but has reference count 2",
        "frame 0x101 is in no page table but has reference count -1",
    ]
    b.pvh_refcnt[0x100] = b.pvh_refcnt[0x101] = 0
    b.pvh_refcnt[3] += 1  # a table's own count off: reported as such, not as outside
    assert [m for m in messages(b, None, "alpha-table-refcounts") if "in no page table" in m] == []
