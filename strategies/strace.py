"""The ``strace`` importer: a log of a real program's memory system calls -> a stream.

Record (``-s 256`` keeps file names whole; ``-o`` writes ``PID syscall`` lines, stderr
``[pid N] syscall`` lines: both are read)::

    strace -f -s 256 -e trace=memory,process,openat,close -o LOG COMMAND...
    difftest import strace LOG -o STREAM

What becomes what (the VM layer's view of the program, as a pmap sees it):

* every process is a pmap.  The first process is ``create``\\ d; ``fork`` and ``clone``
  without ``CLONE_VM`` ``create`` the child and copy the parent's resident pages into it
  copy-on-write: private writable pages are entered without ``w`` in the child and
  write-protected (``protect``) in the parent; shared and read-only pages are entered as
  they are.  When a copy-on-write page is left with one user (the other exited or called
  ``execve``), that user's next write is modelled at once: ``enter`` with ``w`` again.
  ``vfork`` and ``clone`` with ``CLONE_VM`` (threads, ``posix_spawn``) take a
  ``reference`` on the parent's pmap; the child's ``execve`` or exit drops it
  (``destroy``) and an ``execve`` gives the child a new pmap.  ``execve`` in a process
  that owns its pmap removes every mapping and keeps the pmap.  Exit (``+++ exited`` or
  ``+++ killed``) removes every mapping and destroys the pmap.
* ``mmap`` (and ``brk`` growing the heap, ``mremap`` growing a mapping, ``mprotect``
  adding rights) enters pages as the program would touch them.  Page-touch policy: a
  mapping of at most ``max_pages_per_mapping`` pages has every page touched; a larger one
  has ``max_pages_per_mapping`` pages touched in at most four contiguous runs spread
  evenly from its first page to its last.  ``PROT_NONE`` pages are never touched.  A
  private writable page is written (access ``w``, a page of its own); other pages are
  read (``r``, or ``x`` for execute-only).
* physical pages come from a free list of the frames above the first quarter of the
  machine (``phys_pages // 4`` frames are left for page tables).  A file page (file,
  offset) has one frame, shared by every process mapping it (``MAP_SHARED``, or
  ``MAP_PRIVATE`` read-only) and kept as page cache after the last unmap until memory
  runs short.  Files are named through ``openat``/``open`` results and ``close``; a file
  mapping whose descriptor the log never opened (a log recorded without ``openat``) is
  treated as a file of its own per process and descriptor, with a warning.
* when the free list is empty the importer is the page daemon: first an unmapped cached
  file page is reused; then the oldest resident page is paged out (``is_modified``,
  ``clear_modify`` for the write-back, ``page_protect(pa, none)`` to revoke every mapping
  of it), and every 32 page-outs the least recently active other process is swapped
  out (``collect``).  A paged-out page touched again gets a new frame.
* ``munmap``, ``brk`` shrinking, ``madvise(MADV_DONTNEED)`` -> ``remove``; ``mprotect``
  -> ``protect`` where it takes rights away (``protect`` never adds rights).
* 64-bit addresses are folded into the 32-bit user range ``0x1000..0xEFC00000`` 4 MiB
  at a time: each 4 MiB slot of the process's 64-bit space that gets a page is given a
  32-bit slot (the slot after its lower neighbour's, to keep a region that spans slots
  contiguous; else the same slot number when it is below 4 GiB; else the lowest free
  one), so every page keeps its offset and alignment within its 4 MiB region.  A page
  that cannot be placed (no free slot; page 0) is not entered, and is counted by region in
  the stream's ``origin["unplaced"]`` and in a warning on stderr.

Failed calls (``= -1 ENOMEM ...``), signals (``--- SIG... ---``) and calls this list does
not name are skipped (counted in ``origin["ignored"]``); ``<unfinished ...>`` and
``<... resumed>`` halves are joined per process.  A line that is none of these is an
error naming the log's line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from difftest.backend import DEFAULT_MAX_PAGES_PER_MAPPING
from difftest.contract import apply_protect
from difftest.errors import BadInput
from difftest.machine import PAGE_SIZE, USER_MAX, USER_MIN
from difftest.ops import (
    PROT_R,
    PROT_W,
    PROT_X,
    ClearModify,
    Collect,
    Create,
    Destroy,
    Enter,
    IsModified,
    Op,
    PageProtect,
    Protect,
    Reference,
    Remove,
)
from difftest.streams import Stream, make_stream

TOUCH_RUNS = 4  # contiguous runs a large mapping's touched pages are spread over
COLLECT_EVERY = 32  # page-outs between two swap-outs (collect) of an idle process
SLOT_SHIFT = 22  # 4 MiB: the unit of folding
SLOT_PAGES = 1 << (SLOT_SHIFT - 12)
SLOTS_32 = USER_MAX >> SLOT_SHIFT  # 32-bit slots that lie wholly in the user range
PAGE_SHIFT = 12

_PROT_BITS = {"PROT_READ": PROT_R, "PROT_WRITE": PROT_W, "PROT_EXEC": PROT_X, "PROT_NONE": 0}
_FORKS = ("fork", "vfork", "clone", "clone2", "clone3")


# -- reading the log ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One finished system call of one process."""

    pid: int
    name: str
    args: tuple[str, ...]
    ret: int | None  # None: "?" (the call did not return)
    failed: bool
    line: int


