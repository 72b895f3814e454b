"""alpha-ref: the reference pmap of the differential tests.

 *	Models: $NetBSD: pmap.c,v 1.139 2000/08/13 18:41:15 thorpej Exp $
 *	and v1.154 (Dec 2000, read through OpenBSD's import of it).
 *
 *	A model of the DEC Alpha physical map management code as Jason R.
 *	Thorpe rewrote it in 1998-2000 (sys/arch/alpha/alpha/pmap.c,
 *	revisions 1.139 and 1.154), run on the common simulated machine:
 *	4 KiB pages, 32-bit virtual addresses, one PhysPool per instance.
 *	It is the judge of the differential tests, so it is written to be
 *	plain and checkable rather than clever.  Independent code: it shares
 *	nothing with the arm32 models.
 *
 * Geometry:
 *
 *	Three levels, every table one pool frame, sizes are constructor
 *	parameters (alpha itself: 1024 entries a level, 8 KiB pages).
 *	"alpha-ref" (default): 4 x 512 x 512 entries with 8-byte PTEs:
 *		L1  4 entries of 1 GiB  (Tag.L1, made lazily)
 *		L2  512 entries of 2 MiB (one L2 page maps 1 GiB)
 *		L3  512 entries of 4 KiB (one L3 page maps 2 MiB)
 *	"alpha-ref-4m": 1 x 1024 x 1024 entries with 4-byte PTEs (so that a
 *	1024-entry table still fits one 4 KiB frame): one L3 page maps
 *	4 MiB, as one arm32 PT page does.
 *
 * Data structures (named as in pmap.c):
 *
 *	ptmem[frame]	the PTE array of a PT page, by pool frame: the K0SEG
 *			view of page-table memory.  An L1/L2 PTE holds the
 *			next table's frame << PG_SHIFT | PG_V | PG_KRE |
 *			PG_KWE | PG_WIRED, as pmap_ptpage_alloc builds it; an
 *			L3 PTE holds the data frame, the protection bits, the
 *			fault-on bits and the software bits PG_WIRED,
 *			PG_PVLIST and PG_EXEC.  An invalid PTE is PG_NV (0).
 *	pv_table	per physical page (pv_head): pvh_list (pv entries
 *			{pv_pmap, pv_va, pv_pte}; pv_pte is the frame of the
 *			L3 page holding the PTE; kept as a dict (pv_pmap,
 *			pv_va) -> pv_pte in insertion order, so the list,
 *			head first, is the dict read backwards: a lookup is
 *			O(1) and the order is the linked list's), pvh_attrs (PGA_REFERENCED,
 *			PGA_MODIFIED), pvh_refcnt and pvh_usage (PGU_*) of
 *			special-use (page-table) pages.
 *	struct pmap	pm_count, pm_lev1map (None: still shares
 *			kernel_lev1map), pm_nlev2, pm_nlev3, pm_stats
 *			(resident_count, wired_count: leaf mappings only).
 *
 * The invariants it keeps (checked by the Invariants registered below):
 *
 *	- pvh_refcnt of an L3 page is its number of valid PTEs, of an L2 page
 *	  its number of L3 pages, of an L1 page its number of L2 pages;
 *	- a user pmap owns an L1 iff it has an L2 iff it has an L3 iff it
 *	  has a mapping: pmap_remove_mapping -> pmap_l3pt_delref frees the
 *	  L3 at 0 (pm_nlev3--), pmap_l2pt_delref the L2 (pm_nlev2--),
 *	  pmap_l1pt_delref the L1 (pmap_lev1map_destroy).  So an empty user
 *	  pmap holds zero PT and zero L1 frames;
 *	- no table page is freed while referenced; every PT/L1 frame a pmap
 *	  owns in the pool is in its tree and the other way round;
 *	- every PG_PVLIST PTE has exactly one pv entry and every pv entry
 *	  such a PTE;
 *	- resident_count/wired_count equal the valid/PG_WIRED leaf PTEs;
 *	- REF/MOD emulation: a managed PTE without PG_FOR (or PG_FOE) means
 *	  the page is PGA_REFERENCED, one without PG_FOW that it is
 *	  PGA_MODIFIED; so MOD is exact and REF never over-reports.
 *
 *	After each op they check what it touched; a page's pv entries and
 *	the REF/MOD emulation of its mappings whole only where the op
 *	changed the page whole, the page has at most WALK_WHOLE mappings,
 *	or (REF/MOD) its attributes lost a bit: an op on one mapping of a
 *	page shared by many costs O(1).  Full audits check everything.
 *
 *	pmap_remove (pmap_do_remove) walks the L1 and L2 entries, skipping
 *	absent tables (only nonzero entries are visited), and holds a
 *	reference on each table while it works in it, as alpha does; the
 *	cost of an op follows the tables, not the size of the range.
 *
 *	The kernel pmap (0) gets its L1 at bootstrap; its L2 and L3 pages
 *	(static in pmap_bootstrap on the real machine) are allocated on
 *	demand here and never freed.  Their reference counts are kept all
 *	the same (the real code does not call pmap_l3pt_delref for the
 *	kernel pmap; we count and stop there), so that one refcount
 *	invariant covers every table.
 *
 *	pmap_lev1map_create does not copy the kernel's L1 slots into the
 *	user L1: with 32-bit VAs the user and kernel ranges share an L1
 *	slot (slot 3 by default, the only slot in the 4m variant), and
 *	docs/SEMANTICS.md wants separate trees, kernel translations seen
 *	through pmap 0 only.
 *
 * Choices where the originals disagree with the contract:
 *
 *	pmap_collect follows v1.154: the kernel pmap is left alone and a
 *	user pmap loses every non-wired mapping (pmap_do_remove with
 *	dowired = FALSE), which frees every PT page that held only
 *	non-wired mappings.  v1.139 called pmap_remove(pmap, VM_MIN_ADDRESS,
 *	VM_MAX_ADDRESS), which removes wired mappings too: a violation of
 *	the pmap(9) contract (wired mappings must never be forgotten).
 *
 *	pmap_page_protect(pg, VM_PROT_NONE) removes every mapping of the
 *	page except wired ones, as alpha does (it skips PTEs with PG_WIRED:
 *	a wired mapping is one the VM system promised never to fault on, so
 *	the pmap refuses to break the promise even when told to).  arm32
 *	removes wired mappings as well; the VM layer never asks this for a
 *	wired page, and the harness accepts both outcomes.
 *
 *	pmap_page_protect follows docs/SEMANTICS.md where alpha's switch is
 *	odd: a prot with write (W or WX) changes nothing, a prot with read
 *	and without write removes write, anything else removes.
 *	pmap_protect never adds rights (new prot = old & prot; alpha set the
 *	PTE to pte_prot(prot), which could add execute).
 *	The protection codes keep r, w and x apart (PG_EXEC alone for
 *	execute, where alpha also set the read enables), because the
 *	simulated MMU enforces the three separately.
 *	Re-entering a va with the same PA only changes prot and wiring when
 *	the old PTE is managed (PG_PVLIST): a kenter'd mapping at that va is
 *	removed and the new one entered with a pv entry.  pmap_kenter_pa
 *	removes a managed mapping it replaces (alpha overwrote the PTE and
 *	left the pv entry), and counts a new wired mapping with wired_count++
 *	(v1.139 decremented it).
 *
 *	Out of memory: pmap_enter with PMAP_CANFAIL first asks the pool
 *	whether the missing tables can be had (has_free), so that ENOMEM
 *	leaves the pool exactly as it was (its alloc/free counters
 *	included); should an allocation fail anyway, the real error path
 *	runs (pmap_l1pt_delref / pmap_l2pt_delref undo the references and
 *	free what was made).  Without PMAP_CANFAIL the OutOfMemory
 *	propagates (the kernel would panic).  No page stealing
 *	(pmap_ptpage_steal, pmap_pv_alloc's stealing): off.  pv entries are
 *	not pool memory.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from itertools import compress
from typing import Iterator, Sequence

from difftest import hookimpl
from difftest.backend import (
    Backend,
    BackendSpec,
    Geometry,
    Invariant,
    Level,
    Touched,
    Translation,
    check_memo,
    pool_conservation,
)
from difftest.machine import (
    KERNEL_PMAP,
    PAGE_SHIFT,
    PAGE_SIZE,
    USER_MAX,
    USER_MIN,
    OutOfMemory,
    PhysPool,
    Tag,
)
from difftest.ops import ENOMEM, FAULT, OK, PROT_R, PROT_W, PROT_X

__all__ = ["AlphaPmap", "PmapPanic", "alpha_geometry", "INVARIANTS"]

# -- PTE bits (alpha/include/pte.h) ---------------------------------------------------------

PG_NV = 0x0  # the invalid PTE
PG_V = 0x1  # valid
PG_FOR = 0x2  # fault on read
PG_FOW = 0x4  # fault on write
PG_FOE = 0x8  # fault on execute
PG_ASM = 0x10  # address space match (kernel PTEs)
PG_KRE = 0x100  # kernel read enable
PG_URE = 0x200  # user read enable
PG_KWE = 0x1000  # kernel write enable
PG_UWE = 0x2000  # user write enable
PG_WIRED = 0x10000  # software: wired mapping
PG_PVLIST = 0x20000  # software: on a pv list (managed)
PG_EXEC = 0x40000  # software: execute permission
PG_SHIFT = 32  # the PFN lives above bit 32

_VA_END = 1 << 32  # the simulated machine's VAs are 32 bits

PG_FAULTON = PG_FOR | PG_FOW | PG_FOE


def _pte_fields(pte: int) -> tuple[int, int, bool]:
    """(pa, logical prot, wired) of a valid PTE: what the MMU view reports."""
    return (pte >> PG_SHIFT) << PAGE_SHIFT, ((pte >> 8) & 1) | ((pte >> 11) & 2) | ((pte >> 16) & 4), bool(pte & PG_WIRED)
PG_PROT = PG_ASM | PG_KRE | PG_URE | PG_KWE | PG_UWE | PG_EXEC

# pv_head attributes (alpha/include/pmap.h)
PGA_MODIFIED = 0x01
PGA_REFERENCED = 0x02
_REFMOD = PGA_MODIFIED | PGA_REFERENCED

# pv_head usage of a physical page (PGU_*)
PGU_NORMAL = 0
PGU_PVENT = 1
PGU_L1PT = 2
PGU_L2PT = 3
PGU_L3PT = 4
PGU_STRINGS = ("normal", "pvent", "l1pt", "l2pt", "l3pt")


def _protection_codes() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """alpha_protection_init: [kernel, user][prot] -> PTE protection bits.

    Unlike alpha (which set the read enables for execute, the hardware having no execute
    permission), r, w and x stay separate bits: the simulated MMU enforces them apart.
    """
    kernel, user = [], []
    for prot in range(8):
        k, u = PG_ASM, 0
        if prot & PROT_R:
            k |= PG_KRE
            u |= PG_URE | PG_KRE
        if prot & PROT_W:
            k |= PG_KWE
            u |= PG_UWE | PG_KWE
        if prot & PROT_X:
            k |= PG_EXEC
            u |= PG_EXEC
        kernel.append(k)
        user.append(u)
    return tuple(kernel), tuple(user)


PROTECTION_CODES = _protection_codes()


def pte_logical_prot(pte: int) -> int:
    """The logical PROT_* bits of a leaf PTE (read from KRE, KWE and PG_EXEC)."""
    return ((pte >> 8) & 1) | ((pte >> 11) & 2) | ((pte >> 16) & 4)


class PmapPanic(RuntimeError):
    """What the real pmap would panic() on (a DIAGNOSTIC check): the harness sees a crash."""


def _log2(n: int, what: str) -> int:
    if n <= 0 or n & (n - 1):
        raise ValueError(f"{what} must be a power of two, not {n}")
    return n.bit_length() - 1


def alpha_geometry(l1_entries: int = 4, l2_entries: int = 512, l3_entries: int = 512) -> Geometry:
    """The declared geometry for the given level sizes (the VA space is 32 bits)."""
    l3_span = l3_entries * PAGE_SIZE
    l2_span = l2_entries * l3_span
    return Geometry(
        levels=(
            Level("L1", span=l1_entries * l2_span, entries=l1_entries, frames=1, tag=Tag.L1),
            Level("L2", span=l2_span, entries=l2_entries, tag=Tag.PT),
            Level("L3", span=l3_span, entries=l3_entries, tag=Tag.PT),
        ),
        top_level="lazy",
    )


class Pmap:
    """struct pmap: what the model keeps per address space."""

    __slots__ = ("pm_id", "pm_count", "pm_lev1map", "pm_nlev2", "pm_nlev3", "resident_count", "wired_count")

    def __init__(self, pm_id: int) -> None:
        self.pm_id = pm_id
        self.pm_count = 1  # references
        self.pm_lev1map: int | None = None  # L1 frame; None: shares kernel_lev1map
        self.pm_nlev2 = 0  # L2 PT pages
        self.pm_nlev3 = 0  # L3 PT pages
        self.resident_count = 0  # pm_stats: leaf mappings
        self.wired_count = 0  # pm_stats: wired leaf mappings

    def key(self) -> tuple:
        return (
            self.pm_id,
            self.pm_count,
            self.pm_lev1map,
            self.pm_nlev2,
            self.pm_nlev3,
            self.resident_count,
            self.wired_count,
        )

    def __repr__(self) -> str:
        return (
            f"Pmap({self.pm_id}, count={self.pm_count}, lev1map={self.pm_lev1map}, "
            f"nlev2={self.pm_nlev2}, nlev3={self.pm_nlev3}, resident={self.resident_count}, "
            f"wired={self.wired_count})"
        )


class AlphaPmap(Backend):
    """The alpha pmap (Thorpe, 1998-2000): three refcounted levels, lazy L1."""

    name = "alpha-ref"
    description = "NetBSD/alpha pmap (v1.139/v1.154): 3 refcounted levels, lazy L1, frees PT pages"
    geometry = alpha_geometry(4, 512, 512)
    keeps_kernel_page_tables = True  # kernel L2/L3 pages are never freed (see above)

    def __init__(
        self,
        pool: PhysPool,
        l1_entries: int = 4,
        l2_entries: int = 512,
        l3_entries: int = 512,
        pte_size: int = 8,
        name: str | None = None,
    ) -> None:
        super().__init__(pool)
        s3 = _log2(l3_entries, "l3_entries")
        s2 = _log2(l2_entries, "l2_entries")
        s1 = _log2(l1_entries, "l1_entries")
        if PAGE_SHIFT + s3 + s2 + s1 != 32:
            raise ValueError(
                f"{l1_entries} x {l2_entries} x {l3_entries} entries of 4 KiB pages do not map 32 bits"
            )
        for n in (l1_entries, l2_entries, l3_entries):
            if n * pte_size > PAGE_SIZE:
                raise ValueError(f"a table of {n} {pte_size}-byte PTEs does not fit one 4 KiB frame")
        if name is not None:
            self.name = name
        if (l1_entries, l2_entries, l3_entries) != (4, 512, 512):
            self.geometry = alpha_geometry(l1_entries, l2_entries, l3_entries)
        self.nl1, self.nl2, self.nl3 = l1_entries, l2_entries, l3_entries
        self.pte_size = pte_size
        self._s2 = PAGE_SHIFT + s3  # va >> _s2: L2 index (masked)
        self._s1 = PAGE_SHIFT + s3 + s2  # va >> _s1: L1 index
        self._m2 = l2_entries - 1
        self._m3 = l3_entries - 1

        n = pool.phys_pages
        self.ptmem: dict[int, list[int]] = {}  # PT page frame -> its PTEs
        # pv_table, one pv_head per physical page
        # pfn -> {(pmap, va): l3 frame}, oldest first: the pv list is it read backwards
        self.pvh_list: dict[int, dict[tuple[int, int], int]] = {}
        self.pvh_attrs = bytearray(n)  # PGA_*
        self.pvh_refcnt = [0] * n  # special-use page references
        self.pvh_usage = bytearray(n)  # PGU_*

        # pmap_bootstrap: the kernel pmap and kernel_lev1map.
        kpm = Pmap(KERNEL_PMAP)
        frame = pool.alloc(Tag.L1, KERNEL_PMAP)
        self.ptmem[frame] = [PG_NV] * l1_entries
        self.pvh_usage[frame] = PGU_L1PT
        kpm.pm_lev1map = frame
        self.pmaps: dict[int, Pmap] = {KERNEL_PMAP: kpm}

    # == page-table page management =============================================================

    def pmap_physpage_addref(self, frame: int) -> int:
        if self.pvh_usage[frame] == PGU_NORMAL:
            raise PmapPanic(f"pmap_physpage_addref: frame {frame:#x} is not a special use page")
        n = self.pvh_refcnt[frame] + 1
        self.pvh_refcnt[frame] = n
        return n

    def pmap_physpage_delref(self, frame: int) -> int:
        n = self.pvh_refcnt[frame] - 1
        if n < 0:
            raise PmapPanic(f"pmap_physpage_delref: negative reference count on frame {frame:#x}")
        self.pvh_refcnt[frame] = n
        return n

    def pmap_physpage_free(self, frame: int, tag: Tag) -> None:
        if self.pvh_usage[frame] == PGU_NORMAL:
            raise PmapPanic(f"pmap_physpage_free: frame {frame:#x} not in use?!")
        if self.pvh_refcnt[frame]:
            raise PmapPanic(
                f"pmap_physpage_free: frame {frame:#x} still has {self.pvh_refcnt[frame]} references"
            )
        self.pvh_usage[frame] = PGU_NORMAL
        del self.ptmem[frame]
        self.pool.free(frame, tag)

    def pmap_lev1map_create(self, pm: Pmap) -> None:
        """Give a user pmap its own level 1 table (raises OutOfMemory, changing nothing)."""
        if pm.pm_id == KERNEL_PMAP:
            raise PmapPanic("pmap_lev1map_create: got kernel pmap")
        frame = self.pool.alloc(Tag.L1, pm.pm_id)
        self.ptmem[frame] = [PG_NV] * self.nl1
        self.pvh_usage[frame] = PGU_L1PT
        pm.pm_lev1map = frame

    def pmap_lev1map_destroy(self, pm: Pmap) -> None:
        """Free a user pmap's level 1 table; it goes back to sharing kernel_lev1map."""
        if pm.pm_id == KERNEL_PMAP:
            raise PmapPanic("pmap_lev1map_destroy: got kernel pmap")
        frame = pm.pm_lev1map
        pm.pm_lev1map = None
        self.pmap_physpage_free(frame, Tag.L1)

    def pmap_ptpage_alloc(self, pm: Pmap, table: list[int], index: int, usage: int) -> None:
        """Allocate an L2 or L3 page and point ``table[index]`` at it (raises OutOfMemory)."""
        frame = self.pool.alloc(Tag.PT, pm.pm_id)
        self.ptmem[frame] = [PG_NV] * (self.nl2 if usage == PGU_L2PT else self.nl3)
        self.pvh_usage[frame] = usage
        table[index] = (
            (frame << PG_SHIFT) | PG_V | PG_KRE | PG_KWE | PG_WIRED | (PG_ASM if pm.pm_id == KERNEL_PMAP else 0)
        )

    def pmap_ptpage_free(self, pm: Pmap, table: list[int], index: int) -> None:
        """Free the L2 or L3 page ``table[index]`` points at and clear that entry."""
        frame = table[index] >> PG_SHIFT
        table[index] = PG_NV
        self.pmap_physpage_free(frame, Tag.PT)

    def pmap_l3pt_delref(self, pm: Pmap, va: int, l3frame: int) -> None:
        """Drop a reference on an L3 page; at zero free it, then drop one on its L2."""
        if self.pmap_physpage_delref(l3frame) or pm.pm_id == KERNEL_PMAP:
            return  # still referenced, or a kernel PT page (never freed)
        ptmem = self.ptmem
        l2frame = ptmem[pm.pm_lev1map][va >> self._s1] >> PG_SHIFT
        self.pmap_ptpage_free(pm, ptmem[l2frame], (va >> self._s2) & self._m2)
        pm.pm_nlev3 -= 1
        self.pmap_l2pt_delref(pm, va, l2frame)

    def pmap_l2pt_delref(self, pm: Pmap, va: int, l2frame: int) -> None:
        """Drop a reference on an L2 page; at zero free it, then drop one on the L1."""
        if self.pmap_physpage_delref(l2frame) or pm.pm_id == KERNEL_PMAP:
            return
        self.pmap_ptpage_free(pm, self.ptmem[pm.pm_lev1map], va >> self._s1)
        pm.pm_nlev2 -= 1
        self.pmap_l1pt_delref(pm)

    def pmap_l1pt_delref(self, pm: Pmap) -> None:
        """Drop a reference on the L1; at zero go back to kernel_lev1map."""
        if self.pmap_physpage_delref(pm.pm_lev1map) or pm.pm_id == KERNEL_PMAP:
            return
        self.pmap_lev1map_destroy(pm)

    def _pmap_enter_ptpages(self, pm: Pmap, va: int) -> int:
        """pmap_enter's table set-up: create what is missing of L1, L2 and L3 for ``va`` and
        return the L3 frame.  On OutOfMemory the references and pages made here are undone
        (the real error path) before the exception goes on."""
        ptmem = self.ptmem
        if pm.pm_lev1map is None:
            # A reference is added to the L1 when the L2 table is created.
            self.pmap_lev1map_create(pm)
        l1frame = pm.pm_lev1map
        l1tbl = ptmem[l1frame]
        i1 = va >> self._s1
        made_l2 = False
        if not l1tbl[i1] & PG_V:
            self.pmap_physpage_addref(l1frame)
            try:
                self.pmap_ptpage_alloc(pm, l1tbl, i1, PGU_L2PT)
            except OutOfMemory:
                self.pmap_l1pt_delref(pm)  # may free the L1 made above
                raise
            pm.pm_nlev2 += 1
            made_l2 = True
        l2frame = l1tbl[i1] >> PG_SHIFT
        l2tbl = ptmem[l2frame]
        i2 = (va >> self._s2) & self._m2
        if not l2tbl[i2] & PG_V:
            self.pmap_physpage_addref(l2frame)
            try:
                self.pmap_ptpage_alloc(pm, l2tbl, i2, PGU_L3PT)
            except OutOfMemory:
                if pm.pm_id != KERNEL_PMAP:
                    self.pmap_l2pt_delref(pm, va, l2frame)  # may free the L2, then the L1
                else:
                    # Kernel tables are never freed, but one made by this failed call goes.
                    self.pmap_physpage_delref(l2frame)
                    if made_l2:
                        self.pmap_physpage_delref(l1frame)
                        self.pmap_ptpage_free(pm, l1tbl, i1)
                        pm.pm_nlev2 -= 1
                raise
            pm.pm_nlev3 += 1
        return l2tbl[i2] >> PG_SHIFT

    def _pmap_l3pt(self, pm: Pmap, va: int) -> int | None:
        """The frame of the L3 page for ``va``, or None (pmap_l1pte/l2pte lookups)."""
        l1 = pm.pm_lev1map
        if l1 is None:
            return None
        ptmem = self.ptmem
        pte = ptmem[l1][va >> self._s1]
        if not pte & PG_V:
            return None
        pte = ptmem[pte >> PG_SHIFT][(va >> self._s2) & self._m2]
        if not pte & PG_V:
            return None
        return pte >> PG_SHIFT

    def _l3_ranges(self, pm: Pmap, sva: int, eva: int) -> Iterator[tuple[int, list[int], int, int, int]]:
        """Each existing L3 page under [sva, eva), in VA order: (frame, PTEs, first index,
        end index, VA of index 0).  Absent L2 and L3 tables are skipped whole."""
        l1 = pm.pm_lev1map
        if eva > _VA_END:
            eva = _VA_END
        if l1 is None or sva >= eva:
            return
        ptmem = self.ptmem
        s1, s2, m2, m3 = self._s1, self._s2, self._m2, self._m3
        l1tbl = ptmem[l1]
        last = eva - 1
        lo1 = sva >> s1
        hi1 = (last >> s1) + 1
        # Only the nonzero entries of each level are visited (itertools.compress).
        for i1 in compress(range(lo1, hi1), l1tbl[lo1:hi1]):
            l1pte = l1tbl[i1]
            if not l1pte & PG_V:
                continue
            l2tbl = ptmem[l1pte >> PG_SHIFT]
            base1 = i1 << s1
            start1 = sva if sva > base1 else base1
            stop1 = base1 + (1 << s1) - 1
            if last < stop1:
                stop1 = last
            lo2 = (start1 >> s2) & m2
            hi2 = ((stop1 >> s2) & m2) + 1
            for i2 in compress(range(lo2, hi2), l2tbl[lo2:hi2]):
                l2pte = l2tbl[i2]
                if not l2pte & PG_V:
                    continue
                base2 = base1 + (i2 << s2)
                frame = l2pte >> PG_SHIFT
                start = start1 if start1 > base2 else base2
                stop = base2 + (1 << s2) - 1
                if stop1 < stop:
                    stop = stop1
                yield frame, ptmem[frame], (start >> PAGE_SHIFT) & m3, ((stop >> PAGE_SHIFT) & m3) + 1, base2

    # == pv entries ==============================================================================

    def pmap_pv_enter(self, pm: Pmap, pfn: int, va: int, l3frame: int) -> None:
        """Insert {pv_pmap, pv_va, pv_pte} at the head of the page's pv list."""
        pvl = self.pvh_list.get(pfn)
        key = (pm.pm_id, va)
        if pvl is None:
            self.pvh_list[pfn] = {key: l3frame}
        elif key in pvl:
            # (pmap.c's DEBUG check: the entry must not exist already)
            raise PmapPanic(f"pmap_pv_enter: pmap {pm.pm_id} va {va:#010x} already in the pv table of pfn {pfn:#x}")
        else:
            pvl[key] = l3frame

    def pmap_pv_remove(self, pm: Pmap, pfn: int, va: int) -> None:
        """Remove the page's pv entry for (pmap, va)."""
        pvl = self.pvh_list.get(pfn)
        if pvl is None or pvl.pop((pm.pm_id, va), None) is None:
            raise PmapPanic(f"pmap_pv_remove: pmap {pm.pm_id} va {va:#010x} not in the pv table of pfn {pfn:#x}")
        if not pvl:
            del self.pvh_list[pfn]

    def pv_entries(self, pfn: int) -> list[tuple[int, int, int]]:
        """The page's pv list, head first: (pv_pmap, pv_va, pv_pte) of each entry."""
        pvl = self.pvh_list.get(pfn)
        return [(pmap, va, frame) for (pmap, va), frame in reversed(pvl.items())] if pvl else []

    # == mappings ================================================================================

    def pmap_remove_mapping(self, pm: Pmap, va: int, l3frame: int) -> None:
        """Invalidate the PTE for ``va`` in L3 page ``l3frame`` (it must be valid): stats,
        the reference on the L3 page (which may free tables, user pmaps only), the pv entry."""
        tbl = self.ptmem[l3frame]
        i = (va >> PAGE_SHIFT) & self._m3
        opte = tbl[i]
        if opte & PG_WIRED:
            pm.wired_count -= 1
        pm.resident_count -= 1
        tbl[i] = PG_NV
        if pm.pm_id != KERNEL_PMAP:
            self.pmap_l3pt_delref(pm, va, l3frame)
        else:
            self.pmap_physpage_delref(l3frame)
        if opte & PG_PVLIST:
            self.pmap_pv_remove(pm, opte >> PG_SHIFT, va)

    def pmap_changebit(self, pfn: int, set_bits: int, mask: int) -> None:
        """Set ``set_bits`` then keep ``mask`` in the PTE of every mapping of the page."""
        pvl = self.pvh_list.get(pfn)
        if not pvl:
            return
        ptmem, m3 = self.ptmem, self._m3
        for (_pmid, va), l3frame in pvl.items():
            tbl = ptmem[l3frame]
            i = (va >> PAGE_SHIFT) & m3
            tbl[i] = (tbl[i] | set_bits) & mask

    def pmap_emulate_reference(self, pm: Pmap, va: int, write: bool) -> None:
        """A fault-on-read/write/execute trap: record REF (and MOD for a write) and clear
        the fault bits on every mapping of the page."""
        l3frame = self._pmap_l3pt(pm, va)
        pte = self.ptmem[l3frame][(va >> PAGE_SHIFT) & self._m3] if l3frame is not None else PG_NV
        if not pte & PG_V:
            raise PmapPanic(f"pmap_emulate_reference: invalid pte for va {va:#010x}")
        if not pte & PG_PVLIST:
            raise PmapPanic(f"pmap_emulate_reference: va {va:#010x}: pa not managed")
        pfn = pte >> PG_SHIFT
        if write:
            self.pvh_attrs[pfn] |= PGA_REFERENCED | PGA_MODIFIED
            faultoff = PG_FOR | PG_FOW | PG_FOE
        else:
            self.pvh_attrs[pfn] |= PGA_REFERENCED
            faultoff = PG_FOR | PG_FOE
        self.pmap_changebit(pfn, 0, ~faultoff)

    def pmap_do_remove(self, pm: Pmap, sva: int, eva: int, dowired: bool) -> None:
        """pmap_remove's body (v1.154): remove the managed mappings in [sva, eva), wired
        ones only if ``dowired``.  Walks L1 and L2 entries, skipping absent tables; holds
        a reference on each table while working in it so that it cannot go away."""
        if pm.pm_id == KERNEL_PMAP:
            # Kernel PT pages are never freed: no references to hold.  kenter'd mappings
            # (no PG_PVLIST) are left to pmap_kremove.
            for frame, tbl, lo, hi, base in self._l3_ranges(pm, sva, eva):
                for i in compress(range(lo, hi), tbl[lo:hi]):
                    pte = tbl[i]
                    if pte & PG_PVLIST and (dowired or not pte & PG_WIRED):
                        self.pmap_remove_mapping(pm, base + (i << PAGE_SHIFT), frame)
            return
        l1frame = pm.pm_lev1map
        if eva > _VA_END:
            eva = _VA_END
        if l1frame is None or sva >= eva:
            return  # still shares kernel_lev1map: nothing to do
        ptmem = self.ptmem
        refcnt = self.pvh_refcnt
        s1, s2, m2, m3 = self._s1, self._s2, self._m2, self._m3
        remove_mapping = self.pmap_remove_mapping
        l1tbl = ptmem[l1frame]
        refcnt[l1frame] += 1  # pmap_physpage_addref(saved_l1pte)
        last = eva - 1
        lo1 = sva >> s1
        hi1 = (last >> s1) + 1
        # The loops visit only nonzero L1/L2/L3 entries (itertools.compress over a copy of
        # the entries in range), so absent tables cost nothing.
        for i1 in compress(range(lo1, hi1), l1tbl[lo1:hi1]):
            l1pte = l1tbl[i1]
            if not l1pte & PG_V:
                continue
            l2frame = l1pte >> PG_SHIFT
            l2tbl = ptmem[l2frame]
            refcnt[l2frame] += 1  # keeps the L2 page while we work in it
            base1 = i1 << s1
            start1 = sva if sva > base1 else base1
            stop1 = base1 + (1 << s1) - 1
            if last < stop1:
                stop1 = last
            lo2 = (start1 >> s2) & m2
            hi2 = ((stop1 >> s2) & m2) + 1
            for i2 in compress(range(lo2, hi2), l2tbl[lo2:hi2]):
                l2pte = l2tbl[i2]
                if not l2pte & PG_V:
                    continue
                l3frame = l2pte >> PG_SHIFT
                l3tbl = ptmem[l3frame]
                refcnt[l3frame] += 1  # keeps the L3 page while we work in it
                base2 = base1 + (i2 << s2)
                start = start1 if start1 > base2 else base2
                stop = base2 + (1 << s2) - 1
                if stop1 < stop:
                    stop = stop1
                lo3 = (start >> PAGE_SHIFT) & m3
                hi3 = ((stop >> PAGE_SHIFT) & m3) + 1
                for i3 in compress(range(lo3, hi3), l3tbl[lo3:hi3]):
                    pte = l3tbl[i3]
                    if pte & PG_V and (dowired or not pte & PG_WIRED):
                        remove_mapping(pm, base2 + (i3 << PAGE_SHIFT), l3frame)
                self.pmap_l3pt_delref(pm, base2, l3frame)  # may free the L3 page
            self.pmap_l2pt_delref(pm, base1, l2frame)  # may free the L2 page
        self.pmap_l1pt_delref(pm)  # may free the L1

    # == pmap(9) =================================================================================

    def pmap_create(self, pmap: int) -> None:
        if pmap in self.pmaps:
            raise PmapPanic(f"pmap_create: pmap {pmap} exists")
        self.pmaps[pmap] = Pmap(pmap)  # shares kernel_lev1map: no page table yet

    def pmap_reference(self, pmap: int) -> None:
        self.pmaps[pmap].pm_count += 1

    def pmap_destroy(self, pmap: int) -> None:
        pm = self.pmaps[pmap]
        if pmap == KERNEL_PMAP:
            raise PmapPanic("pmap_destroy: kernel pmap")
        pm.pm_count -= 1
        if pm.pm_count > 0:
            return
        # pmap_release: the pmap is supposed to be empty; DIAGNOSTIC code cleans up.
        if pm.pm_lev1map is not None:
            self.pmap_do_remove(pm, 0, USER_MAX, True)
            if pm.pm_lev1map is not None:
                raise PmapPanic("pmap_release: pmap_remove() didn't")
        del self.pmaps[pmap]

    def pmap_enter(
        self, pmap: int, va: int, pa: int, prot: int, access: int, wired: bool, canfail: bool
    ) -> str:
        pm = self.pmaps[pmap]
        ptmem = self.ptmem
        # Find the L3 page: pmap_l1pte / pmap_l2pte, all present on the fast path.
        l3frame = -1
        l1 = pm.pm_lev1map
        if l1 is None:
            need = 3
        else:
            pte = ptmem[l1][va >> self._s1]
            if not pte & PG_V:
                need = 2
            else:
                pte = ptmem[pte >> PG_SHIFT][(va >> self._s2) & self._m2]
                if pte & PG_V:
                    l3frame = pte >> PG_SHIFT
                else:
                    need = 1
        if l3frame < 0:
            # pmap_lev1map_create / pmap_ptpage_alloc for what is missing.
            if canfail and not self.pool.has_free(need):
                return ENOMEM
            try:
                l3frame = self._pmap_enter_ptpages(pm, va)
            except OutOfMemory:
                if canfail:
                    return ENOMEM
                raise
        tbl = ptmem[l3frame]
        i3 = (va >> PAGE_SHIFT) & self._m3
        opte = tbl[i3]
        pfn = pa >> PAGE_SHIFT
        if not opte & PG_V:
            self.pvh_refcnt[l3frame] += 1  # new mappings gain a reference on the L3 page
            newmapping = True
        elif opte & PG_PVLIST and opte >> PG_SHIFT == pfn:
            # Same managed page: a protection or wiring change.
            if wired != bool(opte & PG_WIRED):
                pm.wired_count += 1 if wired else -1
            newmapping = False
        else:
            # The mapping changes: an extra reference keeps pmap_remove_mapping from
            # freeing the L3 page; the new mapping inherits it.
            self.pvh_refcnt[l3frame] += 1
            self.pmap_remove_mapping(pm, va, l3frame)
            newmapping = True
        if newmapping:
            self.pmap_pv_enter(pm, pfn, va, l3frame)
            pm.resident_count += 1
            if wired:
                pm.wired_count += 1
        # Build the new PTE; seed REF/MOD from the access type and set up emulation.
        attrs = self.pvh_attrs[pfn]
        if access & PROT_W:
            attrs |= PGA_REFERENCED | PGA_MODIFIED
            self.pvh_attrs[pfn] = attrs
        elif access:
            attrs |= PGA_REFERENCED
            self.pvh_attrs[pfn] = attrs
        npte = (pfn << PG_SHIFT) | PROTECTION_CODES[pmap != KERNEL_PMAP][prot] | PG_V | PG_PVLIST
        if not attrs & PGA_REFERENCED:
            npte |= PG_FOR | PG_FOW | PG_FOE
        elif not attrs & PGA_MODIFIED:
            npte |= PG_FOW
        if wired:
            npte |= PG_WIRED
        tbl[i3] = npte
        return OK

    def pmap_remove(self, pmap: int, sva: int, eva: int) -> None:
        self.pmap_do_remove(self.pmaps[pmap], sva, eva, True)

    def pmap_protect(self, pmap: int, sva: int, eva: int, prot: int) -> None:
        if not prot & PROT_R:
            self.pmap_remove(pmap, sva, eva)
            return
        if prot & PROT_W:
            return
        pm = self.pmaps[pmap]
        codes = PROTECTION_CODES[pmap != KERNEL_PMAP]
        for _frame, tbl, lo, hi, _base in self._l3_ranges(pm, sva, eva):
            for i in compress(range(lo, hi), tbl[lo:hi]):  # nonzero PTEs only
                pte = tbl[i]
                if pte & PG_PVLIST:  # managed (kenter'd mappings are left alone)
                    old = pte_logical_prot(pte)
                    new = old & prot
                    if new != old:
                        tbl[i] = (pte & ~PG_PROT) | codes[new]

    def pmap_unwire(self, pmap: int, va: int) -> None:
        pm = self.pmaps[pmap]
        l3frame = self._pmap_l3pt(pm, va)
        if l3frame is None:
            return
        tbl = self.ptmem[l3frame]
        i = (va >> PAGE_SHIFT) & self._m3
        pte = tbl[i]
        if pte & PG_PVLIST and pte & PG_WIRED:
            tbl[i] = pte & ~PG_WIRED
            pm.wired_count -= 1

    def pmap_extract(self, pmap: int, va: int) -> int | None:
        pm = self.pmaps.get(pmap)
        l3frame = self._pmap_l3pt(pm, va) if pm is not None else None
        if l3frame is None:
            return None
        pte = self.ptmem[l3frame][(va >> PAGE_SHIFT) & self._m3]
        if not pte & PG_V:
            return None
        return (pte >> PG_SHIFT) << PAGE_SHIFT

    def pmap_kenter_pa(self, va: int, pa: int, prot: int) -> None:
        pm = self.pmaps[KERNEL_PMAP]
        l3frame = self._pmap_l3pt(pm, va)
        if l3frame is None:
            l3frame = self._pmap_enter_ptpages(pm, va)  # OutOfMemory propagates
        tbl = self.ptmem[l3frame]
        i = (va >> PAGE_SHIFT) & self._m3
        opte = tbl[i]
        if opte & PG_PVLIST:
            self.pmap_remove_mapping(pm, va, l3frame)
            opte = PG_NV
        if not opte & PG_V:
            pm.resident_count += 1
            self.pvh_refcnt[l3frame] += 1
        if not opte & PG_WIRED:
            pm.wired_count += 1
        tbl[i] = ((pa >> PAGE_SHIFT) << PG_SHIFT) | PROTECTION_CODES[0][prot] | PG_V | PG_WIRED

    def pmap_kremove(self, va: int, size: int) -> None:
        pm = self.pmaps[KERNEL_PMAP]
        refcnt = self.pvh_refcnt
        for frame, tbl, lo, hi, _base in self._l3_ranges(pm, va, va + size):
            for i in compress(range(lo, hi), tbl[lo:hi]):  # nonzero PTEs only
                pte = tbl[i]
                if pte & PG_V and not pte & PG_PVLIST:
                    tbl[i] = PG_NV
                    pm.resident_count -= 1
                    pm.wired_count -= 1
                    refcnt[frame] -= 1

    def pmap_page_protect(self, pa: int, prot: int) -> None:
        pfn = pa >> PAGE_SHIFT
        if prot & PROT_W:
            return
        if prot & PROT_R:
            self.pmap_changebit(pfn, 0, ~(PG_KWE | PG_UWE))  # copy on write
            return
        # remove_all, except wired mappings (alpha)
        ptmem, m3, pmaps = self.ptmem, self._m3, self.pmaps
        for pmid, va, l3frame in self.pv_entries(pfn):  # head first, as pmap_remove_all
            if not ptmem[l3frame][(va >> PAGE_SHIFT) & m3] & PG_WIRED:
                self.pmap_remove_mapping(pmaps[pmid], va, l3frame)

    def pmap_clear_modify(self, pa: int) -> bool:
        pfn = pa >> PAGE_SHIFT
        if self.pvh_attrs[pfn] & PGA_MODIFIED:
            self.pmap_changebit(pfn, PG_FOW, ~0)
            self.pvh_attrs[pfn] &= ~PGA_MODIFIED
            return True
        return False

    def pmap_clear_reference(self, pa: int) -> bool:
        pfn = pa >> PAGE_SHIFT
        if self.pvh_attrs[pfn] & PGA_REFERENCED:
            self.pmap_changebit(pfn, PG_FOR | PG_FOW | PG_FOE, ~0)
            self.pvh_attrs[pfn] &= ~PGA_REFERENCED
            return True
        return False

    def pmap_is_modified(self, pa: int) -> bool:
        return bool(self.pvh_attrs[pa >> PAGE_SHIFT] & PGA_MODIFIED)

    def pmap_is_referenced(self, pa: int) -> bool:
        return bool(self.pvh_attrs[pa >> PAGE_SHIFT] & PGA_REFERENCED)

    def read_attributes(self, pa: int) -> tuple[bool, bool]:
        """(is_modified, is_referenced) in one read (the harness's per-op read)."""
        attrs = self.pvh_attrs[pa >> PAGE_SHIFT]
        return bool(attrs & PGA_MODIFIED), bool(attrs & PGA_REFERENCED)

    def pmap_collect(self, pmap: int) -> None:
        if pmap == KERNEL_PMAP:
            return
        self.pmap_do_remove(self.pmaps[pmap], USER_MIN, USER_MAX, False)

    def pmap_access(self, pmap: int, va: int, kind: str) -> str:
        pm = self.pmaps[pmap]
        l3frame = self._pmap_l3pt(pm, va)
        if l3frame is None:
            return FAULT  # translation not valid
        tbl = self.ptmem[l3frame]
        i = (va >> PAGE_SHIFT) & self._m3
        pte = tbl[i]
        if not pte & PG_V:
            return FAULT
        user = pmap != KERNEL_PMAP
        if kind == "r":
            enable, faulton = (PG_URE if user else PG_KRE), PG_FOR
        elif kind == "w":
            enable, faulton = (PG_UWE if user else PG_KWE), PG_FOW
        elif kind == "x":
            enable, faulton = PG_EXEC, PG_FOE
        else:
            raise ValueError(f"access kind {kind!r} is not r, w or x")
        if not pte & enable:
            return FAULT  # access violation: for the VM layer
        if pte & faulton:
            self.pmap_emulate_reference(pm, va, kind == "w")
            if tbl[i] & faulton:
                return FAULT
        return OK

    def pmap_update(self, pmap: int) -> None:
        """Nothing to do: this pmap module does not defer any operations."""

    def pmap_resident_count(self, pmap: int) -> int:
        pm = self.pmaps.get(pmap)
        return pm.resident_count if pm is not None else 0

    def pmap_wired_count(self, pmap: int) -> int:
        pm = self.pmaps.get(pmap)
        return pm.wired_count if pm is not None else 0

    def read_counts(self, pmap: int) -> tuple[int, int]:
        """(resident_count, wired_count) in one read (the harness's per-op read)."""
        pm = self.pmaps.get(pmap)
        return (pm.resident_count, pm.wired_count) if pm is not None else (0, 0)

    # == the MMU's view ==========================================================================

    def walk(self, pmap: int, va: int) -> Translation | None:
        fields = self.walk_fields(pmap, va)
        return None if fields is None else Translation(*fields)

    def walk_fields(self, pmap: int, va: int) -> tuple[int, int, bool] | None:
        """``walk`` without building a Translation (the harness's per-op read)."""
        pm = self.pmaps.get(pmap)
        if pm is None:
            return None
        l1 = pm.pm_lev1map
        if l1 is None:
            return None
        ptmem = self.ptmem
        pte = ptmem[l1][va >> self._s1]
        if not pte & PG_V:
            return None
        pte = ptmem[pte >> PG_SHIFT][(va >> self._s2) & self._m2]
        if not pte & PG_V:
            return None
        pte = ptmem[pte >> PG_SHIFT][(va >> PAGE_SHIFT) & self._m3]
        if not pte & PG_V:
            return None
        return _pte_fields(pte)

    def read_place(self, pmap: int, va: int, pa: int) -> tuple[object, int, int, bool, bool] | None:
        """walk_fields, read_counts and read_attributes in one call (the harness's read
        after an op on one place); None for a pmap it does not have."""
        pm = self.pmaps.get(pmap)
        if pm is None:
            return None
        attrs = self.pvh_attrs[pa >> PAGE_SHIFT]
        return (self.walk_fields(pmap, va), pm.resident_count, pm.wired_count,
                bool(attrs & PGA_MODIFIED), bool(attrs & PGA_REFERENCED))

    def walk_fields_many(self, pmap: int, vas: Sequence[int]) -> list[tuple[int, int, bool] | None]:
        """``walk_fields`` at each of ``vas`` in one call (the harness's read after a range op)."""
        pm = self.pmaps.get(pmap)
        l1 = pm.pm_lev1map if pm is not None else None
        if l1 is None:
            return [None] * len(vas)
        ptmem, s1, s2, m2, m3 = self.ptmem, self._s1, self._s2, self._m2, self._m3
        top = ptmem[l1]
        out: list[tuple[int, int, bool] | None] = []
        for va in vas:
            pte = top[va >> s1]
            if pte & PG_V:
                pte = ptmem[pte >> PG_SHIFT][(va >> s2) & m2]
                if pte & PG_V:
                    pte = ptmem[pte >> PG_SHIFT][(va >> PAGE_SHIFT) & m3]
                    if pte & PG_V:
                        out.append(_pte_fields(pte))
                        continue
            out.append(None)
        return out

    def walk_range(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, Translation]]:
        for va, pte in self._range_leaves(pmap, sva, eva):
            yield va, Translation(*_pte_fields(pte))

    def walk_range_fields(self, pmap: int, sva: int, eva: int) -> dict[int, tuple[int, int, bool]]:
        """``walk_range`` as ``{va: (pa, prot, wired)}`` (the harness's full audit)."""
        return {va: _pte_fields(pte) for va, pte in self._range_leaves(pmap, sva, eva)}

    def _range_leaves(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, int]]:
        """(va, PTE) of every valid leaf in [sva, eva), in VA order."""
        if self.audit_memo is not None:  # a full audit: the one scan of the leaves it shares
            leaves = self.live_leaves(pmap)
            for va, pte in leaves[bisect_left(leaves, (sva,)):]:
                if va >= eva:
                    return
                yield va, pte
            return
        pm = self.pmaps.get(pmap)
        if pm is None:
            return
        for _frame, tbl, lo, hi, base in self._l3_ranges(pm, sva, eva):
            for i in compress(range(lo, hi), tbl[lo:hi]):  # nonzero PTEs only
                pte = tbl[i]
                if pte & PG_V:
                    yield base + (i << PAGE_SHIFT), pte

    def live_leaves(self, pmap: int) -> list[tuple[int, int]]:
        """(va, PTE) of every valid leaf PTE of ``pmap``, in VA order (what ``walk_range``
        over the whole space visits, without building translations): full audits, which
        share one scan per pmap (``audit_memo``)."""
        memo = self.audit_memo
        if memo is None:
            return self._scan_leaves(pmap)
        live = memo.setdefault("alpha-live", {})
        got = live.get(pmap)
        if got is None:
            got = live[pmap] = self._scan_leaves(pmap)
        return got

    def _scan_leaves(self, pmap: int) -> list[tuple[int, int]]:
        pm = self.pmaps.get(pmap)
        if pm is None:
            return []
        out = []
        for _frame, tbl, lo, hi, base in self._l3_ranges(pm, 0, _VA_END):
            for i in compress(range(lo, hi), tbl[lo:hi]):
                pte = tbl[i]
                if pte & PG_V:
                    out.append((base + (i << PAGE_SHIFT), pte))
        return out

    def state_snapshot(self) -> object:
        """Everything: pmaps and their counters, every PT page's PTEs, reference counts and
        usage of special pages, pv lists (in order) and page attributes."""
        return (
            tuple(self.pmaps[p].key() for p in sorted(self.pmaps)),
            tuple((f, tuple(self.ptmem[f])) for f in sorted(self.ptmem)),
            tuple((f, n) for f, n in enumerate(self.pvh_refcnt) if n),
            bytes(self.pvh_usage),
            bytes(self.pvh_attrs),
            tuple((pfn, tuple(self.pv_entries(pfn))) for pfn in sorted(self.pvh_list) if self.pvh_list[pfn]),
        )

    # == reading the trees (invariants, tests) ==================================================

    def tables(self, pmap: int) -> Iterator[tuple[int, int, int, int]]:
        """Every table of ``pmap``'s tree: (level 1..3, frame, VA of its first entry,
        index of the referencing entry in the parent or -1), parents first."""
        pm = self.pmaps.get(pmap)
        if pm is None or pm.pm_lev1map is None:
            return
        ptmem = self.ptmem
        yield 1, pm.pm_lev1map, 0, -1
        l1tbl = ptmem.get(pm.pm_lev1map, ())
        # Only the nonzero entries are visited (itertools.compress, at C speed).
        for i1 in compress(range(len(l1tbl)), l1tbl):
            l1pte = l1tbl[i1]
            if not l1pte & PG_V:
                continue
            l2frame = l1pte >> PG_SHIFT
            l2base = i1 << self._s1
            yield 2, l2frame, l2base, i1
            l2tbl = ptmem.get(l2frame, ())
            for i2 in compress(range(len(l2tbl)), l2tbl):
                l2pte = l2tbl[i2]
                if l2pte & PG_V:
                    yield 3, l2pte >> PG_SHIFT, l2base + (i2 << self._s2), i2


