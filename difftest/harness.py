"""The differential harness: run one stream on N backends, observe, judge, attribute.

Data path per op, for every backend (a *lane*: backend, its pool, its contract state):

1. the op's handler calls the backend (an exception is a ``crash``; the lane stops) and
   judges its result;
2. the contract model (``ContractState``) applies the op and returns what it touched: the
   VA, the mappings in a range and the page on either side of it, the mappings of a page,
   the pmap; where the contract leaves a choice open (ENOMEM, forgetting non-wired
   mappings on ``collect``, revoking a wired mapping) the state follows the backend;
3. only what the op touched is observed: walk those VAs, read those pages' attributes, the
   named pmaps' counters and held frames (the kernel's too).  Nothing here grows with the
   size of the address space.

Every ``checkpoint_every`` ops (or every *live mappings* ops, whichever is more, so an
audit costs O(1) amortised per op) and at the end, a full audit compares whole address
spaces, all counters, all pages, the pool, and the invariants in their full form.

Two speeds.  The *precise* path also runs the backends' invariants after every op, on what
it touched.  The *fast* path (``fast=True``, ``difftest fuzz``'s default) runs them only
in the audits; a break found there, or a lane that crashes, sends the stream back to the
precise path from the start (streams are deterministic), which reports it at the op that
broke it.  Everything else is the same code on both paths, so both report the same
divergences; ``tests/test_fast_path.py`` holds them to it.  One gap, by design: a backend
invariant that an op breaks and a later op restores before the next audit, with no other
symptom in between (every result, translation, counter, frame count, page attribute and
the pool as the contract says, no crash), is seen only on the precise path (``--invariants
per-op``; the test ``test_the_fast_paths_one_gap_a_break_that_heals_before_the_audit``).
Closing it needs the invariants after every op, which is what the fast path saves.

The per-op reads go through one backend call per place, pmap and page (``walk_fields``,
``read_counts``, ``read_attributes``: ``fused_reader``), one for all the places of one pmap
that an op touched (``walk_fields_many``: a range op's, collect's, a page's mappings pmap
by pmap), and one for the place, pmap and page of a one-place op where the backend has its
own ``read_place`` (an enter does that read in its handler, the common case of most
streams' commonest op); a pmap's frames are read again only when the pool allocated or
freed a frame or the frames its mappings need may have changed since they were last read.
Places that read as the contract says are compared in one go and never judged one by one;
the judging code runs only where something differs.  A full audit gives the backend
``audit_memo``, so that its walks and invariants share one scan of its tables.

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
from itertools import groupby, islice
from operator import itemgetter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from difftest.backend import Backend, BackendSpec, Invariant, Registry, Touched, fused_reader, own_fused_reader
from difftest.contract import MANAGED, PA, PROT, WIRED, ContractState
from difftest.divergence import Allowed, Divergence, RunResult
from difftest.errors import BadInput, short
from difftest.features import CallRecorder
from difftest.interrupts import plugin_fault
from difftest.machine import (
    KERNEL_MAX,
    KERNEL_MIN,
    KERNEL_PMAP,
    NO_OWNER,
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
# In the order of PhysPool.held_pt_l1 and ContractState.needed_pt_l1.
_FRAME_FIELDS = ((Tag.PT, "pt_frames", "pt"), (Tag.L1, "l1_frames", "l1"))


class LaneStopped(Exception):
    """Raised inside a step when the lane cannot go on (its divergence already recorded)."""


class _NeedsPrecise(BaseException):
    """The fast path found a backend invariant broken at an audit: the stream is re-run on
    the precise path, which says at which op it broke.  A BaseException, so that the
    audit's own error handling does not take it for a crash."""


