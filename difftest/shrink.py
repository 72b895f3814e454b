"""Signature-preserving minimisation of reproducer streams.

``shrink(stream, harness, signature)`` looks for a smaller stream whose run still shows the
divergence *signature* (``Divergence.signature``: kind, backend, op kind, field, class),
not just "some divergence": a reduction that turns one bug into another is refused, so a
minimised reproducer always reproduces the bug it was filed for.

A candidate is accepted only when

1. it is a valid stream (``streams.validate_ops``),
2. it is VM-legal (``legal``, by default ``legality.vm_legality_problems``), so the
   reproducer never does what the VM layer never does,
3. it is strictly simpler than the best so far (``_size_key``: fewer ops, fewer pmaps,
   fewer distinct pages, simpler fields, lower addresses), which guarantees termination,
4. and a run of it on every backend of the harness contains the exact signature.

Passes, repeated until one round changes nothing or the time budget runs out (the best
stream so far is returned either way):

* truncate after the op where the signature first appears (after every accepted step);
* focus on the pmap the divergence names (every other pmap, the kernel's ops and page
  ops on other pages deleted at once);
* delete whole pmaps (their create and every op naming them, later ids renumbered),
  every op of one kind, and all wiring at once (every unwire, every enter unwired);
* delta debugging: delete chunks of ops, halving the chunk size down to single ops
  (deleting a ``create`` deletes its pmap's ops and renumbers later ids);
* simplify values: merge pmaps, narrow ranges, clear wired / canfail / access, lower prot
  and access kinds, merge pages and renumber them low, move addresses to low regions and
  low offsets (monotonic maps, so ranges keep covering the same mappings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from difftest.errors import BadInput, StreamError
from difftest.legality import vm_legality_problems
from difftest.machine import KERNEL_MIN, KERNEL_PMAP, PAGE_SIZE, USER_MIN
from difftest.ops import (
    F_PA,
    F_PMAP,
    F_SIZE,
    F_VA,
    Access,
    Create,
    Destroy,
    Enter,
    KEnter,
    KRemove,
    Op,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
)
from difftest.streams import Stream, validate_ops

_REGION_SHIFT = 22  # 4 MiB
_REGION = 1 << _REGION_SHIFT

LegalityCheck = Callable[[Any], Any]


@dataclass
class ShrinkResult:
    """The smallest stream found that still shows ``signature``."""

    stream: Stream
    signature: str
    runs: int  # harness runs (each on every backend)
    elapsed: float  # seconds
    reductions: int  # accepted candidates
    original_ops: int = 0
    complete: bool = False  # every pass ran to a fixpoint within the budget
    passes: dict[str, int] = field(default_factory=dict)  # reductions per pass


class _OutOfTime(Exception):
    pass


# -- op helpers -----------------------------------------------------------------------------------


def _has_pmap(op: Op) -> bool:
    return any(kind == F_PMAP for _, kind in op.FIELDS)


def _with(op: Op, **changes: Any) -> Op:
    values = {name: getattr(op, name) for name, _ in op.FIELDS}
    values.update(changes)
    return type(op)(**values)


def _create_ids(ops: Sequence[Op]) -> dict[int, int]:
    """op index of each create -> the pmap id it makes."""
    out: dict[int, int] = {}
    next_id = 1
    for i, op in enumerate(ops):
        if type(op) is Create:
            out[i] = next_id
            next_id += 1
    return out


def delete_ops(ops: Sequence[Op], indexes: Iterable[int]) -> list[Op]:
    """Delete the ops at ``indexes``; a deleted ``create`` takes every op naming its pmap
    with it, and later pmap ids are renumbered (ids are assigned 1, 2, ... by creates)."""
    drop = set(indexes)
    creates = _create_ids(ops)
    gone = sorted(creates[i] for i in drop if i in creates)
    if not gone:
        return [op for i, op in enumerate(ops) if i not in drop]
    gone_set = set(gone)
    out: list[Op] = []
    for i, op in enumerate(ops):
        if i in drop:
            continue
        if _has_pmap(op):
            p = op.pmap
            if p in gone_set:
                continue
            if p > gone[0]:
                shift = sum(1 for g in gone if g < p)
                op = _with(op, pmap=p - shift)
        out.append(op)
    return out


def merge_pmaps(ops: Sequence[Op], src: int, dst: int) -> list[Op] | None:
    """Ops of pmap ``src`` go to pmap ``dst`` (both user pmaps): src's create, reference
    and destroy ops disappear, later ids are renumbered."""
    creates = _create_ids(ops)
    src_create = next((i for i, p in creates.items() if p == src), None)
    if src_create is None:
        return None
    out: list[Op] = []
    for i, op in enumerate(ops):
        if i == src_create:
            continue
        if _has_pmap(op):
            p = op.pmap
            if p == src:
                if type(op) in (Reference, Destroy):
                    continue
                p = dst
            if p > src:
                p -= 1
            if p != op.pmap:
                op = _with(op, pmap=p)
        out.append(op)
    return out


def _space(op: Op) -> str:
    """'k' for ops on kernel addresses, 'u' for user ones."""
    if type(op) in (KEnter, KRemove):
        return "k"
    return "k" if getattr(op, "pmap", None) == KERNEL_PMAP else "u"


def _addresses(ops: Sequence[Op]) -> dict[str, set[int]]:
    """Page addresses used per space: every va/sva, and eva - one page (the last page a
    range covers), and va + size - one page for kremove."""
    out: dict[str, set[int]] = {"u": set(), "k": set()}
    for op in ops:
        s = out[_space(op)]
        t = type(op)
        if t is Remove or t is Protect:
            s.add(op.sva)
            s.add(op.eva - PAGE_SIZE)
        elif t is KRemove:
            s.add(op.va)
            s.add(op.va + op.size - PAGE_SIZE)
        elif hasattr(op, "va"):
            s.add(op.va)
    return out


def remap_addresses(ops: Sequence[Op], maps: dict[str, dict[int, int]]) -> list[Op]:
    """Apply page-address maps (per space; monotonic, so ranges keep their contents)."""
    out = []
    for op in ops:
        f = maps[_space(op)]
        t = type(op)
        if t is Remove or t is Protect:
            op = _with(op, sva=f[op.sva], eva=f[op.eva - PAGE_SIZE] + PAGE_SIZE)
        elif t is KRemove:
            va = f[op.va]
            op = _with(op, va=va, size=f[op.va + op.size - PAGE_SIZE] + PAGE_SIZE - va)
        elif hasattr(op, "va"):
            op = _with(op, va=f[op.va])
        out.append(op)
    return out


def _region_packing(addrs: set[int], first_region: int) -> dict[int, int]:
    """Map the used 4 MiB regions onto consecutive regions from ``first_region``,
    keeping each address's offset in its region."""
    regions = sorted({a >> _REGION_SHIFT for a in addrs})
    new = {r: first_region + i for i, r in enumerate(regions)}
    return {a: (new[a >> _REGION_SHIFT] << _REGION_SHIFT) | (a & (_REGION - 1)) for a in addrs}


