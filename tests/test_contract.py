"""The contract model's incremental bookkeeping against a recount from scratch.

``ContractState`` keeps, per pmap, its mappings indexed by leaf-table region (which
answer range queries), a count of mappings per region of every level between, the
page-table frames its live mappings need, pv lists and wired counts, all updated op by
op.  Here every op of a random sequence is followed by a recount from the mappings alone
(``needed_pt_frames``, a scan of the table): the two must agree, for the built-in
geometries and for a one-level and a three-level one.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difftest.backend import Geometry, Level, needed_pt_frames
from difftest.contract import MANAGED, PA, WIRED, ContractState
from difftest.machine import KERNEL_PMAP, PAGE_SIZE, Tag
from difftest.plugins import PluginHost

MiB = 1 << 20


def _builtin_geometries() -> dict[str, Geometry]:
    host = PluginHost()
    host.load()
    return {name: spec.geometry for name, spec in host.registry.backends.items()}


GEOMETRIES = {
    **{f"builtin-{name}": geo for name, geo in _builtin_geometries().items()},
    # nothing below the top: the range index has no leaf tables to lean on
    "one-level": Geometry(levels=(Level("flat", 4096 * MiB, 4096 * MiB // PAGE_SIZE),), top_level="lazy"),
    # two levels between the top and the leaves, L1-tagged leaves
    "three-level": Geometry(levels=(Level("top", 4096 * MiB, 4), Level("mid", 1024 * MiB, 64),
                                    Level("leaf", 16 * MiB, 4096, frames=2, tag=Tag.L1))),
}

# VAs in a few 16 MiB regions spread over the user space, so that tables fill and empty.
_REGIONS = (0x0040_0000, 0x0100_0000, 0x2000_0000, 0x2100_0000, 0x7F00_0000)
vas = st.builds(lambda r, i: _REGIONS[r] + i * PAGE_SIZE, st.integers(0, len(_REGIONS) - 1), st.integers(0, 40))
pmaps = st.sampled_from([KERNEL_PMAP, 1, 2])
mappings = st.tuples(st.integers(1, 6).map(lambda f: f * PAGE_SIZE), st.integers(0, 7), st.booleans(), st.booleans())
ops = st.one_of(
    st.tuples(st.just("put"), pmaps, vas, mappings),
    st.tuples(st.just("delete"), pmaps, vas),
    st.tuples(st.just("remove"), pmaps, vas, st.integers(1, 2000)),
    st.tuples(st.just("protect"), pmaps, vas, st.integers(1, 64), st.sampled_from([1, 3, 5])),
    st.tuples(st.just("empty"), pmaps),
)


def _recount(state: ContractState, geometry: Geometry) -> None:
    """Everything the state keeps incrementally, recomputed from its mappings."""
    pv: dict[int, set[tuple[int, int]]] = {}
    for pmap, table in state.maps.items():
        assert state.wired[pmap] == sum(1 for m in table.values() if m[WIRED])
        for va, m in table.items():
            if m[MANAGED]:
                pv.setdefault(m[PA], set()).add((pmap, va))
        want = needed_pt_frames(geometry, table, True)
        top = geometry.levels[0]
        if pmap == KERNEL_PMAP and not table and geometry.top_level == "lazy":
            # the kernel pmap's top-level table exists from bootstrap on, whatever the geometry
            want[top.tag] = want.get(top.tag, 0) + top.frames
        assert state.needed_pt_l1(pmap) == (want.get(Tag.PT, 0), want.get(Tag.L1, 0)), pmap
        assert state.needed(pmap) == {Tag.PT: want.get(Tag.PT, 0), Tag.L1: want.get(Tag.L1, 0)}
        ranges = [(0, 1 << 32), (0x0040_0000, 0x0040_0000 + 7 * PAGE_SIZE), (0x0100_3000, 0x2000_9000)]
        if table:  # ranges that end at a mapping and start just past one (probed or scanned)
            ranges += [(min(table), max(table)), (min(table) + PAGE_SIZE, max(table) + PAGE_SIZE)]
        for sva, eva in ranges:
            assert state.in_range(pmap, sva, eva) == sorted(va for va in table if sva <= va < eva)
    assert state.pv == pv


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(ops, max_size=60))
def test_incremental_bookkeeping_equals_a_recount(name, sequence):
    geometry = GEOMETRIES[name]
    state = ContractState(geometry)
    state.create(1)
    state.create(2)
    _recount(state, geometry)
    for step in sequence:
        kind, pmap = step[0], step[1]
        needed_before = {p: state.needed_pt_l1(p) for p in state.maps}
        epoch_before = state.need_epoch
        if kind == "put":
            va = step[2]
            # what a legitimate ENOMEM needs: the frames this enter would add
            extra = state.extra_frames_for(pmap, va)
            before = sum(state.needed_pt_l1(pmap))
            state.put(pmap, va, step[3])
            assert extra == sum(state.needed_pt_l1(pmap)) - before
        elif kind == "delete":
            state.delete(pmap, step[2])
        elif kind == "remove":
            state.remove(pmap, step[2], step[2] + step[3] * PAGE_SIZE)
        elif kind == "protect":
            state.protect(pmap, step[2], step[2] + step[3] * PAGE_SIZE, step[4])
        else:
            state.empty(pmap)
        _recount(state, geometry)
        if any(state.needed_pt_l1(p) != n for p, n in needed_before.items()):
            assert state.need_epoch > epoch_before  # the harness's frames check keys on it
