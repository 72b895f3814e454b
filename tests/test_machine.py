"""The simulated machine's physical-memory pool (MODEL.md section 2)."""

from __future__ import annotations

import pytest

from difftest.machine import (
    NO_OWNER,
    FrameError,
    OutOfMemory,
    PhysPool,
    PoolSnapshot,
    Tag,
)


def test_new_pool_is_all_free_and_conserved():
    pool = PhysPool(32)
    assert pool.free_frames == pool.count(Tag.FREE) == 32
    assert all(pool.count(t) == 0 for t in Tag if t != Tag.FREE)
    assert pool.allocs == pool.frees == 0
    assert pool.violations == []
    assert pool.check_conservation() == []


@pytest.mark.parametrize("n", [0, -1])
def test_pool_size_must_be_positive(n):
    with pytest.raises(ValueError):
        PhysPool(n)


def test_alloc_free_and_count_by_tag():
    pool = PhysPool(16)
    pt = [pool.alloc(Tag.PT, owner=1) for _ in range(3)]
    l1 = pool.alloc(Tag.L1, owner=1)
    meta = pool.alloc(Tag.META)
    assert len({*pt, l1, meta}) == 5
    assert (pool.count(Tag.PT), pool.count(Tag.L1), pool.count(Tag.META)) == (3, 1, 1)
    assert pool.free_frames == 11
    assert [pool.tag_of(f) for f in pt] == [Tag.PT] * 3
    assert pool.tag_of(l1) == Tag.L1
    assert pool.owner_of(l1) == 1 and pool.owner_of(meta) == NO_OWNER
    assert pool.frames_with(Tag.PT) == sorted(pt)

    pool.free(pt[1], Tag.PT)
    pool.free(meta)  # the tag is optional
    assert pool.count(Tag.PT) == 2 and pool.count(Tag.META) == 0
    assert pool.free_frames == 13
    assert pool.tag_of(pt[1]) == Tag.FREE and pool.owner_of(pt[1]) == NO_OWNER
    assert (pool.allocs, pool.frees) == (5, 2)
    assert pool.check_conservation() == []


def test_cannot_allocate_a_frame_as_free():
    pool = PhysPool(16)
    with pytest.raises(ValueError):
        pool.alloc(Tag.FREE)
    assert pool.allocs == 0 and pool.check_conservation() == []


def test_held_per_owner():
    pool = PhysPool(16)
    a = [pool.alloc(Tag.PT, owner=1), pool.alloc(Tag.PT, owner=1)]
    l1 = pool.alloc(Tag.L1, owner=1)
    b = pool.alloc(Tag.PT, owner=2)
    pool.alloc(Tag.META)
    assert pool.held(1, Tag.PT) == 2 and pool.held(1, Tag.L1) == 1
    assert pool.held(2, Tag.PT) == 1 and pool.held(2, Tag.L1) == 0
    assert pool.held(NO_OWNER, Tag.META) == 1
    assert pool.held(3, Tag.PT) == 0
    assert pool.held_by(1) == {"pt": 2, "l1": 1}
    assert pool.held_by(2) == {"pt": 1}
    assert pool.held_by(3) == {}
    assert pool.frames_with(Tag.PT, owner=1) == sorted(a)
    assert pool.frames_with(Tag.PT, owner=2) == [b]

    for f in a:
        pool.free(f, Tag.PT)
    pool.free(l1, Tag.L1)
    assert pool.held(1, Tag.PT) == 0 and pool.held_by(1) == {}
    assert pool.held_by(2) == {"pt": 1}
    assert pool.check_conservation() == []


def test_out_of_memory_leaves_the_pool_unchanged():
    pool = PhysPool(16)
    frames = [pool.alloc(Tag.PT, owner=1) for _ in range(16)]
    assert sorted(frames) == list(range(16))
    assert not pool.has_free() and pool.free_frames == 0
    before = pool.snapshot()
    with pytest.raises(OutOfMemory):
        pool.alloc(Tag.PT, owner=1)
    assert pool.snapshot() == before
    assert pool.violations == []  # running out is not a misuse
    pool.free(frames[7])
    assert pool.has_free(1) and not pool.has_free(2)
    assert pool.alloc(Tag.L1, owner=2) == frames[7]


def test_reserve_data_same_frame_numbers_in_every_pool():
    data = [3, 9, 4, 9]  # duplicates are fine
    pools = [PhysPool(16), PhysPool(16)]
    for pool in pools:
        pool.reserve_data(data)
        assert pool.count(Tag.DATA) == 3 and pool.free_frames == 13
        assert pool.frames_with(Tag.DATA) == [3, 4, 9]
        assert pool.check_conservation() == []
        # Allocation never hands out a reserved frame, and is the same in every pool.
        got = [pool.alloc(Tag.PT, owner=1) for _ in range(13)]
        assert not set(got) & {3, 4, 9}
        with pytest.raises(OutOfMemory):
            pool.alloc(Tag.PT)
    assert pools[0].snapshot() == pools[1].snapshot()
    assert pools[0].held_by(NO_OWNER) == {}  # data frames are not page-table memory


