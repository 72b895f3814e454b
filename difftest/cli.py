"""The ``difftest`` command line.

Exit codes (STACK.md, modelled on pytest's): 0 no new divergences, 1 new divergences,
2 usage error or bad input, 3 internal or plugin error, 5 nothing to run, 130 interrupted.
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import click
from tabulate import tabulate

from difftest import __version__
from difftest.errors import (
    EXIT_DIVERGENCES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    DifftestError,
)
from difftest.plugins import PluginHost


def use_color(stream: Any = None) -> bool:
    """Colour only on a TTY and never when NO_COLOR is set (click ignores NO_COLOR)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def styled(text: str, **style: Any) -> str:
    return click.style(text, **style) if use_color() else text


class Context:
    """What every subcommand gets: the loaded plugins."""

    def __init__(self, plugin_modules: Sequence[str]) -> None:
        self.plugin_modules = tuple(plugin_modules)
        self._host: PluginHost | None = None

    @property
    def host(self) -> PluginHost:
        if self._host is None:
            host = PluginHost()
            host.load(self.plugin_modules)
            self._host = host
        return self._host

    @property
    def registry(self):
        return self.host.registry


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE as a plugin (repeatable; also DIFFTEST_PLUGINS=mod1,mod2).",
)
@click.version_option(__version__, prog_name="difftest")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...]) -> None:
    """Differential testing of pmap implementations (NetBSD PR port-arm32/5666 and kin)."""
    ctx.obj = Context(plugins)


@cli.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def backends_cmd(ctx: Context, as_json: bool) -> int:
    """List the registered backends with their geometry and providing plugin."""
    specs = sorted(ctx.registry.backends.values(), key=lambda s: s.name)
    if as_json:
        doc = [
            {
                "name": s.name,
                "description": s.description,
                "geometry": s.geometry.to_json(),
                "geometry_text": s.geometry.describe(),
                "default": s.default,
                "plugin": s.plugin,
                "distribution": s.distribution or None,
            }
            for s in specs
        ]
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
        return EXIT_OK
    if not specs:
        click.echo("no backends registered (is DIFFTEST_DISABLE_PLUGIN_AUTOLOAD set?)", err=True)
        return EXIT_OK
    rows = [
        [s.name, s.description, s.geometry.describe(), "yes" if s.default else "no",
         _plugin_text(s.plugin, s.distribution)]
        for s in specs
    ]
    click.echo(tabulate(rows, headers=["name", "description", "geometry", "default", "plugin"],
                        tablefmt="simple"))
    return EXIT_OK


def _plugin_text(plugin: str, dist: str) -> str:
    return f"{plugin} ({dist})" if dist else f"{plugin} (local)"


@cli.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate_cmd(files: tuple[str, ...]) -> int:
    """Check stream files against difftest.stream/1; exit 2 on the first bad one."""
    from difftest import streams

    for path in files:
        stream = streams.load(path)
        click.echo(f"{path}: ok ({len(stream)} ops, {stream.phys_pages} pages)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run click without its own exit handling, map errors to codes."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="difftest",
                      standalone_mode=False)
    except click.exceptions.Abort:
        # click turns Ctrl-C into Abort; exit 1 would read as "divergences found".
        click.echo("difftest: interrupted", err=True)
        return _exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("difftest: interrupted", err=True)
        return _exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        return _exit(exc.exit_code)
    except click.ClickException as exc:
        if _NO_ARGS_IS_HELP is not None and isinstance(exc, _NO_ARGS_IS_HELP):
            # A bare ``difftest`` (click >= 8.2 raises this): the help, not "error: Usage:".
            click.echo(exc.format_message())
            return _exit(EXIT_USAGE)
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        click.echo(f"difftest: error: {message}", err=True)
        return _exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except DifftestError as exc:
        click.echo(f"difftest: error: {_one_line(str(exc))}", err=True)
        return _exit(exc.exit_code)
    except BrokenPipeError:
        return _exit(EXIT_OK)
    except Exception as exc:  # a bug: still one line and exit 3, never 1 ("divergences")
        click.echo(f"difftest: internal error: {_describe_crash(exc)}", err=True)
        return _exit(EXIT_INTERNAL)
    code = rv if isinstance(rv, int) else EXIT_OK
    return _exit(code)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe_crash(exc: BaseException) -> str:
    """``KeyError: 'x' (at difftest/foo.py:12 in bar)``: the innermost frame, one line."""
    import traceback

    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno} in {last.name})"
    return _one_line(f"{type(exc).__name__}: {exc}{where}")


def _exit(code: int) -> int:
    sys.stdout.flush()
    return code


def run() -> None:
    """The ``difftest`` console script."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()


# Subcommands living in their own modules register themselves on ``cli`` when imported.
from difftest import cli_fuzz, cli_report, cli_run, cli_shrink, cli_streams  # noqa: E402,F401
