"""The harness's overhead over the backends' own work, and its per-op cost as the address
space grows with heavily shared pages.

    python benchmarks/bench_overhead.py [--streams 10] [--ops 2000] [--repeats 5] [--seed 1] [--no-pressure]

Ways of running the same ops on the same backends (the default set):

* ``bare``: a plain loop calling the backends' pmap(9) functions, nothing observed (the
  backends' own time, the floor);
* ``minimal``: the least a differential harness can check per op (``MinimalRun``: the
  contract model, results, the touched translations, held frames; nothing judged, no
  audits): a yardstick for what any harness must cost over the backends;
* ``default``: ``Harness.run`` built as ``difftest fuzz`` builds it by default, less the
  counting of the backends' calls for the coverage features;
* ``fuzz``: what a ``difftest fuzz`` worker does per stream besides generating it: that
  harness counting the backends' calls (the coverage recorder), then the stream's
  statistics and its features (``difftest.units.run_unit``);
* ``checkpoint``: ``Harness.run`` with backend invariants in the checkpoint audits only and
  no re-run on the precise path (``--invariants checkpoint``);
* ``precise``: ``Harness.run`` with backend invariants after every op (``--invariants per-op``).

Workloads: the first ``--streams`` streams of a campaign (``random`` generator, seeds as
``difftest fuzz --seed S`` derives them, ``--ops`` each; ``--no-pressure``: the same with
the generator's memory-pressure dimension off), and a *shared-pages* stream: a
prefix maps N pages (N = 10 or 10,000) in 4 pmaps, ~600 mappings per data page at
10,000, then a suffix of single-page ops (enter, access, protect, extract, remove, unwire)
that maps those same shared pages and keeps at most 16 live mappings of its own.  The
prefix runs untimed; the suffix is then timed op by op (``Harness.start`` and
``StreamRun.step``, the per-op path, no checkpoint audit inside: audits cost O(live
mappings) by design and are spaced at least that many ops apart).

All figures are CPU time (``time.process_time``) of this process.  Repeats run the
configurations interleaved, so that machine drift hits all alike; figures are medians,
ratios are taken repeat by repeat and then their median.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from difftest.machine import KERNEL_PMAP, USER_MAX, USER_MIN, OutOfMemory, PhysPool
from difftest import ops as o
from difftest.plugins import PluginHost
from difftest.harness import Harness
from difftest.streams import Stream, make_stream

PAGE = 4096
_KIND_BIT = {"r": o.PROT_R, "w": o.PROT_W, "x": o.PROT_X}
SHARE = 600  # mappings per shared data page at 10,000 live mappings


# -- the backends' own work ---------------------------------------------------------------

def _bare_calls(b: Any, op: Any, refs: dict[int, int], next_pmap: list[int]) -> Any:
    """Call ``b``'s pmap(9) function for ``op``; returns its result."""
    t = type(op)
    if t is o.Enter:
        return b.pmap_enter(op.pmap, op.va, op.pa, op.prot, op.access, op.wired, op.canfail)
    elif t is o.Remove:
        b.pmap_remove(op.pmap, op.sva, op.eva)
    elif t is o.Access:
        return b.pmap_access(op.pmap, op.va, op.kind)
    elif t is o.Extract:
        return b.pmap_extract(op.pmap, op.va)
    elif t is o.Protect:
        b.pmap_protect(op.pmap, op.sva, op.eva, op.prot)
    elif t is o.Unwire:
        b.pmap_unwire(op.pmap, op.va)
    elif t is o.PageProtect:
        b.pmap_page_protect(op.pa, op.prot)
    elif t is o.Collect:
        b.pmap_collect(op.pmap)
    elif t is o.ClearModify:
        b.pmap_clear_modify(op.pa)
    elif t is o.IsModified:
        b.pmap_is_modified(op.pa)
    elif t is o.ClearReference:
        b.pmap_clear_reference(op.pa)
    elif t is o.IsReferenced:
        b.pmap_is_referenced(op.pa)
    elif t is o.KEnter:
        b.pmap_kenter_pa(op.va, op.pa, op.prot)
    elif t is o.KRemove:
        b.pmap_kremove(op.va, op.size)
    elif t is o.Create:
        b.pmap_create(next_pmap[0])
    elif t is o.Reference:
        b.pmap_reference(op.pmap)
    elif t is o.Destroy:
        if refs[op.pmap] == 0:  # the last reference: the VM layer empties the pmap first
            b.pmap_remove(op.pmap, USER_MIN, USER_MAX)
        b.pmap_destroy(op.pmap)
    elif t is o.Update:
        b.pmap_update(op.pmap)
    return None


