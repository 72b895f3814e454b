"""``difftest replay``: run stream files on the backends and show what diverged."""

from __future__ import annotations

import json
from typing import Sequence

import click
from tabulate import tabulate

from difftest import streams
from difftest.bugs import head_key
from difftest.campaign import load_baseline, match_bug
from difftest.cli_base import Context, cli, pass_ctx
from difftest.divergence import KnownDivergence
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK
from difftest.harness import DEFAULT_CHECKPOINT_EVERY, Harness
from difftest.report import report_from_runs


def split_names(values: Sequence[str]) -> list[str]:
    """``--backends a,b --backends c`` -> ``[a, b, c]``."""
    names: list[str] = []
    for value in values:
        names.extend(n.strip() for n in value.split(",") if n.strip())
    return names


def make_harness(ctx: Context, backends: Sequence[str], reference: str | None, **kwargs) -> Harness:
    return Harness.from_registry(ctx.registry, split_names(backends) or None, reference, **kwargs)


def divergence_table(report: dict, max_width: int = 48) -> str:
    """Op index, op, kind, backend, then every backend's observation side by side."""
    backends = report["backends"]
    rows = []
    for entry in report["divergences"]:
        first = entry["first"]
        obs = [_clip(first["observations"].get(b, ""), max_width) for b in backends]
        rows.append([first["op_index"], _clip(first["op"], 60), entry["kind"], entry["backend"],
                     _clip(entry["class"], 32), entry["count"], *obs])
    headers = ["op", "operation", "kind", "backend", "class", "n", *backends]
    return tabulate(rows, headers=headers, tablefmt="simple")


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command("replay")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--backends", "backends", multiple=True, metavar="A,B,...",
              help="Backends to run (default: every one registered as a default).")
@click.option("--reference", default=None, metavar="NAME", help="The judge (default: alpha-ref).")
@click.option("--checkpoint-every", default=DEFAULT_CHECKPOINT_EVERY, show_default=True,
              type=click.IntRange(1), help="Full audit every N ops (and at the end).")
@click.option("--invariants", "invariants", type=click.Choice(["per-op", "checkpoint"]), default="per-op",
              show_default=True, help="Check backend invariants after every op, or only at checkpoints (faster).")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False),
              help="TOML of known divergences (default: those the plugins register).")
@click.option("--strict", is_flag=True, help="Exit 1 for known divergences too.")
@click.option("--json", "as_json", is_flag=True, help="Print one difftest.report/1 document.")
@pass_ctx
def replay_cmd(ctx: Context, files: tuple[str, ...], backends: tuple[str, ...], reference: str | None,
               checkpoint_every: int, invariants: str, baseline: str | None, strict: bool, as_json: bool) -> int:
    """Run stream files on the backends; exit 1 when anything the baseline does not know
    diverged (with --strict: when anything diverged)."""
    loaded = [streams.load(path) for path in files]  # every file is checked before any runs
    harness = make_harness(ctx, backends, reference, checkpoint_every=checkpoint_every,
                           invariants_per_op=invariants == "per-op")
    runs = [harness.run(stream) for stream in loaded]
    report = report_from_runs(runs)
    mark_known(report, load_baseline(baseline) if baseline else list(ctx.registry.known))
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
    else:
        _print_replay(report, runs, files)
    failing = [e for e in report["divergences"] if strict or not e["known"]]
    return EXIT_DIVERGENCES if failing else EXIT_OK


def mark_known(report: dict, known: Sequence[KnownDivergence]) -> None:
    """Mark each divergence known when a baseline entry matches its signature or its head
    key (``difftest.bugs.head_key``: the op kind left out where it only says where a bug
    surfaced), as a campaign matches a bug by its head or any member."""
    for entry in report["divergences"]:
        kd = match_bug(head_key(entry["first"]), [entry["signature"]], known)
        entry["known"] = kd is not None
        entry["known_reason"] = kd.reason if kd else None


def _print_replay(report: dict, runs, files) -> None:
    backends = ", ".join(report["backends"])
    click.echo(f"{len(runs)} stream(s), {report['ops']} ops on {backends} (reference {report['reference']})")
    for path, run in zip(files, runs):
        for name, why in sorted(run.stopped.items()):
            click.echo(f"{path}: {name} stopped: {why}")
    allowed = report["allowed"]
    if allowed:
        parts = [f"{b}: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
                 for b, kinds in sorted(allowed.items())]
        click.echo("allowed differences: " + "; ".join(parts))
    if not report["divergences"]:
        click.echo("no divergences")
        return
    click.echo(divergence_table(report))
    click.echo("")
    for entry in report["divergences"]:
        first = entry["first"]
        status = f"known ({entry['known_reason']})" if entry["known"] else "NEW"
        click.echo(f"{entry['signature']}  (op {first['op_index']}: {first['op']})  [{status}]")
        click.echo(f"  {first['message']}")
        click.echo(f"  {first['attribution']}")
        if first.get("traceback"):
            click.echo("  " + first["traceback"].rstrip().splitlines()[-1])
