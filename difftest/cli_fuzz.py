"""``difftest fuzz`` (nightly campaigns) and ``difftest merge`` (shards -> one report)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from tabulate import tabulate

from difftest.campaign import (
    Campaign,
    CampaignConfig,
    load_baseline,
    merge_runs,
    parse_duration,
    parse_shard,
    read_campaign_meta,
)
from difftest.cli_base import Context, cli, pass_ctx, progress_bar
from difftest.cli_run import split_names
from difftest.cli_streams import generator_options
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK, BadInput
from difftest.harness import DEFAULT_CHECKPOINT_EVERY, DEFAULT_REFERENCE
from difftest.streams import atomic_write_text

DEFAULT_BUDGET = "20s"


def summary_table(report: dict) -> str:
    rows = []
    for e in report["divergences"]:
        status = "known" if e["known"] else "NEW"
        rows.append([e["kind"], e["backend"], e["signature"], e["count"], status,
                     e.get("reproducer_ops") or "-", e.get("reproducer_path") or "-"])
    return tabulate(rows, headers=["kind", "backend", "signature", "streams", "status", "ops", "reproducer"],
                    tablefmt="simple")


def _progress_bar(enabled: bool, total: int | None):
    """A tqdm bar on stderr (streams, ops/s, new/known), or None."""
    if not enabled:
        return None, None
    bar = progress_bar(total, "stream")

    def update(state: dict) -> None:
        bar.n = state["streams"]
        rate = state["ops"] / state["elapsed"] if state["elapsed"] > 0 else 0.0
        bar.set_postfix_str(f"{rate:,.0f} ops/s, new {state['new']}, known {state['known']}", refresh=False)
        bar.refresh()

    return bar, update


@cli.command("fuzz", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--backends", "backends", multiple=True, metavar="A,B,...",
              help="Backends to run (default: every one registered as a default).")
@click.option("--reference", default=None, metavar="NAME", help="The judge (default: alpha-ref).")
@click.option("--budget", default=None, metavar="DURATION",
              help=f"Wall-clock budget such as 30s, 5m, 8h (default {DEFAULT_BUDGET} unless --streams).")
@click.option("--streams", "n_streams", type=click.IntRange(1), default=None,
              help="Run exactly N streams (deterministic: the same report at any --workers).")
@click.option("--ops-per-stream", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=None, type=int, help="Campaign seed (default: from the clock; printed).")
@click.option("--workers", default=None, type=click.IntRange(1), help="Worker processes (default: cores).")
@click.option("--generator", default="random", show_default=True, help="A registered stream generator.")
@click.option("--phys-pages", default=8192, show_default=True, type=click.IntRange(16, 1 << 20))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Output directory (default difftest-out/<timestamp>/).")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False),
              help="TOML of known divergences (default: those the plugins register).")
@click.option("--resume", default=None, type=click.Path(file_okay=False),
              help="Go on with the campaign in this directory.")
@click.option("--shard", default=None, metavar="i/N", help="Run slice i of N (0-based).")
@click.option("--stream-timeout", default=60.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds one stream may take before it is a hang.")
@click.option("--shrink-budget", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to minimise each new signature (0: keep whole streams).")
@click.option("--checkpoint-every", default=DEFAULT_CHECKPOINT_EVERY, show_default=True, type=click.IntRange(1))
@click.option("--invariants", "invariants", type=click.Choice(["per-op", "checkpoint"]), default="per-op",
              show_default=True, help="Check backend invariants after every op, or only at checkpoints (faster).")
@click.option("--report", "report_formats", multiple=True, metavar="FORMAT",
              help="Also write OUT/report.FORMAT with a registered report writer (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout (no progress bar).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_ctx
def fuzz_cmd(ctx: Context, backends, reference, budget, n_streams, ops_per_stream, seed, workers, generator,
             phys_pages, out, baseline, resume, shard, stream_timeout, shrink_budget, checkpoint_every,
             invariants, report_formats, as_json, no_progress) -> int:
    """Run a fuzz campaign: seeded streams on every backend, divergences deduplicated,
    minimised, and split into new and known.  Exit 1 only for new divergences.

    A generator's own options (``--trace-dir DIR`` for ``--generator trace``) pass
    through to it."""
    registry = ctx.registry
    for fmt in report_formats:
        if fmt not in registry.reporters:
            raise BadInput(f"unknown report format {fmt!r} (registered: {', '.join(sorted(registry.reporters)) or 'none'})")
    extra = click.get_current_context().args
    if resume:
        if extra:
            raise BadInput(f"no such option: {extra[0]} (--resume takes everything else from the campaign)")
        out_dir = Path(resume)
        if not (out_dir / "campaign.json").exists():
            raise BadInput(f"--resume {resume}: no campaign.json there")
        config, known = read_campaign_meta(out_dir)
    else:
        names = split_names(backends) or registry.default_backends()
        if not names:
            raise BadInput("no backends registered (is DIFFTEST_DISABLE_PLUGIN_AUTOLOAD set?)")
        unknown = [n for n in names if n not in registry.backends]
        if unknown:
            raise BadInput(f"unknown backend {unknown[0]!r} (registered: {', '.join(sorted(registry.backends))})")
        if generator not in registry.generators:
            raise BadInput(f"unknown generator {generator!r} (registered: {', '.join(sorted(registry.generators)) or 'none'})")
        gen_options = generator_options(registry.generators[generator], extra)
        ref = reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in names else names[0])
        if ref not in names:
            raise BadInput(f"reference {ref!r} is not among the backends ({', '.join(names)})")
        if seed is None:
            seed = int(time.time())
        shard_index, shard_count = parse_shard(shard)
        config = CampaignConfig(
            backends=tuple(names), reference=ref, seed=seed, generator=generator,
            ops_per_stream=ops_per_stream, phys_pages=phys_pages, streams=n_streams,
            shard_index=shard_index, shard_count=shard_count, stream_timeout=stream_timeout,
            shrink_budget=shrink_budget, checkpoint_every=checkpoint_every,
            plugins=tuple(ctx.plugin_modules), invariants=invariants,
            generator_options=tuple(sorted(gen_options.items())),
        )
        known = load_baseline(baseline) if baseline else list(registry.known)
        out_dir = Path(out) if out else Path("difftest-out") / time.strftime("%Y%m%d-%H%M%S")
    if budget is None and config.streams is None:
        budget = DEFAULT_BUDGET
    budget_s = parse_duration(budget) if budget else None
    show = not (as_json or no_progress) and sys.stderr.isatty()
    if not as_json:
        click.echo(f"campaign seed {config.seed} -> {out_dir}", err=True)
    bar, update = _progress_bar(show, config.streams)
    campaign = Campaign(config, out_dir, known, workers=workers or os.cpu_count() or 1, budget=budget_s,
                        progress=update, resume=bool(resume))
    try:
        report = campaign.run()
    finally:
        if bar is not None:
            bar.close()
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False))
    for fmt in report_formats:
        spec = registry.reporters[fmt]
        target = out_dir / f"report{spec.extension}"
        if target.name == "report.json":
            continue  # the core already wrote exactly this document there
        from io import StringIO

        from difftest.cli_report import call_writer

        buf = StringIO()
        call_writer(spec.write, report, buf, registry=registry, run_dir=out_dir)
        atomic_write_text(target, buf.getvalue())
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
    else:
        t = report.get("timing", {})
        click.echo(f"{report['streams']} streams, {report['ops']} ops in {t.get('elapsed', 0):.1f} s "
                   f"({t.get('ops_per_second') or 0:,.0f} ops/s, {t.get('workers')} workers); "
                   f"backends {', '.join(report['backends'])}, reference {report['reference']}")
        if report["divergences"]:
            click.echo(summary_table(report))
        else:
            click.echo("no divergences")
        for gone in report["no_longer_seen"]:
            click.echo(f"no longer seen (fixed?): {gone['signature']}  [{gone['reason']}]")
        for death in report["worker_deaths"]:
            click.echo(f"worker died on stream {death['stream']} (seed {death['seed']}); "
                       f"alone: {', '.join(death['backends']) or 'no single backend'}")
        click.echo(f"report: {out_dir / 'report.json'}")
    return EXIT_DIVERGENCES if report["summary"]["new"] else EXIT_OK


@cli.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def merge_cmd(dirs, out, as_json) -> int:
    """Combine the outputs of campaign shards into one report."""
    report = merge_runs([Path(d) for d in dirs], Path(out))
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
    else:
        click.echo(f"{report['streams']} streams, {report['ops']} ops from {len(dirs)} shard(s)")
        click.echo(summary_table(report) if report["divergences"] else "no divergences")
        click.echo(f"report: {Path(out) / 'report.json'}")
    return EXIT_DIVERGENCES if report["summary"]["new"] else EXIT_OK
