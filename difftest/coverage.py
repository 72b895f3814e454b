"""How deep a stream goes: op mix, shaping statistics and what the backends' pools saw.

``stream_stats(stream)`` looks at the ops alone (with the VM's view of the mappings from
``difftest.legality``): op kinds, region edges hit, remaps, shared pages, ranges crossing
1/2/4 MiB boundaries, wiring, collects and page_protects, pmaps and mappings alive at once.

``backend_stats(stream, specs)`` drives each backend directly on a counting pool (no
contract, no observation: cheap) and reports page-table frames allocated, freed, held at
the peak and at the end, by tag, and where a backend stopped (out of memory, crash).

``merge_stats`` adds up several streams' statistics (sums, and maxima for the ``max_``
fields).  ``difftest streams stats`` prints these; reports can reuse them.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any, Iterable, Sequence

from difftest.backend import BackendSpec
from difftest.legality import _BUCKET_SHIFT, VIEW_UNCHANGED, VMModel
from difftest.machine import KERNEL_PMAP, NO_OWNER, USER_MAX, USER_MIN, OutOfMemory, PhysPool, Tag
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
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
    Update,
)
from difftest.streams import Stream

MIB = 1 << 20
PAGE = 4096

#: the depth counters, in the order they are printed, with a one-line meaning
DEPTH_FIELDS: dict[str, str] = {
    "edge_ops_4mib": "ops with an address within one page of a 4 MiB boundary",
    "edge_ops_2mib": "ops with an address within one page of a 2 MiB (not 4 MiB) boundary",
    "remaps": "enters on a mapped VA with a new PA",
    "reenters": "enters on a mapped VA with the same PA (new prot or wiring)",
    "shared_pages": "distinct pages mapped by >= 2 pmaps at once",
    "max_sharing": "most pmaps mapping one page at once",
    "max_page_mappings": "most mappings of one page at once (any pmaps, aliases too)",
    "ranges_crossing_1mib": "range ops crossing a 1 MiB boundary",
    "ranges_crossing_2mib": "range ops crossing a 2 MiB boundary",
    "ranges_crossing_4mib": "range ops crossing a 4 MiB boundary",
    "wired_enters": "enters with wired",
    "unwires": "unwires",
    "canfail_enters": "enters with canfail",
    "collects": "collects",
    "page_protects_revoke": "page_protects removing every mapping",
    "page_protects_readonly": "page_protects removing write",
    "page_protects_of_mapped": "page_protects of a page with mappings",
    "empties_4mib": "removals emptying a 4 MiB region of a pmap",
    "destroys": "destroys dropping the last reference",
    "exits_with_mappings": "last destroys right after removes that unmapped live mappings (a process exit)",
    "pmaps_created": "pmaps created",
    "max_live_pmaps": "most user pmaps alive at once",
    "max_live_mappings": "most managed mappings alive at once",
    "regions_4mib": "distinct (pmap, 4 MiB region) pairs ever mapped",
    "kenters": "kenters",
    "kernel_enters": "enters on the kernel pmap 0 (managed kernel mappings)",
    "kremoves": "kremoves",
}

BACKEND_FIELDS: dict[str, str] = {
    "ops_run": "ops the backend ran",
    "pt_allocs": "PT frames allocated",
    "pt_frees": "PT frames freed",
    "pt_peak": "most PT frames held at once",
    "pt_end": "PT frames held at the end",
    "l1_allocs": "L1 frames allocated",
    "l1_frees": "L1 frames freed",
    "l1_peak": "most L1 frames held at once",
    "enomem": "enters that returned ENOMEM",
    "min_free": "fewest free frames",
}


class _StatsModel(VMModel):
    """The VM's view plus what ``stream_stats`` counts as mappings come and go: per page,
    how many mappings each pmap has of it (sharing), live mappings and their peak, the most
    mappings of one page, the pages ever shared and 4 MiB regions emptied.

    ``put``, ``delete`` and ``_unlink`` change the view's dicts as VMModel's do (the same
    entries in the same order) with the counting folded in: one call per mapping on this
    hot path, no callbacks.  Which pages have wired mappings (``pa_wired``) is not kept:
    only ``check`` asks, never ``stream_stats``."""

    __slots__ = ("pa_pmaps", "live", "max_live", "max_page_mappings", "shared", "max_sharing", "empties")

    def __init__(self) -> None:
        super().__init__()
        self.pa_pmaps: dict[int, dict[int, int]] = {}  # pa -> pmap -> its mappings of pa
        self.live = 0
        self.max_live = 0
        self.max_page_mappings = 0
        self.shared: dict[int, None] = {}  # pages mapped by >= 2 pmaps at some point
        self.max_sharing = 0
        self.empties = 0

    def put(self, pmap: int, va: int, pa: int, wired: bool) -> None:
        table = self.maps[pmap]
        old = table.get(va)
        if old is not None:
            self._unlink(pmap, va, old)
        else:
            bucket = self.buckets[pmap].get(va >> _BUCKET_SHIFT)
            if bucket is None:
                self.buckets[pmap][va >> _BUCKET_SHIFT] = {va: None}
            else:
                bucket[va] = None
            live = self.live = self.live + 1
            if live > self.max_live:
                self.max_live = live
        table[va] = (pa, wired)
        entries = self.pa_maps.get(pa)
        if entries is None:
            self.pa_maps[pa] = {(pmap, va): None}
            self.pa_pmaps[pa] = {pmap: 1}
            if not self.max_page_mappings:
                self.max_page_mappings = 1
            return
        entries[(pmap, va)] = None
        if len(entries) > self.max_page_mappings:
            self.max_page_mappings = len(entries)
        per = self.pa_pmaps[pa]
        n = per.get(pmap)
        if n is not None:
            per[pmap] = n + 1
            return
        per[pmap] = 1
        if len(per) >= 2:  # one more pmap maps the page
            self.shared[pa] = None
            if len(per) > self.max_sharing:
                self.max_sharing = len(per)

    def delete(self, pmap: int, va: int) -> None:
        old = self.maps[pmap].pop(va, None)
        if old is None:
            return
        self._unlink(pmap, va, old)
        self.live -= 1
        buckets = self.buckets[pmap]
        bucket = buckets[va >> _BUCKET_SHIFT]
        del bucket[va]
        if not bucket:  # the pmap's last mapping in this 4 MiB region
            del buckets[va >> _BUCKET_SHIFT]
            self.empties += 1

    def _unlink(self, pmap: int, va: int, old: tuple[int, bool]) -> None:
        pa = old[0]
        entries = self.pa_maps[pa]
        del entries[(pmap, va)]
        if not entries:
            del self.pa_maps[pa], self.pa_pmaps[pa]
            return
        per = self.pa_pmaps[pa]
        left = per[pmap] - 1
        if left:
            per[pmap] = left
        else:
            del per[pmap]


def _edge_kind(addr: int) -> int:
    """4 for an address within one page of a 4 MiB boundary, 2 for 2 MiB, else 0."""
    off4 = addr & _MASK_4MIB
    if off4 == 0 or off4 == _LAST_4MIB:
        return 4
    off2 = addr & _MASK_2MIB
    if off2 == 0 or off2 == _LAST_2MIB:
        return 2
    return 0


_MASK_4MIB, _LAST_4MIB = 4 * MIB - 1, 4 * MIB - PAGE
_MASK_2MIB, _LAST_2MIB = 2 * MIB - 1, 2 * MIB - PAGE


def stream_stats(stream: Stream) -> dict[str, Any]:
    """Op mix and depth counters of one stream (``DEPTH_FIELDS``).

    One pass over the ops, dispatching on each op's type once (a hot path: every fuzz
    worker takes these for every stream); the VM's view moves by ``VMModel.apply``."""
    ops = stream.ops
    m = _StatsModel()
    maps, refs, pa_maps, apply, put = m.maps, m.refs, m.pa_maps, m.apply, m.put
    # op kinds: counted at C speed (once more over a file's lazily decoded ops)
    kinds = Counter(map(type, ops))
    e4 = e2 = remaps = reenters = cross1 = cross2 = cross4 = wired_enters = canfail_enters = 0
    unwires = collects = pp_revoke = pp_readonly = pp_mapped = destroys = exits = created = 0
    kenters = kernel_enters = kremoves = max_pmaps = 0
    regions: set[int] = set()
    unmapped: dict[int, bool] = {}  # pmap -> its latest ops were removes that unmapped something
    for op in ops:
        t = type(op)
        if t is Enter or t is Access or t is Extract or t is Unwire or t is KEnter:
            va = op.va
            off = va & _MASK_2MIB  # (an edge of 4 MiB is one of 2 MiB)
            if off == 0 or off == _LAST_2MIB:
                off = va & _MASK_4MIB
                if off == 0 or off == _LAST_4MIB:
                    e4 += 1
                else:
                    e2 += 1
            if t is Enter:
                pmap = op.pmap
                table = maps.get(pmap)
                if table is not None:
                    old = table.get(va)
                    if old is not None:
                        if old[0] != op.pa:
                            remaps += 1
                        else:
                            reenters += 1
                if op.wired:
                    wired_enters += 1
                if op.canfail:
                    canfail_enters += 1
                if pmap == KERNEL_PMAP:
                    kernel_enters += 1
                regions.add((pmap << 32) | (va >> 22))  # (pmap, 4 MiB region): VAs are 32-bit
                unmapped[pmap] = False
                if table is not None:  # else a pmap the stream never made (see below)
                    put(pmap, va, op.pa, op.wired)  # VMModel.apply of an enter
                continue
            if t is KEnter:
                kenters += 1
            else:
                unmapped[op.pmap] = False
                if t is Unwire:
                    unwires += 1
                else:
                    continue  # access, extract: the VM's view stays
        elif t is Remove or t is Protect or t is KRemove:
            if t is KRemove:
                sva = op.va
                eva = sva + op.size
                kremoves += 1
            else:
                sva, eva = op.sva, op.eva
            edge = _edge_kind(sva)
            if edge != 4:
                edge_end = _edge_kind(eva - PAGE)
                if edge_end > edge:
                    edge = edge_end
            if edge == 4:
                e4 += 1
            elif edge == 2:
                e2 += 1
            last = eva - 1
            if sva >> 20 != last >> 20:
                cross1 += 1
                if sva >> 21 != last >> 21:
                    cross2 += 1
                    if sva >> 22 != last >> 22:
                        cross4 += 1
            if t is Remove:
                pmap = op.pmap
                table = maps.get(pmap)
                if table is not None:
                    # it unmapped something iff the pmap lost mappings
                    before = len(table)
                    apply(op)
                    unmapped[pmap] = unmapped.get(pmap, False) or len(table) < before
                    continue
                unmapped[pmap] = False
            elif t is Protect:
                unmapped[op.pmap] = False
        elif t is PageProtect:
            prot = op.prot
            if prot & PROT_W:
                pass
            elif prot & PROT_R:
                pp_readonly += 1
            else:
                pp_revoke += 1
            if op.pa in pa_maps:
                pp_mapped += 1
        elif t is Create:
            created += 1
            apply(op)
            if len(refs) > max_pmaps:
                max_pmaps = len(refs)
            continue
        elif t is Destroy:
            pmap = op.pmap
            if refs.get(pmap) == 1:
                destroys += 1
                if unmapped.get(pmap):
                    exits += 1
        else:
            if t is Collect:
                collects += 1
            pmap = getattr(op, "pmap", None)
            if pmap is not None:
                unmapped[pmap] = False
            if t in VIEW_UNCHANGED:
                continue
        try:
            apply(op)
        except KeyError:  # an op on a pmap the stream never made: validate_ops refuses it
            pass
    depth = dict.fromkeys(DEPTH_FIELDS, 0)
    depth.update(
        edge_ops_4mib=e4, edge_ops_2mib=e2, remaps=remaps, reenters=reenters, shared_pages=len(m.shared),
        max_sharing=m.max_sharing, max_page_mappings=m.max_page_mappings, ranges_crossing_1mib=cross1,
        ranges_crossing_2mib=cross2, ranges_crossing_4mib=cross4, wired_enters=wired_enters, unwires=unwires,
        canfail_enters=canfail_enters, collects=collects, page_protects_revoke=pp_revoke,
        page_protects_readonly=pp_readonly, page_protects_of_mapped=pp_mapped, empties_4mib=m.empties,
        destroys=destroys, exits_with_mappings=exits, pmaps_created=created, max_live_pmaps=max_pmaps,
        max_live_mappings=m.max_live, regions_4mib=len(regions), kenters=kenters, kernel_enters=kernel_enters,
        kremoves=kremoves,
    )
    return {
        "ops": len(ops),
        "phys_pages": stream.phys_pages,
        "data_pages": stream.data_frame_count(),
        "op_kinds": _by_name(kinds),
        "depth": depth,
    }


