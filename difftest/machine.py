"""The simulated machine: constants of the common ABI and the physical-memory pool.

Every backend instance owns one ``PhysPool``.  Backends allocate and free page-table
memory only through it, which is how the harness measures from outside what each backend
holds and frees (MODEL.md section 2).  Each frame carries a tag (its use) and an owner
(the pmap it was allocated for, or ``NO_OWNER``), so that held frames can be attributed
per pmap without asking the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from collections import deque
from itertools import compress, repeat
from typing import Iterable

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1

USER_MIN = 0x00001000
USER_MAX = 0xEFC00000  # exclusive
KERNEL_MIN = 0xF0000000
KERNEL_MAX = 0xFFFFF000  # exclusive
KERNEL_PMAP = 0

DEFAULT_PHYS_PAGES = 8192  # 32 MiB, the Shark of PR 5666

NO_OWNER = -1


class Tag(IntEnum):
    """What a physical frame is used for."""

    FREE = 0
    DATA = 1
    PT = 2
    L1 = 3
    META = 4

    def __str__(self) -> str:
        return self.name.lower()


_FREE, _DATA, _PT, _L1 = int(Tag.FREE), int(Tag.DATA), int(Tag.PT), int(Tag.L1)
_TAG_BY_CODE = tuple(Tag)  # Tag(code) without the Enum call: audits read thousands
assert all(tag == code for code, tag in enumerate(_TAG_BY_CODE))
# For each tag, a bytes.translate table mapping that tag to 1 and every other byte to 0.
_ONE_TAG = {tag: bytes(int(i == tag) for i in range(256)) for tag in Tag}


class OutOfMemory(Exception):
    """The pool has no free frame.  Raised by ``PhysPool.alloc``."""


class FrameError(Exception):
    """A frame was misused: freed twice, freed while free, or freed with the wrong tag.

    The pool also records every such error in ``PhysPool.violations`` so that the harness
    sees it even when a backend swallows the exception.
    """


@dataclass(frozen=True)
class PoolSnapshot:
    """A full copy of a pool's state, for exact before/after comparisons."""

    tags: bytes
    owners: tuple[int, ...]
    free_list: tuple[int, ...]
    allocs: int
    frees: int


