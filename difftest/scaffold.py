"""``difftest new-backend NAME [DIR]``: write a ready-to-install backend plugin.

The distribution holds a two-level backend that conforms (``difftest check-backend NAME``
passes), so an author starts from green and changes one thing at a time: ``pyproject.toml``
with the ``difftest`` entry point and pytest running the conformance battery, the backend
module (opening with its geometry and invariants), and a test file.  docs/PLUGINS.md walks
through it.
"""

from __future__ import annotations

import re
from pathlib import Path

from difftest import __version__
from difftest.errors import BadInput

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def names_for(name: str) -> dict[str, str]:
    """The backend name and what is derived from it: module, class, distribution."""
    if not NAME_RE.fullmatch(name):
        raise BadInput(f"backend name {name!r}: use lower-case letters, digits and single dashes, "
                       "starting with a letter (for example my-pmap)")
    words = name.split("-")
    return {
        "name": name,
        "module": "difftest_" + "_".join(words),
        "cls": "".join(w.capitalize() for w in words) + ("" if words[-1] == "pmap" else "Pmap"),
        "dist": f"difftest-{name}",
        "entry": "_".join(words),
        "version": __version__,
    }


def write_backend_distribution(name: str, directory: Path) -> list[Path]:
    """Write the distribution into ``directory`` (new or empty); return the files."""
    names = names_for(name)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BadInput(f"{directory} exists and is not an empty directory")
    files = {
        "pyproject.toml": PYPROJECT,
        f"{names['module']}.py": BACKEND,
        f"tests/test_{names['module']}.py": TESTS,
        "README.md": README,
    }
    written = []
    for rel, template in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**names))
        written.append(path)
    return written


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "The pmap backend {name} for pmap-difftest"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["pmap-difftest>={version}"]

# How difftest finds the backend: `difftest backends` lists it once this is installed.
[project.entry-points.difftest]
{entry} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]

# `pytest` runs the tests in tests/ and, through difftest's pytest plugin, one test per
# conformance check of the backend (the same battery as `difftest check-backend {name}`).
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "--difftest-backend {name}"
'''

README = '''\
# {dist}

