"""The arm32 backends (impls/arm32.py, impls/arm32_core.py): hand-computed cases.

Frame numbers follow from the pool: a fresh ``PhysPool`` hands out its lowest free frame
first and a freed frame is the next one handed out.  With data frames 0x100..0x13f
reserved, the kernel pmap's L1 is frames 0-3 (bootstrap), pmap 1's L1 is frames 4-7 and
the first PT frame is 8.
"""

from __future__ import annotations

import random

import pytest

from difftest.backend import Touched, Translation, needed_pt_frames
from difftest.machine import USER_MAX, USER_MIN, OutOfMemory, PhysPool, Tag
from difftest.ops import PROT_ALL, PROT_NONE, PROT_R, PROT_W, PROT_X
from impls import arm32_core as core
from impls.arm32 import INVARIANTS, Arm32Leaky, Arm32Refcount

RW = PROT_R | PROT_W
RX = PROT_R | PROT_X
DATA = range(0x100, 0x140)
PA1, PA2, PA3 = 0x100000, 0x101000, 0x102000
KVA = 0xF0000000

BACKENDS = [Arm32Leaky, Arm32Refcount]


def make(cls, phys_pages=8192, data=DATA, pmaps=1):
    pool = PhysPool(phys_pages)
    pool.reserve_data(data)
    b = cls(pool)
    for p in range(1, pmaps + 1):
        b.pmap_create(p)
    return pool, b


def pte(b, pmap, va):
    where = b.pmap_pte(pmap, va)
    return 0 if where is None else where[0][where[1]]


def inv(name):
    for i in INVARIANTS:
        if i.name == name:
            return i
    raise KeyError(name)


def violations(b, touched=None):
    """Every message of every invariant that applies to ``b``."""
    return [(i.name, m) for i in INVARIANTS if i.applies_to(b.name) for m in i.check(b, touched)]


def audit_clean(b):
    assert violations(b) == []


def pv(b, pa):
    return [(k >> 32, k & 0xFFFFFFFF, f) for k, f in b._pv.get(pa >> 12, {}).items()]


# -- bootstrap, create, destroy --------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_bootstrap_and_create_take_four_l1_frames_each(cls):
    pool, b = make(cls, pmaps=0)
    assert b._pmaps[0].l1_frames == (0, 1, 2, 3)
    assert [pool.tag_of(f) for f in range(4)] == [Tag.L1] * 4
    assert pool.held(0, Tag.L1) == 4 and pool.count(Tag.PT) == 0
    b.pmap_create(1)
    assert b._pmaps[1].l1_frames == (4, 5, 6, 7)
    assert pool.held(1, Tag.L1) == 4
    assert b.pmap_resident_count(1) == b.pmap_wired_count(1) == 0
    audit_clean(b)


def test_geometry_declares_four_l1_frames_and_a_pt_frame_per_4mib():
    g = Arm32Leaky.geometry
    assert g is Arm32Refcount.geometry
    assert g.describe() == "L1 4096x1MiB (4 frames, at create) > PT 1024x4KiB"
    vas = [0x1000, 0x3FF000, 0x400000, 0x7FF000, 0x800000]
    assert needed_pt_frames(g, vas) == {Tag.L1: 4, Tag.PT: 3}


@pytest.mark.parametrize("cls", BACKENDS)
def test_create_out_of_memory_propagates_and_takes_nothing(cls):
    pool, b = make(cls, phys_pages=0x142, pmaps=0)  # 0x142 - 0x40 data - 4 kernel L1 = 254 free
    for p in range(1, 64):
        b.pmap_create(p)  # 252 frames
    before, state = pool.snapshot(), b.state_snapshot()
    with pytest.raises(OutOfMemory):
        b.pmap_create(64)  # 2 frames left, 4 needed
    assert pool.snapshot() == before and b.state_snapshot() == state
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_destroy_returns_every_frame(cls):
    pool, b = make(cls, pmaps=0)
    boot = pool.count(Tag.PT) + pool.count(Tag.L1)
    assert boot == 4
    b.pmap_create(1)
    b.pmap_reference(1)
    for va in (0x1000, 0x00400000, 0x10000000, 0xEFBFF000):
        b.pmap_enter(1, va, PA1, RW, PROT_NONE, False, False)
    b.pmap_remove(1, 0x1000, 0x00402000)
    held = pool.held(1, Tag.PT)
    assert held == (4 if cls is Arm32Leaky else 2)
    b.pmap_destroy(1)  # one reference left: nothing happens
    assert pool.held(1, Tag.PT) == held and pool.held(1, Tag.L1) == 4
    b.pmap_remove(1, USER_MIN, USER_MAX)
    frees = pool.frees
    b.pmap_destroy(1)
    assert pool.count(Tag.PT) + pool.count(Tag.L1) == boot
    assert pool.held(1, Tag.PT) == pool.held(1, Tag.L1) == 0
    assert pool.frees - frees == 4 + (4 if cls is Arm32Leaky else 0)
    assert 1 not in b._pmaps and pv(b, PA1) == []
    assert pool.check_conservation() == []
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_destroy_of_a_pmap_that_still_has_mappings_cleans_up(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x5000, PA1, RW, PROT_W, True, False)
    b.pmap_destroy(1)
    assert pool.count(Tag.PT) + pool.count(Tag.L1) == 4
    assert pv(b, PA1) == [] and b.pmap_is_modified(PA1)
    audit_clean(b)


