"""Hypothesis strategies for short, well-shrinking, VM-legal op streams.

``op_streams()`` draws a plain list of compactly encoded ops (every field a
``sampled_from`` of a small pool, the simplest value first) and then runs a legalising
pass that turns it into a ``difftest.streams.Stream`` the VM layer could produce
(``difftest.legality``): ops on pmaps that do not exist get one created first (or are
dropped when ``n_pmaps`` are alive), a ``destroy`` of the last reference unmaps first, an
``unwire`` goes to a wired mapping, a revocation of a wired page only write-protects, an
``enter`` over a wired mapping keeps its page and its wiring.  Shrinking therefore works on
the raw list (delete ops, move each field to the front of its pool) and every shrunk
example is still legal.

Swarm testing: each example first draws a set of op kinds to leave out (shrinking towards
leaving none out), and ``weights`` repeats kinds in the pool.

Usage::

    from hypothesis import given, settings
    from strategies.hypothesis_ops import op_streams

    @settings(max_examples=50, deadline=None)
    @given(op_streams(n_pmaps=2))
    def test_something(stream): ...

Never imports ``hypothesis.internal``.  Hypothesis caps the choices of one example; keep
``max_ops`` at a few hundred (long streams come from the seeded generators).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from hypothesis import strategies as st

from difftest.legality import VMModel
from difftest.machine import DEFAULT_PHYS_PAGES, KERNEL_MIN, KERNEL_PMAP, PAGE_SIZE, USER_MAX, USER_MIN
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
)
from difftest.streams import Stream

MIB = 1 << 20

#: Op kinds, simplest (most useful to keep when shrinking) first.
KINDS = (
    "enter",
    "remove",
    "access",
    "create",
    "destroy",
    "protect",
    "page_protect",
    "collect",
    "unwire",
    "extract",
    "clear_modify",
    "is_modified",
    "clear_reference",
    "is_referenced",
    "reference",
    "kenter",
    "kremove",
    "update",
)
DEFAULT_WEIGHTS: Mapping[str, int] = {
    "enter": 6,
    "remove": 3,
    "access": 3,
    "create": 1,
    "destroy": 1,
    "protect": 2,
    "page_protect": 2,
    "collect": 1,
    "unwire": 1,
    "extract": 1,
    "clear_modify": 1,
    "is_modified": 1,
    "clear_reference": 1,
    "is_referenced": 1,
    "reference": 1,
    "kenter": 1,
    "kremove": 1,
    "update": 1,
}

#: User regions: a 4 MiB-aligned one, one 2 MiB-aligned (straddling an arm32 PT frame
#: boundary), one in the middle, the last region below USER_MAX.
DEFAULT_REGIONS = (0x00400000, 0x00600000, 0x20000000, USER_MAX - 4 * MIB)
#: Page offsets in a region: its edges and the 1/2 MiB boundaries inside it.
PAGE_OFFSETS = (0, 1, 1023, 512, 511, 256, 255, 2, 1022, 513, 768, 767)
#: Range lengths in pages: one page, a few, up to and across 1/2/4 MiB.
RANGE_PAGES = (1, 2, 4, 256, 512, 1024, 1536, 2048)
#: Kernel windows (managed enters in one, kenter in the other: never mixed).
KMANAGED_BASE = KERNEL_MIN + 0x00400000
KENTER_BASE = KERNEL_MIN + 0x02000000
KWINDOW = 8 * MIB

R, RW, RX, RWX = PROT_R, PROT_R | PROT_W, PROT_R | PROT_X, PROT_R | PROT_W | PROT_X
PROTS = (R, RW, RX, RWX)
ACCESSES = (0, PROT_R, PROT_W, PROT_X)  # masked by prot
PROTECT_PROTS = (R, RX, 0, PROT_X, RW)
PAGE_PROTECT_PROTS = (0, R, RX, PROT_X, RW)
ACCESS_KINDS = ("r", "w", "x")
N_PAGES = 6


def data_pages(phys_pages: int, n: int = N_PAGES) -> tuple[int, ...]:
    """The small pool of data pages (PAs) streams of this machine use."""
    first = max(1, phys_pages // 2)
    return tuple((first + i) * PAGE_SIZE for i in range(min(n, phys_pages - first)))


def _raw_op(kinds: Sequence[str], n_slots: int, n_addrs: int, n_pages: int) -> st.SearchStrategy:
    """One op as a tuple of small pool indexes; only the fields its kind uses are drawn."""

    @st.composite
    def raw(draw: Any) -> tuple:
        kind = draw(st.sampled_from(kinds))
        ix = st.integers  # bounded integers shrink towards 0: the pool's first, simplest value
        if kind == "enter":
            return (kind, draw(ix(0, n_slots)), draw(ix(0, n_addrs - 1)), draw(ix(0, n_pages - 1)),
                    draw(ix(0, len(PROTS) - 1)), draw(ix(0, len(ACCESSES) - 1)),
                    draw(st.booleans()), draw(st.booleans()))
        if kind in ("remove", "protect"):
            return (kind, draw(ix(0, n_slots)), draw(ix(0, n_addrs - 1)), draw(ix(0, len(RANGE_PAGES) - 1)),
                    draw(ix(0, len(PROTECT_PROTS) - 1)))
        if kind in ("access", "extract", "unwire"):
            return (kind, draw(ix(0, n_slots)), draw(ix(0, n_addrs - 1)), draw(ix(0, len(ACCESS_KINDS) - 1)))
        if kind in ("destroy", "reference", "collect", "update"):
            return (kind, draw(ix(0, n_slots)))
        if kind == "page_protect":
            return (kind, draw(ix(0, n_pages - 1)), draw(ix(0, len(PAGE_PROTECT_PROTS) - 1)))
        if kind in ("clear_modify", "is_modified", "clear_reference", "is_referenced"):
            return (kind, draw(ix(0, n_pages - 1)))
        if kind == "kenter":
            return (kind, draw(ix(0, len(PAGE_OFFSETS) * 2 - 1)), draw(ix(0, n_pages - 1)),
                    draw(ix(0, len(PROTS) - 1)))
        if kind == "kremove":
            return (kind, draw(ix(0, len(PAGE_OFFSETS) * 2 - 1)), draw(ix(0, len(RANGE_PAGES) - 1)))
        return (kind,)  # create

    return raw()


class _Legaliser:
    """Turns raw tuples into VM-legal ops (dropping or fixing what the VM would not do)."""

    def __init__(self, n_pmaps: int, regions: Sequence[int], pages: Sequence[int]) -> None:
        self.n_pmaps = n_pmaps
        self.user_addrs = [min(max(base + off * PAGE_SIZE, USER_MIN), USER_MAX - PAGE_SIZE)
                           for base in regions for off in PAGE_OFFSETS]
        kernel_offsets = [off for off in PAGE_OFFSETS] + [1024 + off for off in PAGE_OFFSETS]
        self.kmanaged_addrs = [KMANAGED_BASE + off * PAGE_SIZE for off in kernel_offsets]
        self.kenter_addrs = [KENTER_BASE + off * PAGE_SIZE for off in kernel_offsets]
        self.pages = list(pages)
        self.m = VMModel()
        self.ops: list[Op] = []

    def emit(self, op: Op) -> None:
        problem = self.m.check(op)
        assert problem is None, problem  # the fixes below must keep every op legal
        self.m.apply(op)
        self.ops.append(op)

    def user(self, slot: int) -> int | None:
        live = self.m.user_pmaps()
        if not live:
            self.emit(Create())
            live = self.m.user_pmaps()
        return live[slot % len(live)]

    def pmap_and_va(self, slot: int, addr: int) -> tuple[int, int]:
        """Slot n_pmaps is the kernel pmap (managed window), the others user pmaps."""
        if slot >= self.n_pmaps:
            return KERNEL_PMAP, self.kmanaged_addrs[addr % len(self.kmanaged_addrs)]
        return self.user(slot), self.user_addrs[addr % len(self.user_addrs)]

    def add(self, raw: tuple) -> None:
        kind = raw[0]
        m = self.m
        if kind == "create":
            if len(m.user_pmaps()) < self.n_pmaps:
                self.emit(Create())
        elif kind == "enter":
            _, slot, addr, page, prot_i, acc_i, wired, canfail = raw
            pmap, va = self.pmap_and_va(slot, addr)
            pa = self.pages[page]
            prot = PROTS[prot_i]
            old = m.get(pmap, va)
            if old is not None and old[1]:
                pa, wired = old[0], True  # a wired page keeps its mapping and its wiring
            self.emit(Enter(pmap, va, pa, prot, ACCESSES[acc_i] & prot, wired, canfail))
        elif kind in ("remove", "protect"):
            _, slot, addr, len_i, prot_i = raw
            pmap, va = self.pmap_and_va(slot, addr)
            if pmap == KERNEL_PMAP:
                limit = KMANAGED_BASE + KWINDOW
            else:
                limit = USER_MAX
            eva = min(va + RANGE_PAGES[len_i] * PAGE_SIZE, limit)
            if kind == "remove":
                self.emit(Remove(pmap, va, eva))
            else:
                self.emit(Protect(pmap, va, eva, PROTECT_PROTS[prot_i]))
        elif kind in ("access", "extract", "unwire"):
            _, slot, addr, kind_i = raw
            pmap, va = self.pmap_and_va(slot, addr)
            if kind == "access":
                self.emit(Access(pmap, va, ACCESS_KINDS[kind_i]))
            elif kind == "extract":
                self.emit(Extract(pmap, va))
            else:
                old = m.get(pmap, va)
                if old is None or not old[1]:
                    wired = [v for v, (_, w) in m.maps[pmap].items() if w]
                    if not wired:
                        return  # nothing wired in this pmap: the VM would not unwire
                    va = wired[0]
                self.emit(Unwire(pmap, va))
        elif kind == "destroy":
            live = m.user_pmaps()
            if not live:
                return
            pmap = live[raw[1] % len(live)]
            if m.refs[pmap] == 1 and m.maps[pmap]:
                self.emit(Remove(pmap, USER_MIN, USER_MAX))  # the VM unmaps everything first
            self.emit(Destroy(pmap))
        elif kind in ("reference", "collect"):
            live = m.user_pmaps()
            if not live:
                return
            pmap = live[raw[1] % len(live)]
            self.emit(Reference(pmap) if kind == "reference" else Collect(pmap))
        elif kind == "update":
            slot = raw[1]
            pmap = KERNEL_PMAP if slot >= self.n_pmaps else self.user(slot)
            self.emit(Update(pmap))
        elif kind == "page_protect":
            _, page, prot_i = raw
            pa, prot = self.pages[page], PAGE_PROTECT_PROTS[prot_i]
            if not prot & (PROT_R | PROT_W) and m.is_wired_page(pa):
                prot = R  # the pager never revokes a wired page; write-protect only
            self.emit(PageProtect(pa, prot))
        elif kind in ("clear_modify", "is_modified", "clear_reference", "is_referenced"):
            cls = {"clear_modify": ClearModify, "is_modified": IsModified,
                   "clear_reference": ClearReference, "is_referenced": IsReferenced}[kind]
            self.emit(cls(self.pages[raw[1]]))
        elif kind == "kenter":
            _, addr, page, prot_i = raw
            self.emit(KEnter(self.kenter_addrs[addr], self.pages[page], PROTS[prot_i]))
        elif kind == "kremove":
            _, addr, len_i = raw
            va = self.kenter_addrs[addr]
            size = min(RANGE_PAGES[len_i] * PAGE_SIZE, KENTER_BASE + KWINDOW - va)
            self.emit(KRemove(va, size))
        else:  # pragma: no cover
            raise AssertionError(kind)


def legalise(raw_ops: Sequence[tuple], n_pmaps: int = 3, regions: Sequence[int] = DEFAULT_REGIONS,
             phys_pages: int = DEFAULT_PHYS_PAGES) -> Stream:
    """Build the VM-legal stream a list of raw op tuples stands for (deterministic)."""
    leg = _Legaliser(n_pmaps, regions, data_pages(phys_pages))
    for raw in raw_ops:
        leg.add(raw)
    return Stream(ops=tuple(leg.ops), phys_pages=phys_pages,
                  origin={"generator": "hypothesis", "strategy": "op_streams"})


def op_streams(
    n_pmaps: int = 3,
    regions: Sequence[int] | None = None,
    weights: Mapping[str, int] | None = None,
    max_ops: int = 300,
    phys_pages: int = DEFAULT_PHYS_PAGES,
    swarm: bool = True,
) -> st.SearchStrategy[Stream]:
    """A strategy of VM-legal ``Stream``s of at most about ``max_ops`` ops (the legalising
    pass may add a create before a first use or an unmap before a destroy).

    ``n_pmaps``: user pmaps alive at once (at most); ``regions``: 4 MiB- or 2 MiB-aligned user
    region bases (default ``DEFAULT_REGIONS``); ``weights``: op kind -> relative weight
    (0 leaves a kind out; default ``DEFAULT_WEIGHTS``); ``swarm``: each example also leaves
    out a random subset of kinds (never ``enter``).
    """
    if n_pmaps < 1:
        raise ValueError("n_pmaps must be at least 1")
    regions = tuple(DEFAULT_REGIONS if regions is None else regions)
    for base in regions:
        if base % (2 * MIB) or not 0 <= base <= USER_MAX - 4 * MIB:
            raise ValueError(f"region base {base:#010x} is not 2 MiB-aligned inside the user range")
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown op kind {unknown[0]!r} in weights (known: {', '.join(KINDS)})")
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    if not kinds:
        raise ValueError("every op kind has weight 0")
    pages = data_pages(phys_pages)
    n_addrs = len(regions) * len(PAGE_OFFSETS)
    optional = [k for k in kinds if k != "enter"]

    @st.composite
    def streams(draw: Any) -> Stream:
        left_out: list[str] = []
        if swarm and optional:
            left_out = draw(st.lists(st.sampled_from(optional), unique=True, max_size=len(optional) - 1))
        pool = [k for k in kinds if k not in left_out for _ in range(weights[k])]
        if not pool:
            pool = ["enter"]
        op = _raw_op(pool, n_pmaps, n_addrs, len(pages))
        # Blocks of ops: Hypothesis keeps a flat list short (about 5 on average); a list of
        # blocks averages a few dozen ops and still shrinks by deleting blocks or ops.
        blocks = draw(st.lists(st.lists(op, min_size=1, max_size=max(1, min(50, max_ops))),
                               max_size=max(1, max_ops // 10)))
        raw = [r for block in blocks for r in block][:max_ops]
        return legalise(raw, n_pmaps, regions, phys_pages)

    return streams()