The pmap backend `{name}` for [pmap-difftest](https://pypi.org/project/pmap-difftest/).

```sh
pip install -e .                       # registers the backend through the entry point
difftest backends                      # lists {name}
difftest check-backend {name}          # the conformance battery and a short campaign
python -m pytest                       # the tests, and the battery as one test per check
difftest fuzz --backends {name},alpha-ref --budget 1m
```
'''

BACKEND = '''\
# {name}: a two-level pmap for pmap-difftest, the starting point of a backend plugin.
#
# Geometry (declared in `geometry`; difftest computes the frames a pmap needs from it):
#   L1  one frame (Tag.L1) per pmap: 1024 entries of 4 MiB, made at pmap_create, freed at
#       the last pmap_destroy.  The kernel pmap 0's L1 is made at bootstrap (__init__).
#   PT  one frame (Tag.PT) per 4 MiB region that holds a live mapping: 1024 entries of
#       4 KiB, allocated by pmap_enter and freed when its last entry goes (user pmaps;
#       the kernel pmap keeps its PT pages, as real kernels do).
# Every frame comes from self.pool with the owning pmap as owner: that is how difftest
# sees, from outside, what the backend holds and frees.
#
# Invariants (registered below; after every op on what it touched, in full at checkpoints):
#   * no user PT page is empty (an empty one must have been freed);
#   * every managed mapping is in the pv list of its page, and every pv entry is a mapping;
#   * the resident and wired counts are the tables' numbers of (wired) entries (audits).
#
# Out of memory: pmap_enter asks pool.has_free() before it changes anything, so that
# ENOMEM (canfail) leaves no trace; without canfail pool.alloc raises OutOfMemory, the
# panic a kernel would have.  pmap_collect does nothing (the contract allows it).

from __future__ import annotations

from typing import Iterator

from difftest import (
    ENOMEM,
    FAULT,
    KERNEL_PMAP,
    OK,
    PROT_R,
    PROT_W,
    PROT_X,
    USER_MAX,
    USER_MIN,
    Backend,
    Geometry,
    Invariant,
    Level,
    PhysPool,
    Tag,
    Touched,
    Translation,
    hookimpl,
)

PT_SHIFT = 22  # one PT page maps 4 MiB
PAGE_SHIFT = 12
SLOTS = 1024
KIND_BITS = {{"r": PROT_R, "w": PROT_W, "x": PROT_X}}


class Pte:
    __slots__ = ("pa", "prot", "wired", "managed")

    def __init__(self, pa: int, prot: int, wired: bool, managed: bool) -> None:
        self.pa, self.prot, self.wired, self.managed = pa, prot, wired, managed


class PtPage:
    __slots__ = ("frame", "ptes")

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.ptes: dict[int, Pte] = {{}}  # slot -> entry


class Pmap:
    __slots__ = ("refs", "l1", "tables", "resident", "wired")

    def __init__(self, l1: int) -> None:
        self.refs = 1
        self.l1 = l1
        self.tables: dict[int, PtPage] = {{}}  # L1 index -> PT page
        self.resident = 0
        self.wired = 0


class {cls}(Backend):
    name = "{name}"
    description = "two-level pmap: 4 MiB PT pages freed when empty ({dist})"
    geometry = Geometry(
        levels=(
            Level("L1", span=1 << 32, entries=SLOTS, frames=1, tag=Tag.L1),
            Level("PT", span=1 << PT_SHIFT, entries=SLOTS, frames=1, tag=Tag.PT),
        ),
        top_level="create",
    )
    run_by_default = True  # `difftest fuzz` without --backends runs it
    keeps_kernel_page_tables = True  # pmap 0's PT pages are never freed (allowed: declared)
    frees_pt_pages = True  # a capability: False would make the leak an expected failure

    def __init__(self, pool: PhysPool) -> None:
        super().__init__(pool)
        self.pmaps = {{KERNEL_PMAP: Pmap(pool.alloc(Tag.L1, owner=KERNEL_PMAP))}}
        self.pv: dict[int, set[tuple[int, int]]] = {{}}  # pa -> {{(pmap, va)}} of managed mappings
        self.ref: set[int] = set()
        self.mod: set[int] = set()

    # -- helpers ----------------------------------------------------------------------------

    def lookup(self, pmap: int, va: int) -> Pte | None:
        pt = self.pmaps[pmap].tables.get(va >> PT_SHIFT)
        return None if pt is None else pt.ptes.get((va >> PAGE_SHIFT) % SLOTS)

    def in_range(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, PtPage, int, Pte]]:
        """(va, PT page, slot, entry) in [sva, eva), in VA order, visiting only PT pages
        that exist (so the cost follows the tables, not the range)."""
        tables = self.pmaps[pmap].tables
        for index in sorted(i for i in tables if sva >> PT_SHIFT <= i <= (eva - 1) >> PT_SHIFT):
            pt = tables[index]
            for slot in sorted(pt.ptes):
                va = (index << PT_SHIFT) | (slot << PAGE_SHIFT)
                if sva <= va < eva:
                    yield va, pt, slot, pt.ptes[slot]

    def unmap(self, pmap: int, va: int, pt: PtPage, slot: int) -> None:
        """Remove one entry: pv list, counts, and the PT page when it empties."""
        pm = self.pmaps[pmap]
        pte = pt.ptes.pop(slot)
        if pte.managed:
            self.pv[pte.pa].discard((pmap, va))
        pm.resident -= 1
        pm.wired -= pte.wired
        if not pt.ptes and pmap != KERNEL_PMAP:
            del pm.tables[va >> PT_SHIFT]
            self.pool.free(pt.frame, Tag.PT)

    def map(self, pmap: int, va: int, pte: Pte, canfail: bool) -> str:
        pm = self.pmaps[pmap]
        index = va >> PT_SHIFT
        pt = pm.tables.get(index)
        if pt is None:
            if canfail and not self.pool.has_free(1):
                return ENOMEM  # nothing changed yet: no trace
            pt = pm.tables[index] = PtPage(self.pool.alloc(Tag.PT, owner=pmap))
        slot = (va >> PAGE_SHIFT) % SLOTS
        old = pt.ptes.pop(slot, None)
        if old is not None:  # a replacement: the old pv entry goes, the page keeps REF/MOD
            if old.managed:
                self.pv[old.pa].discard((pmap, va))
            pm.resident -= 1
            pm.wired -= old.wired
        pt.ptes[slot] = pte
        pm.resident += 1
        pm.wired += pte.wired
        if pte.managed:
            self.pv.setdefault(pte.pa, set()).add((pmap, va))
        return OK

    def touch(self, pa: int, bits: int) -> None:
        if bits:
            self.ref.add(pa)
        if bits & PROT_W:
            self.mod.add(pa)

    # -- pmap(9) ----------------------------------------------------------------------------

    def pmap_create(self, pmap: int) -> None:
        self.pmaps[pmap] = Pmap(self.pool.alloc(Tag.L1, owner=pmap))

    def pmap_reference(self, pmap: int) -> None:
        self.pmaps[pmap].refs += 1

    def pmap_destroy(self, pmap: int) -> None:
        pm = self.pmaps[pmap]
        pm.refs -= 1
        if pm.refs:
            return
        self.pmap_remove(pmap, USER_MIN, USER_MAX)  # the VM layer has done it; be safe
        del self.pmaps[pmap]
        self.pool.free(pm.l1, Tag.L1)

    def pmap_enter(self, pmap: int, va: int, pa: int, prot: int, access: int, wired: bool,
                   canfail: bool) -> str:
        result = self.map(pmap, va, Pte(pa, prot, wired, managed=True), canfail)
        if result == OK:
            self.touch(pa, access)
        return result

    def pmap_remove(self, pmap: int, sva: int, eva: int) -> None:
        for va, pt, slot, pte in list(self.in_range(pmap, sva, eva)):
            if pte.managed:
                self.unmap(pmap, va, pt, slot)

    def pmap_protect(self, pmap: int, sva: int, eva: int, prot: int) -> None:
        if prot & PROT_W:
            return  # protect never adds rights; with w it takes none away
        if not prot & PROT_R:
            self.pmap_remove(pmap, sva, eva)
            return
        for _, _, _, pte in self.in_range(pmap, sva, eva):
            if pte.managed:
                pte.prot &= prot

    def pmap_unwire(self, pmap: int, va: int) -> None:
        pte = self.lookup(pmap, va)
        if pte is not None and pte.managed and pte.wired:
            pte.wired = False
            self.pmaps[pmap].wired -= 1

    def pmap_extract(self, pmap: int, va: int) -> int | None:
        pte = self.lookup(pmap, va)
        return None if pte is None else pte.pa

    def pmap_kenter_pa(self, va: int, pa: int, prot: int) -> None:
        self.map(KERNEL_PMAP, va, Pte(pa, prot, True, managed=False), canfail=False)

    def pmap_kremove(self, va: int, size: int) -> None:
        for v, pt, slot, pte in list(self.in_range(KERNEL_PMAP, va, va + size)):
            if not pte.managed:
                self.unmap(KERNEL_PMAP, v, pt, slot)

    def pmap_page_protect(self, pa: int, prot: int) -> None:
        if prot & PROT_W:
            return
        for pmap, va in sorted(self.pv.get(pa, ())):
            if prot & PROT_R:
                self.lookup(pmap, va).prot &= ~PROT_W
            else:
                self.unmap(pmap, va, self.pmaps[pmap].tables[va >> PT_SHIFT], (va >> PAGE_SHIFT) % SLOTS)

    def pmap_clear_modify(self, pa: int) -> bool:
        was = pa in self.mod
        self.mod.discard(pa)
        return was

    def pmap_clear_reference(self, pa: int) -> bool:
        was = pa in self.ref
        self.ref.discard(pa)
        return was

    def pmap_is_modified(self, pa: int) -> bool:
        return pa in self.mod

    def pmap_is_referenced(self, pa: int) -> bool:
        return pa in self.ref

    def pmap_collect(self, pmap: int) -> None:
        pass  # advisory: a pmap may remove non-wired user mappings here to free PT pages

    def pmap_access(self, pmap: int, va: int, kind: str) -> str:
        pte = self.lookup(pmap, va)
        bit = KIND_BITS[kind]
        if pte is None or not pte.prot & bit:
            return FAULT
        if pte.managed:
            self.touch(pte.pa, bit)
        return OK

    def pmap_resident_count(self, pmap: int) -> int:
        return self.pmaps[pmap].resident

    def pmap_wired_count(self, pmap: int) -> int:
        return self.pmaps[pmap].wired

    # -- the MMU's view ----------------------------------------------------------------------

    def walk(self, pmap: int, va: int) -> Translation | None:
        pte = self.lookup(pmap, va)
        return None if pte is None else Translation(pte.pa, pte.prot, pte.wired)

    def walk_range(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, Translation]]:
        for va, _, _, pte in self.in_range(pmap, sva, eva):
            yield va, Translation(pte.pa, pte.prot, pte.wired)


