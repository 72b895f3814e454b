"""The suite runs with a pinned plugin set: difftest's built-ins, and no entry-point
discovery, so that whatever else is installed in the environment (a third party's
difftest plugin) changes no outcome.  Child processes get the same through
``cliutil.clean_env``; the tests of discovery itself ask for it explicitly."""

from __future__ import annotations

import os

import pytest

from cliutil import pinned_plugin_env

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