class BareRun:
    """``stream``'s ops applied to fresh backends with no observation at all, op by op in
    lockstep (as the harness does); a backend that runs out of memory simply stops."""

    def __init__(self, specs: Sequence[Any], stream: Stream) -> None:
        data = stream.data_frames()
        # The pools set up as cheaply as the tree allows (the floor): the data frames
        # reserved once and copied, where PhysPool can copy itself.
        template = None
        if hasattr(PhysPool, "copy"):
            template = PhysPool(stream.phys_pages)
            template.reserve_data(data)
        self.live = []
        self.pools = []  # (each backend's, in the order of specs)
        for spec in specs:
            if template is not None:
                pool = template.copy()
            else:
                pool = PhysPool(stream.phys_pages)
                pool.reserve_data(data)
            self.pools.append(pool)
            self.live.append(spec.factory(pool))
        self.refs: dict[int, int] = {0: 1}
        self.next_pmap = [0]

    def book(self, op: Any) -> type:
        """The stream's own bookkeeping of ``op`` (pmap ids, references); returns its type."""
        t = type(op)
        refs = self.refs
        if t is o.Create:
            self.next_pmap[0] += 1
            refs[self.next_pmap[0]] = 1
        elif t is o.Reference:
            refs[op.pmap] += 1
        elif t is o.Destroy:
            refs[op.pmap] -= 1
        return t

    def step(self, index: int, op: Any) -> None:
        self.book(op)
        refs = self.refs
        for b in self.live:
            try:
                _bare_calls(b, op, refs, self.next_pmap)
            except OutOfMemory:
                self.live = [x for x in self.live if x is not b]


def run_bare(specs: Sequence[Any], stream: Stream) -> None:
    run = BareRun(specs, stream)
    for i, op in enumerate(stream.ops):
        run.step(i, op)



