"""The public plugin API: what ``difftest`` exports, one spelling for results (the old one
normalised), abstract backends refused at registration, ``-p`` from the current directory
and after the command name, entry points by name, and backends that do not run by default."""

from __future__ import annotations

import gc
import json
import textwrap
from pathlib import Path

import pytest

import difftest
from cliutil import assert_one_line_error, clean_env, run_difftest
from difftest import ENOMEM, FAULT, OK, PROT_R, PROT_W, KnownDivergence
from difftest import backend as backend_module
from difftest.backend import check_memo
from difftest.errors import EXIT_INTERNAL, EXIT_OK
from difftest.harness import Harness
from difftest.ops import Access, Create, Enter, normalise_result
from difftest.plugins import PluginHost
from difftest.streams import make_stream

RW = PROT_R | PROT_W


def test_everything_a_backend_author_needs_is_exported():
    names = {
        "Backend", "BackendSpec", "Geometry", "Level", "Invariant", "Touched", "Translation",
        "PhysPool", "Tag", "OutOfMemory", "KnownDivergence", "hookimpl", "needed_pt_frames",
        "PROT_NONE", "PROT_R", "PROT_W", "PROT_X", "PROT_ALL", "OK", "ENOMEM", "FAULT",
        "ACCESS_KINDS", "PAGE_SIZE", "USER_MIN", "USER_MAX", "KERNEL_MIN", "KERNEL_MAX", "KERNEL_PMAP",
    }
    assert names <= set(difftest.__all__)
    for name in difftest.__all__:
        assert hasattr(difftest, name), name
    assert (difftest.USER_MIN, difftest.USER_MAX) == (0x1000, 0xEFC00000)
    assert (difftest.KERNEL_MIN, difftest.KERNEL_MAX) == (0xF0000000, 0xFFFFF000)
    assert difftest.ACCESS_KINDS == ("r", "w", "x")
    assert (OK, ENOMEM, FAULT) == ("OK", "ENOMEM", "FAULT")


def test_old_spelling_of_results_is_normalised():
    assert normalise_result("ok") == OK and normalise_result("fault") == FAULT
    assert normalise_result(OK) == OK and normalise_result(ENOMEM) == ENOMEM
    assert normalise_result(None) is None and normalise_result(True) is True
    assert normalise_result(0x5000) == 0x5000


def _registry():
    return PluginHost().load()


def _lowercase_access_spec(spelling: dict[str, str]):
    """arm32-refcount with pmap_access answering in another spelling."""
    base = _registry().backends["arm32-refcount"]

    class Spelled(base.factory):  # type: ignore[misc, valid-type]
        name = "spelled"

        def pmap_access(self, pmap, va, kind):
            return spelling[super().pmap_access(pmap, va, kind)]

    return difftest.BackendSpec("spelled", Spelled, base.geometry)


def _access_stream():
    return make_stream([
        Create(), Enter(1, 0x400000, 0x200000, PROT_R), Access(1, 0x400000, "r"),
        Access(1, 0x400000, "w"), Access(1, 0x401000, "r"),
    ])


def test_a_backend_answering_in_the_old_spelling_runs_clean():
    registry = _registry()
    spec = _lowercase_access_spec({OK: "ok", FAULT: "fault"})
    harness = Harness([registry.backends["alpha-ref"], spec], "alpha-ref", registry.invariants)
    result = harness.run(_access_stream())
    assert result.divergences == []


def test_a_backend_answering_something_else_is_a_result_divergence():
    registry = _registry()
    spec = _lowercase_access_spec({OK: "yes", FAULT: "no"})
    harness = Harness([registry.backends["alpha-ref"], spec], "alpha-ref", registry.invariants)
    result = harness.run(_access_stream())
    results = [d for d in result.divergences if d.kind == "result"]
    assert [(d.signature, d.op_index) for d in results] == [
        ("result:spelled:access:result:bad-access-result", i) for i in (2, 3, 4)]
    assert ["'yes'" in d.message for d in results] == [True, False, False]


HALF = '''
    import difftest
    from difftest import Geometry, Level, Tag

    class Half(difftest.Backend):
        name = "half"
        geometry = Geometry((Level("PT", span=1 << 32, entries=1 << 20, tag=Tag.PT),))

        def pmap_create(self, pmap):
            pass

        def walk(self, pmap, va):
            return None

    @difftest.hookimpl
    def difftest_register_backends(register):
        register(Half)
'''


def test_backend_with_unimplemented_methods_is_refused_at_registration(tmp_path):
    (tmp_path / "half.py").write_text(textwrap.dedent(HALF))
    result = run_difftest("-p", "half", "backends", env=clean_env(), cwd=tmp_path)
    assert result.returncode == EXIT_INTERNAL and result.stdout == ""
    line = assert_one_line_error(result.stderr, "plugin 'half' (local module)", "backend class Half",
                                 "does not implement", "pmap_enter", "walk_range", "pmap_access")
    assert "pmap_create" not in line and "walk," not in line


LOCAL = '''
    import difftest
    from difftest import BackendSpec

    @difftest.hookimpl
    def difftest_register_backends(register):
        from impls.alpha import AlphaPmap
        register(BackendSpec("{name}", AlphaPmap, AlphaPmap.geometry, default=False))
'''


