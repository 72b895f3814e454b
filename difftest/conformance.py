"""Conformance of one backend to the pmap(9) contract: the battery behind
``difftest check-backend`` and the pytest plugin (``pytest --difftest-backend NAME``).

Modelled on SQLAlchemy's dialect compliance suite: a fixed battery of hand-written
contract streams, each pmap(9) call on its own and in combination, run differentially
against the reference backend with the ordinary harness, then a short campaign.  A backend
declares *capabilities* as class attributes (``frees_pt_pages = False``, as a
``requirements.py`` would); a divergence that a capability the backend does not have
explains is an expected failure (XFAIL), never a pass in disguise: every other divergence
in the same check still fails it.

The battery is generic: the streams are built from the geometries of the backend and the
reference (their table edges), never from a concrete backend, and the reference is found by
name in the registry.
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from difftest.backend import Backend, BackendSpec, Registry
from difftest.divergence import Divergence, KnownDivergence, RunResult
from difftest.errors import BadInput
from difftest.harness import DEFAULT_REFERENCE, Harness
from difftest.machine import KERNEL_MIN, PAGE_SIZE, USER_MAX, USER_MIN, PhysPool
from difftest.ops import (
    PROT_NONE,
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
)
from difftest.streams import Stream, make_stream, stream_from_json

PASS, FAIL, XFAIL, XPASS, SKIP = "PASS", "FAIL", "XFAIL", "XPASS", "SKIP"
CHECK_FORMAT = "difftest.check/1"

RW = PROT_R | PROT_W
RX = PROT_R | PROT_X
RWX = PROT_R | PROT_W | PROT_X


# -- capabilities -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Capability:
    """Something the contract lets a backend lack, declared as a class attribute.

    ``explains`` are ``fnmatch`` patterns over divergence signatures, with ``{backend}``
    for the backend's name: what a backend without the capability is expected to show.
    """

    name: str
    description: str
    explains: tuple[str, ...]


CAPABILITIES: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability(
            "frees_pt_pages",
            "frees a page-table page when its last live entry goes (remove, protect, "
            "page_protect, collect), not only at destroy",
            ("resource:{backend}:*:pt_frames:pt-frames-held>needed",),
        ),
    )
}


def capabilities_of(spec: BackendSpec) -> dict[str, bool]:
    """The capabilities a registered backend declares (True unless it says otherwise).

    Read from the class (a ``functools.partial`` of a class counts as the class); a factory
    that is no class is built once on a large pool to read them from the instance.
    """
    target: object = spec.factory
    if isinstance(target, functools.partial):
        target = target.func
    if not isinstance(target, type):
        target = spec.factory(PhysPool(1 << 16))
    return {name: bool(getattr(target, name, True)) for name in CAPABILITIES}


def expected_patterns(backend: str, capabilities: dict[str, bool]) -> list[KnownDivergence]:
    """The divergences the missing capabilities explain, as baseline entries."""
    return [
        KnownDivergence(pattern.format(backend=backend), f"{backend} declares {name} = False")
        for name, has in sorted(capabilities.items()) if not has
        for pattern in CAPABILITIES[name].explains
    ]


# -- the machine a check runs on ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What the checks need to know about the two backends: where their tables begin, and
    how small a pool is that a few dozen tables exhaust."""

    edges: tuple[int, ...]  # user VAs where a table of either backend begins
    kernel_edges: tuple[int, ...]
    exhaust_pages: int


def table_spans(specs: Iterable[BackendSpec]) -> list[int]:
    """Every span below the whole address space that a table or a table entry covers."""
    spans: set[int] = set()
    for spec in specs:
        levels = spec.geometry.levels
        for i, level in enumerate(levels):
            if i > 0:
                spans.add(level.span)
            if i < len(levels) - 1:
                spans.add(level.entry_span)
    return sorted(s for s in spans if 2 * PAGE_SIZE <= s < (1 << 32))