def _backend_fault(exc: BaseException) -> bool:
    """``exc``, caught around a backend's code, is the backend's (its crash): anything but
    the harness's own control flow and a real Ctrl-C (``difftest.interrupts``)."""
    return plugin_fault(exc, (StreamTimeout, _NeedsPrecise, LaneStopped))


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
    # pmap -> pool allocs + frees + contract need_epoch when its frames were last read: all
    # three only grow, so while the sum stays, held and needed frames are what they were.
    frames_seen: dict[int, int] = field(default_factory=dict)
    # pmap -> ((held PT, L1), (needed PT, L1)) when _check_frames last judged it: the same
    # numbers again get the same verdict (only _check_frames changes what is open for it).
    frames_judged: dict[int, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    violations_seen: int = 0
    result: Any = None  # the current op's result, for attribution
    next_op: int = 0  # the first op this lane has not done
    # The per-op reads, each one backend call (fused_reader): (pa, prot, wired) at
    # (pmap, va) or None; the same at many VAs of one pmap; (resident, wired) counts of a
    # pmap; (MOD, REF) of a page.
    read: Callable[[int, int], tuple[int, int, bool] | None] | None = None
    read_many: Callable[[int, Sequence[int]], list[tuple[int, int, bool] | None]] | None = None
    read_range: Callable[[int, int, int], dict[int, tuple[int, int, bool]]] | None = None  # audits
    # (walk fields, resident, wired, MOD, REF) of one place, its pmap and its page, or None:
    # only a backend's own (Backend's default would cost more than the reads it fuses).
    read_place: Callable[[int, int, int], tuple[Any, int, int, bool, bool] | None] | None = None
    counts: Callable[[int], tuple[int, int]] | None = None
    attributes: Callable[[int], tuple[bool, bool]] | None = None
    # Counts the backend's pmap(9) calls for the coverage features (Harness(record_calls=True)).
    calls: CallRecorder | None = None

    name: str = field(init=False)  # the backend's (spec.name, read on every judged op)

    def __post_init__(self) -> None:
        self.name = self.spec.name


# What one op touched in one lane, the places to observe afterwards: (keys (pmap, va),
# pages, pmaps, optional keys (mappings the backend may keep or drop)).  A plain tuple:
# one is built per op and backend.
_Step = tuple[Sequence[tuple[int, int]], "set[int] | frozenset[int]", tuple[int, ...], frozenset[tuple[int, int]]]
_NO_KEYS: frozenset[tuple[int, int]] = frozenset()
_NO_KEYS_GET = {}.get  # the reads of a pmap with no table: nothing anywhere
_NO_VAS: frozenset[int] = frozenset()


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
        fast: bool = False,
        record_calls: bool = False,
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
        self.invariants_per_op = invariants_per_op and not fast
        # The fast path: invariants only in the audits, and a break found there re-runs the
        # stream on the precise path (per-op invariants), so that it is reported at the op
        # that broke it.  Everything else the harness checks is the same code on both paths,
        # so the two report the same divergences (streams are deterministic).
        self.fast = fast
        # Count every backend's pmap(9) calls, for the coverage features of the stream
        # (RunResult.calls, difftest.features): what a ``difftest fuzz`` worker asks for.
        self.record_calls = record_calls

    def precise(self) -> "Harness":
        """This harness on the precise path (per-op invariants): what replay and shrink use."""
        if not self.fast and self.invariants_per_op:
            return self
        return Harness(self.specs, self.reference, self.invariants, self.checkpoint_every, self.trace,
                       invariants_per_op=True)

    def start(self, stream: Stream) -> "StreamRun":
        """Set up the lanes for ``stream`` without running it (``step``/``audit`` by hand)."""
        result = RunResult(stream=stream, backends=[s.name for s in self.specs], reference=self.reference)
        return StreamRun(self, stream, result, escalate=False)

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
        The limit interrupts even a backend stuck in a loop (SIGALRM in the main thread, a
        timer's asynchronous exception in another); it is also checked between ops.
        """
        started = time.perf_counter()
        result: RunResult | None = None
        if self.fast:
            try:
                result = self._run(stream, time_limit, escalate=True)
            except _NeedsPrecise:
                pass  # re-run below, outside this handler: no exception context in tracebacks
        if result is None:
            result = self._run(stream, time_limit, escalate=False)
            result.localised = self.fast
        result.elapsed = time.perf_counter() - started
        return result

    def _run(self, stream: Stream, time_limit: float | None, escalate: bool) -> RunResult:
        result = RunResult(stream=stream, backends=[s.name for s in self.specs], reference=self.reference)
        run = StreamRun(self, stream, result, per_op_invariants=self.invariants_per_op or (self.fast and not escalate),
                        escalate=escalate)
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
        if self.record_calls:
            result.calls = {lane.name: lane.calls.finish() for lane in run.lanes if lane.calls is not None}
        return result


@contextlib.contextmanager
def _alarm(limit: float | None):
    """Arm SIGALRM for ``limit`` seconds where possible (the main thread), elsewhere a
    timer that raises ``StreamTimeout`` in this thread (a Dask worker runs streams in a
    thread of its own); yield the monotonic deadline."""
    if not limit:
        yield None
        return
    deadline = time.monotonic() + limit
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        with _thread_alarm(limit):
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


@contextlib.contextmanager
def _thread_alarm(limit: float):
    """SIGALRM's stand-in off the main thread: after ``limit`` seconds a timer raises
    ``StreamTimeout`` in this thread (``PyThreadState_SetAsyncExc``: it lands between two
    bytecodes, as a signal handler's does; code stuck in C is left to the campaign's
    watchdog).  Disarmed on leaving, a raise not yet delivered then withdrawn."""
    import ctypes

    target = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"armed": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["armed"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(StreamTimeout))
                state["fired"] = True

    timer = threading.Timer(limit, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["armed"] = False
            if state["fired"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
        timer.cancel()


class StreamRun:
    """The state of one stream run (kept apart from the reusable Harness).

    ``Harness.run`` drives it; benchmarks and tools may call ``step`` and ``audit``
    themselves (``Harness.start``).
    """

    def __init__(self, harness: Harness, stream: Stream, result: RunResult,
                 per_op_invariants: bool | None = None, escalate: bool = False) -> None:
        self.h = harness
        self.per_op_invariants = harness.invariants_per_op if per_op_invariants is None else per_op_invariants
        self.escalate = escalate
        self.stream = stream
        self.result = result
        self.refs: dict[int, int] = {KERNEL_PMAP: 1}
        self.next_pmap = 1
        # The stream's data frames reserved once, in a pool each lane gets a copy of
        # (reserving is O(data frames): nearly every frame under memory pressure).
        self.data_pool = PhysPool(stream.phys_pages)
        self.data_pool.reserve_data(stream.data_frames())
        # Audits judge REF/MOD of the pages the stream names: the frames machine.free_frames
        # holds for the rest of the system are never mapped (thousands under pressure).
        self.named_frames = sorted(stream.named_frames())
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
        pool = self.data_pool.copy()
        invariants = [inv for inv in self.h.invariants if inv.applies_to(spec.name)]
        lane = Lane(spec=spec, backend=None, pool=pool, state=ContractState(spec.geometry), invariants=invariants)  # type: ignore[arg-type]
        free_before = pool.free_frames
        try:
            lane.backend = spec.factory(pool)
            lane.read = fused_reader(lane.backend, "walk_fields")
            lane.read_many = fused_reader(lane.backend, "walk_fields_many")
            lane.read_range = fused_reader(lane.backend, "walk_range_fields")
            lane.read_place = own_fused_reader(lane.backend, "read_place")
            lane.counts = fused_reader(lane.backend, "read_counts")
            lane.attributes = fused_reader(lane.backend, "read_attributes")
            if self.h.record_calls:
                lane.calls = CallRecorder(pool)
        except OutOfMemory as exc:
            if free_before >= lane.state.create_frames():  # it had the frames: a bug
                self._bootstrap_crash(lane, exc)
            else:  # the machine is too small for this backend: allowed, as at pmap_create
                lane.stopped = f"out of memory at bootstrap: {exc}"
                self.result.stopped[spec.name] = lane.stopped
                self._allow(lane, -1, "out-of-memory", f"bootstrap: {exc}")
        except BaseException as exc:
            if not _backend_fault(exc):
                raise
            self._bootstrap_crash(lane, exc)
        return lane

    def _bootstrap_crash(self, lane: Lane, exc: BaseException) -> None:
        lane.stopped = f"crashed at bootstrap: {type(exc).__name__}: {exc}"
        self.result.divergences.append(
            Divergence(
                kind="crash", backend=lane.name, op_index=-1, op="bootstrap", op_kind="bootstrap",
                field="exception", cls=type(exc).__name__, message=f"{type(exc).__name__}: {exc}",
                traceback=tb.format_exc(),
            )
        )
        self.result.stopped[lane.name] = lane.stopped

    # -- the loop -------------------------------------------------------------------------------

    def execute(self, deadline: float | None, start: int = 0) -> None:
        every = self.h.checkpoint_every
        due: int | None = None
        stopped, lanes = self.result.stopped, len(self.lanes)
        # Iterated, not indexed: the ops may come from a lazy sequence.
        for index, op in enumerate(islice(self.stream.ops, start, None), start):
            if len(stopped) >= lanes:
                break  # every lane has stopped: the ops left run nowhere (and are not counted)
            if due is not None:
                # The checkpoint after op ``due``, run only now that another op follows:
                # after the last op the final audit is the checkpoint (never two in a row).
                self.audit(due)
                due = None
            if deadline is not None and (index & 63) == 0 and time.monotonic() > deadline:
                raise StreamTimeout
            self.current_index = index
            self.step(index, op)
            self.result.ops_run = index + 1
            self.since_audit += 1
            if self.since_audit >= every and self.since_audit >= self._live_mappings():
                self.since_audit = 0
                due = index
        self.final_audit = True
        self.audit(self.result.ops_run - 1, final=True)

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
            kind = type(op)  # (ops are final dataclasses: the loader makes only these)
            if kind is Create:
                pmap = self.next_pmap
                self.next_pmap += 1
                self.refs[pmap] = 1
            elif kind is Reference:
                self.refs[op.pmap] += 1
            elif kind is Destroy:
                self.refs[op.pmap] -= 1
                self.destroy_frees = self.refs[op.pmap] == 0
        found = self.pending
        # One handler per op kind: it calls the backend, judges the result and has the
        # contract model apply the op; _observe then reads what the op touched.
        handler = _HANDLERS.get(type(op))
        if handler is None:  # pragma: no cover - the loader refuses unknown ops
            raise BadInput(f"op {index}: unsupported op {op!r}")
        observe = self._observe
        divs: list[Divergence] = []
        for lane in self.lanes:
            if lane.stopped is not None or lane.next_op > index:
                continue
            self.current_lane = lane
            lane.result = None
            try:
                touched = handler(self, lane, index, op, divs)
                if touched is not None:  # (None: the handler observed its op itself)
                    observe(lane, index, op, divs, touched)
            except LaneStopped:
                pass
            except OutOfMemory as exc:  # from an op that cannot fail for want of memory
                try:
                    self._crashed(lane, index, op, divs, exc)
                except LaneStopped:
                    pass
            lane.next_op = index + 1
            if divs:
                found.extend((lane, d) for d in divs)
                divs = []
        self.current_lane = None
        self.pending = []
        if found:
            self._attribute(index, op, found)
        if self.h.trace:
            self._trace()

    # -- one op on one lane ------------------------------------------------------------------

    def _call(self, lane: Lane, index: int, op: Op, divs: list[Divergence], call: str, *args: Any) -> Any:
        """Call the backend's pmap(9) function ``call`` for ``op`` (counted when the harness
        records calls); exceptions become crash divergences and stop the lane."""
        rec = lane.calls
        if rec is not None:
            rec.before(call, args[0] if args else None)
        try:
            res = getattr(lane.backend, call)(*args)
        except BaseException as exc:
            self._raised(lane, index, op, divs, exc)
        if rec is not None:
            rec.after(call, res)
        return res

    def _raised(self, lane: Lane, index: int, op: Op, divs: list[Divergence], exc: BaseException) -> None:
        """``exc`` came out of the backend (called in an ``except`` block): OutOfMemory goes
        back up to the handler, which judges it; a FrameError is frame misuse; anything
        else but the harness's own control flow is a crash.  The lane stops (raises)."""
        if isinstance(exc, OutOfMemory):
            raise exc
        if isinstance(exc, FrameError):
            divs.append(self._div(lane, index, op, "resource", "pool", "frame-misuse", str(exc)))
            self._stop(lane, f"frame misuse at op {index}: {exc}")
        if not _backend_fault(exc):  # SystemExit, KeyboardInterrupt...: the backend's crash too
            raise exc
        self._crashed(lane, index, op, divs, exc)

    def _crashed(self, lane: Lane, index: int, op: Op, divs: list[Divergence], exc: BaseException) -> None:
        """The backend raised ``exc`` running ``op``: a crash, and the lane stops (raises)."""
        divs.append(
            self._div(
                lane, index, op, "crash", "exception", type(exc).__name__,
                f"{type(exc).__name__}: {exc}", traceback=tb.format_exc(),
            )
        )
        self._stop(lane, f"crashed at op {index}: {type(exc).__name__}: {exc}")

    def _follow_backend(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pmap: int, va: int,
                        pas: set[int]) -> None:
        """A result outside the contract says nothing of what the backend did: take its
        translation at (pmap, va) and the pages' attributes as they are, so that one bad
        result is one divergence, not a cascade of the ops that follow."""
        st = lane.state
        got = self._call(lane, index, op, divs, "walk", pmap, va)
        if got is None:
            st.delete(pmap, va)
        else:
            st.put(pmap, va, (got.pa, got.prot, got.wired, True))
            pas.add(got.pa)
        try:
            self._resync_attributes(lane, pas)
        except BaseException as exc:
            if not _backend_fault(exc):
                raise
            self._crashed(lane, index, op, divs, exc)

    def _stop(self, lane: Lane, why: str, allowed: bool = False) -> None:
        if self.escalate and lane.invariants:
            # The fast path would lose the invariant breaks that led up to a crash (the
            # lane gets no more audits): the precise path localises them.  Running out of
            # memory is allowed; there only a broken invariant sends the stream there.
            if not allowed or self._invariant_messages(lane, None):
                raise _NeedsPrecise
        lane.stopped = why
        self.result.stopped[lane.name] = why
        raise LaneStopped

    def _out_of_memory(self, lane: Lane, index: int, op: Op, divs: list[Divergence], extra: int, free_before: int) -> None:
        """An uncaught OutOfMemory: a panic.  Legitimate only when the pool really lacked
        the frames the geometry needs."""
        if free_before < extra:
            self._allow(lane, index, "out-of-memory", f"{describe(op)}: needs {extra} frames, {free_before} free")
            self._stop(lane, f"out of memory at op {index} (needs {extra} frames, {free_before} free)", allowed=True)
        divs.append(
            self._div(
                lane, index, op, "resource", "pool", "oom-with-free-frames",
                f"out of memory with {free_before} free frames where {extra} were needed",
            )
        )
        self._stop(lane, f"out of memory at op {index} with {free_before} frames free")

    # One handler per op kind (step calls it for each lane): the backend call and the
    # judging of its result; the op's effect on the expected state is the contract
    # model's (ContractState).  It returns what the op touched, for _observe (or None
    # where it observed that itself: an enter in its common case).

    def _enter(self, lane: Lane, index: int, op: Enter, divs: list[Divergence]) -> _Step | None:
        st, pool = lane.state, lane.pool
        pmap, va, pa = op.pmap, op.va, op.pa
        replaced = st.enter_replaces(pmap, va, pa)  # the op touches pa and this page
        # The state is unchanged until st.enter below, so the frames a legitimate ENOMEM
        # or panic needs are worked out only when one happens.
        free_before = pool.free_frames
        allocs_before, frees_before = pool.allocs, pool.frees
        held_before = pool.held_pt_l1(pmap) if op.canfail else None
        rec = lane.calls
        if rec is not None:
            rec.before("pmap_enter", pmap)
        try:  # (the backend called directly: every op of most streams is an enter)
            res = lane.backend.pmap_enter(pmap, va, op.pa, op.prot, op.access, op.wired, op.canfail)
        except OutOfMemory:
            self._out_of_memory(lane, index, op, divs, st.extra_frames_for(pmap, va), free_before)
        except BaseException as exc:
            self._raised(lane, index, op, divs, exc)
        if rec is not None:
            rec.after("pmap_enter", res)
        if res != OK and res != ENOMEM:
            res = normalise_result(res)
        lane.result = res
        if res == OK:
            st.enter(pmap, va, op.pa, op.prot, op.access, op.wired)
        elif res == ENOMEM and op.canfail:
            extra = st.extra_frames_for(pmap, va)
            if free_before >= extra:
                divs.append(self._div(lane, index, op, "result", "result", "enomem-with-free-frames",
                                      f"ENOMEM with {free_before} free frames where {extra} were needed",
                                      location=_loc(pmap, va)))
            else:
                self._allow(lane, index, "enomem",
                            lambda: f"{describe(op)}: {extra} frames needed, {free_before} free")
            # (no frame allocated or freed: nothing can have changed, the common case)
            if (pool.allocs != allocs_before or pool.frees != frees_before) and (
                    pool.free_frames != free_before or pool.held_pt_l1(pmap) != held_before):
                divs.append(self._div(lane, index, op, "resource", "pool", "enomem-left-trace",
                                      f"ENOMEM but the pool changed: {free_before} -> {pool.free_frames} free",
                                      location=_loc(pmap)))
        else:
            divs.append(self._div(lane, index, op, "result", "result", "bad-enter-result",
                                  f"pmap_enter returned {short(res)}", location=_loc(pmap, va)))
            pas = {pa} if replaced is None else {pa, replaced}
            self._follow_backend(lane, index, op, divs, pmap, va, pas)
            return ([(pmap, va)], pas, (pmap,), _NO_KEYS)
        if replaced is None and lane.read_place is not None and not lane.count_offsets and not self.per_op_invariants:
            # What _observe does for this step in its common case, without building the
            # step: one read of the place, its pmap's counters and its page.
            try:
                if self._place_as_contract(lane, st.maps[pmap], pmap, va, pa):
                    seen = pool.allocs + pool.frees + st.need_epoch  # (Lane.frames_seen's stamp)
                    if lane.frames_seen.get(pmap) != seen:
                        self._frames_moved(lane, index, op, divs, pmap, seen)
                    if len(pool.violations) > lane.violations_seen:
                        self._check_pool(lane, index, op, divs)
                    return None  # observed
            except LaneStopped:
                raise
            except BaseException as exc:
                self._observe_raised(lane, index, op, divs, exc)
        return ([(pmap, va)], {pa} if replaced is None else {pa, replaced}, (pmap,), _NO_KEYS)

    def _remove(self, lane: Lane, index: int, op: Remove, divs: list[Divergence]) -> _Step:
        pmap, sva, eva = op.pmap, op.sva, op.eva
        vas, pas = lane.state.remove(pmap, sva, eva)
        rec = lane.calls
        if rec is not None:
            rec.before("pmap_remove", pmap)
        try:  # (called directly, not through _call: a fifth of a campaign's ops are removes)
            lane.backend.pmap_remove(pmap, sva, eva)
        except BaseException as exc:
            self._raised(lane, index, op, divs, exc)
        if rec is not None:
            rec.after("pmap_remove", None)
        return (_range_places(pmap, sva, eva, vas), pas, (pmap,), _NO_KEYS)

    def _protect(self, lane: Lane, index: int, op: Protect, divs: list[Divergence]) -> _Step:
        pmap, sva, eva = op.pmap, op.sva, op.eva
        vas, pas = lane.state.protect(pmap, sva, eva, op.prot)
        rec = lane.calls
        if rec is not None:
            rec.before("pmap_protect", pmap)
        try:
            lane.backend.pmap_protect(pmap, sva, eva, op.prot)
        except BaseException as exc:
            self._raised(lane, index, op, divs, exc)
        if rec is not None:
            rec.after("pmap_protect", None)
        return (_range_places(pmap, sva, eva, vas), pas, (pmap,), _NO_KEYS)

    def _access(self, lane: Lane, index: int, op: Access, divs: list[Divergence]) -> _Step:
        pmap, va = op.pmap, op.va
        expect_ok, m = lane.state.access_allowed(pmap, va, _KIND_BIT[op.kind])
        res = normalise_result(self._call(lane, index, op, divs, "pmap_access", pmap, va, op.kind))
        lane.result = res
        if res not in (OK, FAULT):
            divs.append(self._div(lane, index, op, "result", "result", "bad-access-result",
                                  f"pmap_access returned {res!r}", location=_loc(pmap, va)))
        elif (res == OK) != expect_ok:
            cls = "access-ok-expected-fault" if res == OK else "access-fault-expected-ok"
            want = OK if expect_ok else FAULT
            divs.append(self._div(lane, index, op, "result", "result", cls,
                                  f"access {op.kind} gave {res}, the contract says {want}",
                                  location=_loc(pmap, va)))
        elif expect_ok:
            lane.state.accessed(m, op.kind == "w")
        return ([(pmap, va)], {m[PA]} if m is not None and m[MANAGED] else set(), (pmap,), _NO_KEYS)

    def _extract(self, lane: Lane, index: int, op: Extract, divs: list[Divergence]) -> _Step:
        pmap, va = op.pmap, op.va
        res = self._call(lane, index, op, divs, "pmap_extract", pmap, va)
        lane.result = res
        m = lane.state.get(pmap, va)
        want = None if m is None else m[PA]
        if res != want:
            divs.append(self._div(lane, index, op, "result", "result", "extract-mismatch",
                                  f"extract gave {_pa_text(res)}, the tables say {_pa_text(want)}",
                                  location=_loc(pmap, va)))
        return ([(pmap, va)], set(), (pmap,), _NO_KEYS)

    def _unwire(self, lane: Lane, index: int, op: Unwire, divs: list[Divergence]) -> _Step:
        self._call(lane, index, op, divs, "pmap_unwire", op.pmap, op.va)
        lane.state.unwire(op.pmap, op.va)
        return ([(op.pmap, op.va)], set(), (op.pmap,), _NO_KEYS)

    def _page_protect(self, lane: Lane, index: int, op: PageProtect, divs: list[Divergence]) -> _Step:
        keys, optional = lane.state.page_protect(op.pa, op.prot)
        self._call(lane, index, op, divs, "pmap_page_protect", op.pa, op.prot)
        return (keys, {op.pa}, tuple(sorted({k[0] for k in keys})), frozenset(optional))

    def _collect(self, lane: Lane, index: int, op: Collect, divs: list[Divergence]) -> _Step:
        vas, pas, optional = lane.state.collect(op.pmap)
        self._call(lane, index, op, divs, "pmap_collect", op.pmap)
        return (_Places.of(op.pmap, vas, optional), pas, (op.pmap,), _NO_KEYS)

    def _page_attribute(self, lane: Lane, index: int, op: Op, divs: list[Divergence]) -> _Step:
        method, modified, clears = _ATTRIBUTE_OPS[type(op)]
        res = self._call(lane, index, op, divs, method, op.pa)
        lane.result = res
        (self._judge_modified if modified else self._judge_referenced)(lane, index, op, divs, op.pa, res)
        if not clears:
            return ([], set(), (), _NO_KEYS)
        (lane.state.mod if modified else lane.state.ref).discard(op.pa)
        return (lane.state.mappings_of(op.pa), {op.pa}, (), _NO_KEYS)

    def _kenter(self, lane: Lane, index: int, op: KEnter, divs: list[Divergence]) -> _Step:
        free_before = lane.pool.free_frames
        try:
            self._call(lane, index, op, divs, "pmap_kenter_pa", op.va, op.pa, op.prot)
        except OutOfMemory:
            self._out_of_memory(lane, index, op, divs, lane.state.extra_frames_for(KERNEL_PMAP, op.va), free_before)
        pas = lane.state.kenter(op.va, op.pa, op.prot)
        return ([(KERNEL_PMAP, op.va)], pas, (KERNEL_PMAP,), _NO_KEYS)

    def _kremove(self, lane: Lane, index: int, op: KRemove, divs: list[Divergence]) -> _Step:
        vas = lane.state.kremove(op.va, op.size)
        self._call(lane, index, op, divs, "pmap_kremove", op.va, op.size)
        return (_range_places(KERNEL_PMAP, op.va, op.va + op.size, vas), set(), (KERNEL_PMAP,), _NO_KEYS)

    def _create(self, lane: Lane, index: int, op: Create, divs: list[Divergence]) -> _Step:
        pmap = self.next_pmap - 1
        free_before = lane.pool.free_frames
        lane.state.create(pmap)
        try:
            self._call(lane, index, op, divs, "pmap_create", pmap)
        except OutOfMemory:
            self._out_of_memory(lane, index, op, divs, lane.state.create_frames(), free_before)
        return ([], set(), (pmap,), _NO_KEYS)

    def _destroy(self, lane: Lane, index: int, op: Destroy, divs: list[Divergence]) -> _Step:
        pmap = op.pmap
        if not self.destroy_frees:
            self._call(lane, index, op, divs, "pmap_destroy", pmap)
            return ([], set(), (), _NO_KEYS)
        # At the last reference the pmap must be empty: the VM layer (here, the harness)
        # removes what is left first (MODEL §3).
        vas, pas = lane.state.empty(pmap)
        self._call(lane, index, op, divs, "pmap_remove", pmap, USER_MIN, USER_MAX)
        self._observe(lane, index, op, divs, (_Places.of(pmap, vas), pas, (), _NO_KEYS))
        self._call(lane, index, op, divs, "pmap_destroy", pmap)
        lane.state.forget_pmap(pmap)
        return ([], set(), (pmap,), _NO_KEYS)

    def _reference(self, lane: Lane, index: int, op: Reference, divs: list[Divergence]) -> _Step:
        self._call(lane, index, op, divs, "pmap_reference", op.pmap)
        return ([], set(), (), _NO_KEYS)

    def _update(self, lane: Lane, index: int, op: Update, divs: list[Divergence]) -> _Step:
        self._call(lane, index, op, divs, "pmap_update", op.pmap)
        return ([], set(), (), _NO_KEYS)

    # -- observing and judging --------------------------------------------------------------------

    def _observe(self, lane: Lane, index: int, op: Op, divs: list[Divergence], step: _Step) -> None:
        """Observe what the op touched.  The common case (everything as the contract says)
        costs one backend read per place and builds nothing; the judging methods run only
        where a value differs."""
        keys, pas, pmaps, optional = step
        try:
            st = lane.state
            maps = st.maps
            tainted = None
            # One place, its page and its pmap's counters (access, kenter: one page), read
            # in one backend call where the backend has one: when all are as the contract
            # says nothing is left to judge of them; else they are read again one by one
            # below and judged as always (the reads do not change anything).
            done = False
            places = type(keys) is _Places
            if not places and lane.read_place is not None and len(pas) == 1 and len(keys) == 1 \
                    and not optional and not lane.count_offsets:
                pmap, va = keys[0]
                table = maps.get(pmap)
                if table is not None and pmaps == (pmap,):
                    for pa in pas:
                        done = self._place_as_contract(lane, table, pmap, va, pa)
            if done:
                pass
            elif places:
                # The places of one pmap (a range op's, collect's, the empty before a
                # destroy): read in one backend call and compared in one go; judged by
                # _check_keys only where one differs, after what the backend was allowed
                # to drop and dropped is followed in one go.
                pmap = keys.pmap
                gots = lane.read_many(pmap, keys)  # type: ignore[misc]
                table = maps.get(pmap)
                get = table.get if table is not None else _NO_KEYS_GET
                exps = [(m := get(va)) and m[:3] for va in keys]
                if gots != exps:  # judged where they differ (elsewhere _check_keys finds nothing)
                    may_drop = keys.optional
                    differ = {}
                    dropped = []  # what _check_keys would allow as forgotten, in one go
                    for va, got, exp in zip(keys, gots, exps):
                        if got != exp:
                            if got is None and va in may_drop:
                                dropped.append(va)
                            else:
                                differ[(pmap, va)] = got
                    if dropped:
                        self._forgotten(lane, index, op, pmap, dropped)
                    if differ:
                        tainted = self._check_keys(lane, index, op, divs, list(differ), got_map=differ)
            elif len(keys) == 1 and not optional:
                # One place (enter, access, extract, unwire, kenter): compared inline, and
                # judged by _check_keys only when it differs.
                key = keys[0]
                pmap, va = key
                table = maps.get(pmap)
                exp = table.get(va) if table is not None else None
                got = lane.read(pmap, va)  # type: ignore[misc]
                if got is None:
                    same = exp is None
                else:
                    same = exp is not None and got[0] == exp[0] and got[1] == exp[1] and got[2] == exp[2]
                if not same:
                    tainted = self._check_keys(lane, index, op, divs, keys, got_map={key: got})
            elif keys:
                # A page's mappings (page_protect, clearing an attribute): the places of
                # each pmap read in one backend call and compared in one go; judged by
                # _check_keys, in their order, only where they differ.
                differ = {}
                for pmap, group in groupby(keys, itemgetter(0)):
                    vas = [va for _, va in group]
                    gots = lane.read_many(pmap, vas)  # type: ignore[misc]
                    table = maps.get(pmap)
                    get = table.get if table is not None else _NO_KEYS_GET
                    exps = [(m := get(va)) and m[:3] for va in vas]
                    if gots != exps:
                        differ.update(((pmap, va), got) for va, got, exp in zip(vas, gots, exps) if got != exp)
                if differ:
                    tainted = self._check_keys(lane, index, op, divs, list(differ), optional, got_map=differ)
            if tainted:
                # A mapping that pointed at the wrong page moved this op's REF/MOD effects
                # with it: follow the backend on those pages instead of reporting them.
                self._resync_attributes(lane, tainted)
            if pas and not done:
                mod, ref = st.mod, st.ref
                attributes = lane.attributes
                for pa in sorted(pas - tainted if tainted else pas) if len(pas) > 1 else pas:
                    got, got_ref = attributes(pa)  # type: ignore[misc]
                    want = pa in mod
                    if got is not want and got != want:
                        self._judge_modified(lane, index, op, divs, pa, got, query=False)
                    if got_ref and pa not in ref:
                        self._judge_referenced(lane, index, op, divs, pa, got_ref, query=False)
            wired = st.wired
            counts = lane.counts
            pool = lane.pool
            frames_seen = lane.frames_seen
            for pmap in pmaps:
                # The counters in their common case inline: as the contract says, nothing
                # about them open.
                table = maps.get(pmap)
                if not done and table is not None and (lane.count_offsets or counts(pmap) != (len(table), wired[pmap])):  # type: ignore[misc]
                    self._check_counts(lane, index, op, divs, pmap)
                seen = pool.allocs + pool.frees + st.need_epoch  # (Lane.frames_seen's stamp)
                if frames_seen.get(pmap) != seen:
                    self._frames_moved(lane, index, op, divs, pmap, seen)
            if len(pool.violations) > lane.violations_seen:
                self._check_pool(lane, index, op, divs)
            if lane.invariants and self.per_op_invariants:
                touched = Touched(frozenset(pmaps), tuple(keys.keys() if places else keys), frozenset(pas),
                                  frozenset(pas) if type(op) in _WHOLE_PAGE_OPS else frozenset())
                self._check_invariants(lane, index, op, divs, touched)
        except LaneStopped:
            raise
        except BaseException as exc:
            self._observe_raised(lane, index, op, divs, exc)

    def _observe_raised(self, lane: Lane, index: int, op: Op, divs: list[Divergence], exc: BaseException) -> None:
        """Observing the backend raised ``exc``: a crash (the lane stops), unless it is the
        harness's own control flow."""
        if not _backend_fault(exc):
            raise exc
        divs.append(
            self._div(lane, index, op, "crash", "observe", type(exc).__name__,
                      f"observing the backend raised {type(exc).__name__}: {exc}",
                      traceback=tb.format_exc())
        )
        self._stop(lane, f"crashed while observed after op {index}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _place_as_contract(lane: Lane, table: dict[int, Any], pmap: int, va: int, pa: int) -> bool:
        """One backend call (its own ``read_place``) shows the mapping at (pmap, va), the
        pmap's counters and page ``pa``'s attributes all as the contract says: nothing of
        them is left to judge.  False: they are to be read one by one and judged."""
        try:
            place = lane.read_place(pmap, va, pa)  # type: ignore[misc]
        except BaseException as exc:
            if not _backend_fault(exc):
                raise
            return False
        if place is None:
            return False
        got, resident, wired_count, got_mod, got_ref = place
        st = lane.state
        exp = table.get(va)
        want_mod = pa in st.mod
        return ((got == exp[:3] if exp is not None else got is None)
                and resident == len(table) and wired_count == st.wired[pmap]
                and (got_mod is want_mod or got_mod == want_mod)
                and not (got_ref and pa not in st.ref))

    def _frames_moved(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pmap: int, seen: int) -> None:
        """A frame was allocated or freed, or the frames ``pmap``'s mappings need may have
        changed, since its frames were last read (its stamp is now ``seen``): the frames it
        holds against those it needs, judged again (exact: held frames move only by alloc
        and free).  The callers compare the stamp inline: nothing moved is the common case."""
        lane.frames_seen[pmap] = seen
        # _check_frames would find nothing when the frames are as needed and nothing is
        # open, or when they are what it last judged.
        held, want = lane.pool.held_pt_l1(pmap), lane.state.needed_pt_l1(pmap)
        if (lane.resource_open or held != want) and lane.frames_judged.get(pmap) != (held, want):
            self._check_frames(lane, index, op, divs, pmap, held, want)

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
        read = lane.read
        maps = st.maps
        for key in keys:
            pmap, va = key
            table = maps.get(pmap)
            exp = table.get(va) if table is not None else None
            got = got_map.get(key) if got_map is not None else read(pmap, va)  # type: ignore[misc]
            if got is None:
                if exp is None:
                    continue
                if key in optional:
                    self._forgotten(lane, index, op, pmap, [va])
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
                                      f"translation {_m_text(got)} where the contract has none",
                                      location=_loc(pmap, va)))
                if table is not None:
                    st.put(pmap, va, (got[PA], got[PROT], got[WIRED], pmap != KERNEL_PMAP or not got[WIRED]))
                tainted.add(got[PA])
                continue
            if got[PA] != exp[PA]:
                fld, cls = "pa", "pa-mismatch"
            elif got[PROT] != exp[PROT]:
                fld, cls = "prot", "prot-mismatch"
            elif got[WIRED] != exp[WIRED]:
                fld, cls = "wired", "wired-mismatch"
            else:
                continue
            divs.append(self._div(lane, index, op, "translation", fld, cls,
                                  f"translation {_m_text(got)} where the contract has {_m_text(exp)}",
                                  location=_loc(pmap, va)))
            st.put(pmap, va, (got[PA], got[PROT], got[WIRED], exp[MANAGED]))  # resync
            tainted.add(exp[PA])
            tainted.add(got[PA])
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
        if (not offsets and b.pmap_resident_count(pmap) == len(st.maps[pmap])
                and b.pmap_wired_count(pmap) == st.wired[pmap]):
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

    def _check_frames(self, lane: Lane, index: int, op: Op, divs: list[Divergence], pmap: int,
                      helds: tuple[int, int] | None = None, wants: tuple[int, int] | None = None) -> None:
        """Frames ``pmap`` holds (``helds``: PT, L1, read now if not given) against those its
        live mappings need (``wants``)."""
        pool = lane.pool
        st = lane.state
        # A backend that never frees the kernel's page-table pages may hold more of them
        # than the live kernel mappings need (an allowance), never fewer.
        open_ = lane.resource_open
        if helds is None or wants is None:
            helds, wants = pool.held_pt_l1(pmap), st.needed_pt_l1(pmap)
        lane.frames_seen[pmap] = pool.allocs + pool.frees + st.need_epoch
        lane.frames_judged[pmap] = (helds, wants)
        if helds == wants and not open_:
            return  # the common case: exactly what the geometry needs, nothing open
        keeps = pmap == KERNEL_PMAP and lane.backend.keeps_kernel_page_tables
        for (tag, fld, level), held, want in zip(_FRAME_FIELDS, helds, wants):
            key = (pmap, tag)
            if held == want or (keeps and held > want):
                if open_:
                    open_.discard(key)
                continue
            if key in open_:
                continue  # the same excess, already reported: one leak, one line
            lane.resource_open.add(key)
            rel = ">" if held > want else "<"
            alive = "" if pmap in lane.state.maps else " (destroyed)" if pmap != NO_OWNER else " (no pmap: taken without an owner)"
            divs.append(self._div(lane, index, op, "resource", fld, f"{level}-frames-held{rel}needed",
                                  f"pmap {pmap}{alive} holds {held} {level.upper()} frames, its live mappings need {want}",
                                  location=_loc(pmap)))

    def _check_pool(self, lane: Lane, index: int, op: Op, divs: list[Divergence]) -> None:
        violations = lane.pool.violations
        while lane.violations_seen < len(violations):
            msg = violations[lane.violations_seen]
            lane.violations_seen += 1
            divs.append(self._div(lane, index, op, "resource", "pool", "frame-misuse", msg))

    @staticmethod
    def _invariant_messages(lane: Lane, touched: Touched | None) -> list[tuple[str, str]]:
        """(invariant, message) for every violation the lane's invariants report."""
        out = []
        for inv in lane.invariants:
            try:
                messages = list(inv.check(lane.backend, touched))
            except BaseException as exc:
                if not _backend_fault(exc):
                    raise
                messages = [f"the check raised {type(exc).__name__}: {exc}"]
            out.extend((inv.name, msg) for msg in messages)
        return out

    def _check_invariants(self, lane: Lane, index: int, op: Op, divs: list[Divergence], touched: Touched | None) -> None:
        for key in self._invariant_messages(lane, touched):
            if key in lane.invariant_open:
                continue
            if self.escalate:
                raise _NeedsPrecise
            lane.invariant_open.add(key)
            divs.append(self._div(lane, index, op, "invariant", key[0], "violated", key[1]))

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
            except BaseException as exc:
                if not _backend_fault(exc):
                    raise
                if self.escalate and lane.invariants:
                    raise _NeedsPrecise from exc  # as in _stop
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
        b = lane.backend
        # The audit only reads: the backend may share one scan of its tables between
        # its walks and its invariants (Backend.audit_memo).
        with contextlib.suppress(AttributeError):
            b.audit_memo = {}
        try:
            self._audit_lane_reads(lane, index, op, divs)
        finally:
            with contextlib.suppress(AttributeError):
                b.audit_memo = None

    def _audit_lane_reads(self, lane: Lane, index: int, op: Any, divs: list[Divergence]) -> None:
        st = lane.state
        b = lane.backend
        for pmap in st.pmaps():
            lo, hi = (KERNEL_MIN, KERNEL_MAX) if pmap == KERNEL_PMAP else (USER_MIN, USER_MAX)
            walked = lane.read_range(pmap, lo, hi)  # type: ignore[misc]
            table = st.maps[pmap]
            if walked != {va: m[:3] for va, m in table.items()}:  # else _check_keys finds nothing
                got = {(pmap, va): fields for va, fields in walked.items()}
                keys = sorted(set(got) | {(pmap, va) for va in table})
                self._check_keys(lane, index, op, divs, keys, got_map=got)
            self._check_counts(lane, index, op, divs, pmap)
            self._check_frames(lane, index, op, divs, pmap)
        # Frames still held by pmaps that no longer exist, or taken for no pmap at all.
        for owner in sorted(lane.pool.owners()):
            if owner not in st.maps and (owner >= 1 or owner == NO_OWNER):
                self._check_frames(lane, index, op, divs, owner)
        conservation = lane.pool.check_conservation()
        memo = getattr(b, "audit_memo", None)
        if memo is not None:
            memo["pool-conservation"] = conservation  # for the invariants that check it too
        for msg in conservation:
            divs.append(self._div(lane, index, op, "resource", "pool", "not-conserved", msg))
        self._check_pool(lane, index, op, divs)
        attributes = lane.attributes
        mod, ref = st.mod, st.ref
        for frame in self.named_frames:
            pa = frame * PAGE_SIZE
            modified, referenced = attributes(pa)  # type: ignore[misc]
            want = pa in mod  # (judged only where they differ: the judges find nothing else)
            if modified is not want and modified != want:
                self._judge_modified(lane, index, op, divs, pa, modified, query=False)
            if referenced and pa not in ref:
                self._judge_referenced(lane, index, op, divs, pa, referenced, query=False)
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
                t = lane.read(pmap, va)  # type: ignore[misc]
                return "unmapped" if t is None else _m_text(t)
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
        except BaseException as exc:  # observing a broken backend must not stop the report
            if not _backend_fault(exc):
                raise
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

    def _forgotten(self, lane: Lane, index: int, op: Op, pmap: int, vas: Sequence[int]) -> None:
        """The backend dropped the mappings at ``vas`` where the contract lets it (collect,
        a wired mapping under page_protect(none)): the state follows it, and each is an
        allowed difference, counted (the first few kept as examples)."""
        st = lane.state
        for va in vas:
            st.delete(pmap, va)
        key = (lane.name, "forgotten")
        counts = self.result.allowed_counts
        before = counts[key]
        counts[key] = before + len(vas)
        for va in vas[:max(0, ALLOWED_EXAMPLES - before)]:
            self.result.allowed.append(Allowed("forgotten", lane.name, index, f"{_loc(pmap, va)} after {op.name}"))

    def _allow(self, lane: Lane, index: int, kind: str, detail: str | Callable[[], str]) -> None:
        """Count an allowed difference; keep the first few as examples.  ``detail`` may be
        a function: the text is then built only for a kept example (hundreds of ENOMEMs
        and forgotten mappings per stream are only counted)."""
        key = (lane.name, kind)
        counts = self.result.allowed_counts
        n = counts[key] = counts[key] + 1
        if n <= ALLOWED_EXAMPLES:
            self.result.allowed.append(Allowed(kind, lane.name, index, detail if isinstance(detail, str) else detail()))

    def _trace(self) -> None:
        trace = self.result.trace
        assert trace is not None
        for lane in self.lanes:
            st = lane.state
            held = sum(lane.pool.held(p, t) for p in st.pmaps() if p != KERNEL_PMAP for t in (Tag.PT, Tag.L1))
            needed = sum(n for p in st.pmaps() if p != KERNEL_PMAP for n in st.needed(p).values())
            trace[lane.name].append((held, needed, lane.pool.frees))


