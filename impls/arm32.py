"""
/*
 * arm32-leaky and arm32-refcount: NetBSD/arm32 pmap models (PR port-arm32/5666).
 *
 * Revision modelled: sys/arch/arm32/arm32/pmap.c v1.57 (1999/03/29), i.e. the v1.40
 * (1999/01/26, the 1998 state the PR describes) pmap plus mycroft's REF/MOD emulation.
 * The shared page-table core, its REF/MOD emulation and its normalisations are
 * described in impls/arm32_core.py; this module adds the two reclamation policies,
 * their invariants and the plugin hooks.
 *
 * Geometry (both): L1 of 4096 slots x 1 MiB, 16 KiB = 4 frames (tag l1), made at
 * pmap_create (kernel pmap: at bootstrap); one 4 KiB PT frame (tag pt) holds four 1 KiB
 * L2 tables and maps an aligned 4 MiB region through 4 consecutive L1 slots
 * (pmap_map_in_l1).  Declared as L1 4096x1MiB (4 frames, at create) > PT 1024x4KiB.
 *
 *	arm32-leaky	v1.57 as it was: pmap_pte_addref/delref are empty, so a PT
 *			page, once allocated, stays until pmap_release frees every
 *			page listed in pm_vptpt at destroy; pmap_collect is empty.
 *	arm32-refcount	the PR fixed, with the same geometry (so the two differ only
 *			in reclamation): each PT frame counts its nonzero PTEs (like
 *			Wasabi's l2b_occupancy: L2_INVAL PTEs count, they are
 *			nonzero); when remove, kremove, page_protect(none),
 *			protect-without-read or collect brings the count to zero,
 *			the 4 L1 slots are cleared and the frame freed.  pmap_collect
 *			removes every non-wired mapping of a user pmap (the alpha
 *			v1.154 rule; the kernel pmap: nothing).  The kernel pmap's PT
 *			frames are counted but never freed.
 *
 * pmap_page_protect(pa, prot without r or w) is pmap_remove_all, which removes the
 * page's wired mappings too, as the 1998 code does (and the Wasabi pmap_page_remove
 * after it).  The original never cared because the VM layer never pages out, and so
 * never revokes, a wired page; the contract leaves it open and the harness accepts both.
 * Unlike v1.57 (whose switch sends READ|WRITE and EXECUTE alone to pmap_remove_all), any
 * prot with w does nothing and any prot with r (without w) only write-protects, as
 * docs/SEMANTICS.md fixes.
 *
 * Invariants (registered below; each checks only what an op touched, or everything in
 * a full audit; pv-match and refmod-emulation check all of a touched page's mappings
 * only where the op changed the page whole, the page has at most WALK_WHOLE mappings,
 * or (refmod) its attributes lost a bit, so an op on one mapping of a page shared by
 * many costs O(1)):
 *	l1-slots		every L1 region is empty or its 4 slots are (frame, 0..3)
 *				of one frame, listed in pm_vptpt, tagged pt, owned by the pmap
 *	pt-not-freed		no frame the tables point at or hold entries in is free
 *	pt-count		(refcount) each PT frame's count equals its nonzero PTEs
 *	no-empty-pt		(refcount) no user PT frame without a live PTE
 *	empty-pmap-no-pt	(refcount) a user pmap with no mapping holds no PT frame
 *	pv-match		pv entries and managed PTEs match one to one, with the
 *				same wired / writable flags
 *	counts			resident and wired counters match the tables (full audit;
 *				incrementally only 0 <= wired <= resident)
 *	frames-conserved	the pool's PT/L1 frames per pmap are exactly the tables'
 *	refmod-emulation	no PTE lets the MMU write to a page not marked modified or
 *				beyond the logical prot, nor read a page not marked
 *				referenced; kenter'd PTEs are valid as their prot says
 */
"""

from __future__ import annotations

from itertools import compress
from typing import Iterator

