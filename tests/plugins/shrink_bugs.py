"""Test-only backends for the shrinker tests, registered as a plugin as a user's would be.

Each subclasses arm32-refcount and has one bug whose *shortest* reproducer is illegal for
the VM layer, or which needs more than the leak's three ops, so that a shrinker that slips
to another signature or to an illegal stream is caught.  None runs by default.
"""

from __future__ import annotations

from difftest import hookimpl
from difftest.machine import PAGE_SIZE, Tag
from difftest.ops import PROT_R, PROT_W
from impls.arm32 import Arm32Refcount


class ExtractWrongWithTwo(Arm32Refcount):
    """pmap_extract answers pa + 4 KiB once the pmap has two or more mappings."""

    name = "shrinkbug-extract"
    description = "test-only: extract is off by a page in a pmap with >= 2 mappings"
    run_by_default = False

    def pmap_extract(self, pmap, va):
        pa = super().pmap_extract(pmap, va)
        if pa is not None and pmap != 0 and self.pmap_resident_count(pmap) >= 2:
            return pa + PAGE_SIZE
        return pa


class RevokeOfOnceWired(Arm32Refcount):
    """page_protect(pa, none) miscounts resident pages when it removes a mapping that was
    ever wired.  The shortest trigger (enter wired, revoke) is illegal: the pager never
    revokes a wired page, so a legal reproducer must unwire first."""

    name = "shrinkbug-wiredpp"
    description = "test-only: revoking a once-wired mapping leaves resident_count one high"
    run_by_default = False

    def __init__(self, pool):
        super().__init__(pool)
        self._ever_wired: set[tuple[int, int]] = set()
        self._extra: dict[int, int] = {}

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        res = super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        if wired and res == "OK":
            self._ever_wired.add((pmap, va))
        return res

    def pmap_page_protect(self, pa, prot):
        victims = []
        if not prot & (PROT_R | PROT_W):
            for pmap in list(self._pmaps):
                for va, t in self.walk_range(pmap, 0x1000, 0xEFC00000) if pmap else ():
                    if t.pa == pa and (pmap, va) in self._ever_wired:
                        victims.append(pmap)
        super().pmap_page_protect(pa, prot)
        for pmap in victims:
            self._extra[pmap] = self._extra.get(pmap, 0) + 1

    def pmap_resident_count(self, pmap):
        return super().pmap_resident_count(pmap) + self._extra.get(pmap, 0)


class DestroyLeaksAfterUse(Arm32Refcount):
    """The last pmap_destroy of a pmap that ever had a mapping keeps one PT frame.  The
    shortest trigger (create, enter, destroy) is illegal: the VM unmaps first."""

    name = "shrinkbug-destroy"
    description = "test-only: destroy of a used pmap keeps a PT frame"
    run_by_default = False

    def __init__(self, pool):
        super().__init__(pool)
        self._used: set[int] = set()

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        self._used.add(pmap)
        return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)

    def pmap_destroy(self, pmap):
        last = self._pmaps[pmap].refs == 1
        super().pmap_destroy(pmap)
        if pmap in self._used and last:
            self.pool.alloc(Tag.PT, pmap)


ALL = (ExtractWrongWithTwo, RevokeOfOnceWired, DestroyLeaksAfterUse)


@hookimpl
def difftest_register_backends(register):
    for cls in ALL:
        register(cls)
