"""Memory pressure: ``machine.free_frames``, the frame models and the generators that drive
the pool to its edge (ENOMEM on ``canfail`` enters) without a false divergence."""

from __future__ import annotations

import pytest

from difftest import streams
from difftest.errors import StreamError
from difftest.harness import Harness
from difftest.legality import vm_legality_problems
from difftest.backend import Geometry
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
from difftest.plugins import PluginHost
from difftest.streams import Stream, validate_ops
from strategies.pager import generate_pager
from strategies.pressure import ALPHA_LIKE, ARM32_LIKE, MIB, PressureModels
from strategies.seeded import generate, generate_pressure

KNOWN_LEAK = "resource:arm32-leaky:"


@pytest.fixture(scope="module")
def host():
    h = PluginHost()
    h.load()
    return h


def test_free_frames_reserves_the_rest_of_the_machine_and_round_trips():
    ops = (Create(), Enter(1, 0x00400000, 0x00020000, 3), Enter(1, 0x00800000, 0x00003000, 3))
    s = Stream(ops, 64, {}, free_frames=10)
    assert s.named_frames() == {0x20, 0x3}
    data = s.data_frames()
    assert len(data) == 64 - 10 and {0x20, 0x3} <= data
    assert data == set(range(54))  # the named 3 and 32, and the 52 lowest unnamed frames
    back = streams.loads(streams.dumps(s))
    assert back.free_frames == 10 and back.data_frames() == data
    assert streams.stream_to_json(s)["machine"] == {"phys_pages": 64, "free_frames": 10}
    assert "free_frames" not in streams.stream_to_json(s.replace(free_frames=None))["machine"]
    # more free frames than the machine has beside the named pages: nothing more is held
    assert Stream(ops, 64, {}, free_frames=63).data_frames() == {0x20, 0x3}


@pytest.mark.parametrize("bad", [-1, 65, "3", 1.5, True])
def test_free_frames_must_be_a_frame_count(bad):
    doc = {"format": streams.STREAM_FORMAT, "machine": {"phys_pages": 64, "free_frames": bad}, "ops": []}
    with pytest.raises(StreamError, match="machine.free_frames"):
        streams.stream_from_json(doc)


def test_a_pool_with_free_frames_runs_out_where_the_stream_says():
    # 4 free frames: arm32 bootstraps with 4 (kernel L1) and cannot create a pmap; alpha
    # takes 1 at bootstrap, and its first user mapping needs 3 (L1, L2, L3): it fits once,
    # then a mapping in another 1 GiB region (L2 + L3) gets ENOMEM.
    ops = (Create(), Enter(1, 0x00400000, 0x00200000, 3, canfail=True),
           Enter(1, 0x40000000, 0x00201000, 3, canfail=True))
    h = PluginHost()
    h.load()
    result = Harness.from_registry(h.registry, ["alpha-ref"]).run(Stream(ops, 8192, {}, free_frames=4))
    assert result.divergences == []
    assert result.allowed_counts[("alpha-ref", "enomem")] == 1
    assert result.stopped == {}


def test_frame_models_follow_the_geometries_and_their_own_enomem():
    pm = PressureModels(free_frames=9)
    arm, leaky, alpha = pm.models
    for op in (Create(), Enter(1, 0x00400000, 0x00200000, 3, canfail=True)):
        pm.apply(op)
    assert (arm.used, leaky.used, alpha.used) == (4 + 4 + 1, 4 + 4 + 1, 1 + 3)
    assert pm.room() == 0 and pm.all_full() is False  # alpha still has 5
    pm.apply(Enter(1, 0x00c00000, 0x00201000, 3, canfail=True))  # a new 4 MiB region
    assert (arm.used, alpha.used) == (9, 5)  # arm32 got ENOMEM: nothing changed there
    pm.apply(Remove(1, 0x00400000, 0x00401000))
    assert (arm.used, leaky.used, alpha.used) == (8, 9, 4)  # the leaky shape frees nothing
    pm.apply(Remove(1, 0x00c00000, 0x00c01000))
    pm.apply(Destroy(1))
    assert (arm.used, leaky.used, alpha.used) == (4, 4, 1)
    assert pm.can_create() is True


def test_pressure_streams_are_legal_and_reach_enomem_without_divergence(host):
    harness = Harness.from_registry(host.registry)
    reached: dict[str, int] = {}
    for seed in range(6):
        stream = generate_pressure(seed, 1500)
        validate_ops(stream.ops, stream.phys_pages)
        assert vm_legality_problems(stream) == []
        assert stream.free_frames is not None and stream.origin["generator"] == "pressure"
        result = harness.run(stream)
        assert result.stopped == {}  # creates and kenters never run out: every enter is canfail
        assert [s for s in result.signatures() if not s.startswith(KNOWN_LEAK)] == []
        enomem = {b for (b, kind), n in result.allowed_counts.items() if kind == "enomem" and n}
        assert enomem, seed  # every pressure stream reaches the edge of some backend
        for backend in enomem:
            reached[backend] = reached.get(backend, 0) + 1
    # the leaky one always (it never frees); the others in most streams
    assert reached["arm32-leaky"] == 6 and reached["alpha-ref"] >= 4 and reached["arm32-refcount"] >= 3, reached


def test_the_random_swarm_has_a_pressure_dimension():
    shaped = [generate(seed, 50).free_frames is not None for seed in range(40)]
    assert 10 < sum(shaped) < 35  # drawn per stream from the seed
    plain = generate(next(s for s, p in enumerate(shaped) if not p), 300)
    assert plain.free_frames is None and "pressure" not in plain.origin
    assert generate(3, 300, pressure=False).free_frames is None


class ContractFrames:
    """The frame model as first written, on the harness's ContractState (what a pmap needs
    for its live mappings under a geometry): the reference the lean ``FrameModel`` is held to."""

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


def test_frame_models_agree_with_the_contract_state_reference():
    """The lean frame models hold the frames ContractState says, enter by enter: the same
    ``used`` after every op and the same ``extra`` for the op's place and others, ENOMEMs
    (a model past its edge), collects and page-outs included."""
    cases = ([generate_pressure(seed, 700) for seed in range(4)] + [generate(seed, 500, pressure=False) for seed in range(2)]
             + [generate_pager(seed, 700, 256) for seed in range(2)])
    probes = (0x00400000, 0x00600000, 0x3FFFF000, 0x40000000, 0xC0400000)
    for stream in cases:
        free = stream.free_frames if stream.free_frames is not None else 40
        pm = PressureModels(free)
        ref = [ContractFrames("arm32-refcount", ARM32_LIKE, 4), ContractFrames("arm32-leaky", ARM32_LIKE, 4, True),
               ContractFrames("alpha-ref", ALPHA_LIKE, 1)]
        next_id = 1
        for op in stream.ops:
            pm.apply(op)
            if type(op) is Create:
                for r in ref:
                    r.create(next_id)
                next_id += 1
            else:
                for r in ref:
                    r.apply(op, free)
            va = getattr(op, "va", getattr(op, "sva", None))
            for m, r in zip(pm.models, ref):
                assert m.used == r.used, (m.name, op)
                for pmap in r.state.maps:
                    for probe in (probes if va is None else (va,) + probes):
                        if pmap != KERNEL_PMAP and probe >= 0xC0000000:
                            continue
                        assert m.extra(pmap, probe) == r.extra(pmap, probe), (m.name, op, pmap, probe)
                        assert m.extra(pmap, probe) <= m.most_user_frames  # (partial's shortcut)
