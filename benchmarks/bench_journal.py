"""The journal's size per stream, and what ``--resume`` reads, for one or more source trees.

    python benchmarks/bench_journal.py [--tree DIR ...] [--streams 200] [--workers 2] [--seed 1]

Each tree (default: this one) runs the same ``difftest fuzz --streams N --seed S`` (the
CLI's defaults otherwise: the built-in backends, feedback on) from its own sources
(``PYTHONPATH=DIR``), so an older checkout of the project gives the "before" figure next
to this one's in the same run.  Per tree it prints the journal's bytes per stream over
all lines and over the second half of the stream lines (the steady state: the first
lines declare most features and signatures), gzip's size of the journal (what a closed
segment costs), the bytes ``--resume`` reads (``summary.json`` plus the journal past what
it covers, when the tree writes a summary), and whether the reports agree (timings aside).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; sys.argv[0] = 'difftest'; from difftest.cli import run; run()"


def run_tree(tree: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFTEST_")}
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.run([sys.executable, "-c", CLI, "fuzz", "--no-progress", "--out", str(out),
                           "--streams", str(args.streams), "--workers", str(args.workers), "--seed", str(args.seed)],
                          env=env, cwd=out.parent, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{tree}: difftest fuzz exited {proc.returncode}: {proc.stderr[-500:]}")
    journal = (out / "journal.jsonl").read_bytes()
    lines = journal.splitlines(keepends=True)
    streams = [line for line in lines if b'"k"' in line]
    steady = streams[len(streams) // 2:]
    summary = out / "summary.json"
    resume_reads = len(journal)
    if summary.exists():
        covers = json.loads(summary.read_text())["covers"]
        resume_reads = summary.stat().st_size + len(journal) - covers["journal_bytes"]
    report = json.loads((out / "report.json").read_text())
    report.pop("timing", None)
    return {"streams": len(streams), "bytes": len(journal), "per_stream": len(journal) / len(streams),
            "steady": sum(map(len, steady)) / len(steady), "gzip": len(gzip.compress(journal, 6)),
            "resume_reads": resume_reads, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, help="a source tree (repeatable; default: this one)")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, tree in enumerate(trees):
            results.append(run_tree(tree.resolve(), Path(tmp) / f"out{i}", args))
    print(f"difftest fuzz --streams {args.streams} --workers {args.workers} --seed {args.seed}")
    print(f"{'tree':40} {'streams':>7} {'journal B':>10} {'B/stream':>9} {'steady B/stream':>16} "
          f"{'gzip B/stream':>14} {'resume reads B':>15}")
    for tree, r in zip(trees, results):
        print(f"{str(tree)[-40:]:40} {r['streams']:7d} {r['bytes']:10,d} {r['per_stream']:9,.0f} {r['steady']:16,.0f} "
              f"{r['gzip'] / r['streams']:14,.0f} {r['resume_reads']:15,d}")
    if len(results) > 1:
        same = all(r["report"] == results[0]["report"] for r in results[1:])
        print(f"reports equal (timings aside): {same}")


if __name__ == "__main__":
    main()