def boot_frames(spec: BackendSpec) -> int:
    """Frames a backend takes to boot and to create one pmap, measured on a large pool
    (plugin code: ``check-backend`` calls it in a worker, ``probe``)."""
    pool = PhysPool(1 << 16)
    backend: Backend = spec.factory(pool)
    backend.pmap_create(1)
    return (1 << 16) - pool.free_frames


def layout_for(specs: Sequence[BackendSpec], boot: int | None = None) -> Layout:
    """The layout of the checks for ``specs``; ``boot``: the most frames one of them takes
    to boot and create a pmap (measured here, running their code, when None)."""
    spans = table_spans(specs)
    base = 0x10000000  # 256 MiB: an edge of every span up to 256 MiB
    edges = {base + s for s in spans if base + s < USER_MAX - PAGE_SIZE}
    edges |= {s for s in spans if s > base and s < USER_MAX - PAGE_SIZE}
    kernel_edges = {KERNEL_MIN + s for s in spans if KERNEL_MIN + s < 0xFFFF0000}
    if boot is None:
        boot = max(boot_frames(spec) for spec in specs)
    return Layout(tuple(sorted(edges))[:8], tuple(sorted(kernel_edges))[:4],
                  exhaust_pages=max(64, boot + len(DATA) + 24))


# Data pages the checks map (frame numbers well inside the smallest pool).
DATA = tuple(range(16, 32))


def PA(i: int) -> int:
    return DATA[i] * PAGE_SIZE


V = 0x10000000  # a user VA at an edge of every table (256 MiB)
P = PAGE_SIZE


