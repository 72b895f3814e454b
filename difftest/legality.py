"""What the VM layer never asks of a pmap: legality beyond stream-file validity.

``streams.validate_ops`` checks what a stream file must satisfy to be run at all (ranges,
pmap lifetimes, PAs inside physical memory).  A stream can pass it and still do things the
VM system (UVM) never does; a backend that misbehaves there has no bug a kernel could hit.
Generators must not produce such streams and the shrinker must not reduce a reproducer into
one, so both check candidates with ``vm_legality_problems``.

The rules (each refusal names the op index and the rule):

``wired-revoke``
    ``page_protect(pa, prot)`` with neither ``r`` nor ``w`` in prot (revoke every mapping)
    while ``pa`` has a wired managed mapping.  The pager never pages out a wired page; the
    originals differ there (alpha keeps wired mappings, arm32 removes them).
``destroy-nonempty``
    ``destroy`` dropping the *last* reference while the pmap still has user mappings: the
    VM unmaps the whole address space (``pmap_remove``) first.
``unwire-unwired``
    ``unwire(pmap, va)`` where the VM established no wired managed mapping: UVM unwires only
    what it wired (alpha v1.139 panics on an unwire of an invalid PTE), never a kenter'd
    mapping (always wired, removable only with ``kremove``).
``wired-replace``
    ``enter`` over a wired managed mapping with another PA or without ``wired``: a wired
    page is never paged out or replaced, and its map entry keeps faulting with
    ``PMAP_WIRED``; unwiring goes through ``pmap_unwire``.
``kenter-managed``
    ``kenter`` on a kernel VA that has a managed (``enter``) mapping, ``enter`` on pmap 0
    over a ``kenter``'d VA, ``remove``/``protect`` on pmap 0 over a range holding
    ``kenter``'d mappings, or ``kremove`` over a range holding managed ones: pmap(9) keeps
    the two kinds of kernel mapping apart (kenter'd ones are removed only by kremove, and
    kremove only removes what kenter made).
``collect-kernel``
    ``collect`` on the kernel pmap 0: only the swapper calls it, on a process's pmap.
``pmap-lifetime``
    an op on a pmap that does not exist, or ``reference``/``destroy`` of pmap 0 (the same
    rule ``validate_ops`` enforces; repeated so this check stands alone).

The model is the VM's view, not any backend's: the mappings the stream established and
did not remove.  ``collect`` changes nothing in it (the VM does not know what a pmap
forgot, and still removes its whole range before ``destroy``), and an ``enter`` with
``canfail`` counts as established (conservatively: whether it got ``ENOMEM`` depends on the
backend).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from difftest.machine import KERNEL_PMAP
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
    Op,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
    Update,
)

_BUCKET_SHIFT = 22  # 4 MiB

RULES = (
    "wired-revoke",
    "destroy-nonempty",
    "unwire-unwired",
    "wired-replace",
    "kenter-managed",
    "collect-kernel",
    "pmap-lifetime",
)


#: The op types ``VMModel.apply`` leaves the view unchanged for (what may skip it).
VIEW_UNCHANGED: frozenset[type] = frozenset(
    {Access, Extract, Collect, ClearModify, ClearReference, IsModified, IsReferenced, Update})


class VMModel:
    """The VM's view of a stream so far: pmaps, managed mappings (wired or not), kenter'd
    mappings, and which pages have wired mappings.

    ``check(op)`` says why the VM would never issue ``op`` now (or None); ``apply(op)``
    moves the view past it.  Both are O(1) per page touched.  Iteration is over dicts only
    (insertion-ordered), never sets, so generators that use this model are deterministic.
    """

    __slots__ = ("refs", "next_id", "maps", "buckets", "kmaps", "kbuckets", "pa_maps", "pa_wired")

    def __init__(self) -> None:
        self.refs: dict[int, int] = {}  # live user pmap -> references
        self.next_id = 1
        # pmap -> va -> (pa, wired): managed mappings (pmap 0 included)
        self.maps: dict[int, dict[int, tuple[int, bool]]] = {KERNEL_PMAP: {}}
        # pmap -> 4 MiB bucket -> {va: None}
        self.buckets: dict[int, dict[int, dict[int, None]]] = {KERNEL_PMAP: {}}
        self.kmaps: dict[int, int] = {}  # kenter'd kernel va -> pa
        self.kbuckets: dict[int, dict[int, None]] = {}
        self.pa_maps: dict[int, dict[tuple[int, int], None]] = {}  # pa -> managed (pmap, va)
        self.pa_wired: dict[int, int] = {}  # pa -> wired managed mappings

    # -- queries -------------------------------------------------------------------------------

    def alive(self, pmap: int) -> bool:
        return pmap == KERNEL_PMAP or pmap in self.refs

    def user_pmaps(self) -> list[int]:
        return list(self.refs)

    def get(self, pmap: int, va: int) -> tuple[int, bool] | None:
        return self.maps[pmap].get(va)

    def in_range(self, pmap: int, sva: int, eva: int) -> list[int]:
        """Managed VAs of ``pmap`` in [sva, eva), in bucket then insertion order."""
        return _in_range(self.buckets[pmap], sva, eva)

    def kentered_in_range(self, sva: int, eva: int) -> list[int]:
        return _in_range(self.kbuckets, sva, eva)

    def mappings_of(self, pa: int) -> list[tuple[int, int]]:
        return list(self.pa_maps.get(pa, ()))

    def is_wired_page(self, pa: int) -> bool:
        return self.pa_wired.get(pa, 0) > 0

    # -- the rules ---------------------------------------------------------------------------------

    def check(self, op: Op) -> str | None:
        """Why the VM never issues ``op`` in this state, as ``"rule: detail"``; None if it may."""
        t = type(op)
        if t is Create:
            return None
        pmap = getattr(op, "pmap", None)
        if pmap is not None and pmap != KERNEL_PMAP and pmap not in self.refs:
            return f"pmap-lifetime: pmap {pmap} does not exist"
        if t is Enter:
            old = self.maps[pmap].get(op.va)
            if old is not None and old[1] and (old[0] != op.pa or not op.wired):
                what = f"with pa {op.pa:#010x}" if old[0] != op.pa else "without wired"
                return (f"wired-replace: enter {what} over the wired mapping of pmap {pmap} "
                        f"va {op.va:#010x} (pa {old[0]:#010x})")
            if pmap == KERNEL_PMAP and op.va in self.kmaps:
                return f"kenter-managed: enter on pmap 0 over the kenter'd va {op.va:#010x}"
            return None
        if t is PageProtect:
            if not op.prot & (PROT_R | PROT_W) and self.pa_wired.get(op.pa, 0):
                return (f"wired-revoke: page_protect revokes every mapping of pa {op.pa:#010x}, "
                        f"which has {self.pa_wired[op.pa]} wired mapping(s)")
            return None
        if t is Destroy:
            if pmap == KERNEL_PMAP:
                return "pmap-lifetime: the kernel pmap 0 is never destroyed"
            if self.refs[pmap] == 1 and self.maps[pmap]:
                return (f"destroy-nonempty: the last reference of pmap {pmap} goes while it has "
                        f"{len(self.maps[pmap])} mapping(s) (remove them first)")
            return None
        if t is Reference:
            if pmap == KERNEL_PMAP:
                return "pmap-lifetime: the kernel pmap 0 is never referenced"
            return None
        if t is Unwire:
            m = self.maps[pmap].get(op.va)
            if m is None or not m[1]:
                what = "a kenter'd mapping" if pmap == KERNEL_PMAP and op.va in self.kmaps else (
                    "no mapping" if m is None else "an unwired mapping")
                return f"unwire-unwired: pmap {pmap} va {op.va:#010x} has {what}"
            return None
        if t is KEnter:
            if op.va in self.maps[KERNEL_PMAP]:
                return f"kenter-managed: kenter over the managed kernel mapping at {op.va:#010x}"
            return None
        if t is KRemove:
            managed = _in_range(self.buckets[KERNEL_PMAP], op.va, op.va + op.size)
            if managed:
                return f"kenter-managed: kremove over the managed kernel mapping at {managed[0]:#010x}"
            return None
        if t is Remove or t is Protect:
            if pmap == KERNEL_PMAP and self.kbuckets:
                kentered = _in_range(self.kbuckets, op.sva, op.eva)
                if kentered:
                    return f"kenter-managed: {op.name} on pmap 0 over the kenter'd mapping at {kentered[0]:#010x}"
            return None
        if t is Collect:
            if pmap == KERNEL_PMAP:
                return "collect-kernel: the VM never collects the kernel pmap"
            return None
        return None

    # -- moving on -----------------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """Move the view past ``op`` (which should have passed ``check``)."""
        t = type(op)
        if t is Enter:
            self.put(op.pmap, op.va, op.pa, op.wired)
        elif t is Remove:
            for va in self.in_range(op.pmap, op.sva, op.eva):
                self.delete(op.pmap, va)
        elif t is Protect:
            if not op.prot & PROT_R:
                for va in self.in_range(op.pmap, op.sva, op.eva):
                    self.delete(op.pmap, va)
        elif t is PageProtect:
            if not op.prot & (PROT_R | PROT_W):
                for pmap, va in self.mappings_of(op.pa):
                    self.delete(pmap, va)
        elif t is Unwire:
            m = self.maps[op.pmap].get(op.va)
            if m is not None and m[1]:
                self.put(op.pmap, op.va, m[0], False)
        elif t is KEnter:
            if op.va not in self.kmaps:
                self.kbuckets.setdefault(op.va >> _BUCKET_SHIFT, {})[op.va] = None
            self.kmaps[op.va] = op.pa
        elif t is KRemove:
            for va in _in_range(self.kbuckets, op.va, op.va + op.size):
                del self.kmaps[va]
                _bucket_del(self.kbuckets, va)
        elif t is Create:
            pmap = self.next_id
            self.next_id += 1
            self.refs[pmap] = 1
            self.maps[pmap] = {}
            self.buckets[pmap] = {}
        elif t is Reference:
            if op.pmap in self.refs:
                self.refs[op.pmap] += 1
        elif t is Destroy:
            pmap = op.pmap
            if pmap in self.refs:
                self.refs[pmap] -= 1
                if self.refs[pmap] <= 0:
                    for va in list(self.maps[pmap]):
                        self.delete(pmap, va)
                    del self.refs[pmap], self.maps[pmap], self.buckets[pmap]

    def put(self, pmap: int, va: int, pa: int, wired: bool) -> None:
        table = self.maps[pmap]
        old = table.get(va)
        if old is not None:
            self._unlink(pmap, va, old)
        else:
            buckets = self.buckets[pmap]
            bucket = buckets.get(va >> _BUCKET_SHIFT)
            if bucket is None:
                buckets[va >> _BUCKET_SHIFT] = {va: None}
            else:
                bucket[va] = None
        table[va] = (pa, wired)
        entries = self.pa_maps.get(pa)
        if entries is None:
            self.pa_maps[pa] = {(pmap, va): None}
        else:
            entries[(pmap, va)] = None
        if wired:
            self.pa_wired[pa] = self.pa_wired.get(pa, 0) + 1

    def delete(self, pmap: int, va: int) -> None:
        old = self.maps[pmap].pop(va, None)
        if old is None:
            return
        self._unlink(pmap, va, old)
        _bucket_del(self.buckets[pmap], va)

    def _unlink(self, pmap: int, va: int, old: tuple[int, bool]) -> None:
        pa, wired = old
        entries = self.pa_maps[pa]
        del entries[(pmap, va)]
        if not entries:
            del self.pa_maps[pa]
        if wired:
            left = self.pa_wired[pa] - 1
            if left:
                self.pa_wired[pa] = left
            else:
                del self.pa_wired[pa]


def _in_range(buckets: dict[int, dict[int, None]], sva: int, eva: int) -> list[int]:
    if not buckets or eva <= sva:
        return []
    lo, hi = sva >> _BUCKET_SHIFT, (eva - 1) >> _BUCKET_SHIFT
    if lo == hi:  # within one bucket (most ranges)
        bucket = buckets.get(lo)
        return [va for va in bucket if sva <= va < eva] if bucket is not None else []
    if hi - lo + 1 <= len(buckets):
        keys: Iterable[int] = [k for k in range(lo, hi + 1) if k in buckets]
    else:
        keys = sorted(k for k in buckets if lo <= k <= hi)
    out: list[int] = []
    for k in keys:
        bucket = buckets[k]
        if sva <= k << _BUCKET_SHIFT and (k + 1) << _BUCKET_SHIFT <= eva:
            out.extend(bucket)  # a bucket wholly inside the range: every VA of it
        else:
            out.extend([va for va in bucket if sva <= va < eva])
    return out


def _bucket_del(buckets: dict[int, dict[int, None]], va: int) -> None:
    key = va >> _BUCKET_SHIFT
    bucket = buckets[key]
    del bucket[va]
    if not bucket:
        del buckets[key]


def _ops_of(stream_or_ops: object) -> Sequence[Op]:
    ops = getattr(stream_or_ops, "ops", stream_or_ops)
    return ops  # type: ignore[return-value]


def vm_legality_problems(stream_or_ops: object, *, first_only: bool = False) -> list[str]:
    """Every op of a stream (or op sequence) the VM layer would never issue, as
    ``"op N (kind): rule: detail"``; empty when the stream is VM-legal.

    The op is still applied after a problem (so later problems are found relative to what
    the stream actually did); ``first_only`` stops at the first problem.
    """
    model = VMModel()
    problems: list[str] = []
    for index, op in enumerate(_ops_of(stream_or_ops)):
        problem = model.check(op)
        if problem is not None:
            problems.append(f"op {index} ({op.name}): {problem}")
            if first_only:
                return problems
            if problem.startswith("pmap-lifetime"):
                continue  # cannot apply an op on a pmap that is not there
        model.apply(op)
    return problems


def first_problem(stream_or_ops: object) -> str | None:
    problems = vm_legality_problems(stream_or_ops, first_only=True)
    return problems[0] if problems else None


def is_vm_legal(stream_or_ops: object) -> bool:
    return not vm_legality_problems(stream_or_ops, first_only=True)


def legal_stream_problem(stream: object, phys_pages: int | None = None) -> str | None:
    """The first reason ``stream`` is not runnable-and-legal: ``validate_ops`` and then
    ``vm_legality_problems``; None when it is both."""
    from difftest.errors import StreamError
    from difftest.streams import validate_ops

    ops = _ops_of(stream)
    pages = phys_pages if phys_pages is not None else getattr(stream, "phys_pages")
    try:
        validate_ops(ops, pages)
    except StreamError as err:
        return str(err)
    return first_problem(ops)
