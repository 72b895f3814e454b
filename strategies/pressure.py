"""Memory pressure: drive the physical pool to its edge on purpose (ENOMEM on ``canfail``).

A stream of 2,000 ops cannot fill 8,192 frames by itself (an op takes at most a few
frames), so a pressure stream says how much memory the rest of the system holds: it sets
``machine.free_frames`` (``difftest.streams.Stream``), the frames left free for the pmaps
when it starts, and then takes page-table frames until few are left.

What a pmap needs depends on its geometry and on whether it frees tables, so the generator
keeps a *frame model* per known shape (``FrameModel``): an arm32-like two-level tree that
frees tables (``arm32-refcount``), the same that never frees them before destroy
(``arm32-leaky``) and an alpha-like lazy three-level tree (``alpha-ref``).  Each model
follows the stream, including its own ENOMEMs (an enter that does not fit leaves nothing
in that model, as in the backend).  The generator uses the models to

* make every user ``enter`` ``canfail`` (as UVM's fault handler does), so that running
  out is an ``ENOMEM``, not a panic that stops the backend;
* allow a ``create`` or a ``kenter`` (which cannot fail gracefully) only while every model
  has room for it;
* keep filling new 2 MiB regions, pmaps and 1 GiB regions until every model is past its
  edge, then mix frees (remove, collect, exits) with more enters, some failing.

The models are estimates (a third party's pmap may need more or less): a wrong guess only
moves where ENOMEM starts.  The harness judges every ENOMEM against the backend's own
declared geometry, so pressure never creates a divergence by itself.
"""

from __future__ import annotations

