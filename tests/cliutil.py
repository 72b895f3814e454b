"""Helpers for tests that run the ``difftest`` command in a child process."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Mapping, Sequence

import pytest

# What the ``difftest`` console script does (pip writes the same two lines).
CONSOLE_SCRIPT = "import sys; sys.argv[0] = 'difftest'; from difftest.cli import run; run()"

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PLUGIN_DISTS = TESTS / "plugin_dists"

#: The entry points difftest's own distribution declares (pyproject.toml): with autoload
#: off, ``-p NAME`` / ``DIFFTEST_PLUGINS`` load them by these names.
BUILTIN_PLUGINS: tuple[str, ...] = tuple(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["difftest"]
)


def pinned_plugin_env(plugins: Sequence[str] = BUILTIN_PLUGINS) -> dict[str, str]:
    """The variables that make difftest load exactly ``plugins``: no entry-point discovery,
    so a third party's plugin installed in the same environment changes nothing (as
    pytest's ``pytester`` disables plugin autoload)."""
    env = {"DIFFTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if plugins:
        env["DIFFTEST_PLUGINS"] = ",".join(plugins)
    return env


def clean_env(pythonpath: Sequence[str | os.PathLike[str]] = (),
              plugins: Sequence[str] | None = BUILTIN_PLUGINS, **extra: str | None) -> dict[str, str]:
    """The current environment without difftest's and colour variables, with ``pythonpath``
    put before any PYTHONPATH already set, plus ``extra`` (None removes a variable).

    ``plugins`` pins the plugin set of the child (default: the built-ins alone); None lets
    it discover entry points, for the tests of discovery itself.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DIFFTEST_") and k not in ("NO_COLOR", "FORCE_COLOR")
    }
    if plugins is not None:
        env.update(pinned_plugin_env(plugins))
    paths = [str(p) for p in pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_difftest(
    *args: str,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``difftest ARGS`` in a child process; ``command`` replaces the interpreter part."""
    argv = [*(command or (sys.executable, "-c", CONSOLE_SCRIPT)), *args]
    return subprocess.run(
        argv,
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """stderr is exactly one line, with no traceback, containing every needle."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_on_a_tty(*args: str, env: dict[str, str]) -> tuple[int, bytes]:
    """Run difftest with stdout and stderr on a pseudo-terminal; return (status, output)."""
    try:
        master, slave = pty.openpty()
    except OSError as exc:  # a container without /dev/ptmx
        pytest.skip(f"no pseudo-terminal: {exc}")
    try:
        proc = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                proc.kill()
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=30), b"".join(chunks)
    finally:
        os.close(master)