def _by_name(counts: dict[type, int]) -> dict[str, int]:
    named: dict[str, int] = {}
    for t, n in counts.items():
        named[t.name] = named.get(t.name, 0) + n
    return dict(sorted(named.items()))


# -- backends ------------------------------------------------------------------------------------


class CountingPool(PhysPool):
    """A PhysPool that also counts allocations and frees per tag and the peaks held."""

    def __init__(self, phys_pages: int) -> None:
        super().__init__(phys_pages)
        self.tag_allocs = [0] * len(Tag)
        self.tag_frees = [0] * len(Tag)
        self.tag_peak = [0] * len(Tag)
        self.min_free = phys_pages

    def alloc(self, tag: Tag, owner: int = NO_OWNER) -> int:
        frame = super().alloc(tag, owner)
        self.tag_allocs[tag] += 1
        held = self.count(tag)
        if held > self.tag_peak[tag]:
            self.tag_peak[tag] = held
        if self.free_frames < self.min_free:
            self.min_free = self.free_frames
        return frame

    def free(self, frame: int, tag: Tag | None = None) -> None:
        current = self.tag_of(frame) if 0 <= frame < self.phys_pages else None
        super().free(frame, tag)
        if current is not None:
            self.tag_frees[current] += 1


def drive(spec: BackendSpec, stream: Stream) -> dict[str, Any]:
    """Run ``stream`` on one backend directly (as the harness calls it, without judging)."""
    pool = CountingPool(stream.phys_pages)
    pool.reserve_data(sorted(stream.data_frames()))
    out: dict[str, Any] = {name: 0 for name in BACKEND_FIELDS}
    stopped = ""
    refs: dict[int, int] = {}
    next_id = 1
    index = -1
    try:
        b = spec.factory(pool)
        for index, op in enumerate(stream.ops):
            t = type(op)
            if t is Enter:
                if b.pmap_enter(op.pmap, op.va, op.pa, op.prot, op.access, op.wired, op.canfail) == "ENOMEM":
                    out["enomem"] += 1
            elif t is Remove:
                b.pmap_remove(op.pmap, op.sva, op.eva)
            elif t is Access:
                b.pmap_access(op.pmap, op.va, op.kind)
            elif t is Protect:
                b.pmap_protect(op.pmap, op.sva, op.eva, op.prot)
            elif t is PageProtect:
                b.pmap_page_protect(op.pa, op.prot)
            elif t is Unwire:
                b.pmap_unwire(op.pmap, op.va)
            elif t is Extract:
                b.pmap_extract(op.pmap, op.va)
            elif t is KEnter:
                b.pmap_kenter_pa(op.va, op.pa, op.prot)
            elif t is KRemove:
                b.pmap_kremove(op.va, op.size)
            elif t is ClearModify:
                b.pmap_clear_modify(op.pa)
            elif t is ClearReference:
                b.pmap_clear_reference(op.pa)
            elif t is IsModified:
                b.pmap_is_modified(op.pa)
            elif t is IsReferenced:
                b.pmap_is_referenced(op.pa)
            elif t is Collect:
                b.pmap_collect(op.pmap)
            elif t is Create:
                refs[next_id] = 1
                b.pmap_create(next_id)
                next_id += 1
            elif t is Reference:
                refs[op.pmap] += 1
                b.pmap_reference(op.pmap)
            elif t is Destroy:
                refs[op.pmap] -= 1
                if refs[op.pmap] == 0:  # as the harness: the VM unmaps everything first
                    b.pmap_remove(op.pmap, USER_MIN, USER_MAX)
                b.pmap_destroy(op.pmap)
            elif t is Update:
                b.pmap_update(op.pmap)
            out["ops_run"] = index + 1
    except OutOfMemory:
        stopped = f"out of memory at op {index}"
    except Exception as exc:  # a crash is a finding of the harness, here only a fact
        where = traceback.extract_tb(exc.__traceback__)[-1]
        stopped = f"crashed at op {index}: {type(exc).__name__}: {exc} ({where.name})"
    out.update(
        pt_allocs=pool.tag_allocs[Tag.PT], pt_frees=pool.tag_frees[Tag.PT], pt_peak=pool.tag_peak[Tag.PT],
        pt_end=pool.count(Tag.PT), l1_allocs=pool.tag_allocs[Tag.L1], l1_frees=pool.tag_frees[Tag.L1],
        l1_peak=pool.tag_peak[Tag.L1], min_free=pool.min_free,
    )
    out["stopped"] = stopped
    return out