# -- enter and remove -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_enter_allocates_one_pt_frame_filling_four_l1_slots(cls):
    pool, b = make(cls)
    assert b.pmap_enter(1, 0x00401000, PA1, RW, PROT_R, False, False) == "OK"
    pm = b._pmaps[1]
    assert pm.l1[4:8] == [(8, 0), (8, 1), (8, 2), (8, 3)]
    assert pm.l1[3] is None and pm.l1[8] is None
    assert pm.vptpt == {1: 8}
    assert pool.tag_of(8) == Tag.PT and pool.owner_of(8) == 1
    assert b.walk(1, 0x00401000) == Translation(PA1, RW, False)
    assert b.walk(1, 0x00402000) is None and b.walk(1, 0x00001000) is None
    assert pv(b, PA1) == [(1, 0x00401000, core.PT_Wr)]
    # A second page in the same 4 MiB region shares the frame.
    b.pmap_enter(1, 0x007FF000, PA2, PROT_R, PROT_NONE, False, False)
    assert pool.held(1, Tag.PT) == 1 and pm.l1[7] == (8, 3)
    assert b.pmap_resident_count(1) == 2
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_enter_and_remove_of_one_page(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert pool.held(1, Tag.PT) == 1
    b.pmap_remove(1, 0x1000, 0x2000)
    assert b.walk(1, 0x1000) is None and b.pmap_extract(1, 0x1000) is None
    assert b.pmap_resident_count(1) == 0 and pv(b, PA1) == []
    if cls is Arm32Leaky:
        assert pool.held(1, Tag.PT) == 1
        assert b._pmaps[1].l1[0] == (8, 0)
    else:
        assert pool.held(1, Tag.PT) == 0
        assert b._pmaps[1].l1[0:4] == [None] * 4 and pool.tag_of(8) == Tag.FREE
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_remove_across_a_4mib_boundary(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x003FF000, PA1, RW, PROT_NONE, False, False)
    b.pmap_enter(1, 0x00400000, PA2, RW, PROT_NONE, False, False)
    assert b._pmaps[1].vptpt == {0: 8, 1: 9}
    frees = pool.frees
    b.pmap_remove(1, 0x003FF000, 0x00401000)
    assert b.pmap_resident_count(1) == 0
    if cls is Arm32Leaky:
        assert pool.frees == frees and pool.held(1, Tag.PT) == 2
    else:
        assert pool.frees - frees == 2 and pool.held(1, Tag.PT) == 0
        assert b._pmaps[1].vptpt == {}
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_ranges_crossing_1mib_and_2mib_boundaries(cls):
    pool, b = make(cls)
    vas = [0x000FF000, 0x00100000, 0x001FF000, 0x00200000, 0x002FF000, 0x00300000]
    for i, va in enumerate(vas):
        b.pmap_enter(1, va, PA1 + i * 0x1000, RW, PROT_NONE, False, False)
    pm = b._pmaps[1]
    assert pm.l1[0:4] == [(8, 0), (8, 1), (8, 2), (8, 3)] and pool.held(1, Tag.PT) == 1
    if cls is Arm32Refcount:
        assert b._occ[8] == 6
    # Across the 1 MiB boundary at 0x00100000: two pages, two L1 slots.
    b.pmap_remove(1, 0x000FF000, 0x00101000)
    assert [b.walk(1, va) is not None for va in vas] == [False, False, True, True, True, True]
    # Across 2 MiB (0x00200000), starting and ending mid-slot.
    b.pmap_remove(1, 0x001FE000, 0x00201000)
    assert [b.walk(1, va) is not None for va in vas] == [False] * 4 + [True, True]
    assert pool.held(1, Tag.PT) == 1
    if cls is Arm32Refcount:
        assert b._occ[8] == 2
    # The last two: the frame goes in the refcount backend only.
    b.pmap_remove(1, 0x002FF000, 0x00301000)
    assert pool.held(1, Tag.PT) == (1 if cls is Arm32Leaky else 0)
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_remove_of_a_wide_range_looks_only_at_pt_pages(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x00C00000, PA1, RW, PROT_NONE, False, False)
    b.pmap_enter(1, 0xEF800000, PA2, RW, PROT_NONE, False, False)
    pm = b._pmaps[1]
    chunks = b._chunks(pm, USER_MIN, USER_MAX)
    assert [(r, f) for r, f, _, _ in chunks] == [(3, 8), (0x3BE, 9)]
    assert b._chunks(pm, 0x00C01000, 0x00C03000) == [(3, 8, 1, 3)]
    assert b._chunks(pm, 0x01000000, 0x20000000) == []
    b.pmap_remove(1, 0x01000000, 0xEF000000)  # empty: 936 regions, none with a PT page
    b.pmap_remove(1, USER_MIN, USER_MAX)
    assert b.pmap_resident_count(1) == 0
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_walk_range_in_va_order_and_resident_wired_counts(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x00800000, PA3, PROT_R, PROT_NONE, True, False)
    b.pmap_enter(1, 0x00002000, PA1, RW, PROT_R, False, False)
    b.pmap_enter(1, 0x00001000, PA2, PROT_X, PROT_NONE, True, False)
    assert list(b.walk_range(1, USER_MIN, USER_MAX)) == [
        (0x1000, Translation(PA2, PROT_X, True)),
        (0x2000, Translation(PA1, RW, False)),
        (0x00800000, Translation(PA3, PROT_R, True)),
    ]
    assert list(b.walk_range(1, 0x2000, 0x00800000)) == [(0x2000, Translation(PA1, RW, False))]
    assert b.pmap_resident_count(1) == 3 and b.pmap_wired_count(1) == 2
    assert list(b.walk_range(7, USER_MIN, USER_MAX)) == [] and b.walk(7, 0x1000) is None
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_replacing_a_mapping_moves_its_pv_entry(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x3000, PA1, RW, PROT_W, True, False)
    assert pv(b, PA1) == [(1, 0x3000, core.PT_Wr | core.PT_W)]
    b.pmap_enter(1, 0x3000, PA2, PROT_R, PROT_NONE, False, False)
    assert pv(b, PA1) == [] and pv(b, PA2) == [(1, 0x3000, 0)]
    assert b.walk(1, 0x3000) == Translation(PA2, PROT_R, False)
    assert b.pmap_resident_count(1) == 1 and b.pmap_wired_count(1) == 0
    assert b.pmap_is_modified(PA1) and not b.pmap_is_referenced(PA2)  # the old page keeps MOD
    if cls is Arm32Refcount:
        assert b._occ[8] == 1
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_reentering_the_same_page_sets_prot_and_wiring(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x3000, PA1, RW, PROT_W, True, False)
    assert b.pmap_wired_count(1) == 1
    b.pmap_enter(1, 0x3000, PA1, PROT_R, PROT_R, False, False)
    assert b.walk(1, 0x3000) == Translation(PA1, PROT_R, False)
    assert pv(b, PA1) == [(1, 0x3000, 0)]
    assert b.pmap_wired_count(1) == 0 and b.pmap_resident_count(1) == 1
    assert not pte(b, 1, 0x3000) & core.PT_AP_W
    b.pmap_enter(1, 0x3000, PA1, RW, PROT_NONE, True, False)
    assert b.pmap_wired_count(1) == 1 and pv(b, PA1) == [(1, 0x3000, core.PT_Wr | core.PT_W)]
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_enomem_with_canfail_leaves_no_trace(cls):
    # 0x150 frames: 0x40 data (0x100..0x13f), kernel L1 0-3, pmap 1 L1 4-7.
    pool, b = make(cls, phys_pages=0x150)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, True, False)
    va = 0x00400000
    while pool.free_frames:
        b.pmap_enter(1, va, PA2, RW, PROT_R, False, False)
        va += 0x00400000
    b.pmap_enter(1, 0x2000, PA3, RW, PROT_NONE, False, True)  # region 0 has its PT frame
    before, state = pool.snapshot(), b.state_snapshot()
    assert b.pmap_enter(1, va, PA1, RW, PROT_W, True, True) == "ENOMEM"
    assert pool.snapshot() == before and b.state_snapshot() == state
    assert b.walk(1, va) is None
    with pytest.raises(OutOfMemory):
        b.pmap_enter(1, va, PA1, RW, PROT_W, True, False)
    assert pool.snapshot() == before and b.state_snapshot() == state
    audit_clean(b)


