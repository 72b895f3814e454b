"""A campaign's units of work: its configuration, what a worker does with one task, and the
pools that run the tasks.

* ``CampaignConfig``: what defines a campaign's results; ``unit_seed`` derives stream k's seed
  from the campaign seed and k alone.
* Worker side, pure functions of their task (each task carries the plugins and backends it
  needs, so workers need no initializer): ``run_unit`` runs stream k through the harness,
  ``shrink_unit`` minimises a signature's first stream, ``replay_corpus_entry`` re-runs a
  corpus reproducer.
* Pools: ``local_process_pool`` (workers that exit with their parent), the ``Watchdog`` that
  kills a worker past its task's deadline, ``run_alone`` for a task on a fresh worker.

``difftest.campaign`` (the parent side: committing, the journal, the report) and
``difftest.plotdata`` build on this module; it imports neither.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from difftest import interrupts, streams
from difftest.bugs import head_of
from difftest.coverage import stream_stats
from difftest.divergence import Divergence
from difftest.errors import BadInput
from difftest.features import run_features
from difftest.feedback import Recipe, build_stream
from difftest.ops import describe
from difftest.streams import Stream

EXIT_ORPHANED = 70  # a worker whose campaign process died (never seen by the user)
ExecutorFactory = Callable[[int], cf.Executor]


class WorkerLost(cf.BrokenExecutor):
    """A task's worker died (more often than the cluster retries it) or hung and was
    ended: raised by a cluster's futures, for that task alone."""


def breaks_whole_pool(executor: cf.Executor) -> bool:
    """A dead worker breaks every task of this executor (a local process pool), not only
    its own (a cluster's executor says ``breaks_whole_pool = False``)."""
    return getattr(executor, "breaks_whole_pool", True)


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignConfig:
    """What defines a campaign's results (timing-only settings are kept apart)."""

    backends: tuple[str, ...]
    reference: str
    seed: int
    generator: str = "random"
    ops_per_stream: int = 2000
    phys_pages: int = 8192
    streams: int | None = None  # None: run until the time budget ends
    shard_index: int = 0
    shard_count: int = 1
    stream_timeout: float = 60.0
    shrink_budget: float = 10.0
    checkpoint_every: int = 1000
    plugins: tuple[str, ...] = ()
    invariants: str = "auto"  # or "per-op", "checkpoint" (Harness: fast path, precise path, neither)
    # The generator's own options (GeneratorSpec.options), as (keyword, value) pairs.
    generator_options: tuple[tuple[str, str], ...] = ()
    feedback: bool = False  # coverage feedback: mutants of a feedback pool (difftest/feedback.py)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["backends"] = list(self.backends)
        doc["plugins"] = list(self.plugins)
        doc["generator_options"] = dict(self.generator_options)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "CampaignConfig":
        doc = dict(doc)
        doc["backends"] = tuple(doc["backends"])
        doc["plugins"] = tuple(doc.get("plugins", ()))
        doc["generator_options"] = tuple(sorted(dict(doc.get("generator_options", {})).items()))
        return cls(**doc)

    def generate(self, gen: Any, seed: int) -> Stream:
        """A stream of this campaign's generator, with its options, from ``seed``."""
        return gen.generate(seed, self.ops_per_stream, self.phys_pages, **dict(self.generator_options))

    def units(self) -> Iterator[int]:
        """Stream numbers of this shard, in order (endless when ``streams`` is None)."""
        k = self.shard_index
        while self.streams is None or k < self.streams:
            yield k
            k += self.shard_count


