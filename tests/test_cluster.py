"""Campaigns on a Dask cluster: a real ``distributed.LocalCluster`` (worker processes with
nannies, on loopback), real streams, real backends; the report must be the local one's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from cliutil import clean_env, run_difftest
from difftest.campaign import Campaign, CampaignConfig
from difftest.units import unit_seed

distributed = pytest.importorskip("distributed")
dask_config = pytest.importorskip("dask").config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),  # a cluster that lost its workers fails, never hangs
    # two clusters at once (the module's and a test's own): the second's HTTP server takes another port
    pytest.mark.filterwarnings("ignore:Port .* is already in use"),
]

BACKENDS = ("alpha-ref", "arm32-leaky", "arm32-refcount")


def comparable(report: dict) -> dict:
    doc = dict(report)
    doc.pop("timing", None)
    return doc


@contextlib.contextmanager
def _local_cluster(n_workers: int = 2, allowed_failures: int = 3):
    """Single-threaded worker processes (the campaign's tasks are not thread-safe); the
    scheduler gives a task up once it killed ``allowed_failures`` + 1 workers.

    A LocalCluster closes a worker's nanny for good when the worker it restarts has not
    joined the scheduler within ``distributed.deploy.lost-worker-timeout`` (15 s): on a
    loaded machine a new worker process takes longer than that to start, and a campaign
    whose stream kills workers was left with none, waiting for ever.  Here nannies wait."""
    with dask_config.set({"distributed.deploy.lost-worker-timeout": "600s",
                          "distributed.scheduler.allowed-failures": allowed_failures}), \
            distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=None) as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        client.wait_for_workers(n_workers, timeout=120)
        yield lc, client


@pytest.fixture(scope="module")
def cluster():
    with _local_cluster() as lc_client:
        yield lc_client


@pytest.fixture
def own_cluster():
    """A cluster of its own for a test that kills many workers (their nannies restart
    them, but a loaded machine may leave one down for longer than the next test waits).
    Its scheduler gives a task up after 2 workers died running it (Dask's default: 4):
    the campaign's isolation of a stream that kills every worker then kills 6, not 12,
    each started again by a nanny, seconds apiece on a loaded machine."""
    with _local_cluster(allowed_failures=1) as lc_client:
        yield lc_client


@pytest.fixture(scope="module")
def local_report(tmp_path_factory):
    """The campaign run by the default executor (local worker processes)."""
    config = _config()
    return Campaign(config, tmp_path_factory.mktemp("local") / "out", workers=2).run()


def _config() -> CampaignConfig:
    # feedback on (the CLI's default): stream k's recipe depends on what was committed
    return CampaignConfig(backends=BACKENDS, reference="alpha-ref", seed=31, ops_per_stream=500, streams=8,
                          shrink_budget=2, feedback=True)


def test_a_dask_campaign_reports_what_the_local_one_does(tmp_path, cluster, local_report):
    from difftest.cluster import DaskCluster

    _, client = cluster
    client.wait_for_workers(2, timeout=120)
    report = Campaign(_config(), tmp_path / "dask", workers=2, executor_factory=DaskCluster(client)).run()
    assert local_report["divergences"], "nothing found: the comparison would be empty"
    assert all(d["reproducer_ops"] < 500 for d in local_report["divergences"]), "not shrunk"
    assert comparable(report) == comparable(local_report)
    assert report["timing"]["executor"] == "dask" and local_report["timing"]["executor"] == "local"
    # the client wrote OUT/ (the workers have no access to it): resumable as a local one
    assert (tmp_path / "dask" / "journal.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "dask" / "corpus").glob("*.stream.json"))


def test_a_worker_killed_mid_campaign_loses_and_doubles_nothing(tmp_path, cluster, local_report):
    from difftest.cluster import DaskCluster

    _, client = cluster
    client.wait_for_workers(2, timeout=120)
    killed: list[tuple[str, int, list]] = []

    def kill_one_busy_worker(state: dict) -> None:
        if killed or state["streams"] < 2:
            return
        busy = {w: keys for w, keys in client.processing().items() if keys}
        if not busy:
            return
        worker = sorted(busy)[0]
        pid = client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)  # mid-stream: it was processing these tasks
        killed.append((worker, pid, list(busy[worker])))

    report = Campaign(_config(), tmp_path / "dask", workers=2, executor_factory=DaskCluster(client),
                      progress=kill_one_busy_worker).run()
    assert killed, "no worker was busy when streams were committed: nothing was killed"
    assert comparable(report) == comparable(local_report)
    assert report["worker_deaths"] == []  # the scheduler ran its stream again elsewhere: not the stream's doing


def test_workers_that_join_mid_campaign_get_streams_and_change_nothing(tmp_path, local_report, monkeypatch):
    """A cluster of one worker, a second one started once the first stream is committed:
    the campaign's window grows to it (two worker threads kept busy), the new worker runs
    streams, and the report is the local one's (the window never changes the report)."""
    from difftest import cluster as dask_cluster

    # The scheduler is asked at every turn of the campaign's loop (2 s apart otherwise):
    # the streams left once the worker has joined are few.
    monkeypatch.setattr(dask_cluster, "WINDOW_POLL", 0.0)
    with _local_cluster(n_workers=1) as (lc, client):
        joined: list[int] = []

        def add_a_worker(state: dict) -> None:
            if not joined and state["streams"] >= 1:
                lc.scale(2)  # the campaign's loop waits here: a worker's start is no race
                client.wait_for_workers(2, timeout=120)
                joined.append(state["streams"])

        with distributed.get_task_stream(client=client) as tasks:
            report = Campaign(_config(), tmp_path / "dask", workers=1, executor_factory=dask_cluster.DaskCluster(client),
                              progress=add_a_worker).run()
        ran_streams = {t["worker"] for t in tasks.data if t["key"].startswith("run_unit")}
    assert joined and joined[0] < report["streams"], "the worker joined after the last stream: nothing to see"
    assert [w["workers"] for w in report["timing"]["workers_timeline"]] == [1, 2]
    assert report["timing"]["workers"] == 2
    assert len(ran_streams) == 2, ran_streams  # the worker that joined ran streams too
    assert comparable(report) == comparable(local_report)


def test_workers_caps_the_threads_a_dask_campaign_keeps_busy(cluster):
    """``--workers N`` on a cluster: at most N of its worker threads (a share of a shared
    cluster), fewer when it has fewer; without it, all of them."""
    from difftest.cluster import DaskCluster

    _, client = cluster
    client.wait_for_workers(2, timeout=120)
    assert [DaskCluster(client, max_threads=cap).slots() for cap in (None, 1, 2, 5)] == [2, 1, 2, 2]


def test_a_scheduler_without_workers_is_one_line_not_a_night_of_waiting(tmp_path):
    """A scheduler no worker joined: the campaign waits DIFFTEST_DASK_WORKER_WAIT seconds
    for one, then says so in one line, exit 2, leaving no OUT/ behind."""
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=None) as lc:
        args = ["fuzz", "--no-progress", "--streams", "2", "--ops-per-stream", "100", "--executor", "dask",
                "--scheduler", lc.scheduler_address]
        proc = run_difftest(*args, "--out", str(tmp_path / "out"), env=clean_env(DIFFTEST_DASK_WORKER_WAIT="1"),
                            cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "no Dask worker joined within 1 s" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
        bad = run_difftest(*args, "--out", str(tmp_path / "bad"), env=clean_env(DIFFTEST_DASK_WORKER_WAIT="soon"),
                           cwd=tmp_path, timeout=120)
        assert bad.returncode == 2 and "DIFFTEST_DASK_WORKER_WAIT='soon' is not a number" in bad.stderr


def test_fuzz_on_a_scheduler_from_the_command_line(tmp_path, cluster):
    """The CLI connects to a scheduler named by DIFFTEST_DASK_SCHEDULER; a bad address or
    a missing one is one line, exit 2."""
    lc, client = cluster
    client.wait_for_workers(2, timeout=120)
    env = clean_env(DIFFTEST_DASK_SCHEDULER=lc.scheduler_address)
    args = ["fuzz", "--no-progress", "--streams", "3", "--ops-per-stream", "200", "--seed", "5",
            "--shrink-budget", "0.5", "--executor", "dask"]
    proc = run_difftest(*args, "--out", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["streams"] == 3 and report["timing"]["workers"] == 2 and report["timing"]["executor"] == "dask"
    bad = run_difftest(*args, "--out", str(tmp_path / "bad"), "--scheduler", "tcp://127.0.0.1:9",
                       env=clean_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s"), cwd=tmp_path)
    assert bad.returncode == 2 and "cannot reach a Dask scheduler" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    none = run_difftest(*args, "--out", str(tmp_path / "none"), env=clean_env(), cwd=tmp_path)
    assert none.returncode == 2 and "needs --scheduler" in none.stderr


def test_a_stream_that_kills_every_worker_is_attributed_as_locally(tmp_path, own_cluster):
    """The scheduler gives up on a stream after it killed both workers, twice each (the
    campaign's isolation runs it again); the campaign then names the backend as it does
    for a local worker's death: the same report."""
    lc, _ = own_cluster
    plugins = Path(__file__).parent / "plugins"  # broken_backends.py: uploaded to the workers
    args = ["-p", "broken_backends", "fuzz", "--no-progress", "--backends", "alpha-ref,bug-exit,bug-protect-raises",
            "--streams", "1", "--ops-per-stream", "200", "--seed", "3", "--shrink-budget", "0", "--workers", "2"]
    local = run_difftest(*args, "--out", str(tmp_path / "local"), env=clean_env([plugins]), cwd=tmp_path)
    # (each of the 6 worker deaths waits for a nanny to start a new worker: up to 10 s on a loaded machine)
    dask = run_difftest(*args, "--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler",
                        lc.scheduler_address, env=clean_env([plugins]), cwd=tmp_path, timeout=240)
    assert local.returncode == dask.returncode == 1, local.stderr + dask.stderr
    reports = [json.loads((tmp_path / out / "report.json").read_text()) for out in ("local", "dask")]
    for report in reports:
        assert report["worker_deaths"] == [{"stream": 0, "seed": unit_seed(3, 0), "backends": ["bug-exit"],
                                            "killed_by_watchdog": []}]
        for d in report["divergences"]:
            d["first"].pop("traceback", None)  # names the plugin's file where each process has it
    assert comparable(reports[1]) == comparable(reports[0])
    assert {d["signature"] for d in reports[0]["divergences"]} == {
        "crash:bug-exit:stream:worker:worker-died", "crash:bug-protect-raises:protect:exception:RuntimeError"}


def test_a_task_stuck_in_c_code_is_ended_by_the_watchdog_and_attributed(tmp_path, own_cluster):
    """``time.sleep`` for ever: neither the alarm nor its thread stand-in reaches it.  The
    watchdog cancels the task and ends its worker process; the stream is then isolated
    and the backend named, a hang of class worker-killed; the others' findings are kept."""
    lc, _ = own_cluster
    plugins = Path(__file__).parent / "plugins"
    proc = run_difftest("-p", "misbehaving_backends", "fuzz", "--no-progress", "--out", str(tmp_path / "out"),
                        "--backends", "alpha-ref,arm32-leaky,mis-sleep", "--streams", "1", "--ops-per-stream", "300",
                        "--seed", "4", "--shrink-budget", "0", "--stream-timeout", "0.3", "--executor", "dask",
                        "--scheduler", lc.scheduler_address, env=clean_env([plugins]), cwd=tmp_path, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["worker_deaths"] == [{"stream": 0, "seed": unit_seed(4, 0), "backends": ["mis-sleep"],
                                        "killed_by_watchdog": ["mis-sleep"]}]
    by_backend = {d["backend"]: d for d in report["divergences"]}
    assert (by_backend["mis-sleep"]["kind"], by_backend["mis-sleep"]["class"]) == ("hang", "worker-killed")
    assert by_backend["arm32-leaky"]["kind"] == "resource"  # the leak in the same stream is kept
    assert report["streams"] == 1 and report["ops"] == 300


def test_a_task_lost_after_it_finished_settles_with_its_result():
    """The done callback runs in a thread of its own: by then the task may be "lost" (the
    worker holding its result died, as when a busy worker is killed) and running again.
    The executor passes on that run's result, never None (a campaign then failed with
    "'NoneType' object has no attribute 'hits'")."""
    import concurrent.futures as cf

    from difftest.cluster import DaskExecutor

    class RunAgain:  # a distributed.Future as the callback finds it after that race
        key, status = "run_unit-0", "lost"

        def exception(self):  # waits for the new run, which succeeds
            return None

        def result(self):
            return "the new run's result"

    ours: cf.Future = cf.Future()
    DaskExecutor(client=None)._settle(ours, RunAgain())
    assert ours.result(timeout=0) == "the new run's result"