@dataclass(frozen=True)
class Exit:
    pid: int
    line: int


@dataclass(frozen=True)
class Started:
    """A process or thread's fork-like call is under way (``<unfinished ...>``)."""

    pid: int
    name: str
    args: tuple[str, ...]
    line: int


_PREFIX = re.compile(r"^\s*(?:\[pid\s+(\d+)\]|(\d+))?\s*(?:\d+:\d+:\d+(?:\.\d+)?\s+|\d+\.\d+\s+)?")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|0x[0-9a-fA-F]+|\?)(?:<[^>]*>)?(?:\s+(E[A-Z0-9_]+|ERESTART\w*))?(?:\s.*)?$")
_UNFINISHED = re.compile(r"^(\w+)\((.*?)\s*<unfinished \.\.\.>\s*$")
_OWN_MESSAGE = re.compile(r"strace: Process \d+ (?:attached|detached|resumed|suspended)")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$")


def read_log(lines: Iterable[str], source: str) -> Iterator[Call | Exit | Started]:
    """strace lines -> calls and exits, halves joined; BadInput names a line it cannot read."""
    pending: dict[int, tuple[str, str]] = {}  # pid -> (name, text so far)
    carry = ""  # a line strace's own message cut in two (stderr output only)
    alias: dict[int, int] = {}  # the first process's number -> 0, where the log shows both
    children: set[int] = set()  # processes seen or returned by a fork-like call
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("strace: "):
            continue
        own = _OWN_MESSAGE.search(line)
        if own is not None:
            carry = line[:own.start()]
            continue
        if carry:
            line, carry = carry + line, ""
        m = _PREFIX.match(line)
        pid = int(m.group(1) or m.group(2) or 0)
        body = line[m.end():]
        if pid in alias:
            pid = alias[pid]
        elif pid and pid not in children and 0 in children and not alias:
            # strace's stderr output shows the first process's lines bare until a second
            # process is traced, then as "[pid N]": an N no fork returned and none under way
            # (whose child it could be) is the first process.
            r = _RESUMED.match(body)
            resumes_first = r is not None and pending.get(0, ("",))[0] == r.group(1)
            if resumes_first or not any(name in _FORKS for name, _ in pending.values()):
                alias[pid] = 0
                pid = 0
        children.add(pid)
        if body.startswith("+++ ") and body.endswith(" +++"):
            pending.pop(pid, None)
            yield Exit(pid, number)
            continue
        if body.startswith("--- ") and body.endswith(" ---"):
            continue  # a signal delivered: nothing for the pmap
        u = _UNFINISHED.match(body)
        if u is not None:
            pending[pid] = (u.group(1), f"{u.group(1)}({u.group(2)}")
            if u.group(1) in _FORKS:
                yield Started(pid, u.group(1), split_args(u.group(2)), number)
            continue
        r = _RESUMED.match(body)
        if r is not None:
            if pid not in pending:
                continue  # the log starts in the middle of this call: its arguments are lost
            name, head = pending.pop(pid)
            if name != r.group(1):
                raise BadInput(f"{source}:{number}: '{r.group(1)}' resumed but process {pid} was in '{name}'")
            body = head + r.group(2)
        c = _CALL.match(body)
        if c is None:
            if r is not None and body.rstrip().endswith("= ?"):
                continue
            raise BadInput(f"{source}:{number}: not an strace line: {line[:80]!r}")
        ret_text = c.group(3)
        ret = None if ret_text == "?" else int(ret_text, 0)
        if c.group(1) in _FORKS and ret is not None and ret > 0:
            children.add(ret)
        yield Call(pid, c.group(1), split_args(c.group(2)), ret, c.group(4) is not None, number)