def unit_seed(seed: int, k: int) -> int:
    """Stream k's seed: a hash of (campaign seed, k), the same on every machine."""
    digest = hashlib.sha256(f"difftest:{seed}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``8h``, ``1h30m``, ``90`` (seconds) -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BadInput(f"--budget {text!r} is not a duration such as 30s, 5m, 8h or 1h30m")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``i/N`` (0-based), or the schedulers' variables: JOB_COMPLETION_INDEX (with
    DIFFTEST_SHARD_TOTAL), CI_NODE_INDEX/CI_NODE_TOTAL (1-based), SLURM_ARRAY_TASK_ID
    (with SLURM_ARRAY_TASK_COUNT and SLURM_ARRAY_TASK_MIN)."""
    env = os.environ if env is None else env
    try:
        if text:
            i, n = (int(x) for x in text.split("/"))
        elif "CI_NODE_INDEX" in env and "CI_NODE_TOTAL" in env:
            i, n = int(env["CI_NODE_INDEX"]) - 1, int(env["CI_NODE_TOTAL"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            n = int(env["SLURM_ARRAY_TASK_COUNT"])
        elif "JOB_COMPLETION_INDEX" in env and "DIFFTEST_SHARD_TOTAL" in env:
            i, n = int(env["JOB_COMPLETION_INDEX"]), int(env["DIFFTEST_SHARD_TOTAL"])
        else:
            return 0, 1
    except ValueError:
        raise BadInput(f"shard {text!r} is not of the form i/N (for example 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise BadInput(f"shard {i}/{n} is out of range: need 0 <= i < N")
    return i, n


# -- work done in the workers --------------------------------------------------------------------


@dataclass(frozen=True)
class UnitTask:
    config: CampaignConfig
    k: int
    backends: tuple[str, ...] | None = None  # a subset, when finding which backend kills a worker
    recipe: Recipe | None = None  # with feedback: how stream k is made
    stats: bool = False  # also take the stream's statistics (difftest.coverage.stream_stats)
    trace: bool = False  # run it with the harness's trace on, and return the run (for difftest.plotdata)


@dataclass
class UnitResult:
    k: int
    seed: int
    ops: int
    elapsed: float
    # signature -> (events in this stream, the first divergence as JSON)
    hits: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # difftest.features
    # backend -> the op at which it ran out of memory in this stream
    out_of_memory: dict[str, int] = field(default_factory=dict)
    backends: tuple[str, ...] | None = None  # the backends run, when not all of the campaign's
    stats: dict[str, Any] | None = None  # stream_stats of the stream, when the task asked
    traced: Any = None  # the traced run (a RunResult), when the task asked
    # The stream killed its worker: {"backends": [...], "killed_by_watchdog": [...]} (the
    # campaign's isolation finds the culprits; its report's worker_deaths entry).
    death: dict[str, Any] | None = None


@dataclass(frozen=True)
class ShrinkTask:
    config: CampaignConfig
    signature: str
    k: int
    backend: str = ""  # the signature's backend: its first divergence in the result is the head
    recipe: Recipe | None = None
    backends: tuple[str, ...] | None = None  # the lanes the signature needs (None: all)


@dataclass
class ShrinkOutcome:
    signature: str
    stream_json: dict[str, Any]
    ops: int
    original_ops: int
    elapsed: float
    error: str | None = None
    head: dict[str, Any] | None = None  # first divergence of the backend in the minimised stream


@dataclass(frozen=True)
class CorpusTask:
    config: CampaignConfig
    stream_json: dict[str, Any]
    backend: str


_WORKER_CACHE: dict[Any, Any] = {}


def _worker_host(config: CampaignConfig) -> Any:
    """The plugin host of a config's plugins, loaded once per process (a worker's first
    task also sets up its signals and stdout, before any plugin code runs)."""
    from difftest.plugins import PluginHost

    host = _WORKER_CACHE.get(("host", config.plugins))
    if host is None:
        interrupts.install()
        _stdout_to_stderr()
        host = PluginHost()
        host.load(config.plugins)
        _WORKER_CACHE[("host", config.plugins)] = host
    return host


def _generator(config: CampaignConfig) -> Any:
    """The config's stream generator (a ``GeneratorSpec``)."""
    gen = _worker_host(config).registry.generators.get(config.generator)
    if gen is None:
        raise BadInput(f"unknown generator {config.generator!r}")
    return gen


def _worker_env(config: CampaignConfig, backends: tuple[str, ...] | None = None, trace: bool = False):
    """The harness and generator for a config, built once per worker process."""
    from difftest.harness import Harness

    key = (config.plugins, backends or config.backends, config.reference, config.checkpoint_every,
           config.invariants, trace)
    env = _WORKER_CACHE.get(key)
    if env is None:
        host = _worker_host(config)
        names = backends or config.backends
        reference = config.reference if config.reference in names else names[0]
        harness = Harness.from_registry(host.registry, names, reference,
                                        checkpoint_every=config.checkpoint_every,
                                        invariants_per_op=config.invariants == "per-op",
                                        fast=config.invariants == "auto", trace=trace, record_calls=True)
        env = (harness, _generator(config))
        _WORKER_CACHE[key] = env
    return env


