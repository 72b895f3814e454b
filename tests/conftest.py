"""The suite runs with a pinned plugin set: difftest's built-ins, and no entry-point
discovery, so that whatever else is installed in the environment (a third party's
difftest plugin) changes no outcome.  Child processes get the same through
``cliutil.clean_env``; the tests of discovery itself ask for it explicitly.

Under pytest-xdist (README's test command: ``-n 2``) the tests are dealt to the workers
one at a time, slow ones first; a test class's tests go to one worker together, and so do
the modules of ``ONE_WORKER_MODULES``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cliutil import pinned_plugin_env
from difftest.plugins import PluginHost

_saved: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    for key, value in pinned_plugin_env().items():
        _saved[key] = os.environ.get(key)
        os.environ[key] = value


def pytest_unconfigure(config: pytest.Config) -> None:
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def registry():
    """The plugin registry with the built-ins and the test-only broken backends
    (``tests/plugins/broken_backends.py``), loaded as a user's plugin module is.  A module
    that needs other test plugins defines its own ``registry``, which overrides this one."""
    plugins = str(Path(__file__).parent / "plugins")
    sys.path.insert(0, plugins)
    try:
        yield PluginHost().load(["broken_backends"])
    finally:
        sys.path.remove(plugins)


#: Modules whose tests share an expensive module-scoped fixture (three campaigns and their
#: renders; a Dask cluster and a campaign): under pytest-xdist each runs whole on one
#: worker, so that the fixture is built once.  (xdist's own ``--dist loadgroup`` does not
#: group with pytest 9.2: it renames node ids through an attribute pytest no longer reads.)
ONE_WORKER_MODULES = ("tests/test_reports.py", "tests/test_cluster.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the tests marked ``slow`` (campaigns, installs: seconds each)
    first, so that the workers end on short tests rather than one waiting for the other's
    last campaign.  Every worker sorts alike (a stable sort of the same collection), as
    xdist requires; a plain run keeps the files' order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (``--dist load``): xdist's scope scheduler, a scope being a test of its own,
    a test class (its tests may share a class fixture) or a whole module of
    ``ONE_WORKER_MODULES`` (the largest units go first).  Any other ``--dist`` is xdist's."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, rest = nodeid.partition("::")
            if module in ONE_WORKER_MODULES:
                return module
            name = rest.split("[", 1)[0]  # a parameter's id may hold "::"
            return f"{module}::{name.split('::', 1)[0]}" if "::" in name else nodeid

    return OneWorkerModules(config, log)
