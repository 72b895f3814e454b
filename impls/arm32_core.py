"""
/*
 * arm32_core: the page-table core shared by the arm32-leaky and arm32-refcount models.
 *
 * Models NetBSD sys/arch/arm32/arm32/pmap.c v1.57 (1999/03/29, mycroft), which is
 * v1.40 (the late-1998 state of PR port-arm32/5666) plus referenced/modified emulation,
 * with the page-table geometry of sys/arch/arm32/include/pte.h v1.8.  Nothing here is
 * copied from it: it is a Python model that keeps the same data structures and follows
 * the same algorithms, named after the NetBSD functions where they exist.
 *
 * Geometry (pte.h v1.8):
 *
 *	L1	4096 slots of 1 MiB (PDSHIFT 20), 16 KiB (PD_SIZE) = 4 frames,
 *		allocated at pmap_create (pmap_allocpagedir), and for the kernel
 *		pmap 0 at bootstrap.  A slot is None or (pt_frame, quarter).
 *	PT	one 4 KiB frame (PT_SIZE) holds four 1 KiB hardware L2 tables of
 *		256 PTEs each; pmap_map_in_l1 fills the 4 consecutive L1 slots of
 *		an aligned 4 MiB region with l2pa + 0/0x400/0x800/0xc00.  So one
 *		PT frame maps one 4 MiB region and holds its 1024 PTEs.  The
 *		pmap's pm_vptpt (the page of its PT pages) is modelled as a dict
 *		region -> frame; the frame itself comes from the pool, tagged PT,
 *		owned by the pmap.  The pm_vptpt page is not allocated from the
 *		pool (it is kernel virtual memory in the original, not a frame
 *		the harness can attribute to the pmap).
 *
 * PTE word.  Hardware bits as in pte.h: PA (PG_FRAME), the L2 type (L2_SPAGE valid,
 * L2_INVAL invalid), AP bits (PT_AP(AP_W) writable, PT_AP(AP_U) user).  The original had
 * no spare bits and kept the logical write right and the wiring in pv_flags (PT_Wr, PT_W);
 * a kenter'd mapping has no pv entry, so the model adds software bits above bit 31: the
 * logical prot (r, w, x), wired, managed (has a pv entry, like alpha's PG_PVLIST) and
 * "mapped", which makes every live PTE nonzero even for PA 0 with L2_INVAL.  A PTE is
 * live iff it is nonzero.  The cache bits (PT_C, PT_B, pmap_vac_me_harder) are not
 * modelled: a virtually indexed cache has no effect the harness can observe.
 *
 * Referenced/modified emulation (v1.57).  Page attributes PT_M (0x01) and PT_H (0x02)
 * are kept per physical page (pmseg.attrs).  pmap_enter of a managed page follows the
 * access type: a write access gives L2_SPAGE|AP_W and sets H|M; a read or execute access
 * gives L2_SPAGE and sets H; no access gives an L2_INVAL PTE (as v1.57 does, even when the
 * page is already referenced: the next access takes a fault that the pmap handles itself).
 * A write right is never put in a PTE except together with M (enter with a write access,
 * pmap_modified_emulation), and pmap_clearbit(PT_M) takes AP_W out of every PTE of the
 * page, so MOD is exact; PT_H is only set by an access, so REF never over-reports.
 * pmap_access walks the tables like the MMU (translation fault on L2_INVAL, permission
 * fault on a write without AP_W, and the model's MMU also refuses r/w/x the logical prot
 * lacks); a fault the logical prot allows goes through pmap_handled_emulation (set H,
 * make the PTE L2_SPAGE) and, for a write, pmap_modified_emulation (pv_flags must have
 * PT_Wr; set H|M, make it L2_SPAGE|AP_W), and the access then succeeds.
 *
 * Reclamation hooks, where the two backends differ (the rest is shared):
 *	pmap_pte_addref / pmap_pte_delref: empty macros in v1.57 (#if 0, mycroft's
 *		unfinished attempt); the refcount backend counts live PTEs per PT frame.
 *	pmap_alloc_ptp / pmap_free_ptp, pmap_collect, pmap_release.
 *
 * Normalisations (the harness compares leaf mappings): resident_count and wired_count
 * count leaf mappings only (v1.57 also counted each PT page in resident_count); the wired
 * vector page at VA 0 that pmap_pinit enters is not modelled (VA 0 is outside the user
 * range); user L1s do not copy the kernel's L1 slots (each pmap's tables hold only its
 * own mappings); the L1's 16 KiB need not be physically contiguous in the pool.
 * pmap_enter with canfail (an extension: v1.57's pmap_enter returns void) allocates the
 * PT frame before touching anything, so ENOMEM leaves no trace.
 */
"""