def _stdout_to_stderr() -> None:
    """In a worker process, what plugins print goes to stderr: the parent's stdout may be
    a JSON document (``fuzz --json``) that a stray line would break."""
    if multiprocessing.parent_process() is None:
        return  # not a worker process (an in-process executor): the parent's stdout stays
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def worker_registry(config: CampaignConfig) -> Any:
    """In a worker: the plugin registry of a config (its host loaded once per process)."""
    return _worker_host(config).registry


def make_stream(config: CampaignConfig, k: int, recipe: Recipe | None = None) -> Stream:
    """Stream k: the generator's, or with feedback the mutant its recipe says."""
    gen = _generator(config)

    def fresh(j: int) -> Stream:
        return config.generate(gen, unit_seed(config.seed, j))

    if recipe is None or recipe.parent is None:
        return fresh(k)
    return build_stream(recipe, fresh, config.ops_per_stream, config.seed,
                        key=(config.seed, config.generator, config.generator_options, config.ops_per_stream,
                             config.phys_pages))


def run_unit(task: UnitTask) -> UnitResult:
    """Generate stream k and run it: executed in a worker process."""
    harness, gen = _worker_env(task.config, task.backends, task.trace)
    config = task.config
    seed = unit_seed(config.seed, task.k)
    stream = make_stream(config, task.k, task.recipe)
    result = harness.run(stream, time_limit=config.stream_timeout)
    stats = stream_stats(stream)  # for its features, and maybe the plots' coverage
    out = UnitResult(k=task.k, seed=seed, ops=result.ops_run, elapsed=result.elapsed, stopped=dict(result.stopped),
                     out_of_memory=out_of_memory_ops(result), backends=task.backends,
                     features=sorted(run_features(result.calls, stream, stats)))
    if task.trace and type(stream) is Stream and type(stream.ops) is tuple:
        # The plot step then need not run it again (a plain stream in memory: it travels
        # back with the result; a file's lazily read ops, or a plugin's own kind, do not).
        out.traced = result
    if task.stats:  # for the plots' coverage, which then need not generate the stream again
        out.stats = stats
    findings = [(d, None) for d in result.divergences] + survival_findings(result, out.out_of_memory)
    for d, explained_by in findings:
        if d.signature in out.hits:
            n, first = out.hits[d.signature]
            out.hits[d.signature] = (n + 1, first)
        else:
            first = d.to_json()
            if explained_by is not None:
                first["explained_by"] = explained_by
            out.hits[d.signature] = (1, first)
    return out


def out_of_memory_ops(result: Any) -> dict[str, int]:
    """backend -> the op at which it ran out of memory (the harness stops it there): an
    allowed panic (the pool really lacked the frames) or an ``oom-with-free-frames``."""
    ops = {a.backend: a.op_index for a in result.allowed if a.kind == "out-of-memory"}
    for d in result.divergences:
        if d.cls == "oom-with-free-frames":
            ops.setdefault(d.backend, d.op_index)
    return ops


def survival_findings(result: Any, out_of_memory: dict[str, int]) -> list[tuple[Divergence, str | None]]:
    """A backend that runs out of memory where the reference runs the whole stream is a
    finding: ``resource:B:OP:memory:out-of-memory``, explained by B's first earlier
    divergence (a ``resource`` one first: for PR 5666, the leak), whose bug it joins."""
    ref = result.reference
    if ref in result.stopped:
        return []  # the reference did not survive: nothing to compare with
    found = []
    for backend, index in sorted(out_of_memory.items()):
        if backend == ref:
            continue
        earlier = [d for d in result.divergences if d.backend == backend and d.op_index <= index
                   and d.cls != "oom-with-free-frames"]
        cause = next((d for d in earlier if d.kind == "resource"), earlier[0] if earlier else None)
        op = result.stream.ops[index] if 0 <= index < len(result.stream.ops) else None
        what = describe(op) if op is not None else "audit"
        d = Divergence(
            kind="resource", backend=backend, op_index=index, op=what,
            op_kind=op.name if op is not None else "audit", field="memory", cls="out-of-memory",
            message=f"{backend} ran out of memory at op {index} ({what}); the reference {ref} ran all "
                    f"{len(result.stream.ops)} ops of the stream",
            attribution=(f"explained by {cause.signature} (op {cause.op_index}: {cause.message})" if cause
                         else f"no earlier divergence of {backend} explains it"))
        found.append((d, cause.signature if cause else None))
    return found