# The page-attribute ops: (backend method, MOD (else REF), clears the attribute).
_ATTRIBUTE_OPS = {
    ClearModify: ("pmap_clear_modify", True, True), IsModified: ("pmap_is_modified", True, False),
    ClearReference: ("pmap_clear_reference", False, True), IsReferenced: ("pmap_is_referenced", False, False),
}

# The ops that change every mapping of their page (Touched.whole_pages): on the other
# ops' pages only the touched places' mappings changed.
_WHOLE_PAGE_OPS = frozenset((PageProtect, ClearModify, ClearReference))

_HANDLERS: dict[type, Callable[..., _Step | None]] = {
    Enter: StreamRun._enter, Remove: StreamRun._remove, Protect: StreamRun._protect,
    Access: StreamRun._access, Extract: StreamRun._extract, Unwire: StreamRun._unwire,
    PageProtect: StreamRun._page_protect, Collect: StreamRun._collect,
    ClearModify: StreamRun._page_attribute, IsModified: StreamRun._page_attribute,
    ClearReference: StreamRun._page_attribute, IsReferenced: StreamRun._page_attribute,
    KEnter: StreamRun._kenter, KRemove: StreamRun._kremove, Create: StreamRun._create,
    Destroy: StreamRun._destroy, Reference: StreamRun._reference, Update: StreamRun._update,
}


