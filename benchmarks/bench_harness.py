"""Per-op cost of a differential run at 10 and at 10,000 live mappings, and the harness's
overhead over the same ops on the backends alone.

    python benchmarks/bench_harness.py [--ops 20000] [--repeats 7] [--backends a,b,c]

Method: a prefix maps N pages (N = 10 or 10,000) in pmap 1 and is run untimed; then the
same measured suffix (enter/access/protect/extract/remove on a separate 4 MiB region, so
the live count stays about N) is timed op by op through ``StreamRun.step``, with no
checkpoint inside it.  "alone" applies the same suffix to fresh backends directly.
Repeats alternate the configurations so that machine drift hits all of them alike; the
figures are medians, and the ratios are taken repeat by repeat.  A full audit at each size
is timed separately: audits cost O(live mappings) by design, and the harness spaces them
so that their amortised cost per op stays O(1).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from difftest.harness import Harness
from difftest.machine import USER_MIN
from difftest.ops import (
    PROT_R,
    PROT_W,
    Access,
    Create,
    Enter,
    Extract,
    Protect,
    Remove,
)
from difftest.plugins import PluginHost
from difftest.streams import make_stream

PAGE = 4096
SUFFIX_BASE = 0x40000000  # the measured ops live here, away from the prefix


def prefix_ops(n: int) -> list:
    ops = [Create()]
    for i in range(n):
        va = USER_MIN + 0x00400000 + i * PAGE  # 10,000 pages span ~40 MiB: 10 PT pages
        ops.append(Enter(1, va, (i % 4096 + 16) * PAGE, PROT_R | PROT_W, 0, False, False))
    return ops


def suffix_ops(count: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    ops = []
    live: list[int] = []
    while len(ops) < count:
        r = rng.random()
        if r < 0.35 or not live:
            va = SUFFIX_BASE + rng.randrange(512) * PAGE
            ops.append(Enter(1, va, (rng.randrange(256) + 5000) * PAGE, PROT_R | PROT_W,
                             rng.choice((0, PROT_R, PROT_W)), rng.random() < 0.1, False))
            live.append(va)
        elif r < 0.55:
            ops.append(Access(1, rng.choice(live), rng.choice("rw")))
        elif r < 0.65:
            va = rng.choice(live)
            ops.append(Protect(1, va, va + PAGE, PROT_R))
        elif r < 0.75:
            ops.append(Extract(1, rng.choice(live)))
        else:
            va = live.pop(rng.randrange(len(live)))
            ops.append(Remove(1, va, va + PAGE))
    return ops


def time_harness(harness: Harness, n: int, suffix: list) -> float:
    stream = make_stream(prefix_ops(n) + suffix)
    run = harness.start(stream)
    pre = n + 1
    for i, op in enumerate(stream.ops[:pre]):
        run.step(i, op)
    t0 = time.perf_counter()
    for i, op in enumerate(stream.ops[pre:], pre):
        run.step(i, op)
    elapsed = time.perf_counter() - t0
    assert not run.result.divergences or all(d.backend == "arm32-leaky" for d in run.result.divergences), \
        [d.signature for d in run.result.divergences][:3]
    return elapsed / len(suffix)


def time_audit(harness: Harness, n: int) -> float:
    stream = make_stream(prefix_ops(n))
    run = harness.start(stream)
    for i, op in enumerate(stream.ops):
        run.step(i, op)
    t0 = time.perf_counter()
    run.audit(len(stream.ops) - 1)
    return time.perf_counter() - t0


def time_alone(harness: Harness, n: int, suffix: list) -> float:
    """The same suffix on the backends directly: no observation, no judging."""
    from difftest.machine import PhysPool

    stream = make_stream(prefix_ops(n) + suffix)
    backends = []
    for spec in harness.specs:
        pool = PhysPool(stream.phys_pages)
        pool.reserve_data(stream.data_frames())
        b = spec.factory(pool)
        b.pmap_create(1)
        for op in stream.ops[1 : n + 1]:
            b.pmap_enter(1, op.va, op.pa, op.prot, op.access, op.wired, op.canfail)
        backends.append(b)
    t0 = time.perf_counter()
    for op in suffix:
        t = type(op)
        for b in backends:
            if t is Enter:
                b.pmap_enter(1, op.va, op.pa, op.prot, op.access, op.wired, op.canfail)
            elif t is Access:
                b.pmap_access(1, op.va, op.kind)
            elif t is Protect:
                b.pmap_protect(1, op.sva, op.eva, op.prot)
            elif t is Extract:
                b.pmap_extract(1, op.va)
            else:
                b.pmap_remove(1, op.sva, op.eva)
    return (time.perf_counter() - t0) / len(suffix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=20000, help="measured ops per repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", default="", help="comma-separated (default: the default set)")
    args = ap.parse_args(argv)
    host = PluginHost()
    host.load()
    names = [n for n in args.backends.split(",") if n] or None
    harness = Harness.from_registry(host.registry, names, checkpoint_every=10**9)
    suffix = suffix_ops(args.ops)
    small, large, alone, ratio_size, ratio_over = [], [], [], [], []
    for _ in range(args.repeats):
        s = time_harness(harness, 10, suffix)
        l = time_harness(harness, 10_000, suffix)
        a = time_alone(harness, 10, suffix)
        small.append(s), large.append(l), alone.append(a)
        ratio_size.append(l / s)
        ratio_over.append(s / a)
    audits = {n: statistics.median(time_audit(harness, n) for _ in range(3)) for n in (10, 10_000)}
    med = statistics.median
    print(f"backends: {', '.join(s.name for s in harness.specs)}; {args.ops} measured ops x {args.repeats} repeats")
    print(f"differential run, 10 live mappings:     {med(small) * 1e6:8.1f} us/op  ({1 / med(small):,.0f} ops/s)")
    print(f"differential run, 10,000 live mappings: {med(large) * 1e6:8.1f} us/op  ({1 / med(large):,.0f} ops/s)")
    print(f"backends alone (no harness), 10:        {med(alone) * 1e6:8.1f} us/op")
    print(f"ratio 10,000 / 10 (median of per-repeat ratios): {med(ratio_size):.3f}  "
          f"[min {min(ratio_size):.3f}, max {max(ratio_size):.3f}]")
    print(f"harness overhead, differential / alone:          {med(ratio_over):.2f}x  "
          f"[min {min(ratio_over):.2f}, max {max(ratio_over):.2f}]")
    print(f"full audit: {audits[10] * 1e3:.2f} ms at 10 mappings, {audits[10_000] * 1e3:.1f} ms at 10,000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
