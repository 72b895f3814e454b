"""``difftest.coverage.stream_stats`` against a slow, obviously correct reference.

``stream_stats`` is on every fuzz worker's per-stream path, so it counts in one pass with
the bookkeeping folded into its model.  The reference here recounts everything from the
plain ``VMModel``'s state after each op (live mappings, mappings and pmaps per page, the
4 MiB regions each pmap has) and reads each counter's definition (``DEPTH_FIELDS``) as
plainly as it can; the two must agree on every key, in order, for streams from every
built-in generator, mutants and Hypothesis-drawn streams.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings

from difftest import streams
from difftest.coverage import DEPTH_FIELDS, stream_stats
from difftest.feedback import Recipe, build_stream
from difftest.legality import VMModel
from difftest.machine import KERNEL_PMAP
from difftest.ops import (
    PROT_R,
    PROT_W,
    Access,
    Collect,
    Create,
    Destroy,
    Enter,
    Extract,
    KEnter,
    KRemove,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
    Update,
)
from difftest.streams import Stream
from strategies.hypothesis_ops import op_streams
from strategies.pager import generate_pager
from strategies.seeded import generate, generate_pressure
from strategies.strace import convert
from strategies.trace import generate_trace

MIB = 1 << 20
PAGE = 4096
STRACE = Path(__file__).resolve().parent / "data" / "strace"


def _edge(addr: int) -> int:
    if addr % (4 * MIB) in (0, 4 * MIB - PAGE):
        return 4
    if addr % (2 * MIB) in (0, 2 * MIB - PAGE):
        return 2
    return 0


def reference_stats(stream: Stream) -> dict[str, Any]:
    """``stream_stats`` recounted from the VM's view after every op (slow: O(state) per op)."""
    m = VMModel()
    depth = dict.fromkeys(DEPTH_FIELDS, 0)
    shared: set[int] = set()
    regions: set[tuple[int, int]] = set()
    history: list[tuple[Any, bool]] = []  # (op, a remove that unmapped a live mapping)

    def regions_held() -> set[tuple[int, int]]:
        return {(p, va // (4 * MIB)) for p, table in m.maps.items() for va in table}

    for op in stream.ops:
        t = type(op)
        before = regions_held()
        pmap = getattr(op, "pmap", None)
        mapped_before = len(m.maps[pmap]) if pmap in m.maps else None
        if t in (Remove, Protect, KRemove):
            sva, eva = (op.va, op.va + op.size) if t is KRemove else (op.sva, op.eva)
            edge = max(_edge(sva), _edge(eva - PAGE))
            for name, size in (("1mib", MIB), ("2mib", 2 * MIB), ("4mib", 4 * MIB)):
                depth["ranges_crossing_" + name] += sva // size != (eva - 1) // size
        else:
            edge = _edge(op.va) if hasattr(op, "va") else 0
        depth["edge_ops_4mib"] += edge == 4
        depth["edge_ops_2mib"] += edge == 2
        if t is Enter:
            old = m.maps[op.pmap].get(op.va) if op.pmap in m.maps else None
            depth["remaps"] += old is not None and old[0] != op.pa
            depth["reenters"] += old is not None and old[0] == op.pa
            depth["wired_enters"] += op.wired
            depth["canfail_enters"] += op.canfail
            depth["kernel_enters"] += op.pmap == KERNEL_PMAP
            regions.add((op.pmap, op.va // (4 * MIB)))
        elif t is PageProtect:
            depth["page_protects_readonly"] += bool(op.prot & PROT_R) and not op.prot & PROT_W
            depth["page_protects_revoke"] += not op.prot & (PROT_R | PROT_W)
            depth["page_protects_of_mapped"] += bool(m.mappings_of(op.pa))
        elif t is Destroy and m.refs.get(op.pmap) == 1:
            depth["destroys"] += 1
            # the ops on this pmap right before it (destroys aside): removes, one of them
            # unmapping something
            for earlier, unmapped in reversed(history):
                if getattr(earlier, "pmap", None) != op.pmap or type(earlier) is Destroy:
                    continue
                if type(earlier) is not Remove:
                    break
                if unmapped:
                    depth["exits_with_mappings"] += 1
                    break
        depth["unwires"] += t is Unwire
        depth["collects"] += t is Collect
        depth["pmaps_created"] += t is Create
        depth["kenters"] += t is KEnter
        depth["kremoves"] += t is KRemove
        try:
            m.apply(op)
        except KeyError:  # an op on a pmap the stream never made
            pass
        mapped_after = len(m.maps[pmap]) if pmap in m.maps else 0
        history.append((op, t is Remove and mapped_before is not None and mapped_after < mapped_before))
        depth["empties_4mib"] += len(before - regions_held())
        depth["max_live_pmaps"] = max(depth["max_live_pmaps"], len(m.refs))
        depth["max_live_mappings"] = max(depth["max_live_mappings"], sum(len(t) for t in m.maps.values()))
        for pa, entries in m.pa_maps.items():
            pmaps = {p for p, _ in entries}
            if len(pmaps) >= 2:
                shared.add(pa)
            depth["max_sharing"] = max(depth["max_sharing"], len(pmaps) if len(pmaps) >= 2 else 0)
            depth["max_page_mappings"] = max(depth["max_page_mappings"], len(entries))
    depth["shared_pages"] = len(shared)
    depth["regions_4mib"] = len(regions)
    return {
        "ops": len(stream.ops),
        "phys_pages": stream.phys_pages,
        "data_pages": len(stream.data_frames()),
        "op_kinds": dict(sorted(Counter(op.name for op in stream.ops).items())),
        "depth": depth,
    }


def assert_same(stream: Stream) -> None:
    got, want = stream_stats(stream), reference_stats(stream)
    assert json.dumps(got) == json.dumps(want), (got, want)  # key order too


def test_hand_made_stream_with_ops_on_pmaps_never_made():
    """Hand-computed: exits, kernel mappings, a page shared by three pmaps, and ops naming
    pmaps that do not exist (which ``validate_ops`` refuses; the statistics skip them)."""
    ops = [
        Enter(3, 0x00400000, 0x10000, 3),  # pmap 3 does not exist yet: counted, not applied
        Create(), Create(), Create(),
        Enter(1, 0x00400000, 0x10000, 3, 0, True),  # 4 MiB edge, wired
        Enter(2, 0x00401000, 0x10000, 1),  # shared by 2
        Enter(3, 0x005FF000, 0x10000, 1, 0, False, True),  # page below 6 MiB: 2 MiB edge; by 3
        Enter(1, 0x00400000, 0x10000, 3, 0, True),  # a re-enter (same page)
        Enter(1, 0x00402000, 0x10000, 3),  # the page's 4th mapping
        Reference(2), Destroy(2),  # not the last reference
        Remove(2, 0x00400000, 0x00402000),  # unmaps pmap 2's mapping: empties its region
        Update(2), Remove(2, 0x00400000, 0x00402000),  # an update between: not an exit
        Destroy(2),  # the last reference, no remove that unmapped right before
        Remove(3, 0x005FF000, 0x00600000),  # unmaps; 2 MiB edge, crosses no 1 MiB boundary
        Remove(3, 0x00400000, 0x00401000),  # unmaps nothing, after a remove that did
        Extract(7, 0x1000), Access(7, 0x1000, "r"), Unwire(7, 0x1000),  # pmap 7: never made
        Destroy(3),  # the last reference right after removes, one unmapping: an exit
        Enter(0, 0xC0400000, 0x20000, 3), KEnter(0xC2000000, 0x21000, 3),
        KRemove(0xC1FFF000, 2 * PAGE),  # crosses 1, 2 and 4 MiB; 4 MiB edge
        PageProtect(0x10000, PROT_R),  # pmap 1's two mappings stay
        PageProtect(0x20000, 0),  # revokes the kernel's managed mapping: empties its region
        Collect(1),
    ]
    stream = Stream(tuple(ops), phys_pages=64)
    doc = stream_stats(stream)
    assert doc["ops"] == 27 and doc["data_pages"] == 3
    assert doc["op_kinds"] == {"access": 1, "collect": 1, "create": 3, "destroy": 3, "enter": 7, "extract": 1,
                               "kenter": 1, "kremove": 1, "page_protect": 2, "reference": 1, "remove": 4,
                               "unwire": 1, "update": 1}
    assert doc["depth"] == dict(
        edge_ops_4mib=9, edge_ops_2mib=2, remaps=0, reenters=1, shared_pages=1, max_sharing=3,
        max_page_mappings=4, ranges_crossing_1mib=1, ranges_crossing_2mib=1, ranges_crossing_4mib=1,
        wired_enters=2, unwires=1, canfail_enters=1, collects=1, page_protects_revoke=1,
        page_protects_readonly=1, page_protects_of_mapped=2, empties_4mib=3, destroys=2,
        exits_with_mappings=1, pmaps_created=3, max_live_pmaps=3, max_live_mappings=4, regions_4mib=4,
        kenters=1, kernel_enters=1, kremoves=1,
    )
    assert list(doc["depth"]) == list(DEPTH_FIELDS)
    assert_same(stream)


def test_seeded_generators():
    for seed in range(4):
        assert_same(generate(seed, 1000))
        assert_same(generate(seed, 400, 512, pressure=False))
        assert_same(generate_pressure(seed, 500))
        assert_same(generate_pager(seed, 600))
        assert_same(generate_pager(seed, 500, 256))


def test_trace_generator(tmp_path):
    for log in sorted(STRACE.glob("*.strace")):
        streams.save(convert(str(log), phys_pages=8192), tmp_path / f"{log.stem}.json")
    for seed in range(6):  # the variants: recorded, other machines, a pager at work, shifted
        assert_same(generate_trace(seed, 500, 8192, str(tmp_path)))


def test_mutants():
    recipes = {0: Recipe(0)}
    rng = random.Random(3)
    for k in range(1, 8):
        recipes[k] = Recipe(k, recipes[rng.randrange(k)], rng.randrange(k) if rng.random() < 0.5 else None)
        assert_same(build_stream(recipes[k], lambda j: generate(100 + j, 400), 400, 5))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(op_streams(n_pmaps=3, max_ops=150))
def test_hypothesis_streams(stream):
    assert_same(stream)
