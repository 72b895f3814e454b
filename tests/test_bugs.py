"""Bugs, not signatures (difftest/bugs.py), survival, and a corpus across nights: real
campaigns through the CLI on test-only broken backends (tests/plugins/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cliutil import clean_env, run_difftest
from difftest.bugs import Member, group, head_key

PLUGINS = Path(__file__).parent / "plugins"
LEAK_HEAD = "resource:arm32-leaky:*:pt_frames:pt-frames-held>needed"


def _div(kind: str, backend: str, op_kind: str, fld: str, cls: str, op_index: int = 2) -> dict:
    return {"signature": f"{kind}:{backend}:{op_kind}:{fld}:{cls}", "kind": kind, "backend": backend,
            "op_kind": op_kind, "field": fld, "class": cls, "op_index": op_index}


def _member(first: dict, head: list[dict] | None, k: int = 0, explained_by: str | None = None) -> Member:
    return Member(signature=first["signature"], first=first, first_k=k, first_seed=k, head=head,
                  explained_by=explained_by)


# -- grouping, hand-computed -------------------------------------------------------------------------


def test_the_leak_at_three_op_kinds_is_one_bug():
    members = [_member(d, [d], k) for k, d in enumerate(
        _div("resource", "arm32-leaky", op, "pt_frames", "pt-frames-held>needed") for op in ("remove", "protect", "page_protect"))]
    (bug,) = group(members)
    assert bug.head == LEAK_HEAD
    assert bug.signatures == [m.signature for m in members]


def test_op_kind_stays_where_it_distinguishes_causes():
    a = _div("translation", "b", "enter", "pa", "pa-mismatch")
    b = _div("translation", "b", "protect", "pa", "pa-mismatch")
    assert [bug.head for bug in group([_member(a, [a]), _member(b, [b], 1)])] == [
        "translation:b:enter:pa:pa-mismatch", "translation:b:protect:pa:pa-mismatch"]


def test_a_signature_whose_reproducer_starts_with_a_head_joins_that_bug():
    cause = _div("accounting", "b", "unwire", "wired_count", "count-high")
    later = _div("invariant", "b", "remove", "counts", "violated", op_index=5)
    other = _div("translation", "b", "remove", "mapping", "mapping-missing")
    # `later`'s minimised reproducer first diverges at unwire (the cause); `other`'s does not.
    bugs = group([_member(cause, [cause]), _member(later, [cause, later], 1), _member(other, [other], 2)])
    assert [(b.head, b.signatures) for b in bugs] == [
        ("accounting:b:unwire:wired_count:count-high", [cause["signature"], later["signature"]]),
        ("translation:b:remove:mapping:mapping-missing", [other["signature"]])]


def test_several_divergences_at_the_first_op_lead_by_kind_and_join_by_any():
    res = _div("resource", "b", "remove", "pt_frames", "pt-frames-held<needed")
    inv = _div("invariant", "b", "page_protect", "l1-slots", "violated")
    # Harness order put the invariant first: the resource divergence leads anyway.
    first = group([_member(inv, [res, inv])])
    assert first[0].head == "resource:b:*:pt_frames:pt-frames-held<needed"
    # A reproducer showing only the invariant at its first op joins the bug whose head op showed it.
    inv2 = _div("invariant", "b", "enter", "l1-slots", "violated")
    bugs = group([_member(res, [res, inv]), _member(inv2, [inv2], 1)])
    assert len(bugs) == 1 and bugs[0].signatures == [res["signature"], inv2["signature"]]


def test_an_explained_finding_joins_the_bug_that_explains_it():
    leak = _div("resource", "arm32-leaky", "remove", "pt_frames", "pt-frames-held>needed")
    oom = _div("resource", "arm32-leaky", "enter", "memory", "out-of-memory", op_index=4000)
    bugs = group([_member(leak, [leak]), _member(oom, None, 0, explained_by=leak["signature"])])
    assert len(bugs) == 1 and bugs[0].head == LEAK_HEAD and len(bugs[0].signatures) == 2
    assert head_key(oom) == "resource:arm32-leaky:*:memory:out-of-memory"  # alone, it would be its own bug


# -- campaigns ---------------------------------------------------------------------------------------


def fuzz(tmp_path: Path, *args: str, plugin: str = "broken_backends", timeout: float = 400):
    argv = ["-p", plugin, "fuzz", "--no-progress", *args]
    return run_difftest(*argv, env=clean_env([PLUGINS]), cwd=tmp_path, timeout=timeout)


@pytest.mark.slow
def test_bugs_at_several_op_kinds_are_one_bug_and_independent_bugs_stay_two(tmp_path):
    proc = fuzz(tmp_path, "--backends", "alpha-ref,bug-wiredcount,bug-two", "--streams", "4",
                "--ops-per-stream", "1500", "--seed", "3", "--workers", "2", "--shrink-budget", "5",
                "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by_backend: dict[str, list[dict]] = {}
    for bug in report["bugs"]:
        by_backend.setdefault(bug["backend"], []).append(bug)
    # The wired count bug surfaces at several op kinds, and as invariant breaks: one bug.
    (wired,) = by_backend["bug-wiredcount"]
    assert wired["head"] == "accounting:bug-wiredcount:unwire:wired_count:count-high"
    op_kinds = {s.split(":")[2] for s in wired["members"]}
    assert len(wired["members"]) >= 3 and len(op_kinds) >= 3, wired["members"]
    # Two independent bugs in one backend: two bugs.
    heads = sorted(b["head"] for b in by_backend["bug-two"])
    assert heads == ["attribute:bug-two:*:modified:mod-lost", "translation:bug-two:enter:pa:pa-mismatch"]
    # Every signature belongs to exactly one bug, and says which.
    members = [s for b in report["bugs"] for s in b["members"]]
    assert sorted(members) == sorted(e["signature"] for e in report["divergences"])
    assert all(e["bug"] in {b["head"] for b in report["bugs"]} for e in report["divergences"])
    assert report["summary"]["bugs"] == 3 == report["summary"]["failing_bugs"]
    # The terminal summary leads with bugs and fits 100 columns.
    assert "bug (head)" in proc.stdout and max(len(line) for line in proc.stdout.splitlines()) <= 100


@pytest.mark.slow
def test_three_nights_on_one_corpus_new_fixed_regressed(tmp_path):
    corpus = tmp_path / "corpus"
    common = ["--backends", "alpha-ref,bug-modloss", "--streams", "2", "--ops-per-stream", "400",
              "--workers", "1", "--shrink-budget", "3", "--corpus", str(corpus)]
    night1 = fuzz(tmp_path, *common, "--seed", "1", "--out", str(tmp_path / "n1"))
    assert night1.returncode == 1, night1.stdout + night1.stderr
    r1 = json.loads((tmp_path / "n1" / "report.json").read_text())
    (bug,) = r1["bugs"]
    assert bug["status"] == "new" and bug["head"] == "attribute:bug-modloss:*:modified:mod-lost"
    assert r1["corpus"]["entries"] == 0 and r1["corpus"]["added"] == 1
    assert len(list(corpus.glob("*.stream.json"))) == 1 and len(list(corpus.glob("*.record.json"))) == 1

    # Night 2: the same backend name, fixed (another plugin module), and a seed whose random
    # streams say nothing: the bug is fixed because its reproducer ran clean.
    night2 = fuzz(tmp_path, *common, "--seed", "2", "--out", str(tmp_path / "n2"), "--compare", str(tmp_path / "n1"),
                  plugin="fixed_backends")
    assert night2.returncode == 0, night2.stdout + night2.stderr
    r2 = json.loads((tmp_path / "n2" / "report.json").read_text())
    assert [(b["head"], b["status"]) for b in r2["bugs"]] == [(bug["head"], "fixed")]
    assert r2["corpus"] == {"path": str(corpus), "entries": 1, "replayed": 1, "diverged": 0, "not_run": [], "added": 0}
    assert r2["summary"]["fixed_bugs"] == 1 and r2["divergences"] == []
    # fuzz --compare: the signature lifecycle on top, in the report it writes
    assert [f["signature"] for f in r2["lifecycle"]["fixed"]] == bug["members"]
    record = json.loads(next(corpus.glob("*.record.json")).read_text())
    assert record["status"] == "fixed"

    # Night 3: broken again.
    night3 = fuzz(tmp_path, *common, "--seed", "3", "--out", str(tmp_path / "n3"))
    assert night3.returncode == 1, night3.stdout + night3.stderr
    r3 = json.loads((tmp_path / "n3" / "report.json").read_text())
    assert [(b["head"], b["status"]) for b in r3["bugs"]] == [(bug["head"], "regressed")]
    assert json.loads(next(corpus.glob("*.record.json")).read_text())["status"] == "open"
    assert "regressed" in night3.stdout

    # A night without the bug's backend does not judge it.
    night4 = fuzz(tmp_path, "--backends", "alpha-ref,arm32-refcount", "--streams", "1", "--ops-per-stream", "200",
                  "--workers", "1", "--corpus", str(corpus), "--seed", "4", "--out", str(tmp_path / "n4"))
    assert night4.returncode == 0, night4.stdout + night4.stderr
    r4 = json.loads((tmp_path / "n4" / "report.json").read_text())
    assert r4["corpus"]["not_run"] == [{"head": bug["head"], "backend": "bug-modloss"}] and r4["bugs"] == []
    # validate takes the corpus's stream files alone
    check = run_difftest("validate", *map(str, corpus.glob("*.stream.json")), env=clean_env(), cwd=tmp_path)
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
def test_replay_honours_the_baseline(tmp_path):
    repro = tmp_path / "leak.stream.json"
    repro.write_text(json.dumps({"format": "difftest.stream/1", "machine": {"phys_pages": 64}, "ops": [
        {"op": "create"},
        {"op": "enter", "pmap": 1, "va": "0x00400000", "pa": "0x00020000", "prot": "rw", "access": "",
         "wired": False, "canfail": False},
        {"op": "remove", "pmap": 1, "sva": "0x00400000", "eva": "0x00401000"}]}))
    proc = run_difftest("replay", str(repro), env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "known (PR port-arm32/5666" in proc.stdout
    strict = run_difftest("replay", "--strict", str(repro), env=clean_env(), cwd=tmp_path)
    assert strict.returncode == 1
    (tmp_path / "empty.toml").write_text("")
    unknown = run_difftest("replay", "--baseline", str(tmp_path / "empty.toml"), "--json", str(repro),
                           env=clean_env(), cwd=tmp_path)
    assert unknown.returncode == 1
    (entry,) = json.loads(unknown.stdout)["divergences"]
    assert entry["known"] is False and entry["signature"] == "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"


@pytest.mark.slow
def test_a_backend_that_runs_out_of_memory_where_the_reference_survives(tmp_path):
    # The pager's processes in a 4 MiB machine: the leaky pmap runs out of page-table frames.
    proc = run_difftest("fuzz", "--no-progress", "--generator", "pager", "--phys-pages", "1024",
                        "--ops-per-stream", "3000", "--streams", "2", "--seed", "1", "--workers", "2",
                        "--shrink-budget", "3", "--out", str(tmp_path / "out"), env=clean_env(), cwd=tmp_path,
                        timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    surv = report["survival"]
    assert surv["arm32-leaky"]["out_of_memory"] >= 1 and surv["arm32-leaky"]["streams"] == 2
    assert isinstance(surv["arm32-leaky"]["first_out_of_memory_op"], int)
    for name in ("alpha-ref", "arm32-refcount"):
        assert surv[name] == {"streams": 2, "out_of_memory": 0, "first_out_of_memory_op": None}
    ooms = [e for e in report["divergences"] if e["class"] == "out-of-memory"]
    assert ooms and all(e["backend"] == "arm32-leaky" for e in ooms)
    assert ooms[0]["first"]["explained_by"].startswith("resource:arm32-leaky:")
    # It is the leak's finding: one bug, known by the baseline.
    (bug,) = report["bugs"]
    assert bug["head"] == LEAK_HEAD and bug["status"] == "known" and ooms[0]["signature"] in bug["members"]
    assert "survival: arm32-leaky: out of memory in" in proc.stdout
    assert "survival: alpha-ref: survived all 2 streams" in proc.stdout


# -- paper cuts of a nightly -----------------------------------------------------------------------------


@pytest.mark.slow
def test_clean_run_files_respect_the_umask_and_junit_is_not_empty(tmp_path):
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from cliutil import CONSOLE_SCRIPT

    out = tmp_path / "clean"
    proc = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "fuzz", "--no-progress", "--backends",
                           "alpha-ref,arm32-refcount", "--streams", "1", "--ops-per-stream", "100", "--workers", "1",
                           "--out", str(out), "--report", "junit", "--report", "html", "--report", "text"],
                          env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("report.json", "report.html", "report.xml", "report.txt", "campaign.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    suite = ET.parse(out / "report.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["alpha-ref", "arm32-refcount"] and suite.get("failures") == "0"
    assert "survived all 1 streams" in cases[0].find("system-out").text


@pytest.mark.slow
def test_failed_starts_resume_conflicts_and_the_reference_are_said(tmp_path):
    # a budget too small to run one stream: exit 5, and no directory left behind
    tiny = run_difftest("fuzz", "--no-progress", "--budget", "0.001s", env=clean_env(), cwd=tmp_path)
    assert tiny.returncode == 5 and not (tmp_path / "difftest-out").exists()
    # alpha-ref not listed: the reference it falls back to is announced
    run = run_difftest("fuzz", "--no-progress", "--backends", "arm32-refcount,arm32-leaky", "--streams", "1",
                       "--ops-per-stream", "100", "--workers", "1", "--out", str(tmp_path / "r"),
                       env=clean_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "reference arm32-refcount: alpha-ref is not among the backends" in run.stderr
    # --resume with options that would make another campaign: refused, one line, exit 2
    for extra, needle in ((["--backends", "alpha-ref"], "--backends"), (["--seed", "99"], "--seed"),
                          (["--budget", "5s"], "exactly 1 streams")):
        proc = run_difftest("fuzz", "--no-progress", "--resume", str(tmp_path / "r"), *extra, env=clean_env(),
                            cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    # shrink takes durations like fuzz
    bad = run_difftest("shrink", "x.json", "-o", "y.json", "--budget", "5x", env=clean_env(), cwd=tmp_path)
    assert bad.returncode == 2 and "5x" in bad.stderr


def test_progress_words():
    from difftest.cli_fuzz import progress_text

    state = {"streams": 12, "ops": 24000, "elapsed": 80.0, "new": 1, "known": 2, "crashes": 1, "hangs": 0,
             "last_new": 50.0, "budget": 300.0}
    assert progress_text(state) == ("12 streams, 01:20 of 05:00, ETA 03:40; 300 ops/s, new 1, known 2; "
                                    "crashes 1, hangs 0; last new find 00:30 ago")
    # with --streams (no budget) the bar counts streams itself; a slow rate keeps its unit
    slow = dict(state, budget=None, ops=3, last_new=None)
    assert progress_text(slow) == "0 ops/s, new 1, known 2; crashes 1, hangs 0; no find yet"