def shrink_unit(task: ShrinkTask) -> ShrinkOutcome:
    """Regenerate stream k and minimise it for one signature: executed in a worker."""
    started = time.perf_counter()
    stream = make_stream(task.config, task.k, task.recipe)
    harness, _ = _worker_env(task.config, task.backends)
    if harness.fast:
        harness = harness.precise()  # the same findings; minimised on the precise path
    try:
        from difftest.shrink import shrink
    except ImportError as exc:  # the minimiser is optional for a campaign to run
        return ShrinkOutcome(task.signature, streams.stream_to_json(stream), len(stream), len(stream),
                             time.perf_counter() - started, f"no minimiser: {exc}")
    head = None
    try:
        # Every run is bounded, as the campaign's are: a hanging lane cannot hang the shrink.
        # A budget of work (runs), not of seconds: equal seeds give equal reproducers on a
        # loaded machine too.  The time budget is only a ceiling far above it.
        ceiling, max_runs = SHRINK_TIME_CEILING * task.config.shrink_budget, shrink_runs(task.config)
        outcome = shrink(stream, harness, task.signature, time_budget=ceiling,
                         time_limit=task.config.stream_timeout, max_runs=max_runs)
        small = outcome.stream
        error = None
        if not outcome.complete and outcome.runs < max_runs:
            # Stopped by the clock, not by its budget of runs: say so, since the same seed on
            # a less loaded machine may give a smaller reproducer.
            error = (f"stopped at its time ceiling ({ceiling:g} s) after {outcome.runs} of {max_runs} runs "
                     f"(a loaded machine): the same seed may shrink further elsewhere")
        if task.backend:
            head = head_of(harness.run(small, time_limit=task.config.stream_timeout).divergences, task.backend)
        # The reproducer is data: keep timings out of it, so reports compare equal.
        note = small.origin.get("shrink")
        if isinstance(note, dict) and "seconds" in note:
            small = small.replace(origin={**small.origin, "shrink": {k: v for k, v in note.items() if k != "seconds"}})
    except Exception as exc:  # a failing shrink must not lose the divergence
        small, error = stream, f"{type(exc).__name__}: {exc}"
    return ShrinkOutcome(task.signature, streams.stream_to_json(small), len(small), len(stream),
                         time.perf_counter() - started, error, head)


def replay_corpus_entry(task: CorpusTask) -> dict[str, Any]:
    """Run a corpus reproducer on the campaign's backends: does its backend still diverge?
    Executed in a worker."""
    harness, _ = _worker_env(task.config)
    result = harness.run(streams.stream_from_json(task.stream_json), time_limit=task.config.stream_timeout)
    mine = [d for d in result.divergences if d.backend == task.backend]
    head = head_of(mine, task.backend)
    return {"diverged": bool(mine), "signatures": sorted({d.signature for d in mine}),
            "head_signature": head[0]["signature"] if head else None}


def local_process_pool(workers: int) -> cf.Executor:
    """The default executor: ``workers`` spawned processes (Hypothesis is not thread-safe,
    and fork would copy whatever state the parent has), each exiting when the campaign's
    process dies (``exit_with_parent``)."""
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=exit_with_parent, initargs=(os.getpid(),))


PARENT_POLL_SECONDS = 0.5


def exit_with_parent(parent: int) -> None:
    """In a worker: a daemon thread that ends the process once ``parent`` is gone (a
    ``kill -9`` of the campaign leaves no orphan worker running its stream to the end)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="difftest-parent-watch", daemon=True).start()


SHRINK_RUNS_PER_SECOND = 20  # a campaign's --shrink-budget S is 20 * S harness runs
SHRINK_TIME_CEILING = 4  # ... and at most 4 * S seconds (a slow machine's safety net)


def shrink_runs(config: CampaignConfig) -> int:
    """The harness runs a campaign's shrink may make, from ``--shrink-budget`` seconds."""
    return max(1, round(config.shrink_budget * SHRINK_RUNS_PER_SECOND))


WATCHDOG_GRACE = 1.0  # seconds past a task's allowance before the parent kills its worker


def unit_allowance(config: CampaignConfig) -> float:
    """The longest a stream may run: after a hang the others go on under a fresh limit, so
    each backend may use the whole ``stream_timeout`` once, plus one for generating it."""
    return config.stream_timeout * (len(config.backends) + 1)