# -- protect, unwire, extract --------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_protect_without_read_removes(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, True, False)
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_R, False, False)
    b.pmap_protect(1, 0x1000, 0x3000, PROT_X)
    assert b.walk(1, 0x1000) is None and b.walk(1, 0x2000) is None
    assert b.pmap_resident_count(1) == b.pmap_wired_count(1) == 0
    assert pool.held(1, Tag.PT) == (1 if cls is Arm32Leaky else 0)
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_protect_with_write_does_nothing(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, PROT_R, PROT_NONE, False, False)
    state = b.state_snapshot()
    b.pmap_protect(1, 0x1000, 0x2000, PROT_ALL)
    b.pmap_protect(1, 0x1000, 0x2000, RW)
    assert b.state_snapshot() == state
    b.pmap_protect(1, 0x1000, 0x2000, PROT_W)  # but no r: removes
    assert b.walk(1, 0x1000) is None


@pytest.mark.parametrize("cls", BACKENDS)
def test_protect_read_drops_write(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x003FF000, PA1, PROT_ALL, PROT_W, False, False)
    b.pmap_enter(1, 0x00400000, PA2, RX, PROT_R, False, False)
    assert pte(b, 1, 0x003FF000) & core.PT_AP_W
    b.pmap_protect(1, 0x003FF000, 0x00401000, PROT_R)
    assert b.walk(1, 0x003FF000) == Translation(PA1, PROT_R, False)
    assert b.walk(1, 0x00400000) == Translation(PA2, PROT_R, False)
    assert not pte(b, 1, 0x003FF000) & core.PT_AP_W
    assert pv(b, PA1) == [(1, 0x003FF000, 0)]
    assert b.pmap_access(1, 0x003FF000, "w") == "FAULT"
    assert b.pmap_access(1, 0x003FF000, "r") == "OK"
    assert b.pmap_access(1, 0x00400000, "x") == "FAULT"
    # Rights are never added back: protect rx keeps r only.
    b.pmap_protect(1, 0x003FF000, 0x00401000, RX)
    assert b.walk(1, 0x003FF000).prot == PROT_R
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_unwire(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, True, False)
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_NONE, True, False)
    assert b.pmap_wired_count(1) == 2
    b.pmap_unwire(1, 0x1000)
    assert b.walk(1, 0x1000) == Translation(PA1, RW, False)
    assert pv(b, PA1) == [(1, 0x1000, core.PT_Wr)]
    assert b.pmap_wired_count(1) == 1
    b.pmap_unwire(1, 0x1000)  # already unwired
    b.pmap_unwire(1, 0x5000)  # no mapping
    b.pmap_unwire(1, 0x00800000)  # no PT page
    assert b.pmap_wired_count(1) == 1 and b.pmap_resident_count(1) == 2
    b.pmap_kenter_pa(KVA, PA3, PROT_R)
    b.pmap_unwire(0, KVA)  # kenter'd mappings stay wired
    assert b.walk(0, KVA).wired and b.pmap_wired_count(0) == 1
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_extract(cls):
    pool, b = make(cls, data=range(0x100, 0x140))
    b.pmap_enter(1, 0x7000, PA2, PROT_R, PROT_NONE, False, False)
    b.pmap_kenter_pa(KVA + 0x1000, PA3, RW)
    assert b.pmap_extract(1, 0x7000) == PA2
    assert b.pmap_extract(1, 0x8000) is None
    assert b.pmap_extract(1, 0x10000000) is None
    assert b.pmap_extract(0, KVA + 0x1000) == PA3
    assert b.pmap_extract(0, 0x7000) is None


