"""Where the CPU time of a whole ``difftest fuzz --workers 1`` process goes, outside and inside
the harness: the campaign's process and its worker, each cut into parts.

    python benchmarks/bench_fuzz_parts.py [--streams 6] [--ops 2000] [--repeats 3] [--tree DIR ...]

Runs ``difftest fuzz --workers 1 --streams N --ops-per-stream OPS --seed 1 --shrink-budget 0``
(the command ``bench_peer.py`` times) with some of difftest's functions wrapped in
``time.process_time`` counters: in the campaign's process by a driver script, in the worker
by a ``sitecustomize`` module on its ``PYTHONPATH`` (both written to a scratch directory;
nothing in the tree is changed).  A part is a function's inclusive time; ``Harness.run`` and
stream generation are summed over the worker's streams and its plot step.  With ``--tree``
(repeatable) each tree is run in turn with ``PYTHONPATH`` set to it, repeats alternated;
figures are medians.  A function a tree does not have counts 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TIMERS = '''
import functools, importlib, json, time
TOTALS = {}
def wrap(module, attr):
    try:
        mod = importlib.import_module(module)
        owner, name = mod, attr
        if "." in attr:
            cls, name = attr.split(".")
            owner = getattr(mod, cls)
        fn = getattr(owner, name)
    except (ImportError, AttributeError):
        return  # not in this tree
    key = module.rsplit(".", 1)[-1] + "." + attr
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[key] = TOTALS.get(key, 0.0) + time.process_time() - t
    setattr(owner, name, timed)
def dump(path, **extra):
    with open(path, "w") as f:
        json.dump({"total": time.process_time(), **TOTALS, **extra}, f)
'''

# In the worker: wrap once difftest.units is imported whole (its tasks are unpickled from it).
SITECUSTOMIZE = '''
import builtins, os, sys, time
_out = os.environ.get("BENCH_FUZZ_PARTS_OUT")
if _out and any("multiprocessing-fork" in a for a in sys.argv):
    _import = builtins.__import__
    _done = []
    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        # (imports nest: the outer hooks still running must not wrap again)
        if not _done and hasattr(sys.modules.get("difftest.units"), "_worker_death_hit"):
            _done.append(True)
            builtins.__import__ = _import
            import atexit, bench_timers as t
            started = time.process_time()
            for m, a in WORKER:
                t.wrap(m, a)
            atexit.register(lambda: t.dump(os.path.join(_out, "worker-%d.json" % os.getpid()), startup=started))
        return module
    builtins.__import__ = _hook
'''

WORKER = [("difftest.units", "run_unit"), ("difftest.units", "make_stream"), ("difftest.units", "_worker_env"),
          ("difftest.units", "stream_stats"), ("difftest.harness", "Harness.run"), ("difftest.plotdata", "record"),
          ("difftest.features", "FeatureRecorder.features"), ("difftest.units", "run_features"),
          ("difftest.coverage", "stream_stats")]

DRIVER = '''
import importlib.util, os, resource, sys, time
sys.path.insert(0, os.path.dirname(__file__))
t0 = time.process_time()
import difftest.cli as cli
import difftest.cli_fuzz  # the fuzz command's module, whenever the tree imports it
imports = time.process_time() - t0
import bench_timers as t
for m, a in [("difftest.plugins", "PluginHost.load"), ("difftest.campaign", "Campaign._finish_without_shrink")]:
    t.wrap(m, a)
if __name__ == "__main__":
    # the worker imports what `python -m difftest.cli` makes it import (spawn's main module)
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("difftest.cli")
    rc = cli.main(sys.argv[1:])
    t.dump(os.path.join(os.environ["BENCH_FUZZ_PARTS_OUT"], "parent.json"), imports=imports, rc=rc)
'''

PARTS = [
    ("CPU, the campaign's process + its worker", lambda p, w: p["total"] + w["total"]),
    ("the campaign's process", lambda p, w: p["total"]),
    ("  start-up: imports, plugins", lambda p, w: p["imports"] + p.get("plugins.PluginHost.load", 0)),
    ("  whole-stream reproducers (generated, written)",
     lambda p, w: p.get("campaign.Campaign._finish_without_shrink", 0)),
    ("the worker", lambda p, w: w["total"]),
    ("  start-up: interpreter, imports, plugins, harness",
     lambda p, w: w["startup"] + w.get("units._worker_env", 0)),
    ("  the streams (run_unit)", lambda p, w: w.get("units.run_unit", 0) - w.get("units._worker_env", 0)),
    ("  the plot step (plotdata.record)", lambda p, w: w.get("plotdata.record", 0)),
    ("  Harness.run (the streams' and the plot step's)", lambda p, w: w.get("harness.Harness.run", 0)),
    ("  generating streams", lambda p, w: w.get("units.make_stream", 0)),
    ("  coverage features, stream statistics", lambda p, w: w.get("features.FeatureRecorder.features", 0)
     + w.get("units.run_features", 0) + w.get("coverage.stream_stats", 0) + w.get("units.stream_stats", 0)),
]


def run_once(tree: str | None, streams: int, ops: int, scratch: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=scratch))
    env = dict(os.environ, BENCH_FUZZ_PARTS_OUT=str(out))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, str(scratch), env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, str(scratch / "bench_driver.py"), "fuzz", "--workers", "1", "--streams",
                    str(streams), "--ops-per-stream", str(ops), "--seed", "1", "--shrink-budget", "0",
                    "--no-progress", "--out", str(out / "run")], env=env, cwd=out, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = json.loads((out / "parent.json").read_text())
    workers = [json.loads(p.read_text()) for p in out.glob("worker-*.json")]
    if len(workers) != 1:
        raise SystemExit(f"expected one worker's counters, found {len(workers)}")
    return {name: part(parent, workers[0]) for name, part in PARTS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--ops", type=int, default=2000, help="ops per stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tree", action="append", default=None,
                    help="a checkout to put first on PYTHONPATH (repeatable; default: the difftest installed)")
    args = ap.parse_args(argv)
    trees = args.tree or [None]
    runs: dict[str | None, list[dict[str, float]]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "bench_timers.py").write_text(TIMERS)
        (scratch / "sitecustomize.py").write_text(f"WORKER = {WORKER!r}\n" + SITECUSTOMIZE)
        (scratch / "bench_driver.py").write_text(DRIVER)
        for _ in range(args.repeats):
            for tree in trees:
                runs[tree].append(run_once(tree, args.streams, args.ops, scratch))
    med = statistics.median
    names = [t or "installed" for t in trees]
    print(f"difftest fuzz --workers 1 --streams {args.streams} --ops-per-stream {args.ops} --shrink-budget 0: "
          f"CPU seconds, medians of {args.repeats}")
    print(f"{'':52}" + "".join(f"{n[-24:]:>26}" for n in names))
    for name, _ in PARTS:
        print(f"{name:52}" + "".join(f"{med(r[name] for r in runs[t]):26.2f}" for t in trees))
    ops = args.streams * args.ops
    print(f"{'ops per CPU second':52}"
          + "".join(f"{ops / med(r[PARTS[0][0]] for r in runs[t]):26,.0f}" for t in trees))
    return 0


if __name__ == "__main__":
    sys.exit(main())
