"""The ``difftest`` command group, its shared context and the basic commands.

Subcommands in other modules (``cli_run``, ``cli_fuzz``, ...) register on ``cli`` from
here; ``difftest.cli`` imports them all and holds the entry point.

Commands return their exit code; ``difftest.cli.main`` maps errors to codes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import click
from tabulate import tabulate

from difftest import __version__
from difftest.errors import EXIT_OK
from difftest.plugins import PluginHost


def use_color(stream: Any = None) -> bool:
    """Colour only on a TTY and never when NO_COLOR is set (click ignores NO_COLOR)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def styled(text: str, **style: Any) -> str:
    return click.style(text, **style) if use_color() else text


def progress_bar(total: int | None, unit: str, **kwargs: Any):
    """A tqdm bar on stderr (callers show it only on a terminal: ``sys.stderr.isatty()``)."""
    from tqdm import tqdm

    try:
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except OSError:
        sized = False
    # A terminal that reports no size (a bare pseudo-terminal) would get a zero-width bar.
    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=sized, ncols=None if sized else 100,
                nrows=None if sized else 24, leave=False,
                colour=None if os.environ.get("NO_COLOR") else "green", **kwargs)


class Context:
    """What every subcommand gets: the loaded plugins."""

    def __init__(self, plugin_modules: Sequence[str]) -> None:
        self.plugin_modules = tuple(plugin_modules)
        self._host: PluginHost | None = None

    def add_plugins(self, modules: Sequence[str]) -> None:
        """``-p`` given after the command name (before the plugins are loaded)."""
        self.plugin_modules += tuple(m for m in modules if m not in self.plugin_modules)

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

_PLUGIN_HELP = "Import MODULE as a plugin (repeatable; also DIFFTEST_PLUGINS=mod1,mod2)."


def _plugins_after_command(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    obj = ctx.find_object(Context)
    if obj is not None and value:
        obj.add_plugins(value)


class PluginOptionGroup(click.Group):
    """The command group: every subcommand also takes ``-p/--plugin`` after its name
    (``difftest fuzz -p mymod``), as ``pytest`` users expect."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        _add_plugin_option(self)
        return super().make_context(*args, **kwargs)


def _add_plugin_option(group: click.Group) -> None:
    for command in group.commands.values():
        if not any(isinstance(p, click.Option) and "--plugin" in p.opts for p in command.params):
            command.params.append(click.Option(
                ["-p", "--plugin", "plugins_after_command"], multiple=True, metavar="MODULE",
                expose_value=False, is_eager=True, callback=_plugins_after_command, help=_PLUGIN_HELP))
        if isinstance(command, click.Group):
            _add_plugin_option(command)


@click.group(cls=PluginOptionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help=_PLUGIN_HELP,
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
        stream = streams.open_stream(path)
        click.echo(f"{path}: ok ({len(stream)} ops, {stream.phys_pages} pages)")
    return EXIT_OK