# -- REF/MOD emulation --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_enter_seeds_ref_mod_from_the_access_type(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_R, False, False)
    b.pmap_enter(1, 0x3000, PA3, RW, PROT_W, False, False)
    t1, t2, t3 = (pte(b, 1, va) for va in (0x1000, 0x2000, 0x3000))
    assert t1 & core.L2_MASK == core.L2_INVAL and not t1 & core.PT_AP_W
    assert t2 & core.L2_MASK == core.L2_SPAGE and not t2 & core.PT_AP_W
    assert t3 & core.L2_MASK == core.L2_SPAGE and t3 & core.PT_AP_W
    assert [b.pmap_is_referenced(pa) for pa in (PA1, PA2, PA3)] == [False, True, True]
    assert [b.pmap_is_modified(pa) for pa in (PA1, PA2, PA3)] == [False, False, True]
    assert list(b._attrs[0x100:0x103]) == [0, core.PT_H, core.PT_H | core.PT_M]


@pytest.mark.parametrize("cls", BACKENDS)
def test_access_drives_ref_and_mod(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert b.pmap_access(1, 0x1000, "x") == "FAULT"  # not in prot: nothing changes
    assert not b.pmap_is_referenced(PA1) and pte(b, 1, 0x1000) & core.L2_MASK == core.L2_INVAL
    assert b.pmap_access(1, 0x1000, "r") == "OK"  # pmap_handled_emulation
    assert b.pmap_is_referenced(PA1) and not b.pmap_is_modified(PA1)
    assert pte(b, 1, 0x1000) & core.L2_MASK == core.L2_SPAGE
    assert not pte(b, 1, 0x1000) & core.PT_AP_W
    assert b.pmap_access(1, 0x1000, "w") == "OK"  # pmap_modified_emulation
    assert b.pmap_is_modified(PA1) and pte(b, 1, 0x1000) & core.PT_AP_W
    assert b.pmap_access(1, 0x2000, "r") == "FAULT"  # no mapping
    assert b.pmap_access(1, 0x00800000, "r") == "FAULT"  # no PT page
    # A write to an L2_INVAL PTE takes both fix-ups.
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_NONE, False, False)
    assert b.pmap_access(1, 0x2000, "w") == "OK"
    assert b.pmap_is_referenced(PA2) and b.pmap_is_modified(PA2)
    # Read-only mapping: a write is a real fault and changes nothing.
    b.pmap_enter(1, 0x3000, PA3, PROT_R, PROT_NONE, False, False)
    assert b.pmap_access(1, 0x3000, "w") == "FAULT"
    assert not b.pmap_is_referenced(PA3) and not b.pmap_is_modified(PA3)
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_mod_survives_remove_until_clear_modify(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, False, False)
    b.pmap_remove(1, 0x1000, 0x2000)
    assert b.pmap_is_modified(PA1) and b.pmap_is_referenced(PA1)
    assert b.pmap_clear_modify(PA1) is True
    assert not b.pmap_is_modified(PA1)
    assert b.pmap_clear_modify(PA1) is False
    assert b.pmap_is_referenced(PA1)


@pytest.mark.parametrize("cls", BACKENDS)
def test_clear_modify_revokes_write_in_every_mapping(cls):
    pool, b = make(cls, pmaps=2)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, False, False)
    b.pmap_enter(2, 0x00400000, PA1, RW, PROT_W, False, False)
    assert b.pmap_clear_modify(PA1) is True
    assert not pte(b, 1, 0x1000) & core.PT_AP_W and not pte(b, 2, 0x00400000) & core.PT_AP_W
    assert b.walk(2, 0x00400000).prot == RW  # the logical prot stays
    assert b.pmap_access(1, 0x1000, "r") == "OK" and not b.pmap_is_modified(PA1)
    assert b.pmap_access(2, 0x00400000, "w") == "OK" and b.pmap_is_modified(PA1)
    assert not pte(b, 1, 0x1000) & core.PT_AP_W  # only the faulting PTE gets AP_W back
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_clear_reference_then_access_sets_ref_again(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RX, PROT_R, False, False)
    assert b.pmap_clear_reference(PA1) is True
    assert not b.pmap_is_referenced(PA1)
    assert pte(b, 1, 0x1000) & core.L2_MASK == core.L2_INVAL
    assert b.pmap_clear_reference(PA1) is False
    assert b.pmap_access(1, 0x1000, "x") == "OK"
    assert b.pmap_is_referenced(PA1) and not b.pmap_is_modified(PA1)
    assert b.walk(1, 0x1000) == Translation(PA1, RX, False)
    audit_clean(b)


