"""How a campaign scales with workers: local worker processes and a Dask ``LocalCluster``.

    python benchmarks/bench_scaling.py [--workers 1,2] [--streams 24] [--ops-per-stream 2000]
                                       [--repeats 3] [--seed 1] [--no-feedback]

The same campaign (the built-in backends, feedback on as in ``difftest fuzz``, ``--streams
N``, ``--shrink-budget 0`` so that only streams are timed) runs with each number of
workers w, through the default executor (w local worker processes, started by the run,
so their start-up is in the figure) and through ``--executor dask`` on a
``distributed.LocalCluster`` of w single-threaded worker processes (started before the
run, as an existing cluster is).  Repeats are interleaved (for each repeat: every w,
local then dask); figures are medians of wall-clock time (``time.perf_counter``).

ops/s is the campaign's ops over its wall time (client CPU: the campaign process's own
``time.process_time``, what committing costs next to the workers); efficiency at w workers is
ops/s(w) / (w * ops/s(1)) for the same executor.  Every run's report (timings aside) must
equal the first one's, whatever the executor and w: the benchmark says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from difftest.campaign import Campaign, CampaignConfig


def config(args: argparse.Namespace) -> CampaignConfig:
    return CampaignConfig(backends=("alpha-ref", "arm32-leaky", "arm32-refcount"), reference="alpha-ref",
                          seed=args.seed, ops_per_stream=args.ops_per_stream, streams=args.streams,
                          shrink_budget=0, feedback=args.feedback)


def run_local(args: argparse.Namespace, workers: int, out: Path) -> tuple[float, float, dict]:
    started, cpu = time.perf_counter(), time.process_time()
    report = Campaign(config(args), out, workers=workers).run()
    return time.perf_counter() - started, time.process_time() - cpu, report


def run_dask(args: argparse.Namespace, workers: int, out: Path) -> tuple[float, float, dict]:
    import distributed

    from difftest.cluster import DaskCluster

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)
        started, cpu = time.perf_counter(), time.process_time()
        report = Campaign(config(args), out, workers=workers, executor_factory=DaskCluster(client)).run()
        # the client's CPU includes the in-process scheduler's (a LocalCluster's runs here)
        return time.perf_counter() - started, time.process_time() - cpu, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (the first is the base)")
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--ops-per-stream", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-feedback", dest="feedback", action="store_false",
                        help="without coverage feedback (no stream waits for the commits of earlier ones)")
    args = parser.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]
    runners = {"local": run_local, "dask": run_dask}
    walls: dict[tuple[str, int], list[float]] = {(name, w): [] for name in runners for w in sizes}
    cpus: dict[tuple[str, int], list[float]] = {(name, w): [] for name in runners for w in sizes}
    load = os.getloadavg()  # other jobs on the machine take cores from the workers
    first = None
    equal = True
    ops = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for w in sizes:
                for name, runner in runners.items():
                    wall, cpu, report = runner(args, w, Path(tmp) / f"{name}-{w}-{r}")
                    walls[name, w].append(wall)
                    cpus[name, w].append(cpu)
                    ops = report["ops"]
                    report.pop("timing")
                    first = first or report
                    equal = equal and report == first
    print(f"{args.streams} streams x {args.ops_per_stream} ops ({ops:,} ops), seed {args.seed}, "
          f"feedback {'on' if args.feedback else 'off'}, {os.cpu_count()} cores, "
          f"{args.repeats} interleaved repeats, medians of wall time")
    print(f"{'executor':8} {'workers':>7} {'wall s':>8} {'ops/s':>9} {'efficiency':>10} {'client CPU s':>12}")
    for name in runners:
        base = ops / statistics.median(walls[name, sizes[0]]) / sizes[0]
        for w in sizes:
            wall = statistics.median(walls[name, w])
            rate = ops / wall
            print(f"{name:8} {w:7d} {wall:8.2f} {rate:9,.0f} {rate / (w * base):10.2f} "
                  f"{statistics.median(cpus[name, w]):12.2f}")
    print(f"every report equal (timings aside): {equal}")
    print(f"load average (1 min) before and after: {load[0]:.2f}, {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