def test_reserve_data_refuses_bad_frames_without_changing_anything():
    pool = PhysPool(16)
    taken = pool.alloc(Tag.PT, owner=1)
    before = pool.snapshot()
    with pytest.raises(ValueError):
        pool.reserve_data([5, 16])  # 16 is outside the pool
    with pytest.raises(ValueError):
        pool.reserve_data([5, taken])  # not free
    with pytest.raises(ValueError):
        pool.reserve_data([-1])
    assert pool.snapshot() == before and pool.count(Tag.DATA) == 0
    pool.reserve_data([])
    assert pool.snapshot() == before


def test_reserved_data_frame_can_be_freed():
    # A paging workload frees data frames (MODEL.md section 7).
    pool = PhysPool(16)
    pool.reserve_data([5, 6])
    pool.free(5, Tag.DATA)
    pool.free(6)
    assert pool.count(Tag.DATA) == 0 and pool.free_frames == 16
    assert pool.violations == []
    assert pool.check_conservation() == []


def test_data_frame_allocated_by_a_workload_is_not_page_table_memory():
    pool = PhysPool(16)
    f = pool.alloc(Tag.DATA, owner=1)
    assert pool.held_by(1) == {}
    assert pool.held(1, Tag.DATA) == 1
    pool.free(f, Tag.DATA)
    assert pool.check_conservation() == []


def test_double_free_raises_and_is_recorded():
    pool = PhysPool(16)
    f = pool.alloc(Tag.PT, owner=1)
    pool.free(f, Tag.PT)
    before = pool.snapshot()
    with pytest.raises(FrameError, match="already free"):
        pool.free(f, Tag.PT)
    assert len(pool.violations) == 1 and "double free" in pool.violations[0]
    assert pool.snapshot() == before  # the failed free changed nothing (frees still 1)
    assert pool.frees == 1
    assert pool.check_conservation() == []


def test_freeing_a_never_allocated_frame_raises_and_is_recorded():
    pool = PhysPool(16)
    before = pool.snapshot()
    with pytest.raises(FrameError):
        pool.free(4)
    with pytest.raises(FrameError):
        pool.free(4, Tag.PT)
    assert len(pool.violations) == 2
    assert all("0x4" in v for v in pool.violations)
    assert pool.snapshot() == before


@pytest.mark.parametrize("frame", [-1, 16, 1 << 40])
def test_freeing_a_frame_outside_the_pool_raises_and_is_recorded(frame):
    pool = PhysPool(16)
    with pytest.raises(FrameError, match="outside"):
        pool.free(frame)
    assert len(pool.violations) == 1
    assert pool.check_conservation() == []


def test_wrong_tag_free_raises_is_recorded_and_keeps_the_frame():
    pool = PhysPool(16)
    f = pool.alloc(Tag.PT, owner=1)
    before = pool.snapshot()
    with pytest.raises(FrameError) as excinfo:
        pool.free(f, Tag.L1)
    assert "l1" in str(excinfo.value) and "pt" in str(excinfo.value)
    assert pool.violations == [str(excinfo.value)]
    assert pool.snapshot() == before
    assert pool.tag_of(f) == Tag.PT and pool.held(1, Tag.PT) == 1
    pool.free(f, Tag.PT)  # the right tag still works
    assert pool.check_conservation() == []


def test_violations_survive_a_swallowed_exception():
    pool = PhysPool(16)
    try:
        pool.free(3)
    except FrameError:
        pass  # a sloppy backend
    assert len(pool.violations) == 1


def test_check_conservation_on_a_healthy_pool_after_churn():
    pool = PhysPool(64)
    pool.reserve_data(range(0, 64, 7))
    live: list[int] = []
    for i in range(200):
        if live and i % 3 == 0:
            pool.free(live.pop(i % len(live)))
        elif pool.has_free():
            live.append(pool.alloc((Tag.PT, Tag.L1, Tag.META)[i % 3], owner=i % 4))
        assert pool.check_conservation() == []


def test_check_conservation_catches_a_count_out_of_step():
    pool = PhysPool(16)
    pool.alloc(Tag.PT, owner=1)
    pool._counts[Tag.PT] += 1
    problems = pool.check_conservation()
    assert any("pt" in p for p in problems)
    assert any("not conserved" in p for p in problems)


def test_check_conservation_catches_a_retagged_frame():
    pool = PhysPool(16)
    f = pool.alloc(Tag.PT, owner=1)
    pool._tags[f] = Tag.L1  # a tag changed behind the pool's back
    problems = pool.check_conservation()
    assert any("l1" in p for p in problems) and any("pt" in p for p in problems)


def test_check_conservation_catches_a_corrupt_free_list():
    pool = PhysPool(16)
    pool._free.append(pool._free[0])  # a frame twice on the free list
    assert any("free list" in p for p in pool.check_conservation())

    pool = PhysPool(16)
    f = pool.alloc(Tag.PT)
    g = pool._free[-1]
    pool._free[-1] = f  # a frame in use on the free list, a free one missing from it
    assert pool.tag_of(g) == Tag.FREE
    assert any("in use" in p for p in pool.check_conservation())


