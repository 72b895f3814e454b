"""No false divergence from the streams that reach deep states: the ``pressure`` and
``pager`` generators, ``random`` with its pressure dimension, and feedback mutants of all
three, run on two backends that must agree (default ``arm32-refcount`` and ``alpha-ref``)
until at least ``--ops`` ops have run.

    python benchmarks/bench_reach.py [--ops 1000000] [--backends arm32-refcount,alpha-ref]

Prints ops, streams, ENOMEMs per backend, the signatures found (expected: none) and the
process time, and exits 1 if any divergence was found.  Deterministic: stream i of
generator g is seed i; every fourth stream is a mutant of the stream before it (spliced
with another) through ``difftest.feedback.mutate``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from difftest.feedback import mutate
from difftest.harness import Harness
from difftest.plugins import PluginHost

GENERATORS = ("pressure", "pager", "random")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--ops-per-stream", type=int, default=2000)
    ap.add_argument("--backends", default="arm32-refcount,alpha-ref")
    args = ap.parse_args(argv)
    host = PluginHost()
    host.load()
    harness = Harness.from_registry(host.registry, args.backends.split(","))
    gens = [host.registry.generators[g] for g in GENERATORS]
    ops = streams = 0
    enomem: Counter = Counter()
    stopped: Counter = Counter()
    signatures: Counter = Counter()
    started = time.process_time()
    previous = {}
    i = 0
    while ops < args.ops:
        gen = gens[i % len(gens)]
        seed = i // len(gens)
        stream = gen.generate(seed, args.ops_per_stream, 8192)
        if seed % 4 == 3 and gen.name in previous:
            stream = mutate(previous[gen.name], stream, random.Random(i), args.ops_per_stream)
        previous[gen.name] = stream
        result = harness.run(stream)
        ops += result.ops_run
        streams += 1
        for (backend, kind), n in result.allowed_counts.items():
            if kind == "enomem":
                enomem[backend] += n
        for backend, why in result.stopped.items():
            stopped[f"{backend}: {why.split(' at ')[0]}"] += 1
        for d in result.divergences:
            signatures[d.signature] += 1
        i += 1
    seconds = time.process_time() - started
    print(f"{ops:,} ops in {streams} streams ({', '.join(GENERATORS)}, every 4th a mutant) on "
          f"{args.backends}: {seconds:.1f} s process time")
    print("ENOMEM results: " + ", ".join(f"{b} {n:,}" for b, n in sorted(enomem.items())))
    print("backends stopped: " + (", ".join(f"{k} x{n}" for k, n in sorted(stopped.items())) or "none"))
    print("divergences: " + (", ".join(f"{s} x{n}" for s, n in sorted(signatures.items())) or "none"))
    return 1 if signatures else 0


if __name__ == "__main__":
    sys.exit(main())
