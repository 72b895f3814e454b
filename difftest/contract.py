"""The pmap(9) contract as a model: what a stream established, per backend.

The harness keeps one ``ContractState`` per backend.  Each op's meaning lives here, in one
method per op (docs/SEMANTICS.md): it applies the op with the contract's semantics and
returns what the op touched, which the harness then holds against what the backend shows
(walks, results, attributes).  Where the contract leaves a choice open (a non-wired
mapping forgotten by ``collect``, a wired mapping under ``page_protect(none)``) the state
marks the mapping *optional* for that op and afterwards follows what the backend did.
Where the backend diverges, the harness *resyncs* the state to the backend, so that what
follows from one bug is not reported again (cascade suppression).

After each op the state therefore mirrors the backend's live mappings, which is what the
harness computes resident/wired counts and needed page-table frames from.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from difftest.backend import Geometry
from difftest.machine import KERNEL_PMAP, PAGE_SIZE, Tag
from difftest.ops import PROT_R, PROT_W

_PT, _L1 = int(Tag.PT), int(Tag.L1)

# A mapping is a tuple (pa, prot, wired, managed): cheap to build and compare.
Mapping = tuple[int, int, bool, bool]
PA, PROT, WIRED, MANAGED = 0, 1, 2, 3

_INDEX_SPAN = 1 << 22  # regions indexing a geometry with no level below its top (4 MiB)
_PROBE_LIMIT = 32 * PAGE_SIZE  # ranges up to this size are probed page by page


class ContractState:
    """Expected mappings, pv lists, page attributes and needed frames of one backend."""

    __slots__ = (
        "geometry",
        "maps",
        "leaves",
        "pv",
        "mod",
        "ref",
        "wired",
        "refs",
        "_upper_levels",
        "_leaf_span",
        "_leaf_frames",
        "_leaf_tag",
        "_regions",
        "_top_tag",
        "_top_frames",
        "_top_lazy",
        "_top_pt",
        "_top_l1",
        "_lower",
        "need_epoch",
    )

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.maps: dict[int, dict[int, Mapping]] = {KERNEL_PMAP: {}}
        self.pv: dict[int, set[tuple[int, int]]] = {}  # pa -> {(pmap, va)} of managed mappings
        self.mod: set[int] = set()  # pages whose MOD the contract fixes as set
        self.ref: set[int] = set()  # pages that may read as referenced
        self.wired: dict[int, int] = {KERNEL_PMAP: 0}
        self.refs: dict[int, int] = {KERNEL_PMAP: 1}
        top = geometry.levels[0]
        self._top_tag = top.tag
        self._top_frames = top.frames
        self._top_lazy = geometry.top_level == "lazy"
        self._top_pt = top.frames if top.tag == Tag.PT else 0  # the top level's frames by tag
        self._top_l1 = top.frames if top.tag == Tag.L1 else 0
        # The lowest level's tables (the leaves): per pmap, the VAs of its live mappings by
        # region of that level's span.  len(leaves) tables are needed, and the same sets
        # answer range queries at a cost that follows the mappings, not the range.  A
        # geometry with nothing below its top level indexes 4 MiB regions needing no frames.
        lower = [(lvl.span, lvl.frames, int(lvl.tag)) for lvl in geometry.levels[1:]]
        self._leaf_span, self._leaf_frames, self._leaf_tag = lower.pop() if lower else (_INDEX_SPAN, 0, 0)
        self.leaves: dict[int, dict[int, set[int]]] = {KERNEL_PMAP: {}}
        # (span, frames, tag) of each level between the top and the leaves, and per pmap a
        # count of live mappings per region of that span: len(counter) tables are needed.
        self._upper_levels = tuple(lower)
        self._regions: dict[int, list[dict[int, int]]] = {KERNEL_PMAP: [{} for _ in self._upper_levels]}
        # pmap -> {tag: frames its lower-level tables need}, kept as regions fill and empty
        self._lower: dict[int, dict[int, int]] = {KERNEL_PMAP: {}}
        # Moves whenever the frames some pmap needs may have changed (a table needed or no
        # longer needed, a pmap made empty, non-empty, created or gone): the harness skips
        # a pmap's frames check while neither this nor the pool's allocs/frees moved.
        self.need_epoch = 0

    # -- pmaps ------------------------------------------------------------------------------

    def create(self, pmap: int) -> None:
        self.maps[pmap] = {}
        self.leaves[pmap] = {}
        self.wired[pmap] = 0
        self.refs[pmap] = 1
        self._regions[pmap] = [{} for _ in self._upper_levels]
        self._lower[pmap] = {}
        self.need_epoch += 1

    def forget_pmap(self, pmap: int) -> None:
        """The pmap died (its mappings were removed before)."""
        for va in list(self.maps[pmap]):
            self.delete(pmap, va)
        del self.maps[pmap], self.leaves[pmap], self.wired[pmap], self.refs[pmap], self._regions[pmap]
        del self._lower[pmap]
        self.need_epoch += 1

    def alive(self, pmap: int) -> bool:
        return pmap in self.maps

    def pmaps(self) -> list[int]:
        return sorted(self.maps)

    # -- mappings ---------------------------------------------------------------------------

    def get(self, pmap: int, va: int) -> Mapping | None:
        return self.maps[pmap].get(va)

    def put(self, pmap: int, va: int, mapping: Mapping) -> None:
        """Set the mapping at (pmap, va), keeping pv lists, counts and regions in step."""
        table = self.maps[pmap]
        old = table.get(va)
        if old is not None:
            # A place already mapped: its regions stay; its wired count and pv entry follow.
            if old[WIRED] and not mapping[WIRED]:
                self.wired[pmap] -= 1
            elif mapping[WIRED] and not old[WIRED]:
                self.wired[pmap] += 1
            table[va] = mapping
            if old[MANAGED] and mapping[MANAGED] and old[PA] == mapping[PA]:
                return  # the same page (a protect, an unwire): its pv entry stays
            if old[MANAGED]:
                self._pv_remove(old[PA], pmap, va)
            if mapping[MANAGED]:
                self.pv.setdefault(mapping[PA], set()).add((pmap, va))
            return
        # A new place: in its leaf region, and a count in its region of every level
        # between (inline: every enter comes here).
        if not table:
            self.need_epoch += 1  # a lazy top-level table is needed now
        leaves = self.leaves[pmap]
        key = va // self._leaf_span
        leaf = leaves.get(key)
        if leaf is None:  # a new leaf table
            leaves[key] = {va}
            frames = self._leaf_frames
            if frames:
                lower = self._lower[pmap]
                lower[self._leaf_tag] = lower.get(self._leaf_tag, 0) + frames
                self.need_epoch += 1
        else:
            leaf.add(va)
        if self._upper_levels:
            lower = self._lower[pmap]
            for (span, frames, tag), counter in zip(self._upper_levels, self._regions[pmap]):
                key = va // span
                n = counter.get(key, 0)
                counter[key] = n + 1
                if not n:  # a new table of this level
                    lower[tag] = lower.get(tag, 0) + frames
                    self.need_epoch += 1
        table[va] = mapping
        if mapping[MANAGED]:
            entries = self.pv.get(mapping[PA])
            if entries is None:
                self.pv[mapping[PA]] = {(pmap, va)}
            else:
                entries.add((pmap, va))
        if mapping[WIRED]:
            self.wired[pmap] += 1

    def delete(self, pmap: int, va: int) -> Mapping | None:
        table = self.maps[pmap]
        old = table.pop(va, None)
        if old is None:
            return None
        if not table:
            self.need_epoch += 1  # a lazy top-level table is no longer needed
        if old[MANAGED]:  # out of its page's pv list (inline: every remove comes here)
            entries = self.pv.get(old[PA])
            if entries is not None:
                entries.discard((pmap, va))
                if not entries:
                    del self.pv[old[PA]]
        if old[WIRED]:
            self.wired[pmap] -= 1
        # Out of its leaf region and its regions between (inline: every remove comes here).
        leaves = self.leaves[pmap]
        key = va // self._leaf_span
        leaf = leaves[key]
        leaf.discard(va)
        if not leaf:  # a leaf table no longer needed
            del leaves[key]
            if self._leaf_frames:
                self._lower[pmap][self._leaf_tag] -= self._leaf_frames
                self.need_epoch += 1
        if self._upper_levels:
            lower = self._lower[pmap]
            for (span, frames, tag), counter in zip(self._upper_levels, self._regions[pmap]):
                key = va // span
                left = counter[key] - 1
                if left:
                    counter[key] = left
                else:
                    del counter[key]
                    lower[tag] -= frames
                    self.need_epoch += 1
        return old

    def _pv_remove(self, pa: int, pmap: int, va: int) -> None:
        entries = self.pv.get(pa)
        if entries is not None:
            entries.discard((pmap, va))
            if not entries:
                del self.pv[pa]

    def in_range(self, pmap: int, sva: int, eva: int) -> list[int]:
        """VAs with a mapping in [sva, eva), sorted.  Cost follows the mappings, not the range."""
        if eva - sva <= _PROBE_LIMIT:
            # A few pages: look each up rather than scan the leaf regions they fall in.
            table = self.maps[pmap]
            return [va for va in range(sva, eva, PAGE_SIZE) if va in table]
        leaves = self.leaves[pmap]
        span = self._leaf_span
        lo, hi = sva // span, (eva - 1) // span
        if hi - lo + 1 <= len(leaves):
            keys: Iterable[int] = (k for k in range(lo, hi + 1) if k in leaves)
        else:
            keys = (k for k in leaves if lo <= k <= hi)
        out = [va for k in keys for va in leaves[k] if sva <= va < eva]
        out.sort()
        return out

    def mappings_of(self, pa: int) -> list[tuple[int, int]]:
        """Managed (pmap, va) mappings of page ``pa``, sorted."""
        return sorted(self.pv.get(pa, ()))

    def resident(self, pmap: int) -> int:
        return len(self.maps[pmap])

    def items(self, pmap: int) -> Iterator[tuple[int, Mapping]]:
        return iter(sorted(self.maps[pmap].items()))

    # -- the ops ----------------------------------------------------------------------------
    #
    # What each op does to the expected state, and what it touched (the places the harness
    # then observes): the op's meaning in one place.  Where the outcome depends on the
    # backend (enter's ENOMEM, access's fault) the harness calls these after judging the
    # result; where the contract leaves a choice open (collect, page_protect(none) of a wired
    # mapping) they return the mappings the backend may keep or drop as ``optional``.

    def pages_of(self, pmap: int, vas: Iterable[int]) -> set[int]:
        """Pages of the managed mappings at ``vas`` (whose REF/MOD an op may change)."""
        table = self.maps[pmap]
        return {table[va][PA] for va in vas if table[va][MANAGED]}

    def enter_replaces(self, pmap: int, va: int, pa: int) -> int | None:
        """The other page an enter of ``pa`` at (pmap, va) touches: the managed page of a
        mapping it replaces, if that is not ``pa`` (an enter touches ``pa`` and that)."""
        old = self.maps[pmap].get(va)
        return old[PA] if old is not None and old[MANAGED] and old[PA] != pa else None

    def enter(self, pmap: int, va: int, pa: int, prot: int, access: int, wired: bool) -> None:
        """A successful pmap_enter: the mapping, and the attributes ``access`` seeds."""
        self.put(pmap, va, (pa, prot, wired, True))
        if access & PROT_W:
            self.mod.add(pa)
            self.ref.add(pa)
        elif access:
            self.ref.add(pa)

    def access_allowed(self, pmap: int, va: int, kind_bit: int) -> tuple[bool, Mapping | None]:
        """(whether an access of ``kind_bit`` succeeds, the mapping it goes through)."""
        m = self.maps[pmap].get(va)
        return m is not None and bool(m[PROT] & kind_bit), m

    def accessed(self, m: Mapping, write: bool) -> None:
        """A successful access through mapping ``m`` sets REF (and MOD for a write)."""
        if m[MANAGED]:
            if write:
                self.mod.add(m[PA])
            self.ref.add(m[PA])

    def remove(self, pmap: int, sva: int, eva: int) -> tuple[list[int], set[int]]:
        """pmap_remove: managed mappings in [sva, eva) go.  Returns (VAs with a mapping in
        the range, managed or not; their managed pages)."""
        vas = self.in_range(pmap, sva, eva)
        pas = set()
        table = self.maps[pmap]
        for va in vas:
            m = table[va]
            if m[MANAGED]:
                pas.add(m[PA])
                self.delete(pmap, va)
        return vas, pas

    def protect(self, pmap: int, sva: int, eva: int, prot: int) -> tuple[list[int], set[int]]:
        """pmap_protect over [sva, eva) (``apply_protect`` on each managed mapping)."""
        vas = self.in_range(pmap, sva, eva)
        pas = self.pages_of(pmap, vas)
        table = self.maps[pmap]
        for va in vas:
            m = table[va]
            if not m[MANAGED]:
                continue
            new = apply_protect(prot, m[PROT])
            if new is None:
                self.delete(pmap, va)
            elif new != m[PROT]:
                self.put(pmap, va, (m[PA], new, m[WIRED], True))
        return vas, pas

    def unwire(self, pmap: int, va: int) -> None:
        m = self.maps[pmap].get(va)
        if m is not None and m[MANAGED] and m[WIRED]:
            self.put(pmap, va, (m[PA], m[PROT], False, True))

    def page_protect(self, pa: int, prot: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """pmap_page_protect.  Returns (the page's mappings, the wired ones a revocation
        leaves to the backend: alpha keeps them, arm32 removes them)."""
        keys = self.mappings_of(pa)
        optional = []
        if not prot & PROT_W:
            for key in keys:
                m = self.maps[key[0]][key[1]]
                if prot & PROT_R:
                    if m[PROT] & PROT_W:
                        self.put(key[0], key[1], (m[PA], m[PROT] & ~PROT_W, m[WIRED], True))
                elif m[WIRED]:
                    optional.append(key)
                else:
                    self.delete(*key)
        return keys, optional

    def collect(self, pmap: int) -> tuple[list[int], set[int], frozenset[int]]:
        """pmap_collect may forget any non-wired managed user mapping: (the VAs of the
        pmap's mappings, their pages, the VAs of the ones it may forget).  The state
        follows the backend afterwards."""
        if pmap == KERNEL_PMAP:
            return [], set(), frozenset()
        table = self.maps[pmap]
        vas = sorted(table)
        optional = frozenset(va for va in vas if table[va][MANAGED] and not table[va][WIRED])
        return vas, self.pages_of(pmap, vas), optional

    def kenter(self, va: int, pa: int, prot: int) -> set[int]:
        """pmap_kenter_pa: an unmanaged wired kernel mapping.  Returns the managed page it
        replaced, if any."""
        old = self.maps[KERNEL_PMAP].get(va)
        self.put(KERNEL_PMAP, va, (pa, prot, True, False))
        return {old[PA]} if old is not None and old[MANAGED] else set()

    def kremove(self, va: int, size: int) -> list[int]:
        """pmap_kremove: the kenter'd mappings in [va, va + size) go; managed ones stay."""
        vas = self.in_range(KERNEL_PMAP, va, va + size)
        kernel = self.maps[KERNEL_PMAP]
        for v in vas:
            if not kernel[v][MANAGED]:
                self.delete(KERNEL_PMAP, v)
        return vas

    def empty(self, pmap: int) -> tuple[list[int], set[int]]:
        """What the VM layer removes before the last destroy: every mapping of ``pmap``.
        Returns (their VAs, their managed pages)."""
        vas = sorted(self.maps[pmap])
        pas = self.pages_of(pmap, vas)
        for va in vas:
            self.delete(pmap, va)
        return vas, pas

    # -- needed page-table frames ----------------------------------------------------------

    def needed(self, pmap: int) -> dict[Tag, int]:
        """Frames by tag that ``pmap`` needs for its live mappings under the geometry."""
        return {Tag.PT: self.needed_frames(pmap, Tag.PT), Tag.L1: self.needed_frames(pmap, Tag.L1)}

    def needed_frames(self, pmap: int, tag: Tag) -> int:
        """``needed(pmap)[tag]`` without building a dict: the per-op path."""
        table = self.maps.get(pmap)
        if table is None:
            return 0
        # The kernel's top-level table exists from bootstrap on, whatever the geometry.
        n = self._top_frames if tag == self._top_tag and (table or not self._top_lazy or pmap == KERNEL_PMAP) else 0
        return n + self._lower[pmap].get(tag, 0)

    def needed_pt_l1(self, pmap: int) -> tuple[int, int]:
        """``(needed_frames(pmap, PT), needed_frames(pmap, L1))`` in one call."""
        table = self.maps.get(pmap)
        if table is None:
            return 0, 0
        lower = self._lower[pmap]
        # (plain int keys: a Tag member's lookup costs more than the dict read)
        pt, l1 = lower.get(_PT, 0), lower.get(_L1, 0)
        if table or not self._top_lazy or pmap == KERNEL_PMAP:
            pt += self._top_pt
            l1 += self._top_l1
        return pt, l1

    def extra_frames_for(self, pmap: int, va: int) -> int:
        """Frames an enter at (pmap, va) must allocate: what a legitimate ENOMEM needs."""
        if va in self.maps[pmap]:
            return 0
        extra = 0
        if self._top_lazy and not self.maps[pmap] and pmap != KERNEL_PMAP:
            extra += self._top_frames
        if va // self._leaf_span not in self.leaves[pmap]:
            extra += self._leaf_frames
        if self._upper_levels:
            for (span, frames, _), counter in zip(self._upper_levels, self._regions[pmap]):
                if va // span not in counter:
                    extra += frames
        return extra

    def create_frames(self) -> int:
        return 0 if self._top_lazy else self._top_frames


def apply_protect(prot: int, old: int) -> int | None:
    """New prot of a mapping under pmap_protect / page_protect, or None to remove it.

    No read: remove.  Write present: unchanged.  Otherwise: old & prot (never adds).
    """
    if not prot & PROT_R:
        return None
    if prot & PROT_W:
        return old
    return old & prot