# == invariants ===================================================================================

BACKEND_NAMES = ("alpha-ref", "alpha-ref-4m")
_LEVEL_TAG = {1: Tag.L1, 2: Tag.PT, 3: Tag.PT}
_LEVEL_USAGE = {1: PGU_L1PT, 2: PGU_L2PT, 3: PGU_L3PT}


def _path(b: AlphaPmap, pmap: int, va: int) -> list[tuple[int, int]]:
    """(level, frame) of the tables on the walk of ``va`` that exist (tolerant of damage)."""
    pm = b.pmaps.get(pmap)
    if pm is None or pm.pm_lev1map is None:
        return []
    path = [(1, pm.pm_lev1map)]
    tbl = b.ptmem.get(pm.pm_lev1map)
    if tbl is None:
        return path
    pte = tbl[va >> b._s1]
    if not pte & PG_V:
        return path
    path.append((2, pte >> PG_SHIFT))
    tbl = b.ptmem.get(pte >> PG_SHIFT)
    if tbl is None:
        return path
    pte = tbl[(va >> b._s2) & b._m2]
    if pte & PG_V:
        path.append((3, pte >> PG_SHIFT))
    return path


def _leaf(b: AlphaPmap, pmap: int, va: int) -> tuple[int | None, int]:
    """(L3 frame or None, PTE) for ``va`` (tolerant of damage)."""
    path = _path(b, pmap, va)
    if len(path) < 3:
        return None, PG_NV
    tbl = b.ptmem.get(path[2][1])
    if tbl is None:
        return path[2][1], PG_NV
    return path[2][1], tbl[(va >> PAGE_SHIFT) & b._m3]