class MinimalRun:
    """The least a differential harness can check per op, as a yardstick for the harness:
    what the issue that asked for a fast path called cheap and decisive, and nothing else.

    Per op and backend: the backend's pmap(9) call (as ``BareRun``); the contract model
    (``ContractState``, the harness's own) applying the op; the op's result where the
    contract fixes one (enter, access, extract); the touched translations read in one
    fused backend call (``walk_fields_many``) and compared in one go; the frames the pmap
    holds against those it needs, read only when a frame moved (as the harness does).
    Nothing is judged, attributed, resynced or audited; no page attributes, no counters,
    no pool checks, no invariants, no ENOMEM legality: a difference is only counted
    (``differences``).  That is the floor under any harness that finds PR 5666 (held
    frames) and wrong translations, written as plain as it gets."""

    def __init__(self, specs: Sequence[Any], stream: Stream) -> None:
        from difftest.backend import fused_reader
        from difftest.contract import ContractState

        self.bare = BareRun(specs, stream)
        self.lanes = [(b, ContractState(spec.geometry), fused_reader(b, "walk_fields_many"), pool, {})
                      for b, pool, spec in zip(self.bare.live, self.bare.pools, specs)]
        self.differences = 0

    def step(self, index: int, op: Any) -> None:
        bare = self.bare
        t = bare.book(op)
        refs = bare.refs
        for lane in self.lanes:
            b = lane[0]
            if b not in bare.live:
                continue
            try:
                self._apply(lane, op, t, refs)
            except OutOfMemory:
                bare.live = [x for x in bare.live if x is not b]

    def _apply(self, lane: tuple, op: Any, t: type, refs: dict[int, int]) -> None:
        b, st, read_many, pool, seen = lane
        next_pmap = self.bare.next_pmap
        vas: Sequence[int] = ()
        pmap = getattr(op, "pmap", 0)
        if t is o.Enter:
            if _bare_calls(b, op, refs, next_pmap) == o.OK:
                st.enter(pmap, op.va, op.pa, op.prot, op.access, op.wired)
            vas = (op.va,)
        elif t is o.Remove:
            vas = st.remove(pmap, op.sva, op.eva)[0]
            _bare_calls(b, op, refs, next_pmap)
        elif t is o.Protect:
            vas = st.protect(pmap, op.sva, op.eva, op.prot)[0]
            _bare_calls(b, op, refs, next_pmap)
        elif t is o.Access:
            allowed, m = st.access_allowed(pmap, op.va, _KIND_BIT[op.kind])
            if (_bare_calls(b, op, refs, next_pmap) == o.OK) != allowed:
                self.differences += 1
            elif allowed:
                st.accessed(m, op.kind == "w")
            vas = (op.va,)
        elif t is o.Extract:
            m = st.get(pmap, op.va)
            if _bare_calls(b, op, refs, next_pmap) != (None if m is None else m[0]):
                self.differences += 1
            vas = (op.va,)
        elif t is o.Unwire:
            _bare_calls(b, op, refs, next_pmap)
            st.unwire(pmap, op.va)
            vas = (op.va,)
        elif t is o.PageProtect or t is o.Collect:
            # A pmap's places, or a page's pmap by pmap: one read each, compared in one go,
            # and only where they differ the mappings the backend may drop and did followed.
            if t is o.Collect:
                vas, _, optional = st.collect(pmap)
                groups = {pmap: vas} if vas else {}
                may_drop = {(pmap, va) for va in optional}
            else:
                keys, wired = st.page_protect(op.pa, op.prot)
                groups = {}
                for p, va in keys:
                    groups.setdefault(p, []).append(va)
                may_drop = set(wired)
            _bare_calls(b, op, refs, next_pmap)
            for p, group in groups.items():
                got = read_many(p, group)
                if got != _expected(st, p, group):
                    for va, fields in zip(group, got):
                        if fields is None and (p, va) in may_drop:
                            st.delete(p, va)
                    if got != _expected(st, p, group):
                        self.differences += 1
                self._frames(st, pool, seen, p)
            return
        elif t is o.KEnter:
            _bare_calls(b, op, refs, next_pmap)
            st.kenter(op.va, op.pa, op.prot)
            pmap, vas = KERNEL_PMAP, (op.va,)
        elif t is o.KRemove:
            vas = st.kremove(op.va, op.size)
            _bare_calls(b, op, refs, next_pmap)
            pmap = KERNEL_PMAP
        elif t is o.Create:
            pmap = next_pmap[0]
            st.create(pmap)
            _bare_calls(b, op, refs, next_pmap)
        elif t is o.Destroy:
            last = refs[pmap] == 0
            if last:
                st.empty(pmap)
            _bare_calls(b, op, refs, next_pmap)
            if last:
                st.forget_pmap(pmap)
                return
        else:  # reference, update, the page-attribute queries and clears
            if t is o.ClearModify:
                st.mod.discard(op.pa)
            elif t is o.ClearReference:
                st.ref.discard(op.pa)
            _bare_calls(b, op, refs, next_pmap)
            return
        if vas:
            self._compare(read_many, st, pmap, vas)
        self._frames(st, pool, seen, pmap)

    def _compare(self, read_many: Callable, st: Any, pmap: int, vas: Sequence[int]) -> None:
        if read_many(pmap, vas) != _expected(st, pmap, vas):
            self.differences += 1

    def _frames(self, st: Any, pool: Any, seen: dict[int, int], pmap: int) -> None:
        if pmap not in st.maps:
            return
        stamp = pool.allocs + pool.frees + st.need_epoch
        if seen.get(pmap) != stamp:
            seen[pmap] = stamp
            held, needed = pool.held_pt_l1(pmap), st.needed_pt_l1(pmap)
            # (a backend may keep the kernel's page-table pages: more of them, never fewer)
            if held != needed and not (pmap == KERNEL_PMAP and all(h >= n for h, n in zip(held, needed))):
                self.differences += 1


