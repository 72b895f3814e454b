"""What a ``difftest fuzz`` worker spends on a stream outside the harness: generating it and
taking its statistics (``difftest.coverage.stream_stats``, for its coverage features).

    python benchmarks/bench_stream_costs.py [--streams 10] [--ops 2000] [--repeats 3] [--seed 1]
                                            [--generators random,pager] [--tree DIR ...]

Per generator: the first ``--streams`` streams of ``difftest fuzz --seed S --generator G``
(seeds as the campaign derives them, ``--ops`` each, 8,192 frames), generated as a worker
does, then ``stream_stats`` of each.  Figures are CPU time (``time.process_time``) per op.

Each repeat runs in a fresh interpreter (so one tree's imports never meet another's), with
``PYTHONPATH`` set to a ``--tree`` (repeatable: a checkout to compare; default: the difftest
installed); repeats alternate between the trees, so that a drift of the machine's speed
touches them alike.  Prints medians, and for two or more trees the ratio of the first
tree's median to each other's.  A repeat also checks that every tree made the same streams
and statistics (a digest of the stream files and the statistics' JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ONE_REPEAT = r'''
import hashlib, json, sys, time
from difftest import streams
from difftest.coverage import stream_stats
from difftest.plugins import PluginHost
from difftest.units import unit_seed

seed, n, ops = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
host = PluginHost()
host.load()
out = {}
for name in sys.argv[4].split(","):
    gen = host.registry.generators[name]
    seeds = [unit_seed(seed, k) for k in range(n)]
    t = time.process_time()
    made = [gen.generate(s, ops, 8192) for s in seeds]
    generate = time.process_time() - t
    t = time.process_time()
    stats = [stream_stats(s) for s in made]
    stats_time = time.process_time() - t
    n_ops = sum(len(s.ops) for s in made)
    digest = hashlib.sha256()
    for s, st in zip(made, stats):
        digest.update(streams.dumps(s).encode())
        digest.update(json.dumps(st).encode())
    out[name] = {"generate": generate / n_ops * 1e6, "stream_stats": stats_time / n_ops * 1e6,
                 "digest": digest.hexdigest()}
import difftest
out["difftest"] = difftest.__file__
print(json.dumps(out))
'''


def one_repeat(tree: str | None, args: argparse.Namespace, scratch: str) -> dict[str, dict[str, float | str]]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(tree), env.get("PYTHONPATH")) if p)
    # run from an empty directory: the current one would come first on sys.path
    done = subprocess.run([sys.executable, "-c", ONE_REPEAT, str(args.seed), str(args.streams), str(args.ops),
                           args.generators], env=env, cwd=scratch, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--ops", type=int, default=2000, help="ops per stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generators", default="random,pager")
    ap.add_argument("--tree", action="append", default=None,
                    help="a checkout to put first on PYTHONPATH (repeatable; default: the difftest installed)")
    args = ap.parse_args(argv)
    trees = args.tree or [None]
    runs: dict[str | None, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for tree in trees:
                runs[tree].append(one_repeat(tree, args, scratch))
    names = args.generators.split(",")
    for tree in trees:
        print(f"{tree or 'installed'}: difftest from {runs[tree][0]['difftest']}")
    mismatch = [(g, t) for g in names for t in trees
                if {r[g]["digest"] for r in runs[t]} != {runs[trees[0]][0][g]["digest"]}]
    med = statistics.median
    labels = [t or "installed" for t in trees]
    print(f"{args.streams} streams x {args.ops} ops, seed {args.seed}: CPU us/op, medians of {args.repeats}")
    print(f"{'':28}" + "".join(f"{lab[-22:]:>24}" for lab in labels)
          + ("".join(f"{'ratio 1st/' + str(i + 1):>14}" for i in range(1, len(trees)))))
    for g in names:
        for part in ("generate", "stream_stats"):
            meds = [med(r[g][part] for r in runs[t]) for t in trees]
            print(f"{g + ' ' + part:28}" + "".join(f"{m:24.2f}" for m in meds)
                  + "".join(f"{meds[0] / m:14.2f}" for m in meds[1:]))
    if mismatch:
        print("DIFFERENT streams or statistics:", ", ".join(f"{g} in {t or 'installed'}" for g, t in mismatch))
        return 1
    print("same streams and statistics in every tree and repeat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
