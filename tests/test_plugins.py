"""The plugin host: discovery through the entry-point group ``difftest`` (real installed
distributions, in a throw-away virtual environment), ``--plugin`` / ``DIFFTEST_PLUGINS``,
the autoload switch, and one-line exit-3 errors for broken plugins."""

from __future__ import annotations

import json
import subprocess
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cliutil import PLUGIN_DISTS, assert_one_line_error, clean_env, run_difftest
from difftest import FAULT, OK, PROT_R, PROT_W, PhysPool, Tag, needed_pt_frames
from difftest.errors import EXIT_INTERNAL
from difftest.plugins import ENTRY_POINT_GROUP, PluginHost
from venvutil import Venv

GOOD = PLUGIN_DISTS / "good"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """One venv for the module, with the good plugin installed; broken ones come and go."""
    root = tmp_path_factory.mktemp("venv")
    wheels = tmp_path_factory.mktemp("wheels")
    env = Venv(root / "env", wheels)
    env.install(GOOD)
    return env


def backends_json(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    return {b["name"]: b for b in json.loads(result.stdout)}


@pytest.mark.slow
def test_installed_plugin_backend_is_listed(venv):
    table = venv.run("backends")
    assert table.returncode == 0, table.stderr
    assert table.stderr == ""
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0][0] == "name" and rows[0][-1] == "plugin"
    toy = [row for row in rows if row[0] == "toy"]
    assert len(toy) == 1
    assert toy[0][-2:] == ["toy", "(difftest-toy-plugin)"]

    listed = backends_json(venv.run("backends", "--json"))
    toy = listed["toy"]
    assert (toy["plugin"], toy["distribution"]) == ("toy", "difftest-toy-plugin")
    assert toy["description"] == "flat dict pmap (difftest-toy-plugin)"
    assert toy["geometry"] == {
        "top_level": "create",
        "page_size": 4096,
        "levels": [{"name": "PT", "span": 1 << 32, "entries": 1 << 20, "frames": 1, "tag": "pt"}],
    }
    assert toy["geometry_text"] == "PT 1048576x4KiB (at create)"


