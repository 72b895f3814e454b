"""The ``difftest`` command line: the entry point and its error handling.

Exit codes (STACK.md, modelled on pytest's): 0 no new divergences, 1 new divergences,
2 usage error or bad input, 3 internal or plugin error, 5 nothing to run, 130 interrupted,
143 terminated (SIGTERM).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Sequence

import click

# The command group (each subcommand's module registers it on ``cli`` when the group first
# needs it: cli_base.PluginOptionGroup.LAZY).
from difftest import interrupts
from difftest.cli_base import Context, cli, pass_ctx, styled, use_color  # noqa: F401
from difftest.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    DifftestError,
    Terminated,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run click without its own exit handling, map errors to codes."""
    interrupts.install()  # a real Ctrl-C is told apart from a plugin raising KeyboardInterrupt
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="difftest",
                      standalone_mode=False)
    except Terminated:
        click.echo("difftest: terminated (SIGTERM)", err=True)
        return _exit(EXIT_TERMINATED)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (and SIGTERM's Terminated) into Abort; exit 1 would read as
        # "divergences found".
        if isinstance(exc.__cause__, Terminated):
            click.echo("difftest: terminated (SIGTERM)", err=True)
            return _exit(EXIT_TERMINATED)
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


