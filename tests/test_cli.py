"""The ``difftest`` command line: version, listing backends, usage errors, colour, Ctrl-C,
and the exit codes of STACK.md (0 ok, 2 usage, 3 internal, 130 interrupted)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version

import pytest

import difftest
from cliutil import CONSOLE_SCRIPT, PLUGIN_DISTS, assert_one_line_error, clean_env, run_difftest, run_on_a_tty
from difftest import cli, streams
from difftest.cli import main
from difftest.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

TOY_ONLY = clean_env([PLUGIN_DISTS / "good"], plugins=())


def test_version():
    result = run_difftest("--version")
    assert result.returncode == EXIT_OK
    assert result.stdout == f"difftest, version {difftest.__version__}\n"
    assert difftest.__version__ == version("pmap-difftest")


def test_help_lists_the_commands(capsys):
    from difftest.cli_base import PluginOptionGroup

    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Usage: difftest" in out
    commands = out.split("Commands:")[1].split()
    for command in ("backends", "validate", *PluginOptionGroup.LAZY):  # those imported when used, too
        assert command in commands
    assert main(["-h"]) == EXIT_OK
    capsys.readouterr()
    # a subcommand loaded when named still takes -p after its name
    assert main(["merge", "--help"]) == EXIT_OK and "-p, --plugin MODULE" in capsys.readouterr().out


def test_backends_table():
    result = run_difftest("-p", "difftest_toy_plugin", "backends", env=TOY_ONLY)
    assert result.returncode == EXIT_OK and result.stderr == ""
    header, rule, *rows = result.stdout.splitlines()
    assert header.split()[0] == "name" and header.split()[-1] == "plugin"
    assert set(rule) <= {"-", " "}
    assert len(rows) == 1
    assert rows[0].split()[0] == "toy"
    assert "PT 1048576x4KiB (at create)" in rows[0]
    assert rows[0].endswith("difftest_toy_plugin (local)")


def test_backends_table_with_every_installed_backend():
    result = run_difftest("backends")
    assert result.returncode == EXIT_OK
    listed = json.loads(run_difftest("backends", "--json").stdout)
    if listed:
        names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
        assert names == [b["name"] for b in listed]
    else:
        assert "no backends registered" in result.stderr


def test_backends_json_parses():
    result = run_difftest("-p", "difftest_toy_plugin", "backends", "--json", env=TOY_ONLY)
    assert result.returncode == EXIT_OK and result.stderr == ""
    doc = json.loads(result.stdout)
    assert isinstance(doc, list) and [b["name"] for b in doc] == ["toy"]
    toy = doc[0]
    assert {"name", "description", "geometry", "geometry_text", "plugin", "distribution"} <= set(toy)
    assert toy["geometry"]["levels"][0]["entries"] == 1 << 20
    assert (toy["plugin"], toy["distribution"]) == ("difftest_toy_plugin", None)


def test_backends_json_of_the_installed_backends_is_sorted_and_attributed():
    doc = json.loads(run_difftest("backends", "--json", env=clean_env(plugins=None)).stdout)
    assert [b["name"] for b in doc] == sorted(b["name"] for b in doc)
    assert all(b["plugin"] and b["distribution"] for b in doc)  # all from entry points


def test_backends_json_empty_list_when_nothing_is_registered():
    result = run_difftest("backends", "--json", env=clean_env(plugins=()))
    assert result.returncode == EXIT_OK and json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--bogus"], "--bogus", id="unknown-global-option"),
        pytest.param(["backends", "--bogus"], "--bogus", id="unknown-command-option"),
        pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
        pytest.param(["validate"], "FILES", id="missing-argument"),
        pytest.param(["-p"], "-p", id="option-without-value"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, args, needle):
    assert main(args) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, "difftest: error:", needle)


def test_usage_error_through_the_command():
    result = run_difftest("--bogus")
    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "difftest: error:", "--bogus")


def test_no_command_shows_the_help():
    result = run_difftest()
    assert result.returncode in (EXIT_OK, EXIT_USAGE)  # click < 8.2: 0, later: 2
    assert result.stderr == ""
    assert result.stdout.startswith("Usage: difftest")
    assert "backends" in result.stdout and "validate" in result.stdout


# -- colour --------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_use_color_only_on_a_tty_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli.use_color(_Tty())
    assert not cli.use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli.use_color(_Tty())
    monkeypatch.setenv("NO_COLOR", "")  # empty means unset (no-color.org)
    assert cli.use_color(_Tty())


def test_styled_is_plain_with_no_color(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli.styled("divergence", fg="red", bold=True) == "divergence"
    monkeypatch.delenv("NO_COLOR")
    assert "\x1b[" in cli.styled("divergence", fg="red")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-p", "difftest_toy_plugin", "backends"], id="backends"),
        pytest.param(["--help"], id="help"),
        pytest.param(["--bogus"], id="usage-error"),
    ],
)
def test_no_color_honoured_on_a_terminal(args):
    env = dict(TOY_ONLY, NO_COLOR="1", TERM="xterm-256color")
    status, output = run_on_a_tty(*args, env=env)
    assert status in (EXIT_OK, EXIT_USAGE)
    assert output.strip()
    assert b"\x1b[" not in output


# -- interruption and internal errors ------------------------------------------------------


def test_ctrl_c_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(streams, "open_stream", interrupted)
    path = tmp_path / "s.json"
    path.write_text("{}")
    assert main(["validate", str(path)]) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    # click ends the terminal's "^C" line with a newline first; the message is one line.
    assert [line for line in err.splitlines() if line.strip()] == ["difftest: interrupted"]
    assert "Traceback" not in err and "Aborted" not in err


def test_real_sigint_exits_130(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"format": streams.STREAM_FORMAT, "ops": []}))
    # The second file is our stdin, which never ends: difftest blocks reading it.  SIGINT as
    # a command started from a terminal has it (a suite run as a background job passes on
    # SIG_IGN, which difftest keeps: the signal would then be lost).
    default_sigint = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    proc = subprocess.Popen(
        [sys.executable, "-c", default_sigint + CONSOLE_SCRIPT, "validate", str(good), "/dev/stdin"],
        env=clean_env(PYTHONUNBUFFERED="1"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline()  # the first file is done: past start-up, now reading
        assert first.startswith(f"{good}: ok")
        proc.send_signal(signal.SIGINT)
        # stdin stays open until it has exited: it must end by the signal, not by the end of
        # its input (communicate() would close stdin at once).
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert [line for line in err.splitlines() if line.strip()] == ["difftest: interrupted"]


def test_unexpected_exception_is_an_internal_error_in_one_line(monkeypatch, tmp_path, capsys):
    def broken(path):
        raise RuntimeError("invariant of the loader broke\nwith detail")

    monkeypatch.setattr(streams, "open_stream", broken)
    path = tmp_path / "s.json"
    path.write_text("{}")
    assert main(["validate", str(path)]) == EXIT_INTERNAL  # never 1: that means divergences
    out, err = capsys.readouterr()
    assert_one_line_error(err, "difftest: internal error:", "RuntimeError",
                          "invariant of the loader broke with detail", "test_cli.py")


def test_main_returns_and_run_exits(monkeypatch):
    assert main(["--version"]) == EXIT_OK
    monkeypatch.setattr(sys, "argv", ["difftest", "--bogus"])
    with pytest.raises(SystemExit) as excinfo:
        cli.run()
    assert excinfo.value.code == EXIT_USAGE
