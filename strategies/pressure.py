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
from difftest.contract import MANAGED, PA, PROT, WIRED, ContractState
from difftest.machine import KERNEL_PMAP, Tag
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


# Ops no frame model follows (queries, MMU accesses, updates).
_IGNORED = frozenset({Access, Extract, ClearModify, ClearReference, IsModified, IsReferenced, Update})


class FrameModel:
    """Frames one pmap shape holds along a stream, from ``free_frames`` down: the frames
    the harness's contract model (``ContractState``) says its live mappings need under the
    shape's geometry, plus bootstrap and the kernel's tables (never freed).  This is the
    shape that frees tables as they empty; ``LeakyFrameModel`` the one that does not."""

    __slots__ = ("name", "leaky", "bootstrap", "used", "most_user_frames", "kregions", "touched", "_spans",
                 "state", "_create_cost")

    def __init__(self, name: str, geometry: Geometry, bootstrap: int) -> None:
        self.name = name
        self.leaky = False
        self.bootstrap = bootstrap
        self.used = bootstrap  # frames held: bootstrap, user tables, kernel tables
        self.state = ContractState(geometry)
        self._create_cost = self.state.create_frames()
        self._spans = tuple((lvl.span, lvl.frames) for lvl in geometry.levels[1:])
        # the most frames an enter to a user pmap can take (a lazy top level, a table of
        # every level below it)
        top = geometry.levels[0]
        self.most_user_frames = (top.frames if geometry.top_level == "lazy" else 0) + sum(f for _, f in self._spans)
        self.kregions: set[tuple[int, int]] = set()  # kernel tables: never freed
        self.touched: dict[int, set[int]] = {}  # (LeakyFrameModel) pmap -> 4 MiB regions ever mapped

    def _user_frames(self, pmap: int) -> int:
        return sum(self.state.needed_pt_l1(pmap))

    def extra(self, pmap: int, va: int) -> int:
        """Frames an enter at (pmap, va) takes now."""
        if pmap == KERNEL_PMAP:
            return self._kernel_extra(va)
        return self.state.extra_frames_for(pmap, va)

    def _kernel_extra(self, va: int) -> int:
        return sum(f for i, (span, f) in enumerate(self._spans) if (i, va // span) not in self.kregions)

    def create(self, pmap: int) -> None:
        self.state.create(pmap)
        self.used += self._create_cost

    def create_cost(self) -> int:
        return self._create_cost

    def enter(self, pmap: int, va: int, pa: int, wired: bool, free_frames: int) -> None:
        """``apply`` of an enter on a user pmap (the most common op)."""
        need = self.state.extra_frames_for(pmap, va)
        if need > free_frames - self.used:
            return  # ENOMEM (canfail): nothing changes in this model
        self.state.put(pmap, va, (pa, PROT_R, wired, True))  # (any prot: frames do not follow it)
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
        st = self.state
        t = type(op)
        if t is Enter and op.pmap != KERNEL_PMAP:
            self.enter(op.pmap, op.va, op.pa, bool(op.wired), free_frames)
        elif t is Enter or t is KEnter:
            if self.kernel_enter(op.va, free_frames):
                st.put(KERNEL_PMAP, op.va, (op.pa, PROT_R, True, t is Enter))
        elif t is Remove or (t is Protect and not op.prot & PROT_R):
            self._drop(op.pmap, st.in_range(op.pmap, op.sva, op.eva))
        elif t is Collect:
            # The built-ins' collect drops every non-wired user mapping and with them the
            # tables (the leaky shape frees nothing: LeakyFrameModel)
            if op.pmap != KERNEL_PMAP:
                self._drop(op.pmap, [va for va, m in st.maps[op.pmap].items() if not m[WIRED]])
        elif t is Unwire:
            m = st.get(op.pmap, op.va)
            if m is not None and m[WIRED]:
                st.put(op.pmap, op.va, (m[PA], m[PROT], False, m[MANAGED]))
        elif t is KRemove:
            for va in st.in_range(KERNEL_PMAP, op.va, op.va + op.size):
                st.delete(KERNEL_PMAP, va)
        elif t is PageProtect:
            if not op.prot & (PROT_R | PROT_W):
                for pmap, va in st.mappings_of(op.pa):
                    self._drop(pmap, [va])
        elif t is Reference:
            st.refs[op.pmap] += 1
        elif t is Destroy:
            st.refs[op.pmap] -= 1
            if st.refs[op.pmap] == 0:
                before = self._user_frames(op.pmap)
                st.forget_pmap(op.pmap)
                self.used -= before

    def _drop(self, pmap: int, vas: list[int]) -> None:
        if not vas:
            return
        st = self.state
        if pmap == KERNEL_PMAP:
            for va in vas:
                st.delete(pmap, va)
            return
        before = self._user_frames(pmap)
        for va in vas:
            st.delete(pmap, va)
        self.used += self._user_frames(pmap) - before


class LeakyFrameModel(FrameModel):
    """A shape that frees no table before destroy (``arm32-leaky``): a user pmap holds its
    top level and one table per 4 MiB region it ever mapped, whatever it maps now.  So this
    model keeps no mappings at all, only those regions (and the kernel's tables)."""

    __slots__ = ("refs",)

    def __init__(self, name: str, geometry: Geometry, bootstrap: int) -> None:
        super().__init__(name, geometry, bootstrap)
        self.leaky = True
        self.most_user_frames = 1
        self.refs: dict[int, int] = {}  # user pmap -> references

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