from __future__ import annotations

from itertools import compress
from typing import Iterable, Iterator, Sequence

from difftest.backend import Backend, Geometry, Level, Translation
from difftest.machine import KERNEL_PMAP, USER_MAX, USER_MIN, OutOfMemory, PhysPool, Tag
from difftest.ops import ENOMEM, FAULT, OK, PROT_R, PROT_W, PROT_X

# -- geometry (pte.h v1.8) ------------------------------------------------------------------

PGSHIFT = 12
PDSHIFT = 20  # one L1 slot maps 1 MiB
NBPD = 1 << PDSHIFT
L1_ENTRIES = 4096
L1_FRAMES = 4  # PD_SIZE 0x4000
PTSHIFT = 22  # one PT frame (four 1 KiB L2 tables) maps 4 MiB
NBPT = 1 << PTSHIFT
NPTEPG = 1024  # PTEs per PT frame
NPTE_L2 = 256  # PTEs per 1 KiB hardware L2 table
PTE_INDEX_MASK = NPTEPG - 1
PG_FRAME = 0xFFFFF000

ARM32_GEOMETRY = Geometry(
    levels=(
        Level("L1", span=1 << 32, entries=L1_ENTRIES, frames=L1_FRAMES, tag=Tag.L1),
        Level("PT", span=NBPT, entries=NPTEPG, frames=1, tag=Tag.PT),
    ),
    top_level="create",
)

# -- PTE bits ---------------------------------------------------------------------------------

L2_MASK = 0x03
L2_INVAL = 0x00
L2_SPAGE = 0x02
AP_W = 0x01
AP_U = 0x02


def PT_AP(x: int) -> int:
    """Access permissions for all four subpages of a small page (pte.h)."""
    return (x << 10) | (x << 8) | (x << 6) | (x << 4)


PT_AP_W = PT_AP(AP_W)  # 0x550
PT_AP_U = PT_AP(AP_U)  # 0xaa0

# Software bits of the model's PTE word (see the comment at the top).
PTE_SW_SHIFT = 32
PTE_SW_R = PROT_R << PTE_SW_SHIFT
PTE_SW_W = PROT_W << PTE_SW_SHIFT
PTE_SW_X = PROT_X << PTE_SW_SHIFT
PTE_SW_PROT = (PROT_R | PROT_W | PROT_X) << PTE_SW_SHIFT
PTE_SW_WIRED = 1 << 35
PTE_SW_MANAGED = 1 << 36
PTE_SW_MAPPED = 1 << 37

# pv_flags (pte.h: virtual bits) and page attributes (pmseg.attrs).
PT_M = 0x01
PT_H = 0x02
PT_Wr = 0x10
PT_W = 0x40

_KIND_BIT = {"r": PROT_R, "w": PROT_W, "x": PROT_X}


def _nonzero(pt: list[int]) -> list[tuple[int, int]]:
    """(index, value) of the nonzero entries of ``pt``, in order, at C speed: ``filter``
    finds the values, and ``index`` from just past the previous one finds each (only zeros
    lie between, so the first match is the entry)."""
    out: list[tuple[int, int]] = []
    if pt.count(0) == len(pt):
        return out
    i = -1
    index = pt.index
    for value in filter(None, pt):
        i = index(value, i + 1)
        out.append((i, value))
    return out


def pv_key(pmap: int, va: int) -> int:
    """A pv entry's (pmap, va) as one int: pmap << 32 | va."""
    return (pmap << 32) | va