def _expected(st: Any, pmap: int, vas: Sequence[int]) -> list[tuple[int, int, bool] | None]:
    """What the contract model says the backend's fused read of ``vas`` gives."""
    get = st.maps.get(pmap, {}).get
    return [(m := get(va)) and m[:3] for va in vas]


def run_minimal(specs: Sequence[Any], stream: Stream) -> None:
    run = MinimalRun(specs, stream)
    for i, op in enumerate(stream.ops):
        run.step(i, op)

# -- workloads ------------------------------------------------------------------------------

def campaign_streams(host: PluginHost, seed: int, n: int, ops: int, pressure: bool = True) -> list[Stream]:
    """The first ``n`` streams of ``difftest fuzz --seed seed``; with ``pressure`` False,
    the same streams with the random generator's pressure dimension off (no stream driven
    to the pool's edge: the streams of before that dimension existed)."""
    from difftest.units import unit_seed

    gen = host.registry.generators["random"]
    extra = {} if pressure else {"pressure": False}
    return [gen.generate(unit_seed(seed, k), ops, 8192, **extra) for k in range(n)]


PMAPS = 4
SUFFIX_BASE = 0x60000000  # the measured ops' VAs, away from the prefix's
LIVE_SUFFIX = 16  # the measured ops' own live mappings, at most