# -- kenter / kremove ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_kenter_and_kremove(cls):
    pool, b = make(cls, pmaps=0)
    b.pmap_kenter_pa(KVA, PA1, RW)
    b.pmap_kenter_pa(KVA + 0x1000, PA2, PROT_R)
    k = b._pmaps[0]
    assert k.l1[0xF00:0xF04] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert pool.held(0, Tag.PT) == 1 and pool.owner_of(4) == 0
    assert b.walk(0, KVA) == Translation(PA1, RW, True)
    assert pv(b, PA1) == [] and b.pmap_resident_count(0) == b.pmap_wired_count(0) == 2
    assert b.pmap_access(0, KVA, "w") == "OK"
    assert not b.pmap_is_modified(PA1) and not b.pmap_is_referenced(PA1)  # unmanaged
    # page_protect and remove leave kenter'd mappings alone.
    b.pmap_page_protect(PA1, PROT_NONE)
    b.pmap_remove(0, KVA, KVA + 0x2000)
    assert b.walk(0, KVA) == Translation(PA1, RW, True)
    b.pmap_kremove(KVA, 0x2000)
    assert b.walk(0, KVA) is None and b.walk(0, KVA + 0x1000) is None
    assert b.pmap_resident_count(0) == b.pmap_wired_count(0) == 0
    assert pool.held(0, Tag.PT) == 1  # kernel PT frames are never freed
    if cls is Arm32Refcount:
        assert b._occ[4] == 0
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_kenter_and_managed_kernel_mappings_replace_each_other(cls):
    pool, b = make(cls, pmaps=0)
    b.pmap_enter(0, KVA, PA1, RW, PROT_W, False, False)
    assert pv(b, PA1) == [(0, KVA, core.PT_Wr)] and b.pmap_wired_count(0) == 0
    b.pmap_kenter_pa(KVA, PA2, PROT_R)  # replaces the managed one
    assert pv(b, PA1) == [] and b.walk(0, KVA) == Translation(PA2, PROT_R, True)
    assert b.pmap_resident_count(0) == 1 and b.pmap_wired_count(0) == 1
    b.pmap_enter(0, KVA, PA3, RW, PROT_NONE, False, False)  # and back
    assert pv(b, PA3) == [(0, KVA, core.PT_Wr)]
    assert b.pmap_resident_count(0) == 1 and b.pmap_wired_count(0) == 0
    b.pmap_kremove(KVA, 0x1000)  # kremove leaves managed mappings
    assert b.walk(0, KVA) == Translation(PA3, RW, False)
    b.pmap_remove(0, KVA, KVA + 0x1000)
    assert b.walk(0, KVA) is None and pool.held(0, Tag.PT) == 1
    b.pmap_collect(0)
    assert pool.held(0, Tag.PT) == 1
    audit_clean(b)


# -- page_protect, collect ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_page_protect_read_removes_write_everywhere(cls):
    pool, b = make(cls, pmaps=2)
    b.pmap_enter(1, 0x1000, PA1, PROT_ALL, PROT_W, False, False)
    b.pmap_enter(2, 0x2000, PA1, RW, PROT_W, True, False)
    b.pmap_enter(2, 0x3000, PA2, RW, PROT_W, False, False)
    state = b.state_snapshot()
    b.pmap_page_protect(PA1, RW)  # w in prot: nothing
    assert b.state_snapshot() == state
    b.pmap_page_protect(PA1, RX)
    assert b.walk(1, 0x1000) == Translation(PA1, RX, False)
    assert b.walk(2, 0x2000) == Translation(PA1, PROT_R, True)
    assert b.walk(2, 0x3000) == Translation(PA2, RW, False)  # another page
    assert pv(b, PA1) == [(1, 0x1000, 0), (2, 0x2000, core.PT_W)]
    assert b.pmap_access(2, 0x2000, "w") == "FAULT"
    assert b.pmap_is_modified(PA1)
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_page_protect_none_removes_every_mapping_wired_too(cls):
    pool, b = make(cls, pmaps=2)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, True, False)
    b.pmap_enter(2, 0x00400000, PA1, PROT_R, PROT_R, False, False)
    b.pmap_enter(2, 0x00401000, PA2, PROT_R, PROT_R, False, False)
    b.pmap_page_protect(PA1, PROT_X)  # no r, no w: pmap_remove_all
    assert b.walk(1, 0x1000) is None and b.walk(2, 0x00400000) is None
    assert b.walk(2, 0x00401000) == Translation(PA2, PROT_R, False)
    assert pv(b, PA1) == [] and b.pmap_is_modified(PA1)
    assert b.pmap_resident_count(1) == b.pmap_wired_count(1) == 0
    assert b.pmap_resident_count(2) == 1
    assert pool.held(1, Tag.PT) == (1 if cls is Arm32Leaky else 0)
    assert pool.held(2, Tag.PT) == 1
    audit_clean(b)


