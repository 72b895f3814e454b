"""The ``pager`` generator: PR 5666's How-To-Repeat as a stream (MODEL §7).

A small machine runs a parallel build: a few long-lived processes (``make``, ``sh``) that
keep mapping files and anonymous memory at ever new addresses and unmapping them again,
and short-lived compiler processes that start, map their text (shared with every other
process running the same program), heap, stack and a few header files (shared through
the page cache), work, and exit.  Every process has a two-page u-area ``kenter``'d in the
kernel while it lives, and now and then wires (mlock) a heap page and unwires it.

The VM side keeps a free list of data frames.  When it runs low, the pager frees pages
with a clock: a referenced page gets a second chance (``clear_reference``); a victim is
revoked everywhere (``page_protect(pa, none)``), written back if dirty (``is_modified``,
``clear_modify``) and its frame goes back to the free list; the next touch pages it in
again into a new frame.  Wired pages are never victims.  When that is not enough, the
swapper swaps out the process that ran least recently (``collect``); its pages are then
re-entered when it runs again (the pmap may have dropped them).

Page-table memory is what is left after the data frames: ``phys_pages // 32`` frames (at
least 32), enough for a refcounting pmap's live tables with the processes bounded as they
are, but not for a pmap that keeps the tables of every region a long-lived process ever
mapped: ``arm32-leaky`` runs out of frames and dies (a non-``canfail`` enter), as the
Shark did in 1998.  Most user enters have ``canfail`` unset, as in the 1998 VM.

Deterministic: one ``random.Random(seed)``, lists and insertion-ordered dicts only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from difftest.machine import DEFAULT_PHYS_PAGES, PAGE_SIZE, USER_MAX
from difftest.streams import Stream
from difftest.ops import (
    PROT_R,
    PROT_W,
    PROT_X,
    ClearModify,
    ClearReference,
    Collect,
    Create,
    Destroy,
    IsModified,
    IsReferenced,
    KEnter,
    KRemove,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
)
from strategies.seeded import GENERATOR_VERSION, KENTER_BASE, MIB, _Base, new_access, new_enter

R, RW, RX = PROT_R, PROT_R | PROT_W, PROT_R | PROT_X
TEXT_BASE = 0x00400000
HEAP_BASE = 0x00800000
STACK_TOP = USER_MAX
MMAP_LO = 0x20000000
MMAP_SLOTS = (0xE0000000 - MMAP_LO) // (4 * MIB)
UAREA_PAGES = 2
PROGRAMS = ("sh", "make", "cc1", "as", "ld")
TEXT_PAGES = {"sh": 40, "make": 60, "cc1": 400, "as": 80, "ld": 120}
FILES = 12  # header files in the page cache
FILE_PAGES = 24


@dataclass
class _Mmap:
    base: int
    pages: int
    file: int | None  # a page-cache file, or None for anonymous memory
    touched: dict[int, None] = field(default_factory=dict)  # anon VAs given a frame


@dataclass
class _Proc:
    pid: int
    pmap: int
    program: str
    long_lived: bool
    life: int  # ops left to emit (short-lived)
    uarea: int  # kernel va of its u-area
    heap_pages: int = 8
    heap_target: int = 64  # pages the process's heap grows to (cc1: a share of memory)
    stack_pages: int = 2
    mmaps: list[_Mmap] = field(default_factory=list)
    stale: dict[int, None] = field(default_factory=dict)  # va -> re-enter before next use
    swapped: dict[int, None] = field(default_factory=dict)  # anon va paged out
    anon: dict[int, int] = field(default_factory=dict)  # anon va -> its frame
    last_run: int = 0
    uarea_frames: list[int] = field(default_factory=list)
    shared_refs: int = 0  # extra references (a vfork'd child sharing the vmspace)


class PagerGenerator(_Base):
    def __init__(self, seed: int, phys_pages: int) -> None:
        super().__init__(seed, phys_pages)
        rnd = self.rnd
        # Page-table memory: what is left free beside the workload's data frames (the rest
        # of the machine is held by the rest of the system: machine.free_frames).  Drawn
        # from the seed, never from the stream length: a longer stream only adds ops.
        self.reserve = min(phys_pages // 2, (48, 72, 96)[int(rnd() * 3)])
        # The workload's share of memory: small enough that the page daemon runs within a
        # few hundred ops.
        n_data = max(16, min(phys_pages - self.reserve, 96 + int(rnd() * 288)))
        # the VM's free list of data frames, in a seed-shuffled order
        frames = list(range(phys_pages - n_data, phys_pages))
        self.rng.shuffle(frames)
        # FIFO, so that over a long stream every data frame gets used (and the frames the
        # stream never names, which are the page tables' share, stay few)
        self.free: deque[int] = deque(f * PAGE_SIZE for f in frames)
        self.n_data = n_data
        self.low = max(4, n_data // 16)
        self.high = max(8, n_data // 8)
        self.max_procs = max(3, min(8, self.reserve // 20))
        self.p_canfail = (0.0, 0.1, 0.3)[int(rnd() * 3)]
        self.mmap_cursor = int(rnd() * MMAP_SLOTS)
        self.procs: dict[int, _Proc] = {}
        self.next_pid = 1
        self.tick = 0
        self.uarea_free: list[int] = [KENTER_BASE + i * UAREA_PAGES * PAGE_SIZE for i in range(64)]
        # page ownership (VM view): pa -> ("anon", pid, va) | ("text", program, index)
        #                                  | ("file", file, index) | ("uarea", pid, 0)
        self.owner: dict[int, tuple] = {}
        self.text_cache: dict[str, dict[int, int]] = {p: {} for p in PROGRAMS}
        self.file_cache: dict[int, dict[int, int]] = {f: {} for f in range(FILES)}
        self.clock: deque[int] = deque()
        self.referenced: dict[int, None] = {}  # the VM's idea of REF since the last clear
        self.dirty: dict[int, None] = {}
        self.stats = {"pageouts": 0, "swapouts": 0, "exits": 0, "spawns": 0, "execs": 0, "cow": 0,
                      "writebacks": 0}

    def origin(self, n_ops: int) -> dict[str, Any]:
        return {
            "generator": "pager",
            "seed": self.seed,
            "ops": n_ops,
            "version": GENERATOR_VERSION,
            "pt_reserve_frames": self.reserve,
            "data_frames": self.n_data,
            "max_procs": self.max_procs,
            "canfail": self.p_canfail,
        }

    # -- frames ------------------------------------------------------------------------------------

    def alloc_frame(self) -> int | None:
        if len(self.free) < self.low:
            self.page_daemon()
        if not self.free:
            return None
        pa = self.free.popleft()
        self.clock.append(pa)
        return pa

    def release(self, pa: int) -> None:
        """The VM frees a frame nobody maps any more."""
        self.owner.pop(pa, None)
        self.referenced.pop(pa, None)
        self.dirty.pop(pa, None)
        self.free.append(pa)

    def page_daemon(self) -> None:
        """Free pages until the high-water mark (clock with second chance), then, if
        memory is still low, swap a process out."""
        rnd = self.rnd
        budget = 4 * len(self.clock) + 8
        target = self.low + (self.high - self.low) // 4  # small batches: the daemon wakes often
        while len(self.free) < target and self.clock and budget > 0 and not self.full():
            budget -= 1
            pa = self.clock.popleft()
            who = self.owner.get(pa)
            if who is None or who[0] == "uarea":
                continue  # already freed (or never paged)
            if self.m.is_wired_page(pa):
                self.clock.append(pa)
                continue
            if pa in self.referenced and rnd() < 0.3:
                self.emit(IsReferenced(pa))
                self.emit(ClearReference(pa))
                del self.referenced[pa]
                self.clock.append(pa)
                continue
            if pa in self.dirty and who[0] != "text" and rnd() < 0.5:
                self.write_back(pa)  # launder first; freed on a later pass if still clean
                self.clock.append(pa)
                continue
            self.page_out(pa, who)
        if (len(self.free) < self.low or rnd() < 0.25) and not self.full():
            self.swap_out()  # the swapper: the process that slept longest goes out

    def page_out(self, pa: int, who: tuple) -> None:
        self.emit(PageProtect(pa, 0))
        if pa in self.dirty or self.rnd() < 0.2:
            self.emit(IsModified(pa))
            self.emit(ClearModify(pa))
        kind = who[0]
        if kind == "anon":
            _, pid, va = who
            proc = self.procs.get(pid)
            if proc is not None:
                proc.anon.pop(va, None)
                proc.swapped[va] = None
                proc.stale.pop(va, None)
        elif kind == "text":
            self.text_cache[who[1]].pop(who[2], None)
        elif kind == "file":
            self.file_cache[who[1]].pop(who[2], None)
        self.stats["pageouts"] += 1
        self.release(pa)

    def swap_out(self) -> None:
        procs = [p for p in self.procs.values()]
        if len(procs) < 2:
            return
        victim = min(procs, key=lambda p: (p.last_run, p.pid))
        self.emit(Collect(victim.pmap))
        for va in self.m.maps[victim.pmap]:
            victim.stale[va] = None
        self.stats["swapouts"] += 1

    # -- processes ---------------------------------------------------------------------------------

    def spawn(self, long_lived: bool) -> None:
        if len(self.procs) >= self.max_procs or not self.uarea_free or self.full():
            return
        rnd = self.rnd
        program = PROGRAMS[int(rnd() * 2)] if long_lived else PROGRAMS[2 + int(rnd() * 3)]
        pmap = self.m.next_id
        self.emit(Create())
        if not self.m.alive(pmap):
            return
        pid = self.next_pid
        self.next_pid += 1
        uarea = self.uarea_free.pop()
        share = self.n_data // max(1, self.max_procs - 2)  # the compilers fill the memory
        target = max(8, int(share * (0.6 + rnd() * 0.9))) if not long_lived else max(8, share // 8)
        proc = _Proc(pid, pmap, program, long_lived, life=150 + int(rnd() * rnd() * 1500), uarea=uarea,
                     last_run=self.tick, heap_target=min(target, 2 * 1024 * 1024 // PAGE_SIZE * 4))
        self.procs[pid] = proc
        for i in range(UAREA_PAGES):  # the u-area: wired kernel memory (pmap_kenter_pa)
            pa = self.alloc_frame()
            if pa is None:
                break
            self.owner[pa] = ("uarea", pid, 0)
            proc.uarea_frames.append(pa)
            self.emit(KEnter(uarea + i * PAGE_SIZE, pa, RW))
        self.stats["spawns"] += 1

    def exit(self, proc: _Proc) -> None:
        """uvmspace_free: unmap every area, then the last pmap_destroy; free the frames."""
        pmap = proc.pmap
        for _ in range(proc.shared_refs):
            self.emit(Destroy(pmap))
        proc.shared_refs = 0
        self.unmap_all(pmap)
        self.emit(Destroy(pmap))
        self.emit(KRemove(proc.uarea, UAREA_PAGES * PAGE_SIZE))
        for pa in proc.anon.values():
            self.release(pa)
        proc.anon.clear()
        for pa in proc.uarea_frames:
            self.release(pa)
        self.uarea_free.append(proc.uarea)
        del self.procs[proc.pid]
        self.stats["exits"] += 1

    def exec(self, proc: _Proc) -> None:
        """execve of a new program in the same vmspace: unmap everything, free the anonymous
        frames, start over with the new text, a small heap and stack."""
        self.unmap_all(proc.pmap)
        for pa in proc.anon.values():
            self.release(pa)
        proc.anon.clear()
        proc.mmaps.clear()
        proc.stale.clear()
        proc.swapped.clear()
        proc.program = PROGRAMS[2 + int(self.rnd() * 3)]
        proc.heap_pages, proc.stack_pages = 8, 2
        self.stats["execs"] += 1

    def write_back(self, pa: int | None = None) -> None:
        """Clean a dirty page (the syncer, or the page daemon laundering a victim):
        write-protect every mapping (a later write faults and re-dirties it), write it out,
        clear MOD."""
        if pa is None:
            if not self.dirty:
                return
            pa = next(iter(self.dirty))
        self.emit(PageProtect(pa, R))
        self.emit(IsModified(pa))
        self.emit(ClearModify(pa))
        del self.dirty[pa]
        by_pmap = {p.pmap: p for p in self.procs.values()}
        for pmap, va in self.m.mappings_of(pa):
            proc = by_pmap.get(pmap)
            if proc is not None:
                proc.stale[va] = None  # its next write faults and re-enters the page writable
        self.stats["writebacks"] += 1

    def new_mmap(self, proc: _Proc) -> None:
        rnd = self.rnd
        self.mmap_cursor = (self.mmap_cursor + 1 + int(rnd() * 3)) % MMAP_SLOTS
        base = MMAP_LO + self.mmap_cursor * 4 * MIB
        if rnd() < 0.5:
            base += 2 * MIB  # straddles an arm32 PT frame boundary
        pages = (64, 256, 512, 1024)[int(rnd() * 4)]
        file = int(rnd() * FILES) if rnd() < 0.5 else None
        if file is not None:
            pages = min(pages, FILE_PAGES)
        proc.mmaps.append(_Mmap(base, pages, file))

    def munmap(self, proc: _Proc, mm: _Mmap) -> None:
        self.emit(Remove(proc.pmap, mm.base, mm.base + mm.pages * PAGE_SIZE))
        proc.mmaps.remove(mm)
        for va in mm.touched:  # anonymous pages, and private copies of file pages
            pa = proc.anon.pop(va, None)
            if pa is not None:
                self.release(pa)
            proc.swapped.pop(va, None)
        for va in [v for v in proc.stale if v not in self.m.maps[proc.pmap]]:
            del proc.stale[va]

    # -- a process touches a page -----------------------------------------------------------------

    def touch(self, proc: _Proc) -> None:
        rnd = self.rnd
        r = rnd()
        if r < 0.3:  # text
            n = TEXT_PAGES[proc.program]
            idx = int(rnd() * rnd() * n)
            va, prot, kind, cache = TEXT_BASE + idx * PAGE_SIZE, RX, ("x", "x", "r")[int(rnd() * 3)], ("text", proc.program, idx)
        elif r < 0.6:  # heap: grows towards its target (malloc, then the first write)
            if proc.heap_pages < proc.heap_target and rnd() < 0.8:
                grow = 4 + int(rnd() * 28)  # malloc, then memset: write every new page
                for idx in range(proc.heap_pages, proc.heap_pages + grow - 1):
                    self.touch_page(proc, HEAP_BASE + idx * PAGE_SIZE, RW, "w", None)
                proc.heap_pages += grow
                idx, kind = proc.heap_pages - 1, "w"
            else:
                idx = proc.heap_pages - 1 - int(rnd() * rnd() * proc.heap_pages)
                kind = ("r", "w")[int(rnd() * 2)]
            va, prot, cache = HEAP_BASE + idx * PAGE_SIZE, RW, None
        elif r < 0.75:  # stack
            if rnd() < 0.03:
                proc.stack_pages += 1
            idx = int(rnd() * rnd() * proc.stack_pages)
            va, prot, kind, cache = STACK_TOP - (idx + 1) * PAGE_SIZE, RW, ("r", "w", "w")[int(rnd() * 3)], None
        else:  # an mmap
            if not proc.mmaps:
                self.new_mmap(proc)
            mm = proc.mmaps[int(rnd() * len(proc.mmaps))]
            # first pages, last pages, and around the 2 MiB boundary inside
            pick = rnd()
            if pick < 0.5:
                idx = int(rnd() * min(mm.pages, 8))
            elif pick < 0.75:
                idx = mm.pages - 1 - int(rnd() * min(mm.pages, 4))
            else:
                idx = int(rnd() * mm.pages)
            va = mm.base + idx * PAGE_SIZE
            if mm.file is not None and va not in proc.anon:
                mapped = self.m.maps[proc.pmap].get(va)
                if mapped is not None and not mapped[1] and va not in proc.stale and rnd() < 0.35:
                    return self.copy_on_write(proc, mm, va)
                prot, kind, cache = R, "r", ("file", mm.file, idx)
            else:  # anonymous memory, or a private copy of a file page
                prot, kind, cache = RW, ("r", "w")[int(rnd() * 2)], None
                mm.touched[va] = None
        self.touch_page(proc, va, prot, kind, cache)

    def copy_on_write(self, proc: _Proc, mm: _Mmap, va: int) -> None:
        """A write to a private file mapping: the page is copied to a new frame, which
        replaces the live read-only mapping (a remap of a live VA to a new page)."""
        pa = self.alloc_frame()
        if pa is None or va not in self.m.maps[proc.pmap]:
            if pa is not None:
                self.release(pa)
            return
        proc.anon[va] = pa
        self.owner[pa] = ("anon", proc.pid, va)
        mm.touched[va] = None
        self.emit(new_enter(proc.pmap, va, pa, RW, PROT_W, False, self.rnd() < self.p_canfail))
        self.note_access(pa, "w")
        self.stats["cow"] += 1

    def touch_page(self, proc: _Proc, va: int, prot: int, kind: str, cache: tuple | None) -> None:
        pmap = proc.pmap
        m = self.m
        mapped = m.maps[pmap].get(va)
        if mapped is not None and va not in proc.stale:
            self.emit(new_access(pmap, va, kind))
            self.note_access(mapped[0], kind)
            return
        if mapped is not None:  # after a swap-out the pmap may have dropped it: fault it in
            del proc.stale[va]
            pa = mapped[0]
        else:
            proc.stale.pop(va, None)
            pa = self.find_page(proc, va, cache)
            if pa is None:
                return
        access = {"r": PROT_R, "w": PROT_W, "x": PROT_X}[kind] & prot
        wired = mapped is not None and mapped[1]
        self.emit(new_enter(pmap, va, pa, prot, access, wired, self.rnd() < self.p_canfail))
        self.note_access(pa, kind)

    def find_page(self, proc: _Proc, va: int, cache: tuple | None) -> int | None:
        """The frame a fault maps: the page cache's, or a new (zero-filled or paged-in) one."""
        if cache is not None:
            kind, name, idx = cache
            table = self.text_cache[name] if kind == "text" else self.file_cache[name]
            pa = table.get(idx)
            if pa is None:
                pa = self.alloc_frame()
                if pa is None:
                    return None
                table[idx] = pa
                self.owner[pa] = cache
            return pa
        pa = proc.anon.get(va)
        if pa is None:
            pa = self.alloc_frame()
            if pa is None:
                return None
            proc.anon[va] = pa
            self.owner[pa] = ("anon", proc.pid, va)
            proc.swapped.pop(va, None)
        return pa

    def note_access(self, pa: int, kind: str) -> None:
        self.referenced[pa] = None
        if kind == "w":
            self.dirty[pa] = None

    # -- the schedule ------------------------------------------------------------------------------

    def work(self, proc: _Proc) -> None:
        """One time slice of a process."""
        rnd = self.rnd
        proc.last_run = self.tick
        for _ in range(4 + int(rnd() * 24)):
            if self.full():
                return
            r = rnd()
            if proc.long_lived and rnd() < 0.06:
                r = 0.87  # make and sh keep mapping new regions (the PR's slow leak)
            if r < 0.86:
                self.touch(proc)
            elif r < 0.90:  # mmap churn: long-lived processes keep moving to new regions
                if len(proc.mmaps) >= 3 or (proc.mmaps and rnd() < 0.4):
                    self.munmap(proc, proc.mmaps[0])
                self.new_mmap(proc)
            elif r < 0.93:  # mlock / munlock a heap page
                self.wiring(proc)
            elif r < 0.95:  # mprotect (RELRO): write-protect a few heap pages
                sva = HEAP_BASE + int(rnd() * proc.heap_pages) * PAGE_SIZE
                self.emit(Protect(proc.pmap, sva, sva + (1 + int(rnd() * 4)) * PAGE_SIZE, R))
                for va in range(sva, sva + 5 * PAGE_SIZE, PAGE_SIZE):
                    proc.stale.pop(va, None)  # stays mapped (read-only); write faults re-enter
                    if va in self.m.maps[proc.pmap]:
                        proc.stale[va] = None
            elif r < 0.97:  # brk shrink (free() giving the top of the heap back)
                if proc.heap_pages > 16 and rnd() < 0.3:
                    cut = 1 + int(rnd() * (proc.heap_pages // 8))
                    proc.heap_pages -= cut
                    lo = HEAP_BASE + proc.heap_pages * PAGE_SIZE
                    self.emit(Remove(proc.pmap, lo, lo + cut * PAGE_SIZE))
                    for va in range(lo, lo + cut * PAGE_SIZE, PAGE_SIZE):
                        pa = proc.anon.pop(va, None)
                        if pa is not None:
                            self.release(pa)
                        proc.swapped.pop(va, None)
                    for va in [v for v in proc.stale if v not in self.m.maps[proc.pmap]]:
                        del proc.stale[va]
            elif r < 0.98:  # a vfork'd child shares the vmspace for a while
                if proc.shared_refs == 0:
                    self.emit(Reference(proc.pmap))
                    proc.shared_refs = 1
                else:
                    self.emit(Destroy(proc.pmap))
                    proc.shared_refs = 0
            else:
                self.touch(proc)

    def wiring(self, proc: _Proc) -> None:
        m = self.m
        wired = [va for va, (_, w) in m.maps[proc.pmap].items() if w]
        if wired and (len(wired) >= 2 or self.rnd() < 0.5):
            self.emit(Unwire(proc.pmap, wired[0]))
            return
        va = HEAP_BASE + int(self.rnd() * proc.heap_pages) * PAGE_SIZE
        mapped = m.maps[proc.pmap].get(va)
        if mapped is None:
            pa = self.find_page(proc, va, None)
            if pa is None:
                return
        else:
            pa = mapped[0]
        proc.stale.pop(va, None)
        self.emit(new_enter(proc.pmap, va, pa, RW, PROT_W, True, False))
        self.note_access(pa, "w")

    def run(self, n_ops: int) -> list:
        self.limit = n_ops
        rnd = self.rnd
        for _ in range(2):
            self.spawn(long_lived=True)
        while not self.full():
            self.tick += 1
            procs = list(self.procs.values())
            short = [p for p in procs if not p.long_lived]
            if len(procs) < self.max_procs and (not short or rnd() < 0.3):
                self.spawn(long_lived=not any(p.long_lived for p in procs))
                continue
            proc = procs[int(rnd() * len(procs))]
            before = len(self.ops)
            self.work(proc)
            if not proc.long_lived:
                proc.life -= len(self.ops) - before
                if proc.life <= 0:
                    self.exit(proc)
                elif rnd() < 0.08:
                    self.exec(proc)  # the compiler driver runs the next pass in its process
            if self.dirty and rnd() < 0.05:
                self.write_back()
            if len(self.free) < self.low:
                self.page_daemon()
            elif len(self.free) < self.high and rnd() < 0.03:
                self.swap_out()  # the swapper runs while free memory is below its target
        return self.ops


def generate_pager(seed: int, n_ops: int, phys_pages: int = DEFAULT_PHYS_PAGES) -> Stream:
    """The ``pager`` generator: PR 5666's How-To-Repeat, ``n_ops`` ops from ``seed``."""
    if n_ops < 0:
        raise ValueError(f"n_ops must be >= 0, not {n_ops}")
    gen = PagerGenerator(seed, phys_pages)
    ops = gen.run(n_ops)
    return Stream(ops=tuple(ops), phys_pages=phys_pages, origin=gen.origin(n_ops), free_frames=gen.reserve)