def watchdog_limits(config: CampaignConfig) -> tuple[float, float, float]:
    """(stream task, shrink task, stream task alone) limits, from the moment the executor
    marks the task running.

    A task marked running may still wait behind one other in the call queue, hence twice
    the allowance.  A shrink stops starting runs at its budget; each run is bounded, and
    finding where the signature first shows takes a few runs that the budget does not
    bound (prefixes of growing length)."""
    allowance = unit_allowance(config)
    grace = WATCHDOG_GRACE + config.stream_timeout
    return (2 * allowance + grace, SHRINK_TIME_CEILING * config.shrink_budget + 8 * allowance + grace,
            allowance + grace)


def kill_workers(executor: cf.Executor, futures: Sequence[cf.Future] = ()) -> bool:
    """End hung tasks: a local process pool has its worker processes killed (the pool is
    then broken, and its tasks fail with ``BrokenProcessPool``); an executor with an
    ``abandon`` method (a cluster's) ends those ``futures`` alone (they fail with
    ``WorkerLost``).  False for an executor that can do neither."""
    abandon = getattr(executor, "abandon", None)
    if abandon is not None:
        abandon(list(futures))
        return True
    processes = getattr(executor, "_processes", None)
    if not processes:
        return False
    for proc in list(processes.values()):
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):
            pass
    return True


def mark_running(executor: cf.Executor) -> None:
    """A cluster's futures say "running" only once it is asked which tasks its workers are
    processing: ask (a local pool's know by themselves)."""
    mark = getattr(executor, "mark_running", None)
    if mark is not None:
        mark()


def worker_slots(executor: cf.Executor, workers: int) -> int:
    """How many tasks ``executor`` runs at once now: a cluster's executor says (its worker
    threads, which change as workers join and leave); a local pool runs ``workers``."""
    slots = getattr(executor, "slots", None)
    n = slots() if slots is not None else None
    return workers if n is None else n


class Watchdog:
    """Notes when each task starts running and tells which ran past its limit."""

    def __init__(self) -> None:
        self.since: dict[cf.Future, float] = {}

    def overdue(self, futures: dict[cf.Future, float]) -> list[cf.Future]:
        """``futures``: future -> its limit in seconds.  The futures past it."""
        now = time.monotonic()
        late = []
        for fut, limit in futures.items():
            if fut.done():
                self.since.pop(fut, None)
            elif fut.running():
                if now - self.since.setdefault(fut, now) > limit:
                    late.append(fut)
        return late

    def forget(self) -> None:
        self.since.clear()


def run_alone(executor_factory: ExecutorFactory, task: Any, fn: Callable[[Any], Any],
              limit: float) -> tuple[Any, str]:
    """Run one task in a fresh one-worker executor: (result, "ok"), (None, "died") when the
    worker died, (None, "hung") when it ran past ``limit`` seconds from its start and was
    killed.  On a cluster the task may wait behind one other on its worker (as in a
    pool's call queue): twice the limit there."""
    single = executor_factory(1)
    if not breaks_whole_pool(single):
        limit *= 2
    hung = False
    future = single.submit(fn, task)
    watchdog = Watchdog()
    try:
        while not cf.wait([future], timeout=0.5).done:
            mark_running(single)
            if watchdog.overdue({future: limit}):
                hung = True
                kill_workers(single, [future])
                return None, "hung"
        return future.result(), "ok"
    except cf.BrokenExecutor:
        return None, "died"
    finally:
        single.shutdown(wait=not hung, cancel_futures=True)


def _worker_death_hit(name: str | None, k: int, seed: int, hung: bool) -> tuple[str, tuple[int, dict[str, Any]]]:
    """The divergence of a worker that died (or hung and was killed) running stream k:
    ``name``'s when it does so alone, "?"'s when no single backend does."""
    what = ("hung past the watchdog's limit and was killed" if hung else "died")
    d = Divergence(kind="hang" if hung else "crash", backend=name or "?", op_index=-1, op="whole stream",
                   op_kind="stream", field="worker", cls="worker-killed" if hung else "worker-died",
                   message=f"the worker process {what} running stream {k} (seed {seed})"
                           + (f" with {name} alone" if name else ""),
                   attribution=(f"{name} {'hangs' if hung else 'kills'} the worker when run alone" if name
                                else "no single backend kills the worker alone"))
    return d.signature, (1, d.to_json())