class _AuditOp:
    """Stands for "the checkpoint after op N" where an op is expected."""

    name = "audit"
    FIELDS = ()

    def __init__(self, index: int) -> None:
        self.index = index


class _Places(list):
    """The VAs, in one pmap, that an op touched (a range op, collect, the empty before a
    destroy): a step's keys without a (pmap, va) tuple per place (read in one backend
    call, compared in one go; the keys of the places that differ are built only then).
    ``optional``: the VAs among them whose mapping the backend may keep or drop."""

    __slots__ = ("pmap", "optional")

    @classmethod
    def of(cls, pmap: int, vas: Iterable[int], optional: frozenset[int] = frozenset()) -> _Places:
        places = cls(vas)
        places.pmap = pmap
        places.optional = optional
        return places

    def keys(self) -> list[tuple[int, int]]:
        pmap = self.pmap
        return [(pmap, va) for va in self]


def _range_places(pmap: int, sva: int, eva: int, vas: list[int]) -> _Places:
    """The places a range op touches: its mappings, plus the page just before ``sva`` and
    the page at ``eva`` (inside the pmap's range): an op that goes one page too far is
    caught there."""
    lo, hi = (KERNEL_MIN, KERNEL_MAX) if pmap == KERNEL_PMAP else (USER_MIN, USER_MAX)
    places = _Places()  # (not _Places.of: a fifth of a campaign's ops come here)
    places.pmap = pmap
    places.optional = _NO_VAS
    if sva - PAGE_SIZE >= lo:
        places.append(sva - PAGE_SIZE)
    places.extend(vas)
    if eva < hi:
        places.append(eva)
    return places


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


def _m_text(m: Sequence[Any]) -> str:
    """A mapping of the contract, or a translation's fields (pa, prot, wired)."""
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