# -- the battery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One hand-written contract stream.  ``requires``: the capabilities it is about (a
    backend without them is expected to fail it)."""

    name: str
    description: str
    build: Callable[[Layout], list[Op]]
    requires: tuple[str, ...] = ()
    exhaust: bool = False  # run on the small pool of ``Layout.exhaust_pages``


def _create_reference_destroy(lay: Layout) -> list[Op]:
    return [Create(), Create(), Reference(1), Destroy(1), Enter(1, V, PA(0), RW), Extract(1, V),
            Destroy(1), Enter(2, V, PA(0), RW), Update(2), Destroy(2), Create(), Extract(3, V), Destroy(3)]


def _enter_extract_remove(lay: Layout) -> list[Op]:
    return [Create(), Enter(1, V, PA(0), RW), Extract(1, V), Extract(1, V + P), Access(1, V, "r"),
            Remove(1, V, V + P), Extract(1, V), Access(1, V, "r"), Remove(1, V, V + P),
            Enter(1, V + P, PA(1), PROT_R), Remove(1, USER_MIN, USER_MAX), Destroy(1)]


def _enter_replace(lay: Layout) -> list[Op]:
    return [Create(), Enter(1, V, PA(0), RW, PROT_W), Enter(1, V, PA(1), PROT_R),  # a new page
            IsModified(PA(0)), Extract(1, V), Access(1, V, "w"),
            Enter(1, V, PA(1), RW, PROT_NONE, True),  # the same page: prot and wired updated
            Access(1, V, "w"), IsModified(PA(1)), Enter(1, V, PA(1), PROT_R),  # re-enter unwires
            Access(1, V, "w"), Extract(1, V), Enter(1, V, PA(2), RX, PROT_X), Access(1, V, "x"),
            Remove(1, V, V + P), IsModified(PA(1)), IsReferenced(PA(2)), Destroy(1)]


def _across_edges(lay: Layout) -> list[Op]:
    ops: list[Op] = [Create()]
    for i, e in enumerate(lay.edges):
        ops += [Enter(1, e - P, PA(i % 8), RW), Enter(1, e, PA((i + 1) % 8), RW), Extract(1, e - P)]
        ops += [Remove(1, e - P, e + P), Extract(1, e)]  # one range across the edge
        ops += [Enter(1, e - P, PA(i % 8), RW), Enter(1, e, PA(i % 8), PROT_R)]
        ops += [Remove(1, e, e + P), Remove(1, e - P, e)]  # each side on its own
    for i, e in enumerate(lay.edges):
        ops += [Enter(1, e - P, PA(i % 8), RW), Enter(1, e, PA(i % 8), RW)]
    ops += [Remove(1, USER_MIN, USER_MAX), Destroy(1)]
    return ops


def _frees_on_remove(lay: Layout) -> list[Op]:
    ops: list[Op] = [Create()]
    for i, e in enumerate(lay.edges):
        ops += [Enter(1, e, PA(i % 8), RW), Remove(1, e, e + P)]
    return ops + [Destroy(1)]


def _protect(lay: Layout) -> list[Op]:
    e = lay.edges[0] if lay.edges else V + 0x400000
    return [Create(), Enter(1, V, PA(0), RWX), Enter(1, V + P, PA(1), RW), Enter(1, V + 3 * P, PA(2), RW, PROT_NONE, True),
            Protect(1, V, V + 4 * P, RX), Access(1, V, "x"), Access(1, V + P, "w"), Access(1, V + P, "x"),
            Access(1, V + 3 * P, "w"), Protect(1, V, V + 4 * P, RWX),  # never adds rights
            Access(1, V, "w"), Protect(1, V, V + 4 * P, RW),  # w in prot: nothing (x stays)
            Access(1, V, "x"), Protect(1, V, V + P, PROT_R), Access(1, V, "x"),
            Enter(1, e - P, PA(3), RW), Enter(1, e, PA(4), RW), Protect(1, e - P, e + P, PROT_R),
            Access(1, e, "w"), Protect(1, e - P, e + P, PROT_NONE),  # no r: removed
            Extract(1, e - P), Protect(1, V, V + 2 * P, PROT_NONE), Extract(1, V + 3 * P), Destroy(1)]


def _unwire(lay: Layout) -> list[Op]:
    return [Create(), Enter(1, V, PA(0), RW, PROT_NONE, True), Enter(1, V + P, PA(1), PROT_R, PROT_R, True),
            Unwire(1, V), Unwire(1, V), Unwire(1, V + 2 * P), Enter(1, V, PA(0), RW, PROT_NONE, True),
            Enter(1, V, PA(0), RW), Unwire(1, V + P), Remove(1, V, V + 2 * P),
            Enter(1, V, PA(2), RW, PROT_W, True), Destroy(1)]


def _page_protect_shared(lay: Layout) -> list[Op]:
    far = lay.edges[-1] if lay.edges else V + 0x400000
    shared = PA(0)
    return [Create(), Create(), Create(),
            Enter(1, V, shared, RW, PROT_W), Enter(1, far, shared, RW), Enter(2, V, shared, RWX),
            Enter(3, V + P, shared, PROT_R), Enter(1, V + P, PA(1), RW), Enter(0, KERNEL_MIN + P, shared, RW),
            PageProtect(shared, RW),  # w in prot: nothing
            Access(2, V, "w"), PageProtect(shared, RX), Access(1, V, "w"), Access(2, V, "x"),
            Access(1, far, "r"), Access(0, KERNEL_MIN + P, "w"), IsModified(shared),
            PageProtect(shared, PROT_NONE), Extract(1, V), Extract(2, V), Extract(3, V + P),
            Extract(0, KERNEL_MIN + P), Extract(1, V + P), IsModified(shared), Access(1, V + P, "w"),
            PageProtect(PA(1), PROT_NONE), Destroy(1), Destroy(2), Destroy(3)]


def _ref_mod(lay: Layout) -> list[Op]:
    a, b = PA(0), PA(1)
    return [Create(), Enter(1, V, a, RW), IsReferenced(a), IsModified(a), Access(1, V, "r"), IsModified(a),
            Access(1, V, "w"), IsModified(a), ClearModify(a), ClearModify(a), IsModified(a),
            Access(1, V, "r"), IsModified(a), Access(1, V, "w"), IsModified(a), ClearReference(a),
            ClearReference(a), Access(1, V, "r"), Enter(1, V + P, b, RW, PROT_W), IsModified(b),
            IsReferenced(b), Enter(1, V + 2 * P, b, PROT_R, PROT_R), Remove(1, V, V + 3 * P),
            IsModified(a), IsModified(b), ClearModify(b), IsModified(b), Enter(1, V, b, PROT_R),
            Access(1, V, "w"), IsModified(b), ClearReference(b), Destroy(1)]


def _kenter_kremove(lay: Layout) -> list[Op]:
    ops: list[Op] = []
    kvas = [KERNEL_MIN, *lay.kernel_edges]
    for i, kva in enumerate(kvas):
        ops += [KEnter(kva, PA(i % 4), RW), Extract(0, kva), Access(0, kva, "w"), Access(0, kva, "x")]
    ops += [IsModified(PA(0)), IsReferenced(PA(0)), KEnter(KERNEL_MIN, PA(5), PROT_R),  # replaces
            Extract(0, KERNEL_MIN), Access(0, KERNEL_MIN, "w"),
            Enter(0, KERNEL_MIN + 2 * P, PA(6), RW, PROT_W),  # a managed kernel mapping beside them
            KRemove(KERNEL_MIN, 4 * P), Extract(0, KERNEL_MIN), Extract(0, KERNEL_MIN + 2 * P),
            IsModified(PA(6))]
    for kva in kvas[1:]:
        ops += [KRemove(kva - P, 2 * P), Extract(0, kva)]
    ops += [Remove(0, KERNEL_MIN + 2 * P, KERNEL_MIN + 3 * P), Extract(0, KERNEL_MIN + 2 * P)]
    return ops


def _collect(lay: Layout) -> list[Op]:
    far = lay.edges[-1] if lay.edges else V + 0x400000
    return [Create(), Enter(1, V, PA(0), RW, PROT_NONE, True), Enter(1, V + P, PA(1), RW, PROT_W),
            Enter(1, far, PA(2), PROT_R), Enter(0, KERNEL_MIN + P, PA(3), RW, PROT_NONE, True),
            Collect(1), Extract(1, V), Access(1, V, "w"), Extract(1, V + P), Extract(1, far),
            IsModified(PA(1)), Enter(1, far, PA(2), RW), Collect(1), Collect(1), Extract(0, KERNEL_MIN + P),
            Remove(1, USER_MIN, USER_MAX), Collect(1), Destroy(1)]


def _destroy_with_mappings(lay: Layout) -> list[Op]:
    ops: list[Op] = [Create(), Create()]
    for i, e in enumerate(lay.edges):
        ops += [Enter(1, e - P, PA(i % 8), RW, PROT_W, i % 2 == 0), Enter(1, e, PA(8 + i % 8), RW),
                Enter(2, e, PA(i % 8), PROT_R)]
    ops += [Reference(1), Destroy(1), Extract(1, lay.edges[0] if lay.edges else V), Destroy(1)]
    ops += [Extract(2, lay.edges[0] if lay.edges else V), IsModified(PA(0)), Destroy(2)]
    return ops


def _frames_returned_at_destroy(lay: Layout) -> list[Op]:
    ops: list[Op] = []
    for round_ in range(3):
        ops += [Create()]
        pmap = round_ + 1
        for i, e in enumerate(lay.edges):
            ops += [Enter(pmap, e, PA(i % 8), RW)]
        ops += [Remove(pmap, USER_MIN, USER_MAX), Enter(pmap, V, PA(0), RW), Destroy(pmap)]
    return ops


def _enomem_canfail(lay: Layout) -> list[Op]:
    # Map one page in each of many 4 MiB regions (a table each, in every geometry up to
    # 4 MiB) with canfail until the small pool runs out: ENOMEM must leave no trace.
    regions = [0x00400000 * k for k in range(1, 60)]
    ops: list[Op] = [Create()]
    ops += [Enter(1, va, PA(k % 8), RW, PROT_NONE, False, True) for k, va in enumerate(regions)]
    ops += [Enter(1, regions[0] + P, PA(9), RW, PROT_NONE, False, True),  # no new table needed
            Extract(1, regions[-1]), Remove(1, regions[0], regions[0] + 2 * P),
            Enter(1, regions[-1], PA(10), RW, PROT_NONE, False, True),  # a freed table is reusable
            Remove(1, USER_MIN, USER_MAX)]
    ops += [Enter(1, va, PA(k % 8), RW, PROT_NONE, False, True) for k, va in enumerate(regions[:8])]
    ops += [Destroy(1), Create(), Enter(2, V, PA(0), RW, PROT_NONE, False, True), Destroy(2)]
    return ops


CHECKS: tuple[Check, ...] = (
    Check("create-reference-destroy", "create, reference, destroy (the last one with a mapping left)",
          _create_reference_destroy),
    Check("enter-extract-remove", "enter, extract, access and remove one mapping", _enter_extract_remove),
    Check("enter-replace", "enter over a mapping: another page (old one keeps MOD), the same page "
          "(prot and wired updated, re-entering unwires)", _enter_replace),
    Check("enter-remove-across-table-edges", "enter on both sides of every table edge of both "
          "geometries; remove across, on each side, and all at once", _across_edges),
    Check("frees-pt-pages-on-remove", "removing the last mapping of a table gives its frame back",
          _frees_on_remove, requires=("frees_pt_pages",)),
    Check("protect", "protect lowers rights (never adds), no r removes; across an edge; wired kept",
          _protect),
    Check("unwire", "unwire, unwire twice, unwire where nothing is wired; re-entering unwires",
          _unwire),
    Check("page-protect-shared", "page_protect of a page mapped by several pmaps and the kernel: "
          "w nothing, r/rx removes write, none removes every mapping", _page_protect_shared),
    Check("ref-mod", "REF/MOD through enter's access, pmap_access, clear_* (previous values); MOD "
          "survives removal", _ref_mod),
    Check("kenter-kremove", "kenter across kernel table edges (wired, unmanaged, no REF/MOD); "
          "kremove leaves managed kernel mappings", _kenter_kremove),
    Check("collect", "collect keeps wired and kernel mappings (may forget the others)", _collect),
    Check("destroy-with-mappings", "the last destroy of a pmap that still has mappings (the VM "
          "removes them first); another pmap is untouched", _destroy_with_mappings),
    Check("frames-returned-at-destroy", "every frame a pmap held is back in the pool after its "
          "destroy, round after round", _frames_returned_at_destroy),
    Check("enomem-canfail", "enter with canfail on an exhausted pool: ENOMEM, no trace; frames "
          "freed by remove and destroy are usable again", _enomem_canfail, exhaust=True),
)


def check_named(name: str) -> Check:
    for check in CHECKS:
        if check.name == name:
            return check
    raise BadInput(f"unknown check {name!r} (checks: {', '.join(c.name for c in CHECKS)})")


# -- running and judging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One row of the table."""

    name: str
    description: str
    outcome: str  # PASS, FAIL, XFAIL, XPASS or SKIP
    ops: int
    first: Divergence | None = None  # the first divergence that decided the outcome
    expected: tuple[str, ...] = ()  # signatures a missing capability explains
    reason: str = ""
    stream: Stream | None = field(default=None, compare=False)
    path: str | None = None  # where the stream (or reproducer) was written
    replay: str | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name, "description": self.description, "outcome": self.outcome, "ops": self.ops,
            "first": None if self.first is None else {
                "op_index": self.first.op_index, "op": self.first.op, "signature": self.first.signature,
                "message": self.first.message},
            "expected": list(self.expected), "reason": self.reason, "stream": self.path,
            "replay": self.replay,
        }