def _offset_ranking(addrs: set[int], keep_halves: bool, lowest_page: int) -> dict[int, int]:
    """Within each region, map the used page offsets to 0, 1, 2, ... in order (or, with
    ``keep_halves``, rank separately in each 2 MiB half and in each 1 MiB quarter
    boundary side, keeping which half/quarter a page is in)."""
    out: dict[int, int] = {}
    by_region: dict[int, list[int]] = {}
    for a in sorted(addrs):
        by_region.setdefault(a >> _REGION_SHIFT, []).append(a)
    for region, vas in by_region.items():
        base = region << _REGION_SHIFT
        groups: dict[int, list[int]] = {}
        for a in vas:
            quarter = ((a - base) >> 20) if keep_halves else 0
            groups.setdefault(quarter, []).append(a)
        for quarter, members in groups.items():
            start = base + (quarter << 20)
            first = max(start, lowest_page) if start <= lowest_page < start + (1 << 20) else start
            for rank, a in enumerate(members):
                out[a] = first + rank * PAGE_SIZE
    return out


def _popcount(x: int) -> int:
    return bin(x).count("1")


def _op_complexity(op: Op) -> int:
    t = type(op)
    if t is Enter:
        return _popcount(op.prot) + _popcount(op.access) + op.wired + op.canfail
    if t is Remove or t is Protect:
        c = (op.eva - op.sva) // PAGE_SIZE
        return c + (_popcount(op.prot) if t is Protect else 0)
    if t is KRemove:
        return op.size // PAGE_SIZE
    if t is KEnter or t is PageProtect:
        return _popcount(op.prot)
    if t is Access:
        return {"r": 0, "w": 1, "x": 2}[op.kind]
    return 0