from difftest import hookimpl
from difftest.backend import Invariant, Touched, check_memo, pool_conservation
from difftest.machine import KERNEL_PMAP, USER_MAX, USER_MIN, Tag
from impls.arm32_core import (
    L1_ENTRIES,
    L1_FRAMES,
    L2_MASK,
    L2_SPAGE,
    NPTEPG,
    PDSHIFT,
    PG_FRAME,
    PGSHIFT,
    PT_AP_W,
    PT_H,
    PT_M,
    PT_W,
    PT_Wr,
    PTE_INDEX_MASK,
    PTE_SW_MANAGED,
    PTE_SW_SHIFT,
    PTE_SW_W,
    PTE_SW_WIRED,
    PTSHIFT,
    Arm32Core,
    Pmap,
    pv_key,
)

_MH = PT_M | PT_H
# A touched page with at most this many mappings is checked whole after every op (a
# bounded cost); of a bigger one only the touched places, and its other mappings when the
# op changed them all or its attributes lost a bit (see check_pv, check_refmod).
WALK_WHOLE = 32

LEAKY = "arm32-leaky"
REFCOUNT = "arm32-refcount"
BOTH = (LEAKY, REFCOUNT)


class Arm32Leaky(Arm32Core):
    """pmap.c v1.57 as it was: PT pages freed only at destroy, pmap_collect empty."""

    name = LEAKY
    description = "NetBSD/arm32 pmap v1.57 (1999): PT pages freed only at destroy (PR 5666)"
    # A capability (difftest check-backend): the leak is what this backend models, so the
    # conformance checks it fails on that count are expected failures.
    frees_pt_pages = False


class Arm32Refcount(Arm32Core):
    """The same pmap with PR 5666 fixed: PT pages counted and freed when empty."""

    name = REFCOUNT
    description = "arm32 v1.57 with PR 5666 fixed: PT pages counted, freed when empty; collect"

    def __init__(self, pool) -> None:
        self._occ: dict[int, int] = {}  # PT frame -> nonzero PTEs (l2b_occupancy)
        super().__init__(pool)

    def pmap_alloc_ptp(self, pm: Pmap, va: int) -> int:
        frame = super().pmap_alloc_ptp(pm, va)
        self._occ[frame] = 0
        return frame

    def pmap_free_ptp(self, pm: Pmap, region: int) -> None:
        frame = pm.vptpt[region]
        super().pmap_free_ptp(pm, region)
        del self._occ[frame]

    def pmap_pte_addref(self, frame: int) -> None:
        self._occ[frame] += 1

    def pmap_pte_delref(self, pm: Pmap, region: int, frame: int, count: int) -> None:
        left = self._occ[frame] - count
        self._occ[frame] = left
        if left == 0 and pm.id != KERNEL_PMAP:
            self.pmap_free_ptp(pm, region)

    def pmap_collect(self, pmap: int) -> None:
        if pmap == KERNEL_PMAP:
            return
        pm = self._pmaps.get(pmap)
        if pm is not None:
            self._remove_range(pm, USER_MIN, USER_MAX, managed=True, keep_wired=True)

    def _extra_snapshot(self) -> object:
        return tuple(sorted(self._occ.items()))


# -- invariant helpers ----------------------------------------------------------------------


def _slot_frame(b: Arm32Core, pmap: int, va: int) -> int | None:
    pm = b._pmaps.get(pmap)
    if pm is None:
        return None
    slot = pm.l1[va >> PDSHIFT]
    return None if slot is None else slot[0]


def _touched_frames(b: Arm32Core, touched: Touched) -> set[int]:
    frames = set()
    for pmap, va in touched.vas:
        frame = _slot_frame(b, pmap, va)
        if frame is not None:
            frames.add(frame)
    return frames


def _frame_owner(b: Arm32Core) -> dict[int, tuple[int, int]]:
    """PT frame -> (pmap, region), from every pmap's pm_vptpt (full audits)."""
    return {frame: (pm.id, region) for pm in b._pmaps.values() for region, frame in pm.vptpt.items()}