class Pmap:
    """struct pmap: the L1 (pm_pdir), its frames, pm_vptpt, pm_count and pm_stats."""

    __slots__ = ("id", "l1", "l1_frames", "vptpt", "refs", "resident", "wired")

    def __init__(self, pmap_id: int, l1_frames: tuple[int, ...]) -> None:
        self.id = pmap_id
        self.l1: list[tuple[int, int] | None] = [None] * L1_ENTRIES
        self.l1_frames = l1_frames
        self.vptpt: dict[int, int] = {}  # 4 MiB region -> PT frame
        self.refs = 1
        self.resident = 0  # leaf mappings (normalised; v1.57 counted PT pages too)
        self.wired = 0


class Arm32Core(Backend):
    """The arm32 pmap of 1998-99 with reclamation left to subclasses (see module comment)."""

    geometry = ARM32_GEOMETRY
    keeps_kernel_page_tables = True  # the kernel pmap's PT pages are never freed

    def __init__(self, pool: PhysPool) -> None:
        super().__init__(pool)
        self._pmaps: dict[int, Pmap] = {}
        self._ptes: dict[int, list[int]] = {}  # PT frame -> its 1024 PTEs
        self._pv: dict[int, dict[int, int]] = {}  # page -> {pv_key: pv_flags}, in list order
        self._attrs = bytearray(pool.phys_pages)  # page -> PT_M | PT_H
        # pmap_bootstrap: the kernel pmap's L1 exists before anything else.
        self._pmaps[KERNEL_PMAP] = self.pmap_allocpagedir(KERNEL_PMAP)

    # -- L1 and PT pages ------------------------------------------------------------------

    def pmap_allocpagedir(self, pmap: int) -> Pmap:
        """pmap_allocpagedir: the 16 KiB L1, all four frames or none."""
        if not self.pool.has_free(L1_FRAMES):
            raise OutOfMemory(f"no {L1_FRAMES} free frames for the L1 of pmap {pmap}")
        frames = tuple(self.pool.alloc(Tag.L1, pmap) for _ in range(L1_FRAMES))
        return Pmap(pmap, frames)

    def pmap_map_in_l1(self, pm: Pmap, va: int, frame: int) -> None:
        """Point the 4 L1 slots of va's 4 MiB region at the 4 L2 tables of ``frame``."""
        ptva = (va >> PDSHIFT) & ~3
        l1 = pm.l1
        l1[ptva] = (frame, 0)
        l1[ptva + 1] = (frame, 1)
        l1[ptva + 2] = (frame, 2)
        l1[ptva + 3] = (frame, 3)
        pm.vptpt[va >> PTSHIFT] = frame

    def pmap_unmap_in_l1(self, pm: Pmap, region: int) -> None:
        """Clear the 4 L1 slots of a 4 MiB region (under #if 0 in v1.57)."""
        ptva = region << 2
        l1 = pm.l1
        l1[ptva] = l1[ptva + 1] = l1[ptva + 2] = l1[ptva + 3] = None
        del pm.vptpt[region]

    def pmap_alloc_ptp(self, pm: Pmap, va: int) -> int:
        """Allocate a zeroed PT frame for va's region and wire it into the L1.

        Raises OutOfMemory before changing anything.
        """
        frame = self.pool.alloc(Tag.PT, pm.id)
        self._ptes[frame] = [0] * NPTEPG
        self.pmap_map_in_l1(pm, va, frame)
        return frame

    def pmap_free_ptp(self, pm: Pmap, region: int) -> None:
        """Unhook a region's PT frame from the L1 and give it back to the pool."""
        frame = pm.vptpt[region]
        self.pmap_unmap_in_l1(pm, region)
        del self._ptes[frame]
        self.pool.free(frame, Tag.PT)

    # Reclamation hooks: compiled to nothing in v1.57.
    def pmap_pte_addref(self, frame: int) -> None:
        """A PTE of ``frame`` went from zero to nonzero."""

    def pmap_pte_delref(self, pm: Pmap, region: int, frame: int, count: int) -> None:
        """``count`` PTEs of ``frame`` went from nonzero to zero."""

    def pmap_release(self, pm: Pmap) -> None:
        """Free every PT page listed in pm_vptpt, then the L1 (pmap_freepagedir)."""
        for region in sorted(pm.vptpt):
            self.pmap_free_ptp(pm, region)
        for frame in pm.l1_frames:
            self.pool.free(frame, Tag.L1)

    # -- lookups ----------------------------------------------------------------------------

    def pmap_pte(self, pmap: int, va: int) -> tuple[list[int], int] | None:
        """(PT list, index) of va's PTE, or None when no L2 table maps va (pmap_pte)."""
        pm = self._pmaps.get(pmap)
        if pm is None:
            return None
        slot = pm.l1[va >> PDSHIFT]
        if slot is None:
            return None
        return self._ptes[slot[0]], (va >> PGSHIFT) & PTE_INDEX_MASK

    def _chunks(self, pm: Pmap, sva: int, eva: int) -> list[tuple[int, int, int, int]]:
        """(region, frame, first index, end index) for each PT frame mapping [sva, eva).

        Regions without a PT page are skipped without visiting their pages; when the
        range spans more regions than the pmap has PT pages, only those are looked at.
        The four L1 slots of a region are filled and cleared together, so the region's
        first slot says whether the region has a PT page.
        """
        if eva <= sva:
            return []
        r0 = sva >> PTSHIFT
        r1 = (eva - 1) >> PTSHIFT
        if r1 - r0 + 1 > len(pm.vptpt):
            regions = sorted(r for r in pm.vptpt if r0 <= r <= r1)
        else:
            regions = range(r0, r1 + 1)
        l1 = pm.l1
        out = []
        for region in regions:
            slot = l1[region << 2]
            if slot is None:
                continue
            base = region << PTSHIFT
            i0 = ((sva - base) >> PGSHIFT) if sva > base else 0
            end = base + NBPT
            i1 = ((eva - base + 0xFFF) >> PGSHIFT) if eva < end else NPTEPG
            out.append((region, slot[0], i0, i1))
        return out

    # -- pv lists -------------------------------------------------------------------------

    def pmap_enter_pv(self, pm: Pmap, va: int, page: int, flags: int) -> None:
        pvh = self._pv.get(page)
        if pvh is None:
            self._pv[page] = {pv_key(pm.id, va): flags}
        else:
            pvh[pv_key(pm.id, va)] = flags
        if flags & PT_W:
            pm.wired += 1

    def pmap_remove_pv(self, pm: Pmap, va: int, page: int) -> int:
        """Drop (pm, va) from page's pv list; return its flags.  KeyError = lost entry."""
        pvh = self._pv[page]
        flags = pvh.pop(pv_key(pm.id, va))
        if not pvh:
            del self._pv[page]
        if flags & PT_W:
            pm.wired -= 1
        return flags

    def pmap_modify_pv(self, pm: Pmap, va: int, page: int, bic_mask: int, eor_mask: int) -> int:
        """flags = (flags & ~bic) ^ eor for (pm, va) on page's list; return the old flags."""
        pvh = self._pv[page]
        key = pv_key(pm.id, va)
        oflags = pvh[key]
        flags = (oflags & ~bic_mask) ^ eor_mask
        pvh[key] = flags
        if (flags ^ oflags) & PT_W:
            pm.wired += 1 if flags & PT_W else -1
        return oflags

    # -- pmap(9) -----------------------------------------------------------------------------

    def pmap_create(self, pmap: int) -> None:
        if pmap in self._pmaps:
            raise ValueError(f"pmap {pmap} already exists")
        self._pmaps[pmap] = self.pmap_allocpagedir(pmap)

    def pmap_reference(self, pmap: int) -> None:
        self._pmaps[pmap].refs += 1

    def pmap_destroy(self, pmap: int) -> None:
        pm = self._pmaps[pmap]
        pm.refs -= 1
        if pm.refs > 0:
            return
        if pm.resident:
            # The harness empties the pmap first; stay consistent if it did not.
            self.pmap_remove(pmap, USER_MIN, USER_MAX)
        self.pmap_release(pm)
        del self._pmaps[pmap]

    def pmap_enter(
        self, pmap: int, va: int, pa: int, prot: int, access: int, wired: bool, canfail: bool
    ) -> str:
        pm = self._pmaps[pmap]
        slot = pm.l1[va >> PDSHIFT]
        if slot is None:
            try:
                frame = self.pmap_alloc_ptp(pm, va)
            except OutOfMemory:
                if canfail:
                    return ENOMEM
                raise
        else:
            frame = slot[0]
        pt = self._ptes[frame]
        idx = (va >> PGSHIFT) & PTE_INDEX_MASK
        opte = pt[idx]
        page = pa >> PGSHIFT
        flags = (PT_Wr if prot & PROT_W else 0) | (PT_W if wired else 0)
        if opte:
            if opte & PTE_SW_MANAGED:
                opage = (opte & PG_FRAME) >> PGSHIFT
                if opage == page:
                    # Same page: only protection and wiring change.
                    self.pmap_modify_pv(pm, va, page, PT_Wr | PT_W, flags)
                else:
                    self.pmap_remove_pv(pm, va, opage)  # the old page keeps its attributes
                    self.pmap_enter_pv(pm, va, page, flags)
            else:
                # A kenter'd mapping (kernel pmap) becomes a managed one.
                pm.wired -= 1
                self.pmap_enter_pv(pm, va, page, flags)
        else:
            pm.resident += 1
            self.pmap_pte_addref(frame)
            self.pmap_enter_pv(pm, va, page, flags)

        npte = (pa & PG_FRAME) | PTE_SW_MAPPED | PTE_SW_MANAGED | (prot << PTE_SW_SHIFT)
        if wired:
            npte |= PTE_SW_WIRED
        if pmap != KERNEL_PMAP:
            npte |= PT_AP_U
        if access & PROT_W:
            npte |= L2_SPAGE | PT_AP_W
            self._attrs[page] |= PT_H | PT_M
        elif access:
            npte |= L2_SPAGE
            self._attrs[page] |= PT_H
        # else L2_INVAL: the first access faults into pmap_handled_emulation
        pt[idx] = npte
        return OK

    def _remove_range(self, pm: Pmap, sva: int, eva: int, managed: bool, keep_wired: bool) -> None:
        """Zero the managed (or, for kremove, the unmanaged) PTEs in [sva, eva)."""
        ptes = self._ptes
        for region, frame, i0, i1 in self._chunks(pm, sva, eva):
            pt = ptes[frame]
            base = region << PTSHIFT
            removed = 0
            for i in compress(range(i0, i1), pt[i0:i1]):  # the live PTEs only, found in C
                pte = pt[i]
                if managed:
                    if not pte & PTE_SW_MANAGED or (keep_wired and pte & PTE_SW_WIRED):
                        continue
                    pt[i] = 0
                    self.pmap_remove_pv(pm, base | (i << PGSHIFT), (pte & PG_FRAME) >> PGSHIFT)
                else:
                    if pte & PTE_SW_MANAGED:
                        continue
                    pt[i] = 0
                    pm.wired -= 1
                removed += 1
            if removed:
                pm.resident -= removed
                self.pmap_pte_delref(pm, region, frame, removed)

    def pmap_remove(self, pmap: int, sva: int, eva: int) -> None:
        pm = self._pmaps.get(pmap)
        if pm is not None:
            self._remove_range(pm, sva, eva, managed=True, keep_wired=False)

    def pmap_protect(self, pmap: int, sva: int, eva: int, prot: int) -> None:
        if not prot & PROT_R:
            self.pmap_remove(pmap, sva, eva)
            return
        if prot & PROT_W:
            return  # read->write: left to uvm_fault
        pm = self._pmaps.get(pmap)
        if pm is None:
            return
        keep = (prot << PTE_SW_SHIFT) | ~PTE_SW_PROT
        for region, frame, i0, i1 in self._chunks(pm, sva, eva):
            pt = self._ptes[frame]
            base = region << PTSHIFT
            for i in compress(range(i0, i1), pt[i0:i1]):
                pte = pt[i]
                if not pte & PTE_SW_MANAGED:
                    continue
                npte = pte & keep
                if npte == pte:
                    continue
                if pte & PTE_SW_W:
                    npte &= ~PT_AP_W
                    self.pmap_modify_pv(pm, base | (i << PGSHIFT), (pte & PG_FRAME) >> PGSHIFT, PT_Wr, 0)
                pt[i] = npte

    def pmap_unwire(self, pmap: int, va: int) -> None:
        where = self.pmap_pte(pmap, va)
        if where is None:
            return
        pt, idx = where
        pte = pt[idx]
        if pte & PTE_SW_MANAGED and pte & PTE_SW_WIRED:
            pt[idx] = pte & ~PTE_SW_WIRED
            self.pmap_modify_pv(self._pmaps[pmap], va, (pte & PG_FRAME) >> PGSHIFT, PT_W, 0)

    def pmap_extract(self, pmap: int, va: int) -> int | None:
        where = self.pmap_pte(pmap, va)
        if where is None:
            return None
        pt, idx = where
        pte = pt[idx]
        return (pte & PG_FRAME) if pte else None

    def pmap_kenter_pa(self, va: int, pa: int, prot: int) -> None:
        pm = self._pmaps[KERNEL_PMAP]
        slot = pm.l1[va >> PDSHIFT]
        frame = self.pmap_alloc_ptp(pm, va) if slot is None else slot[0]
        pt = self._ptes[frame]
        idx = (va >> PGSHIFT) & PTE_INDEX_MASK
        opte = pt[idx]
        if opte:
            if opte & PTE_SW_MANAGED:
                self.pmap_remove_pv(pm, va, (opte & PG_FRAME) >> PGSHIFT)
                pm.wired += 1
        else:
            pm.resident += 1
            pm.wired += 1
            self.pmap_pte_addref(frame)
        npte = (pa & PG_FRAME) | PTE_SW_MAPPED | PTE_SW_WIRED | (prot << PTE_SW_SHIFT)
        if prot & PROT_W:
            npte |= L2_SPAGE | PT_AP_W
        elif prot:
            npte |= L2_SPAGE
        pt[idx] = npte

    def pmap_kremove(self, va: int, size: int) -> None:
        self._remove_range(self._pmaps[KERNEL_PMAP], va, va + size, managed=False, keep_wired=False)

    def pmap_page_protect(self, pa: int, prot: int) -> None:
        if prot & PROT_W:
            return
        if prot & PROT_R:
            self.pmap_clearbit(pa, PT_Wr)  # pmap_copy_on_write
        else:
            self.pmap_remove_all(pa)

    def pmap_remove_all(self, pa: int) -> None:
        """Remove every managed mapping of the page, wired ones too (as v1.57 does)."""
        page = pa >> PGSHIFT
        pvh = self._pv.pop(page, None)
        if not pvh:
            return
        pmaps = self._pmaps
        ptes = self._ptes
        for key, flags in pvh.items():
            pm = pmaps[key >> 32]
            va = key & 0xFFFFFFFF
            frame = pm.l1[va >> PDSHIFT][0]
            ptes[frame][(va >> PGSHIFT) & PTE_INDEX_MASK] = 0
            pm.resident -= 1
            if flags & PT_W:
                pm.wired -= 1
            self.pmap_pte_delref(pm, va >> PTSHIFT, frame, 1)

    def pmap_clearbit(self, pa: int, maskbits: int) -> None:
        """Clear page attributes / rights in every mapping of the page."""
        page = pa >> PGSHIFT
        self._attrs[page] &= ~maskbits & 0xFF
        pvh = self._pv.get(page)
        if not pvh:
            return
        pmaps = self._pmaps
        ptes = self._ptes
        for key, flags in pvh.items():
            pm = pmaps[key >> 32]
            va = key & 0xFFFFFFFF
            pt = ptes[pm.l1[va >> PDSHIFT][0]]
            idx = (va >> PGSHIFT) & PTE_INDEX_MASK
            pte = pt[idx]
            if maskbits & PT_Wr:
                pvh[key] = flags & ~PT_Wr
                pte &= ~PTE_SW_W
            if maskbits & (PT_Wr | PT_M):
                pte &= ~PT_AP_W
            if maskbits & PT_H:
                pte = (pte & ~L2_MASK) | L2_INVAL
            pt[idx] = pte

    def pmap_clear_modify(self, pa: int) -> bool:
        was = bool(self._attrs[pa >> PGSHIFT] & PT_M)
        self.pmap_clearbit(pa, PT_M)
        return was

    def pmap_clear_reference(self, pa: int) -> bool:
        was = bool(self._attrs[pa >> PGSHIFT] & PT_H)
        self.pmap_clearbit(pa, PT_H)
        return was

    def pmap_is_modified(self, pa: int) -> bool:
        return bool(self._attrs[pa >> PGSHIFT] & PT_M)

    def pmap_is_referenced(self, pa: int) -> bool:
        return bool(self._attrs[pa >> PGSHIFT] & PT_H)

    def read_attributes(self, pa: int) -> tuple[bool, bool]:
        """(is_modified, is_referenced) in one read (the harness's per-op read)."""
        attrs = self._attrs[pa >> PGSHIFT]
        return bool(attrs & PT_M), bool(attrs & PT_H)

    def pmap_collect(self, pmap: int) -> None:
        """Empty in v1.40 and v1.57."""

    # -- the MMU and REF/MOD emulation ------------------------------------------------------

    def pmap_access(self, pmap: int, va: int, kind: str) -> str:
        where = self.pmap_pte(pmap, va)
        if where is None:
            return FAULT  # no L2 table: section translation fault
        pt, idx = where
        pte = pt[idx]
        if not pte or not (pte >> PTE_SW_SHIFT) & _KIND_BIT[kind]:
            return FAULT  # a real fault for uvm_fault
        write = kind == "w"
        valid = (pte & L2_MASK) == L2_SPAGE
        if valid and (not write or pte & PT_AP_W):
            return OK
        # The data abort handler's first try: the pmap's own emulation fix-ups.
        if not valid and not self.pmap_handled_emulation(pmap, va):
            return FAULT
        if write and not pt[idx] & PT_AP_W and not self.pmap_modified_emulation(pmap, va):
            return FAULT
        return OK

    def pmap_handled_emulation(self, pmap: int, va: int) -> bool:
        """Translation fault on an L2_INVAL PTE of a managed page: set H, validate."""
        pt, idx = self.pmap_pte(pmap, va)
        pte = pt[idx]
        if not pte & PTE_SW_MANAGED:
            return False
        self._attrs[(pte & PG_FRAME) >> PGSHIFT] |= PT_H
        pt[idx] = (pte & ~L2_MASK) | L2_SPAGE
        return True

    def pmap_modified_emulation(self, pmap: int, va: int) -> bool:
        """Permission fault on a write: if pv_flags say writable, set H|M and AP_W."""
        pt, idx = self.pmap_pte(pmap, va)
        pte = pt[idx]
        if not pte & PTE_SW_MANAGED:
            return False
        page = (pte & PG_FRAME) >> PGSHIFT
        flags = self._pv[page][pv_key(pmap, va)]
        if not flags & PT_Wr:
            return False
        self._attrs[page] |= PT_H | PT_M
        pt[idx] = (pte & ~L2_MASK) | L2_SPAGE | PT_AP_W
        return True

    # -- counters and the harness's view ----------------------------------------------------

    def pmap_resident_count(self, pmap: int) -> int:
        return self._pmaps[pmap].resident

    def pmap_wired_count(self, pmap: int) -> int:
        return self._pmaps[pmap].wired

    def read_counts(self, pmap: int) -> tuple[int, int]:
        """(resident_count, wired_count) in one read (the harness's per-op read)."""
        pm = self._pmaps[pmap]
        return pm.resident, pm.wired

    def walk(self, pmap: int, va: int) -> Translation | None:
        fields = self.walk_fields(pmap, va)
        return None if fields is None else Translation(*fields)

    def walk_fields(self, pmap: int, va: int) -> tuple[int, int, bool] | None:
        """``walk`` without building a Translation (the harness's per-op read)."""
        pm = self._pmaps.get(pmap)
        if pm is None:
            return None
        slot = pm.l1[va >> PDSHIFT]
        if slot is None:
            return None
        pte = self._ptes[slot[0]][(va >> PGSHIFT) & PTE_INDEX_MASK]
        if not pte:
            return None
        return pte & PG_FRAME, (pte >> PTE_SW_SHIFT) & 7, bool(pte & PTE_SW_WIRED)

    def read_place(self, pmap: int, va: int, pa: int) -> tuple[object, int, int, bool, bool] | None:
        """walk_fields, read_counts and read_attributes in one read (the harness's read
        after an op on one place); None for a pmap it does not have."""
        pm = self._pmaps.get(pmap)
        if pm is None:
            return None
        slot = pm.l1[va >> PDSHIFT]
        pte = self._ptes[slot[0]][(va >> PGSHIFT) & PTE_INDEX_MASK] if slot is not None else 0
        attrs = self._attrs[pa >> PGSHIFT]
        return (
            (pte & PG_FRAME, (pte >> PTE_SW_SHIFT) & 7, bool(pte & PTE_SW_WIRED)) if pte else None,
            pm.resident, pm.wired, bool(attrs & PT_M), bool(attrs & PT_H),
        )

    def walk_fields_many(self, pmap: int, vas: Sequence[int]) -> list[tuple[int, int, bool] | None]:
        """``walk_fields`` at each of ``vas`` in one call (the harness's read after a range op)."""
        pm = self._pmaps.get(pmap)
        if pm is None:
            return [None] * len(vas)
        l1, ptes = pm.l1, self._ptes
        out: list[tuple[int, int, bool] | None] = []
        for va in vas:
            slot = l1[va >> PDSHIFT]
            pte = ptes[slot[0]][(va >> PGSHIFT) & PTE_INDEX_MASK] if slot is not None else 0
            out.append((pte & PG_FRAME, (pte >> PTE_SW_SHIFT) & 7, bool(pte & PTE_SW_WIRED)) if pte else None)
        return out

    def walk_range(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, Translation]]:
        for va, fields in self._range_fields(pmap, sva, eva):
            yield va, Translation(*fields)

    def walk_range_fields(self, pmap: int, sva: int, eva: int) -> dict[int, tuple[int, int, bool]]:
        """``walk_range`` as ``{va: (pa, prot, wired)}`` (the harness's full audit)."""
        return dict(self._range_fields(pmap, sva, eva))

    def _range_fields(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, tuple[int, int, bool]]]:
        pm = self._pmaps.get(pmap)
        if pm is None:
            return
        for region, frame, i0, i1 in self._chunks(pm, sva, eva):
            base = region << PTSHIFT
            if i0 == 0 and i1 == NPTEPG:
                entries: Iterable[tuple[int, int]] = self.live_entries(frame)
            else:
                pt = self._ptes[frame]
                entries = ((i, pt[i]) for i in compress(range(i0, i1), pt[i0:i1]))
            for i, pte in entries:
                yield base | (i << PGSHIFT), (pte & PG_FRAME, (pte >> PTE_SW_SHIFT) & 7, bool(pte & PTE_SW_WIRED))

    def live_entries(self, frame: int) -> list[tuple[int, int]]:
        """(index, PTE) of every nonzero PTE of PT frame ``frame``, in order (audits and
        invariants).  During a full audit each frame is scanned once (``audit_memo``)."""
        memo = self.audit_memo
        if memo is not None:
            live = memo.setdefault("arm32-live", {})
            got = live.get(frame)
            if got is None:
                got = live[frame] = _nonzero(self._ptes[frame])
            return got
        return _nonzero(self._ptes[frame])

    def state_snapshot(self) -> object:
        pmaps = tuple(
            (
                pm.id,
                pm.refs,
                pm.resident,
                pm.wired,
                pm.l1_frames,
                tuple(pm.l1),
                tuple(sorted(pm.vptpt.items())),
            )
            for _, pm in sorted(self._pmaps.items())
        )
        ptes = tuple((frame, tuple(pt)) for frame, pt in sorted(self._ptes.items()))
        pv = tuple((page, tuple(pvh.items())) for page, pvh in sorted(self._pv.items()))
        return (pmaps, ptes, pv, bytes(self._attrs), self._extra_snapshot())

    def _extra_snapshot(self) -> object:
        """Subclass state (the refcount backend's PT counts)."""
        return None
