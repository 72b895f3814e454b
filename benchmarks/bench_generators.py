"""Generation speed of the registered seeded generators (ops per second of process time).

    python benchmarks/bench_generators.py [--ops 100000] [--repeats 5] [--generators random,pager,pressure]

Each repeat generates one stream per generator, the generators taken in turn (interleaved,
so a drift of the machine's speed touches them alike); prints the median, min and max
ops/s of each.  Generation is a small part of a campaign's cost (the backends and the
harness take the rest): this is here to see a generator change that makes it matter.
"""

from __future__ import annotations

import argparse
import statistics
import time

from difftest.plugins import PluginHost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--generators", default="random,pager,pressure")
    ap.add_argument("--phys-pages", type=int, default=8192)
    args = ap.parse_args(argv)
    host = PluginHost()
    host.load()
    names = args.generators.split(",")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            gen = host.registry.generators[name]
            started = time.process_time()
            stream = gen.generate(1000 + repeat, args.ops, args.phys_pages)
            rates[name].append(len(stream.ops) / (time.process_time() - started))
    print(f"{args.ops:,} ops a stream, {args.repeats} repeats, process time")
    for name in names:
        r = rates[name]
        print(f"{name:10} median {statistics.median(r):>10,.0f} ops/s  (min {min(r):,.0f}, max {max(r):,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