def registered_pair(registry: Registry, backend: str, reference: str | None) -> str:
    """The reference's name (the default when None), both names checked (BadInput)."""
    reference = reference or DEFAULT_REFERENCE
    for name, what in ((backend, "backend"), (reference, "reference")):
        if name not in registry.backends:
            known = ", ".join(sorted(registry.backends)) or "none"
            raise BadInput(f"unknown {what} {name!r} (registered: {known})")
    return reference


class Conformance:
    """The battery for one backend against a reference, both found by name in ``registry``."""

    def __init__(self, registry: Registry, backend: str, reference: str | None = None,
                 time_limit: float = 10.0, probed: "Probe | None" = None) -> None:
        """``probed``: the capabilities and boot frames measured in a worker (``probe``),
        so that nothing here runs the backends' code; without it they are measured here."""
        reference = registered_pair(registry, backend, reference)
        self.backend = backend
        self.reference = reference
        self.spec = registry.backends[backend]
        specs = [registry.backends[reference]] + ([self.spec] if backend != reference else [])
        self.specs = specs
        self.harness = Harness(specs, reference, registry.invariants)
        self.capabilities = dict(probed.capabilities) if probed is not None else capabilities_of(self.spec)
        self.expected = expected_patterns(backend, self.capabilities)
        self.known = [*registry.known, *self.expected]
        self.time_limit = time_limit
        self._layout: Layout | None = layout_for(specs, probed.boot) if probed is not None else None

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = layout_for(self.specs)
        return self._layout

    @property
    def backends_run(self) -> list[str]:
        return [s.name for s in self.specs]

    def stream(self, check: Check) -> Stream:
        lay = self.layout
        phys = lay.exhaust_pages if check.exhaust else 4096
        return make_stream(check.build(lay), phys_pages=phys,
                           origin={"generator": "check-backend", "check": check.name})

    def run(self, check: Check) -> CheckResult:
        try:
            stream = self.stream(check)
        except Exception as exc:  # a geometry the battery cannot lay out: the backend's bootstrap
            return CheckResult(check.name, check.description, FAIL, 0,
                               reason=f"cannot build the stream: {type(exc).__name__}: {exc}")
        return self.judge(check, self.harness.run(stream, time_limit=self.time_limit), stream)

    def judge(self, check: Check, run: RunResult, stream: Stream) -> CheckResult:
        mine = [d for d in run.divergences if d.backend == self.backend]
        explained = [d for d in mine if any(k.matches(d.signature) for k in self.expected)]
        unexplained = [d for d in mine if d not in explained]
        missing = [c for c in check.requires if not self.capabilities.get(c, True)]
        if unexplained:
            first = min(unexplained, key=lambda d: d.op_index)
            return CheckResult(check.name, check.description, FAIL, run.ops_run, first,
                               reason=first.message, stream=stream)
        if explained:
            first = min(explained, key=lambda d: d.op_index)
            why = "; ".join(sorted({k.reason for k in self.expected if k.matches(first.signature)}))
            return CheckResult(check.name, check.description, XFAIL, run.ops_run, first,
                               tuple(sorted({d.signature for d in explained})), why, stream)
        if missing:
            return CheckResult(check.name, check.description, XPASS, run.ops_run,
                               reason=f"passes although {self.backend} declares "
                                      + ", ".join(f"{c} = False" for c in missing), stream=stream)
        return CheckResult(check.name, check.description, PASS, run.ops_run, stream=stream)

    def replay_command(self, path: str, plugins: Sequence[str] = ()) -> str:
        words = ["difftest", *(w for p in plugins for w in ("-p", p)), "replay", path,
                 "--backends", ",".join(self.backends_run), "--reference", self.reference]
        return shlex.join(words)