def _touched_paths(b: AlphaPmap, touched: Touched) -> dict[tuple[int, int], tuple[int, int]]:
    """(pmap, frame) -> (level, a va) for every table on the paths of the touched vas and
    the L1 of every touched pmap."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for pmap in touched.pmaps:
        pm = b.pmaps.get(pmap)
        if pm is not None and pm.pm_lev1map is not None:
            seen.setdefault((pmap, pm.pm_lev1map), (1, 0))
    for pmap, va in touched.vas:
        for level, frame in _path(b, pmap, va):
            seen.setdefault((pmap, frame), (level, va))
    return seen


def _all_tables(b: AlphaPmap) -> dict[tuple[int, int], tuple[int, int]]:
    """(pmap, frame) -> (level, VA of its first entry) of every table (full audits: one
    walk of the trees per audit, ``audit_memo``; callers only read it)."""
    memo = b.audit_memo
    if memo is None:
        return _scan_tables(b)
    got = memo.get("alpha-tables")
    if got is None:
        got = memo["alpha-tables"] = _scan_tables(b)
    return got


def _scan_tables(b: AlphaPmap) -> dict[tuple[int, int], tuple[int, int]]:
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for pmap in b.pmaps:
        for level, frame, base, _ in b.tables(pmap):
            out[(pmap, frame)] = (level, base)
    return out


def _where(pmap: int, level: int, frame: int, va: int) -> str:
    return f"pmap {pmap}: L{level} table frame {frame:#x} (on the walk of va {va:#010x})"


def check_refcounts(b: Backend, touched: Touched | None) -> Iterator[str]:
    """Each table page's pvh_refcnt equals its live entries."""
    if not isinstance(b, AlphaPmap):
        return
    tables = _all_tables(b) if touched is None else _touched_paths(b, touched)
    for (pmap, frame), (level, va) in tables.items():
        tbl = b.ptmem.get(frame)
        if tbl is None:
            continue  # reported by alpha-no-freed-tables
        if touched is None:
            # Nonzero entries counted at C speed; only those are looked at.
            live = sum(1 for e in compress(tbl, tbl) if e & PG_V)
            junk = len(tbl) - tbl.count(PG_NV) - live
            if junk:
                yield f"{_where(pmap, level, frame, va)} holds {junk} nonzero invalid entries"
        else:
            live = len(tbl) - tbl.count(PG_NV)  # invalid entries are PG_NV
        if b.pvh_refcnt[frame] != live:
            yield (
                f"{_where(pmap, level, frame, va)}: reference count {b.pvh_refcnt[frame]} "
                f"but {live} live entries"
            )
    if touched is None:
        live_frames = {frame for (_p, frame) in tables}
        refcnt = b.pvh_refcnt
        counted = sum(1 for frame in live_frames if 0 <= frame < len(refcnt) and refcnt[frame])
        if len(refcnt) - refcnt.count(0) == counted:
            return  # every nonzero count is a table's (counted at C speed)
        for frame, n in enumerate(refcnt):
            if n and frame not in live_frames:
                yield f"frame {frame:#x} is in no page table but has reference count {n}"