def test_check_conservation_catches_per_owner_counts_out_of_step():
    pool = PhysPool(16)
    pool.alloc(Tag.PT, owner=1)
    pool._held[(2, int(Tag.PT))] = 1
    assert any("per-owner" in p for p in pool.check_conservation())


def test_snapshot_equality():
    a, b = PhysPool(16), PhysPool(16)
    assert a.snapshot() == b.snapshot()
    assert isinstance(a.snapshot(), PoolSnapshot)
    hash(a.snapshot())  # a value: usable as a key
    fa = a.alloc(Tag.PT, owner=1)
    assert a.snapshot() != b.snapshot()
    fb = b.alloc(Tag.PT, owner=1)
    assert fa == fb and a.snapshot() == b.snapshot()
    # Same frames, different owner: different state.
    c = PhysPool(16)
    c.alloc(Tag.PT, owner=2)
    assert c.snapshot() != a.snapshot()
    # Alloc then free returns the frames but not the counters: a snapshot sees the history.
    snap = a.snapshot()
    a.free(a.alloc(Tag.META))
    assert a.snapshot() != snap
    assert a.snapshot().tags == snap.tags and a.snapshot().free_list == snap.free_list
    # A snapshot does not change when the pool does.
    frozen = b.snapshot()
    b.alloc(Tag.L1)
    assert frozen.tags == a.snapshot().tags


def test_a_copy_is_the_same_pool_and_independent_of_it():
    pool = PhysPool(16)
    pool.reserve_data([3, 4, 9])
    pt = pool.alloc(Tag.PT, owner=1)
    copy = pool.copy()
    assert copy.snapshot() == pool.snapshot() and copy.tag_counts == pool.tag_counts
    assert copy.held(1, Tag.PT) == 1 and copy.free_frames == pool.free_frames == 12
    # Each goes its own way: the same allocation order, nothing shared.
    assert copy.alloc(Tag.L1, owner=2) == pool.alloc(Tag.L1, owner=2)
    copy.free(pt)
    assert pool.tag_of(pt) == Tag.PT and pool.held(1, Tag.PT) == 1 and copy.held(1, Tag.PT) == 0
    assert copy.tag_counts[Tag.PT] == 0 and pool.tag_counts[Tag.PT] == 1  # (the live view follows its own pool)
    assert copy.check_conservation() == [] and pool.check_conservation() == []
    with pytest.raises(FrameError):
        copy.free(pt)
    assert copy.violations and not pool.violations


def test_reserving_most_of_a_pool_keeps_the_free_list_in_its_order():
    # Under memory pressure nearly every frame is reserved (done at C speed): what is left
    # is handed out as from a pool that never had the reserved frames.
    pool = PhysPool(64)
    pool.reserve_data(set(range(60)) | {62})
    assert pool.free_frames == 3 and pool.frames_with(Tag.FREE) == [60, 61, 63]
    assert [pool.alloc(Tag.PT) for _ in range(3)] == [60, 61, 63]
    assert pool.check_conservation() == []


def test_allocation_order_is_ascending_then_lifo():
    pool = PhysPool(16)
    assert [pool.alloc(Tag.PT) for _ in range(4)] == [0, 1, 2, 3]
    pool.free(1)
    pool.free(3)
    assert pool.alloc(Tag.PT) == 3  # last freed, first reused
    assert pool.alloc(Tag.PT) == 1
    assert pool.alloc(Tag.PT) == 4


def test_allocation_order_depends_only_on_the_pools_own_history():
    def run(pool: PhysPool) -> list[int]:
        got = []
        live: list[int] = []
        for i in range(300):
            if live and i % 5 in (1, 3):
                pool.free(live.pop((i * 7) % len(live)))
            else:
                frame = pool.alloc(Tag.PT if i % 2 else Tag.L1, owner=i % 3)
                live.append(frame)
                got.append(frame)
        return got

    first, second = PhysPool(512), PhysPool(512)
    assert run(first) == run(second)
    assert first.snapshot() == second.snapshot()


def test_frames_with_finds_few_and_many_frames_alike():
    """frames_with finds a rare tag one frame at a time and a common one in one sweep: both
    give every frame of the tag, ascending, as reading each frame's tag does."""
    pool = PhysPool(100)
    pool.reserve_data([7, 50, 99])
    pts = [pool.alloc(Tag.PT, owner=1 + i % 3) for i in range(60)]  # many PT frames
    pool.alloc(Tag.L1, owner=2)  # one L1 frame
    for frame in pts[::4]:  # and a free list in pieces
        pool.free(frame, Tag.PT)
    for tag in Tag:
        expected = [f for f in range(100) if pool.tag_of(f) == tag]
        assert pool.frames_with(tag) == expected, tag
        assert pool.frames_with(tag, owner=2) == [f for f in expected if pool.owner_of(f) == 2]
    counts = {tag: pool.count(tag) for tag in Tag}
    assert counts[Tag.PT] * 5 >= 100 and 0 < counts[Tag.L1] * 5 < 100 and counts[Tag.META] == 0  # both ways
