"""Memory pressure: ``machine.free_frames``, the frame models and the generators that drive
the pool to its edge (ENOMEM on ``canfail`` enters) without a false divergence."""

from __future__ import annotations

import pytest

from difftest import streams
from difftest.errors import StreamError
from difftest.harness import Harness
from difftest.legality import vm_legality_problems
from difftest.machine import KERNEL_PMAP, Tag
from difftest.ops import Create, Destroy, Enter, Remove
from difftest.plugins import PluginHost
from difftest.streams import Stream, validate_ops
from strategies.pager import generate_pager
from strategies.pressure import PressureModels
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


def test_frame_models_hold_what_the_builtin_backends_hold_op_by_op():
    """Each frame model is the shape of a built-in backend: run the same streams through
    the harness, and after every op the model's frames (bootstrap, kernel and user tables)
    are the page-table and L1 frames that backend's pool has in use, ENOMEMs (a model past
    its edge), collects, page-outs and exits included."""
    host = PluginHost()
    host.load()
    cases = ([generate_pressure(seed, 700) for seed in range(4)]
             + [generate(seed, 500, pressure=False).replace(free_frames=40) for seed in range(2)]
             + [generate_pager(seed, 700, 256).replace(free_frames=40) for seed in range(2)])
    probes = (0x00400000, 0x00600000, 0x3FFFF000, 0x40000000)
    for stream in cases:
        models = PressureModels(stream.free_frames)
        run = Harness.from_registry(host.registry, [m.name for m in models.models]).start(stream)
        for index, op in enumerate(stream.ops):
            run.step(index, op)
            models.apply(op)
            for model, lane in zip(models.models, run.lanes):
                if lane.stopped is not None:  # out of memory at a kenter of a stream not shaped for pressure
                    assert "out of memory" in lane.stopped and stream.origin.get("generator") != "pressure"
                    continue
                assert lane.pool.count(Tag.PT) + lane.pool.count(Tag.L1) == model.used, (model.name, index, op)
                for pmap, refs in run.refs.items():
                    if pmap != KERNEL_PMAP and refs:
                        assert all(model.extra(pmap, va) <= model.most_user_frames for va in probes)  # (partial's)