def split_args(text: str) -> tuple[str, ...]:
    """Top-level comma-separated arguments (brackets, braces and strings kept whole)."""
    out: list[str] = []
    depth = 0
    start = 0
    in_str = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
        i += 1
    last = text[start:].strip()
    if last or out:
        out.append(last)
    return tuple(out)


def _int(text: str) -> int:
    text = text.strip()
    if text == "NULL":
        return 0
    return int(text, 0)


def _fd(text: str) -> int:
    """A descriptor argument, also as ``strace -y`` prints it (``3</usr/lib/libc.so.6>``)."""
    m = re.match(r"\s*(-?\d+)", text)
    if m is None:
        raise ValueError(f"{text!r} is not a file descriptor")
    return int(m.group(1))


def _prot(text: str) -> int:
    prot = 0
    for part in text.split("|"):
        part = part.strip()
        if part in _PROT_BITS:
            prot |= _PROT_BITS[part]
        elif re.fullmatch(r"0x[0-9a-fA-F]+|\d+", part):
            value = int(part, 0)
            prot |= (PROT_R if value & 1 else 0) | (PROT_W if value & 2 else 0) | (PROT_X if value & 4 else 0)
        # other bits (PROT_GROWSDOWN, PROT_SEM, ...) do not change what a pmap maps
    return prot


def _path(text: str) -> tuple[str, bool]:
    """The path of a C string argument, and whether strace cut it short (``"..."...``)."""
    m = re.match(r'^"((?:[^"\\]|\\.)*)"(\.\.\.)?', text.strip())
    if m is None:
        return text.strip(), False
    return m.group(1), m.group(2) is not None


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


# -- the model ----------------------------------------------------------------------------------------


@dataclass
class Region:
    """A mapping of the 64-bit address space, in pages: [start, end)."""

    start: int
    end: int
    prot: int
    shared: bool
    name: str  # file path, "[anon]", "[heap]", "[shm N]"
    file: tuple | None  # the file's identity, or None for anonymous memory
    offset: int = 0  # file page at ``start``

    def key(self, page: int) -> tuple | None:
        """The page's identity in the page cache (file pages), or None (private anonymous)."""
        if self.file is None:
            return None
        return (*self.file, self.offset + page - self.start)

    def writes_private(self) -> bool:
        return bool(self.prot & PROT_W) and not self.shared


@dataclass
class Page:
    frame: int | None  # None: paged out
    prot: int = 0  # the pmap's mapping (0: not mapped)
    cow: bool = False  # write-protected because another process shares the frame


@dataclass
class Space:
    """One address space (one pmap) and its folding into 32 bits."""

    sid: int
    pmap: int
    refs: int = 1
    regions: list[Region] = field(default_factory=list)
    pages: dict[int, Page] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)  # 64-bit slot -> 32-bit slot
    used: set[int] = field(default_factory=set)  # 32-bit slots taken
    brk_start: int | None = None
    brk_end: int | None = None
    active: int = 0  # last event number of a process in it


@dataclass
class Proc:
    pid: int
    space: Space
    fds: dict[int, tuple[str, bool]] = field(default_factory=dict)  # fd -> (path, cut short)