def check_no_freed_tables(b: Backend, touched: Touched | None) -> Iterator[str]:
    """No table page referenced from a tree is free (or foreign) in the pool."""
    if not isinstance(b, AlphaPmap):
        return
    tables = _all_tables(b) if touched is None else _touched_paths(b, touched)
    pool = b.pool
    ptmem, usage = b.ptmem, b.pvh_usage
    for (pmap, frame), (level, va) in tables.items():
        if not 0 <= frame < pool.phys_pages:
            yield f"{_where(pmap, level, frame, va)}: frame outside the pool"
            continue
        tag = pool.tag_of(frame)
        if tag != _LEVEL_TAG[level] or pool.owner_of(frame) != pmap:
            where = _where(pmap, level, frame, va)
            if tag == Tag.FREE:
                yield f"{where} is referenced but free in the pool"
            elif tag != _LEVEL_TAG[level]:
                yield f"{where} is tagged {tag} in the pool"
            else:
                yield f"{where} belongs to pmap {pool.owner_of(frame)} in the pool"
        if frame not in ptmem:
            yield f"{_where(pmap, level, frame, va)} has no page-table contents (freed)"
        if usage[frame] != _LEVEL_USAGE[level]:
            yield (
                f"{_where(pmap, level, frame, va)} has usage {PGU_STRINGS[usage[frame]]}, "
                f"not {PGU_STRINGS[_LEVEL_USAGE[level]]}"
            )
    if touched is None:
        for frame in b.ptmem:
            if pool.tag_of(frame) == Tag.FREE:
                yield f"page-table frame {frame:#x} is free in the pool"


