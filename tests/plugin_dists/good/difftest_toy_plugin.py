"""difftest-toy-plugin: a third-party difftest plugin registering the backend ``toy``.

``toy`` is a pmap with one flat page table per pmap: a single level of 2^20 entries (one
per 4 KiB page of the 32-bit space) that occupies one pool frame, made at ``pmap_create``
and freed at the last ``pmap_destroy``.  Mappings live in a dict.  It keeps per-page REF
and MOD bits, set on entry (``access``) and by ``pmap_access``; it has no pv lists and no
REF/MOD emulation faults, and ``pmap_collect`` does nothing (the contract allows that).

It is small on purpose: it shows the whole backend contract a plugin implements, and the
plugin tests use it to check discovery through the entry-point group ``difftest``.
"""

from __future__ import annotations

from typing import Iterator

import difftest
from difftest import FAULT, OK, PROT_R, PROT_W, PROT_X, Backend, Geometry, Level, Tag, Translation

_KIND_BITS = {"r": PROT_R, "w": PROT_W, "x": PROT_X}


class _Mapping:
    __slots__ = ("pa", "prot", "wired", "managed")

    def __init__(self, pa: int, prot: int, wired: bool, managed: bool) -> None:
        self.pa, self.prot, self.wired, self.managed = pa, prot, wired, managed


class _Pmap:
    __slots__ = ("refs", "frame", "ptes")

    def __init__(self, frame: int) -> None:
        self.refs = 1
        self.frame = frame
        self.ptes: dict[int, _Mapping] = {}


class ToyBackend(Backend):
    name = "toy"
    description = "flat dict pmap (difftest-toy-plugin)"
    geometry = Geometry(
        levels=(Level("PT", span=1 << 32, entries=1 << 20, frames=1, tag=Tag.PT),),
        top_level="create",
    )

    def __init__(self, pool: difftest.PhysPool) -> None:
        super().__init__(pool)
        self.pmaps = {0: _Pmap(pool.alloc(Tag.PT, owner=0))}
        self.ref: set[int] = set()
        self.mod: set[int] = set()

    # -- lifetimes ------------------------------------------------------------------------

    def pmap_create(self, pmap: int) -> None:
        self.pmaps[pmap] = _Pmap(self.pool.alloc(Tag.PT, owner=pmap))

    def pmap_reference(self, pmap: int) -> None:
        self.pmaps[pmap].refs += 1

    def pmap_destroy(self, pmap: int) -> None:
        p = self.pmaps[pmap]
        p.refs -= 1
        if p.refs == 0:
            del self.pmaps[pmap]
            self.pool.free(p.frame, Tag.PT)

    # -- mappings -------------------------------------------------------------------------

    def _touch(self, pa: int, bits: int) -> None:
        if bits:
            self.ref.add(pa)
        if bits & PROT_W:
            self.mod.add(pa)

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail) -> str:
        self.pmaps[pmap].ptes[va] = _Mapping(pa, prot, wired, managed=True)
        self._touch(pa, access)
        return OK

    def _in(self, pmap: int, sva: int, eva: int) -> list[int]:
        return sorted(va for va in self.pmaps[pmap].ptes if sva <= va < eva)

    def pmap_remove(self, pmap, sva, eva) -> None:
        for va in self._in(pmap, sva, eva):
            del self.pmaps[pmap].ptes[va]

    def pmap_protect(self, pmap, sva, eva, prot) -> None:
        if prot & PROT_W:
            return  # protect never adds rights, and with w it takes none away
        if not prot & PROT_R:
            self.pmap_remove(pmap, sva, eva)
            return
        for va in self._in(pmap, sva, eva):
            self.pmaps[pmap].ptes[va].prot &= prot

    def pmap_unwire(self, pmap, va) -> None:
        m = self.pmaps[pmap].ptes.get(va)
        if m is not None:
            m.wired = False

    def pmap_extract(self, pmap, va):
        m = self.pmaps[pmap].ptes.get(va)
        return None if m is None else m.pa

    def pmap_kenter_pa(self, va, pa, prot) -> None:
        self.pmaps[0].ptes[va] = _Mapping(pa, prot, True, managed=False)

    def pmap_kremove(self, va, size) -> None:
        kernel = self.pmaps[0].ptes
        for v in self._in(0, va, va + size):
            if not kernel[v].managed:
                del kernel[v]

    # -- pages ----------------------------------------------------------------------------

    def _mappings_of(self, pa: int) -> Iterator[tuple[_Pmap, int, _Mapping]]:
        for p in list(self.pmaps.values()):
            for va, m in list(p.ptes.items()):
                if m.managed and m.pa == pa:
                    yield p, va, m

    def pmap_page_protect(self, pa, prot) -> None:
        if prot & PROT_W:
            return
        for p, va, m in self._mappings_of(pa):
            if prot & PROT_R:
                m.prot &= ~PROT_W
            else:
                del p.ptes[va]

    def pmap_clear_modify(self, pa) -> bool:
        was = pa in self.mod
        self.mod.discard(pa)
        return was

    def pmap_clear_reference(self, pa) -> bool:
        was = pa in self.ref
        self.ref.discard(pa)
        return was

    def pmap_is_modified(self, pa) -> bool:
        return pa in self.mod

    def pmap_is_referenced(self, pa) -> bool:
        return pa in self.ref

    def pmap_collect(self, pmap) -> None:
        pass

    def pmap_access(self, pmap, va, kind) -> str:
        m = self.pmaps[pmap].ptes.get(va)
        bit = _KIND_BITS[kind]
        if m is None or not m.prot & bit:
            return FAULT
        if m.managed:
            self._touch(m.pa, bit)
        return OK

    # -- counts and the MMU's view ----------------------------------------------------------

    def pmap_resident_count(self, pmap) -> int:
        return len(self.pmaps[pmap].ptes)

    def pmap_wired_count(self, pmap) -> int:
        return sum(m.wired for m in self.pmaps[pmap].ptes.values())

    def walk(self, pmap, va):
        m = self.pmaps[pmap].ptes.get(va)
        return None if m is None else Translation(m.pa, m.prot, m.wired)

    def walk_range(self, pmap, sva, eva):
        ptes = self.pmaps[pmap].ptes
        for va in self._in(pmap, sva, eva):
            m = ptes[va]
            yield va, Translation(m.pa, m.prot, m.wired)


@difftest.hookimpl
def difftest_register_backends(register):
    register(ToyBackend)