class Importer:
    """Turns the calls of one log into ops (``convert``)."""

    def __init__(self, phys_pages: int, max_pages: int, source: str) -> None:
        self.source = source
        self.max_pages = max_pages
        self.phys_pages = phys_pages
        first = max(phys_pages // 4, 1)
        self.free: deque[int] = deque(range(first, phys_pages))
        self.data_frames = phys_pages - first
        self.users: dict[int, dict[tuple[int, int], None]] = {}  # frame -> (sid, page)
        self.cache: dict[tuple, int] = {}  # file page -> frame
        self.cached_key: dict[int, tuple] = {}  # frame -> file page
        self.idle_cache: dict[int, None] = {}  # cached frames no one maps, oldest first
        self.resident: deque[int] = deque()  # frames in allocation order (page-out victims)
        self.ops: list[Op] = []
        self.procs: dict[int, Proc] = {}
        self.spaces: dict[int, Space] = {}
        self.next_pmap = 1
        self.next_sid = 1
        self.next_shm = 1
        self.event = 0
        self.current: Space | None = None
        self.forking: dict[int, Started] = {}  # parent pid -> its fork-like call under way
        self.stats: dict[str, Any] = {"processes": 0, "page_outs": 0, "cache_reuses": 0, "collects": 0,
                                      "cow_pages": 0, "cow_writes": 0}
        self.used_calls: dict[str, int] = {}
        self.ignored: dict[str, int] = {}
        self.unplaced: dict[str, int] = {}
        self.unknown_fds = 0
        self.cut_paths = 0
        self.orphans = 0

    # -- ops ---------------------------------------------------------------------------------------

    def emit(self, op: Op) -> None:
        self.ops.append(op)

    def new_space(self) -> Space:
        self.emit(Create())
        space = Space(sid=self.next_sid, pmap=self.next_pmap)
        self.next_sid += 1
        self.next_pmap += 1
        self.spaces[space.sid] = space
        return space

    def place(self, space: Space, page: int) -> int | None:
        """The 32-bit VA of a 64-bit page (assigning its 4 MiB slot), or None."""
        s64, off = page >> (SLOT_SHIFT - PAGE_SHIFT), page & (SLOT_PAGES - 1)
        s32 = space.slots.get(s64)
        if s32 is None:
            s32 = self._free_slot(space, s64)
            if s32 is None:
                return None
            space.slots[s64] = s32
            space.used.add(s32)
        va = (s32 << SLOT_SHIFT) | (off << PAGE_SHIFT)
        return va if va >= USER_MIN else None

    def _free_slot(self, space: Space, s64: int) -> int | None:
        below = space.slots.get(s64 - 1)
        candidates = []
        if below is not None:
            candidates.append(below + 1)
        candidates.append(s64)
        above = space.slots.get(s64 + 1)
        if above is not None:
            candidates.append(above - 1)
        for s32 in candidates:
            if 0 <= s32 < SLOTS_32 and s32 not in space.used:
                return s32
        for s32 in range(1, SLOTS_32):
            if s32 not in space.used:
                return s32
        return None

    def va(self, space: Space, page: int) -> int:
        """The 32-bit VA of a page already placed."""
        s32 = space.slots[page >> (SLOT_SHIFT - PAGE_SHIFT)]
        return (s32 << SLOT_SHIFT) | ((page & (SLOT_PAGES - 1)) << PAGE_SHIFT)

    def runs(self, space: Space, pages: Iterable[int]) -> list[tuple[int, int]]:
        """Mapped pages -> [sva, eva) ranges of consecutive 32-bit VAs (ascending)."""
        vas = sorted(self.va(space, p) for p in pages)
        out: list[tuple[int, int]] = []
        for va in vas:
            if out and out[-1][1] == va:
                out[-1] = (out[-1][0], va + PAGE_SIZE)
            else:
                out.append((va, va + PAGE_SIZE))
        return out

    # -- frames ------------------------------------------------------------------------------------

    def alloc(self) -> int:
        if not self.free:
            self.reclaim()
        frame = self.free.popleft()
        self.resident.append(frame)
        return frame

    def reclaim(self) -> None:
        """The page daemon: reuse a cached file page no one maps, else page one out."""
        if self.idle_cache:
            frame = next(iter(self.idle_cache))
            self._drop_cached(frame)
            self.stats["cache_reuses"] += 1
            self.free.append(frame)
            return
        while self.resident:
            frame = self.resident.popleft()
            holders = self.users.get(frame)
            if not holders:
                continue  # stale: freed since
            pa = frame * PAGE_SIZE
            self.emit(IsModified(pa))
            self.emit(ClearModify(pa))  # written back
            self.emit(PageProtect(pa, 0))  # every mapping of it revoked
            for sid, page in list(holders):
                st = self.spaces[sid].pages[page]
                st.frame, st.prot, st.cow = None, 0, False
            del self.users[frame]
            if frame in self.cached_key:
                self._drop_cached(frame)
            self.stats["page_outs"] += 1
            if self.stats["page_outs"] % COLLECT_EVERY == 0:
                self.swap_out_idle()
            self.free.append(frame)
            return
        raise AssertionError("no frame to reclaim")  # every frame is free or held: unreachable

    def _drop_cached(self, frame: int) -> None:
        key = self.cached_key.pop(frame)
        del self.cache[key]
        self.idle_cache.pop(frame, None)

    def swap_out_idle(self) -> None:
        """``collect`` the least recently active other address space that maps anything."""
        live = [s for s in self.spaces.values()
                if s is not self.current and any(p.prot for p in s.pages.values())]
        if live:
            victim = min(live, key=lambda s: (s.active, s.sid))
            self.emit(Collect(victim.pmap))
            self.stats["collects"] += 1

    def hold(self, frame: int, space: Space, page: int) -> None:
        self.users.setdefault(frame, {})[(space.sid, page)] = None
        self.idle_cache.pop(frame, None)

    def release(self, frame: int, space: Space, page: int) -> None:
        holders = self.users[frame]
        del holders[(space.sid, page)]
        if holders:
            if len(holders) == 1:
                self._cow_write(frame)
            return
        del self.users[frame]
        if frame in self.cached_key:
            self.idle_cache[frame] = None  # page cache: kept until memory runs short
        else:
            self.free.append(frame)

    def _cow_write(self, frame: int) -> None:
        """The last sharer of a copy-on-write page writes it: no copy, write access back."""
        (sid, page), = self.users[frame]
        space = self.spaces[sid]
        st = space.pages[page]
        if not st.cow:
            return
        st.cow = False
        region = self.region_of(space, page)
        if st.prot and region is not None and region.prot & PROT_W:
            st.prot = region.prot
            self.emit(Enter(space.pmap, self.va(space, page), frame * PAGE_SIZE, st.prot, PROT_W, False, False))
            self.stats["cow_writes"] += 1

    # -- regions -----------------------------------------------------------------------------------

    def region_of(self, space: Space, page: int) -> Region | None:
        for r in space.regions:
            if r.start <= page < r.end:
                return r
        return None

    def carve(self, space: Space, lo: int, hi: int) -> list[Region]:
        """Split regions at lo and hi; return (and keep) the pieces inside [lo, hi)."""
        out: list[Region] = []
        kept: list[Region] = []
        for r in space.regions:
            if r.end <= lo or r.start >= hi:
                kept.append(r)
                continue
            if r.start < lo:
                kept.append(Region(r.start, lo, r.prot, r.shared, r.name, r.file, r.offset))
            inside = Region(max(r.start, lo), min(r.end, hi), r.prot, r.shared, r.name, r.file,
                            r.offset + max(r.start, lo) - r.start)
            kept.append(inside)
            out.append(inside)
            if r.end > hi:
                kept.append(Region(hi, r.end, r.prot, r.shared, r.name, r.file, r.offset + hi - r.start))
        kept.sort(key=lambda r: r.start)
        space.regions = kept
        return out

    def touched(self, lo: int, hi: int) -> list[int]:
        """The pages of [lo, hi) the program touches (the documented policy)."""
        n = hi - lo
        cap = self.max_pages
        if n <= cap:
            return list(range(lo, hi))
        runs = min(TOUCH_RUNS, cap)
        out: list[int] = []
        for i in range(runs):
            length = cap // runs + (1 if i < cap % runs else 0)
            start = lo + (i * (n - length)) // (runs - 1) if runs > 1 else lo
            out.extend(range(start, start + length))
        return sorted(set(out))

    def touch(self, space: Space, page: int, region: Region) -> None:
        """The program touches ``page``: fault it in (or upgrade its rights)."""
        st = space.pages.get(page)
        # A page still shared copy-on-write is entered without write access.
        prot = region.prot & ~PROT_W if st is not None and st.cow else region.prot
        if not prot or (st is not None and st.prot == prot):
            return
        va = self.place(space, page)
        if va is None:
            self.unplaced[region.name] = self.unplaced.get(region.name, 0) + 1
            return
        write = region.writes_private()
        if st is None or st.frame is None:
            key = None if write else region.key(page)
            if key is not None and key in self.cache:
                frame = self.cache[key]
            else:
                frame = self.alloc()
                if key is not None:
                    self.cache[key] = frame
                    self.cached_key[frame] = key
            if st is None:
                st = space.pages[page] = Page(frame)
            else:
                st.frame = frame
            self.hold(frame, space, page)
        access = PROT_W if prot & PROT_W and write else (PROT_R if prot & PROT_R else PROT_X)
        st.prot = prot
        assert st.frame is not None
        self.emit(Enter(space.pmap, va, st.frame * PAGE_SIZE, prot, access & prot, False, False))

    def map_region(self, space: Space, region: Region) -> None:
        self.unmap(space, region.start, region.end)
        space.regions.append(region)
        space.regions.sort(key=lambda r: r.start)
        for page in self.touched(region.start, region.end):
            self.touch(space, page, region)

    def unmap(self, space: Space, lo: int, hi: int, keep_regions: bool = False) -> None:
        """Remove the mappings of [lo, hi) and let go of the pages (and the regions)."""
        pages = [p for p in space.pages if lo <= p < hi]
        mapped = [p for p in pages if space.pages[p].prot]
        for sva, eva in self.runs(space, mapped):
            self.emit(Remove(space.pmap, sva, eva))
        for p in pages:
            st = space.pages.pop(p)
            st.prot = 0
            if st.frame is not None:
                self.release(st.frame, space, p)
        if not keep_regions:
            self.carve(space, lo, hi)
            space.regions = [r for r in space.regions if r.end <= lo or r.start >= hi]

    def unmap_all(self, space: Space) -> None:
        self.unmap(space, 0, 1 << 64)
        space.slots.clear()
        space.used.clear()
        space.brk_start = space.brk_end = None

    def protect(self, space: Space, lo: int, hi: int, prot: int) -> None:
        for r in self.carve(space, lo, hi):
            added = prot & ~r.prot
            r.prot = prot
            changed = []
            for p, st in space.pages.items():
                if st.prot and r.start <= p < r.end:
                    new = apply_protect(prot, st.prot) or 0
                    if new != st.prot:
                        changed.append(p)
                        st.prot = new
            for sva, eva in self.runs(space, changed):
                self.emit(Protect(space.pmap, sva, eva, prot))
            if added and prot:
                # The VM never adds rights with pmap_protect: the program's touches fault
                # the pages in (or upgrade them) with the new rights.
                for page in self.touched(r.start, r.end):
                    self.touch(space, page, r)

    # -- processes ---------------------------------------------------------------------------------

    def proc(self, pid: int) -> Proc:
        p = self.procs.get(pid)
        if p is not None:
            return p
        parent = next(iter(self.forking.values()), None)
        if parent is not None and parent.pid in self.procs:
            # The child runs before its parent's fork-like call returns in the log.
            del self.forking[parent.pid]
            return self.spawn(self.procs[parent.pid], pid, parent.name, parent.args)
        if self.procs:
            self.orphans += 1
        self.stats["processes"] += 1
        p = self.procs[pid] = Proc(pid, self.new_space())
        return p

    def spawn(self, parent: Proc, pid: int, name: str, args: tuple[str, ...]) -> Proc:
        self.stats["processes"] += 1
        flags = " ".join(args)
        if name == "vfork" or "CLONE_VM" in flags:
            space = parent.space
            space.refs += 1
            self.emit(Reference(space.pmap))
            child = Proc(pid, space, dict(parent.fds))
        else:
            child = Proc(pid, self.fork_space(parent.space), dict(parent.fds))
        self.procs[pid] = child
        return child

    def fork_space(self, parent: Space) -> Space:
        child = self.new_space()
        child.regions = [Region(r.start, r.end, r.prot, r.shared, r.name, r.file, r.offset) for r in parent.regions]
        child.slots = dict(parent.slots)
        child.used = set(parent.used)
        child.brk_start, child.brk_end = parent.brk_start, parent.brk_end
        write_protect: list[int] = []
        for page, st in parent.pages.items():
            if st.frame is None:
                continue  # paged out: the child faults it in from swap later (a page of its own)
            region = self.region_of(parent, page)
            cow = region is not None and region.writes_private()
            cst = child.pages[page] = Page(st.frame, cow=cow)
            self.hold(st.frame, child, page)
            if cow:
                st.cow = True
                self.stats["cow_pages"] += 1
            if st.prot:
                cst.prot = st.prot & ~PROT_W if cow else st.prot
                if cow and st.prot & PROT_W:
                    write_protect.append(page)
                    st.prot &= ~PROT_W
            if cst.prot:
                self.emit(Enter(child.pmap, self.va(child, page), st.frame * PAGE_SIZE, cst.prot, 0, False, False))
        by_prot: dict[int, list[int]] = {}
        for page in write_protect:
            by_prot.setdefault(parent.pages[page].prot, []).append(page)
        for prot, pages in by_prot.items():
            for sva, eva in self.runs(parent, pages):
                self.emit(Protect(parent.pmap, sva, eva, prot))
        return child

    def leave(self, p: Proc) -> None:
        """The process lets go of its address space (exit, or execve of a sharer)."""
        space = p.space
        if space.refs > 1:
            space.refs -= 1
            self.emit(Destroy(space.pmap))
            return
        self.unmap_all(space)
        self.emit(Destroy(space.pmap))
        del self.spaces[space.sid]

    def exit(self, pid: int) -> None:
        p = self.procs.pop(pid, None)
        self.forking.pop(pid, None)
        if p is not None:
            self.leave(p)

    def execve(self, p: Proc) -> None:
        if p.space.refs > 1:
            self.leave(p)
            p.space = self.new_space()
        else:
            self.unmap_all(p.space)

    # -- calls -------------------------------------------------------------------------------------

    def file_of(self, p: Proc, fd: int) -> tuple[str, tuple]:
        known = p.fds.get(fd)
        if known is None:
            self.unknown_fds += 1
            return f"fd {fd} of process {p.pid}", ("fd", p.pid, fd)
        path, _ = known
        return path, ("file", path)

    def call(self, c: Call) -> None:
        p = self.proc(c.pid)
        self.event += 1
        p.space.active = self.event
        self.current = p.space
        if c.name in _FORKS:
            self.forking.pop(c.pid, None)
            if not c.failed and c.ret and c.ret > 0 and c.ret not in self.procs:
                self.spawn(p, c.ret, c.name, c.args)
            self.used_calls[c.name] = self.used_calls.get(c.name, 0) + 1
            return
        handler = getattr(self, f"sys_{c.name}", None)
        if handler is None or c.failed or c.ret is None:
            self.ignored[c.name] = self.ignored.get(c.name, 0) + 1
            return
        try:
            handler(p, c.args, c.ret)
        except (ValueError, IndexError) as exc:
            raise BadInput(f"{self.source}:{c.line}: cannot read the arguments of {c.name}: {exc}") from None
        self.used_calls[c.name] = self.used_calls.get(c.name, 0) + 1

    def sys_execve(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        self.execve(p)

    sys_execveat = sys_execve

    def sys_openat(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        path, cut = _path(args[1])
        self.cut_paths += cut
        p.fds[ret] = (path, cut)

    def sys_open(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        path, cut = _path(args[0])
        self.cut_paths += cut
        p.fds[ret] = (path, cut)

    def sys_close(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        p.fds.pop(_fd(args[0]), None)

    def sys_mmap(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        length, prot, flags, fd, off = _page_up(_int(args[1])), _prot(args[2]), args[3], _fd(args[4]), _int(args[5])
        if length == 0:
            return
        start, end = ret >> PAGE_SHIFT, (ret + length) >> PAGE_SHIFT
        shared = "MAP_SHARED" in flags
        if "MAP_ANONYMOUS" in flags or fd < 0:
            if shared:
                name, file = f"[shm {self.next_shm}]", ("shm", self.next_shm)
                self.next_shm += 1
                region = Region(start, end, prot, True, name, file, 0)
            else:
                region = Region(start, end, prot, False, "[anon]", None)
        else:
            name, file = self.file_of(p, fd)
            region = Region(start, end, prot, shared, name, file, off >> PAGE_SHIFT)
        self.map_region(p.space, region)

    sys_mmap2 = sys_mmap

    def sys_munmap(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        addr, length = _int(args[0]), _page_up(_int(args[1]))
        self.unmap(p.space, addr >> PAGE_SHIFT, (addr + length) >> PAGE_SHIFT)

    def sys_mprotect(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        addr, length, prot = _int(args[0]), _page_up(_int(args[1])), _prot(args[2])
        self.protect(p.space, addr >> PAGE_SHIFT, (addr + length) >> PAGE_SHIFT, prot)

    sys_pkey_mprotect = sys_mprotect

    def sys_madvise(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        if "MADV_DONTNEED" in args[2] or "MADV_FREE" in args[2] or "MADV_REMOVE" in args[2]:
            addr, length = _int(args[0]), _page_up(_int(args[1]))
            # Anonymous pages go back (zero-fill on the next touch); file pages stay cached.
            self.unmap(p.space, addr >> PAGE_SHIFT, (addr + length) >> PAGE_SHIFT, keep_regions=True)

    def sys_brk(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        space = p.space
        if space.brk_start is None:
            space.brk_start = space.brk_end = ret
            return
        old_end = _page_up(space.brk_end) >> PAGE_SHIFT
        new_end = _page_up(ret) >> PAGE_SHIFT
        space.brk_end = ret
        if new_end > old_end:
            region = Region(old_end, new_end, PROT_R | PROT_W, False, "[heap]", None)
            self.map_region(space, region)
        elif new_end < old_end:
            self.unmap(space, new_end, old_end)

    def sys_mremap(self, p: Proc, args: tuple[str, ...], ret: int) -> None:
        space = p.space
        old, old_len, new_len = _int(args[0]), _page_up(_int(args[1])), _page_up(_int(args[2]))
        lo, hi = old >> PAGE_SHIFT, (old + old_len) >> PAGE_SHIFT
        region = self.region_of(space, lo)
        template = region or Region(lo, hi, PROT_R | PROT_W, False, "[anon]", None)
        # Moved or resized: the old pages go, the new range is touched like a new mapping
        # (a copy's frames are new: the VM moves the data, the pmap sees new mappings).
        self.unmap(space, lo, hi)
        start = ret >> PAGE_SHIFT
        self.map_region(space, Region(start, start + (new_len >> PAGE_SHIFT), template.prot, template.shared,
                                      template.name, template.file, template.offset))

    # -- the whole log -----------------------------------------------------------------------------

    def run(self, events: Iterable[Call | Exit | Started]) -> None:
        for ev in events:
            if isinstance(ev, Exit):
                if ev.pid in self.procs:
                    self.exit(ev.pid)
            elif isinstance(ev, Started):
                if ev.pid in self.procs:
                    self.forking[ev.pid] = ev
            else:
                self.call(ev)

    def warnings(self) -> list[str]:
        out = []
        if self.unplaced:
            total = sum(self.unplaced.values())
            named = ", ".join(f"{name} ({n})" for name, n in sorted(self.unplaced.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append(f"{total} touched page(s) could not be placed in the 32-bit user range and were "
                       f"left out: {named}")
        if self.unknown_fds:
            out.append(f"{self.unknown_fds} file mapping(s) through a descriptor the log never opened "
                       f"(record with openat): each treated as a file of its own, shared with no other process")
        if self.cut_paths:
            out.append(f"{self.cut_paths} file name(s) cut short by strace (record with -s 256): "
                       f"files whose names start alike are taken as one")
        if self.orphans:
            out.append(f"{self.orphans} process(es) appear with no fork in the log: each given a new pmap")
        return out


def convert(log_path: str, *, phys_pages: int,
            max_pages_per_mapping: int = DEFAULT_MAX_PAGES_PER_MAPPING) -> Stream:
    """Import an strace log (see the module's docstring for what becomes what)."""
    name = os.path.basename(str(log_path))
    try:
        with open(log_path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadInput(f"{log_path}: cannot read: {exc.strerror or exc}") from None
    if max_pages_per_mapping < 1:
        raise BadInput(f"--max-pages-per-mapping {max_pages_per_mapping} is not a positive integer")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # strace escapes what it prints; keep going on odd bytes
    importer = Importer(phys_pages, max_pages_per_mapping, str(log_path))
    importer.run(read_log(text.splitlines(), str(log_path)))
    if not importer.ops:
        raise BadInput(f"{log_path}: no process or memory system call in the log (recorded with "
                       f"strace -f -e trace=memory,process,openat,close?)")
    warnings = importer.warnings()
    origin = {
        "importer": "strace",
        "log": name,
        "log_sha256": hashlib.sha256(data).hexdigest(),
        "max_pages_per_mapping": max_pages_per_mapping,
        "data_frames": importer.data_frames,
        "calls": dict(sorted(importer.used_calls.items())),
        "ignored": dict(sorted(importer.ignored.items())),
        **importer.stats,
        "unplaced": {"pages": sum(importer.unplaced.values()), "regions": dict(sorted(importer.unplaced.items()))},
        "warnings": warnings,
    }
    return make_stream(importer.ops, phys_pages=phys_pages, origin=origin)
