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
    Collect,
    Create,
    Destroy,
    Enter,
    KEnter,
    KRemove,
    Op,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
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


class FrameModel:
    """Frames one pmap shape holds along a stream, from ``free_frames`` down."""

    __slots__ = ("name", "state", "leaky", "bootstrap", "used", "kregions", "touched", "_spans")

    def __init__(self, name: str, geometry: Geometry, bootstrap: int, leaky: bool = False) -> None:
        self.name = name
        self.state = ContractState(geometry)
        self.leaky = leaky
        self.bootstrap = bootstrap
        self.used = bootstrap  # frames held: bootstrap, user tables, kernel tables
        self._spans = tuple((lvl.span, lvl.frames) for lvl in geometry.levels[1:])
        self.kregions: set[tuple[int, int]] = set()  # kernel tables: never freed
        self.touched: dict[int, set[int]] = {}  # leaky: pmap -> 4 MiB regions ever mapped

    def _user_frames(self, pmap: int) -> int:
        if self.leaky:
            return self.state.create_frames() + len(self.touched.get(pmap, ()))
        return self.state.needed_frames(pmap, Tag.PT) + self.state.needed_frames(pmap, Tag.L1)

    def extra(self, pmap: int, va: int) -> int:
        """Frames an enter at (pmap, va) takes now."""
        if pmap == KERNEL_PMAP:
            return sum(f for i, (span, f) in enumerate(self._spans) if (i, va // span) not in self.kregions)
        if self.leaky:
            if va in self.state.maps[pmap]:
                return 0
            return 0 if va // (4 * MIB) in self.touched[pmap] else 1
        return self.state.extra_frames_for(pmap, va)

    def create(self, pmap: int) -> None:
        self.state.create(pmap)
        self.touched[pmap] = set()
        self.used += self.state.create_frames()

    def create_cost(self) -> int:
        return self.state.create_frames()

    def apply(self, op: Op, free_frames: int) -> None:
        st = self.state
        t = type(op)
        if t is Enter or t is KEnter:
            pmap = op.pmap if t is Enter else KERNEL_PMAP
            need = self.extra(pmap, op.va)
            if need > free_frames - self.used:
                return  # ENOMEM (canfail) or out of memory: nothing changes in this model
            if pmap == KERNEL_PMAP:
                for i, (span, _) in enumerate(self._spans):
                    self.kregions.add((i, op.va // span))
                self.used += need
                st.put(pmap, op.va, (op.pa, op.prot, True, t is Enter))
                return
            st.put(pmap, op.va, (op.pa, op.prot, bool(op.wired), True))
            if self.leaky:
                self.touched[pmap].add(op.va // (4 * MIB))
            self.used += need  # exactly the tables the enter makes
        elif t is Remove or (t is Protect and not op.prot & PROT_R):
            self._drop(op.pmap, st.in_range(op.pmap, op.sva, op.eva))
        elif t is Collect:
            # The built-ins' collect drops every non-wired user mapping (and with them,
            # in the shapes that free tables, the tables); the leaky shape frees nothing.
            if not self.leaky and op.pmap != KERNEL_PMAP:
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
                self.touched.pop(op.pmap, None)
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


class PressureModels:
    """The frame models of the built-in shapes, fed every op of a stream."""

    __slots__ = ("free_frames", "models", "next_id")

    def __init__(self, free_frames: int) -> None:
        self.free_frames = free_frames
        self.models = (
            FrameModel("arm32-refcount", ARM32_LIKE, bootstrap=4),
            FrameModel("arm32-leaky", ARM32_LIKE, bootstrap=4, leaky=True),
            FrameModel("alpha-ref", ALPHA_LIKE, bootstrap=1),
        )
        self.next_id = 1

    def apply(self, op: Op) -> None:
        if type(op) is Create:  # ids 1, 2, 3, ... as the harness gives them
            pmap = self.next_id
            self.next_id += 1
            for m in self.models:
                m.create(pmap)
            return
        for m in self.models:
            m.apply(op, self.free_frames)

    def room(self) -> int:
        """Frames still free in the tightest model."""
        return min(self.free_frames - m.used for m in self.models)

    def fits_everywhere(self, pmap: int, va: int, margin: int = 0) -> bool:
        """An op that cannot fail gracefully (kenter) fits in every model."""
        return all(self.free_frames - m.used - m.extra(pmap, va) >= margin for m in self.models)

    def can_create(self, margin: int = 0) -> bool:
        return all(self.free_frames - m.used - m.create_cost() >= margin for m in self.models)

    def past_edge(self, pmap: int, va: int) -> bool:
        """An enter at (pmap, va) would get ENOMEM in some model."""
        return any(m.extra(pmap, va) > self.free_frames - m.used for m in self.models)

    def near_edge(self, frames: int = 2) -> bool:
        """Some model has a few frames left, but not none."""
        return any(0 < self.free_frames - m.used <= frames for m in self.models)

    def partial(self, pmap: int, va: int) -> bool:
        """An enter at (pmap, va) needs more frames than some model has, while that model
        still has some: the path that allocates part of a table walk and must undo it."""
        for m in self.models:
            room = self.free_frames - m.used
            if 0 < room < m.extra(pmap, va):
                return True
        return False

    def all_full(self, slack: int = 0) -> bool:
        """Every model has at most ``slack`` free frames."""
        return all(self.free_frames - m.used <= slack for m in self.models)

