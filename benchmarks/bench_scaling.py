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

ops/s is the campaign's ops over its wall time; efficiency at w workers is
ops/s(w) / (w * ops/s(1)) for the same executor.  CPU s is the CPU time of the campaign and
its workers (``resource.getrusage``: locally this process and its ended children, the
workers' start-up included; with Dask this process, which runs the scheduler too, and each
worker's own, asked before and after), and CPU ratio is CPU s(1) / CPU s(w):
near 1 when w workers do no more work than one, so that a wall-clock efficiency well
below 1 then says the machine had no w free cores (other jobs: the load average is
printed), not that the campaign cannot use them.  Every run's report (timings aside) must
equal the first one's, whatever the executor and w: the benchmark says so.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from difftest.campaign import Campaign, CampaignConfig


def config(args: argparse.Namespace) -> CampaignConfig:
    return CampaignConfig(backends=("alpha-ref", "arm32-leaky", "arm32-refcount"), reference="alpha-ref",
                          seed=args.seed, ops_per_stream=args.ops_per_stream, streams=args.streams,
                          shrink_budget=0, feedback=args.feedback)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_local(args: argparse.Namespace, workers: int, out: Path) -> tuple[float, float, dict]:
    def cpu() -> float:  # the campaign's process and its workers (children, counted once ended)
        return cpu_seconds() + cpu_seconds(resource.RUSAGE_CHILDREN)

    started, before = time.perf_counter(), cpu()
    report = Campaign(config(args), out, workers=workers).run()
    return time.perf_counter() - started, cpu() - before, report


def run_dask(args: argparse.Namespace, workers: int, out: Path) -> tuple[float, float, dict]:
    import distributed

    from difftest.cluster import DaskCluster

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)

        def cpu() -> float:  # this process (the client and the in-process scheduler) and every worker
            return cpu_seconds() + sum(client.run(cpu_seconds).values())

        started, before = time.perf_counter(), cpu()
        report = Campaign(config(args), out, workers=workers, executor_factory=DaskCluster(client)).run()
        wall = time.perf_counter() - started
        return wall, cpu() - before, report


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
    print(f"{'executor':8} {'workers':>7} {'wall s':>8} {'ops/s':>9} {'efficiency':>10} {'CPU s':>7} {'CPU ratio':>9}")
    for name in runners:
        base = ops / statistics.median(walls[name, sizes[0]]) / sizes[0]
        base_cpu = statistics.median(cpus[name, sizes[0]])
        for w in sizes:
            wall = statistics.median(walls[name, w])
            rate = ops / wall
            cpu = statistics.median(cpus[name, w])
            print(f"{name:8} {w:7d} {wall:8.2f} {rate:9,.0f} {rate / (w * base):10.2f} {cpu:7.2f} {base_cpu / cpu:9.2f}")
    print(f"every report equal (timings aside): {equal}")
    print(f"load average (1 min) before and after: {load[0]:.2f}, {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
