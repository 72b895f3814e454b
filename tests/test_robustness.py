"""A campaign that its plugins and its inputs cannot break (issue 16).

Misbehaving backends (tests/plugins/misbehaving_backends.py: leaving the process, raising
KeyboardInterrupt, OutOfMemory from pmap_remove, sleeping for ever with and without SIGALRM,
printing, dying mid-stream) run in real campaigns with the built-ins, through the real CLI:
each is that backend's crash or hang, the culprit named, exit 1, and the built-ins' findings
(the PR 5666 leak of arm32-leaky) intact and minimised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliutil import CONSOLE_SCRIPT, clean_env, run_difftest
from difftest.ops import Create, Enter, IsModified, Protect, Remove
from difftest.streams import Stream, dumps

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
LEAK = "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
PROT_RW = 3
PROT_R = 1


def difftest(tmp_path: Path, *args: str, timeout: float = 120):
    return run_difftest("-p", "misbehaving_backends", *args, env=clean_env([PLUGINS]), cwd=tmp_path,
                        timeout=timeout)


def campaign(tmp_path: Path, culprit: str, *extra: str, out: str = "out", timeout: float = 120,
             n_streams: int = 2):
    """A short campaign of the reference, the leaky built-in and ``culprit``."""
    proc = difftest(tmp_path, "fuzz", "--no-progress", "--out", str(tmp_path / out), "--streams", str(n_streams),
                    "--ops-per-stream", "300", "--seed", "5", "--workers", "1",
                    "--backends", f"alpha-ref,arm32-leaky,{culprit}", "--stream-timeout", "0.5",
                    "--shrink-budget", "3", *extra, timeout=timeout)
    return proc


def report_of(tmp_path: Path, out: str = "out") -> dict:
    return json.loads((tmp_path / out / "report.json").read_text())


def assert_culprit_and_leak(report: dict, culprit: str, kind: str = "crash") -> dict:
    by_sig = {e["signature"]: e for e in report["divergences"]}
    mine = [e for e in report["divergences"] if e["backend"] == culprit]
    assert mine and all(e["kind"] == kind for e in mine), list(by_sig)
    assert LEAK in by_sig, list(by_sig)
    assert by_sig[LEAK]["reproducer_ops"] <= 3, by_sig[LEAK]["reproducer_ops"]
    # the culprit stops, the others go on: no divergence blamed on the built-ins but the leak
    assert all(e["backend"] in (culprit, "arm32-leaky") for e in report["divergences"]), list(by_sig)
    return mine[0]


def protect_stream() -> str:
    ops = (Create(), Enter(1, 0x10000, 0x5000, PROT_RW, 0, False, False), Protect(1, 0x10000, 0x11000, PROT_R),
           Remove(1, 0x10000, 0x11000))
    return dumps(Stream(ops, 64, {}))


# -- 1. a plugin cannot end the campaign ---------------------------------------------------------------


@pytest.mark.parametrize("culprit, cls", [("mis-exit", "SystemExit"), ("mis-kbint", "KeyboardInterrupt"),
                                          ("mis-oom-remove", "OutOfMemory")])
def test_a_backend_leaving_or_interrupting_is_its_crash_and_the_campaign_goes_on(tmp_path, culprit, cls):
    proc = campaign(tmp_path, culprit)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    assert report["streams"] == 2
    first = assert_culprit_and_leak(report, culprit)
    assert first["class"] == cls


@pytest.mark.parametrize("culprit, cls", [("mis-exit", "SystemExit"), ("mis-kbint", "KeyboardInterrupt"),
                                          ("mis-oom-remove", "OutOfMemory")])
def test_replay_reports_a_backend_leaving_or_interrupting_as_its_crash(tmp_path, culprit, cls):
    path = tmp_path / "s.json"
    path.write_text(protect_stream())
    proc = difftest(tmp_path, "replay", "--json", "--backends", f"alpha-ref,arm32-refcount,{culprit}", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    (entry,) = report["divergences"]
    assert (entry["backend"], entry["kind"], entry["class"]) == (culprit, "crash", cls)


# -- 2. no hang lasts for ever ---------------------------------------------------------------------------


def test_a_backend_sleeping_for_ever_is_its_hang_and_shrinking_is_bounded_too(tmp_path):
    # SIGALRM is honoured: the stream's limit stops it; the leak's shrink runs must stop too.
    proc = campaign(tmp_path, "mis-sleep", timeout=90)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_culprit_and_leak(report_of(tmp_path), "mis-sleep", kind="hang")


@pytest.fixture(scope="module")
def first_night(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The campaign of TestABackendIgnoringSigalrm: it starts with an empty ``--corpus``, which
    it only writes at its end, so it is the campaign the class's first test is about."""
    tmp = tmp_path_factory.mktemp("noalarm")
    return tmp, campaign(tmp, "mis-noalarm", "--corpus", str(tmp / "corpus"), timeout=120, n_streams=1)