def _size_key(ops: Sequence[Op]) -> tuple[int, int, int, int, int]:
    creates = 0
    pas: set[int] = set()
    complexity = 0
    addr = 0
    for op in ops:
        if type(op) is Create:
            creates += 1
        for name, kind in op.FIELDS:
            if kind == F_PA:
                pas.add(getattr(op, name))
            elif kind == F_VA or kind == F_SIZE:
                value = getattr(op, name)
                addr += (value - KERNEL_MIN if value >= KERNEL_MIN and kind == F_VA else value) >> 12
        complexity += _op_complexity(op)
    return (len(ops), creates, len(pas), complexity, addr + sum(pas) // PAGE_SIZE)


# -- the shrinker ----------------------------------------------------------------------------------


class _Shrinker:
    def __init__(self, stream: Stream, harness: Any, signature: str, budget: float,
                 legal: LegalityCheck | None, progress: Callable[[str], None] | None,
                 time_limit: float | None = None, max_runs: int | None = None) -> None:
        self.original = stream
        self.phys_pages = stream.phys_pages
        self.harness = harness
        self.signature = signature
        self.started = time.monotonic()
        self.deadline = self.started + max(0.0, budget)
        self.max_runs = max_runs  # a budget of work: the same stream shrinks alike on any machine
        if legal is vm_legality_problems:
            self.legal: LegalityCheck | None = lambda ops: vm_legality_problems(ops, first_only=True)
        else:
            self.legal = legal
        self.progress = progress
        if time_limit is None and signature.startswith("hang:"):
            time_limit = 10.0  # a hang shows only under a time limit
        self.time_limit = time_limit
        self.best: list[Op] = list(stream.ops)
        self.best_key = _size_key(self.best)
        self.first_index = len(self.best) - 1
        self.runs = 0
        self.reductions = 0
        self.passes: dict[str, int] = {}
        self.seen: set[tuple[Op, ...]] = set()
        self.last_hit: Any = None  # the first Divergence with the signature, last run
        self.hit: Any = None  # ... in the best stream's run

    # -- testing a candidate ----------------------------------------------------------------------

    def find_first(self) -> None:
        """Find where the signature first shows, running prefixes of growing length (a
        long stream's bug usually shows early; prefixes of a legal stream are legal).
        Not bounded by the budget: without it there is nothing to shrink."""
        ops = self.best
        n = 256
        while True:
            prefix = ops[:n]
            first = self._run(prefix, bounded=False)
            if first is not None:
                self.best, self.best_key = list(prefix), _size_key(prefix)
                self.first_index = min(first, len(prefix) - 1)
                self.hit = self.last_hit
                return
            if n >= len(ops):
                raise BadInput(f"the stream does not show the signature {self.signature}")
            n *= 4

    def _run(self, ops: Sequence[Op], bounded: bool = True) -> int | None:
        """Run ``ops``; the index of the first divergence with the signature, or None."""
        if bounded and ((self.max_runs is not None and self.runs >= self.max_runs)
                        or time.monotonic() > self.deadline):
            raise _OutOfTime
        self.runs += 1
        stream = Stream(tuple(ops), self.phys_pages, {}, free_frames=self.original.free_frames)
        if self.time_limit:
            result = self.harness.run(stream, time_limit=self.time_limit)
        else:
            result = self.harness.run(stream)
        first = result.first(self.signature)
        if first is None:
            return None
        self.last_hit = first
        return first.op_index if first.op_index >= 0 else 0

    def legal_problem(self, ops: Sequence[Op]) -> str | None:
        try:
            validate_ops(ops, self.phys_pages)
        except StreamError as err:
            return str(err)
        if self.legal is not None:
            problems = self.legal(ops)
            if problems:
                return problems[0] if isinstance(problems, (list, tuple)) else str(problems)
        return None

    def accept(self, ops: list[Op], pass_name: str) -> bool:
        """Test ``ops``; make it the best if it is simpler, legal and keeps the signature."""
        key = _size_key(ops)
        if key >= self.best_key:
            return False
        frozen = tuple(ops)
        if frozen in self.seen:
            return False
        self.seen.add(frozen)
        if self.legal_problem(ops) is not None:
            return False
        first = self._run(ops)
        if first is None:
            return False
        self.best, self.best_key, self.first_index = ops, key, min(first, len(ops) - 1)
        self.hit = self.last_hit
        self.reductions += 1
        self.passes[pass_name] = self.passes.get(pass_name, 0) + 1
        if self.progress is not None:
            self.progress(f"{pass_name}: {len(ops)} ops")
        self.truncate()
        return True

    def truncate(self) -> None:
        if self.first_index + 1 < len(self.best):
            self.accept(self.best[: self.first_index + 1], "truncate")

    # -- passes -----------------------------------------------------------------------------------------

    def run(self) -> bool:
        """Shrink until a round changes nothing; True if that happened within the budget."""
        self.find_first()
        try:
            self.truncate()
            while True:
                before = self.best_key
                self.focus()
                self.drop_kinds()
                self.drop_pmaps()
                self.drop_wiring()
                self.ddmin()
                self.merge_pmaps()
                self.simplify_fields()
                self.simplify_pages()
                self.simplify_addresses()
                if self.best_key == before:
                    return True
        except _OutOfTime:
            return False

    def focus(self) -> None:
        """Keep only the pmaps the divergence is about: the one its location names, else the
        one its op names, else those mapping the page its op names.  Candidates, most
        aggressive first: those pmaps with only the page-wide ops on their own pages; with
        every page-wide op; with the kernel's ops too.  One run each, and a long stream of
        many pmaps becomes the story of one or two."""
        keep = self._focus_pmaps()
        if not keep:
            return
        creates = _create_ids(self.best)
        others = [i for i, p in creates.items() if p not in keep]
        if not others and not any(_space(op) == "k" for op in self.best):
            return
        alone = delete_ops(self.best, others)
        mine = {op.pa for op in alone if type(op) is Enter}
        strict = [op for op in alone if _space(op) == "u" and (not hasattr(op, "pa") or op.pa in mine)]
        user_only = [op for op in alone if _space(op) == "u"]
        for candidate in (strict, user_only, alone):
            if self.accept(candidate, "focus-pmap"):
                return

    def _focus_pmaps(self) -> set[int]:
        parts = (getattr(self.hit, "location", "") or "").split()
        if len(parts) >= 2 and parts[0] == "pmap" and parts[1].isdigit():
            return {int(parts[1])} - {KERNEL_PMAP}
        if not 0 <= self.first_index < len(self.best):
            return set()
        op = self.best[self.first_index]
        pmap = getattr(op, "pmap", None)
        if pmap is not None:
            return {pmap} - {KERNEL_PMAP}
        pa = getattr(op, "pa", None)
        if pa is not None:
            return {o.pmap for o in self.best[: self.first_index] if type(o) is Enter and o.pa == pa} - {KERNEL_PMAP}
        return set()

    def drop_pmaps(self) -> None:
        ids = sorted(set(_create_ids(self.best).values()), reverse=True)
        for pmap in ids:
            creates = {p: i for i, p in _create_ids(self.best).items()}
            if pmap in creates:
                self.accept(delete_ops(self.best, [creates[pmap]]), "drop-pmap")

    def drop_kinds(self) -> None:
        kinds = sorted({op.name for op in self.best} - {"create"})
        for name in kinds:
            idx = [i for i, op in enumerate(self.best) if op.name == name]
            if idx:
                self.accept(delete_ops(self.best, idx), "drop-kind")

    def drop_wiring(self) -> None:
        """Every enter unwired and every unwire gone at once: one field change alone would
        leave an unwire of an unwired mapping (illegal) behind."""
        if any(type(op) is Unwire for op in self.best):
            candidate = [_with(op, wired=False) if type(op) is Enter and op.wired else op
                         for op in self.best if type(op) is not Unwire]
            self.accept(candidate, "drop-wiring")

    def ddmin(self) -> None:
        """Delete chunks, from the end backwards, halving the chunk size down to one op."""
        size = max(1, len(self.best) // 2)
        while True:
            i = len(self.best) - size
            while i > -size:
                lo, hi = max(0, i), min(len(self.best), i + size)
                if lo < hi:
                    self.accept(delete_ops(self.best, range(lo, hi)), "delete-one" if size == 1 else "delete-chunk")
                i -= size
            if size == 1:
                return
            size //= 2

    def merge_pmaps(self) -> None:
        ids = sorted(set(_create_ids(self.best).values()))
        for src in reversed(ids):
            for dst in ids:
                if dst >= src:
                    break
                merged = merge_pmaps(self.best, src, dst)
                if merged is not None and self.accept(merged, "merge-pmaps"):
                    break

    def simplify_fields(self) -> None:
        i = len(self.best) - 1
        while i >= 0:
            if i < len(self.best):
                for variant in _variants(self.best[i], self.best):
                    candidate = list(self.best)
                    candidate[i] = variant
                    if self.accept(candidate, "simplify-field"):
                        break
            i -= 1

    def simplify_pages(self) -> None:
        pas = _pages_in_order(self.best)
        if len(pas) > 1:
            keep = pas[0]
            for pa in reversed(pas[1:]):
                if pa in _pages_in_order(self.best):
                    self.accept(_map_pages(self.best, {pa: keep}), "merge-pages")
        pas = _pages_in_order(self.best)
        low = {pa: (i + 1) * PAGE_SIZE for i, pa in enumerate(pas)}
        if len(pas) < self.phys_pages - 1 and any(k != v for k, v in low.items()):
            self.accept(_map_pages(self.best, low), "renumber-pages")

    def simplify_addresses(self) -> None:
        for space, first_region in (("u", USER_MIN >> _REGION_SHIFT), ("k", KERNEL_MIN >> _REGION_SHIFT)):
            for make in (
                lambda addrs: _region_packing(addrs, max(first_region, 1) if space == "u" else first_region),
                lambda addrs: _offset_ranking(addrs, keep_halves=False, lowest_page=USER_MIN),
                lambda addrs: _offset_ranking(addrs, keep_halves=True, lowest_page=USER_MIN),
            ):
                addrs = _addresses(self.best)
                if not addrs[space]:
                    break
                f = make(addrs[space])
                maps = {s: {a: a for a in addrs[s]} for s in ("u", "k")}
                maps[space] = f
                try:
                    candidate = remap_addresses(self.best, maps)
                except KeyError:  # pragma: no cover - every address is in the map
                    continue
                if candidate != self.best:
                    self.accept(candidate, "lower-addresses")


def _pages_in_order(ops: Sequence[Op]) -> list[int]:
    seen: dict[int, None] = {}
    for op in ops:
        pa = getattr(op, "pa", None)
        if pa is not None:
            seen.setdefault(pa, None)
    return list(seen)


def _map_pages(ops: Sequence[Op], mapping: dict[int, int]) -> list[Op]:
    out = []
    for op in ops:
        pa = getattr(op, "pa", None)
        if pa is not None and pa in mapping and mapping[pa] != pa:
            op = _with(op, pa=mapping[pa])
        out.append(op)
    return out


def _subsets_simpler(prot: int) -> list[int]:
    """Proper subsets of prot, fewest bits first (r before w before x on ties)."""
    subs = [s for s in range(8) if s & ~prot == 0 and s != prot]
    return sorted(subs, key=lambda s: (_popcount(s), s))


def _variants(op: Op, ops: Sequence[Op]) -> list[Op]:
    """Simpler forms of ``op``, most promising first."""
    t = type(op)
    out: list[Op] = []
    if t is Enter:
        if op.wired:
            out.append(_with(op, wired=False))
        if op.canfail:
            out.append(_with(op, canfail=False))
        if op.access:
            out.append(_with(op, access=0))
            for a in _subsets_simpler(op.access):
                if a:
                    out.append(_with(op, access=a))
        for p in _subsets_simpler(op.prot):
            if p:
                out.append(_with(op, prot=p, access=op.access & p))
    elif t is Remove or t is Protect:
        sva, eva = op.sva, op.eva
        if eva - sva > PAGE_SIZE:
            inside = sorted({o.va for o in ops if type(o) in (Enter, KEnter) and getattr(o, "pmap", KERNEL_PMAP) == op.pmap and sva <= o.va < eva})
            if inside and (inside[0], inside[-1] + PAGE_SIZE) != (sva, eva):
                out.append(_with(op, sva=inside[0], eva=inside[-1] + PAGE_SIZE))
            if inside and len(inside) > 1:
                out.append(_with(op, sva=inside[0], eva=inside[0] + PAGE_SIZE))
                out.append(_with(op, sva=inside[-1], eva=inside[-1] + PAGE_SIZE))
            out.append(_with(op, eva=sva + PAGE_SIZE))
            out.append(_with(op, sva=eva - PAGE_SIZE))
            mid = (sva + (eva - sva) // 2) & ~(PAGE_SIZE - 1)
            if sva < mid < eva:
                out.append(_with(op, eva=mid))
                out.append(_with(op, sva=mid))
        if t is Protect:
            for p in _subsets_simpler(op.prot):
                out.append(_with(op, prot=p))
    elif t is KRemove:
        if op.size > PAGE_SIZE:
            inside = sorted({o.va for o in ops if type(o) is KEnter and op.va <= o.va < op.va + op.size})
            if inside:
                out.append(_with(op, va=inside[0], size=inside[-1] + PAGE_SIZE - inside[0]))
            out.append(_with(op, size=PAGE_SIZE))
    elif t is KEnter or t is PageProtect:
        for p in _subsets_simpler(op.prot):
            out.append(_with(op, prot=p))
    elif t is Access:
        for kind in ("r", "w"):
            if kind != op.kind:
                out.append(_with(op, kind=kind))
    return out


def shrink(
    stream: Stream,
    harness: Any,
    signature: str,
    time_budget: float = 10.0,
    *,
    legal: LegalityCheck | None = vm_legality_problems,
    progress: Callable[[str], None] | None = None,
    time_limit: float | None = None,
    max_runs: int | None = None,
) -> ShrinkResult:
    """Minimise ``stream`` while its run on ``harness`` keeps showing ``signature``.

    ``legal(ops)`` returns the reasons a candidate is not VM-legal (empty or None: legal);
    pass ``legal=None`` to check stream validity only (for hand-written streams that break
    a VM rule on purpose).  The original stream must itself be valid, legal and show the
    signature (``BadInput`` otherwise).  Stops at ``time_budget`` seconds with the best
    stream so far (a run in progress is finished first).  ``time_limit`` bounds each run
    (``Harness.run``); a ``hang`` signature gets 10 s unless told otherwise.  ``max_runs``
    bounds the harness runs after the first sighting is found: a budget of work, so that
    the result does not depend on the machine's speed (when the time budget is not hit first).  The result's ``origin`` is ``{"shrunk_from": <original origin>,
    "signature": ..., "original_ops": N, ...}``.
    """
    started = time.perf_counter()
    s = _Shrinker(stream, harness, signature, time_budget, legal, progress, time_limit, max_runs)
    problem = s.legal_problem(s.best)
    if problem is not None:
        raise BadInput(f"the stream to shrink is not legal: {problem}")
    complete = s.run()
    elapsed = time.perf_counter() - started
    origin = {
        "shrunk_from": stream.origin,
        "signature": signature,
        "original_ops": len(stream.ops),
        # no timings: the same shrink gives the same file
        "shrink": {"runs": s.runs, "reductions": s.reductions, "complete": complete},
    }
    out = Stream(tuple(s.best), stream.phys_pages, origin, free_frames=stream.free_frames)
    return ShrinkResult(stream=out, signature=signature, runs=s.runs, elapsed=elapsed,
                        reductions=s.reductions, original_ops=len(stream.ops), complete=complete,
                        passes=dict(s.passes))
