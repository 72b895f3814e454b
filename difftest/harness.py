"""The differential harness: run one stream on N backends, observe, judge, attribute.

Data path per op, for every backend (a *lane*: backend, its pool, its contract state):

1. work out what the op can touch from the contract state *before* the op (the VA, the
   mappings in a range, the mappings of a page, the pmap);
2. apply the op to the backend (an exception is a ``crash``; the lane stops);
3. apply the op to the contract state, following the backend where the contract leaves a
   choice open (ENOMEM, forgetting non-wired mappings on ``collect``);
4. observe only what the op touched: walk those VAs, read those pages' attributes, the
   named pmap's counters and held frames, the incremental invariants.  Nothing here
   grows with the size of the address space.

Every ``checkpoint_every`` ops (or every *live mappings* ops, whichever is more, so an
audit costs O(1) amortised per op) and at the end, a full audit compares whole address
spaces, all counters, all pages, the pool, and the invariants in their full form.

Differences are classified (MODEL.md §5) and then attributed across lanes: whether the
reference and the majority agree with the contract where this backend does not.  After a
divergence the contract state is resynced to the backend, so that consequences of one bug
are not reported as new signatures (cascade suppression).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback as tb
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from difftest.backend import Backend, BackendSpec, Invariant, Registry, Touched
from difftest.contract import MANAGED, PA, PROT, WIRED, ContractState, apply_protect
from difftest.divergence import Allowed, Divergence, RunResult
from difftest.errors import BadInput
from difftest.machine import (
    KERNEL_MAX,
    KERNEL_MIN,
    KERNEL_PMAP,
    PAGE_SIZE,
    USER_MAX,
    USER_MIN,
    FrameError,
    OutOfMemory,
    PhysPool,
    Tag,
)
from difftest.ops import (
    ENOMEM,
    FAULT,
    OK,
    PROT_R,
    PROT_W,
    PROT_X,
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
    describe,
    normalise_result,
    prot_str,
)
from difftest.streams import Stream

DEFAULT_REFERENCE = "alpha-ref"
DEFAULT_CHECKPOINT_EVERY = 1000
ALLOWED_EXAMPLES = 5  # examples kept per (backend, allowed kind)

_KIND_BIT = {"r": PROT_R, "w": PROT_W, "x": PROT_X}
_FRAME_FIELDS = ((Tag.PT, "pt_frames", "pt"), (Tag.L1, "l1_frames", "l1"))


class LaneStopped(Exception):
    """Raised inside a step when the lane cannot go on (its divergence already recorded)."""


class StreamTimeout(BaseException):
    """Raised by the alarm when a stream runs past its time limit.

    A BaseException, so that a backend's ``except Exception`` cannot swallow it.
    """


@dataclass
class Lane:
    """One backend under test, with its pool and the contract state that mirrors it."""

    spec: BackendSpec
    backend: Backend
    pool: PhysPool
    state: ContractState
    invariants: list[Invariant]
    stopped: str | None = None
    # cascade suppression
    count_offsets: dict[tuple[int, str], int] = field(default_factory=dict)
    resource_open: set[tuple[int, int]] = field(default_factory=set)
    invariant_open: set[tuple[str, str]] = field(default_factory=set)
    violations_seen: int = 0
    result: Any = None  # the current op's result, for attribution
    next_op: int = 0  # the first op this lane has not done

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class _Step:
    """What one op touched in one lane: the places to observe afterwards."""

    keys: list[tuple[int, int]]
    pas: set[int]
    pmaps: tuple[int, ...]
    optional: frozenset[tuple[int, int]] = frozenset()


class Harness:
    """Runs streams on a set of backends and judges them against the contract."""

    def __init__(
        self,
        specs: Sequence[BackendSpec],
        reference: str | None = None,
        invariants: Iterable[Invariant] = (),
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        trace: bool = False,
        invariants_per_op: bool = True,
    ) -> None:
        if not specs:
            raise BadInput("no backends to run")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise BadInput(f"a backend is named twice in {names}")
        self.specs = list(specs)
        if reference is None:
            reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in names else names[0]
        if reference not in names:
            raise BadInput(f"reference {reference!r} is not among the backends run ({', '.join(names)})")
        self.reference = reference
        self.invariants = list(invariants)
        self.checkpoint_every = max(1, checkpoint_every)
        self.trace = trace
        # Backend invariants after every op (on what it touched), or only in the full
        # audits: about twice the campaign throughput, an invariant break found later.
        self.invariants_per_op = invariants_per_op

    def start(self, stream: Stream) -> "StreamRun":
        """Set up the lanes for ``stream`` without running it (``step``/``audit`` by hand)."""
        result = RunResult(stream=stream, backends=[s.name for s in self.specs], reference=self.reference)
        return StreamRun(self, stream, result)

    @classmethod
    def from_registry(
        cls,
        registry: Registry,
        backends: Sequence[str] | None = None,
        reference: str | None = None,
        **kwargs: Any,
    ) -> "Harness":
        """Pick backends by name (default: every backend registered as a default one)."""
        names = list(backends) if backends else registry.default_backends()
        unknown = [n for n in names if n not in registry.backends]
        if unknown:
            known = ", ".join(sorted(registry.backends)) or "none"
            raise BadInput(f"unknown backend {unknown[0]!r} (registered: {known})")
        return cls([registry.backends[n] for n in names], reference, registry.invariants, **kwargs)

    # -- running ------------------------------------------------------------------------------

    def run(self, stream: Stream, time_limit: float | None = None) -> RunResult:
        """Run ``stream`` on every backend.

        ``time_limit`` (seconds) bounds the stream: past it, the backend running at that
        moment gets a ``hang`` divergence stating the limit and stops; the others go on.
        The limit interrupts even a backend stuck in a loop (SIGALRM, main thread only;
        elsewhere it is checked between ops, and every backend still running is blamed).
        """
        started = time.perf_counter()
        result = RunResult(stream=stream, backends=[s.name for s in self.specs], reference=self.reference)
        run = StreamRun(self, stream, result)
        start: int | None = 0
        while start is not None:
            # After a hang the hung backend stops and the others go on, under a fresh
            # limit, from the op they had not done yet.
            with _alarm(time_limit) as deadline:
                try:
                    run.execute(deadline, start)
                    start = None
                except StreamTimeout:
                    start = run.timed_out(time_limit or 0.0)
        result.elapsed = time.perf_counter() - started
        return result


@contextlib.contextmanager
def _alarm(limit: float | None):
    """Arm SIGALRM for ``limit`` seconds where possible; yield the monotonic deadline."""
    if not limit:
        yield None
        return
    deadline = time.monotonic() + limit
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield deadline
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise StreamTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield deadline
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class StreamRun:
    """The state of one stream run (kept apart from the reusable Harness).

    ``Harness.run`` drives it; benchmarks and tools may call ``step`` and ``audit``
    themselves (``Harness.start``).
    """

    def __init__(self, harness: Harness, stream: Stream, result: RunResult) -> None:
        self.h = harness
        self.stream = stream
        self.result = result
        self.refs: dict[int, int] = {KERNEL_PMAP: 1}
        self.next_pmap = 1
        self.data_frames = sorted(stream.data_frames())
        self.lanes: list[Lane] = []
        for spec in harness.specs:
            self.lanes.append(self._make_lane(spec))
        self.current_lane: Lane | None = None
        self.current_index = -1
        self.stream_index = -1
        self.destroy_frees = False
        self.pending: list[tuple[Lane, Divergence]] = []  # found in the op under way
        self.since_audit = 0
        self.in_audit = False
        self.final_audit = False
        if harness.trace:
            result.trace = {lane.name: [] for lane in self.lanes}

    def _make_lane(self, spec: BackendSpec) -> Lane:
        pool = PhysPool(self.stream.phys_pages)
        pool.reserve_data(self.data_frames)
        invariants = [inv for inv in self.h.invariants if inv.applies_to(spec.name)]
        lane = Lane(spec=spec, backend=None, pool=pool, state=ContractState(spec.geometry), invariants=invariants)  # type: ignore[arg-type]
        try:
            lane.backend = spec.factory(pool)
        except Exception as exc:
            lane.stopped = f"crashed at bootstrap: {type(exc).__name__}: {exc}"
            self.result.divergences.append(
                Divergence(
                    kind="crash", backend=spec.name, op_index=-1, op="bootstrap", op_kind="bootstrap",
                    field="exception", cls=type(exc).__name__, message=f"{type(exc).__name__}: {exc}",
                    traceback=tb.format_exc(),
                )
            )
            self.result.stopped[spec.name] = lane.stopped
        return lane

    # -- the loop -------------------------------------------------------------------------------

    def execute(self, deadline: float | None, start: int = 0) -> None:
        every = self.h.checkpoint_every
        ops = self.stream.ops
        for index in range(start, len(ops)):
            if deadline is not None and (index & 63) == 0 and time.monotonic() > deadline:
                raise StreamTimeout
            self.current_index = index
            self.step(index, ops[index])
            self.result.ops_run = index + 1
            self.since_audit += 1
            if self.since_audit >= every and self.since_audit >= self._live_mappings():
                self.since_audit = 0
                self.audit(index)
        self.final_audit = True
        self.audit(self.result.ops_run - 1 if ops else -1, final=True)

    def timed_out(self, limit: float) -> int | None:
        """The alarm fired: blame the backend that was running and stop it.

        Returns the op index to go on from, or None when the stream is over."""
        index = self.current_index
        lane = self.current_lane
        self.current_lane = None
        op = self.stream.ops[index] if 0 <= index < len(self.stream.ops) else _AuditOp(index)
        if self.in_audit:
            op = _AuditOp(index)
        what = "audit" if isinstance(op, _AuditOp) else describe(op)
        where = f"during op {index} ({what})"
        if self.pending:  # what the interrupted op had already found is kept
            found, self.pending = self.pending, []
            self._attribute(index, op, found)
        names = [lane.name] if lane is not None else [l.name for l in self.lanes if l.stopped is None]
        for name in names:
            self.result.divergences.append(
                Divergence(kind="hang", backend=name, op_index=index, op=what,
                           op_kind=op.name, field="time", cls="over-limit",
                           message=f"the stream ran past its time limit of {limit:g} s {where}",
                           attribution=f"{name} was running when the limit expired")
            )
            self.result.stopped[name] = f"hang: over the {limit:g} s limit {where}"
        for l in self.lanes:
            if l.name in names:
                l.stopped = self.result.stopped[l.name]
        if lane is None or self.final_audit or not any(l.stopped is None for l in self.lanes):
            return None
        if self.in_audit:
            self.in_audit = False
            return index + 1
        return index

    def _live_mappings(self) -> int:
        for lane in self.lanes:
            if lane.stopped is None:
                return sum(len(m) for m in lane.state.maps.values())
        return 0

    def step(self, index: int, op: Op) -> None:
        if index != self.stream_index:
            # Stream-level bookkeeping, once per op even when a hang makes us come back.
            self.stream_index = index
            self.destroy_frees = False
            if isinstance(op, Create):
                pmap = self.next_pmap
                self.next_pmap += 1
                self.refs[pmap] = 1
            elif isinstance(op, Reference):
                self.refs[op.pmap] += 1
            elif isinstance(op, Destroy):
                self.refs[op.pmap] -= 1
                self.destroy_frees = self.refs[op.pmap] == 0
        found = self.pending
        for lane in self.lanes:
            if lane.stopped is not None or lane.next_op > index:
                continue
            divs: list[Divergence] = []
            self.current_lane = lane
            try:
                self._step_lane(lane, index, op, divs, self.destroy_frees)
            except LaneStopped:
                pass
            lane.next_op = index + 1
            found.extend((lane, d) for d in divs)
        self.current_lane = None
        self.pending = []
        if found:
            self._attribute(index, op, found)
        if self.h.trace:
            self._trace()

    # -- one op on one lane ------------------------------------------------------------------

    def _call(self, lane: Lane, index: int, op: Op, divs: list[Divergence], fn: Callable[..., Any], *args: Any) -> Any:
        """Call the backend; exceptions become crash divergences and stop the lane."""
        try:
            return fn(*args)
        except OutOfMemory:
            raise
        except FrameError as exc:
            divs.append(self._div(lane, index, op, "resource", "pool", "frame-misuse", str(exc)))
            self._stop(lane, f"frame misuse at op {index}: {exc}")
        except Exception as exc:
            divs.append(
                self._div(
                    lane, index, op, "crash", "exception", type(exc).__name__,
                    f"{type(exc).__name__}: {exc}", traceback=tb.format_exc(),
                )
            )
            self._stop(lane, f"crashed at op {index}: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _stop(self, lane: Lane, why: str) -> None:
        lane.stopped = why
        self.result.stopped[lane.name] = why
        raise LaneStopped

    def _out_of_memory(self, lane: Lane, index: int, op: Op, divs: list[Divergence], extra: int, free_before: int) -> None:
        """An uncaught OutOfMemory: a panic.  Legitimate only when the pool really lacked
        the frames the geometry needs."""
        if free_before < extra:
            self._allow(lane, index, "out-of-memory", f"{describe(op)}: needs {extra} frames, {free_before} free")
            self._stop(lane, f"out of memory at op {index} (needs {extra} frames, {free_before} free)")
        divs.append(
            self._div(
                lane, index, op, "resource", "pool", "oom-with-free-frames",
                f"out of memory with {free_before} free frames where {extra} were needed",
            )
        )
        self._stop(lane, f"out of memory at op {index} with {free_before} frames free")

    def _step_lane(self, lane: Lane, index: int, op: Op, divs: list[Divergence], destroy_frees: bool) -> None:
        b = lane.backend
        st = lane.state
        pool = lane.pool
        call = self._call
        optional: frozenset[tuple[int, int]] = frozenset()
        lane.result = None
        t = type(op)

        if t is Enter:
            pmap, va = op.pmap, op.va
            old = st.get(pmap, va)
            pas = {op.pa}
            if old is not None and old[MANAGED]:
                pas.add(old[PA])
            extra = st.extra_frames_for(pmap, va)
            free_before = pool.free_frames
            held_before = (pool.held(pmap, Tag.PT), pool.held(pmap, Tag.L1))
            try:
                res = normalise_result(call(lane, index, op, divs, b.pmap_enter, pmap, va, op.pa, op.prot,
                                            op.access, op.wired, op.canfail))
            except OutOfMemory:
                self._out_of_memory(lane, index, op, divs, extra, free_before)
            lane.result = res
            if res == OK:
                st.put(pmap, va, (op.pa, op.prot, op.wired, True))
                if op.access & PROT_W:
                    st.mod.add(op.pa)
                    st.ref.add(op.pa)
                elif op.access:
                    st.ref.add(op.pa)
            elif res == ENOMEM and op.canfail:
                if free_before >= extra:
                    divs.append(
                        self._div(lane, index, op, "result", "result", "enomem-with-free-frames",
                                  f"ENOMEM with {free_before} free frames where {extra} were needed",
                                  location=_loc(pmap, va))
                    )
                else:
                    self._allow(lane, index, "enomem", f"{describe(op)}: {extra} frames needed, {free_before} free")
                if pool.free_frames != free_before or (pool.held(pmap, Tag.PT), pool.held(pmap, Tag.L1)) != held_before:
                    divs.append(
                        self._div(lane, index, op, "resource", "pool", "enomem-left-trace",
                                  f"ENOMEM but the pool changed: {free_before} -> {pool.free_frames} free",
                                  location=_loc(pmap))
                    )
            else:
                divs.append(
                    self._div(lane, index, op, "result", "result", "bad-enter-result",
                              f"pmap_enter returned {res!r}", location=_loc(pmap, va))
                )
            step = _Step([(pmap, va)], pas, (pmap,))

        elif t is Remove:
            pmap = op.pmap
            keys = st.in_range(pmap, op.sva, op.eva)
            pas = self._managed_pas(st, pmap, keys)
            call(lane, index, op, divs, b.pmap_remove, pmap, op.sva, op.eva)
            for va in keys:
                if st.maps[pmap][va][MANAGED]:
                    st.delete(pmap, va)
            step = _Step([(pmap, va) for va in keys], pas, (pmap,))

        elif t is Access:
            pmap, va = op.pmap, op.va
            m = st.get(pmap, va)
            expect_ok = m is not None and bool(m[PROT] & _KIND_BIT[op.kind])
            res = normalise_result(call(lane, index, op, divs, b.pmap_access, pmap, va, op.kind))
            lane.result = res
            pas = set()
            if m is not None and m[MANAGED]:
                pas.add(m[PA])
            if res not in (OK, FAULT):
                divs.append(self._div(lane, index, op, "result", "result", "bad-access-result",
                                      f"pmap_access returned {res!r}", location=_loc(pmap, va)))
            elif (res == OK) != expect_ok:
                cls = "access-ok-expected-fault" if res == OK else "access-fault-expected-ok"
                want = OK if expect_ok else FAULT
                divs.append(self._div(lane, index, op, "result", "result", cls,
                                      f"access {op.kind} gave {res}, the contract says {want}",
                                      location=_loc(pmap, va)))
            elif expect_ok and m[MANAGED]:
                if op.kind == "w":
                    st.mod.add(m[PA])
                st.ref.add(m[PA])
            step = _Step([(pmap, va)], pas, (pmap,))

        elif t is Extract:
            pmap, va = op.pmap, op.va
            res = call(lane, index, op, divs, b.pmap_extract, pmap, va)
            lane.result = res
            m = st.get(pmap, va)
            want = None if m is None else m[PA]
            if res != want:
                divs.append(self._div(lane, index, op, "result", "result", "extract-mismatch",
                                      f"extract gave {_pa_text(res)}, the tables say {_pa_text(want)}",
                                      location=_loc(pmap, va)))
            step = _Step([(pmap, va)], set(), (pmap,))

        elif t is Protect:
            pmap = op.pmap
            keys = st.in_range(pmap, op.sva, op.eva)
            pas = self._managed_pas(st, pmap, keys)
            call(lane, index, op, divs, b.pmap_protect, pmap, op.sva, op.eva, op.prot)
            table = st.maps[pmap]
            for va in keys:
                m = table[va]
                if not m[MANAGED]:
                    continue
                new = apply_protect(op.prot, m[PROT])
                if new is None:
                    st.delete(pmap, va)
                elif new != m[PROT]:
                    st.put(pmap, va, (m[PA], new, m[WIRED], True))
            step = _Step([(pmap, va) for va in keys], pas, (pmap,))

        elif t is Unwire:
            pmap, va = op.pmap, op.va
            call(lane, index, op, divs, b.pmap_unwire, pmap, va)
            m = st.get(pmap, va)
            if m is not None and m[MANAGED] and m[WIRED]:
                st.put(pmap, va, (m[PA], m[PROT], False, True))
            step = _Step([(pmap, va)], set(), (pmap,))

        elif t is PageProtect:
            keys = st.mappings_of(op.pa)
            call(lane, index, op, divs, b.pmap_page_protect, op.pa, op.prot)
            opt = []
            if not op.prot & PROT_W:
                for key in keys:
                    m = st.get(*key)
                    if op.prot & PROT_R:
                        if m[PROT] & PROT_W:
                            st.put(key[0], key[1], (m[PA], m[PROT] & ~PROT_W, m[WIRED], True))
                    elif m[WIRED]:
                        opt.append(key)  # alpha keeps wired mappings, arm32 removes them
                    else:
                        st.delete(*key)
            step = _Step(keys, {op.pa}, tuple(sorted({k[0] for k in keys})), frozenset(opt))

        elif t is Collect:
            pmap = op.pmap
            keys = [(pmap, va) for va, _ in st.items(pmap)] if pmap != KERNEL_PMAP else []
            call(lane, index, op, divs, b.pmap_collect, pmap)
            optional = frozenset(k for k in keys if st.maps[pmap][k[1]][MANAGED] and not st.maps[pmap][k[1]][WIRED])
            pas = self._managed_pas(st, pmap, [k[1] for k in keys])
            step = _Step(keys, pas, (pmap,), optional)

        elif t is ClearModify or t is IsModified:
            fn = b.pmap_clear_modify if t is ClearModify else b.pmap_is_modified
            res = call(lane, index, op, divs, fn, op.pa)
            lane.result = res
            self._judge_modified(lane, index, op, divs, op.pa, res)
            if t is ClearModify:
                st.mod.discard(op.pa)
                step = _Step(st.mappings_of(op.pa), {op.pa}, ())
            else:
                step = _Step([], set(), ())

        elif t is ClearReference or t is IsReferenced:
            fn = b.pmap_clear_reference if t is ClearReference else b.pmap_is_referenced
            res = call(lane, index, op, divs, fn, op.pa)
            lane.result = res
            self._judge_referenced(lane, index, op, divs, op.pa, res)
            if t is ClearReference:
                st.ref.discard(op.pa)
                step = _Step(st.mappings_of(op.pa), {op.pa}, ())
            else:
                step = _Step([], set(), ())

        elif t is KEnter:
            va = op.va
            old = st.get(KERNEL_PMAP, va)
            pas = {old[PA]} if old is not None and old[MANAGED] else set()
            free_before = pool.free_frames
            extra = st.extra_frames_for(KERNEL_PMAP, va)
            try:
                call(lane, index, op, divs, b.pmap_kenter_pa, va, op.pa, op.prot)
            except OutOfMemory:
                self._out_of_memory(lane, index, op, divs, extra, free_before)
            st.put(KERNEL_PMAP, va, (op.pa, op.prot, True, False))
            step = _Step([(KERNEL_PMAP, va)], pas, (KERNEL_PMAP,))

        elif t is KRemove:
            keys = st.in_range(KERNEL_PMAP, op.va, op.va + op.size)
            call(lane, index, op, divs, b.pmap_kremove, op.va, op.size)
            for va in keys:
                if not st.maps[KERNEL_PMAP][va][MANAGED]:
                    st.delete(KERNEL_PMAP, va)
            step = _Step([(KERNEL_PMAP, va) for va in keys], set(), (KERNEL_PMAP,))

        elif t is Create:
            pmap = self.next_pmap - 1
            free_before = pool.free_frames
            st.create(pmap)
            try:
                call(lane, index, op, divs, b.pmap_create, pmap)
            except OutOfMemory:
                self._out_of_memory(lane, index, op, divs, st.create_frames(), free_before)
            step = _Step([], set(), (pmap,))

        elif t is Destroy:
            pmap = op.pmap
            if destroy_frees:
                # At the last reference the pmap must be empty: the VM layer (here, the
                # harness) removes what is left first (MODEL §3).
                keys = [(pmap, va) for va, _ in st.items(pmap)]
                pas = self._managed_pas(st, pmap, [k[1] for k in keys])
                call(lane, index, op, divs, b.pmap_remove, pmap, USER_MIN, USER_MAX)
                for _, va in keys:
                    st.delete(pmap, va)
                self._observe(lane, index, op, divs, _Step(keys, pas, ()))
                call(lane, index, op, divs, b.pmap_destroy, pmap)
                st.forget_pmap(pmap)
                step = _Step([], set(), (pmap,))
            else:
                call(lane, index, op, divs, b.pmap_destroy, pmap)
                step = _Step([], set(), ())

        elif t is Reference:
            call(lane, index, op, divs, b.pmap_reference, op.pmap)
            step = _Step([], set(), ())

        elif t is Update:
            call(lane, index, op, divs, b.pmap_update, op.pmap)
            step = _Step([], set(), ())

        else:  # pragma: no cover - the loader refuses unknown ops
            raise BadInput(f"op {index}: unsupported op {op!r}")

        self._observe(lane, index, op, divs, step)

    @staticmethod
    def _managed_pas(st: ContractState, pmap: int, vas: Iterable[int]) -> set[int]:
        table = st.maps[pmap]
        return {table[va][PA] for va in vas if table[va][MANAGED]}

    # -- observing and judging --------------------------------------------------------------------

    def _observe(self, lane: Lane, index: int, op: Op, divs: list[Divergence], step: _Step) -> None:
        try:
            tainted = self._check_keys(lane, index, op, divs, step.keys, step.optional)
            if tainted:
                # A mapping that pointed at the wrong page moved this op's REF/MOD effects
                # with it: follow the backend on those pages instead of reporting them.
                self._resync_attributes(lane, tainted)
            for pa in sorted(step.pas - tainted if tainted else step.pas):
                self._judge_modified(lane, index, op, divs, pa, lane.backend.pmap_is_modified(pa), query=False)
                self._judge_referenced(lane, index, op, divs, pa, lane.backend.pmap_is_referenced(pa), query=False)
            for pmap in step.pmaps:
                self._check_counts(lane, index, op, divs, pmap)
                if pmap != KERNEL_PMAP:
                    self._check_frames(lane, index, op, divs, pmap)
            self._check_pool(lane, index, op, divs)
            if lane.invariants and self.h.invariants_per_op:
                touched = Touched(frozenset(step.pmaps), tuple(step.keys), frozenset(step.pas))
                self._check_invariants(lane, index, op, divs, touched)
        except LaneStopped:
            raise
        except Exception as exc:
            divs.append(
                self._div(lane, index, op, "crash", "observe", type(exc).__name__,
                          f"observing the backend raised {type(exc).__name__}: {exc}",
                          traceback=tb.format_exc())
            )
            self._stop(lane, f"crashed while observed after op {index}: {type(exc).__name__}: {exc}")

    def _resync_attributes(self, lane: Lane, pas: set[int]) -> None:
        st = lane.state
        b = lane.backend
        for pa in pas:
            if b.pmap_is_modified(pa):
                st.mod.add(pa)
            else:
                st.mod.discard(pa)
            if b.pmap_is_referenced(pa):
                st.ref.add(pa)

    def _check_keys(
        self,
        lane: Lane,
        index: int,
        op: Op,
        divs: list[Divergence],
        keys: Iterable[tuple[int, int]],
        optional: frozenset[tuple[int, int]] = frozenset(),
        got_map: dict[tuple[int, int], Any] | None = None,
    ) -> set[int]:
        """Compare translations at ``keys``; resync the state where they differ.

        Returns the pages involved in a translation divergence (whose attributes are
        then no longer the contract's to judge at this op)."""
        tainted: set[int] = set()
        st = lane.state
        walk = lane.backend.walk
        maps = st.maps
        for key in keys:
            pmap, va = key
            table = maps.get(pmap)
            exp = table.get(va) if table is not None else None
            got = got_map.get(key) if got_map is not None else walk(pmap, va)
            if got is None:
                if exp is None:
                    continue
                if key in optional:
                    st.delete(pmap, va)
                    self._allow(lane, index, "forgotten", f"{_loc(pmap, va)} after {op.name}")
                    continue
                cls = "wired-mapping-missing" if exp[WIRED] else "mapping-missing"
                divs.append(self._div(lane, index, op, "translation", "mapping", cls,
                                      f"no translation where the contract has {_m_text(exp)}",
                                      location=_loc(pmap, va)))
                st.delete(pmap, va)
                tainted.add(exp[PA])
                continue
            if exp is None:
                divs.append(self._div(lane, index, op, "translation", "mapping", "spurious-mapping",
                                      f"translation {_t_text(got)} where the contract has none",
                                      location=_loc(pmap, va)))
                if table is not None:
                    st.put(pmap, va, (got.pa, got.prot, got.wired, pmap != KERNEL_PMAP or not got.wired))
                tainted.add(got.pa)
                continue
            if got.pa != exp[PA]:
                fld, cls = "pa", "pa-mismatch"
            elif got.prot != exp[PROT]:
                fld, cls = "prot", "prot-mismatch"
            elif got.wired != exp[WIRED]:
                fld, cls = "wired", "wired-mismatch"
            else:
                continue
            divs.append(self._div(lane, index, op, "translation", fld, cls,
                                  f"translation {_t_text(got)} where the contract has {_m_text(exp)}",
                                  location=_loc(pmap, va)))
            st.put(pmap, va, (got.pa, got.prot, got.wired, exp[MANAGED]))  # resync
            tainted.add(exp[PA])
            tainted.add(got.pa)
        return tainted

    def _judge_modified(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pa: int, got: Any, query: bool = True) -> None:
        st = lane.state
        want = pa in st.mod
        if got is want or got == want:
            return
        cls = "mod-lost" if want else "mod-spurious"
        what = "the result" if query else "is_modified"
        divs.append(self._div(lane, index, op, "attribute", "modified", cls,
                              f"{what} reads MOD={bool(got)} where the contract fixes MOD={want}",
                              location=_loc_pa(pa)))
        if want:  # resync, so the same lost bit is not reported at every later op
            st.mod.discard(pa)
        else:
            st.mod.add(pa)

    def _judge_referenced(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pa: int, got: Any, query: bool = True) -> None:
        st = lane.state
        possible = pa in st.ref
        if got and not possible:
            divs.append(self._div(lane, index, op, "attribute", "referenced", "ref-impossible",
                                  "REF reads true but no access happened since it was last cleared",
                                  location=_loc_pa(pa)))
            st.ref.add(pa)
        elif possible and not got and query:
            self._allow(lane, index, "ref-under-reported", _loc_pa(pa))

    def _check_counts(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pmap: int) -> None:
        st = lane.state
        if pmap not in st.maps:
            return
        b = lane.backend
        offsets = lane.count_offsets
        resident = b.pmap_resident_count(pmap) - len(st.maps[pmap])
        wired = b.pmap_wired_count(pmap) - st.wired[pmap]
        if not (resident or wired or offsets):
            return  # the common case: both counters right, nothing reported before
        for fld, got, want in (
            ("resident_count", b.pmap_resident_count(pmap), st.resident(pmap)),
            ("wired_count", b.pmap_wired_count(pmap), st.wired[pmap]),
        ):
            offset = got - want
            key = (pmap, fld)
            if offset != offsets.get(key, 0):
                # Report a change of the offset only: an off-by-one that persists is one bug.
                lane.count_offsets[key] = offset
                if offset:
                    cls = "count-high" if offset > 0 else "count-low"
                    divs.append(self._div(lane, index, op, "accounting", fld, cls,
                                          f"{fld} is {got}, the tables hold {want}", location=_loc(pmap)))

    def _check_frames(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pmap: int) -> None:
        pool = lane.pool
        st = lane.state
        for tag, fld, short in _FRAME_FIELDS:
            held = pool.held(pmap, tag)
            want = st.needed_frames(pmap, tag)
            key = (pmap, tag)
            if held == want:
                lane.resource_open.discard(key)
                continue
            if key in lane.resource_open:
                continue  # the same excess, already reported: one leak, one line
            lane.resource_open.add(key)
            rel = ">" if held > want else "<"
            alive = "" if pmap in lane.state.maps else " (destroyed)"
            divs.append(self._div(lane, index, op, "resource", fld, f"{short}-frames-held{rel}needed",
                                  f"pmap {pmap}{alive} holds {held} {short.upper()} frames, its live mappings need {want}",
                                  location=_loc(pmap)))

    def _check_pool(self, lane: Lane, index: int, op: Op, divs: list[Divergence]) -> None:
        violations = lane.pool.violations
        while lane.violations_seen < len(violations):
            msg = violations[lane.violations_seen]
            lane.violations_seen += 1
            divs.append(self._div(lane, index, op, "resource", "pool", "frame-misuse", msg))

    def _check_invariants(self, lane: Lane, index: int, op: Op, divs: list[Divergence], touched: Touched | None) -> None:
        for inv in lane.invariants:
            try:
                messages = list(inv.check(lane.backend, touched))
            except Exception as exc:
                messages = [f"the check raised {type(exc).__name__}: {exc}"]
            for msg in messages:
                key = (inv.name, msg)
                if key in lane.invariant_open:
                    continue
                lane.invariant_open.add(key)
                divs.append(self._div(lane, index, op, "invariant", inv.name, "violated", msg))

    # -- audits -------------------------------------------------------------------------------------

    def audit(self, index: int, final: bool = False) -> None:
        """Full comparison of everything, at checkpoints and at the end of the stream."""
        self.result.checkpoints += 1
        found = self.pending
        op = _AuditOp(index)
        self.in_audit = True
        for lane in self.lanes:
            if lane.stopped is not None:
                continue
            divs: list[Divergence] = []
            self.current_lane = lane
            try:
                self._audit_lane(lane, index, op, divs)
            except LaneStopped:
                pass
            except Exception as exc:
                divs.append(self._div(lane, index, op, "crash", "observe", type(exc).__name__,
                                      f"auditing the backend raised {type(exc).__name__}: {exc}",
                                      traceback=tb.format_exc()))
                lane.stopped = f"crashed while audited after op {index}"
                self.result.stopped[lane.name] = lane.stopped
            found.extend((lane, d) for d in divs)
        self.current_lane = None
        self.in_audit = False
        self.pending = []
        if found:
            self._attribute(index, op, found)

    def _audit_lane(self, lane: Lane, index: int, op: Any, divs: list[Divergence]) -> None:
        st = lane.state
        b = lane.backend
        for pmap in st.pmaps():
            lo, hi = (KERNEL_MIN, KERNEL_MAX) if pmap == KERNEL_PMAP else (USER_MIN, USER_MAX)
            got = {(pmap, va): t for va, t in b.walk_range(pmap, lo, hi)}
            keys = sorted(set(got) | {(pmap, va) for va in st.maps[pmap]})
            self._check_keys(lane, index, op, divs, keys, got_map=got)
            self._check_counts(lane, index, op, divs, pmap)
            if pmap != KERNEL_PMAP:
                self._check_frames(lane, index, op, divs, pmap)
        # Frames still held by pmaps that no longer exist.
        for owner in sorted(lane.pool.owners()):
            if owner not in st.maps and owner >= 1:
                self._check_frames(lane, index, op, divs, owner)
        for msg in lane.pool.check_conservation():
            divs.append(self._div(lane, index, op, "resource", "pool", "not-conserved", msg))
        self._check_pool(lane, index, op, divs)
        for frame in self.data_frames:
            pa = frame * PAGE_SIZE
            self._judge_modified(lane, index, op, divs, pa, b.pmap_is_modified(pa), query=False)
            self._judge_referenced(lane, index, op, divs, pa, b.pmap_is_referenced(pa), query=False)
        if lane.invariants:
            self._check_invariants(lane, index, op, divs, None)

    # -- attribution ------------------------------------------------------------------------------------

    def _attribute(self, index: int, op: Any, found: list[tuple[Lane, Divergence]]) -> None:
        """Fill in each backend's observation of the diverging field, and say who is odd."""
        by_place: dict[tuple[str, str], set[str]] = {}
        for lane, d in found:
            by_place.setdefault((d.field, d.location), set()).add(lane.name)
        ref = self.h.reference
        running = [lane for lane in self.lanes if lane.stopped is None or any(l is lane for l, _ in found)]
        for lane, d in found:
            diverging = by_place[(d.field, d.location)]
            observations = {other.name: self._observation(other, d) for other in self.lanes}
            agree = [l.name for l in running if l.name not in diverging]
            if lane.name == ref:
                if agree and len(agree) == len(running) - 1:
                    text = (f"the reference {ref} is the odd one out: "
                            f"{', '.join(agree)} agree with the contract")
                else:
                    text = f"the reference {ref} diverges; so do {', '.join(sorted(diverging - {ref})) or 'no others'}"
            elif ref in diverging:
                text = f"{lane.name} and the reference {ref} both diverge from the contract"
            else:
                text = (f"{lane.name} differs from the reference {ref} and from the majority "
                        f"({len(agree)} of {len(running)} backends agree with the contract)")
                if len(agree) * 2 <= len(running):
                    text = (f"{lane.name} differs from the reference {ref}; no majority "
                            f"({len(agree)} of {len(running)} agree with the contract)")
            self.result.divergences.append(
                Divergence(
                    kind=d.kind, backend=d.backend, op_index=d.op_index, op=d.op, op_kind=d.op_kind,
                    field=d.field, cls=d.cls, message=d.message, location=d.location,
                    observations=observations, attribution=text, traceback=d.traceback,
                )
            )

    def _observation(self, lane: Lane, d: Divergence) -> str:
        """What ``lane`` shows for the field ``d`` is about, in words."""
        if lane.stopped is not None and d.backend != lane.name:
            return f"stopped ({lane.stopped})"
        try:
            fld, loc = d.field, d.location
            if fld in ("mapping", "pa", "prot", "wired") and loc.startswith("pmap"):
                pmap, va = _parse_loc(loc)
                if pmap not in lane.state.maps:
                    return "no such pmap"
                t = lane.backend.walk(pmap, va)
                return "unmapped" if t is None else _t_text(t)
            if fld == "result":
                return _result_text(lane.result)
            if fld in ("resident_count", "wired_count"):
                pmap, _ = _parse_loc(loc)
                if pmap not in lane.state.maps:
                    return "no such pmap"
                fn = lane.backend.pmap_resident_count if fld == "resident_count" else lane.backend.pmap_wired_count
                want = lane.state.resident(pmap) if fld == "resident_count" else lane.state.wired[pmap]
                return f"{fn(pmap)} (tables: {want})"
            if fld in ("pt_frames", "l1_frames"):
                pmap, _ = _parse_loc(loc)
                tag = Tag.PT if fld == "pt_frames" else Tag.L1
                return f"held {lane.pool.held(pmap, tag)} / needed {lane.state.needed(pmap).get(tag, 0)}"
            if fld in ("modified", "referenced") and loc.startswith("pa "):
                pa = int(loc.split()[1], 16)
                fn = lane.backend.pmap_is_modified if fld == "modified" else lane.backend.pmap_is_referenced
                return str(bool(fn(pa))).lower()
            if fld == "pool":
                return f"{lane.pool.free_frames} free, {lane.pool.count(Tag.PT)} pt, {lane.pool.count(Tag.L1)} l1"
        except Exception as exc:  # observing a broken backend must not stop the report
            return f"unobservable ({type(exc).__name__})"
        if d.backend == lane.name:
            return d.message
        return "-"

    # -- helpers -------------------------------------------------------------------------------------------

    def _div(self, lane: Lane, index: int, op: Any, kind: str, fld: str, cls: str, message: str,
             location: str = "", traceback: str | None = None) -> Divergence:
        return Divergence(kind=kind, backend=lane.name, op_index=index, op=describe(op) if not isinstance(op, _AuditOp) else "audit",
                          op_kind=op.name, field=fld, cls=cls, message=message, location=location,
                          traceback=traceback)

    def _allow(self, lane: Lane, index: int, kind: str, detail: str) -> None:
        key = (lane.name, kind)
        counts = self.result.allowed_counts
        counts[key] += 1
        if counts[key] <= ALLOWED_EXAMPLES:
            self.result.allowed.append(Allowed(kind, lane.name, index, detail))

    def _trace(self) -> None:
        trace = self.result.trace
        assert trace is not None
        for lane in self.lanes:
            st = lane.state
            held = sum(lane.pool.held(p, t) for p in st.pmaps() if p != KERNEL_PMAP for t in (Tag.PT, Tag.L1))
            needed = sum(n for p in st.pmaps() if p != KERNEL_PMAP for n in st.needed(p).values())
            trace[lane.name].append((held, needed, lane.pool.frees))


class _AuditOp:
    """Stands for "the checkpoint after op N" where an op is expected."""

    name = "audit"
    FIELDS = ()

    def __init__(self, index: int) -> None:
        self.index = index


def _loc(pmap: int, va: int | None = None) -> str:
    return f"pmap {pmap}" if va is None else f"pmap {pmap} va {va:#010x}"


def _loc_pa(pa: int) -> str:
    return f"pa {pa:#010x}"


def _parse_loc(loc: str) -> tuple[int, int]:
    parts = loc.split()
    pmap = int(parts[1])
    va = int(parts[3], 16) if len(parts) > 3 else 0
    return pmap, va


def _pa_text(pa: int | None) -> str:
    return "none" if pa is None else f"{pa:#010x}"


def _t_text(t: Any) -> str:
    return f"pa {t.pa:#010x} {prot_str(t.prot) or '-'}{' wired' if t.wired else ''}"


def _m_text(m: tuple[int, int, bool, bool]) -> str:
    return f"pa {m[PA]:#010x} {prot_str(m[PROT]) or '-'}{' wired' if m[WIRED] else ''}"


def _result_text(res: Any) -> str:
    if res is None:
        return "none"
    if isinstance(res, bool):
        return str(res).lower()
    if isinstance(res, int):
        return f"{res:#010x}"
    return str(res)


def run_stream(
    registry: Registry,
    stream: Stream,
    backends: Sequence[str] | None = None,
    reference: str | None = None,
    **kwargs: Any,
) -> RunResult:
    """Convenience: build a harness from the registry and run one stream."""
    return Harness.from_registry(registry, backends, reference, **kwargs).run(stream)