# A touched page with at most this many mappings is checked whole after every op (a
# bounded cost); of a bigger one only the touched places, and its other mappings when the
# op changed them all or its attributes lost a bit (see check_pv, check_refmod).
WALK_WHOLE = 32


def _check_pv_entry(b: AlphaPmap, pfn: int, pmap: int, va: int, l3frame: int) -> Iterator[str]:
    """One pv entry of page ``pfn`` against the PTE it names."""
    frame, pte = _leaf(b, pmap, va)
    if not pte & PG_V:
        yield f"pa {pfn << PAGE_SHIFT:#010x}: pv entry for pmap {pmap} va {va:#010x} has no mapping"
    elif pte >> PG_SHIFT != pfn:
        yield (
            f"pa {pfn << PAGE_SHIFT:#010x}: pv entry for pmap {pmap} va {va:#010x} but the PTE "
            f"maps pa {(pte >> PG_SHIFT) << PAGE_SHIFT:#010x}"
        )
    elif not pte & PG_PVLIST:
        yield f"pa {pfn << PAGE_SHIFT:#010x}: pv entry for pmap {pmap} va {va:#010x} whose PTE lacks PG_PVLIST"
    if frame is not None and frame != l3frame:
        yield (
            f"pa {pfn << PAGE_SHIFT:#010x}: pv entry for pmap {pmap} va {va:#010x} points at L3 "
            f"frame {l3frame:#x}, the PTE is in {frame:#x}"
        )