def campaign_rows(report: dict, backend: str, expected: Sequence[KnownDivergence], out: str,
                  replay: Callable[[str], str], first_of: Callable[[dict], Divergence]) -> list[CheckResult]:
    """A campaign's outcome as rows: one per signature of the backend (known ones and those
    a missing capability explains are XFAIL), or one PASS row.  ``first_of(entry)``: the
    first divergence to show (``first_in_reproducers``: the shrunk reproducer's)."""
    summary = f"campaign: {report['streams']} streams, {report['ops']} ops against {report['reference']}"
    rows = []
    for entry in report["divergences"]:
        if entry["backend"] != backend:
            continue
        first = first_of(entry)
        path = f"{out}/{entry['reproducer_path']}" if entry.get("reproducer_path") else None
        explained = [k.reason for k in expected if k.matches(entry["signature"])]
        if explained or entry["known"]:
            reason = explained[0] if explained else entry.get("known_reason") or "in the baseline"
            rows.append(CheckResult(f"campaign:{entry['signature']}", summary, XFAIL,
                                    entry.get("reproducer_ops") or 0, first, (entry["signature"],), reason,
                                    path=path, replay=replay(path) if path else None))
        else:
            rows.append(CheckResult(f"campaign:{entry['signature']}", summary, FAIL,
                                    entry.get("reproducer_ops") or 0, first, reason=first.message,
                                    path=path, replay=replay(path) if path else None))
    if not rows:
        rows.append(CheckResult("campaign", summary, PASS, report["ops"]))
    return rows


