"""``difftest shrink``: minimise a reproducer stream, keeping one divergence signature."""

from __future__ import annotations

import click

from difftest import streams
from difftest.cli_base import Context, cli, pass_ctx
from difftest.cli_run import make_harness
from difftest.errors import EXIT_OK, BadInput, NothingToRun
from difftest.legality import vm_legality_problems


@cli.command("shrink")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the minimised stream.")
@click.option("--signature", default=None, metavar="SIG",
              help="The divergence to keep (default: the first one the stream shows).")
@click.option("--backends", "backends", multiple=True, metavar="A,B,...",
              help="Backends to run (default: every one registered as a default).")
@click.option("--reference", default=None, metavar="NAME", help="The judge (default: alpha-ref).")
@click.option("--budget", "budget_text", default="10s", show_default=True, metavar="DURATION",
              help="Stop after this long (30s, 5m, 90) with the smallest stream so far.")
@click.option("--time-limit", default=None, type=click.FloatRange(min=0.0, min_open=True),
              metavar="SECONDS", help="Bound each run (needed to shrink a hang; default 10 s for hangs).")
@click.option("--no-vm-legality", is_flag=True,
              help="Accept candidates the VM layer would never issue (only the stream format's "
                   "rules are kept); for hand-written streams that break a VM rule on purpose.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@pass_ctx
def shrink_cmd(ctx: Context, file: str, output: str, signature: str | None, backends: tuple[str, ...],
               reference: str | None, budget_text: str, time_limit: float | None, no_vm_legality: bool,
               quiet: bool) -> int:
    """Minimise FILE while its run keeps showing one divergence signature.

    Exit 0 when the minimised stream was written, 5 when FILE shows no divergence, 2 on a
    bad file, an unknown backend, a signature FILE does not show, or a stream that breaks a
    VM rule (see --no-vm-legality).
    """
    from difftest.units import parse_duration
    from difftest.shrink import shrink

    budget = parse_duration(budget_text)  # the same 30s|5m|8h as fuzz --budget
    stream = streams.load(file)
    legal = None if no_vm_legality else vm_legality_problems
    if legal is not None:
        problems = vm_legality_problems(stream, first_only=True)
        if problems:
            raise BadInput(f"{file}: {problems[0]} (the VM never does this; shrink it anyway "
                           f"with --no-vm-legality)")
    harness = make_harness(ctx, backends, reference)
    result = harness.run(stream, time_limit=time_limit) if time_limit else harness.run(stream)
    found = [d.signature for d in result.divergences]
    if not found:
        raise NothingToRun(f"{file}: no divergence on {', '.join(result.backends)}: nothing to shrink")
    if signature is None:
        signature = found[0]
        others = sorted(set(found) - {signature})
        more = f" ({len(others)} other signature(s): {', '.join(others)})" if others else ""
        click.echo(f"difftest: shrinking for {signature}, the first divergence of the stream{more}", err=True)
    elif signature not in found:
        raise BadInput(f"{file} does not show {signature} (it shows: {', '.join(sorted(set(found)))})")

    def progress(text: str) -> None:
        if not quiet:
            click.echo(f"difftest: {text}", err=True)

    outcome = shrink(stream, harness, signature, time_budget=budget, legal=legal, progress=progress,
                     time_limit=time_limit)
    streams.save(outcome.stream, output)
    state = "done" if outcome.complete else "budget reached"
    click.echo(
        f"{output}: {len(outcome.stream)} ops (from {outcome.original_ops}) showing {signature}; "
        f"{outcome.runs} runs, {outcome.reductions} reductions, {outcome.elapsed:.2f} s ({state})"
    )
    return EXIT_OK