@pytest.mark.parametrize("cls", BACKENDS)
def test_collect(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_W, True, False)  # region 0: wired
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_W, False, False)  # region 0
    b.pmap_enter(1, 0x00400000, PA3, RW, PROT_R, False, False)  # region 1
    b.pmap_enter(1, 0x00800000, PA2, PROT_R, PROT_NONE, False, False)  # region 2
    frees = pool.frees
    b.pmap_collect(1)
    if cls is Arm32Leaky:
        assert [va for va, _ in b.walk_range(1, USER_MIN, USER_MAX)] == [0x1000, 0x2000, 0x00400000, 0x00800000]
        assert pool.held(1, Tag.PT) == 3 and pool.frees == frees
    else:
        assert list(b.walk_range(1, USER_MIN, USER_MAX)) == [(0x1000, Translation(PA1, RW, True))]
        assert pool.held(1, Tag.PT) == 1 and pool.frees - frees == 2
        assert b._pmaps[1].vptpt == {0: 8} and b._occ[8] == 1
        assert pv(b, PA2) == [] and pv(b, PA3) == []
    assert b.pmap_resident_count(1) == (4 if cls is Arm32Leaky else 1)
    assert b.pmap_wired_count(1) == 1
    assert b.pmap_is_modified(PA2)
    audit_clean(b)


# -- ENOMEM in the middle of a stream, and a small random run -----------------------------------


@pytest.mark.parametrize("cls", BACKENDS)
def test_refcount_frees_what_leaky_keeps_under_memory_pressure(cls):
    """PR 5666 in miniature: touch many regions, remove, enter elsewhere."""
    pool, b = make(cls, phys_pages=0x150)  # 0x150 - 0x40 - 8 = 264 free frames
    for i in range(264):
        b.pmap_enter(1, 0x00400000 * (i % 200 + 1), PA1, PROT_R, PROT_NONE, False, False)
        b.pmap_remove(1, USER_MIN, USER_MAX)
    assert pool.held(1, Tag.PT) == (200 if cls is Arm32Leaky else 0)
    b.pmap_collect(1)
    results = [
        b.pmap_enter(1, 0x40000000 + 0x00400000 * i, PA2, PROT_R, PROT_NONE, False, True) for i in range(100)
    ]
    assert results.count("ENOMEM") == (36 if cls is Arm32Leaky else 0)
    audit_clean(b)


def test_random_stream_keeps_every_invariant_and_both_backends_agree():
    rnd = random.Random(5666)
    pools, backends = zip(*(make(cls, pmaps=2) for cls in BACKENDS))
    vas = [0x1000, 0x000FF000, 0x00100000, 0x003FF000, 0x00400000, 0x00401000, 0x00800000]
    for step in range(600):
        k = rnd.random()
        p = rnd.choice((1, 2))
        va = rnd.choice(vas)
        pa = rnd.choice((PA1, PA2, PA3))
        results = []
        for b in backends:
            if k < 0.45:
                prot = random.Random(step).randrange(8)
                results.append(b.pmap_enter(p, va, pa, prot, prot & (step % 8), step % 5 == 0, True))
            elif k < 0.6:
                results.append(b.pmap_remove(p, va, va + 0x00300000))
            elif k < 0.7:
                results.append(b.pmap_protect(p, va, va + 0x00200000, PROT_R))
            elif k < 0.8:
                results.append(b.pmap_access(p, va, "rwx"[step % 3]))
            elif k < 0.85:
                results.append(b.pmap_clear_modify(pa))
            elif k < 0.9:
                results.append(b.pmap_page_protect(pa, (PROT_NONE, PROT_R)[step % 2]))
            else:
                results.append(b.pmap_unwire(p, va))
        assert results[0] == results[1]
        for b in backends:
            assert violations(b, Touched(frozenset((1, 2)), ((p, va),), frozenset((pa,)))) == []
        for q in (1, 2):
            assert list(backends[0].walk_range(q, USER_MIN, USER_MAX)) == list(
                backends[1].walk_range(q, USER_MIN, USER_MAX)
            )
        for x in (PA1, PA2, PA3):
            assert backends[0].pmap_is_modified(x) == backends[1].pmap_is_modified(x)
    for b in backends:
        audit_clean(b)
    for q in (1, 2):
        live = [va for va, _ in backends[1].walk_range(q, USER_MIN, USER_MAX)]
        assert pools[1].held(q, Tag.PT) == needed_pt_frames(Arm32Refcount.geometry, live)[Tag.PT]


# -- invariants fire when the tables are broken on purpose --------------------------------------


def fired(b, name, touched):
    return list(inv(name).check(b, touched))


def at(pmap, va, pas=(), pmaps=()):
    return Touched(frozenset(pmaps), ((pmap, va),), frozenset(pas))


def test_invariants_are_registered_for_the_right_backends():
    names = {i.name: i.backends for i in INVARIANTS}
    assert names["pt-count"] == ("arm32-refcount",)
    assert names["empty-pmap-no-pt"] == ("arm32-refcount",)
    assert names["no-empty-pt"] == ("arm32-refcount",)
    for name in ("l1-slots", "pt-not-freed", "pv-match", "counts", "frames-conserved", "refmod-emulation"):
        assert names[name] == ("arm32-leaky", "arm32-refcount")


