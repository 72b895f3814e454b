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
from typing import Any, Iterable, Sequence

from difftest.backend import BackendSpec
from difftest.legality import VMModel
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
_BOUNDARIES = (("1MiB", MIB), ("2MiB", 2 * MIB), ("4MiB", 4 * MIB))

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
    """The VM's view plus, per page, how many mappings each pmap has of it."""

    __slots__ = ("pa_pmaps", "live", "regions_by_pmap", "on_share", "on_region_empty", "max_page_mappings")

    def __init__(self) -> None:
        super().__init__()
        self.pa_pmaps: dict[int, dict[int, int]] = {}
        self.live = 0
        self.max_page_mappings = 0
        self.on_share = None
        self.on_region_empty = None

    def put(self, pmap: int, va: int, pa: int, wired: bool) -> None:
        old = self.maps[pmap].get(va)
        if old is not None:
            self._unshare(old[0], pmap)
        else:
            self.live += 1
        super().put(pmap, va, pa, wired)
        n = len(self.pa_maps[pa])
        if n > self.max_page_mappings:
            self.max_page_mappings = n
        per = self.pa_pmaps.setdefault(pa, {})
        per[pmap] = per.get(pmap, 0) + 1
        if self.on_share is not None and len(per) >= 2:
            self.on_share(pa, len(per))

    def delete(self, pmap: int, va: int) -> None:
        old = self.maps[pmap].get(va)
        if old is None:
            return
        bucket = va >> 22
        super().delete(pmap, va)
        self.live -= 1
        self._unshare(old[0], pmap)
        if self.on_region_empty is not None and bucket not in self.buckets[pmap]:
            self.on_region_empty()

    def _unshare(self, pa: int, pmap: int) -> None:
        per = self.pa_pmaps[pa]
        left = per[pmap] - 1
        if left:
            per[pmap] = left
        else:
            del per[pmap]
            if not per:
                del self.pa_pmaps[pa]


def _edge_kind(addr: int) -> int:
    """4 for an address within one page of a 4 MiB boundary, 2 for 2 MiB, else 0."""
    off4 = addr & (4 * MIB - 1)
    if off4 == 0 or off4 == 4 * MIB - PAGE:
        return 4
    off2 = addr & (2 * MIB - 1)
    if off2 == 0 or off2 == 2 * MIB - PAGE:
        return 2
    return 0


def stream_stats(stream: Stream) -> dict[str, Any]:
    """Op mix and depth counters of one stream (``DEPTH_FIELDS``)."""
    kinds: dict[str, int] = {}
    depth = {name: 0 for name in DEPTH_FIELDS}
    shared: dict[int, None] = {}
    regions: set[tuple[int, int]] = set()
    m = _StatsModel()

    def on_share(pa: int, n: int) -> None:
        shared[pa] = None
        if n > depth["max_sharing"]:
            depth["max_sharing"] = n

    def on_region_empty() -> None:
        depth["empties_4mib"] += 1

    m.on_share = on_share
    m.on_region_empty = on_region_empty
    unmapped: dict[int, bool] = {}  # pmap -> its latest ops were removes that unmapped something
    for op in stream.ops:
        t = type(op)
        kinds[op.name] = kinds.get(op.name, 0) + 1
        # addresses: edges and boundary crossings
        if t is Remove or t is Protect or t is KRemove:
            sva, eva = (op.sva, op.eva) if t is not KRemove else (op.va, op.va + op.size)
            edge = max(_edge_kind(sva), _edge_kind(eva - PAGE))
            for name, size in _BOUNDARIES:
                if sva // size != (eva - 1) // size:
                    depth["ranges_crossing_" + name.lower()] += 1
        else:
            va = getattr(op, "va", None)
            edge = _edge_kind(va) if va is not None else 0
        if edge == 4:
            depth["edge_ops_4mib"] += 1
        elif edge == 2:
            depth["edge_ops_2mib"] += 1
        # VM-view events
        if t is Enter:
            old = m.maps[op.pmap].get(op.va) if op.pmap in m.maps else None
            if old is not None:
                depth["remaps" if old[0] != op.pa else "reenters"] += 1
            if op.wired:
                depth["wired_enters"] += 1
            if op.canfail:
                depth["canfail_enters"] += 1
            if op.pmap == KERNEL_PMAP:
                depth["kernel_enters"] += 1
            regions.add((op.pmap, op.va >> 22))
        elif t is Unwire:
            depth["unwires"] += 1
        elif t is Collect:
            depth["collects"] += 1
        elif t is PageProtect:
            if op.prot & PROT_W:
                pass
            elif op.prot & PROT_R:
                depth["page_protects_readonly"] += 1
            else:
                depth["page_protects_revoke"] += 1
            if op.pa in m.pa_maps:
                depth["page_protects_of_mapped"] += 1
        elif t is Create:
            depth["pmaps_created"] += 1
        elif t is Destroy:
            if m.refs.get(op.pmap) == 1:
                depth["destroys"] += 1
                if unmapped.get(op.pmap):
                    depth["exits_with_mappings"] += 1
        elif t is KEnter:
            depth["kenters"] += 1
        elif t is KRemove:
            depth["kremoves"] += 1
        pmap = getattr(op, "pmap", None)
        if t is Remove and pmap in m.maps:
            unmapped[pmap] = unmapped.get(pmap, False) or bool(m.in_range(pmap, op.sva, op.eva))
        elif t is not Destroy and pmap is not None:
            unmapped[pmap] = False
        try:
            m.apply(op)
        except KeyError:  # an op on a pmap the stream never made: validate_ops refuses it
            pass
        if len(m.refs) > depth["max_live_pmaps"]:
            depth["max_live_pmaps"] = len(m.refs)
        if m.live > depth["max_live_mappings"]:
            depth["max_live_mappings"] = m.live
    depth["shared_pages"] = len(shared)
    depth["max_page_mappings"] = m.max_page_mappings
    depth["regions_4mib"] = len(regions)
    return {
        "ops": len(stream.ops),
        "phys_pages": stream.phys_pages,
        "data_pages": len(stream.data_frames()),
        "op_kinds": dict(sorted(kinds.items())),
        "depth": depth,
    }


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