# -- invariants ---------------------------------------------------------------------------------


def check_tables(backend: {cls}, touched: Touched | None) -> Iterator[str]:
    """Empty user PT pages and pv lists on what the op touched (it runs after every op, so
    it stays O(touched)); everything, and the counts, in a full audit (touched is None)."""
    pmaps = backend.pmaps
    if touched is None:
        places = [(p, va) for p in pmaps for va, _, _, _ in backend.in_range(p, 0, 1 << 32)]
        pas = set(backend.pv)
        counted = list(pmaps)
    else:
        places = [(p, va) for p, va in touched.vas if p in pmaps]
        pas = set(touched.pas)
        counted = []  # summing a pmap's tables is not O(touched): audits only
    for pmap, va in places:
        pt = pmaps[pmap].tables.get(va >> PT_SHIFT)
        if pt is not None and not pt.ptes and pmap != KERNEL_PMAP:
            yield f"pmap {{pmap}}: the PT page of {{va:#010x}} is empty but not freed"
        pte = backend.lookup(pmap, va)
        if pte is not None and pte.managed and (pmap, va) not in backend.pv.get(pte.pa, ()):
            yield f"pmap {{pmap}} va {{va:#010x}}: managed mapping missing from the pv list of {{pte.pa:#010x}}"
    whole = pas if touched is None else touched.whole
    for pa in pas:
        pv = backend.pv.get(pa, ())
        # Every entry of a page the op changed whole; of another only the op's own places,
        # so that an op on one mapping of a page shared by many stays O(1).
        for pmap, va in sorted(pv) if pa in whole else [k for k in touched.vas if k in pv]:
            pte = backend.lookup(pmap, va) if pmap in pmaps else None
            if pte is None or not pte.managed or pte.pa != pa:
                yield f"pv list of {{pa:#010x}} names pmap {{pmap}} va {{va:#010x}}, which does not map it"
    for pmap in counted:
        pm = pmaps[pmap]
        ptes = [pte for pt in pm.tables.values() for pte in pt.ptes.values()]
        if (pm.resident, pm.wired) != (len(ptes), sum(p.wired for p in ptes)):
            yield f"pmap {{pmap}}: counts {{pm.resident}}/{{pm.wired}} but the tables hold {{len(ptes)}}"