@pytest.mark.slow
def test_autoload_switch_hides_installed_plugins(venv):
    listed = backends_json(venv.run("backends", "--json", DIFFTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert listed == {}
    # ... and the module can still be loaded by name, as a local module.
    listed = backends_json(venv.run("-p", "difftest_toy_plugin", "backends", "--json",
                                    DIFFTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert (listed["toy"]["plugin"], listed["toy"]["distribution"]) == ("difftest_toy_plugin", None)


@pytest.mark.slow
def test_plugin_module_given_again_by_name_is_loaded_once(venv):
    listed = backends_json(venv.run("-p", "difftest_toy_plugin", "backends", "--json",
                                    DIFFTEST_PLUGINS="difftest_toy_plugin"))
    assert (listed["toy"]["plugin"], listed["toy"]["distribution"]) == ("toy", "difftest-toy-plugin")


@pytest.mark.slow
def test_installed_plugin_that_fails_to_import(venv):
    with venv.installed(PLUGIN_DISTS / "broken_import") as dist:
        results = [venv.run("backends"), venv.run("backends", "--json")]
        ok = venv.run("backends", DIFFTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    for result in results:
        assert result.returncode == EXIT_INTERNAL
        assert result.stdout == ""
        # The module's message has two lines; the error is still one.
        assert_one_line_error(
            result.stderr, "difftest: error:", "plugin 'broken-import'", f"distribution {dist}",
            "failed to import", "ImportError", "libtoymmu",
        )
    assert ok.returncode == 0  # the switch is the way out of a broken plugin


@pytest.mark.slow
def test_installed_plugin_with_a_malformed_hook(venv):
    with venv.installed(PLUGIN_DISTS / "broken_hook") as dist:
        result = venv.run("backends")
    assert result.returncode == EXIT_INTERNAL
    assert result.stdout == ""
    assert_one_line_error(
        result.stderr, "plugin 'broken-hook'", f"distribution {dist}", "difftest_register_backends",
        "registr",
    )


@pytest.mark.slow
def test_local_plugin_reusing_an_installed_backend_name(venv, tmp_path):
    write_module(tmp_path, "dup_toy", DUPLICATE.format(name="toy"))
    result = venv.run("-p", "dup_toy", "backends", pythonpath=[tmp_path])
    assert result.returncode == EXIT_INTERNAL
    assert_one_line_error(
        result.stderr, "plugin 'dup_toy' (local module)", "backend 'toy' is already registered",
        "plugin 'toy' (distribution difftest-toy-plugin)",
    )


@pytest.mark.slow
def test_local_module_named_like_an_installed_plugin(venv, tmp_path):
    # The entry point "toy" names module difftest_toy_plugin; a module *called* toy is
    # another plugin, and must not be skipped silently as "already loaded".
    write_module(tmp_path, "toy", DUPLICATE.format(name="toy2"))
    result = venv.run("-p", "toy", "backends", pythonpath=[tmp_path])
    assert result.returncode == EXIT_INTERNAL
    assert_one_line_error(result.stderr, "plugin 'toy' (local module)", "name is taken",
                          "distribution difftest-toy-plugin")


# -- local modules: --plugin and DIFFTEST_PLUGINS -------------------------------------------

DUPLICATE = '''\
"""Registers the toy backend again, under the name {name!r}."""
import difftest
from difftest import BackendSpec
from difftest_toy_plugin import ToyBackend


@difftest.hookimpl
def difftest_register_backends(register):
    register(BackendSpec(name={name!r}, factory=ToyBackend, geometry=ToyBackend.geometry,
                         description="the toy again"))
'''


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def local_env(tmp_path: Path, **extra: str | None) -> dict[str, str]:
    """PYTHONPATH with tmp_path (modules written by the test) and the toy plugin's module,
    the built-ins pinned (so a copy of the toy installed in this environment is not found
    through its entry point)."""
    return clean_env([tmp_path, GOOD], **extra)


def test_plugin_option_loads_a_local_module(tmp_path):
    result = run_difftest("-p", "difftest_toy_plugin", "backends", "--json", env=local_env(tmp_path))
    toy = backends_json(result)["toy"]
    assert (toy["plugin"], toy["distribution"]) == ("difftest_toy_plugin", None)

    table = run_difftest("--plugin", "difftest_toy_plugin", "backends", env=local_env(tmp_path))
    assert table.returncode == 0
    assert any(line.startswith("toy ") and line.endswith("difftest_toy_plugin (local)")
               for line in table.stdout.splitlines())


def test_plugins_environment_variable_loads_local_modules(tmp_path):
    write_module(tmp_path, "toy_again", DUPLICATE.format(name="toy-again"))
    env = local_env(tmp_path, DIFFTEST_PLUGINS=" difftest_toy_plugin, toy_again ,")
    listed = backends_json(run_difftest("backends", "--json", env=env))
    assert listed["toy"]["plugin"] == "difftest_toy_plugin"
    assert listed["toy-again"]["plugin"] == "toy_again"
    assert listed["toy-again"]["distribution"] is None


def test_same_module_from_option_and_environment_is_loaded_once(tmp_path):
    env = local_env(tmp_path, DIFFTEST_PLUGINS="difftest_toy_plugin")
    result = run_difftest("-p", "difftest_toy_plugin", "-p", "difftest_toy_plugin", "backends",
                          "--json", env=env)
    assert list(backends_json(result)).count("toy") == 1


def builtin_plugin_modules() -> dict[str, str]:
    """Entry-point name -> module, for difftest's own distribution."""
    return {
        ep.name: ep.value
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == "pmap-difftest"
    }


def test_disabling_autoload_drops_the_builtins_and_plugin_option_brings_them_back(tmp_path):
    everything = backends_json(run_difftest("backends", "--json", env=clean_env(plugins=None)))
    builtin = {n: b for n, b in everything.items() if b["distribution"] == "pmap-difftest"}
    assert all(b["plugin"] in builtin_plugin_modules() for b in builtin.values())

    off = clean_env([tmp_path, GOOD], plugins=())
    assert backends_json(run_difftest("backends", "--json", env=off)) == {}
    table = run_difftest("backends", env=off)
    assert table.returncode == 0 and table.stdout == ""
    assert "no backends registered" in table.stderr

    modules = builtin_plugin_modules()
    for plugin in sorted({b["plugin"] for b in builtin.values()}):
        back = backends_json(run_difftest("-p", modules[plugin], "backends", "--json", env=off))
        expected = {n for n, b in builtin.items() if b["plugin"] == plugin}
        assert set(back) == expected
        assert all(b["plugin"] == modules[plugin] and b["distribution"] is None
                   for b in back.values())

    # Whether or not the built-ins register backends yet, a local module works the same.
    back = backends_json(run_difftest("-p", "difftest_toy_plugin", "backends", "--json", env=off))
    assert set(back) == {"toy"}


def test_plugin_with_an_unknown_hook_name(tmp_path):
    write_module(tmp_path, "typo_plugin", '''
        import difftest

        @difftest.hookimpl
        def difftest_register_backend(register):  # no such hook: one 's' short
            pass
    ''')
    result = run_difftest("-p", "typo_plugin", "backends", env=local_env(tmp_path))
    assert result.returncode == EXIT_INTERNAL
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "plugin 'typo_plugin' (local module)",
                          "difftest_register_backend")


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        pytest.param("raise ImportError('no libmmu here')\n", ("ImportError", "no libmmu here"),
                     id="import-error"),
        pytest.param("import no_such_module_for_difftest\n", ("ModuleNotFoundError",),
                     id="missing-dependency"),
        pytest.param("def broken(:\n", ("SyntaxError",), id="syntax-error"),
        pytest.param("raise RuntimeError('first line\\nsecond line')\n",
                     ("RuntimeError", "first line second line"), id="multi-line-message"),
    ],
)
def test_local_plugin_that_fails_to_import(tmp_path, source, needles):
    write_module(tmp_path, "bad_plugin", source)
    result = run_difftest("--plugin", "bad_plugin", "backends", env=local_env(tmp_path))
    assert result.returncode == EXIT_INTERNAL
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "plugin 'bad_plugin' (local module)", "failed to import",
                          *needles)


def test_plugin_module_that_does_not_exist(tmp_path):
    result = run_difftest("-p", "no_such_plugin_module", "backends", env=local_env(tmp_path))
    assert result.returncode == EXIT_INTERNAL
    assert_one_line_error(result.stderr, "plugin 'no_such_plugin_module'", "ModuleNotFoundError")


def test_two_local_plugins_registering_the_same_backend_name(tmp_path):
    write_module(tmp_path, "first_dup", DUPLICATE.format(name="same"))
    write_module(tmp_path, "second_dup", DUPLICATE.format(name="same"))
    result = run_difftest("-p", "first_dup", "-p", "second_dup", "backends", env=local_env(tmp_path))
    assert result.returncode == EXIT_INTERNAL
    assert_one_line_error(
        result.stderr, "plugin 'second_dup' (local module)", "backend 'same' is already registered",
        "by plugin 'first_dup' (local module)",
    )


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        pytest.param("raise RuntimeError('boom')", ("difftest_register_backends raised",
                                                    "RuntimeError: boom"), id="hook-raises"),
        pytest.param("register(object())", ("neither a Backend subclass nor a BackendSpec",),
                     id="not-a-backend"),
        pytest.param("register(type('NoGeometry', (difftest.Backend,), {'name': 'x'}))",
                     ("declares no Geometry",), id="backend-without-geometry"),
        pytest.param("register(difftest.BackendSpec('two words', ToyBackend, ToyBackend.geometry))",
                     ("not a non-empty word",), id="bad-backend-name"),
    ],
)
def test_plugin_registering_something_wrong(tmp_path, body, needles):
    write_module(tmp_path, "wrong_plugin", f'''
        import difftest
        from difftest_toy_plugin import ToyBackend

        @difftest.hookimpl
        def difftest_register_backends(register):
            {body}
    ''')
    result = run_difftest("-p", "wrong_plugin", "backends", env=local_env(tmp_path))
    assert result.returncode == EXIT_INTERNAL
    assert_one_line_error(result.stderr, "plugin 'wrong_plugin' (local module)", *needles)


