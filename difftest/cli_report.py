"""``difftest report RUN_DIR``: render a run's ``report.json`` with a registered writer.

RUN_DIR is what ``difftest fuzz --out`` or ``difftest merge --out`` wrote (a path to a
``report.json`` itself is accepted too).  ``--compare PREVIOUS`` adds the nightly
lifecycle (``difftest.lifecycle``): new, still open, fixed, regressed, known.  Saving the
result as JSON over the run's report keeps the lifecycle for the next night's comparison::

    difftest report runs/today --compare runs/yesterday --format json -o runs/today/report.json

Exit status: 0 when the report was written, whatever it contains (this is a renderer;
``difftest fuzz`` and ``difftest replay`` exit 1 for new divergences), 2 for bad input (a
missing directory, an unreadable or invalid report.json, an unknown format), 3 when a
plugin or writer fails.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path
from typing import Any

import click

from difftest.cli_base import Context, cli, pass_ctx
from difftest.errors import EXIT_OK, BadInput, PluginError
from difftest.jsonstream import finite_float, refuse_constant
from difftest.lifecycle import compare
from difftest.report import REPORT_FORMAT
from difftest.report_shape import nested_problem
from difftest.streams import atomic_write_text

REPORT_FILE = "report.json"


def load_report(path: str | Path, what: str = "RUN_DIR") -> tuple[dict[str, Any], Path]:
    """(the report, its run directory); every problem is a BadInput naming the path."""
    path = Path(path)
    if path.is_dir():
        file, run_dir = path / REPORT_FILE, path
    elif path.is_file():
        file, run_dir = path, path.parent
    else:
        raise BadInput(f"{what} {path}: no such directory")
    if not file.is_file():
        raise BadInput(f"{what} {path}: no {REPORT_FILE} there (written by difftest fuzz or difftest merge)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{file}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise BadInput(f"{file}: malformed JSON: {exc}") from None
    problem = _shape_problem(doc)
    if problem:
        raise BadInput(f"{file}: not a {REPORT_FORMAT} document: {problem}")
    return doc, run_dir


def _shape_problem(doc: Any) -> str | None:
    """What the writers rely on (docs/REPORT.md, the fields every report has)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("format") != REPORT_FORMAT:
        return f"field 'format' is {doc.get('format')!r}"
    if not isinstance(doc.get("backends"), list) or not all(isinstance(b, str) for b in doc["backends"]):
        return "field 'backends' is not a list of names"
    if not isinstance(doc.get("reference"), str):
        return "field 'reference' is not a name"
    for key in ("streams", "ops"):
        if type(doc.get(key)) is not int:
            return f"field {key!r} is not an integer"
    entries = doc.get("divergences")
    if not isinstance(entries, list):
        return "field 'divergences' is not a list"
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            return f"divergence {i} is not an object"
        for key in ("signature", "kind", "backend"):
            if not isinstance(e.get(key), str):
                return f"divergence {i} has no {key!r} string"
        if not isinstance(e.get("known"), bool):
            return f"divergence {i} has no 'known' boolean"
        if e.get("reproducer") is not None and not isinstance(e.get("reproducer"), dict):
            return f"divergence {i}: 'reproducer' is not a stream object"
    for key in ("campaign", "summary", "timing", "lifecycle", "tool"):
        if key in doc and not isinstance(doc[key], dict):
            return f"field {key!r} is not an object"
    for key in ("no_longer_seen", "worker_deaths"):
        if key in doc and not isinstance(doc[key], list):
            return f"field {key!r} is not a list"
    return nested_problem(doc)


def _registry(ctx: Context, run_dir: Path):
    """The plugins given on the command line plus those the campaign ran with."""
    extra: list[str] = []
    try:
        meta = json.loads((run_dir / "campaign.json").read_text(encoding="utf-8"))
        extra = [str(p) for p in meta["config"].get("plugins") or ()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    missing = [p for p in extra if p not in ctx.plugin_modules]
    if not missing:
        return ctx.registry
    from difftest.plugins import PluginHost

    host = PluginHost()
    try:
        host.load([*ctx.plugin_modules, *missing])
    except PluginError as exc:
        click.echo(f"difftest: warning: the campaign's plugins do not load here ({exc}); "
                   f"its backends are not run again", err=True)
        return ctx.registry
    return host.registry


def call_writer(write: Any, report: dict[str, Any], out: Any, **context: Any) -> None:
    """``write(report, out)`` plus whichever of ``context`` (registry, run_dir) it accepts."""
    try:
        params = inspect.signature(write).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in context.items() if takes_all or k in params}
    write(report, out, **kwargs)


@cli.command("report")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path())
@click.option("--format", "fmt", default="text", show_default=True, metavar="FORMAT",
              help="A registered report writer: text, markdown, json, junit, html, or a plugin's.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write to FILE instead of standard output.")
@click.option("--compare", "previous", default=None, metavar="PREVIOUS_RUN_DIR", type=click.Path(),
              help="Mark each signature new, still open, fixed, regressed or known against an earlier run.")
@pass_ctx
def report_cmd(ctx: Context, run_dir: str, fmt: str, output: str | None, previous: str | None) -> int:
    """Render RUN_DIR/report.json as text, markdown, json, junit or html.

    Exits 0 when the report is written, whatever it found (this is a renderer; gate CI on
    the exit status of `difftest fuzz`, or on `summary.new` in the JSON); 2 for bad input.
    """
    report, run_path = load_report(run_dir)
    if previous is not None:
        before, _ = load_report(previous, what="--compare")
        report = {**report, "lifecycle": compare(report, before, previous_label=str(previous))}
    registry = _registry(ctx, run_path)
    spec = registry.reporters.get(fmt)
    if spec is None:
        names = ", ".join(sorted(registry.reporters)) or "none registered"
        raise BadInput(f"unknown report format {fmt!r} (registered: {names})")
    buf = io.StringIO()
    try:
        call_writer(spec.write, report, buf, registry=registry, run_dir=run_path)
    except Exception as exc:  # a writer is plugin code: one line, exit 3
        raise PluginError(f"report writer {fmt!r} (plugin {spec.plugin or '?'}) failed: "
                          f"{type(exc).__name__}: {exc}") from None
    text = buf.getvalue()
    if output is not None:
        try:
            atomic_write_text(output, text)
        except OSError as exc:
            raise BadInput(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    else:
        click.echo(text, nl=not text.endswith("\n"))
    return EXIT_OK