@pytest.mark.parametrize("cls", BACKENDS)
def test_l1_slots_fires(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x00500000, PA1, RW, PROT_NONE, False, False)  # region 1, frame 8
    assert fired(b, "l1-slots", at(1, 0x00500000)) == []
    b._pmaps[1].l1[5] = (8, 2)  # a wrong quarter
    assert fired(b, "l1-slots", at(1, 0x00500000)) and fired(b, "l1-slots", None)
    assert fired(b, "l1-slots", at(1, 0x1000)) == []  # another region: not looked at
    b._pmaps[1].l1[5] = (8, 1)
    data = 0x120
    b._pmaps[1].l1[4:8] = [(data, q) for q in range(4)]  # points at a data frame
    b._pmaps[1].vptpt[1] = data
    b._ptes[data] = b._ptes[8]
    assert any("tags data" in m for m in fired(b, "l1-slots", at(1, 0x00400000)))
    assert any("tags data" in m for m in fired(b, "l1-slots", None))


@pytest.mark.parametrize("cls", BACKENDS)
def test_l1_slots_audit_finds_a_slot_outside_the_listed_regions(cls):
    """The full check looks at every region with a slot in use, not only those pm_vptpt
    lists: a stray slot is named, and so is a listed region whose slots are empty."""
    pool, b = make(cls)
    b.pmap_enter(1, 0x00500000, PA1, RW, PROT_NONE, False, False)  # region 1, frame 8
    assert fired(b, "l1-slots", None) == []
    b._pmaps[1].l1[41] = (8, 1)  # region 10, listed nowhere
    assert [m for m in fired(b, "l1-slots", None) if "L1 slots 0x28-0x2b" in m]
    b._pmaps[1].l1[41] = None
    b._pmaps[1].l1[4:8] = [None] * 4  # region 1's slots gone, still listed
    assert any("empty, but pm_vptpt lists PT frame 0x8" in m for m in fired(b, "l1-slots", None))


@pytest.mark.parametrize("cls", BACKENDS)
def test_l1_slots_fires_on_a_frame_of_another_pmap(cls):
    pool, b = make(cls, pmaps=2)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)  # frame 12, pmap 1
    b.pmap_enter(2, 0x1000, PA2, RW, PROT_NONE, False, False)  # frame 13, pmap 2
    assert b._pmaps[2].vptpt == {0: 13}
    b._pmaps[2].l1[0:4] = [(12, q) for q in range(4)]
    b._pmaps[2].vptpt[0] = 12
    assert any("owned by pmap 1" in m for m in fired(b, "l1-slots", at(2, 0x1000)))
    assert any("owned by pmap 1" in m for m in fired(b, "l1-slots", None))