# -- the toy backend is a real one ------------------------------------------------------------


def test_toy_backend_runs_through_the_registry(monkeypatch):
    monkeypatch.syspath_prepend(str(GOOD))
    monkeypatch.delenv("DIFFTEST_PLUGINS")  # the toy alone
    host = PluginHost()
    registry = host.load(["difftest_toy_plugin"], autoload=False)
    spec = registry.backends["toy"]
    assert (spec.plugin, spec.distribution) == ("difftest_toy_plugin", "")
    assert host.distributions == {"difftest_toy_plugin": ""}

    pool = PhysPool(64)
    toy = spec.factory(pool)
    assert pool.held(0, Tag.PT) == 1  # the kernel pmap's table
    toy.pmap_create(1)
    assert toy.pmap_enter(1, 0x400000, 0x5000, PROT_R | PROT_W, PROT_R, False, False) == OK
    assert toy.pmap_extract(1, 0x400000) == 0x5000
    assert toy.pmap_is_referenced(0x5000) and not toy.pmap_is_modified(0x5000)
    assert toy.pmap_access(1, 0x400000, "w") == OK and toy.pmap_is_modified(0x5000)
    assert toy.pmap_access(1, 0x400000, "x") == FAULT
    assert [va for va, _ in toy.walk_range(1, 0, 1 << 32)] == [0x400000]
    assert pool.held(1, Tag.PT) == needed_pt_frames(spec.geometry, [0x400000])[Tag.PT] == 1
    toy.pmap_page_protect(0x5000, 0)
    assert toy.walk(1, 0x400000) is None and toy.pmap_is_modified(0x5000)
    toy.pmap_destroy(1)
    assert pool.held(1, Tag.PT) == 0 and pool.check_conservation() == []
