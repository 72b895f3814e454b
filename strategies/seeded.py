"""Seeded op-stream generators: ``random`` (deep random states) and ``pager`` (MODEL §7).

Both are pure functions of ``(seed, n_ops, phys_pages)``: one ``random.Random(seed)``
drives every choice, the state is kept in lists and insertion-ordered dicts (never
iterated sets), and nothing depends on hashing of strings, the clock or the machine, so
the same arguments give a byte-identical stream file anywhere.  They produce exactly
``n_ops`` ops, each stream VM-legal (``difftest.legality``): compound actions (unmap then
destroy, unwire then revoke) are emitted in order and legality is prefix-closed, so a
stream cut at ``n_ops`` stays legal.

``random`` shapes streams to reach deep states quickly:

* addresses: a few 4 MiB regions and 2 MiB-aligned ones (straddling an arm32 PT frame
  boundary and lining up with alpha's 2 MiB L3 tables), mostly at their edges (pages 0,
  1, 2, around 1, 2 and 3 MiB, the last three) and a small per-stream working set;
* re-entering mapped VAs with new PAs, re-entering with new prot/wiring, one page mapped
  by several pmaps, wiring and unwiring (unwire first, then revoke), ranges that cross
  1/2/4 MiB boundaries, ``collect`` and ``page_protect`` between enters, several pmaps
  created, referenced and destroyed (unmapped first, as the VM does), ``kenter`` and
  ``kremove`` in a kernel window kept apart from managed kernel mappings, ``access``
  (r/w/x) and REF/MOD queries and clears, some ``canfail`` enters;
* swarm testing: every stream enables a random subset of the actions, each with a random
  weight, drawn from the seed (``origin["swarm"]`` records them).

``pager`` models the How-To-Repeat of PR 5666: a small machine, processes (pmaps) doing
build-like work (shared text pages, private heap and stack, mmaps of ever new 4 MiB
regions by long-lived processes, exits), and a pager that, when free data pages run low,
pages out non-wired pages (second chance on REF, ``clear_modify`` as the write-back,
``page_protect(pa, none)``) and swaps processes out (``collect``).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from difftest.legality import VMModel
from difftest.machine import (
    DEFAULT_PHYS_PAGES,
    KERNEL_MIN,
    KERNEL_PMAP,
    PAGE_SIZE,
    USER_MAX,
    USER_MIN,
)
from difftest.ops import (
    PROT_R,
    PROT_W,
    PROT_X,
    Access,
    ClearModify,
    ClearReference,
    Collect,
    Create,
    Destroy,
    Enter,
    Extract,
    IsModified,
    IsReferenced,
    KEnter,
    KRemove,
    Op,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
    Update,
    maker,
)
from difftest.streams import Stream
from strategies.pressure import PressureModels

# Constructors of the ops built most often (every field positional): the same ops, cheaper.
new_enter, new_access, new_remove, new_extract = maker(Enter), maker(Access), maker(Remove), maker(Extract)

GENERATOR_VERSION = 2  # 2: the swarm's pressure dimension, machine.free_frames

MIB = 1 << 20
REGION = 4 * MIB
REGION_PAGES = REGION // PAGE_SIZE  # 1024
R, RW, RX, RWX = PROT_R, PROT_R | PROT_W, PROT_R | PROT_X, PROT_R | PROT_W | PROT_X

# Page offsets within a 4 MiB region: the edges of the region and of its 1 MiB and 2 MiB
# sub-blocks (arm32 L1 slots, alpha L3 tables).
EDGE_PAGES = (0, 1, 2, 255, 256, 257, 511, 512, 513, 767, 768, 769, 1021, 1022, 1023)

# Kernel windows: managed kernel mappings (pmap 0 enter/remove/protect) in one, kenter'd
# ones in the other, so the two kinds never meet (legality rule kenter-managed).
KMANAGED_BASE = KERNEL_MIN + 0x00400000
KMANAGED_SIZE = 8 * MIB
KENTER_BASE = KERNEL_MIN + 0x02000000
KENTER_SIZE = 8 * MIB

# The actions of the random generator, in a fixed order (the swarm draws over this order).
ACTIONS = (
    "enter",
    "remap",
    "reenter",
    "share",
    "wire",
    "unwire",
    "remove",
    "remove_range",
    "protect",
    "extract",
    "access",
    "page_protect",
    "attrs",
    "collect",
    "create",
    "reference",
    "destroy",
    "kenter",
    "kremove",
    "kernel_enter",
    "kernel_remove",
    "update",
)
# Base weights; the swarm multiplies them by a random factor or drops the action.
BASE_WEIGHTS = {
    "enter": 12,
    "remap": 4,
    "reenter": 2,
    "share": 4,
    "wire": 2,
    "unwire": 2,
    "remove": 5,
    "remove_range": 3,
    "protect": 3,
    "extract": 2,
    "access": 6,
    "page_protect": 3,
    "attrs": 4,
    "collect": 1,
    "create": 1,
    "reference": 1,
    "destroy": 1,
    "kenter": 2,
    "kremove": 1,
    "kernel_enter": 1,
    "kernel_remove": 1,
    "update": 1,
}
ALWAYS = ("enter", "remove")  # every stream maps and unmaps
# The swarm's pressure dimension: the share of ``random`` streams driven to the pool's edge
# (strategies/pressure.py), and the weight of their "fill" action.
P_PRESSURE = 0.75
FILL_WEIGHT = 10


class _Model(VMModel):
    """The legality model plus O(1) random picks: per pmap a list of mapped VAs, a list of
    wired mappings, each with a position index (swap-with-last removal)."""

    __slots__ = ("vlist", "vpos", "wlist", "wpos")

    def __init__(self) -> None:
        super().__init__()
        self.vlist: dict[int, list[int]] = {KERNEL_PMAP: []}
        self.vpos: dict[int, dict[int, int]] = {KERNEL_PMAP: {}}
        self.wlist: list[tuple[int, int]] = []
        self.wpos: dict[tuple[int, int], int] = {}

    # (VMModel's methods called directly, not through super(): this is the generators' hot path)

    def apply(self, op: Op) -> None:
        t = type(op)
        if t is Create:
            pmap = self.next_id
            self.vlist[pmap] = []
            self.vpos[pmap] = {}
        VMModel.apply(self, op)
        if t is Destroy and op.pmap not in self.refs:
            self.vlist.pop(op.pmap, None)
            self.vpos.pop(op.pmap, None)

    def put(self, pmap: int, va: int, pa: int, wired: bool) -> None:
        old = self.maps[pmap].get(va)
        VMModel.put(self, pmap, va, pa, wired)
        if old is None:
            pos = self.vpos[pmap]
            lst = self.vlist[pmap]
            pos[va] = len(lst)
            lst.append(va)
        was = old is not None and old[1]
        if wired and not was:
            key = (pmap, va)
            self.wpos[key] = len(self.wlist)
            self.wlist.append(key)
        elif was and not wired:
            self._wdel((pmap, va))

    def delete(self, pmap: int, va: int) -> None:
        old = self.maps[pmap].get(va)
        if old is None:
            return
        VMModel.delete(self, pmap, va)
        pos = self.vpos[pmap]
        lst = self.vlist[pmap]
        i = pos.pop(va)
        last = lst.pop()
        if last != va:
            lst[i] = last
            pos[last] = i
        if old[1]:
            self._wdel((pmap, va))

    def _wdel(self, key: tuple[int, int]) -> None:
        i = self.wpos.pop(key)
        last = self.wlist.pop()
        if last != key:
            self.wlist[i] = last
            self.wpos[last] = i


class _Base:
    """Shared machinery: the rng, the model, the op list and emit()."""

    def __init__(self, seed: int, phys_pages: int) -> None:
        if type(seed) is not int:
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        if phys_pages < 16:
            raise ValueError(f"phys_pages must be at least 16, not {phys_pages}")
        self.seed = seed
        self.phys_pages = phys_pages
        self.rng = random.Random(seed)
        self.rnd = self.rng.random
        self.m = _Model()
        self.ops: list[Op] = []
        self.limit = 0

    def emit(self, op: Op) -> None:
        if len(self.ops) < self.limit:
            self.m.apply(op)
            self.ops.append(op)

    def pick(self, seq: list | tuple) -> Any:
        return seq[int(self.rnd() * len(seq))]

    def full(self) -> bool:
        return len(self.ops) >= self.limit

    def unmap_all(self, pmap: int) -> None:
        """What uvmspace_free does before the last pmap_destroy: remove every map entry's
        range (here: each 4 MiB bucket holding mappings, or the whole user range)."""
        buckets = sorted(self.m.buckets[pmap])
        if len(buckets) > 6 or self.rnd() < 0.2:
            self.emit(Remove(pmap, USER_MIN, USER_MAX))
            return
        for b in buckets:
            lo = max(USER_MIN, b * REGION)
            hi = min(USER_MAX, (b + 1) * REGION)
            self.emit(Remove(pmap, lo, hi))


# -- the "random" generator ------------------------------------------------------------------


def _random_access(rnd: Callable[[], float], prot: int) -> int:
    """An access type within prot: none (40%), a write if allowed, else a read or fetch."""
    r = rnd()
    if r < 0.4:
        return 0
    if r < 0.7 and prot & PROT_W:
        return PROT_W
    if r < 0.85 and prot & PROT_X:
        return PROT_X
    return PROT_R


class RandomGenerator(_Base):
    """The ``random`` generator (see the module docstring).

    ``pressure``: True or False forces the swarm's pressure dimension (the ``pressure``
    generator), None draws it from the seed."""

    def __init__(self, seed: int, phys_pages: int, pressure: bool | None = None) -> None:
        super().__init__(seed, phys_pages)
        rng, rnd = self.rng, self.rnd
        # -- swarm: which actions, with which weights -------------------------------------
        enabled = [a for a in ACTIONS if a in ALWAYS or rnd() < 0.6]
        self.weights = {a: BASE_WEIGHTS[a] * (1, 2, 3, 5, 8)[int(rnd() * 5)] for a in enabled}
        self.table: list[Callable[[], None]] = []
        for name in enabled:
            self.table.extend([getattr(self, "_a_" + name)] * self.weights[name])
        # -- the address space: a few regions, edges and a working set ---------------------
        candidates = [0x00000000, 0x00400000, 0x00600000, 0x01000000, 0x0FE00000, USER_MAX - REGION]
        n_regions = 2 + int(rnd() * 4)
        bases = []
        for _ in range(n_regions):
            if rnd() < 0.6:
                base = candidates[int(rnd() * len(candidates))]
            else:  # anywhere, 2 MiB-aligned half of the time
                base = (0x01000000 + int(rnd() * 0xD0000000)) & ~(REGION - 1)
                if rnd() < 0.5:
                    base += 2 * MIB
            if base not in bases:
                bases.append(base)
        self.bases = bases
        # a hot region: most ops go to the first one or two
        self.base_pick = bases[:2] * 3 + bases
        self.wset = sorted({int(rnd() * REGION_PAGES) for _ in range(8 + int(rnd() * 40))})
        self.max_pmaps = 2 + int(rnd() * 6)
        # -- physical pages: a pool of data frames, a hot subset ---------------------------
        n_data = max(4, min(16 + int(rnd() * 240), phys_pages // 4))
        lo = phys_pages // 2
        self.data = [f * PAGE_SIZE for f in rng.sample(range(lo, phys_pages), min(n_data, phys_pages - lo))]
        self.hot_data = self.data[: max(2, len(self.data) // 8)]
        self.p_wired = (0.03, 0.1, 0.25)[int(rnd() * 3)]
        self.p_canfail = (0.0, 0.05, 0.3)[int(rnd() * 3)]
        self.prots = (R, RW, RW, RX, RWX, RW)
        self.users: list[int] = []
        # -- pressure: drawn last, so the draws above are the same with or without it -----
        self.pressure: PressureModels | None = None
        self.free_frames: int | None = None
        if pressure is None:
            pressure = rnd() < P_PRESSURE
        if pressure:
            self.p_canfail = 1.0  # every enter may fail: running out is ENOMEM, not a panic
            # fills are about a third of the draws, whatever the swarm's other weights
            fill = max(FILL_WEIGHT, len(self.table) // 2)
            self.weights["fill"] = fill
            self.table.extend([self._a_fill] * fill)

    def origin(self, n_ops: int) -> dict[str, Any]:
        doc = {
            "generator": "random",
            "seed": self.seed,
            "ops": n_ops,
            "version": GENERATOR_VERSION,
            "swarm": dict(self.weights),
            "regions": [f"{b:#010x}" for b in self.bases],
        }
        if self.free_frames is not None:
            doc["pressure"] = {"free_frames": self.free_frames}
        return doc

    def emit(self, op: Op) -> None:
        if len(self.ops) < self.limit:
            self.m.apply(op)
            self.ops.append(op)
            if self.pressure is not None:
                self.pressure.apply(op)

    # -- picks ---------------------------------------------------------------------------------

    def hot_va(self) -> int:
        rnd = self.rnd
        base = self.base_pick[int(rnd() * len(self.base_pick))]
        r = rnd()
        if r < 0.55:
            off = EDGE_PAGES[int(rnd() * len(EDGE_PAGES))]
        elif r < 0.9:
            off = self.wset[int(rnd() * len(self.wset))]
        else:
            off = int(rnd() * REGION_PAGES)
        va = base + off * PAGE_SIZE
        return va if va >= USER_MIN else USER_MIN

    def kernel_va(self, base: int, size: int) -> int:
        rnd = self.rnd
        pages = size // PAGE_SIZE
        if rnd() < 0.6:
            off = (0, 1, 255, 256, 511, 512, 513, 1023, 1024, 1025, pages - 1)[int(rnd() * 11)]
        else:
            off = int(rnd() * pages)
        return base + off * PAGE_SIZE

    def data_pa(self) -> int:
        if self.rnd() < 0.5:
            return self.pick(self.hot_data)
        return self.pick(self.data)

    def user(self) -> int | None:
        if not self.users:
            self._a_create()
            if not self.users:
                return None
        return self.users[int(self.rnd() * len(self.users))]

    def mapped_va(self, pmap: int) -> int | None:
        lst = self.m.vlist[pmap]
        return lst[int(self.rnd() * len(lst))] if lst else None

    def mapped_pa(self) -> int:
        """A page some pmap maps now (or any data page when nothing is mapped)."""
        m = self.m
        for _ in range(3):
            pmap = self.users[int(self.rnd() * len(self.users))] if self.users else KERNEL_PMAP
            va = self.mapped_va(pmap)
            if va is not None:
                return m.maps[pmap][va][0]
        return self.data_pa()

    def some_range(self, lo_limit: int, hi_limit: int, base_pick: list[int] | None) -> tuple[int, int]:
        """A range, usually crossing a 1, 2 or 4 MiB boundary, within [lo_limit, hi_limit]."""
        rnd = self.rnd
        r = rnd()
        if base_pick is not None:
            base = base_pick[int(rnd() * len(base_pick))]
        else:
            base = lo_limit
        if r < 0.45:  # across a boundary
            gran = (MIB, 2 * MIB, 4 * MIB)[int(rnd() * 3)]
            b = (base + int(rnd() * 2 * REGION)) // gran * gran
            if b <= base:
                b += gran
            sva = b - (1 + int(rnd() * (4 if rnd() < 0.7 else 300))) * PAGE_SIZE
            eva = b + (1 + int(rnd() * (4 if rnd() < 0.7 else 300))) * PAGE_SIZE
        elif r < 0.8:  # a few pages
            sva = (self.hot_va() if base_pick is self.base_pick else self.kernel_va(lo_limit, hi_limit - lo_limit))
            eva = sva + (1 + int(rnd() * 8)) * PAGE_SIZE
        elif r < 0.95:  # a whole region (4 MiB from its base, or a 2 MiB half)
            size = (REGION, 2 * MIB, MIB)[int(rnd() * 3)]
            sva = base + int(rnd() * (REGION // size)) * size
            eva = sva + size
        else:  # two regions
            sva = base
            eva = base + 2 * REGION
        sva = min(max(sva, lo_limit), hi_limit - PAGE_SIZE)
        eva = min(max(eva, sva + PAGE_SIZE), hi_limit)
        return sva, eva

    # -- actions ---------------------------------------------------------------------------------

    def _enter(self, pmap: int, va: int, pa: int, prot: int | None = None, wired: bool | None = None) -> None:
        rnd = self.rnd
        old = self.m.maps[pmap].get(va)
        if prot is None:
            prot = self.prots[int(rnd() * len(self.prots))]
        if wired is None:
            wired = rnd() < self.p_wired
        if old is not None and old[1]:
            # A wired mapping: the VM re-enters it only with the same page, still wired
            # (uvm_fault_wire), or unwires it first (munlock) and then replaces it.
            if old[0] != pa and rnd() < 0.5:
                self.emit(Unwire(pmap, va))
            else:
                pa, wired = old[0], True
        canfail = rnd() < self.p_canfail
        self.emit(new_enter(pmap, va, pa, prot, _random_access(rnd, prot), wired, canfail))

    def _a_enter(self) -> None:
        pmap = self.user()
        if pmap is not None:
            self._enter(pmap, self.hot_va(), self.data_pa())

    def _a_remap(self) -> None:
        """Re-enter a mapped VA with a new PA (COW break, page-in to a new frame)."""
        pmap = self.user()
        if pmap is None:
            return
        va = self.mapped_va(pmap)
        if va is None:
            return self._a_enter()
        old = self.m.maps[pmap][va][0]
        pa = self.data_pa()
        if pa == old:
            pa = self.pick(self.data)
        self._enter(pmap, va, pa)

    def _a_reenter(self) -> None:
        """Re-enter a mapped VA with the same PA: a new prot or wiring."""
        pmap = self.user()
        if pmap is None:
            return
        va = self.mapped_va(pmap)
        if va is None:
            return self._a_enter()
        self._enter(pmap, va, self.m.maps[pmap][va][0])

    def _a_share(self) -> None:
        """Map a page another pmap maps (shared text, shared memory, fork)."""
        pmap = self.user()
        if pmap is None:
            return
        self._enter(pmap, self.hot_va(), self.mapped_pa())

    def _a_wire(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        va = self.mapped_va(pmap)
        if va is None:
            return self._enter(pmap, self.hot_va(), self.data_pa(), wired=True)
        self._enter(pmap, va, self.m.maps[pmap][va][0], wired=True)

    def _a_unwire(self) -> None:
        wl = self.m.wlist
        if not wl:
            return self._a_wire()
        pmap, va = wl[int(self.rnd() * len(wl))]
        self.emit(Unwire(pmap, va))

    def _a_remove(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        rnd = self.rnd
        va = self.mapped_va(pmap) if rnd() < 0.6 else None
        if va is None:
            va = self.hot_va()
        n = 1 if rnd() < 0.7 else 1 + int(rnd() * 4)
        self.emit(new_remove(pmap, va, min(va + n * PAGE_SIZE, USER_MAX)))

    def _a_remove_range(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        sva, eva = self.some_range(USER_MIN, USER_MAX, self.base_pick)
        self.emit(Remove(pmap, sva, eva))

    def _a_protect(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        rnd = self.rnd
        if rnd() < 0.5:
            va = self.mapped_va(pmap) or self.hot_va()
            sva, eva = va, min(va + (1 + int(rnd() * 3)) * PAGE_SIZE, USER_MAX)
        else:
            sva, eva = self.some_range(USER_MIN, USER_MAX, self.base_pick)
        prot = (R, R, RX, RX, 0, PROT_X, RW)[int(rnd() * 7)]
        self.emit(Protect(pmap, sva, eva, prot))

    def _a_extract(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        va = self.mapped_va(pmap) if self.rnd() < 0.6 else None
        self.emit(new_extract(pmap, va if va is not None else self.hot_va()))

    def _a_access(self) -> None:
        pmap = self.user()
        if pmap is None:
            return
        rnd = self.rnd
        va = self.mapped_va(pmap) if rnd() < 0.85 else None
        if va is None:
            va = self.hot_va()
        self.emit(new_access(pmap, va, ("r", "r", "w", "w", "x")[int(rnd() * 5)]))

    def _a_page_protect(self) -> None:
        rnd = self.rnd
        pa = self.mapped_pa() if rnd() < 0.85 else self.data_pa()
        r = rnd()
        prot = (R, RX)[int(rnd() * 2)] if r < 0.45 else ((0, PROT_X)[int(rnd() * 2)] if r < 0.92 else (RW, RWX)[int(rnd() * 2)])
        if not prot & (PROT_R | PROT_W) and self.m.is_wired_page(pa):
            if rnd() < 0.5:
                prot = R  # write-protect only (the pager never revokes a wired page)
            else:  # munlock everything that wires it, then page it out
                for pmap, va in self.m.mappings_of(pa):
                    if self.m.maps[pmap][va][1]:
                        self.emit(Unwire(pmap, va))
        self.emit(PageProtect(pa, prot))

    def _a_attrs(self) -> None:
        rnd = self.rnd
        pa = self.mapped_pa() if rnd() < 0.7 else self.data_pa()
        cls = (IsModified, IsReferenced, ClearModify, ClearReference)[int(rnd() * 4)]
        self.emit(cls(pa))

    def _a_collect(self) -> None:
        pmap = self.user()
        if pmap is not None:
            self.emit(Collect(pmap))

    def _a_create(self) -> None:
        if len(self.users) >= self.max_pmaps:
            return
        if self.pressure is not None and not self.pressure.can_create(margin=1):
            return  # pmap_create cannot fail gracefully: never at the edge
        pmap = self.m.next_id
        self.emit(Create())
        if self.m.alive(pmap):
            self.users.append(pmap)

    def _a_reference(self) -> None:
        pmap = self.user()
        if pmap is not None:
            self.emit(Reference(pmap))

    def _a_destroy(self) -> None:
        if not self.users:
            return
        pmap = self.users[int(self.rnd() * len(self.users))]
        if self.m.refs[pmap] == 1:
            self.unmap_all(pmap)
        self.emit(Destroy(pmap))
        if not self.m.alive(pmap):
            self.users.remove(pmap)

    def _a_kenter(self) -> None:
        va = self.kernel_va(KENTER_BASE, KENTER_SIZE)
        if self.pressure is not None and not self.pressure.fits_everywhere(KERNEL_PMAP, va, margin=1):
            return  # pmap_kenter_pa cannot fail gracefully: never at the edge
        self.emit(KEnter(va, self.data_pa(), (RW, R, RWX)[int(self.rnd() * 3)]))

    def _a_fill(self) -> None:
        """Pressure: map a page in a 2 MiB region no pmap uses yet (a new table in every
        shape, a new 1 GiB region now and then, a new pmap's first mapping), until every
        frame model is past its edge; then half the time free something instead."""
        rnd = self.rnd
        pm = self.pressure
        assert pm is not None
        if pm.all_full() and rnd() < 0.5:
            r = rnd()
            if r < 0.4:
                return self._a_remove_range()
            if r < 0.6:
                return self._a_collect()
            if r < 0.85:
                return self._a_destroy()
            return self._a_create()
        if rnd() < 0.15 and pm.can_create(margin=1):
            self._a_create()
            pmap = self.users[-1] if self.users else None
        else:
            pmap = self.user()
        if pmap is None:
            return
        # any 2 MiB slot of the user range: spread over the four 1 GiB regions; near the
        # edge, rather one that needs more frames than a model has left (a partial walk)
        tries = 8 if pm.near_edge() else 1
        for _ in range(tries):
            base = int(rnd() * (USER_MAX // (2 * MIB))) * 2 * MIB
            va = max(USER_MIN, base + EDGE_PAGES[int(rnd() * len(EDGE_PAGES))] * PAGE_SIZE)
            if va >= USER_MAX:
                va = base
            if tries == 1 or pm.partial(pmap, va):
                break
        if rnd() < 0.2 and len(self.base_pick) < 64 and (base & ~(REGION - 1)) + REGION <= USER_MAX:
            self.base_pick.append(base & ~(REGION - 1))  # later ops visit it too
        self._enter(pmap, va, self.data_pa())

    def _a_kremove(self) -> None:
        rnd = self.rnd
        if rnd() < 0.5 and self.m.kmaps:
            kl = self.m.kmaps
            # dict keys in insertion order: a recent kenter'd page (cheap: no list copy)
            va = next(reversed(kl)) if rnd() < 0.5 else self.kernel_va(KENTER_BASE, KENTER_SIZE)
            size = (1 + int(rnd() * 4)) * PAGE_SIZE
        else:
            va, end = self.some_range(KENTER_BASE, KENTER_BASE + KENTER_SIZE, None)
            size = end - va
        size = min(size, KENTER_BASE + KENTER_SIZE - va)
        self.emit(KRemove(va, size))

    def _a_kernel_enter(self) -> None:
        va = self.kernel_va(KMANAGED_BASE, KMANAGED_SIZE)
        self._enter(KERNEL_PMAP, va, self.data_pa())

    def _a_kernel_remove(self) -> None:
        rnd = self.rnd
        if rnd() < 0.5:
            sva, eva = self.some_range(KMANAGED_BASE, KMANAGED_BASE + KMANAGED_SIZE, None)
        else:
            sva = self.mapped_va(KERNEL_PMAP) or self.kernel_va(KMANAGED_BASE, KMANAGED_SIZE)
            eva = min(sva + (1 + int(rnd() * 4)) * PAGE_SIZE, KMANAGED_BASE + KMANAGED_SIZE)
        if rnd() < 0.7:
            self.emit(Remove(KERNEL_PMAP, sva, eva))
        else:
            self.emit(Protect(KERNEL_PMAP, sva, eva, (R, RX)[int(rnd() * 2)]))

    def _a_update(self) -> None:
        pmap = self.user()
        if pmap is not None:
            self.emit(Update(pmap if self.rnd() < 0.8 else KERNEL_PMAP))

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, n_ops: int) -> list[Op]:
        self.limit = n_ops
        if self.weights.get("fill"):
            # Frames left for the pmaps: reached by the fills within ~1,000 ops (and not a
            # function of n_ops: a longer stream only adds ops at the end), never more than
            # the machine has beside the data pages.
            budget = 12 + int(self.rnd() * 228)
            self.free_frames = max(8, min(budget, self.phys_pages - len(self.data)))
            self.pressure = PressureModels(self.free_frames)
        table = self.table
        n = len(table)
        rnd = self.rnd
        ops = self.ops
        self._a_create()
        while len(ops) < n_ops:
            table[int(rnd() * n)]()
        return ops


def generate(seed: int, n_ops: int, phys_pages: int = DEFAULT_PHYS_PAGES, pressure: bool | None = None) -> Stream:
    """The ``random`` generator: ``n_ops`` VM-legal ops shaped by ``seed``."""
    if n_ops < 0:
        raise ValueError(f"n_ops must be >= 0, not {n_ops}")
    gen = RandomGenerator(seed, phys_pages, pressure)
    ops = gen.run(n_ops)
    origin = gen.origin(n_ops)
    if pressure:
        origin["generator"] = "pressure"
    return Stream(ops=tuple(ops), phys_pages=phys_pages, origin=origin, free_frames=gen.free_frames)


def generate_pressure(seed: int, n_ops: int, phys_pages: int = DEFAULT_PHYS_PAGES) -> Stream:
    """The ``pressure`` generator: ``random`` streams, every one driven to the pool's edge."""
    return generate(seed, n_ops, phys_pages, pressure=True)