def _all_ptes(b: Arm32Core) -> Iterator[tuple[Pmap, int, int]]:
    """(pmap, va, pte) of every live PTE (full audits)."""
    ptes = b._ptes
    for pm in b._pmaps.values():
        for region, frame in sorted(pm.vptpt.items()):
            if frame not in ptes:
                continue
            base = region << PTSHIFT
            for i, pte in b.live_entries(frame):
                yield pm, base | (i << PGSHIFT), pte


def _pte_at(b: Arm32Core, pmap: int, va: int) -> int:
    frame = _slot_frame(b, pmap, va)
    if frame is None:
        return 0
    pt = b._ptes.get(frame)
    return 0 if pt is None else pt[(va >> PGSHIFT) & PTE_INDEX_MASK]


# -- the checks -------------------------------------------------------------------------------


def check_l1_slots(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    pmaps = b._pmaps
    if touched is None:
        todo = []
        for pm in pmaps.values():
            l1 = pm.l1
            # The regions with a slot in use, and those pm_vptpt lists: just the listed
            # ones when every slot in use lies in them (counted at C speed).
            used = len(l1) - l1.count(None)
            if used == sum(4 - l1[r << 2 : (r << 2) + 4].count(None) for r in pm.vptpt):
                regions = set(pm.vptpt)
            else:
                regions = {i >> 2 for i in compress(range(L1_ENTRIES), l1)}
                regions.update(pm.vptpt)
            todo.extend((pm, region) for region in sorted(regions))
    else:
        todo = []
        for pmap, region in sorted({(pmap, va >> PTSHIFT) for pmap, va in touched.vas}):
            pm = pmaps.get(pmap)
            if pm is not None:
                todo.append((pm, region))
    pool = b.pool
    ptes = b._ptes
    for pm, region in todo:
        i = region << 2
        l1 = pm.l1
        listed = pm.vptpt.get(region)
        if listed is None:
            if l1[i] is None and l1[i + 1] is None and l1[i + 2] is None and l1[i + 3] is None:
                continue  # an empty region: the common case
        elif (
            l1[i] == (listed, 0)
            and l1[i + 1] == (listed, 1)
            and l1[i + 2] == (listed, 2)
            and l1[i + 3] == (listed, 3)
            and pool.tag_of(listed) == Tag.PT
            and pool.owner_of(listed) == pm.id
            and listed in ptes
        ):
            continue  # a well-formed region
        slots = l1[i : i + 4]
        where = f"pmap {pm.id} L1 slots {i:#x}-{i + 3:#x} (va {region << PTSHIFT:#010x})"
        if slots == [None] * 4:
            yield f"{where}: empty, but pm_vptpt lists PT frame {listed:#x} for the region"
            continue
        if None in slots or len({s[0] for s in slots}) != 1 or [s[1] for s in slots] != [0, 1, 2, 3]:
            yield f"{where}: not the four quarters of one PT frame: {slots}"
            continue
        frame = slots[0][0]
        if listed != frame:
            yield f"{where}: point at frame {frame:#x} but pm_vptpt lists {listed!r}"
        if pool.tag_of(frame) != Tag.PT:
            yield f"{where}: point at frame {frame:#x}, which the pool tags {pool.tag_of(frame)}"
        elif pool.owner_of(frame) != pm.id:
            yield f"{where}: point at frame {frame:#x}, owned by pmap {pool.owner_of(frame)} in the pool"
        if frame not in ptes:
            yield f"{where}: point at frame {frame:#x}, which holds no PTE array"


def check_pt_not_freed(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    pool = b.pool
    if touched is None:
        frames = set(b._ptes)
        for pm in b._pmaps.values():
            frames.update(slot[0] for slot in compress(pm.l1, pm.l1))
            for frame in pm.l1_frames:
                if pool.tag_of(frame) == Tag.FREE:
                    yield f"pmap {pm.id}: its L1 frame {frame:#x} is free in the pool"
    else:
        frames = _touched_frames(b, touched)
    for frame in sorted(frames):
        if pool.tag_of(frame) == Tag.FREE:
            pt = b._ptes.get(frame)
            live = NPTEPG - pt.count(0) if pt is not None else 0
            yield f"PT frame {frame:#x} is free in the pool while the tables use it ({live} live PTEs)"


def check_pt_count(b: Arm32Refcount, touched: Touched | None) -> Iterator[str]:
    if touched is None:
        frames = set(b._ptes) | set(b._occ)
    else:
        frames = _touched_frames(b, touched)
    for frame in sorted(frames):
        pt = b._ptes.get(frame)
        count = b._occ.get(frame)
        if pt is None:
            yield f"PT frame {frame:#x} has a count ({count}) but no PTEs"
            continue
        live = NPTEPG - pt.count(0)
        if count != live:
            yield f"PT frame {frame:#x} counts {count} live PTEs but holds {live}"


def check_no_empty_pt(b: Arm32Refcount, touched: Touched | None) -> Iterator[str]:
    if touched is None:
        pairs = [(pm.id, frame) for pm in b._pmaps.values() for frame in pm.vptpt.values()]
    else:
        pairs = []
        for pmap, va in touched.vas:
            frame = _slot_frame(b, pmap, va)
            if frame is not None:
                pairs.append((pmap, frame))
    for pmap, frame in sorted(set(pairs)):
        if pmap == KERNEL_PMAP:
            continue  # kernel PT pages are never freed, by design
        pt = b._ptes.get(frame)
        if pt is not None and pt.count(0) == NPTEPG:
            yield f"pmap {pmap} holds PT frame {frame:#x} with no live PTE"


def check_empty_pmap_no_pt(b: Arm32Refcount, touched: Touched | None) -> Iterator[str]:
    pmaps = b._pmaps.keys() if touched is None else touched.pmaps
    for pmap in sorted(pmaps):
        pm = b._pmaps.get(pmap)
        if pmap == KERNEL_PMAP or pm is None:
            continue
        held = b.pool.held(pmap, Tag.PT)
        if pm.resident == 0 and held:
            yield f"empty pmap {pmap} (resident 0) holds {held} PT frames"


def _check_pv_entry(b: Arm32Core, page: int, key: int, flags: int) -> Iterator[str]:
    pmap, va = key >> 32, key & 0xFFFFFFFF
    where = f"pv entry (pmap {pmap}, va {va:#010x}) of page {page << PGSHIFT:#010x}"
    if pmap not in b._pmaps:
        yield f"{where}: the pmap does not exist"
        return
    pte = _pte_at(b, pmap, va)
    if not pte:
        yield f"{where}: no mapping at va"
    elif not pte & PTE_SW_MANAGED:
        yield f"{where}: the PTE is unmanaged (kenter'd)"
    elif (pte & PG_FRAME) >> PGSHIFT != page:
        yield f"{where}: the PTE maps {pte & PG_FRAME:#010x}"
    else:
        if bool(flags & PT_W) != bool(pte & PTE_SW_WIRED):
            yield f"{where}: PT_W is {bool(flags & PT_W)} but the PTE's wired bit is {bool(pte & PTE_SW_WIRED)}"
        if bool(flags & PT_Wr) != bool(pte & PTE_SW_W):
            yield f"{where}: PT_Wr is {bool(flags & PT_Wr)} but the PTE's logical w is {bool(pte & PTE_SW_W)}"


def _check_managed_pte(b: Arm32Core, pmap: int, va: int, pte: int) -> Iterator[str]:
    if not pte & PTE_SW_MANAGED:
        return
    page = (pte & PG_FRAME) >> PGSHIFT
    pvh = b._pv.get(page)
    if pvh is None or pv_key(pmap, va) not in pvh:
        yield f"managed mapping (pmap {pmap}, va {va:#010x}) -> {pte & PG_FRAME:#010x} has no pv entry"


def _pv_entry_ok(b: Arm32Core, page: int, key: int, flags: int) -> bool:
    """``_check_pv_entry`` finds nothing: its common case, without building a message."""
    pm = b._pmaps.get(key >> 32)
    if pm is None:
        return False
    va = key & 0xFFFFFFFF
    slot = pm.l1[va >> PDSHIFT]
    if slot is None:
        return False
    pt = b._ptes.get(slot[0])
    pte = 0 if pt is None else pt[(va >> PGSHIFT) & PTE_INDEX_MASK]
    return (bool(pte) and bool(pte & PTE_SW_MANAGED) and (pte & PG_FRAME) >> PGSHIFT == page
            and bool(flags & PT_W) == bool(pte & PTE_SW_WIRED) and bool(flags & PT_Wr) == bool(pte & PTE_SW_W))


def check_pv(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    if touched is None:
        # The full form walks every pv entry and every live PTE; the messages are built
        # only where the one-line predicate fails (audits are on the fast path's clock).
        for page, pvh in sorted(b._pv.items()):
            if not pvh:
                yield f"page {page << PGSHIFT:#010x} keeps an empty pv list"
            for key, flags in pvh.items():
                if not _pv_entry_ok(b, page, key, flags):
                    yield from _check_pv_entry(b, page, key, flags)
        pv = b._pv
        for pm, va, pte in _all_ptes(b):
            if pte & PTE_SW_MANAGED:
                pvh = pv.get((pte & PG_FRAME) >> PGSHIFT)
                if pvh is None or pv_key(pm.id, va) not in pvh:
                    yield from _check_managed_pte(b, pm.id, va, pte)
        return
    # Per op: every entry of a touched page the op changed whole (Touched.whole) or with
    # at most WALK_WHOLE entries; of a bigger page only the touched places' entries (one
    # a remove left behind, an enter's on the page it replaced), O(1) each; then each
    # touched managed PTE has its entry, and it matches.  What an op did to a big page's
    # other entries or their PTEs is found by the next op on them, on the whole page, or
    # the audit.
    vas = touched.vas
    whole = touched.whole
    for pa in sorted(touched.pas):
        page = pa >> PGSHIFT
        pvh = b._pv.get(page)
        if not pvh:
            continue
        if pa in whole or len(pvh) <= WALK_WHOLE or len(pvh) <= len(vas):
            for key, flags in list(pvh.items()):
                if not _pv_entry_ok(b, page, key, flags):
                    yield from _check_pv_entry(b, page, key, flags)
            continue
        for pmap, va in vas:
            key = pv_key(pmap, va)
            flags = pvh.get(key)
            if flags is not None and not _pv_entry_ok(b, page, key, flags):
                yield from _check_pv_entry(b, page, key, flags)
    pas = touched.pas
    for pmap, va in vas:
        pte = _pte_at(b, pmap, va)
        if not pte & PTE_SW_MANAGED:
            continue
        page = (pte & PG_FRAME) >> PGSHIFT
        flags = b._pv.get(page, {}).get(pv_key(pmap, va))
        if flags is None:
            yield from _check_managed_pte(b, pmap, va, pte)
        elif page << PGSHIFT not in pas and not _pv_entry_ok(b, page, pv_key(pmap, va), flags):
            yield from _check_pv_entry(b, page, pv_key(pmap, va), flags)  # (on a page not walked above)


def check_counts(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    if touched is not None:
        for pmap in sorted(touched.pmaps):
            pm = b._pmaps.get(pmap)
            if pm is not None and not 0 <= pm.wired <= pm.resident:
                yield f"pmap {pmap}: wired count {pm.wired} outside 0..resident count {pm.resident}"
        return
    resident = {pm.id: 0 for pm in b._pmaps.values()}
    wired = dict(resident)
    ptes = b._ptes
    for pm in b._pmaps.values():
        # Only live PTEs are visited (found at C speed, once per audit: live_entries).
        n = w = 0
        for frame in pm.vptpt.values():
            if frame not in ptes:
                continue
            live = b.live_entries(frame)
            n += len(live)
            w += sum(1 for _i, pte in live if pte & PTE_SW_WIRED)
        resident[pm.id] = n
        wired[pm.id] = w
    for pmap, pm in sorted(b._pmaps.items()):
        if pm.resident != resident[pmap]:
            yield f"pmap {pmap}: resident count {pm.resident} but the tables hold {resident[pmap]} mappings"
        if pm.wired != wired[pmap]:
            yield f"pmap {pmap}: wired count {pm.wired} but the tables hold {wired[pmap]} wired mappings"


def check_frames(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    pool = b.pool
    if touched is not None:
        for pmap in sorted(touched.pmaps):
            pm = b._pmaps.get(pmap)
            pt, l1 = pool.held(pmap, Tag.PT), pool.held(pmap, Tag.L1)
            if pm is None:
                if pt or l1:
                    yield f"destroyed pmap {pmap} still holds {pt} PT and {l1} L1 frames"
                continue
            if pt != len(pm.vptpt):
                yield f"pmap {pmap} holds {pt} PT frames in the pool but its tables list {len(pm.vptpt)}"
            if l1 != L1_FRAMES:
                yield f"pmap {pmap} holds {l1} L1 frames in the pool, not {L1_FRAMES}"
        return
    yield from pool_conservation(b)
    by_owner: dict[tuple[int, Tag], set[int]] = {}
    for tag in (Tag.PT, Tag.L1):
        for frame in pool.frames_with(tag):
            by_owner.setdefault((pool.owner_of(frame), tag), set()).add(frame)
    for (owner, tag), frames in sorted(by_owner.items()):
        if owner not in b._pmaps:
            yield f"{len(frames)} {tag} frames are owned by pmap {owner}, which does not exist"
    for pmap, pm in sorted(b._pmaps.items()):
        tables_pt = set(pm.vptpt.values())
        pool_pt = by_owner.get((pmap, Tag.PT), set())
        for frame in sorted(pool_pt - tables_pt):
            yield f"pmap {pmap} owns PT frame {frame:#x} in the pool, but its tables do not use it"
        for frame in sorted(tables_pt - pool_pt):
            yield f"pmap {pmap}'s tables use PT frame {frame:#x}, which the pool does not give it"
        if set(pm.l1_frames) != by_owner.get((pmap, Tag.L1), set()) or len(pm.l1_frames) != L1_FRAMES:
            yield (
                f"pmap {pmap}'s L1 is frames {sorted(pm.l1_frames)} but the pool gives it "
                f"{sorted(by_owner.get((pmap, Tag.L1), set()))}"
            )
    listed = set(_frame_owner(b))
    for frame in sorted(set(b._ptes) - listed):
        yield f"PT frame {frame:#x} holds PTEs but no pmap lists it"


def _check_refmod_pte(b: Arm32Core, pmap: int, va: int, pte: int) -> Iterator[str]:
    if not pte:
        return
    where = f"pmap {pmap} va {va:#010x}"
    valid = (pte & L2_MASK) == L2_SPAGE
    prot = (pte >> PTE_SW_SHIFT) & 7
    if pte & PT_AP_W and not pte & PTE_SW_W:
        yield f"{where}: the PTE lets the MMU write but the logical prot is {prot:#x}"
    if not pte & PTE_SW_MANAGED:
        if valid != bool(prot) or bool(pte & PT_AP_W) != bool(pte & PTE_SW_W):
            yield f"{where}: kenter'd PTE {pte:#x} does not allow exactly its prot {prot:#x}"
        return
    attrs = b._attrs[(pte & PG_FRAME) >> PGSHIFT]
    if pte & PT_AP_W and not attrs & PT_M:
        yield f"{where}: the PTE is writable but page {pte & PG_FRAME:#010x} is not marked modified"
    if valid and not attrs & PT_H:
        yield f"{where}: the PTE is valid but page {pte & PG_FRAME:#010x} is not marked referenced"


def _refmod_ok(pte: int, attrs: bytearray) -> bool:
    """``_check_refmod_pte`` finds nothing in ``pte``: its common case, no message built."""
    if pte & PT_AP_W and not pte & PTE_SW_W:
        return False
    valid = (pte & L2_MASK) == L2_SPAGE
    if not pte & PTE_SW_MANAGED:
        return valid == bool((pte >> PTE_SW_SHIFT) & 7) and bool(pte & PT_AP_W) == bool(pte & PTE_SW_W)
    a = attrs[(pte & PG_FRAME) >> PGSHIFT]
    return not (pte & PT_AP_W and not a & PT_M) and not (valid and not a & PT_H)


def check_refmod(b: Arm32Core, touched: Touched | None) -> Iterator[str]:
    if touched is None:
        attrs = b._attrs
        for pm, va, pte in _all_ptes(b):
            if _refmod_ok(pte, attrs):
                continue
            yield from _check_refmod_pte(b, pm.id, va, pte)
        return
    seen = set()
    attrs = b._attrs
    for pmap, va in touched.vas:
        seen.add((pmap, va))
        pte = _pte_at(b, pmap, va)
        if not _refmod_ok(pte, attrs):
            yield from _check_refmod_pte(b, pmap, va, pte)
    # A page's other mappings only where the op changed it whole, it has at most
    # WALK_WHOLE of them, or its attributes lost a bit since it was last checked (the way
    # an op on one mapping makes the others wrong without touching their PTEs; with both
    # M and H set none of them can be wrong for the attributes).
    whole = touched.whole
    pmaps, ptes = b._pmaps, b._ptes
    checked = check_memo(b, "arm32-attrs-checked", lambda: bytearray(b"\xff") * len(attrs))
    for pa in sorted(touched.pas):
        page = pa >> PGSHIFT
        a = attrs[page]
        pvh = b._pv.get(page, {})
        if pa in whole or (checked[page] & ~a and a & _MH != _MH) or len(pvh) <= WALK_WHOLE:
            for key in list(pvh):
                pmap, va = key >> 32, key & 0xFFFFFFFF
                if (pmap, va) not in seen:
                    seen.add((pmap, va))
                    pm = pmaps.get(pmap)  # (_pte_at, inline: a page's walk)
                    slot = pm.l1[va >> PDSHIFT] if pm is not None else None
                    pt = ptes.get(slot[0]) if slot is not None else None
                    pte = pt[(va >> PGSHIFT) & PTE_INDEX_MASK] if pt is not None else 0
                    if not _refmod_ok(pte, attrs):
                        yield from _check_refmod_pte(b, pmap, va, pte)
        checked[page] = a


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("l1-slots", check_l1_slots, BOTH,
              "every L1 region is empty or the 4 quarters of one PT frame, listed in pm_vptpt, "
              "tagged pt and owned by the pmap in the pool"),
    Invariant("pt-not-freed", check_pt_not_freed, BOTH,
              "no frame the L1 points at or that holds PTEs (nor an L1 frame) is free in the pool"),
    Invariant("pt-count", check_pt_count, (REFCOUNT,),
              "every PT frame's count equals its nonzero PTEs"),
    Invariant("no-empty-pt", check_no_empty_pt, (REFCOUNT,),
              "no user PT frame is kept without a live PTE"),
    Invariant("empty-pmap-no-pt", check_empty_pmap_no_pt, (REFCOUNT,),
              "a user pmap with resident count 0 holds no PT frame"),
    Invariant("pv-match", check_pv, BOTH,
              "pv entries and managed PTEs match one to one, with the same wired and writable flags"),
    Invariant("counts", check_counts, BOTH,
              "resident and wired counters equal the live and wired PTEs (full audit)"),
    Invariant("frames-conserved", check_frames, BOTH,
              "the pool's PT and L1 frames per pmap are exactly those its tables use"),
    Invariant("refmod-emulation", check_refmod, BOTH,
              "no PTE allows a write to an unmodified page or beyond its prot, or a read of an "
              "unreferenced page; kenter'd PTEs allow exactly their prot"),
)


@hookimpl
def difftest_register_backends(register) -> None:
    register(Arm32Leaky)
    register(Arm32Refcount)


@hookimpl
def difftest_register_invariants(register) -> None:
    for invariant in INVARIANTS:
        register(invariant)
