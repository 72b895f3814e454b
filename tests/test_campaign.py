"""Fuzz campaigns end to end: the real CLI, real worker processes, real backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliutil import CONSOLE_SCRIPT, clean_env, run_difftest
from difftest.units import parse_duration, parse_shard, unit_seed
from difftest.errors import BadInput
from difftest.streams import load

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
LEAK = "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"


def fuzz(tmp_path: Path, *args: str, out: str = "out", plugins: bool = False, timeout: float = 240):
    env = clean_env([PLUGINS] if plugins else ())
    argv = ["fuzz", "--no-progress", "--out", str(tmp_path / out), *args]
    if plugins:
        argv = ["-p", "broken_backends", *argv]
    return run_difftest(*argv, env=env, cwd=tmp_path, timeout=timeout)


def report_of(tmp_path: Path, out: str = "out") -> dict:
    return json.loads((tmp_path / out / "report.json").read_text())


def comparable(report: dict) -> dict:
    """The report without timings: what must not depend on workers, shards or kills."""
    doc = dict(report)
    doc.pop("timing", None)
    return doc


# -- the README's main command -----------------------------------------------------------------------


def test_fuzz_without_options_finds_pr5666_as_known(tmp_path):
    proc = run_difftest("fuzz", "--no-progress", env=clean_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out,) = (tmp_path / "difftest-out").iterdir()
    report = json.loads((out / "report.json").read_text())
    assert report["backends"] == ["alpha-ref", "arm32-leaky", "arm32-refcount"]
    leak = [e for e in report["divergences"] if e["signature"] == LEAK]
    assert leak, [e["signature"] for e in report["divergences"]]
    assert leak[0]["known"] and "5666" in leak[0]["known_reason"]
    assert leak[0]["reproducer_ops"] <= 3
    repro = load(out / leak[0]["reproducer_path"])
    assert [op.name for op in repro.ops] == ["create", "enter", "remove"]
    # nothing but the known leak: the fixed backend and the reference agree
    assert all(e["backend"] == "arm32-leaky" and e["known"] for e in report["divergences"])
    # one bug, whatever op kinds the leak surfaced at: its head leaves the op kind out
    (bug,) = report["bugs"]
    assert bug["head"] == "resource:arm32-leaky:*:pt_frames:pt-frames-held>needed" and bug["status"] == "known"
    assert LEAK in bug["members"] and set(bug["members"]) == {e["signature"] for e in report["divergences"]}
    assert "known" in proc.stdout and bug["head"] in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100


def test_empty_baseline_makes_the_leak_new(tmp_path):
    baseline = tmp_path / "empty.toml"
    baseline.write_text("")
    proc = fuzz(tmp_path, "--streams", "2", "--ops-per-stream", "300", "--seed", "7", "--workers", "1",
                "--baseline", str(baseline))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    assert report["summary"]["new"] >= 1 and report["summary"]["known"] == 0
    assert LEAK in {e["signature"] for e in report["divergences"]}


def test_baseline_entries_not_seen_are_listed(tmp_path):
    baseline = tmp_path / "b.toml"
    baseline.write_text('[[known]]\nsignature = "resource:arm32-leaky:*"\nreason = "PR 5666"\n'
                        '[[known]]\nsignature = "crash:alpha-ref:*"\nreason = "fixed long ago"\n')
    proc = fuzz(tmp_path, "--streams", "2", "--ops-per-stream", "300", "--seed", "7", "--workers", "1",
                "--baseline", str(baseline))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    assert report["no_longer_seen"] == [{"signature": "crash:alpha-ref:*", "reason": "fixed long ago"}]
    assert "no longer seen (fixed?): crash:alpha-ref:*" in proc.stdout


def test_baseline_entry_of_a_backend_not_run_is_not_judged(tmp_path):
    # The default baseline knows PR 5666 of arm32-leaky; without arm32-leaky nothing is
    # "no longer seen": the entry was not judged.
    proc = fuzz(tmp_path, "--backends", "alpha-ref,arm32-refcount", "--streams", "2", "--ops-per-stream", "300",
                "--seed", "7", "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report_of(tmp_path)["no_longer_seen"] == []
    assert "no longer seen" not in proc.stdout


@pytest.mark.parametrize("content, words", [
    ("[[known]]\nsignature = 3\n", "no 'signature'"),
    ("not toml at all [", "not valid TOML"),
    ("[[known]]\nsignature = 'x'\nwhy = 'y'\n", "unexpected key 'why'"),
])
def test_bad_baseline_is_one_line_exit_2(tmp_path, content, words):
    baseline = tmp_path / "b.toml"
    baseline.write_text(content)
    proc = fuzz(tmp_path, "--streams", "1", "--baseline", str(baseline))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and words in lines[0] and "b.toml" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--budget", "soon"], "not a duration"),
    (["--shard", "3/2"], "out of range"),
    (["--backends", "nope"], "unknown backend 'nope'"),
    (["--generator", "nope"], "unknown generator 'nope'"),
    (["--reference", "arm32-leaky", "--backends", "alpha-ref"], "not among the backends"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, args, words):
    proc = fuzz(tmp_path, "--streams", "1", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and words in lines[0], proc.stderr


# -- isolation ---------------------------------------------------------------------------------------


def test_crash_hang_and_dying_worker_are_recorded_and_the_campaign_finishes(tmp_path):
    proc = fuzz(tmp_path, "--backends", "alpha-ref,bug-protect-raises,bug-hang,bug-exit", "--streams", "2",
                "--ops-per-stream", "200", "--seed", "3", "--workers", "2", "--stream-timeout", "1",
                "--shrink-budget", "0", plugins=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    assert report["streams"] == 2
    by_backend = {e["backend"]: e for e in report["divergences"]}
    assert by_backend["bug-protect-raises"]["kind"] == "crash"
    assert by_backend["bug-protect-raises"]["first"]["op_kind"] == "protect"
    assert "RuntimeError" in by_backend["bug-protect-raises"]["first"]["traceback"]
    hang = by_backend["bug-hang"]
    assert hang["kind"] == "hang" and "time limit of 1 s" in hang["first"]["message"]
    died = by_backend["bug-exit"]
    assert (died["kind"], died["class"]) == ("crash", "worker-died")
    assert report["worker_deaths"] and report["worker_deaths"][0]["backends"] == ["bug-exit"]
    # the stream that killed the worker is named, and reproducible from its seed
    death = report["worker_deaths"][0]
    assert death["seed"] == unit_seed(3, death["stream"])


def test_worker_deaths_and_first_sightings_are_read_back_by_resume(tmp_path):
    """What a campaign found is not lost with its session: a --resume rebuilds the report
    from the summary (or, without it, the journal) with the streams that killed their
    worker and when each signature was first seen."""
    proc = fuzz(tmp_path, "--backends", "alpha-ref,arm32-leaky,bug-exit", "--streams", "2", "--ops-per-stream",
                "200", "--seed", "3", "--workers", "1", "--shrink-budget", "0", plugins=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    deaths = report["worker_deaths"]
    assert [(d["stream"], d["backends"]) for d in deaths] == [(0, ["bug-exit"]), (1, ["bug-exit"])]
    first_hits = report["timing"]["first_hits"]
    assert "crash:bug-exit:stream:worker:worker-died" in [h["signature"] for h in first_hits]
    env = clean_env([PLUGINS])
    for without_summary in (False, True):
        if without_summary:
            (tmp_path / "out" / "summary.json").unlink()
        again = run_difftest("-p", "broken_backends", "fuzz", "--no-progress", "--resume", str(tmp_path / "out"),
                             env=env, cwd=tmp_path)
        assert again.returncode == 1, again.stdout + again.stderr
        resumed = report_of(tmp_path)
        assert resumed["worker_deaths"] == deaths and resumed["timing"]["first_hits"] == first_hits
        assert comparable(resumed) == comparable(report)
    # Each of two shards ran one of the streams: merged, both deaths are there.
    for i in (0, 1):
        shard = fuzz(tmp_path, "--backends", "alpha-ref,arm32-leaky,bug-exit", "--streams", "2", "--ops-per-stream",
                     "200", "--seed", "3", "--workers", "1", "--shrink-budget", "0", "--shard", f"{i}/2",
                     out=f"s{i}", plugins=True)
        assert shard.returncode == 1, shard.stdout + shard.stderr
    merged = run_difftest("-p", "broken_backends", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                          "--out", str(tmp_path / "m"), env=env, cwd=tmp_path)
    assert merged.returncode in (0, 1), merged.stdout + merged.stderr
    assert report_of(tmp_path, "m")["worker_deaths"] == deaths


# -- determinism ------------------------------------------------------------------------------------------


def test_one_and_two_workers_give_the_same_report(tmp_path):
    args = ["--streams", "6", "--ops-per-stream", "400", "--seed", "11", "--shrink-budget", "5"]
    one = fuzz(tmp_path, *args, "--workers", "1", out="w1")
    two = fuzz(tmp_path, *args, "--workers", "2", out="w2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    r1, r2 = report_of(tmp_path, "w1"), report_of(tmp_path, "w2")
    assert r1["divergences"], "the campaign found nothing: the comparison would be empty"
    assert comparable(r1) == comparable(r2)
    # and so are the per-signature files, whenever their shrinks ended
    files = {p.name: p.read_bytes() for p in (tmp_path / "w1" / "divergences").iterdir()}
    assert files and files == {p.name: p.read_bytes() for p in (tmp_path / "w2" / "divergences").iterdir()}


def test_two_shards_merged_equal_the_unsharded_run(tmp_path):
    args = ["--streams", "6", "--ops-per-stream", "400", "--seed", "12", "--workers", "1", "--shrink-budget", "5",
            "--no-feedback"]  # with feedback each shard keeps its own pool: not the unsharded run
    whole = fuzz(tmp_path, *args, out="whole")
    s0 = fuzz(tmp_path, *args, "--shard", "0/2", out="s0")
    env = clean_env(CI_NODE_INDEX="2", CI_NODE_TOTAL="2")  # the second shard through CI variables
    s1 = run_difftest("fuzz", "--no-progress", "--out", str(tmp_path / "s1"), *args, env=env, cwd=tmp_path)
    assert whole.returncode == s0.returncode == s1.returncode == 0, whole.stderr + s0.stderr + s1.stderr
    assert report_of(tmp_path, "s1")["campaign"]["shard"] == "1/2"
    merged = run_difftest("merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m"),
                          env=clean_env(), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert comparable(report_of(tmp_path, "m")) == comparable(report_of(tmp_path, "whole"))


def _uninterrupted(tmp_path: Path, streams: int, workers: int, shrink_budget: str) -> list[str]:
    """Run the campaign to be interrupted once whole (into ``whole``); return its args."""
    args = ["--streams", str(streams), "--ops-per-stream", "600", "--seed", "13", "--workers", str(workers),
            "--shrink-budget", shrink_budget, "--baseline", str(tmp_path / "empty.toml")]
    (tmp_path / "empty.toml").write_text("")
    whole = fuzz(tmp_path, *args, out="whole")
    assert whole.returncode == 1, whole.stderr
    return args


def _start(tmp_path: Path, out: Path, args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, "fuzz", "--no-progress", "--out", str(out), *args],
                            env=clean_env(), cwd=tmp_path, **popen)


def test_killed_campaign_resumes_without_losing_or_duplicating(tmp_path):
    args = _uninterrupted(tmp_path, 24, 1, "5")
    out = tmp_path / "killed"
    proc = _start(tmp_path, out, args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the campaign and its workers, mid-run
    proc.wait()
    done_before = len(journal.read_text().splitlines())
    assert 5 <= done_before < 24, "the kill came too late to test anything"
    assert not (out / "report.json").exists()

    resumed = run_difftest("fuzz", "--no-progress", "--resume", str(out), env=clean_env(), cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert comparable(report_of(tmp_path, "killed")) == comparable(report_of(tmp_path, "whole"))
    ks = [json.loads(line)["k"] for line in journal.read_text().splitlines() if '"k"' in line]
    assert sorted(ks) == list(range(24))  # every stream exactly once


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for_streams(journal: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and sum(1 for line in journal.read_text().splitlines() if '"k"' in line) >= n:
            return
        time.sleep(0.05)


def _wait_gone(pids: set[int], limit: float = 60) -> set[int]:
    """Wait (up to ``limit`` s, far beyond the workers' 0.5 s poll) for ``pids`` to exit;
    return those still alive."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_ends_the_campaign_cleanly_and_resume_completes_it(tmp_path):
    # A shrink budget whose time ceiling (4 x 10 s) no load reaches: the shrinks end on their own
    # (about 50 runs each) in both runs, so the reports compare equal on a loaded machine too.
    args = _uninterrupted(tmp_path, 16, 2, "10")
    out = tmp_path / "termed"
    proc = _start(tmp_path, out, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_streams(out / "journal.jsonl", 3, proc)
    workers = _children(proc.pid)
    assert workers, "no worker processes to check"
    proc.send_signal(signal.SIGTERM)  # the parent alone, as `timeout` does
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert "terminated (SIGTERM)" in stderr and f"difftest fuzz --resume {out}" in stderr
    assert _wait_gone(workers) == set(), "workers left running after SIGTERM"
    assert not (out / "report.json").exists()
    assert json.loads((out / "journal.jsonl").read_text().splitlines()[-1])["type"] == "elapsed"  # closed

    resumed = run_difftest("fuzz", "--no-progress", "--resume", str(out), env=clean_env(), cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert comparable(report_of(tmp_path, "termed")) == comparable(report_of(tmp_path, "whole"))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_exit_when_the_campaign_is_killed(tmp_path):
    out = tmp_path / "killed"
    proc = _start(tmp_path, out, ["--streams", "40", "--ops-per-stream", "3000", "--workers", "2", "--seed", "5"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_streams(out / "journal.jsonl", 1, proc)
    workers = _children(proc.pid)
    assert workers and proc.poll() is None
    proc.kill()  # kill -9 of the parent alone: no handler runs
    proc.wait()
    assert _wait_gone(workers) == set(), "orphan workers after kill -9 of the campaign"


def test_resume_of_a_directory_without_a_campaign_is_exit_2(tmp_path):
    proc = run_difftest("fuzz", "--resume", str(tmp_path), env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 2 and "no campaign.json" in proc.stderr


def test_out_dir_with_a_campaign_is_not_overwritten(tmp_path):
    first = fuzz(tmp_path, "--streams", "1", "--ops-per-stream", "100", "--workers", "1")
    assert first.returncode == 0, first.stderr
    again = fuzz(tmp_path, "--streams", "1", "--ops-per-stream", "100", "--workers", "1")
    assert again.returncode == 2 and "--resume" in again.stderr


# -- small pure functions ------------------------------------------------------------------------------------


def test_durations_and_shards():
    assert parse_duration("30s") == 30 and parse_duration("8h") == 8 * 3600
    assert parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(BadInput):
        parse_duration("1x")
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "4"}) == (2, 4)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                              "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
    assert parse_shard(None, {"JOB_COMPLETION_INDEX": "0", "DIFFTEST_SHARD_TOTAL": "2"}) == (0, 2)
    with pytest.raises(BadInput):
        parse_shard("2/2", {})


def test_unit_seeds_are_stable():
    # derived by hashing: the same on every machine and Python version
    assert unit_seed(1, 0) == unit_seed(1, 0)
    assert len({unit_seed(1, k) for k in range(1000)}) == 1000
    assert unit_seed(42, 7) == int.from_bytes(__import__("hashlib").sha256(b"difftest:42:7").digest()[:8], "big") >> 1


# -- progress and executors --------------------------------------------------------------------------------


def test_progress_bar_on_a_terminal_only(tmp_path):
    from cliutil import run_on_a_tty

    args = ["fuzz", "--streams", "6", "--ops-per-stream", "300", "--workers", "1", "--seed", "2"]
    status, output = run_on_a_tty(*args, "--out", str(tmp_path / "tty"), env=clean_env(TERM="xterm"))
    assert status == 0, output[-2000:]
    assert b"/6 [" in output and b"ops/s, new 0, known" in output  # tqdm: n/total [time, rate]
    quiet = fuzz(tmp_path, *args[1:], out="pipe")  # stderr is a pipe here
    assert quiet.returncode == 0 and "ops/s, new" not in quiet.stderr
    status, output = run_on_a_tty(*args, "--no-progress", "--out", str(tmp_path / "np"), env=clean_env())
    assert status == 0 and b"ops/s, new" not in output


def test_the_executor_is_pluggable(tmp_path):
    """A campaign runs through whatever concurrent.futures executor the factory gives."""
    import concurrent.futures as cf
    import multiprocessing

    from difftest.campaign import Campaign, CampaignConfig

    made = []

    def forkserver_pool(workers):
        made.append(workers)
        return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))

    config = CampaignConfig(backends=("alpha-ref", "arm32-leaky", "arm32-refcount"), reference="alpha-ref",
                            seed=21, ops_per_stream=300, streams=3, shrink_budget=5)
    other = Campaign(config, tmp_path / "fs", workers=2, executor_factory=forkserver_pool).run()
    default = Campaign(config, tmp_path / "default", workers=1).run()
    assert made == [2]
    assert comparable(other) == {**comparable(default)}
    assert other["divergences"]


def test_what_a_campaign_writes_is_what_it_recorded(tmp_path):
    """Each whole-stream reproducer is generated, run and encoded once however many
    signatures it stands for, and the plot step reuses the workers' stream statistics and
    their traced run of the first stream: what is written is still exactly the records,
    and the plots equal a plot step that generates and runs every stream again and traces
    each reproducer on its own."""
    import copy

    from difftest import plotdata, streams
    from difftest.campaign import Campaign, report_text
    from difftest.corpus import slug

    out = tmp_path / "out"
    camp = Campaign(_small_config(shrink_budget=0, streams=4, seed=25), out, workers=1)
    report = camp.run()
    firsts = [rec.first_k for rec in camp.records.values()]
    assert len(firsts) > len(set(firsts)), "no stream stood for two signatures: nothing shared to check"
    for rec in camp.records.values():
        assert rec.reproducer_ops == len(rec.reproducer["ops"]) == 300  # the whole stream (no shrinking)
        name = slug(rec.signature)
        written = json.loads((out / "divergences" / f"{name}.json").read_text())
        # the record as the campaign ended, its counts included (they do not depend on when
        # the file was first written)
        assert written == rec.to_json()
        assert json.loads((out / "corpus" / f"{name}.record.json").read_text()) == {
            "signature": rec.signature, "first_k": rec.first_k, "reproducer": rec.reproducer,
            "shrink_error": "shrinking disabled", "head": None}
        assert (out / "corpus" / f"{name}.stream.json").read_text() == \
            streams.dumps(streams.stream_from_json(rec.reproducer))
    text = report_text(report)  # report.json: its reproducers written one op a line
    assert json.loads(text) == report and text.count('"ops": [\n  {"op": "create"}') >= 2
    assert sorted(camp._traced_runs) == [0] and camp._stream_stats  # what the plot step was given
    task = plotdata.make_task(camp.config, camp.records.values(), camp.committed, set(), camp._recipe)
    assert task.stats == () and task.traced == ()  # every stream generated and run again
    assert plotdata.record(task) == report["plots"]
    for signature, backend, oom, doc in task.reproducers:  # each traced on its own
        alone = plotdata._reproducer(task, signature, backend, oom, copy.deepcopy(doc), {})
        assert alone == report["plots"]["reproducers"][signature]


# -- the journal: small lines, closed segments, a summary for --resume ----------------------------------------


def _small_config(**kw):
    from difftest.campaign import CampaignConfig

    return CampaignConfig(**{"backends": ("alpha-ref", "arm32-leaky", "arm32-refcount"), "reference": "alpha-ref",
                             "seed": 23, "ops_per_stream": 300, "streams": 8, "shrink_budget": 1, "feedback": True,
                             **kw})


def test_journal_segments_and_summary_read_back_to_the_same_report(tmp_path):
    """A journal closed into gzip segments after every line, and a campaign interrupted
    and resumed from its summary and the journal's tail, report what an undisturbed
    campaign does; so do the segments read back without the summary."""
    import gzip

    from difftest.campaign import Campaign, load_run_dir

    whole = Campaign(_small_config(), tmp_path / "whole", workers=1).run()
    assert whole["divergences"]
    lines = [json.loads(line) for line in (tmp_path / "whole" / "journal.jsonl").read_text().splitlines()]
    streams = [line for line in lines if "k" in line]
    # a signature's divergence is written once, at its first sighting; later lines count it
    firsts = [sig for line in streams for sig in line.get("first", {})]
    assert sorted(firsts) == sorted(d["signature"] for d in whole["divergences"])
    assert all("seed" not in line and isinstance(line["fbits"], str) for line in streams)

    segmented = Campaign(_small_config(), tmp_path / "seg", workers=1)
    segmented.segment_bytes = 1  # close a segment after every line
    assert comparable(segmented.run()) == comparable(whole)
    closed = sorted((tmp_path / "seg").glob("journal.*.jsonl.gz"))
    assert len(closed) >= 8 and (tmp_path / "seg" / "journal.jsonl").read_text() == ""
    assert all('"k"' in gzip.open(p, "rt").read() or "type" in gzip.open(p, "rt").read() for p in closed)
    assert comparable(load_run_dir(tmp_path / "seg").report()) == comparable(whole)
    (tmp_path / "seg" / "summary.json").unlink()  # without it: every segment is read, in order
    assert comparable(load_run_dir(tmp_path / "seg").report()) == comparable(whole)

    def interrupt_after_three(state):
        if state["streams"] >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Campaign(_small_config(), tmp_path / "cut", workers=1, progress=interrupt_after_three).run()
    first_summary = (tmp_path / "cut" / "summary.json").read_text()
    summary = json.loads(first_summary)
    assert summary["covers"]["journal_bytes"] == (tmp_path / "cut" / "journal.jsonl").stat().st_size

    def interrupt_after_five(state):
        if state["streams"] >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Campaign(_small_config(), tmp_path / "cut", workers=1, resume=True, progress=interrupt_after_five).run()
    # as if that session had been killed (-9) before writing its summary: the first one's
    # covers the first session, the journal's tail holds the second's streams
    (tmp_path / "cut" / "summary.json").write_text(first_summary)
    resumed = Campaign(_small_config(), tmp_path / "cut", workers=1, resume=True)
    assert len(resumed.committed) >= 5 and resumed.committed == sorted(resumed.committed)
    assert comparable(resumed.run()) == comparable(whole)