@pytest.mark.parametrize("where", ["before", "after"])
def test_plugin_module_in_the_current_directory(tmp_path, where):
    (tmp_path / "mymod.py").write_text(textwrap.dedent(LOCAL.format(name="mine")))
    args = ["-p", "mymod", "backends", "--json"] if where == "before" else ["backends", "--json", "-p", "mymod"]
    result = run_difftest(*args, env=clean_env(), cwd=tmp_path)  # no PYTHONPATH to tmp_path
    assert result.returncode == EXIT_OK, result.stderr
    listed = {b["name"]: b for b in json.loads(result.stdout)}
    assert listed["mine"]["plugin"] == "mymod" and listed["mine"]["default"] is False
    assert {"alpha-ref", "arm32-leaky"} <= set(listed)


def test_plugin_option_after_a_subcommand_of_a_group(tmp_path):
    (tmp_path / "mymod.py").write_text(textwrap.dedent(LOCAL.format(name="mine")))
    stream = tmp_path / "s.json"
    stream.write_text(json.dumps({"format": "difftest.stream/1", "machine": {"phys_pages": 64},
                                  "ops": [{"op": "create"}]}))
    result = run_difftest("streams", "stats", str(stream), "--backends", "mine", "--json", "-p", "mymod",
                          env=clean_env(), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "mine" in result.stdout


def test_entry_point_by_name_with_autoload_off():
    result = run_difftest("-p", "alpha", "backends", "--json", env=clean_env(plugins=()))
    assert result.returncode == EXIT_OK, result.stderr
    listed = {b["name"]: b for b in json.loads(result.stdout)}
    assert set(listed) == {"alpha-ref", "alpha-ref-4m"}
    assert {(b["plugin"], b["distribution"]) for b in listed.values()} == {("alpha", "pmap-difftest")}


def test_which_backends_run_by_default(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(textwrap.dedent(LOCAL.format(name="mine")))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = PluginHost().load(["mymod"])
    assert registry.backends["mine"].default is False
    assert registry.backends["alpha-ref-4m"].default is False
    assert registry.default_backends() == ["alpha-ref", "arm32-leaky", "arm32-refcount"]


@pytest.mark.parametrize(("pattern", "backends", "judged"), [
    ("resource:arm32-leaky:*:pt_frames:pt-frames-held>needed", ["alpha-ref", "arm32-refcount"], False),
    ("resource:arm32-leaky:*:pt_frames:pt-frames-held>needed", ["alpha-ref", "arm32-leaky"], True),
    ("resource:arm32-*", ["arm32-refcount"], True),
    ("crash:*", ["alpha-ref"], True),
    ("*:arm32-leaky:*", ["alpha-ref"], True),  # the backend field cannot be told: judged
    ("*leaky*", ["alpha-ref"], True),
])
def test_known_divergence_concerns_only_the_backends_it_names(pattern, backends, judged):
    assert KnownDivergence(pattern, "why").concerns(backends) is judged


def test_enomem_result_through_the_public_names():
    registry = _registry()
    backend = registry.backends["alpha-ref"].factory(difftest.PhysPool(64))
    backend.pmap_create(1)
    assert backend.pmap_enter(1, 0x400000, 0x20000, RW, 0, False, True) == OK
    assert backend.pmap_access(1, 0x400000, "w") == OK
    assert backend.pmap_access(1, 0x800000, "r") == FAULT


def test_readme_and_plugins_doc_name_every_builtin_entry_point():
    from cliutil import BUILTIN_PLUGINS, ROOT

    spelled = " ".join(f"-p {name}" for name in BUILTIN_PLUGINS)
    for doc in ("README.md", "docs/PLUGINS.md"):
        assert f"`{spelled}`" in (ROOT / doc).read_text(encoding="utf-8"), doc
    # ... and that line brings them back, names and distributions as with autoload.
    argv = [w for name in BUILTIN_PLUGINS for w in ("-p", name)]
    pinned = run_difftest(*argv, "backends", "--json", env=clean_env(plugins=()))
    found = run_difftest("backends", "--json", env=clean_env(plugins=None))
    builtin = [b for b in json.loads(found.stdout) if b["distribution"] == "pmap-difftest"]
    assert json.loads(pinned.stdout) == builtin


def test_an_invariants_memo_is_its_backends_own_and_never_a_crash():
    """check_memo keeps a memo per backend object while it lives; backends that compare
    equal do not share one, and a backend that cannot be weakly referenced gets none (a
    fresh value each time: its checks walk, as without a memo)."""

    class Equal:  # compares equal to every other, one hash
        def __eq__(self, other):
            return True

        def __hash__(self):
            return 1

    class Slotted:
        __slots__ = ("x",)

    a, b = Equal(), Equal()
    check_memo(a, "seen", list).append(1)
    assert check_memo(a, "seen", list) == [1] and check_memo(b, "seen", list) == []
    assert check_memo(a, "other", dict) == {}
    slotted = Slotted()
    check_memo(slotted, "seen", list).append(1)
    assert check_memo(slotted, "seen", list) == []
    key = id(a)
    del a
    gc.collect()
    assert key not in backend_module._CHECK_MEMOS  # gone with its backend