class PhysPool:
    """``phys_pages`` frames of 4 KiB; PA = frame * PAGE_SIZE.

    Allocation pops a LIFO free list that starts in ascending order, so the frame numbers
    a backend gets depend only on its own sequence of allocs and frees: deterministic.
    """

    __slots__ = (
        "phys_pages",
        "_tags",
        "_owners",
        "_free",
        "_counts",
        "tag_counts",
        "_held",
        "allocs",
        "frees",
        "violations",
    )

    def __init__(self, phys_pages: int = DEFAULT_PHYS_PAGES) -> None:
        if phys_pages <= 0:
            raise ValueError(f"phys_pages must be positive, not {phys_pages}")
        self.phys_pages = phys_pages
        self._tags = bytearray(phys_pages)  # all Tag.FREE
        self._owners = [NO_OWNER] * phys_pages
        self._free = list(range(phys_pages - 1, -1, -1))
        self._counts = [0] * len(Tag)
        self._counts[Tag.FREE] = phys_pages
        # Frames per tag, indexed by the tag's int: the pool's own counts, for readers on
        # the per-op path that cannot afford a call per read (read-only).
        self.tag_counts = self._counts
        # (owner, tag) -> frames held, for every non-free tag (reserved data frames are
        # held by NO_OWNER).
        self._held: dict[tuple[int, int], int] = {}
        self.allocs = 0  # monotonic: frames handed out by alloc()
        self.frees = 0  # monotonic: frames given back by free()
        self.violations: list[str] = []

    # -- allocation ----------------------------------------------------------------

    def alloc(self, tag: Tag, owner: int = NO_OWNER) -> int:
        """Take a free frame for ``tag`` on behalf of pmap ``owner``; raise OutOfMemory."""
        if tag == Tag.FREE:
            raise ValueError("cannot allocate a frame as free")
        if not self._free:
            raise OutOfMemory(f"no free frame for {Tag(tag)} (all {self.phys_pages} in use)")
        frame = self._free.pop()
        self._tags[frame] = tag
        self._owners[frame] = owner
        counts = self._counts
        counts[Tag.FREE] -= 1
        counts[tag] += 1
        key = (owner, int(tag))
        self._held[key] = self._held.get(key, 0) + 1
        self.allocs += 1
        return frame

    def free(self, frame: int, tag: Tag | None = None) -> None:
        """Give ``frame`` back.  Freeing a free frame, or with a wrong tag, is a FrameError."""
        if not 0 <= frame < self.phys_pages:
            msg = f"free of frame {frame}: outside the pool (0..{self.phys_pages - 1})"
            self.violations.append(msg)
            raise FrameError(msg)
        current = self._tags[frame]
        if current == Tag.FREE:
            msg = f"free of frame {frame:#x}: it is already free (double free)"
            self.violations.append(msg)
            raise FrameError(msg)
        if tag is not None and current != tag:
            msg = f"free of frame {frame:#x} as {Tag(tag)}: it is tagged {Tag(current)}"
            self.violations.append(msg)
            raise FrameError(msg)
        owner = self._owners[frame]
        key = (owner, current)
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        self._counts[current] -= 1
        self._counts[Tag.FREE] += 1
        self._tags[frame] = Tag.FREE
        self._owners[frame] = NO_OWNER
        self._free.append(frame)
        self.frees += 1

    def has_free(self, n: int = 1) -> bool:
        """True when ``n`` frames could be allocated now (for rollback-free ENOMEM paths)."""
        return len(self._free) >= n

    def reserve_data(self, frames: Iterable[int]) -> None:
        """Tag the given frames ``data`` before a stream runs (same numbers in every pool).

        Under memory pressure that is nearly every frame, and every lane of every stream
        does it: the frames are checked, tagged and taken off the free list at C speed
        (min/max, map, compress), not one by one in Python."""
        wanted = frames if isinstance(frames, (set, frozenset)) else set(frames)
        if not wanted:
            return
        n = self.phys_pages
        tags = self._tags
        if min(wanted) < 0 or max(wanted) >= n:
            frame = next(f for f in sorted(wanted) if not 0 <= f < n)
            raise ValueError(f"data frame {frame:#x} outside the pool of {n}")
        if any(map(tags.__getitem__, wanted)):  # (Tag.FREE is 0)
            frame = next(f for f in sorted(wanted) if tags[f] != _FREE)
            raise ValueError(f"data frame {frame:#x} is not free ({Tag(tags[frame])})")
        deque(map(tags.__setitem__, wanted, repeat(_DATA)), maxlen=0)  # (each tagged data)
        free = self._free
        still_free = tags.translate(_ONE_TAG[Tag.FREE])
        self._free = list(compress(free, map(still_free.__getitem__, free)))
        self._counts[Tag.FREE] -= len(wanted)
        self._counts[Tag.DATA] += len(wanted)
        key = (NO_OWNER, _DATA)
        self._held[key] = self._held.get(key, 0) + len(wanted)

    def copy(self) -> "PhysPool":
        """A pool in this one's state, at C speed (StreamRun reserves a stream's data frames
        once and gives each lane a copy)."""
        pool = PhysPool.__new__(PhysPool)
        pool.phys_pages = self.phys_pages
        pool._tags = bytearray(self._tags)
        pool._owners = self._owners.copy()
        pool._free = self._free.copy()
        pool._counts = pool.tag_counts = self._counts.copy()
        pool._held = self._held.copy()
        pool.allocs, pool.frees = self.allocs, self.frees
        pool.violations = self.violations.copy()
        return pool

    # -- reading -------------------------------------------------------------------

    def count(self, tag: Tag) -> int:
        """Frames currently carrying ``tag``."""
        return self._counts[tag]

    @property
    def free_frames(self) -> int:
        return self._counts[_FREE]  # (a plain int index: read on every enter)

    def held(self, owner: int, tag: Tag) -> int:
        """Frames tagged ``tag`` allocated on behalf of pmap ``owner``."""
        return self._held.get((owner, int(tag)), 0)

    def held_pt_l1(self, owner: int) -> tuple[int, int]:
        """``(held(owner, PT), held(owner, L1))`` in one call: the per-op frames check."""
        held = self._held
        return held.get((owner, _PT), 0), held.get((owner, _L1), 0)

    def held_by(self, owner: int) -> dict[str, int]:
        """Every non-data tag held by ``owner``, by tag name."""
        return {
            str(Tag(t)): n
            for (o, t), n in sorted(self._held.items())
            if o == owner and t != Tag.DATA
        }

    def owners(self) -> set[int]:
        """Pmaps (owners) holding any page-table or meta frame."""
        return {owner for (owner, tag) in self._held if tag != Tag.DATA}

    def tag_of(self, frame: int) -> Tag:
        code = self._tags[frame]
        return _TAG_BY_CODE[code] if code < len(_TAG_BY_CODE) else Tag(code)

    def owner_of(self, frame: int) -> int:
        return self._owners[frame]

    def frames_with(self, tag: Tag, owner: int | None = None) -> list[int]:
        """All frames with ``tag`` (and ``owner``, if given), ascending.  O(phys_pages), at
        C speed: audits only.  A few frames (page tables, free frames under pressure) are
        found one by one with ``find``; many with a translate of the tag bytes and a
        compress (which costs the same whatever the count)."""
        tags = self._tags
        code = int(tag)
        if tags.count(code) * 5 < self.phys_pages:
            frames = []
            find = tags.find
            frame = find(code)
            while frame >= 0:
                frames.append(frame)
                frame = find(code, frame + 1)
        else:
            frames = list(compress(range(self.phys_pages), tags.translate(_ONE_TAG[tag])))
        if owner is None:
            return frames
        owners = self._owners
        return [f for f in frames if owners[f] == owner]

    def check_conservation(self) -> list[str]:
        """Full audit: counts match the tags, the per-owner counts add up to them, the free
        list matches the free frames.  Scans the tags with C-speed primitives (count,
        translate, compress): cheap enough to run in every audit."""
        problems: list[str] = []
        tags = self._tags
        actual = [tags.count(t) for t in range(len(Tag))]
        held = [0] * len(Tag)
        for (_, t), n in self._held.items():
            held[t] += n
        for tag in Tag:
            if actual[tag] != self._counts[tag]:
                problems.append(
                    f"pool count of {tag} frames is {self._counts[tag]} but {actual[tag]} are tagged so"
                )
            if tag != Tag.FREE and held[tag] != actual[tag]:
                problems.append(
                    f"per-owner counts of {tag} frames add up to {held[tag]} but {actual[tag]} are tagged so"
                )
        if sum(self._counts) != self.phys_pages:
            problems.append(f"frames not conserved: {sum(self._counts)} counted of {self.phys_pages}")
        free = self._free
        if sorted(free) == self.frames_with(Tag.FREE):
            return problems  # the free list is exactly the frames tagged free, once each
        if len(free) != actual[Tag.FREE] or len(set(free)) != len(free):
            problems.append(
                f"free list holds {len(free)} entries for {actual[Tag.FREE]} free frames"
            )
        taken = [f for f in free if tags[f] != Tag.FREE]
        if taken:
            problems.append(
                f"free list holds {len(taken)} frames in use, first {taken[0]:#x} ({Tag(tags[taken[0]])})"
            )
        return problems

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(
            bytes(self._tags), tuple(self._owners), tuple(self._free), self.allocs, self.frees
        )
