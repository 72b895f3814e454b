"""Peak memory, wall time and report size of ``difftest replay --json`` on one big stream.

    python benchmarks/bench_bigstream.py --ops 1000000
    python benchmarks/bench_bigstream.py --ops 1000000 --compare-src OLD_CHECKOUT

Generates a ``random`` stream of ``--ops`` ops (seed ``--seed``) with this tree, then runs
``difftest replay --json`` on it under ``/usr/bin/time -v`` (peak RSS, wall clock, CPU) with this
tree and, given ``--compare-src``, with another source tree (for example ``git worktree add
OLD <commit>``) side by side in the same run, and prints one row per tree: peak RSS, wall
time, CPU time (user + system: less sensitive than wall time to other load on the machine),
bytes of JSON printed, divergence signatures, and the ratios against the other tree.
Each child runs in a scratch directory with its tree first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CONSOLE = "import sys; sys.argv[0] = 'difftest'; from difftest.cli import run; run()"
TIME = "/usr/bin/time"


def difftest(tree: Path, args: list[str], cwd: Path, stdout) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([TIME, "-v", sys.executable, "-c", CONSOLE, *args], cwd=cwd, env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True)
    return proc.returncode, proc.stderr


def measured(stderr: str) -> tuple[float, float, float]:
    """(peak RSS in MB, wall seconds, CPU seconds: user + system) from ``/usr/bin/time -v``."""
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024
    cpu = sum(float(re.search(rf"{what} time \(seconds\): ([\d.]+)", stderr).group(1)) for what in ("User", "System"))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", stderr).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return rss, seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare-src", type=Path, default=None, help="another source tree to run side by side")
    args = parser.parse_args()
    if not Path(TIME).exists():
        print(f"{TIME} is needed (GNU time: apt-get install time)", file=sys.stderr)
        return 2
    trees = [("this tree", HERE)] + ([("compared", args.compare_src.resolve())] if args.compare_src else [])
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        stream = scratch / "stream.json"
        code, err = difftest(HERE, ["streams", "generate", "--seed", str(args.seed), "--ops", str(args.ops),
                                    "-o", str(stream)], scratch, subprocess.DEVNULL)
        if code:
            print(err, file=sys.stderr)
            return 1
        print(f"stream: {args.ops:,} ops, {stream.stat().st_size / 1e6:.1f} MB of JSON")
        rows = []
        for name, tree in trees:
            out = scratch / f"report-{len(rows)}.json"
            with open(out, "w") as fh:
                code, err = difftest(tree, ["replay", "--json", str(stream)], scratch, fh)
            if code not in (0, 1):
                print(f"{name}: replay exited {code}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            rss, wall, cpu = measured(err)
            report = json.loads(out.read_text())
            rows.append((name, rss, wall, cpu, out.stat().st_size, len(report["divergences"])))
    print(f"{'tree':<10} {'peak RSS':>10} {'wall':>9} {'CPU':>9} {'--json':>14} {'signatures':>10}")
    for name, rss, wall, cpu, size, sigs in rows:
        print(f"{name:<10} {rss:>8.0f} MB {wall:>7.1f} s {cpu:>7.1f} s {size:>12,} B {sigs:>10}")
    if len(rows) == 2:
        (_, r0, w0, c0, s0, _), (_, r1, w1, c1, s1, _) = rows
        print(f"this tree / compared: peak RSS x{r0 / r1:.3f}, wall x{w0 / w1:.2f}, CPU x{c0 / c1:.2f}, "
              f"json x{s0 / s1:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