class TestABackendIgnoringSigalrm:
    """One stream: each that meets the backend costs the watchdog's limit and an isolation,
    seconds of waiting.  Both tests read one first night (under xdist a class stays on one
    worker, tests/conftest.py)."""

    def test_a_backend_ignoring_sigalrm_is_killed_by_the_watchdog(self, first_night):
        tmp, proc = first_night
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = report_of(tmp)
        assert report["streams"] == 1
        hung = assert_culprit_and_leak(report, "mis-noalarm", kind="hang")
        assert hung["class"] == "worker-killed"
        assert report["worker_deaths"] and report["worker_deaths"][0]["backends"] == ["mis-noalarm"]

    def test_a_corpus_reproducer_that_hangs_its_worker_is_bounded_too(self, tmp_path, first_night):
        tmp, first = first_night
        assert first.returncode == 1, first.stdout + first.stderr
        corpus = tmp_path / "corpus"
        shutil.copytree(tmp / "corpus", corpus)
        # the next night replays the corpus first: the hanging backend's reproducer among it
        again = campaign(tmp_path, "mis-noalarm", "--corpus", str(corpus), n_streams=1, out="r2", timeout=90)
        assert again.returncode == 1, again.stdout + again.stderr
        report = report_of(tmp_path, "r2")
        assert report["streams"] == 1 and report["corpus"]["replayed"] >= 2
        assert_culprit_and_leak(report, "mis-noalarm", kind="hang")


