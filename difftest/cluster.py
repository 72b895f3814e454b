"""Campaigns on a Dask cluster (``difftest fuzz --executor dask --scheduler ADDRESS``).

The campaign (``difftest.campaign``) runs its streams, shrinks and corpus replays through
an *executor factory*; this module's ``DaskCluster`` is one, over a
``distributed.Client`` connected to an existing scheduler.  Its executors do what
``Client.get_executor()`` does (``concurrent.futures`` over the client's tasks, submitted
with ``pure=False`` so that a re-run is a new task), plus what the campaign's loop relies
on and that executor lacks:

- ``shutdown(cancel_futures=...)`` as ``concurrent.futures`` has it;
- futures marked *running* when the scheduler has them processing on a worker, so the
  campaign's watchdog times a task from its start, not from its submission;
- a worker that dies running a task: the scheduler runs the task again on another worker
  by itself (``distributed.scheduler.allowed-failures`` times); past that the future
  fails with ``units.WorkerLost`` and the campaign isolates that stream as it does a
  dead local worker (the culprit is named by running it alone, then per backend);
- ``abandon(futures)``: the watchdog's way to end a hung task: the task is cancelled and
  its worker restarted by its nanny (a worker without a nanny is left running it);
- ``slots()``: the worker threads to keep busy now, which change as workers join and
  leave (``DaskCluster.slots``): the campaign keeps twice that many streams in flight.

The client is the only writer of ``OUT/``: workers return results and never touch files.
Workers need the project and every plugin importable (installed, or a plugin module
that is a single file, which is uploaded to them: ``docs/CLUSTER.md``), and one thread
each (Hypothesis is not thread-safe).  ``distributed`` is imported only here, and only
when a Dask campaign runs: it is the optional ``dask`` extra.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from difftest import __version__
from difftest.units import EXIT_ORPHANED as EXIT_ABANDONED, WorkerLost
from difftest.errors import BadInput, short

ENV_SCHEDULER = "DIFFTEST_DASK_SCHEDULER"
# How long a campaign waits for a scheduler that has no worker yet (seconds): workers
# started with it may still be joining; past that, no worker is bad input, not a hang.
ENV_WORKER_WAIT = "DIFFTEST_DASK_WORKER_WAIT"
DEFAULT_WORKER_WAIT = 60.0
RUNNING_POLL = 0.5  # seconds between asking the scheduler which tasks are processing
# Seconds between asking the scheduler how many worker threads it has (one round trip):
# workers that join as the campaign runs get streams within that time.
WINDOW_POLL = 2.0


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise BadInput("--executor dask needs Dask: pip install 'pmap-difftest[dask]'") from None
    return distributed


def worker_probe(plugins: tuple[str, ...]) -> str:
    """On a worker: ``""`` when it can run this campaign (the same difftest version, every
    plugin importable), else what is wrong."""
    import difftest
    from difftest.plugins import PluginHost

    if difftest.__version__ != __version__:
        return f"pmap-difftest {difftest.__version__} (the client runs {__version__})"
    try:
        PluginHost().load(plugins)
    except BaseException as exc:  # a plugin's import error, SystemExit included
        return f"cannot load the plugins ({type(exc).__name__}: {short(str(exc), 80)})"
    return ""


def _end_worker_process() -> None:
    """On a worker whose task hangs: end the process at once (its nanny starts another)."""
    import os

    os._exit(EXIT_ABANDONED)


class DaskExecutor(cf.Executor):
    """One campaign executor over a shared client (see the module's docstring)."""

    #: a dead worker fails only its own task (a local process pool breaks as a whole)
    breaks_whole_pool = False

    def __init__(self, client: Any, slots: Callable[[], int] | None = None) -> None:
        self._client = client
        self._slots = slots
        self._tasks: dict[cf.Future, Any] = {}  # ours -> the dask future
        self._lock = threading.Lock()
        self._polled = 0.0

    def slots(self) -> int | None:
        """Worker threads to keep busy now (None: not known, the campaign's ``workers``)."""
        return None if self._slots is None else self._slots()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future:
        task = self._client.submit(fn, *args, pure=False, **kwargs)
        ours: cf.Future = cf.Future()
        with self._lock:
            self._tasks[ours] = task
        task.add_done_callback(lambda t, ours=ours: self._settle(ours, t))
        return ours

    def _settle(self, ours: cf.Future, task: Any) -> None:
        """The dask future ``task`` is done: pass its outcome on (once).  Runs in the
        client's callback thread; the result is fetched before taking the lock."""
        result, error = None, None
        if task.status == "finished":
            try:
                result = task.result()
            except BaseException as exc:  # the result could not be fetched
                error = exc
        elif task.status == "cancelled":
            error = WorkerLost(f"task {task.key} was cancelled by the cluster")
        else:
            # "error", or no longer "finished" though it was when the callback was queued (this
            # runs in another thread): its worker died holding the result ("lost") and the
            # scheduler runs it again.  exception() waits for the end; None means a result.
            error = task.exception()
            if type(error).__name__ == "KilledWorker":
                error = WorkerLost(f"the workers running it died: {short(str(error), 200)}")
            elif error is None:
                try:
                    result = task.result()
                except BaseException as exc:
                    error = exc
        with self._lock:
            self._tasks.pop(ours, None)
            if ours.done():
                return  # abandoned by the watchdog
            if error is not None:
                ours.set_exception(error)
            else:
                ours.set_result(result)

    def mark_running(self) -> None:
        """Mark running the futures whose task a worker is processing (polled at most every
        ``RUNNING_POLL`` seconds: one scheduler round trip)."""
        now = time.monotonic()
        if now - self._polled < RUNNING_POLL:
            return
        self._polled = now
        with self._lock:
            waiting = {task.key: ours for ours, task in self._tasks.items() if not ours.running() and not ours.done()}
        if not waiting:
            return
        for keys in self._client.processing().values():
            for key in keys:
                ours = waiting.get(key)
                if ours is not None:
                    with self._lock:
                        if not ours.done():
                            ours.set_running_or_notify_cancel()

    def abandon(self, futures: Iterable[cf.Future]) -> None:
        """End hung tasks: cancel them, end the worker processes running them (their
        nannies start new ones), and fail their futures with ``WorkerLost`` (what follows
        is a worker's death).  ``Client.restart_workers`` would wait up to a minute for
        the restarted worker: the campaign does not."""
        with self._lock:
            tasks = {ours: self._tasks.pop(ours) for ours in futures if ours in self._tasks}
        keys = {task.key for task in tasks.values()}
        hosts = [w for w, ks in self._client.processing().items() if keys.intersection(ks)]
        self._client.cancel(list(tasks.values()))
        if hosts:
            # Run in the worker's event loop, not its (hung) task thread; no reply comes.
            self._client.run(_end_worker_process, workers=hosts, on_error="ignore")
        for ours in tasks:
            with self._lock:
                if not ours.done():
                    ours.set_exception(WorkerLost("hung past the watchdog's limit: cancelled, worker restarted"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
        if cancel_futures or not wait:
            self._client.cancel(tasks)
        elif tasks:
            self._client.gather(tasks, errors="skip")


class DaskCluster:
    """The executor factory of a Dask campaign: ``DaskCluster(client)(n)`` is an executor
    on the client's cluster (``n`` is ignored: the campaign keeps as many tasks in flight
    as ``slots()`` says, twice the cluster's worker threads as they are now).

    ``max_threads`` (``--workers``) caps the threads the campaign keeps busy: on a shared
    cluster it takes no more than that, however many workers join."""

    def __init__(self, client: Any, address: str = "", max_threads: int | None = None) -> None:
        self.client = client
        self.address = address or str(getattr(client.scheduler, "address", ""))
        self.label = "dask"  # the report's timing.executor
        self.max_threads = max_threads
        self._threads = 0
        self._polled = -float("inf")

    def __call__(self, workers: int) -> cf.Executor:
        return DaskExecutor(self.client, self.slots)

    def threads(self) -> int:
        """Worker threads in the cluster now (one scheduler round trip)."""
        return sum(self.client.nthreads().values())

    def slots(self) -> int:
        """Worker threads the campaign keeps busy now: the cluster's, asked again at most
        every ``WINDOW_POLL`` seconds (workers join late: an autoscaler, batch jobs that
        start when they are given nodes; and leave), at most ``max_threads``, at least 1
        (a cluster left without workers: what is in flight waits for one)."""
        now = time.monotonic()
        if now - self._polled >= WINDOW_POLL:
            self._polled = now
            try:
                self._threads = self.threads()
            except (OSError, TimeoutError):
                pass  # the scheduler is out of reach for now: the last count holds
        n = self._threads if self.max_threads is None else min(self._threads, self.max_threads)
        return max(1, n)

    def prepare(self, plugins: tuple[str, ...], worker_wait: float = DEFAULT_WORKER_WAIT) -> None:
        """Make the campaign runnable on every worker: at least one worker, waited for up
        to ``worker_wait`` seconds (BadInput past that: a campaign on no worker would wait
        all night); plugin modules that are single files here are uploaded; then each
        worker must load every plugin with this version of difftest (BadInput naming the
        first that cannot)."""
        if not self.threads():
            try:
                self.client.wait_for_workers(1, timeout=worker_wait)
            except (TimeoutError, OSError):
                raise BadInput(f"--scheduler {short(self.address)}: no Dask worker joined within {worker_wait:g} s "
                               f"(start some: dask worker {short(self.address)}; wait longer: {ENV_WORKER_WAIT}="
                               "SECONDS)") from None
        for name in plugins:
            module = sys.modules.get(name)
            path = Path(getattr(module, "__file__", "") or "")
            if path.suffix == ".py" and path.name != "__init__.py" and "site-packages" not in path.parts:
                self.client.upload_file(str(path), load=False)
        problems = self.client.run(worker_probe, tuple(plugins), on_error="return")
        for worker, problem in sorted(problems.items()):
            if isinstance(problem, BaseException):
                problem = f"{type(problem).__name__}: {short(str(problem), 80)}"
            if problem:
                raise BadInput(f"dask worker {worker}: {problem} (install pmap-difftest and the plugins on every "
                               "worker: docs/CLUSTER.md)")

    def close(self) -> None:
        self.client.close()


def worker_wait() -> float:
    """Seconds to wait for a first worker: ``DIFFTEST_DASK_WORKER_WAIT``, else 60."""
    text = os.environ.get(ENV_WORKER_WAIT)
    if text is None or not text.strip():
        return DEFAULT_WORKER_WAIT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise BadInput(f"{ENV_WORKER_WAIT}={short(text)} is not a number of seconds")
    return value


def connect(address: str, max_threads: int | None = None) -> DaskCluster:
    """A client of the scheduler at ``address``, keeping at most ``max_threads`` of its
    worker threads busy (None: all of them, as many as join; BadInput when it cannot be reached within
    Dask's ``distributed.comm.timeouts.connect``, 30 s unless configured: for example
    ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``)."""
    distributed = _dask()
    try:
        client = distributed.Client(address, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BadInput(f"--scheduler {short(address)}: cannot reach a Dask scheduler there "
                       f"({short(str(exc), 80)})") from None
    return DaskCluster(client, address, max_threads)
