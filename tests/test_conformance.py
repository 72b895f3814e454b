"""``difftest check-backend``: the built-in backends conform (the leak of arm32-leaky an
expected failure), each test-only broken backend fails the check that covers its bug, and
the command prints a table, writes replayable streams and exits 0 / 1 / 2."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cliutil import assert_one_line_error, clean_env, run_difftest
from difftest.conformance import CHECKS, FAIL, PASS, XFAIL, XPASS, Conformance, capabilities_of, check_named
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK, EXIT_USAGE
from difftest.plugins import PluginHost

PLUGINS = Path(__file__).parent / "plugins"
LEAK_CLASS = "pt-frames-held>needed"


def battery(registry, name: str, **kw) -> dict[str, object]:
    conf = Conformance(registry, name, **kw)
    return {check.name: conf.run(check) for check in CHECKS}


@pytest.mark.parametrize("name", ["alpha-ref", "arm32-refcount", "alpha-ref-4m"])
def test_builtin_backend_passes_every_check(registry, name):
    rows = battery(registry, name)
    assert {n: r.outcome for n, r in rows.items() if r.outcome != PASS} == {}
    assert all(r.ops > 5 for r in rows.values())


def test_leaky_backend_conforms_with_the_leak_as_expected_failure(registry):
    assert capabilities_of(registry.backends["arm32-leaky"]) == {"frees_pt_pages": False}
    rows = battery(registry, "arm32-leaky")
    outcomes = {n: r.outcome for n, r in rows.items()}
    assert FAIL not in outcomes.values()
    assert outcomes["frees-pt-pages-on-remove"] == XFAIL
    assert outcomes["create-reference-destroy"] == PASS  # nothing emptied before destroy
    assert outcomes["kenter-kremove"] == PASS  # the kernel pmap keeps its PT pages anyway
    for row in rows.values():
        if row.outcome == XFAIL:
            assert row.expected and all(s.endswith(LEAK_CLASS) for s in row.expected)
            assert "frees_pt_pages = False" in row.reason
    # the first expected divergence of the remove check is the remove that empties the table
    first = rows["frees-pt-pages-on-remove"].first
    assert (first.op_index, first.op_kind) == (2, "remove")


def test_without_the_capability_declared_the_leak_fails(registry):
    leaky = registry.backends["arm32-leaky"]

    class Undeclared(leaky.factory):  # the same leak, claiming to free PT pages
        name = "leaky-undeclared"
        frees_pt_pages = True

    registry.backends["leaky-undeclared"] = type(leaky)(
        "leaky-undeclared", Undeclared, leaky.geometry)
    try:
        rows = battery(registry, "leaky-undeclared")
    finally:
        del registry.backends["leaky-undeclared"]
    assert rows["frees-pt-pages-on-remove"].outcome == FAIL
    assert rows["frees-pt-pages-on-remove"].first.signature.endswith(LEAK_CLASS)


def test_capability_declared_missing_but_present_is_an_unexpected_pass(registry):
    fixed = registry.backends["arm32-refcount"]

    class Modest(fixed.factory):
        frees_pt_pages = False

    registry.backends["modest"] = type(fixed)("modest", Modest, fixed.geometry)
    try:
        row = Conformance(registry, "modest").run(check_named("frees-pt-pages-on-remove"))
    finally:
        del registry.backends["modest"]
    assert row.outcome == XPASS and "frees_pt_pages = False" in row.reason


# Each test-only bug, the check written for it, and the kind of divergence it shows.
BUGS = [
    ("bug-wrongpa", "enter-replace", "translation"),
    ("bug-wrongpa-once", "enter-replace", "translation"),
    ("bug-modloss", "ref-mod", "attribute"),
    ("bug-wiredcount", "unwire", "accounting"),
    ("bug-enomem-trace", "enomem-canfail", "accounting"),
    ("bug-protect-raises", "protect", "crash"),
    ("bug-ptfree", "enter-remove-across-table-edges", "resource"),
    ("bug-extra", "enter-extract-remove", "accounting"),
]


@pytest.mark.parametrize(("name", "check", "kind"), BUGS, ids=[b[0] for b in BUGS])
def test_broken_backend_fails_the_check_for_its_bug(registry, name, check, kind):
    conf = Conformance(registry, name)
    row = conf.run(check_named(check))
    assert row.outcome == FAIL
    assert row.first.backend == name and row.first.kind == kind
    assert row.first.op_kind == row.stream.ops[row.first.op_index].name


def test_broken_backend_passes_the_checks_that_do_not_reach_its_bug(registry):
    rows = battery(registry, "bug-wiredcount")
    assert {n for n, r in rows.items() if r.outcome == FAIL} == {"unwire"}
    rows = battery(registry, "bug-protect-raises")
    assert {n for n, r in rows.items() if r.outcome == FAIL} == {"protect"}


# -- the command --------------------------------------------------------------------------------


def check_cmd(tmp_path: Path, *args: str, plugins: bool = False, timeout: float = 180):
    env = clean_env([PLUGINS] if plugins else ())
    argv = ["check-backend", *args]
    if plugins:
        argv = ["-p", "broken_backends", *argv]
    return run_difftest(*argv, env=env, cwd=tmp_path, timeout=timeout)


@pytest.mark.slow
def test_check_backend_command_on_the_leaky_backend(tmp_path):
    # one campaign stream, whatever time the battery left (--budget alone: none on a loaded machine)
    proc = check_cmd(tmp_path, "arm32-leaky", "--budget", "8s", "--streams", "1", "--out", "o")
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "check-backend arm32-leaky (reference alpha-ref; frees_pt_pages = False)"
    rows = {line.split()[0]: line.split()[1] for line in lines[3:] if line and line.split()[0] in
            {c.name for c in CHECKS}}
    assert rows["frees-pt-pages-on-remove"] == "XFAIL" and rows["protect"] == "PASS"
    assert any(line.startswith("campaign:resource:arm32-leaky:") and " XFAIL " in line for line in lines)
    assert lines[-1].startswith("arm32-leaky conforms:")
    doc = json.loads((tmp_path / "o" / "check.json").read_text())
    assert doc["format"] == "difftest.check/1" and doc["conforming"] is True
    assert {c["name"] for c in doc["checks"]} >= {c.name for c in CHECKS}
    for check in CHECKS:  # every check's stream is there, valid and replayable
        assert (tmp_path / "o" / "checks" / f"{check.name}.stream.json").is_file()


@pytest.mark.slow
def test_check_backend_command_on_a_broken_backend(tmp_path):
    proc = check_cmd(tmp_path, "bug-wiredcount", "--budget", "4s", "--out", "o", "--json", plugins=True)
    assert proc.returncode == EXIT_DIVERGENCES, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["conforming"] is False
    failed = [c for c in doc["checks"] if c["outcome"] == FAIL]
    assert failed[0]["name"] == "unwire"
    assert failed[0]["first"]["signature"] == "accounting:bug-wiredcount:unwire:wired_count:count-high"
    # the replay command it prints reproduces the divergence
    replay = shlex.split(failed[0]["replay"])
    assert replay[:4] == ["difftest", "-p", "broken_backends", "replay"]
    again = run_difftest(*replay[1:], "--json", env=clean_env([PLUGINS]), cwd=tmp_path)
    assert again.returncode == EXIT_DIVERGENCES
    assert failed[0]["first"]["signature"] in {d["signature"] for d in json.loads(again.stdout)["divergences"]}


@pytest.mark.slow
def test_a_hang_and_a_dying_process_fail_their_check_and_nothing_else(tmp_path):
    hang = check_cmd(tmp_path, "bug-hang", "--budget", "1s", "--check-timeout", "1", "--out", "h", "--json",
                     plugins=True)
    dead = check_cmd(tmp_path, "bug-exit", "--budget", "1s", "--out", "d", "--json", plugins=True)
    for proc, kind in ((hang, "hang"), (dead, None)):
        assert proc.returncode == EXIT_DIVERGENCES, proc.stdout + proc.stderr
        checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert [n for n, c in checks.items() if c["outcome"] == FAIL] == ["protect"]
        if kind:
            assert checks["protect"]["first"]["signature"].startswith("hang:bug-hang:protect")
        else:
            assert "process running this check died" in checks["protect"]["reason"]
        assert checks["campaign"]["outcome"] == "SKIP"


def test_a_backend_that_cannot_boot_fails_one_bootstrap_row(tmp_path):
    (tmp_path / "noboot.py").write_text(
        "import difftest\n"
        "from impls.alpha import AlphaPmap\n\n"
        "class NoBoot(AlphaPmap):\n"
        "    name = 'noboot'\n\n"
        "    def __init__(self, pool):\n"
        "        raise RuntimeError('no kernel pmap today')\n\n"
        "@difftest.hookimpl\n"
        "def difftest_register_backends(register):\n"
        "    register(NoBoot)\n")
    proc = run_difftest("check-backend", "noboot", "-p", "noboot", "--out", "o", "--json", env=clean_env(),
                        cwd=tmp_path)
    assert proc.returncode == EXIT_DIVERGENCES, proc.stderr
    (row,) = json.loads(proc.stdout)["checks"]
    assert (row["name"], row["outcome"]) == ("bootstrap", FAIL)
    assert row["reason"] == "noboot crashed at bootstrap: RuntimeError: no kernel pmap today"


@pytest.mark.parametrize(("args", "needles"), [
    (["no-such-backend"], ("unknown backend 'no-such-backend'",)),
    (["arm32-leaky", "--reference", "nope"], ("unknown reference 'nope'",)),
    (["arm32-leaky", "--budget", "soon"], ("soon",)),
])
def test_check_backend_bad_input_is_one_line_exit_2(tmp_path, args, needles):
    proc = check_cmd(tmp_path, *args)
    assert proc.returncode == EXIT_USAGE
    assert_one_line_error(proc.stderr, "difftest: error:", *needles)


# -- the pytest plugin ---------------------------------------------------------------------------

pytest_plugins = ["pytester"]


def run_pytest(pytester, monkeypatch, *args: str):
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)


def test_pytest_plugin_one_test_per_check(pytester, monkeypatch):
    result = run_pytest(pytester, monkeypatch, "--difftest-backend", "arm32-leaky", "-v")
    xfails = sum(1 for c in CHECKS if battery_outcome("arm32-leaky", c.name) == XFAIL)
    result.assert_outcomes(passed=len(CHECKS) - xfails, xfailed=xfails)
    result.stdout.fnmatch_lines(["*difftest-check?arm32-leaky?::frees-pt-pages-on-remove XFAIL*"])


def battery_outcome(name: str, check: str) -> str:
    return Conformance(PluginHost().load(), name).run(check_named(check)).outcome


def test_pytest_plugin_reports_the_first_failing_op(pytester, monkeypatch):
    result = run_pytest(pytester, monkeypatch, "--difftest-backend", "bug-wiredcount",
                        "--difftest-plugin", "broken_backends")
    result.assert_outcomes(passed=len(CHECKS) - 1, failed=1)
    result.stdout.fnmatch_lines([
        "*difftest-check?bug-wiredcount?::unwire*",
        "accounting:bug-wiredcount:unwire:wired_count:count-high",
        "  first failing op 3: unwire(1, va=0x10000000)",
    ])
    assert "Traceback" not in result.stdout.str()


def test_pytest_plugin_unknown_backend_is_a_usage_error(pytester, monkeypatch):
    result = run_pytest(pytester, monkeypatch, "--difftest-backend", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*difftest: unknown backend 'nope'*"])


def test_pytest_plugin_adds_nothing_without_its_options(pytester, monkeypatch):
    pytester.makepyfile("def test_one():\n    pass\n")
    run_pytest(pytester, monkeypatch).assert_outcomes(passed=1)


def write_stream(path: Path, ops: list[dict]) -> None:
    path.write_text(json.dumps({"format": "difftest.stream/1", "machine": {"phys_pages": 64}, "ops": ops}))


ENTER = {"op": "enter", "pmap": 1, "va": "0x00400000", "pa": "0x00020000", "prot": "rw", "access": "",
         "wired": True, "canfail": False}


def test_pytest_plugin_turns_a_corpus_into_regression_tests(pytester, monkeypatch):
    corpus = pytester.path / "run" / "corpus"
    corpus.mkdir(parents=True)
    (pytester.path / "run" / "campaign.json").write_text(json.dumps(
        {"format": "difftest.campaign/1", "config": {"backends": ["alpha-ref", "arm32-leaky"],
                                                      "reference": "alpha-ref"}, "known": []}))
    leak = [{"op": "create"}, ENTER, {"op": "remove", "pmap": 1, "sva": "0x00400000", "eva": "0x00401000"}]
    write_stream(corpus / "leak.stream.json", leak)
    write_stream(corpus / "clean.stream.json", [{"op": "create"}, ENTER, {"op": "destroy", "pmap": 1}])
    (corpus / "leak.json").write_text("{}")  # not a stream file: not collected
    result = run_pytest(pytester, monkeypatch, "--difftest-corpus", str(pytester.path / "run"), "-v")
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*corpus/clean.stream.json PASSED*", "*corpus/leak.stream.json XFAIL*"])

    # A divergence nobody knows fails, with its first op: the unwire of bug-wiredcount.
    write_stream(corpus / "unwire.stream.json",
                 [{"op": "create"}, ENTER, {"op": "unwire", "pmap": 1, "va": "0x00400000"}])
    result = run_pytest(pytester, monkeypatch, "--difftest-corpus", str(corpus), "--difftest-backend",
                        "bug-wiredcount", "--difftest-plugin", "broken_backends", "-k", "stream and not check")
    # leak and clean pass (bug-wiredcount frees PT pages); -k left the battery out
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*first failing op 2: unwire(1, va=0x00400000)*"])


# -- new-backend ------------------------------------------------------------------------------------


def test_new_backend_writes_a_distribution_that_conforms(tmp_path, monkeypatch):
    proc = run_difftest("new-backend", "demo-pmap", env=clean_env(), cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    dist = tmp_path / "difftest-demo-pmap"
    files = sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file())
    assert files == ["README.md", "difftest_demo_pmap.py", "pyproject.toml", "tests/test_difftest_demo_pmap.py"]
    source = (dist / "difftest_demo_pmap.py").read_text()
    assert source.startswith("# demo-pmap: a two-level pmap") and "# Geometry" in source and "# Invariants" in source
    pyproject = (dist / "pyproject.toml").read_text()
    assert '[project.entry-points.difftest]\ndemo_pmap = "difftest_demo_pmap"' in pyproject
    assert 'addopts = "--difftest-backend demo-pmap"' in pyproject
    # Loaded as a local module, it passes every check against the reference.
    monkeypatch.syspath_prepend(str(dist))
    registry = PluginHost().load(["difftest_demo_pmap"])
    rows = battery(registry, "demo-pmap")
    assert {n: r.outcome for n, r in rows.items() if r.outcome != PASS} == {}
    assert any(inv.applies_to("demo-pmap") for inv in registry.invariants)


def test_new_backend_invariant_sees_a_broken_pv_list_and_count(tmp_path, monkeypatch):
    from difftest import PROT_R, PhysPool, Touched

    assert run_difftest("new-backend", "demo-pmap", str(tmp_path / "d"), env=clean_env()).returncode == EXIT_OK
    monkeypatch.syspath_prepend(str(tmp_path / "d"))
    module = __import__("difftest_demo_pmap")
    backend = module.DemoPmap(PhysPool(64))
    backend.pmap_create(1)
    backend.pmap_enter(1, 0x00400000, 0x20000, PROT_R, 0, False, False)
    touched = Touched(pmaps=frozenset({1}), vas=((1, 0x00400000),), pas=frozenset({0x20000}))
    assert list(module.check_tables(backend, touched)) == [] == list(module.check_tables(backend, None))
    backend.pv[0x20000].clear()  # the pv entry lost
    backend.pmaps[1].wired += 1  # and a count off
    assert [m.split(":")[0] for m in module.check_tables(backend, touched)] == ["pmap 1 va 0x00400000"]
    assert len(list(module.check_tables(backend, None))) == 2


@pytest.mark.parametrize(("args", "needle"), [
    (["Bad Name"], "use lower-case letters"),
    (["demo", "full"], "not an empty directory"),
])
def test_new_backend_refuses_bad_names_and_full_directories(tmp_path, args, needle):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    proc = run_difftest("new-backend", *args, env=clean_env(), cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert_one_line_error(proc.stderr, needle)


@pytest.mark.slow
def test_new_backend_installs_into_a_fresh_venv_and_passes_its_checks(tmp_path_factory):
    from venvutil import Venv

    root = tmp_path_factory.mktemp("new-backend")
    dist = root / "dist"
    assert run_difftest("new-backend", "demo-pmap", str(dist), env=clean_env()).returncode == EXIT_OK
    (root / "wheels").mkdir()
    venv = Venv(root / "env", root / "wheels")
    assert venv.install(dist) == "difftest-demo-pmap"
    listed = {b["name"]: b for b in json.loads(venv.run("backends", "--json").stdout)}
    assert (listed["demo-pmap"]["plugin"], listed["demo-pmap"]["distribution"]) == ("demo_pmap", "difftest-demo-pmap")
    check = venv.run("check-backend", "demo-pmap", "--budget", "6s", "--out", str(root / "out"))
    assert check.returncode == EXIT_OK, check.stdout + check.stderr
    assert check.stdout.splitlines()[-1].startswith("demo-pmap conforms:")
    own = venv.pytest("-q", "-p", "no:cacheprovider", cwd=dist)
    assert own.returncode == 0, own.stdout + own.stderr
    assert f"{3 + len(CHECKS)} passed" in own.stdout


def test_the_pytest_plugin_loads_no_core_module_until_asked():
    # pytest imports it in every session where pmap-difftest is installed (and rewrites the
    # asserts of every module of the distribution it then imports): it must stay light.
    code = ("import sys, difftest.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('difftest', 'impls', 'strategies', 'reports')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert proc.stdout.strip() == "['difftest', 'difftest.pytest_plugin']"
