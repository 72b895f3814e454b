"""difftest's throughput next to its obvious peer: a Hypothesis stateful test driving the
same three backends with a minimal differential check.

    python benchmarks/bench_peer.py [--examples 200] [--steps 50] [--streams 6] [--long-streams 60] [--repeats 3]

The peer is a ``RuleBasedStateMachine`` with the rules create, enter, remove, protect,
extract, page_protect, collect and destroy over a few 4 MiB regions and a few data pages;
after each rule it compares, in every backend, the translations of the VAs the rule
touched with a model of the expected mappings, and each touched pmap's page-table frames
held with the frames its geometry needs (differences are counted, not raised, so that the
run goes its full length; ``collect`` may forget non-wired mappings: the model follows).
Its figure is steps per CPU second of this process (``time.process_time``).

difftest's figure is ``difftest fuzz --workers 1 --streams N --shrink-budget 0`` run as a
subprocess in the same run: ops per CPU second of that process and its workers (user + sys,
from ``resource.getrusage(RUSAGE_CHILDREN)``, start-up included), for a short campaign
(``--streams``) and a longer one (``--long-streams``, where start-up and the end-of-campaign
plot step weigh less; 0 leaves it out).  The subprocess runs in a scratch directory, so it
imports the difftest that ``PYTHONPATH`` or the environment gives, never a checkout that
happens to be the current directory.  Next to them, the ceiling: the backends alone
(``bench_overhead.py``'s bare loop, nothing observed) on the short campaign's streams, in
this process.  Repeats alternate them all; figures are medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from bench_overhead import campaign_streams, run_bare
from difftest.backend import needed_pt_frames
from difftest.machine import USER_MAX, USER_MIN, PhysPool, Tag
from difftest.ops import PROT_R, PROT_W, PROT_X
from difftest.plugins import PluginHost

PAGE = 4096
REGIONS = (0x00400000, 0x00800000, 0x20000000)
PAGES_PER_REGION = 16
DATA = [(100 + i) * PAGE for i in range(8)]
PROTS = (PROT_R, PROT_R | PROT_W, PROT_R | PROT_X, 0)

vas = st.builds(lambda r, i: REGIONS[r] + i * PAGE, st.integers(0, len(REGIONS) - 1),
                st.integers(0, PAGES_PER_REGION - 1))


def make_machine(specs):
    class PmapPeer(RuleBasedStateMachine):
        steps = 0
        findings = 0

        def __init__(self) -> None:
            super().__init__()
            self.backends = []
            for spec in specs:
                pool = PhysPool(1024)
                pool.reserve_data(pa // PAGE for pa in DATA)
                self.backends.append(spec.factory(pool))
            self.model: dict[int, dict[int, tuple[int, int, bool]]] = {}
            self.next_pmap = 1

        # -- the minimal differential check --------------------------------------------
        def check(self, pmap: int, touched) -> None:
            PmapPeer.steps += 1
            expected = self.model.get(pmap, {})
            for b in self.backends:
                for va in touched:
                    t = b.walk(pmap, va)
                    want = expected.get(va)
                    got = None if t is None else (t.pa, t.prot, t.wired)
                    if got != want:
                        PmapPeer.findings += 1
                need = needed_pt_frames(b.geometry, expected, pmap in self.model)
                for tag in (Tag.PT, Tag.L1):
                    if b.pool.held(pmap, tag) != need.get(tag, 0):
                        PmapPeer.findings += 1

        def pmaps(self):
            return sorted(self.model)

        # -- rules --------------------------------------------------------------------
        @precondition(lambda self: len(self.model) < 4)
        @rule()
        def create(self) -> None:
            pmap = self.next_pmap
            self.next_pmap += 1
            for b in self.backends:
                b.pmap_create(pmap)
            self.model[pmap] = {}
            self.check(pmap, ())

        @precondition(lambda self: self.model)
        @rule(data=st.data(), va=vas, pa=st.sampled_from(DATA), prot=st.sampled_from(PROTS[:3]),
              wired=st.booleans())
        def enter(self, data, va, pa, prot, wired) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            for b in self.backends:
                b.pmap_enter(pmap, va, pa, prot, 0, wired, False)
            self.model[pmap][va] = (pa, prot, wired)
            self.check(pmap, (va,))

        @precondition(lambda self: self.model)
        @rule(data=st.data(), va=vas, pages=st.integers(1, 8))
        def remove(self, data, va, pages) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            eva = va + pages * PAGE
            for b in self.backends:
                b.pmap_remove(pmap, va, eva)
            touched = [v for v in self.model[pmap] if va <= v < eva]
            for v in touched:
                del self.model[pmap][v]
            self.check(pmap, touched)

        @precondition(lambda self: self.model)
        @rule(data=st.data(), va=vas, pages=st.integers(1, 8), prot=st.sampled_from(PROTS))
        def protect(self, data, va, pages, prot) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            eva = va + pages * PAGE
            for b in self.backends:
                b.pmap_protect(pmap, va, eva, prot)
            table = self.model[pmap]
            touched = [v for v in table if va <= v < eva]
            for v in touched:
                pa, old, wired = table[v]
                if not prot & PROT_R:
                    del table[v]
                elif not prot & PROT_W:
                    table[v] = (pa, old & prot, wired)
            self.check(pmap, touched)

        @precondition(lambda self: self.model)
        @rule(data=st.data(), va=vas)
        def extract(self, data, va) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            want = self.model[pmap].get(va)
            for b in self.backends:
                if b.pmap_extract(pmap, va) != (None if want is None else want[0]):
                    PmapPeer.findings += 1
            self.check(pmap, (va,))

        @precondition(lambda self: self.model)
        @rule(pa=st.sampled_from(DATA), prot=st.sampled_from((PROT_R, PROT_R | PROT_X)))
        def page_protect(self, pa, prot) -> None:
            # Lowering to read-only: every backend keeps the mappings (revoking all access
            # is where the contract leaves wired mappings open: left out of this minimal check).
            for b in self.backends:
                b.pmap_page_protect(pa, prot)
            for pmap, table in self.model.items():
                touched = []
                for va, (mpa, old, wired) in table.items():
                    if mpa == pa:
                        table[va] = (mpa, old & prot, wired)
                        touched.append(va)
                self.check(pmap, touched)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def collect(self, data) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            for b in self.backends:
                b.pmap_collect(pmap)
            table = self.model[pmap]
            # The contract lets collect forget non-wired mappings: drop what any backend
            # forgot, everywhere, so that the backends stay comparable.
            for va in list(table):
                if any(b.walk(pmap, va) is None for b in self.backends):
                    for b in self.backends:
                        b.pmap_remove(pmap, va, va + PAGE)
                    del table[va]
            self.check(pmap, list(table))

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def destroy(self, data) -> None:
            pmap = data.draw(st.sampled_from(self.pmaps()))
            for b in self.backends:
                b.pmap_remove(pmap, USER_MIN, USER_MAX)
                b.pmap_destroy(pmap)
            del self.model[pmap]
            self.check(pmap, ())

    return PmapPeer


def run_peer(specs, examples: int, steps: int) -> tuple[float, int, int]:
    """(steps per CPU second, steps, findings)."""
    machine = make_machine(specs)
    machine.steps = machine.findings = 0
    conf = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    t0 = time.process_time()
    run_state_machine_as_test(machine, settings=conf)
    elapsed = time.process_time() - t0
    return machine.steps / elapsed, machine.steps, machine.findings


def run_fuzz(streams: int, ops: int, seed: int) -> tuple[float, int]:
    """(ops per CPU second of a ``difftest fuzz --workers 1`` process, ops)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "difftest.cli", "fuzz", "--workers", "1", "--streams", str(streams),
                        "--ops-per-stream", str(ops), "--seed", str(seed), "--shrink-budget", "0",
                        "--no-progress", "--out", str(out)], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=tmp)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        report = json.loads((out / "report.json").read_text())
    return report["ops"] / cpu, report["ops"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="Hypothesis examples per repeat")
    ap.add_argument("--steps", type=int, default=50, help="stateful steps per example")
    ap.add_argument("--streams", type=int, default=6, help="difftest fuzz streams per repeat")
    ap.add_argument("--long-streams", type=int, default=60,
                    help="streams of the longer fuzz campaign per repeat (0: none)")
    ap.add_argument("--ops", type=int, default=2000, help="ops per fuzz stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every repeat's figures as JSON")
    args = ap.parse_args(argv)
    host = PluginHost()
    host.load()
    names = host.registry.default_backends()
    specs = [host.registry.backends[n] for n in names]
    campaigns = [n for n in (args.streams, args.long_streams) if n > 0]
    peer, findings, ceiling = [], 0, []
    fuzz: dict[int, list[float]] = {n: [] for n in campaigns}
    # The ceiling: the backends alone (bench_overhead's bare loop, nothing observed) on the
    # streams of the short campaign, in this process.
    streams = campaign_streams(host, args.seed, args.streams, args.ops)
    n_ops = sum(len(s.ops) for s in streams)
    for _ in range(args.repeats):
        rate, _, found = run_peer(specs, args.examples, args.steps)
        peer.append(rate)
        findings += found
        t0 = time.process_time()
        for stream in streams:
            run_bare(specs, stream)
        ceiling.append(n_ops / (time.process_time() - t0))
        for n in campaigns:
            fuzz[n].append(run_fuzz(n, args.ops, args.seed)[0])
    med = statistics.median
    print(f"backends: {', '.join(names)}; {args.repeats} repeats, CPU time, medians")
    print(f"hypothesis RuleBasedStateMachine peer: {med(peer):10,.0f} steps/s "
          f"({args.examples} examples x {args.steps} steps; {findings} differences counted)")
    for n in campaigns:
        print(f"difftest fuzz --workers 1:             {med(fuzz[n]):10,.0f} ops/s "
              f"({n} streams x {args.ops} ops, start-up included): {med(fuzz[n]) / med(peer):.2f}x the peer")
    print(f"the backends alone on those streams:   {med(ceiling):10,.0f} ops/s "
          f"(the ceiling): {med(ceiling) / med(peer):.2f}x the peer")
    if args.json:
        Path(args.json).write_text(json.dumps({"peer": peer, "fuzz": {str(n): v for n, v in fuzz.items()},
                                               "ceiling": ceiling}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