def test_a_stream_run_off_the_main_thread_has_its_time_limit_too():
    """A Dask worker runs streams in a thread of its own, where there is no SIGALRM: a
    timer's exception stops the looping backend at its op, as the alarm does."""
    import threading

    from difftest.harness import Harness
    from difftest.plugins import PluginHost
    from difftest.streams import loads

    sys.path.insert(0, str(PLUGINS))
    try:
        host = PluginHost()
        host.load(["broken_backends"])
    finally:
        sys.path.remove(str(PLUGINS))
    harness = Harness.from_registry(host.registry, ["alpha-ref", "bug-hang"], "alpha-ref")
    results = []
    worker = threading.Thread(target=lambda: results.append(harness.run(loads(protect_stream()), time_limit=0.5)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and results
    (hang,) = [d for d in results[0].divergences if d.backend == "bug-hang"]
    assert (hang.kind, hang.op_kind) == ("hang", "protect") and "time limit of 0.5 s" in hang.message
    assert not [d for d in results[0].divergences if d.backend == "alpha-ref"]


def test_replay_has_a_stream_timeout(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(protect_stream())
    proc = difftest(tmp_path, "replay", "--json", "--stream-timeout", "0.5",
                    "--backends", "alpha-ref,arm32-refcount,mis-sleep", str(path), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (entry,) = json.loads(proc.stdout)["divergences"]
    assert (entry["backend"], entry["kind"]) == ("mis-sleep", "hang")


# -- 3. the run directory is owned ------------------------------------------------------------------------


def builtin_campaign(tmp_path: Path, out: str, *extra: str, timeout: float = 120):
    return run_difftest("fuzz", "--no-progress", "--out", str(tmp_path / out), "--ops-per-stream", "300",
                        "--seed", "7", "--workers", "1", "--stream-timeout", "5", "--shrink-budget", "2",
                        *extra, env=clean_env(), cwd=tmp_path, timeout=timeout)


def test_a_second_campaign_or_resume_on_a_directory_in_use_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-c", CONSOLE_SCRIPT, "fuzz", "--no-progress", "--out", str(out), "--streams", "100000",
         "--workers", "1", "--seed", "1"],
        env=clean_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "journal.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "journal.jsonl").exists(), "the first campaign never started"
        resumed = run_difftest("fuzz", "--no-progress", "--resume", str(out), env=clean_env(), cwd=tmp_path)
        again = run_difftest("fuzz", "--no-progress", "--out", str(out), "--streams", "1", env=clean_env(),
                             cwd=tmp_path)
        for proc in (resumed, again):
            assert proc.returncode == 2, proc.stdout + proc.stderr
            (error,) = [line for line in proc.stderr.splitlines() if line.startswith("difftest: error")]
            assert f"in use by another campaign (pid {first.pid})" in error and "Traceback" not in proc.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_duplicated_journal_records_are_counted_once(tmp_path):
    proc = builtin_campaign(tmp_path, "out", "--streams", "3")
    assert proc.returncode == 0, proc.stderr
    journal = tmp_path / "out" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    records = [line for line in lines if '"k"' in line]
    journal.write_text("".join(records + records + lines[len(records):]))  # a double resume's journal
    # ... in a directory of before summaries (two sessions could write it only before the lock)
    (tmp_path / "out" / "summary.json").unlink()
    merged = run_difftest("merge", str(tmp_path / "out"), "--out", str(tmp_path / "m"), env=clean_env(), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    report, original = report_of(tmp_path, "m"), report_of(tmp_path)
    assert report["streams"] == 3 and report["ops"] == original["ops"]
    assert [e["count"] for e in report["divergences"]] == [e["count"] for e in original["divergences"]]


# -- 4. --resume keeps the campaign's budget and time ---------------------------------------------------------


def test_resume_keeps_the_budget_and_the_killed_sessions_time(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSOLE_SCRIPT, "fuzz", "--no-progress", "--out", str(out), "--budget", "4s",
         "--ops-per-stream", "300", "--workers", "1", "--seed", "2", "--shrink-budget", "1"],
        env=clean_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(records) >= 3 and not (out / "report.json").exists()
    # the journal says how long the campaign had run when each stream was committed
    killed_at = max(r["at"] for r in records)
    assert killed_at > 0
    resumed = run_difftest("fuzz", "--no-progress", "--resume", str(out), env=clean_env(), cwd=tmp_path,
                           timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    timing = report_of(tmp_path)["timing"]
    assert timing["budget"] == 4.0  # the campaign's own, not the default
    assert timing["elapsed"] >= killed_at  # the killed session's time is not lost


# -- 5. merge refuses inconsistent shard sets ---------------------------------------------------------------


def test_merge_refuses_duplicate_overlapping_and_foreign_shards_and_names_missing_ones(tmp_path):
    base = ["--streams", "6", "--shrink-budget", "1"]
    runs = {"s0": [*base, "--shard", "0/3"], "s1": [*base, "--shard", "1/3"],
            "seed": [*base, "--shard", "2/3", "--seed", "8"],
            "pages": [*base, "--shard", "2/3", "--phys-pages", "4096"],
            "half": [*base, "--shard", "1/2"]}
    for out, args in runs.items():
        proc = builtin_campaign(tmp_path, out, *args)
        assert proc.returncode == 0, proc.stderr

    def merge(*dirs: str):
        return run_difftest("merge", *(str(tmp_path / d) for d in dirs), "--out", str(tmp_path / "m"),
                            env=clean_env(), cwd=tmp_path)

    for dirs, named, words in [(("s0", "s0"), "s0", "twice"), (("s0", "seed"), "seed", "seed"),
                               (("s0", "pages"), "pages", "phys_pages"), (("s0", "half"), "half", "shard")]:
        proc = merge(*dirs)
        assert proc.returncode == 2, (dirs, proc.stdout + proc.stderr)
        (error,) = proc.stderr.splitlines()
        assert str(tmp_path / named) in error and words in error, error
    partial = merge("s0", "s1")
    assert partial.returncode == 0, partial.stderr
    report = report_of(tmp_path, "m")
    assert report["campaign"]["shards_missing"] == [2] and report["campaign"]["shard"] == "0+1/3"
    assert "missing shard 2 of 3" in partial.stderr
    assert report["streams"] == 4  # streams 0, 1, 3, 4: each once


# -- 6. a machine too small for a backend's bootstrap is not a divergence --------------------------------------


def test_too_few_frames_for_the_bootstrap_is_allowed_not_a_crash(tmp_path):
    # 13 data pages of 16: arm32's bootstrap (its kernel L1 table, 4 frames) cannot fit.
    ops = tuple(IsModified(pa * 0x1000) for pa in range(13))
    path = tmp_path / "small.json"
    path.write_text(dumps(Stream(ops, 16, {})))
    proc = run_difftest("replay", "--json", str(path), env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["divergences"] == []


def test_out_of_memory_at_bootstrap_with_free_frames_is_still_a_crash():
    from difftest.harness import Harness
    from difftest.machine import OutOfMemory
    from difftest.plugins import PluginHost

    host = PluginHost()
    host.load(())
    real = host.registry.backends["arm32-refcount"]

    def liar(pool):  # frames are free, yet it says there are none
        raise OutOfMemory("none left, it says")

    spec = dataclasses.replace(real, name="liar", factory=liar)
    result = Harness([host.registry.backends["alpha-ref"], spec]).run(Stream((IsModified(0),), 64, {}))
    (d,) = result.divergences
    assert (d.backend, d.kind, d.op_kind, d.cls) == ("liar", "crash", "bootstrap", "OutOfMemory")


# -- 7. bad files, special files --------------------------------------------------------------------------------


def test_devices_and_oversized_stream_files_are_refused_unread(tmp_path):
    for device in ("/dev/zero", "/dev/urandom"):
        proc = run_difftest("validate", device, env=clean_env(), cwd=tmp_path, timeout=30)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{device}: not a regular file" in proc.stderr
    path = tmp_path / "s.json"
    path.write_text(protect_stream())
    size = path.stat().st_size
    env = clean_env(DIFFTEST_MAX_STREAM_BYTES=str(size - 1))
    for command in (["validate"], ["replay"], ["shrink", "--signature", "x", "-o", str(tmp_path / "o.json")]):
        proc = run_difftest(*command, str(path), env=env, cwd=tmp_path, timeout=30)
        assert proc.returncode == 2, (command, proc.stdout + proc.stderr)
        assert f"larger than the limit of {size - 1} bytes (DIFFTEST_MAX_STREAM_BYTES)" in proc.stderr
    assert run_difftest("validate", str(path), env=clean_env(DIFFTEST_MAX_STREAM_BYTES=str(size)),
                        cwd=tmp_path).returncode == 0


def test_one_nesting_limit_in_validate_replay_and_shrink(tmp_path):
    text = protect_stream()
    assert '"origin": {}' in text
    path = tmp_path / "deep.json"  # an origin 983 objects deep (json.dumps cannot write it)
    path.write_text(text.replace('"origin": {}', '"origin": ' + '{"o": ' * 982 + "{}" + "}" * 982))
    for command in (["validate"], ["replay"], ["shrink", "--signature", "x", "-o", str(tmp_path / "o.json")]):
        proc = run_difftest(*command, str(path), env=clean_env(), cwd=tmp_path, timeout=30)
        assert proc.returncode == 2, (command, proc.stdout + proc.stderr)
        assert "field 'origin' is nested deeper than 64 levels" in proc.stderr, (command, proc.stderr)


def _unsummarised(d: Path, journal: bytes) -> None:
    """A journal of a campaign with no summary (read whole)."""
    (d / "summary.json").unlink()
    (d / "journal.jsonl").write_bytes(journal)


def _appended(d: Path, line: str) -> None:
    with open(d / "journal.jsonl", "a") as f:
        f.write(line)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """A one-stream campaign that finished cleanly: the damage tests each damage a copy."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = builtin_campaign(tmp, "out", "--streams", "1")
    assert proc.returncode == 0, proc.stderr
    return tmp / "out"


@pytest.mark.parametrize("damage, words", [
    (lambda d: _unsummarised(d, b'{"k": 0}\n'), "journal.jsonl:1: record lacks"),
    (lambda d: _unsummarised(d, b'{"k": 0, "seed": "\xff"}\n'), "journal.jsonl: not UTF-8"),
    (lambda d: _unsummarised(d, b'{"k": 0, "ops": 5, "hits": [[0, 1]]}\n{"k": 1}\n'),
     "journal.jsonl:1: record's hit 0 names no signature declared before"),
    (lambda d: _appended(d, '{"k": 7}\n{"k": 8}\n'), "journal.jsonl:3: record lacks"),  # past the summary
    (lambda d: _appended(d, '{"k": 7, "ops": 1, "hits": [], "death": {"backends": 3}}\n'),
     "journal.jsonl:3: record's 'death' is not an object"),
    (lambda d: (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()),
                                                          "worker_deaths": 5})),
     "summary.json: not a campaign summary"),
    (lambda d: (d / "journal.jsonl").write_text('{"k": 0}\n'), "journal.jsonl does not continue"),
    (lambda d: (d / "summary.json").write_text("{garbage"), "summary.json: not a campaign summary"),
    (lambda d: (d / "corpus" / "junk.record.json").write_text("{garbage"), "junk.record.json: not a corpus record"),
])
def test_damaged_journal_and_corpus_are_bad_input_naming_file_and_line(tmp_path, clean_run, damage, words):
    shutil.copytree(clean_run, tmp_path / "out")  # a damaged copy of its own
    damage(tmp_path / "out")
    for command in (["merge", str(tmp_path / "out"), "--out", str(tmp_path / "m")],
                    ["fuzz", "--no-progress", "--resume", str(tmp_path / "out")]):
        proc = run_difftest(*command, env=clean_env(), cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stdout + proc.stderr)
        (error,) = [line for line in proc.stderr.splitlines() if line.startswith("difftest: error")]
        assert words in error, error


# -- 8. reports trust no input ------------------------------------------------------------------------------------


MAPS = {("plots", "reproducers"), ("plots", "coverage", "op_kinds"), ("plots", "coverage", "depth"),
        ("coverage", "features")}  # keys are data: like a list's items, the first two stand for all


def _leaves(doc, path=()):
    """Every (path, value) of a JSON document, objects and lists included (of lists and
    maps, the first two items)."""
    yield path, doc
    if isinstance(doc, dict):
        for key, value in list(doc.items())[:2] if path in MAPS else doc.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:2]):
            yield from _leaves(value, (*path, i))


def _set(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "empty.toml").write_text("")
    proc = builtin_campaign(tmp, "out", "--streams", "2", "--baseline", str(tmp / "empty.toml"))
    assert proc.returncode == 1, proc.stderr
    return tmp / "out"


@pytest.fixture(scope="module")
def real_report(real_run):
    return json.loads((real_run / "report.json").read_text())


def test_report_refuses_a_damaged_document_naming_the_field_never_a_crash(tmp_path, real_report, capsys):
    from difftest.cli import main

    paths = [p for p, _ in _leaves(real_report) if p and p[0] not in ("tool",)]
    assert len(paths) > 60
    run = tmp_path / "run"
    run.mkdir()
    refused = 0
    for path in paths:
        for n, bad in enumerate((None, "x", -1, 2**70, [], {"x": 1})):
            doc = _set(real_report, path, bad)
            (run / "report.json").write_text(json.dumps(doc))
            for fmt in (("text", "markdown", "junit")[n % 3],):  # each writer sees each field damaged
                code = main(["report", str(run), "--format", fmt, "-o", str(tmp_path / "r.out")])
                out, err = capsys.readouterr()
                assert code in (0, 2), (path, bad, fmt, err)
                if code == 2:
                    (line,) = err.splitlines()
                    assert "report.json: not a difftest.report/1 document" in line, (path, bad, line)
                    refused += 1
    assert refused


@pytest.mark.parametrize("path, bad, field", [
    (("campaign", "ops_per_stream"), 2**70, "campaign.ops_per_stream"),
    (("divergences", 0, "first_stream", "index"), "x", "divergences[0].first_stream.index"),
    (("divergences", 0, "reproducer", "ops"), 5, "divergences[0].reproducer"),
    (("timing", "first_hits", 0), 5, "timing.first_hits[0]"),
])
def test_html_report_of_a_damaged_document_is_exit_2_naming_the_field(tmp_path, real_report, path, bad, field):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(_set(real_report, path, bad)))
    proc = run_difftest("report", str(run), "--format", "html", "-o", str(tmp_path / "r.html"), env=clean_env(),
                        cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr


@pytest.fixture
def nothing_runs(monkeypatch):
    """Running a backend (the harness, a backend's factory), calling a generator, generating
    a campaign's stream or recording plot data (what only a campaign does) fails the test."""
    from difftest import backend, campaign, plotdata
    from difftest.harness import Harness
    from difftest.plugins import PluginHost

    def forbidden(*args, **kwargs):
        raise AssertionError("a report ran a backend or generated a stream")

    def load(self, *args, **kwargs):
        registry = load_plugins(self, *args, **kwargs)
        for kind in (registry.generators, registry.backends):
            for name, spec in kind.items():
                field = "generate" if isinstance(spec, backend.GeneratorSpec) else "factory"
                kind[name] = dataclasses.replace(spec, **{field: forbidden})
        return registry

    load_plugins = PluginHost.load
    monkeypatch.setattr(PluginHost, "load", load)
    for module, name in ((Harness, "run"), (campaign, "make_stream"), (campaign, "run_unit"),
                         (plotdata, "record")):
        monkeypatch.setattr(module, name, forbidden)


def _render_html(tmp_path, report, capsys) -> str:
    from difftest.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(report))
    code = main(["report", str(run), "--format", "html", "-o", str(tmp_path / "r.html")])
    assert code == 0, capsys.readouterr().err
    return (tmp_path / "r.html").read_text()


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


def test_html_draws_the_recorded_plots_and_runs_nothing(tmp_path, real_report, nothing_runs, capsys):
    doc = _set(real_report, ("campaign", "ops_per_stream"), 2**30)
    page = _render_html(tmp_path, doc, capsys)
    long = doc["plots"]["long_stream"]
    shown = _section(page, "long")
    assert f"Stream {long['stream']} of the campaign (seed {long['seed']}, 300 ops)" in shown
    assert shown.count("<svg") == 2  # frames held/needed, frames freed: from the recorded series
    leaky = next(lane for lane in long["lanes"] if lane["backend"] == "arm32-leaky")
    assert f'<td class="num" style="color: var(--bad); font-weight: 600">{leaky["excess"]}</td>' in shown
    assert "<svg" in _section(page, "coverage") and "op kinds generated" in _section(page, "coverage")
    # each reproducer as the campaign traced it: its op table, the divergence at its op, its plot
    for i, e in enumerate(doc["divergences"], 1):
        card = page[page.index(f'id="d{i}"'):]
        card = card[:card.index("</div>\n")]
        traced = doc["plots"]["reproducers"][e["signature"]]
        assert card.count('<tr class="marked">') == len(traced["marks"]) >= 1 and "<svg" in card
        assert f"<strong>{e['kind']}: {e['class']}</strong>".replace(">needed", "&gt;needed") in card


def test_the_recorded_reproducer_rows_are_its_trace(real_run, real_report):
    from difftest.harness import Harness
    from difftest.ops import describe
    from difftest.plugins import PluginHost
    from difftest.streams import stream_from_json

    host = PluginHost()
    host.load(())
    leak = next(e for e in real_report["divergences"] if e["signature"] == LEAK)
    traced = real_report["plots"]["reproducers"][LEAK]
    stream = stream_from_json(leak["reproducer"])
    result = Harness.from_registry(host.registry, real_report["backends"], real_report["reference"],
                                   trace=True).run(stream)
    assert [r["index"] for r in traced["rows"]] == list(range(len(stream.ops))) == list(range(traced["ops"]))
    assert [r["op"] for r in traced["rows"]] == [describe(op) for op in stream.ops]
    assert traced["marks"] == [result.first(LEAK).op_index] and traced["reproduced"]
    for row in traced["rows"]:
        for backend, cell in zip(real_report["backends"], row["cells"]):
            held, needed, _ = result.trace[backend][row["index"]]
            assert (cell["held"], cell["needed"]) == (held, needed)
            assert [d["signature"] for d in cell["divergences"]] == [
                d.signature for d in result.divergences if d.backend == backend and d.op_index == row["index"]]


def test_html_of_a_report_without_plot_data_omits_those_plots_with_a_note(tmp_path, real_report, nothing_runs,
                                                                           capsys):
    from reports.html import NO_PLOT_DATA

    doc = dict(real_report)
    del doc["plots"]  # as written before campaigns recorded it
    page = _render_html(tmp_path, doc, capsys)
    for anchor in ("long", "coverage"):
        shown = _section(page, anchor)
        assert "<svg" not in shown and f"Not shown: {NO_PLOT_DATA}".replace("'", "&#39;") in shown, shown
    # the reproducers: their ops listed as the report holds them, with the same note
    assert page.count(f"reproducer not traced: {NO_PLOT_DATA}".replace("'", "&#39;")) == len(doc["divergences"])


def test_the_recorded_plot_data_is_the_campaigns_trace(real_run, real_report):
    """The long stream's series equal a trace of that stream taken here, by hand; the
    coverage counts the ops of the streams run."""
    from collections import Counter

    from difftest.campaign import read_campaign_meta
    from difftest.units import unit_seed
    from difftest.harness import Harness
    from difftest.plugins import PluginHost

    config, _ = read_campaign_meta(real_run)
    journal = [json.loads(line) for line in (real_run / "journal.jsonl").read_text().splitlines()]
    fresh = {e["k"] for e in journal if "k" in e and e.get("parent") is None}  # not feedback mutants
    assert fresh == {0, 1}
    host = PluginHost()
    host.load(())
    streams = {k: config.generate(host.registry.generators[config.generator], unit_seed(config.seed, k))
               for k in fresh}
    plots = json.loads((real_run / "plots.json").read_text())
    assert real_report["plots"] == plots and plots["notes"] == []
    long = plots["long_stream"]
    # the representative stream: where the leak (the first resource divergence) was first seen
    assert long["stream"] == min(e["first_stream"]["index"] for e in real_report["divergences"]
                                 if e["kind"] == "resource")
    assert long["step"] == 1 and long["ops"] == long["ops_total"] == 300  # 300 ops: one point per op
    result = Harness.from_registry(host.registry, config.backends, config.reference, trace=True).run(
        streams[long["stream"]])
    assert [lane["backend"] for lane in long["lanes"]] == list(config.backends)
    for lane in long["lanes"]:
        rows = result.trace[lane["backend"]]
        assert lane["held"] == [r[0] for r in rows] and lane["needed"] == [r[1] for r in rows]
        assert lane["over"] == [r[0] - r[1] for r in rows]
        assert sum(lane["freed"]) == lane["freed_total"] == rows[-1][2]
        assert lane["end_held"] == rows[-1][0] and lane["out_of_memory"] is None
    excess = {lane["backend"]: lane["excess"] for lane in long["lanes"]}
    assert excess["arm32-leaky"] > 0 and excess["alpha-ref"] == excess["arm32-refcount"] == 0
    cov = plots["coverage"]
    kinds = Counter(op.name for s in streams.values() for op in s.ops)
    assert (cov["streams"], cov["ops"], cov["op_kinds"]) == (2, 600, dict(kinds))
    assert cov["depth"]["pmaps_created"] == kinds["create"]


def test_merged_plot_data_is_the_shard_that_ran_the_stream_and_the_coverage_added_up(real_run):
    from difftest.plotdata import merge

    mine = json.loads((real_run / "plots.json").read_text())
    k = mine["long_stream"]["stream"]
    other = {"long_stream": {**mine["long_stream"], "stream": k + 1}, "coverage": mine["coverage"],
             "reproducers": {LEAK: {**mine["reproducers"][LEAK], "rows": []}}, "notes": []}
    both = merge([other, mine], k, {LEAK: 1})  # the leak's reproducer kept is the second shard's
    assert both["long_stream"] == mine["long_stream"] and both["notes"] == []
    assert both["reproducers"] == {LEAK: mine["reproducers"][LEAK]}
    cov = mine["coverage"]
    assert both["coverage"]["streams"] == 2 * cov["streams"] and both["coverage"]["ops"] == 2 * cov["ops"]
    assert both["coverage"]["op_kinds"] == {name: 2 * n for name, n in cov["op_kinds"].items()}
    assert both["coverage"]["depth"]["max_live_pmaps"] == cov["depth"]["max_live_pmaps"]  # a maximum
    assert both["coverage"]["depth"]["pmaps_created"] == 2 * cov["depth"]["pmaps_created"]  # a count
    # the shard that ran stream k recorded nothing (an older version): said, not made up
    lacking = merge([other, None], k)
    assert lacking["long_stream"] is None
    assert lacking["notes"] == ["1 shard(s) recorded no plot data", f"the long stream (stream {k}) was not "
                                "recorded by its shard"]


def test_the_plot_data_step_is_watched_like_any_task(tmp_path):
    """A worker recording plot data that hangs is killed at its limit, one that dies is
    seen dying: either way a note, never a campaign waiting for ever."""
    from difftest import campaign as C

    config = C.CampaignConfig(backends=("alpha-ref",), reference="alpha-ref", seed=1, streams=1)
    camp = C.Campaign(config, tmp_path / "out")
    for task, args, fate in ((time.sleep, (3600,), "hung"), (os._exit, (0,), "died")):
        executor = C.local_process_pool(1)
        try:
            assert camp._watched(executor, executor.submit(task, *args), 0.5) == (None, fate)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)  # returns: the hung worker was killed


@pytest.mark.parametrize("path, bad, field", [
    (("long_stream", "lanes", 0, "held"), list(range(10_000)), "plots.long_stream.lanes[0].held"),
    (("long_stream", "step"), 0, "plots.long_stream.step"),
    (("coverage",), [], "plots.coverage"),
])
def test_merge_refuses_a_damaged_plots_file_naming_it(tmp_path, real_run, path, bad, field):
    shutil.copytree(real_run, tmp_path / "s0")
    plots = json.loads((tmp_path / "s0" / "plots.json").read_text())
    (tmp_path / "s0" / "plots.json").write_text(json.dumps(_set(plots, path, bad)))
    proc = run_difftest("merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m"), env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("difftest: error")]
    assert "plots.json" in line and field in line, line


# -- check-backend: every call into the backend in a worker, bounded -------------------------------------------


def check_backend(tmp_path: Path, culprit: str, budget: str, *extra: str):
    proc = difftest(tmp_path, "check-backend", culprit, "--json", "--out", str(tmp_path / "o"), "--budget", budget,
                    "--check-timeout", "1", *extra)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # does not conform: one line of output, no traceback
    assert "Traceback" not in proc.stderr, proc.stderr
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


@pytest.mark.parametrize("culprit, reason", [
    ("mis-create-exit", "mis-create-exit crashed at bootstrap: SystemExit: 3"),
    ("mis-create-kbint", "mis-create-kbint crashed at bootstrap: KeyboardInterrupt"),
    ("mis-create-hardexit", "mis-create-hardexit ended its process (os._exit, a signal or the OOM killer) at bootstrap"),
], ids=["exit", "kbint", "hardexit"])  # a worker outliving its limit: the battery test below
def test_check_backend_names_a_backend_that_crashes_or_ends_its_process_at_bootstrap(tmp_path, culprit, reason):
    checks = check_backend(tmp_path, culprit, "5s")
    assert list(checks) == ["bootstrap"]
    assert (checks["bootstrap"]["outcome"], checks["bootstrap"]["reason"]) == ("FAIL", reason)


@pytest.mark.parametrize("culprit, reason, campaign", [
    # the campaign's one stream, whatever time the battery took (its workers die: slow on a loaded machine)
    ("mis-hardexit", "the process running this check died (os._exit, a signal or the OOM killer)", ("--streams", "1")),
    ("mis-noalarm", "the process running this check outlived its limit and was killed (a hang)", ()),
], ids=["hardexit", "noalarm"])
def test_check_backend_fails_the_checks_whose_worker_the_backend_ends_or_hangs(tmp_path, culprit, reason, campaign):
    checks = check_backend(tmp_path, culprit, "6s", *campaign)
    failed = {name: c["reason"] for name, c in checks.items() if c["outcome"] == "FAIL"}
    # the protect checks, each named; every other check of the battery ran and passed
    assert {n: r for n, r in failed.items() if not n.startswith("campaign")} == {
        "protect": reason, "page-protect-shared": reason}
    assert sum(c["outcome"] == "PASS" for c in checks.values()) == 12
    if culprit == "mis-hardexit":  # the campaign ran: the culprit's worker death is its row
        assert [n for n in failed if n.startswith("campaign")] == [
            "campaign:crash:mis-hardexit:stream:worker:worker-died"]


# -- 9. smaller ---------------------------------------------------------------------------------------------------


def test_plugin_prints_do_not_break_json_output(tmp_path):
    proc = campaign(tmp_path, "mis-print", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # printing is no divergence; the leak is known
    report = json.loads(proc.stdout)
    assert report["streams"] == 2 and {e["backend"] for e in report["divergences"]} == {"arm32-leaky"}
    assert "mis-print: enter" in proc.stderr  # shown, where it breaks nothing
    path = tmp_path / "s.json"
    path.write_text(protect_stream())
    replayed = difftest(tmp_path, "replay", "--json", "--backends", "alpha-ref,mis-print", str(path))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert json.loads(replayed.stdout)["divergences"] == []
    assert "mis-print: enter" in replayed.stderr


def test_a_backend_killing_its_worker_leaves_the_others_findings_minimised(tmp_path):
    proc = campaign(tmp_path, "mis-hardexit")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(tmp_path)
    assert report["streams"] == 2
    died = assert_culprit_and_leak(report, "mis-hardexit")  # the leak's reproducer: <= 3 ops
    assert died["class"] == "worker-died"
    assert {d["stream"] for d in report["worker_deaths"]} == {0, 1}
    assert all(d["backends"] == ["mis-hardexit"] for d in report["worker_deaths"])
    # the plot data recorded without it: its worker death untraced, the leak traced
    plots = report["plots"]
    assert plots["notes"] == [] and "mis-hardexit" not in [lane["backend"] for lane in plots["long_stream"]["lanes"]]
    assert LEAK in plots["reproducers"] and died["signature"] not in plots["reproducers"]


def test_ops_count_only_what_some_backend_ran(tmp_path):
    ops = (Create(), Enter(1, 0x10000, 0x5000, PROT_RW, 0, False, False), Remove(1, 0x10000, 0x11000),
           Enter(1, 0x10000, 0x5000, PROT_RW, 0, False, False), Enter(1, 0x20000, 0x6000, PROT_RW, 0, False, False))
    path = tmp_path / "s.json"
    path.write_text(dumps(Stream(ops, 64, {})))
    proc = difftest(tmp_path, "replay", "--json", "--backends", "mis-oom-remove", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ops"] == 3  # the only backend stopped at op 2: ops 3 and 4 ran nowhere


class _SlowClock:
    """``time`` for difftest.shrink as on a loaded machine: 0.1 s passes at every look."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.1
        return self.now

    def perf_counter(self) -> float:
        return self.monotonic()


def test_a_campaigns_shrink_is_the_same_on_a_loaded_machine(monkeypatch):
    from difftest import units as C
    from difftest import shrink as S

    config = C.CampaignConfig(backends=("alpha-ref", "arm32-leaky", "arm32-refcount"), reference="alpha-ref",
                              seed=11, ops_per_stream=400, shrink_budget=5.0)
    sig = "resource:arm32-leaky:protect:pt_frames:pt-frames-held>needed"  # about 60 runs to shrink
    assert sig in C.run_unit(C.UnitTask(config, 0)).hits
    task = C.ShrinkTask(config, sig, 0, backend="arm32-leaky", backends=("alpha-ref", "arm32-leaky"))
    idle = C.shrink_unit(task)
    monkeypatch.setattr(S, "time", _SlowClock())
    loaded = C.shrink_unit(task)
    assert idle.error is None and idle.stream_json["origin"]["shrink"]["complete"]
    assert loaded.stream_json == idle.stream_json


class _StalledClock(_SlowClock):
    """A machine so loaded that 1 s passes at every look."""

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_a_shrink_stopped_by_its_time_ceiling_says_so(monkeypatch):
    from difftest import units as C
    from difftest import shrink as S

    config = C.CampaignConfig(backends=("alpha-ref", "arm32-leaky"), reference="alpha-ref", seed=11,
                              ops_per_stream=400, shrink_budget=5.0)
    task = C.ShrinkTask(config, "resource:arm32-leaky:protect:pt_frames:pt-frames-held>needed", 0,
                        backend="arm32-leaky", backends=("alpha-ref", "arm32-leaky"))
    monkeypatch.setattr(S, "time", _StalledClock())
    stalled = C.shrink_unit(task)
    runs = stalled.stream_json["origin"]["shrink"]["runs"]
    assert not stalled.stream_json["origin"]["shrink"]["complete"] and runs < C.shrink_runs(config) == 100
    assert stalled.error == (f"stopped at its time ceiling (20 s) after {runs} of 100 runs (a loaded machine): "
                             "the same seed may shrink further elsewhere")


def test_a_bad_enter_result_is_one_divergence_not_a_cascade(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    proc = campaign(tmp_path, "mis-none-enter", "--baseline", str(tmp_path / "empty.toml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    mine = [e["signature"] for e in report_of(tmp_path)["divergences"] if e["backend"] == "mis-none-enter"]
    assert mine == ["result:mis-none-enter:enter:result:bad-enter-result"]