def _pv_page_ok(b: AlphaPmap, pfn: int) -> bool:
    """``_check_pv_of_page`` finds nothing: every entry names a valid managed PTE of the
    page in its L3 frame (the common case, walked without building a message)."""
    pmaps, ptmem = b.pmaps, b.ptmem
    s1, s2, m2, m3 = b._s1, b._s2, b._m2, b._m3
    want = (pfn << PG_SHIFT) | PG_V | PG_PVLIST
    for (pmap, va), l3frame in b.pvh_list.get(pfn, {}).items():
        pm = pmaps.get(pmap)
        l1 = ptmem.get(pm.pm_lev1map) if pm is not None else None  # (None: no L1)
        if l1 is None:
            return False
        pte = l1[va >> s1]
        l2 = ptmem.get(pte >> PG_SHIFT) if pte & PG_V else None
        if l2 is None or l2[(va >> s2) & m2] >> PG_SHIFT != l3frame or not l2[(va >> s2) & m2] & PG_V:
            return False
        l3 = ptmem.get(l3frame)
        if l3 is None or l3[(va >> PAGE_SHIFT) & m3] & _PV_BITS != want:
            return False
    return True


_PV_BITS = ~((1 << PG_SHIFT) - 1) | PG_V | PG_PVLIST  # a PTE's PFN, PG_V and PG_PVLIST