@pytest.mark.parametrize("cls", BACKENDS)
def test_pt_not_freed_fires(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert fired(b, "pt-not-freed", at(1, 0x1000)) == []
    pool.free(8, Tag.PT)  # behind the backend's back
    msgs = fired(b, "pt-not-freed", at(1, 0x1000))
    assert msgs == ["PT frame 0x8 is free in the pool while the tables use it (1 live PTEs)"]
    assert fired(b, "pt-not-freed", None) == msgs


@pytest.mark.parametrize("cls", BACKENDS)
def test_pt_not_freed_fires_on_a_freed_l1_frame_in_the_full_audit(cls):
    pool, b = make(cls)
    pool.free(5, Tag.L1)
    assert fired(b, "pt-not-freed", None) == ["pmap 1: its L1 frame 0x5 is free in the pool"]


def test_pt_count_fires():
    pool, b = make(Arm32Refcount)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    b.pmap_enter(1, 0x2000, PA2, RW, PROT_NONE, False, False)
    assert b._occ == {8: 2} and fired(b, "pt-count", at(1, 0x1000)) == []
    b._occ[8] = 3
    assert fired(b, "pt-count", at(1, 0x2000)) == ["PT frame 0x8 counts 3 live PTEs but holds 2"]
    assert fired(b, "pt-count", None) == ["PT frame 0x8 counts 3 live PTEs but holds 2"]


def test_no_empty_pt_fires():
    pool, b = make(Arm32Refcount)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert fired(b, "no-empty-pt", at(1, 0x1000)) == []
    b._ptes[8][1] = 0  # forget the PTE and its count, keep the frame
    b._occ[8] = 0
    assert fired(b, "no-empty-pt", at(1, 0x1000)) == ["pmap 1 holds PT frame 0x8 with no live PTE"]
    assert fired(b, "no-empty-pt", None) == ["pmap 1 holds PT frame 0x8 with no live PTE"]


def test_no_empty_pt_ignores_the_kernel_pmap():
    pool, b = make(Arm32Refcount, pmaps=0)
    b.pmap_kenter_pa(KVA, PA1, PROT_R)
    b.pmap_kremove(KVA, 0x1000)
    assert fired(b, "no-empty-pt", at(0, KVA)) == [] and fired(b, "no-empty-pt", None) == []


def test_empty_pmap_no_pt_fires():
    pool, b = make(Arm32Refcount)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert fired(b, "empty-pmap-no-pt", Touched(pmaps=frozenset({1}))) == []
    b._pmaps[1].resident = 0
    assert fired(b, "empty-pmap-no-pt", Touched(pmaps=frozenset({1}))) == [
        "empty pmap 1 (resident 0) holds 1 PT frames"
    ]
    assert fired(b, "empty-pmap-no-pt", None) == ["empty pmap 1 (resident 0) holds 1 PT frames"]


@pytest.mark.parametrize("cls", BACKENDS)
def test_pv_match_fires_on_a_lost_entry(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert fired(b, "pv-match", at(1, 0x1000, pas=[PA1])) == []
    del b._pv[0x100]
    msg = "managed mapping (pmap 1, va 0x00001000) -> 0x00100000 has no pv entry"
    assert fired(b, "pv-match", at(1, 0x1000)) == [msg]
    assert fired(b, "pv-match", None) == [msg]


@pytest.mark.parametrize("cls", BACKENDS)
def test_pv_match_fires_on_a_stale_entry_and_wrong_flags(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, True, False)
    b._pv[0x101] = {core.pv_key(1, 0x1000): core.PT_Wr}  # PA2: a second entry, no mapping of PA2
    stale = fired(b, "pv-match", Touched(pas=frozenset({PA2})))
    assert stale == ["pv entry (pmap 1, va 0x00001000) of page 0x00101000: the PTE maps 0x00100000"]
    assert stale[0] in fired(b, "pv-match", None)
    del b._pv[0x101]
    b._pv[0x100][core.pv_key(1, 0x1000)] = core.PT_Wr  # lost PT_W
    msgs = fired(b, "pv-match", Touched(pas=frozenset({PA1})))
    assert len(msgs) == 1 and "PT_W is False" in msgs[0]
    assert fired(b, "pv-match", None) == msgs


@pytest.mark.parametrize("cls", BACKENDS)
def test_counts_fires(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, True, False)
    assert fired(b, "counts", None) == [] and fired(b, "counts", Touched(pmaps=frozenset({1}))) == []
    b._pmaps[1].resident = 2
    assert fired(b, "counts", None) == ["pmap 1: resident count 2 but the tables hold 1 mappings"]
    b._pmaps[1].resident = 1
    b._pmaps[1].wired = 2
    assert fired(b, "counts", Touched(pmaps=frozenset({1}))) == [
        "pmap 1: wired count 2 outside 0..resident count 1"
    ]
    assert fired(b, "counts", None) == ["pmap 1: wired count 2 but the tables hold 1 wired mappings"]


@pytest.mark.parametrize("cls", BACKENDS)
def test_frames_conserved_fires(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_NONE, False, False)
    assert fired(b, "frames-conserved", Touched(pmaps=frozenset({0, 1}))) == []
    assert fired(b, "frames-conserved", None) == []
    stray = pool.alloc(Tag.PT, 1)  # a PT frame the tables do not know
    assert fired(b, "frames-conserved", Touched(pmaps=frozenset({1}))) == [
        "pmap 1 holds 2 PT frames in the pool but its tables list 1"
    ]
    assert fired(b, "frames-conserved", None) == [
        f"pmap 1 owns PT frame {stray:#x} in the pool, but its tables do not use it"
    ]
    pool.free(stray, Tag.PT)
    pool.alloc(Tag.L1, 9)  # frames of a pmap that does not exist
    assert fired(b, "frames-conserved", Touched(pmaps=frozenset({9}))) == [
        "destroyed pmap 9 still holds 0 PT and 1 L1 frames"
    ]
    assert fired(b, "frames-conserved", None) == ["1 l1 frames are owned by pmap 9, which does not exist"]


@pytest.mark.parametrize("cls", BACKENDS)
def test_refmod_emulation_fires(cls):
    pool, b = make(cls)
    b.pmap_enter(1, 0x1000, PA1, RW, PROT_R, False, False)
    assert fired(b, "refmod-emulation", at(1, 0x1000)) == []
    pt, idx = b.pmap_pte(1, 0x1000)
    pt[idx] |= core.PT_AP_W  # writable while the page is not modified: MOD would be lost
    msg = "pmap 1 va 0x00001000: the PTE is writable but page 0x00100000 is not marked modified"
    assert fired(b, "refmod-emulation", at(1, 0x1000)) == [msg]
    assert fired(b, "refmod-emulation", Touched(pas=frozenset({PA1}))) == [msg]
    assert fired(b, "refmod-emulation", None) == [msg]
    pt[idx] &= ~core.PT_AP_W
    b._attrs[0x100] = 0  # valid PTE, page not referenced
    assert len(fired(b, "refmod-emulation", at(1, 0x1000))) == 1
    assert len(fired(b, "refmod-emulation", None)) == 1


@pytest.mark.parametrize("cls", BACKENDS)
def test_refmod_emulation_fires_on_a_bad_kenter_pte(cls):
    pool, b = make(cls, pmaps=0)
    b.pmap_kenter_pa(KVA, PA1, PROT_R)
    pt, idx = b.pmap_pte(0, KVA)
    pt[idx] &= ~core.L2_MASK  # invalid, though its prot is r
    assert len(fired(b, "refmod-emulation", at(0, KVA))) == 1
    assert len(fired(b, "refmod-emulation", None)) == 1


# -- the plugin host -------------------------------------------------------------------------------


def test_plugin_host_lists_both_backends_and_their_invariants():
    from difftest.plugins import PluginHost

    h = PluginHost()
    h.load()
    assert "arm32-leaky" in h.registry.backends
    assert "arm32-refcount" in h.registry.backends
    assert h.registry.backends["arm32-leaky"].geometry.describe().startswith("L1 4096x1MiB")
    leaky = {i.name for i in h.registry.invariants_for("arm32-leaky")}
    refcount = {i.name for i in h.registry.invariants_for("arm32-refcount")}
    assert {"l1-slots", "pv-match", "frames-conserved"} <= leaky
    assert "pt-count" in refcount and "pt-count" not in leaky