def conforming(rows: Iterable[CheckResult]) -> bool:
    return not any(r.outcome == FAIL for r in rows)


# -- check-backend runs every plugin call in worker processes -----------------------------------------
#
# Each call is bounded twice, as in a campaign: SIGALRM inside the worker (a hang of the
# backend, the others' checks go on), and a limit in the parent that kills a worker which
# outlives it (a backend that ignores SIGALRM or spins in C code).  Whatever a backend raises
# (SystemExit and KeyboardInterrupt included) is its crash; a worker that dies (os._exit) or
# is killed fails the check it was running, named, and the others run on a fresh worker.

WORKER_START = 10.0  # seconds for a fresh worker to start and load the plugins
WORKER_GRACE = 2.0  # seconds past a call's own limit before its worker is killed

_REGISTRIES: dict[tuple[str, ...], Registry] = {}


def _worker_registry(plugins: tuple[str, ...]) -> Registry:
    """In a worker: the registry of ``plugins``, loaded once per process."""
    if plugins not in _REGISTRIES:
        from difftest import interrupts
        from difftest.units import _stdout_to_stderr
        from difftest.plugins import PluginHost

        interrupts.install()
        _stdout_to_stderr()
        _REGISTRIES[plugins] = PluginHost().load(plugins)
    return _REGISTRIES[plugins]