@hookimpl
def difftest_register_backends(register) -> None:
    register({cls})


@hookimpl
def difftest_register_invariants(register) -> None:
    register(Invariant("{name}-tables", check_tables, backends=("{name}",),
                       description="no empty user PT page; pv lists match the tables; counts"))
'''

TESTS = '''\
"""Hand-computed tests of the {name} backend.  `python -m pytest` also runs difftest's
conformance battery against it (pyproject.toml: addopts = --difftest-backend {name})."""

from difftest import ENOMEM, FAULT, OK, PROT_R, PROT_W, PhysPool, Tag

from {module} import {cls}

RW = PROT_R | PROT_W


def test_enter_takes_a_pt_frame_and_remove_gives_it_back():
    pool = PhysPool(64)
    backend = {cls}(pool)
    assert pool.held(0, Tag.L1) == 1  # the kernel pmap, made at bootstrap
    backend.pmap_create(1)
    assert pool.held(1, Tag.L1) == 1 and pool.held(1, Tag.PT) == 0
    assert backend.pmap_enter(1, 0x00400000, 0x20000, RW, 0, False, False) == OK
    assert backend.pmap_enter(1, 0x00401000, 0x21000, RW, 0, False, False) == OK
    assert pool.held(1, Tag.PT) == 1  # one 4 MiB region, one PT page
    backend.pmap_remove(1, 0x00400000, 0x00401000)
    assert pool.held(1, Tag.PT) == 1  # still one mapping in it
    backend.pmap_remove(1, 0x00401000, 0x00402000)
    assert pool.held(1, Tag.PT) == 0
    backend.pmap_destroy(1)
    assert pool.held(1, Tag.L1) == 0 and pool.check_conservation() == []


def test_access_sets_ref_and_mod_and_faults_without_the_right():
    backend = {cls}(PhysPool(64))
    backend.pmap_create(1)
    backend.pmap_enter(1, 0x00400000, 0x20000, PROT_R, 0, False, False)
    assert not backend.pmap_is_referenced(0x20000)
    assert backend.pmap_access(1, 0x00400000, "r") == OK and backend.pmap_is_referenced(0x20000)
    assert backend.pmap_access(1, 0x00400000, "w") == FAULT and not backend.pmap_is_modified(0x20000)


def test_enomem_leaves_no_trace():
    pool = PhysPool(16)
    backend = {cls}(pool)
    backend.pmap_create(1)
    while pool.has_free(1):
        pool.alloc(Tag.META)  # someone else took the rest of memory
    before = pool.snapshot()
    assert backend.pmap_enter(1, 0x00400000, 0x2000, RW, 0, False, True) == ENOMEM
    assert pool.snapshot() == before
    assert backend.walk(1, 0x00400000) is None and backend.pmap_resident_count(1) == 0
'''