def shared_prefix(n: int) -> list:
    """``n`` mappings over ``PMAPS`` pmaps, ~``SHARE`` per data page (at least one page)."""
    pages = max(1, n // SHARE)
    ops: list = [o.Create() for _ in range(PMAPS)]
    for i in range(n):
        pmap = 1 + i % PMAPS
        va = 0x00400000 + (i // PMAPS) * PAGE
        pa = (64 + i % pages) * PAGE
        ops.append(o.Enter(pmap, va, pa, o.PROT_R | o.PROT_W, 0, False, False))
    return ops


def shared_suffix(count: int, n: int, seed: int = 1) -> list:
    """Single-page ops on the shared pages (so each op touches a page with ~600 mappings)."""
    rng = random.Random(seed)
    pages = [(64 + i) * PAGE for i in range(max(1, n // SHARE))]
    ops: list = []
    live: list[tuple[int, int]] = []
    while len(ops) < count:
        r = rng.random()
        if len(live) >= LIVE_SUFFIX:
            r = 0.9  # a remove: the suffix keeps at most LIVE_SUFFIX mappings of its own
        if r < 0.3 or not live:
            pmap = rng.randrange(1, PMAPS + 1)
            va = SUFFIX_BASE + rng.randrange(256) * PAGE
            if (pmap, va) in live:
                continue
            ops.append(o.Enter(pmap, va, rng.choice(pages), o.PROT_R | o.PROT_W,
                             rng.choice((0, o.PROT_R, o.PROT_W | o.PROT_R)), rng.random() < 0.1, False))
            live.append((pmap, va))
        elif r < 0.5:
            pmap, va = rng.choice(live)
            ops.append(o.Access(pmap, va, rng.choice("rw")))
        elif r < 0.6:
            pmap, va = rng.choice(live)
            ops.append(o.Protect(pmap, va, va + PAGE, o.PROT_R))
        elif r < 0.7:
            pmap, va = rng.choice(live)
            ops.append(o.Extract(pmap, va))
        elif r < 0.75:
            pmap, va = rng.choice(live)
            ops.append(o.Unwire(pmap, va))
        else:
            pmap, va = live.pop(rng.randrange(len(live)))
            ops.append(o.Remove(pmap, va, va + PAGE))
    return ops


# -- measuring -------------------------------------------------------------------------------

def cpu(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def build_harnesses(host: PluginHost, checkpoint_every: int = 1000) -> tuple[Any, Any, Any]:
    """(specs, default harness, precise harness), the default built as ``difftest fuzz``
    builds it from its default options."""
    from difftest.units import CampaignConfig, _worker_env
    from difftest.harness import Harness

    names = tuple(host.registry.default_backends())
    config = CampaignConfig(backends=names, reference="alpha-ref", seed=0, checkpoint_every=checkpoint_every)
    default, _ = _worker_env(config)
    if getattr(default, "record_calls", False):  # (fuzz mode adds the call counting back)
        default = Harness(default.specs, default.reference, default.invariants, default.checkpoint_every,
                          fast=default.fast)
    precise = Harness.from_registry(host.registry, names, "alpha-ref", invariants_per_op=True,
                                    checkpoint_every=checkpoint_every)
    return default.specs, default, precise


def fuzz_worker(default: Any) -> Any:
    """A stream as a ``difftest fuzz`` worker runs it (``units.run_unit`` minus generating
    it): the default harness recording the backends' calls for the coverage features, then
    the stream's statistics and its features."""
    from difftest import features as feat
    from difftest.coverage import stream_stats
    from difftest.harness import Harness

    if hasattr(feat, "run_features"):  # the harness counts the calls itself
        harness = Harness(default.specs, default.reference, default.invariants, default.checkpoint_every,
                          fast=default.fast, record_calls=True)

        def run(stream: Stream) -> Any:
            result = harness.run(stream)
            feat.run_features(result.calls, stream, stream_stats(stream))
            return result

        return _Worker(run, harness.start)
    # Older trees: a recorder wraps every backend call (and some compute the statistics
    # inside features()).
    recorder = feat.FeatureRecorder()
    harness = Harness([recorder.instrument(spec) for spec in default.specs], default.reference,
                      default.invariants, default.checkpoint_every, fast=default.fast)
    given_stats = len(inspect.signature(recorder.features).parameters) > 1

    def run_wrapped(stream: Stream) -> Any:
        recorder.start()
        result = harness.run(stream)
        if given_stats:
            recorder.features(stream, stream_stats(stream))
        else:
            recorder.features(stream)
        return result

    def start_wrapped(stream: Stream) -> Any:
        recorder.start()
        return harness.start(stream)

    return _Worker(run_wrapped, start_wrapped)


class _Worker:
    """``worker(stream)`` runs a stream whole; ``worker.start(stream)`` sets it up to be
    stepped op by op (the shared-pages suffix)."""

    def __init__(self, run: Callable[[Stream], Any], start: Callable[[Stream], Any]) -> None:
        self.run, self.start = run, start

    def __call__(self, stream: Stream) -> Any:
        return self.run(stream)


def time_suffix(start: Callable[[Stream], Any], stream: Stream, suffix: int) -> float:
    """CPU seconds per op of the last ``suffix`` ops, stepped one by one after the prefix
    (untimed): the per-op path alone, no checkpoint audit inside."""
    run = start(stream)
    ops = stream.ops
    pre = len(ops) - suffix
    for i in range(pre):
        run.step(i, ops[i])
    t0 = time.process_time()
    for i in range(pre, len(ops)):
        run.step(i, ops[i])
    return (time.process_time() - t0) / suffix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=10, help="campaign streams (default 10)")
    ap.add_argument("--ops", type=int, default=2000, help="ops per campaign stream (default 2000)")
    ap.add_argument("--suffix", type=int, default=2000, help="measured ops of the shared-pages stream")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-precise", action="store_true",
                    help="leave out the precise path and --invariants checkpoint")
    ap.add_argument("--no-pressure", action="store_true",
                    help="campaign streams with the random generator's memory-pressure dimension off "
                         "(lighter streams: no ENOMEM, fewer page-table frames moving)")
    ap.add_argument("--json", metavar="FILE", help="also write the medians as JSON to FILE")
    args = ap.parse_args(argv)

    host = PluginHost()
    host.load()
    specs, default, precise = build_harnesses(host)
    streams = campaign_streams(host, args.seed, args.streams, args.ops, pressure=not args.no_pressure)
    n_ops = sum(len(s.ops) for s in streams)
    sizes = (10, 10_000)
    shared = {}
    for n in sizes:
        shared[n] = make_stream(shared_prefix(n) + shared_suffix(args.suffix, n))

    bare = lambda s: run_bare(specs, s)  # noqa: E731
    fuzz = fuzz_worker(default)
    modes: dict[str, Callable[[Stream], Any]] = {"bare": bare, "minimal": lambda s: run_minimal(specs, s),
                                                 "default": default.run, "fuzz": fuzz}
    starts: dict[str, Callable[[Stream], Any]] = {"bare": lambda s: BareRun(specs, s),
                                                  "minimal": lambda s: MinimalRun(specs, s),
                                                  "default": default.start, "fuzz": fuzz.start}
    if not args.skip_precise:
        checkpoint = Harness.from_registry(host.registry, [s.name for s in specs], default.reference,
                                           invariants_per_op=False, checkpoint_every=default.checkpoint_every)
        modes["checkpoint"] = checkpoint.run
        starts["checkpoint"] = checkpoint.start
        modes["precise"] = precise.run
        starts["precise"] = precise.start
    camp: dict[str, list[float]] = {m: [] for m in modes}
    marg: dict[tuple[str, int], list[float]] = {(m, n): [] for m in modes for n in sizes}
    for _ in range(args.repeats):
        for mode, fn in modes.items():  # interleaved: every mode once per repeat
            camp[mode].append(cpu(lambda: [fn(s) for s in streams]) / n_ops)
            for n in sizes:
                marg[(mode, n)].append(time_suffix(starts[mode], shared[n], args.suffix))

    med = statistics.median
    us = lambda x: f"{x * 1e6:8.1f}"  # noqa: E731
    print(f"backends: {', '.join(s.name for s in specs)}; {args.repeats} repeats, CPU time, medians")
    print(f"campaign streams: {args.streams} x {args.ops} ops (random generator, seed {args.seed}"
          f"{', memory pressure off' if args.no_pressure else ''})")
    print(f"{'mode':10} {'us/op':>8} {'ops/s':>9} {'x bare':>7} {'overhead':>9}  (overhead: (mode - bare) / bare)")
    for mode in modes:
        ratio = med([h / b for h, b in zip(camp[mode], camp["bare"])])
        over = med([(h - b) / b for h, b in zip(camp[mode], camp["bare"])])
        print(f"{mode:10} {us(med(camp[mode]))} {1 / med(camp[mode]):9,.0f} {ratio:6.2f}x {over:8.2f}x")
    print(f"shared-pages stream: {args.suffix} single-page ops on pages with up to {SHARE} mappings each")
    print(f"{'mode':10} {'10 live':>8} {'10,000':>8} {'ratio':>7}   (us/op, suffix)")
    for mode in modes:
        ratios = [l / s for s, l in zip(marg[(mode, 10)], marg[(mode, 10_000)]) if s > 0]
        print(f"{mode:10} {us(med(marg[(mode, 10)]))} {us(med(marg[(mode, 10_000)]))} "
              f"{med(ratios) if ratios else float('nan'):6.2f}x")
    if args.json:
        doc = {mode: {"campaign_us_per_op": med(camp[mode]) * 1e6,
                      "campaign_x_bare": med([h / b for h, b in zip(camp[mode], camp["bare"])]),
                      "shared_us_per_op": {str(n): med(marg[(mode, n)]) * 1e6 for n in sizes}}
               for mode in modes}
        with open(args.json, "w") as out:
            json.dump(doc, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
