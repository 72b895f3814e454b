"""The ``difftest`` command group, its shared context and the basic commands.

Subcommands in other modules (``cli_run``, ``cli_fuzz``, ...) register on ``cli`` from
here when the group imports them (``PluginOptionGroup.LAZY``); ``difftest.cli`` holds the
entry point.

Commands return their exit code; ``difftest.cli.main`` maps errors to codes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import click

from difftest import __version__
from difftest.errors import EXIT_OK, BadInput
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


def split_names(values: Sequence[str]) -> list[str]:
    """``--backends a,b --backends c`` -> ``[a, b, c]``."""
    names: list[str] = []
    for value in values:
        names.extend(n.strip() for n in value.split(",") if n.strip())
    return names


def generator_options(spec, args: Sequence[str]) -> dict[str, str]:
    """``--NAME VALUE`` / ``--NAME=VALUE`` arguments click did not know -> the generator's
    own options (``GeneratorSpec.options``) as keywords; anything else is a usage error."""
    known = {name: name.replace("-", "_") for name, _ in spec.options}
    takes = ", ".join(f"--{name}" for name in known) or "no options of its own"
    out: dict[str, str] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in known:
            raise BadInput(f"no such option: {arg} (generator {spec.name!r} takes {takes})")
        if not eq:
            if not rest:
                raise BadInput(f"option --{name} needs a value")
            value = rest.pop(0)
        out[known[name]] = value
    return out


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
    (``difftest fuzz -p mymod``), as ``pytest`` users expect.

    Subcommands are imported when first named (``LAZY``): ``difftest fuzz`` does not
    import what ``check-backend`` or ``report`` need, and neither does a campaign's worker
    process (it imports the entry point's module again)."""

    #: subcommand -> the module that registers it on ``cli``
    LAZY = {"check-backend": "difftest.cli_check", "new-backend": "difftest.cli_check",
            "fuzz": "difftest.cli_fuzz", "merge": "difftest.cli_fuzz", "import": "difftest.cli_import",
            "report": "difftest.cli_report", "replay": "difftest.cli_run", "shrink": "difftest.cli_shrink",
            "streams": "difftest.cli_streams"}

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        _add_plugin_option(self)
        return super().make_context(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.LAZY:
            import importlib

            importlib.import_module(self.LAZY[cmd_name])  # registers it on cli
            _add_plugin_option(self)
        return self.commands.get(cmd_name)


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
    from tabulate import tabulate

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