@dataclass(frozen=True)
class ProbeTask:
    """Boot ``names`` (creating a pmap on each) and read ``backend``'s capabilities."""

    plugins: tuple[str, ...]
    backend: str
    names: tuple[str, ...]
    time_limit: float


@dataclass(frozen=True)
class Probe:
    """What the layout and the verdicts need from the backends' own code."""

    boot: int = 0  # the most frames one of them takes to boot and create a pmap
    capabilities: tuple[tuple[str, bool], ...] = ()
    problem: str = ""  # the culprit's crash or hang, one line ("" when none)


def probe(task: ProbeTask) -> Probe:
    """Executed in a worker process."""
    from difftest.harness import StreamTimeout, _alarm
    from difftest.interrupts import plugin_fault

    registry = _worker_registry(task.plugins)
    boot, caps = 0, ()
    for name in task.names:
        spec = registry.backends[name]
        try:
            with _alarm(task.time_limit):
                if name == task.backend:
                    caps = tuple(sorted(capabilities_of(spec).items()))
                boot = max(boot, boot_frames(spec))
        except StreamTimeout:
            return Probe(problem=f"{name} hung at bootstrap: no pmap created within {task.time_limit:g} s")
        except BaseException as exc:
            if not plugin_fault(exc):
                raise
            text = " ".join(str(exc).split())[:200]  # one line, bounded
            what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            return Probe(problem=f"{name} crashed at bootstrap: {what}")
    return Probe(boot, caps)


def probe_isolated(task: ProbeTask, executor_factory: Callable[[int], Any]) -> Probe:
    """``probe`` each backend in a worker of its own (so that one that ends or hangs its
    process is named); the first problem, or what they all measured."""
    from difftest.units import run_alone

    limit = WORKER_START + task.time_limit + WORKER_GRACE
    boot, caps = 0, ()
    for name in task.names:
        found, fate = run_alone(executor_factory, replace(task, names=(name,)), probe, limit)
        if fate != "ok":
            return Probe(problem=f"{name} {_fate(fate)} at bootstrap")
        if found.problem:
            return found
        boot = max(boot, found.boot)
        caps = found.capabilities or caps
    return Probe(boot, caps)