def backend_stats(stream: Stream, specs: Iterable[BackendSpec]) -> dict[str, dict[str, Any]]:
    return {spec.name: drive(spec, stream) for spec in specs}


def coverage(stream: Stream, specs: Sequence[BackendSpec] = ()) -> dict[str, Any]:
    """``stream_stats`` plus ``backends`` (``backend_stats``) when specs are given."""
    doc = stream_stats(stream)
    doc["origin"] = stream.origin
    if specs:
        doc["backends"] = backend_stats(stream, specs)
    return doc


def merge_stats(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add up several ``coverage`` documents (maxima for ``max_*``, ``*_peak`` and
    ``min_free`` where it is the least)."""

    def add(into: dict[str, Any], part: dict[str, Any]) -> None:
        for key, value in part.items():
            if isinstance(value, bool) or not isinstance(value, (int, dict, str)):
                continue
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, str):
                if value:
                    into[key] = into.get(key) or value
                else:
                    into.setdefault(key, "")
            elif key.startswith("max_") or key.endswith("_peak"):
                into[key] = max(into.get(key, 0), value)
            elif key == "min_free":
                into[key] = min(into.get(key, value), value)
            else:
                into[key] = into.get(key, 0) + value

    total: dict[str, Any] = {"streams": len(docs)}
    for doc in docs:
        add(total, {k: v for k, v in doc.items() if k not in ("origin", "phys_pages")})
    return total