def _check_pv_of_page(b: AlphaPmap, pfn: int) -> Iterator[str]:
    """Every pv entry of page ``pfn``, head first.  (A page cannot hold two entries for
    one (pmap, va): pmap_pv_enter panics first.)"""
    if _pv_page_ok(b, pfn):
        return
    for pmap, va, l3frame in b.pv_entries(pfn):
        yield from _check_pv_entry(b, pfn, pmap, va, l3frame)


def _check_pv_of_mapping(b: AlphaPmap, pmap: int, va: int, pte: int) -> Iterator[str]:
    if not pte & PG_V:
        return
    pfn = pte >> PG_SHIFT
    pvl = b.pvh_list.get(pfn)
    n = 1 if pvl is not None and (pmap, va) in pvl else 0
    if pte & PG_PVLIST:
        if n != 1:
            yield f"pmap {pmap} va {va:#010x}: managed mapping of pa {pfn << PAGE_SHIFT:#010x} has {n} pv entries"
    else:
        if pmap != KERNEL_PMAP:
            yield f"pmap {pmap} va {va:#010x}: user mapping without PG_PVLIST"
        if n:
            yield f"pmap {pmap} va {va:#010x}: unmanaged (kenter) mapping has {n} pv entries"


def check_pv(b: Backend, touched: Touched | None) -> Iterator[str]:
    """pv entries and managed mappings match one to one.

    Per op: each touched mapping has its one pv entry, which names its L3 frame (or
    none, unmanaged); every entry
    of a touched page is checked against its PTE when the op changed the page whole
    (``Touched.whole``) or the page has at most ``WALK_WHOLE`` entries; of a bigger page
    only the touched places' entries (one a remove left behind, an enter's on the page
    it replaced), in O(1) each.  So an op on one mapping of a page with many costs the
    same as on a page with one; what it did to the page's *other* entries or their PTEs
    is found by the next op on them, on the whole page, or the next audit."""
    if not isinstance(b, AlphaPmap):
        return
    pvh_list = b.pvh_list
    if touched is not None:
        vas, pas = touched.vas, touched.pas
        for pmap, va in vas:
            frame, pte = _leaf(b, pmap, va)
            yield from _check_pv_of_mapping(b, pmap, va, pte)
            if pte & PG_PVLIST and (pte >> PG_SHIFT) << PAGE_SHIFT not in pas:  # (a page not walked below)
                l3frame = pvh_list.get(pte >> PG_SHIFT, {}).get((pmap, va))
                if l3frame is not None and l3frame != frame:
                    yield from _check_pv_entry(b, pte >> PG_SHIFT, pmap, va, l3frame)
        whole = touched.whole
        for pa in pas:
            pfn = pa >> PAGE_SHIFT
            pvl = pvh_list.get(pfn)
            if not pvl:
                continue
            if pa in whole or len(pvl) <= WALK_WHOLE or len(pvl) <= len(vas):
                yield from _check_pv_of_page(b, pfn)
                continue
            for key in vas:
                l3frame = pvl.get(key)
                if l3frame is not None:
                    yield from _check_pv_entry(b, pfn, key[0], key[1], l3frame)
        return
    for pfn in list(pvh_list):
        yield from _check_pv_of_page(b, pfn)
    # Each mapping judged in O(1) against the pv table; the message built only where wrong.
    for pmap in b.pmaps:
        for va, pte in b.live_leaves(pmap):
            pvl = pvh_list.get(pte >> PG_SHIFT)
            n = 1 if pvl is not None and (pmap, va) in pvl else 0
            if n != 1 if pte & PG_PVLIST else (n or pmap != KERNEL_PMAP):
                yield from _check_pv_of_mapping(b, pmap, va, pte)
    for pmap in {p for pvl in pvh_list.values() for p, _v in pvl}:
        if pmap not in b.pmaps:
            yield f"pv entries name pmap {pmap}, which does not exist"


def check_stats(b: Backend, touched: Touched | None) -> Iterator[str]:
    """resident_count / wired_count (and pm_nlev2 / pm_nlev3) match the tables."""
    if not isinstance(b, AlphaPmap):
        return
    if touched is not None:
        pmaps = _touched_pmaps(touched)
        for pmap in pmaps:
            pm = b.pmaps.get(pmap)
            if pm is None:
                continue
            if not 0 <= pm.wired_count <= pm.resident_count:
                yield f"pmap {pmap}: wired count {pm.wired_count}, resident count {pm.resident_count}"
            if pmap != KERNEL_PMAP:
                if (pm.resident_count == 0) != (pm.pm_lev1map is None):
                    yield (
                        f"pmap {pmap}: resident count {pm.resident_count} but "
                        f"{'no' if pm.pm_lev1map is None else 'an'} L1 table"
                    )
                if not pm.pm_nlev3 <= pm.resident_count <= pm.pm_nlev3 * b.nl3:
                    yield (
                        f"pmap {pmap}: resident count {pm.resident_count} impossible with "
                        f"{pm.pm_nlev3} L3 tables"
                    )
        return
    for pmap, pm in b.pmaps.items():
        resident = wired = nlev2 = nlev3 = 0
        for level, frame, _base, _i in b.tables(pmap):
            if level == 2:
                nlev2 += 1
            elif level == 3:
                nlev3 += 1
                tbl = b.ptmem.get(frame, ())
                for pte in compress(tbl, tbl):  # nonzero PTEs only
                    if pte & PG_V:
                        resident += 1
                        if pte & PG_WIRED:
                            wired += 1
        if (pm.resident_count, pm.wired_count) != (resident, wired):
            yield (
                f"pmap {pmap}: resident/wired counts {pm.resident_count}/{pm.wired_count} but the "
                f"tables hold {resident}/{wired}"
            )
        if (pm.pm_nlev2, pm.pm_nlev3) != (nlev2, nlev3):
            yield f"pmap {pmap}: pm_nlev2/pm_nlev3 {pm.pm_nlev2}/{pm.pm_nlev3} but {nlev2}/{nlev3} tables"


def _touched_pmaps(touched: Touched) -> set[int]:
    """The pmaps an op named or touched a VA of."""
    return set(touched.pmaps) | {p for p, _ in touched.vas}