def _fate(fate: str) -> str:
    return ("hung: its process outlived its limit and was killed" if fate == "hung"
            else "ended its process (os._exit, a signal or the OOM killer)")


@dataclass(frozen=True)
class BatteryTask:
    """What a worker needs to run checks: plugins to load, the two names, the checks."""

    plugins: tuple[str, ...]
    backend: str
    reference: str
    checks: tuple[str, ...]
    time_limit: float
    probed: Probe | None = None


def run_battery(task: BatteryTask) -> list[CheckResult]:
    """Run ``task.checks``: executed in a worker process (the harness makes whatever a
    backend raises its crash)."""
    registry = _worker_registry(task.plugins)
    conf = Conformance(registry, task.backend, task.reference, time_limit=task.time_limit, probed=task.probed)
    return [conf.run(check_named(name)) for name in task.checks]


def run_battery_isolated(task: BatteryTask, executor_factory: Callable[[int], Any]) -> list[CheckResult]:
    """Each check a task of its own on a one-worker pool, watched: the worker runs them in
    order, so the first unfinished check is the one running.  One that outlives its limit
    has its worker killed (its FAIL: a hang), one whose worker dies fails (named); the
    checks after it run on a fresh worker."""
    import concurrent.futures as cf
    import time
    from concurrent.futures.process import BrokenProcessPool

    from difftest.units import kill_workers

    rows: dict[str, CheckResult] = {}
    todo = list(task.checks)
    while todo:
        executor = executor_factory(1)
        futures = [(name, executor.submit(run_battery, replace(task, checks=(name,)))) for name in todo]
        current, since = 0, time.monotonic()
        killed = False
        try:
            while current < len(futures):
                name, fut = futures[current]
                # A check whose backend hangs gives the reference a fresh limit: twice its own.
                limit = 3 * task.time_limit + WORKER_GRACE + (WORKER_START if current == 0 else 0.0)
                try:
                    (rows[name],) = fut.result(timeout=max(0.0, since + limit - time.monotonic()))
                except cf.TimeoutError:
                    killed = kill_workers(executor)
                    rows[name] = _lost(name, "hung")
                    current += 1
                    break
                except BrokenProcessPool:
                    rows[name] = _lost(name, "died")
                    current += 1
                    break
                current += 1
                since = time.monotonic()
        finally:
            executor.shutdown(wait=killed or current >= len(futures), cancel_futures=True)
        todo = [name for name, _ in futures[current:]]
    return [rows[name] for name in task.checks]


def _lost(name: str, fate: str) -> CheckResult:
    check = check_named(name)
    what = (f"the process running this check outlived its limit and was killed (a hang)" if fate == "hung"
            else "the process running this check died (os._exit, a signal or the OOM killer)")
    return CheckResult(name, check.description, FAIL, 0, reason=what)


@dataclass(frozen=True)
class ReproducerTask:
    """Run reproducers again to find where each signature first shows in them."""

    plugins: tuple[str, ...]
    backend: str
    reference: str
    time_limit: float
    probed: Probe
    entries: tuple[tuple[str, dict], ...]  # (signature, reproducer as JSON)


def first_in_reproducers(task: ReproducerTask) -> dict[str, Divergence]:
    """Executed in a worker process: signature -> its first divergence in its reproducer."""
    registry = _worker_registry(task.plugins)
    conf = Conformance(registry, task.backend, task.reference, time_limit=task.time_limit, probed=task.probed)
    found = {}
    for signature, doc in task.entries:
        first = conf.harness.run(stream_from_json(doc), time_limit=task.time_limit).first(signature)
        if first is not None:
            found[signature] = first
    return found


def firsts_isolated(task: ReproducerTask, executor_factory: Callable[[int], Any]) -> dict[str, Divergence]:
    """``first_in_reproducers`` in a worker of its own ({} when the worker dies or hangs:
    the rows then show the campaign's first sighting)."""
    from difftest.units import run_alone

    limit = WORKER_START + len(task.entries) * (task.time_limit + WORKER_GRACE)
    found, fate = run_alone(executor_factory, task, first_in_reproducers, limit)
    return found if fate == "ok" else {}
