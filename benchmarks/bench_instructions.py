"""The harness's overhead counted in machine instructions instead of CPU time: a figure
that does not move with the machine's load.

    python benchmarks/bench_instructions.py [--streams 3] [--no-pressure] [--tree OTHER_CHECKOUT]

Runs the first ``--streams`` campaign streams of ``bench_overhead.py`` (random generator,
seed 1, 2,000 ops each) three times under ``valgrind --tool=callgrind`` in a child
process: generating them only, then also applying them to the backends alone (the bare
loop), then through ``Harness.run`` as ``difftest fuzz`` builds it, then as a fuzz worker
runs them (``bench_overhead.py``'s ``fuzz`` mode: the calls counted for the coverage
features, the streams' statistics and features).  The differences are the instructions
of the bare loop, of the harness and of the worker; overhead = (mode - bare) / bare, as in
``bench_overhead.py``.  ``--tree`` measures another checkout too (its ``difftest``
imported through ``PYTHONPATH``; this file's benchmarks drive both), printed side by side.
Needs ``valgrind`` on the PATH; slow (about 50x), hence few streams.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import sys
sys.path.insert(0, {bench!r})
import bench_overhead as bo
from difftest.plugins import PluginHost
host = PluginHost()
host.load()
specs, default, _ = bo.build_harnesses(host)
streams = bo.campaign_streams(host, 1, {streams}, 2000, pressure={pressure})
if {mode!r} == "bare":
    for s in streams:
        bo.run_bare(specs, s)
elif {mode!r} == "default":
    for s in streams:
        default.run(s)
elif {mode!r} == "fuzz":
    worker = bo.fuzz_worker(default)
    for s in streams:
        worker(s)
"""


def instructions(tree: Path | None, mode: str, streams: int, pressure: bool) -> int:
    """Instructions callgrind counts for the child process running ``mode``."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    code = CHILD.format(bench=str(HERE), streams=streams, pressure=pressure, mode=mode)
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({mode}): {proc.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--no-pressure", action="store_true", help="the streams with the pressure dimension off")
    ap.add_argument("--tree", type=Path, action="append", default=[],
                    help="another checkout to measure too (repeatable)")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not on the PATH", file=sys.stderr)
        return 2
    trees: list[Path | None] = [*args.tree, None]
    print(f"{args.streams} campaign streams x 2000 ops{', memory pressure off' if args.no_pressure else ''}; "
          "instructions (callgrind), 1e9")
    print(f"{'tree':40} {'bare':>8} {'harness':>8} {'overhead':>9} {'fuzz':>8} {'overhead':>9}")
    for tree in trees:
        base = instructions(tree, "none", args.streams, not args.no_pressure)
        bare, harness, fuzz = (instructions(tree, mode, args.streams, not args.no_pressure) - base
                               for mode in ("bare", "default", "fuzz"))
        name = str(tree) if tree is not None else "(this environment's difftest)"
        print(f"{name:40} {bare / 1e9:8.3f} {harness / 1e9:8.3f} {(harness - bare) / bare:8.3f}x"
              f" {fuzz / 1e9:8.3f} {(fuzz - bare) / bare:8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