def check_frames(b: Backend, touched: Touched | None) -> Iterator[str]:
    """Every PT/L1 frame a pmap owns in the pool is in its tree, and the other way round."""
    if not isinstance(b, AlphaPmap):
        return
    pool = b.pool
    if touched is not None:
        pmaps = _touched_pmaps(touched)
        for pmap in pmaps:
            pm = b.pmaps.get(pmap)
            pt, l1 = pool.held(pmap, Tag.PT), pool.held(pmap, Tag.L1)
            if pm is None:
                if pt or l1:
                    yield f"pmap {pmap} is gone but holds {pt} PT and {l1} L1 frames"
                continue
            if pt != pm.pm_nlev2 + pm.pm_nlev3:
                yield f"pmap {pmap} holds {pt} PT frames for {pm.pm_nlev2} L2 + {pm.pm_nlev3} L3 tables"
            if l1 != (pm.pm_lev1map is not None):
                yield f"pmap {pmap} holds {l1} L1 frames with {'no' if pm.pm_lev1map is None else 'an'} L1 table"
        return
    yield from pool_conservation(b)
    in_trees: dict[int, tuple[int, int]] = {}
    for pmap in b.pmaps:
        for level, frame, _base, _i in b.tables(pmap):
            if frame in in_trees:
                yield f"frame {frame:#x} is a table of pmap {in_trees[frame][0]} and of pmap {pmap}"
            in_trees[frame] = (pmap, level)
    for tag in (Tag.PT, Tag.L1):
        for frame in pool.frames_with(tag):
            owner = pool.owner_of(frame)
            if frame not in in_trees:
                yield f"{tag} frame {frame:#x} of pmap {owner} is in no table of it (leaked)"
            elif in_trees[frame][0] != owner:
                yield f"{tag} frame {frame:#x} of pmap {owner} is a table of pmap {in_trees[frame][0]}"
    for frame, (pmap, level) in in_trees.items():
        if pool.tag_of(frame) != _LEVEL_TAG[level]:
            yield f"L{level} table frame {frame:#x} of pmap {pmap} is tagged {pool.tag_of(frame)}"
    for frame in b.ptmem:
        if frame not in in_trees:
            yield f"page-table contents kept for frame {frame:#x}, which is in no tree"


def check_empty_pmap(b: Backend, touched: Touched | None) -> Iterator[str]:
    """An empty user pmap holds no PT and no L1 frames."""
    if not isinstance(b, AlphaPmap):
        return
    pool = b.pool
    if touched is not None:
        pmaps = _touched_pmaps(touched)
        for pmap in pmaps:
            pm = b.pmaps.get(pmap)
            if pm is None or pmap == KERNEL_PMAP:
                continue
            l1 = b.ptmem.get(pm.pm_lev1map) if pm.pm_lev1map is not None else None
            empty = pm.resident_count == 0 or not l1 or not any(e & PG_V for e in l1)
            if empty and (pool.held(pmap, Tag.PT) or pool.held(pmap, Tag.L1)):
                yield (
                    f"empty user pmap {pmap} holds {pool.held(pmap, Tag.PT)} PT and "
                    f"{pool.held(pmap, Tag.L1)} L1 frames"
                )
        return
    for pmap in b.pmaps:
        if pmap == KERNEL_PMAP:
            continue
        if next(iter(b.walk_range(pmap, 0, 1 << 32)), None) is None:
            if pool.held(pmap, Tag.PT) or pool.held(pmap, Tag.L1):
                yield (
                    f"empty user pmap {pmap} holds {pool.held(pmap, Tag.PT)} PT and "
                    f"{pool.held(pmap, Tag.L1)} L1 frames"
                )


def _check_refmod_pte(b: AlphaPmap, pmap: int, va: int, pte: int) -> Iterator[str]:
    if not pte & PG_V:
        return
    if not pte & PG_PVLIST:
        if pte & PG_FAULTON:
            yield f"pmap {pmap} va {va:#010x}: unmanaged mapping with fault-on bits"
        return
    pfn = pte >> PG_SHIFT
    attrs = b.pvh_attrs[pfn]
    if (pte & (PG_FOR | PG_FOE)) != (PG_FOR | PG_FOE) and not attrs & PGA_REFERENCED:
        yield f"pmap {pmap} va {va:#010x}: readable without fault but pa {pfn << PAGE_SHIFT:#010x} is not REF"
    if not pte & PG_FOW and not attrs & PGA_MODIFIED:
        yield f"pmap {pmap} va {va:#010x}: writable without fault but pa {pfn << PAGE_SHIFT:#010x} is not MOD"


def check_refmod(b: Backend, touched: Touched | None) -> Iterator[str]:
    """REF/MOD emulation: a managed PTE without fault-on-read/execute means REF, without
    fault-on-write means MOD; unmanaged PTEs carry no fault-on bits.

    Per op: each touched mapping, and every mapping of a touched page that the op
    changed whole, that has at most ``WALK_WHOLE`` mappings, or whose attributes lost a
    bit since the page was last checked (the way an op on one mapping makes the page's
    other mappings wrong without touching their PTEs; a page both REF and MOD cannot
    make a managed PTE wrong).  Otherwise a page with many mappings costs O(1)."""
    if not isinstance(b, AlphaPmap):
        return
    if touched is not None:
        attrs, pvh_list = b.pvh_attrs, b.pvh_list
        for pmap, va in touched.vas:
            pte = _leaf(b, pmap, va)[1]
            if not _refmod_ok(pte, attrs):
                yield from _check_refmod_pte(b, pmap, va, pte)
        whole = touched.whole
        seen = check_memo(b, "alpha-attrs-checked", lambda: bytearray(b"\xff") * len(attrs))
        for pa in touched.pas:
            pfn = pa >> PAGE_SHIFT
            a = attrs[pfn]
            if pa in whole or (seen[pfn] & ~a and a & _REFMOD != _REFMOD) or len(pvh_list.get(pfn, ())) <= WALK_WHOLE:
                for pmap, va, pte in _page_leaves(b, pfn):
                    if not _refmod_ok(pte, attrs):
                        yield from _check_refmod_pte(b, pmap, va, pte)
            seen[pfn] = a
        return
    attrs = b.pvh_attrs
    for pmap in b.pmaps:
        for va, pte in b.live_leaves(pmap):
            if not _refmod_ok(pte, attrs):
                yield from _check_refmod_pte(b, pmap, va, pte)


def _page_leaves(b: AlphaPmap, pfn: int) -> list[tuple[int, int, int]]:
    """(pmap, va, the PTE a walk of va finds, PG_NV if none) for each pv entry of page
    ``pfn``, head first: ``_leaf`` for a whole page, the walks inline."""
    pmaps, ptmem = b.pmaps, b.ptmem
    s1, s2, m2, m3 = b._s1, b._s2, b._m2, b._m3
    out = []
    for pmap, va, _f in b.pv_entries(pfn):
        pm = pmaps.get(pmap)
        tbl = ptmem.get(pm.pm_lev1map) if pm is not None else None
        pte = tbl[va >> s1] if tbl is not None else PG_NV
        tbl = ptmem.get(pte >> PG_SHIFT) if pte & PG_V else None
        pte = tbl[(va >> s2) & m2] if tbl is not None else PG_NV
        tbl = ptmem.get(pte >> PG_SHIFT) if pte & PG_V else None
        out.append((pmap, va, tbl[(va >> PAGE_SHIFT) & m3] if tbl is not None else PG_NV))
    return out


def _refmod_ok(pte: int, attrs: bytearray) -> bool:
    """``_check_refmod_pte`` finds nothing in ``pte``: its common case, no message built."""
    if pte & PG_PVLIST:
        a = attrs[pte >> PG_SHIFT]
        return bool(((pte & (PG_FOR | PG_FOE)) == (PG_FOR | PG_FOE) or a & PGA_REFERENCED)
                    and (pte & PG_FOW or a & PGA_MODIFIED))
    return not pte & PG_V or not pte & PG_FAULTON


INVARIANTS = (
    Invariant(
        "alpha-table-refcounts",
        check_refcounts,
        backends=BACKEND_NAMES,
        description="every L1/L2/L3 page's reference count equals its live entries",
    ),
    Invariant(
        "alpha-no-freed-tables",
        check_no_freed_tables,
        backends=BACKEND_NAMES,
        description="no table page in use is free (or someone else's) in the pool",
    ),
    Invariant(
        "alpha-pv-mappings",
        check_pv,
        backends=BACKEND_NAMES,
        description="pv entries and managed mappings match one to one",
    ),
    Invariant(
        "alpha-stats",
        check_stats,
        backends=BACKEND_NAMES,
        description="resident and wired counts (and pm_nlev2/3) match the tables",
    ),
    Invariant(
        "alpha-frames-conserved",
        check_frames,
        backends=BACKEND_NAMES,
        description="the PT/L1 frames a pmap owns in the pool are exactly its tables",
    ),
    Invariant(
        "alpha-empty-pmap",
        check_empty_pmap,
        backends=BACKEND_NAMES,
        description="an empty user pmap holds no PT and no L1 frames",
    ),
    Invariant(
        "alpha-refmod-emulation",
        check_refmod,
        backends=BACKEND_NAMES,
        description="PTEs without fault-on bits only for REF (read) / MOD (write) pages",
    ),
)


# == registration =================================================================================

ALPHA_4M = BackendSpec(
    name="alpha-ref-4m",
    factory=functools.partial(
        AlphaPmap, l1_entries=1, l2_entries=1024, l3_entries=1024, pte_size=4, name="alpha-ref-4m"
    ),
    geometry=alpha_geometry(1, 1024, 1024),
    description="alpha-ref with 1 x 1024 x 1024 entries (4-byte PTEs): an L3 page maps 4 MiB like arm32",
    default=False,  # runs only when named
)


@hookimpl
def difftest_register_backends(register) -> None:
    register(AlphaPmap)
    # A parametrised variant: a BackendSpec whose factory is a partial of the class.
    register(ALPHA_4M)


@hookimpl
def difftest_register_invariants(register) -> None:
    for invariant in INVARIANTS:
        register(invariant)
