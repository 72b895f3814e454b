"""``difftest import FORMAT LOG -o STREAM``: a trace of a real program -> a stream file."""

from __future__ import annotations

import click

from difftest import streams
from difftest.backend import DEFAULT_MAX_PAGES_PER_MAPPING
from difftest.cli_base import Context, cli, pass_ctx
from difftest.errors import EXIT_OK, BadInput
from difftest.legality import first_problem
from difftest.machine import DEFAULT_PHYS_PAGES
from difftest.streams import Stream


@cli.command("import")
@click.argument("format_name", metavar="FORMAT")
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="The stream file to write.")
@click.option("--phys-pages", type=click.IntRange(16, 1 << 20), default=DEFAULT_PHYS_PAGES,
              show_default=True, help="Frames of physical memory (4 KiB each) of the machine.")
@click.option("--max-pages-per-mapping", type=click.IntRange(1), default=DEFAULT_MAX_PAGES_PER_MAPPING,
              show_default=True, help="Pages touched per mapping; larger ones are sampled in runs.")
@pass_ctx
def import_cmd(ctx: Context, format_name: str, log: str, output: str, phys_pages: int,
               max_pages_per_mapping: int) -> int:
    """Turn LOG, a trace in FORMAT (a registered importer: strace, ...), into a stream file.

    The same log and options give the same bytes.  What could not be imported (pages with
    no room in the 32-bit user range, ...) is said on stderr and kept in the stream's
    origin."""
    importers = ctx.registry.importers
    spec = importers.get(format_name)
    if spec is None:
        known = ", ".join(sorted(importers)) or "none"
        raise BadInput(f"unknown trace format {format_name!r} (registered importers: {known})")
    stream = spec.convert(log, phys_pages=phys_pages, max_pages_per_mapping=max_pages_per_mapping)
    if not isinstance(stream, Stream):
        raise BadInput(f"importer {format_name!r} (plugin {spec.plugin}) returned {type(stream).__name__}, "
                       f"not a Stream")
    streams.validate_ops(stream.ops, stream.phys_pages)
    problem = first_problem(stream)
    if problem is not None:  # the importer's bug, not the log's: exit 3
        raise RuntimeError(f"importer {format_name!r} produced a stream the VM would never issue: {problem}")
    streams.save(stream, output)
    for warning in stream.origin.get("warnings", ()):
        click.echo(f"difftest: warning: {log}: {warning}", err=True)
    pmaps = sum(1 for op in stream.ops if op.name == "create")
    click.echo(f"{output}: {len(stream)} ops, {pmaps} pmaps, {len(stream.data_frames())} data pages "
               f"from {log} ({format_name})")
    return EXIT_OK