from difftest.backend import Geometry, Level
from difftest.machine import KERNEL_PMAP, PAGE_SIZE, Tag
from difftest.ops import (
    PROT_R,
    PROT_W,
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

MIB = 1 << 20
GIB = 1 << 30

ARM32_LIKE = Geometry(
    levels=(Level("L1", span=1 << 32, entries=4096, frames=4, tag=Tag.L1),
            Level("PT", span=4 * MIB, entries=1024, frames=1, tag=Tag.PT)),
    top_level="create",
)
ALPHA_LIKE = Geometry(
    levels=(Level("L1", span=1 << 32, entries=4, frames=1, tag=Tag.L1),
            Level("L2", span=GIB, entries=512, frames=1, tag=Tag.PT),
            Level("L3", span=2 * MIB, entries=512, frames=1, tag=Tag.PT)),
    top_level="lazy",
)


# The tags whose frames a pmap holds (what ContractState.needed_pt_l1 counts).
_COUNTED = (Tag.PT, Tag.L1)
_INDEX_SPAN = 4 * MIB  # a geometry with no level below its top: mappings indexed by 4 MiB
_PROBE_LIMIT = 32 * PAGE_SIZE  # ranges up to this size are probed page by page

# Ops no frame model follows (queries, MMU accesses, updates).
_IGNORED = frozenset({Access, Extract, ClearModify, ClearReference, IsModified, IsReferenced, Update})


class FrameModel:
    """Frames one pmap shape holds along a stream, from ``free_frames`` down.

    Its state is only what the frames follow, kept lean (it moves with every op of a
    pressure stream, three times): per pmap its mappings (va -> (pa, wired, managed))
    indexed by leaf table, for each level between the top and the leaves a count of
    mappings per table, the frames of its tables below the top, and per page its managed
    mappings (for ``page_protect``).  The frames a pmap holds are what
    ``ContractState.needed_frames`` says for the same mappings and geometry
    (tests/test_pressure.py holds the two together).  This is the shape that frees tables
    as they empty; ``LeakyFrameModel`` the one that does not."""

    __slots__ = ("name", "leaky", "bootstrap", "used", "most_user_frames", "kregions", "touched", "_spans", "maps",
                 "leaves", "uppers", "lower", "pv", "refs", "_lazy", "_top_frames", "_top_counted", "_create_cost",
                 "_leaf_span", "_leaf_frames", "_leaf_counted", "_upper_levels")

    def __init__(self, name: str, geometry: Geometry, bootstrap: int) -> None:
        self.name = name
        self.leaky = False
        self.bootstrap = bootstrap
        self.used = bootstrap  # frames held: bootstrap, user tables, kernel tables
        top = geometry.levels[0]
        self._lazy = geometry.top_level == "lazy"
        self._top_frames = top.frames
        self._top_counted = top.frames if top.tag in _COUNTED else 0
        self._create_cost = 0 if self._lazy else top.frames
        # (span, frames, frames counted as held) of each level below the top; the last are
        # the leaves, the ones between are counted per table
        lower = [(lvl.span, lvl.frames, lvl.frames if lvl.tag in _COUNTED else 0) for lvl in geometry.levels[1:]]
        self._spans = tuple((span, frames) for span, frames, _ in lower)
        self._leaf_span, self._leaf_frames, self._leaf_counted = lower.pop() if lower else (_INDEX_SPAN, 0, 0)
        self._upper_levels = tuple(lower)
        # the most frames an enter to a user pmap can take (a lazy top level, a table of
        # every level below it)
        self.most_user_frames = (top.frames if self._lazy else 0) + sum(frames for _, frames in self._spans)
        self.maps: dict[int, dict[int, tuple[int, bool, bool]]] = {KERNEL_PMAP: {}}
        self.leaves: dict[int, dict[int, dict[int, None]]] = {KERNEL_PMAP: {}}  # pmap -> leaf table -> VAs
        # pmap -> (span, frames, frames counted, mappings per table) of each level between
        self.uppers: dict[int, list[tuple[int, int, int, dict[int, int]]]] = {KERNEL_PMAP: self._new_uppers()}
        self.lower: dict[int, int] = {KERNEL_PMAP: 0}  # pmap -> frames of its tables below the top
        self.pv: dict[int, dict[tuple[int, int], None]] = {}  # pa -> managed (pmap, va)
        self.refs: dict[int, int] = {KERNEL_PMAP: 1}
        self.kregions: set[tuple[int, int]] = set()  # kernel tables: never freed
        self.touched: dict[int, set[int]] = {}  # (LeakyFrameModel) pmap -> 4 MiB regions ever mapped

    def _new_uppers(self) -> list[tuple[int, int, int, dict[int, int]]]:
        return [(span, frames, counted, {}) for span, frames, counted in self._upper_levels]

    # -- the state ---------------------------------------------------------------------------

    def put(self, pmap: int, va: int, pa: int, wired: bool, managed: bool) -> None:
        table = self.maps[pmap]
        old = table.get(va)
        table[va] = (pa, wired, managed)
        if old is not None:  # a place already mapped: its tables stay
            if old[2] and managed and old[0] == pa:
                return
            if old[2]:
                self._pv_remove(old[0], pmap, va)
            if managed:
                self.pv.setdefault(pa, {})[(pmap, va)] = None
            return
        leaves = self.leaves[pmap]
        key = va // self._leaf_span
        leaf = leaves.get(key)
        if leaf is None:  # a new leaf table
            leaves[key] = {va: None}
            self.lower[pmap] += self._leaf_counted
        else:
            leaf[va] = None
        for span, _, counted, counter in self.uppers[pmap]:
            key = va // span
            n = counter.get(key, 0)
            counter[key] = n + 1
            if not n:  # a new table of this level
                self.lower[pmap] += counted
        if managed:
            entries = self.pv.get(pa)
            if entries is None:
                self.pv[pa] = {(pmap, va): None}
            else:
                entries[(pmap, va)] = None

    def delete(self, pmap: int, va: int) -> None:
        old = self.maps[pmap].pop(va, None)
        if old is None:
            return
        if old[2]:
            self._pv_remove(old[0], pmap, va)
        leaves = self.leaves[pmap]
        key = va // self._leaf_span
        leaf = leaves[key]
        del leaf[va]
        if not leaf:  # a leaf table no longer needed
            del leaves[key]
            self.lower[pmap] -= self._leaf_counted
        for span, _, counted, counter in self.uppers[pmap]:
            key = va // span
            left = counter[key] - 1
            if left:
                counter[key] = left
            else:
                del counter[key]
                self.lower[pmap] -= counted

    def _pv_remove(self, pa: int, pmap: int, va: int) -> None:
        entries = self.pv.get(pa)
        if entries is not None:
            entries.pop((pmap, va), None)
            if not entries:
                del self.pv[pa]

    def in_range(self, pmap: int, sva: int, eva: int) -> list[int]:
        """VAs with a mapping in [sva, eva) (in no particular order)."""
        if eva - sva <= _PROBE_LIMIT:
            table = self.maps[pmap]
            return [va for va in range(sva, eva, PAGE_SIZE) if va in table]
        leaves = self.leaves[pmap]
        span = self._leaf_span
        lo, hi = sva // span, (eva - 1) // span
        keys = [k for k in range(lo, hi + 1) if k in leaves] if hi - lo + 1 <= len(leaves) else \
            [k for k in leaves if lo <= k <= hi]
        return [va for k in keys for va in leaves[k] if sva <= va < eva]

    def forget_pmap(self, pmap: int) -> None:
        for va in list(self.maps[pmap]):
            self.delete(pmap, va)
        del self.maps[pmap], self.leaves[pmap], self.uppers[pmap], self.lower[pmap], self.refs[pmap]

    # -- frames ------------------------------------------------------------------------------

    def _user_frames(self, pmap: int) -> int:
        table = self.maps.get(pmap)
        if table is None:
            return 0
        top = self._top_counted if table or not self._lazy or pmap == KERNEL_PMAP else 0
        return top + self.lower[pmap]

    def extra(self, pmap: int, va: int) -> int:
        """Frames an enter at (pmap, va) takes now."""
        if pmap == KERNEL_PMAP:
            return self._kernel_extra(va)
        table = self.maps[pmap]
        return 0 if va in table else self._new_place(pmap, va, table)

    def _kernel_extra(self, va: int) -> int:
        return sum(f for i, (span, f) in enumerate(self._spans) if (i, va // span) not in self.kregions)

    def _new_place(self, pmap: int, va: int, table: dict[int, tuple[int, bool, bool]]) -> int:
        """Frames an enter at an unmapped (user pmap, va) takes."""
        need = self._top_frames if self._lazy and not table else 0
        if va // self._leaf_span not in self.leaves[pmap]:
            need += self._leaf_frames
        for span, frames, _, counter in self.uppers[pmap]:
            if va // span not in counter:
                need += frames
        return need

    def create(self, pmap: int) -> None:
        self.maps[pmap] = {}
        self.leaves[pmap] = {}
        self.uppers[pmap] = self._new_uppers()
        self.lower[pmap] = 0
        self.refs[pmap] = 1
        self.used += self._create_cost

    def create_cost(self) -> int:
        return self._create_cost

    def enter(self, pmap: int, va: int, pa: int, wired: bool, free_frames: int) -> None:
        """``apply`` of an enter on a user pmap, in one call (the most common op)."""
        table = self.maps[pmap]
        if va in table:  # a place already mapped: no new table
            if 0 <= free_frames - self.used:
                self.put(pmap, va, pa, wired, True)
            return
        need = self._new_place(pmap, va, table)
        if need > free_frames - self.used:
            return  # ENOMEM (canfail): nothing changes in this model
        self.put(pmap, va, pa, wired, True)
        self.used += need  # exactly the tables the enter makes

    def kernel_enter(self, va: int, free_frames: int) -> bool:
        """Take the kernel tables an enter or kenter at ``va`` needs; False if they do not fit
        (out of memory: nothing changes in this model)."""
        need = self._kernel_extra(va)
        if need > free_frames - self.used:
            return False
        for i, (span, _) in enumerate(self._spans):
            self.kregions.add((i, va // span))
        self.used += need
        return True

    def apply(self, op: Op, free_frames: int) -> None:
        t = type(op)
        if t is Enter and op.pmap != KERNEL_PMAP:
            self.enter(op.pmap, op.va, op.pa, bool(op.wired), free_frames)
        elif t is Enter or t is KEnter:
            if self.kernel_enter(op.va, free_frames):
                self.put(KERNEL_PMAP, op.va, op.pa, True, t is Enter)
        elif t is Remove or (t is Protect and not op.prot & PROT_R):
            self._drop(op.pmap, self.in_range(op.pmap, op.sva, op.eva))
        elif t is Collect:
            # The built-ins' collect drops every non-wired user mapping and with them the
            # tables (the leaky shape frees nothing: LeakyFrameModel)
            if op.pmap != KERNEL_PMAP:
                self._drop(op.pmap, [va for va, m in self.maps[op.pmap].items() if not m[1]])
        elif t is Unwire:
            m = self.maps[op.pmap].get(op.va)
            if m is not None and m[1]:
                self.put(op.pmap, op.va, m[0], False, m[2])
        elif t is KRemove:
            for va in self.in_range(KERNEL_PMAP, op.va, op.va + op.size):
                self.delete(KERNEL_PMAP, va)
        elif t is PageProtect:
            if not op.prot & (PROT_R | PROT_W):
                for pmap, va in list(self.pv.get(op.pa, ())):
                    self._drop(pmap, [va])
        elif t is Reference:
            self.refs[op.pmap] += 1
        elif t is Destroy:
            self.refs[op.pmap] -= 1
            if self.refs[op.pmap] == 0:
                before = self._user_frames(op.pmap)
                self.forget_pmap(op.pmap)
                self.used -= before

    def _drop(self, pmap: int, vas: list[int]) -> None:
        if not vas:
            return
        if pmap == KERNEL_PMAP:
            for va in vas:
                self.delete(pmap, va)
            return
        before = self._user_frames(pmap)
        for va in vas:
            self.delete(pmap, va)
        self.used += self._user_frames(pmap) - before


class LeakyFrameModel(FrameModel):
    """A shape that frees no table before destroy (``arm32-leaky``): a user pmap holds its
    top level and one table per 4 MiB region it ever mapped, whatever it maps now.  So this
    model keeps no mappings at all, only those regions (and the kernel's tables)."""

    __slots__ = ()

    def __init__(self, name: str, geometry: Geometry, bootstrap: int) -> None:
        super().__init__(name, geometry, bootstrap)
        self.leaky = True
        self.most_user_frames = 1

    def _user_frames(self, pmap: int) -> int:
        return self._create_cost + len(self.touched.get(pmap, ()))

    def extra(self, pmap: int, va: int) -> int:
        if pmap == KERNEL_PMAP:
            return self._kernel_extra(va)
        return 0 if va // (4 * MIB) in self.touched[pmap] else 1  # (a mapped place's region is in)

    def create(self, pmap: int) -> None:
        self.refs[pmap] = 1
        self.touched[pmap] = set()
        self.used += self._create_cost

    def enter(self, pmap: int, va: int, pa: int, wired: bool, free_frames: int) -> None:
        touched = self.touched[pmap]
        region = va // (4 * MIB)
        if region not in touched and 1 <= free_frames - self.used:
            touched.add(region)
            self.used += 1

    def apply(self, op: Op, free_frames: int) -> None:
        t = type(op)
        if t is Enter and op.pmap != KERNEL_PMAP:
            self.enter(op.pmap, op.va, op.pa, bool(op.wired), free_frames)
        elif t is Enter or t is KEnter:
            self.kernel_enter(op.va, free_frames)
        elif t is Reference:
            self.refs[op.pmap] += 1
        elif t is Destroy:
            self.refs[op.pmap] -= 1
            if self.refs[op.pmap] == 0:
                self.used -= self._user_frames(op.pmap)
                del self.refs[op.pmap], self.touched[op.pmap]


class PressureModels:
    """The frame models of the built-in shapes, fed every op of a stream."""

    __slots__ = ("free_frames", "models", "next_id")

    def __init__(self, free_frames: int) -> None:
        self.free_frames = free_frames
        self.models = (
            FrameModel("arm32-refcount", ARM32_LIKE, bootstrap=4),
            LeakyFrameModel("arm32-leaky", ARM32_LIKE, bootstrap=4),
            FrameModel("alpha-ref", ALPHA_LIKE, bootstrap=1),
        )
        self.next_id = 1

    def apply(self, op: Op) -> None:
        t = type(op)
        if t is Enter and op.pmap != KERNEL_PMAP:
            pmap, va, pa, wired, free = op.pmap, op.va, op.pa, bool(op.wired), self.free_frames
            for m in self.models:
                m.enter(pmap, va, pa, wired, free)
            return
        if t in _IGNORED:
            return
        if t is Create:  # ids 1, 2, 3, ... as the harness gives them
            pmap = self.next_id
            self.next_id += 1
            for m in self.models:
                m.create(pmap)
            return
        for m in self.models:
            m.apply(op, self.free_frames)

    def room(self) -> int:
        """Frames still free in the tightest model."""
        return self.free_frames - max(m.used for m in self.models)

    def fits_everywhere(self, pmap: int, va: int, margin: int = 0) -> bool:
        """An op that cannot fail gracefully (kenter) fits in every model."""
        for m in self.models:
            if self.free_frames - m.used - m.extra(pmap, va) < margin:
                return False
        return True

    def can_create(self, margin: int = 0) -> bool:
        for m in self.models:
            if self.free_frames - m.used - m._create_cost < margin:
                return False
        return True

    def past_edge(self, pmap: int, va: int) -> bool:
        """An enter at (pmap, va) would get ENOMEM in some model."""
        for m in self.models:
            if m.extra(pmap, va) > self.free_frames - m.used:
                return True
        return False

    def near_edge(self, frames: int = 2) -> bool:
        """Some model has a few frames left, but not none."""
        for m in self.models:
            if 0 < self.free_frames - m.used <= frames:
                return True
        return False

    def partial(self, pmap: int, va: int) -> bool:
        """An enter at (pmap, va) needs more frames than some model has, while that model
        still has some: the path that allocates part of a table walk and must undo it."""
        for m in self.models:
            room = self.free_frames - m.used
            # (no enter can need more than most_user_frames: then no need to ask)
            if 0 < room < m.most_user_frames and room < m.extra(pmap, va):
                return True
        return False

    def all_full(self, slack: int = 0) -> bool:
        """Every model has at most ``slack`` free frames."""
        for m in self.models:
            if self.free_frames - m.used > slack:
                return False
        return True
