"""``difftest replay``: run stream files on the backends and show what diverged."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Sequence

import click

from difftest import streams
from difftest.bugs import head_key
from difftest.baseline import load_baseline, match_bug
from difftest.cli_base import Context, cli, pass_ctx, progress_bar, split_names  # noqa: F401
from difftest.divergence import KnownDivergence, RunResult
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK, BadInput
from difftest.harness import DEFAULT_CHECKPOINT_EVERY, Harness
from difftest.ops import Op
from difftest.report import report_from_runs
from difftest.streams import Stream


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
                     _clip(entry["class"], 32), entry["events"], *obs])
    headers = ["op", "operation", "kind", "backend", "class", "n", *backends]
    from tabulate import tabulate

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
@click.option("--shrink", "do_shrink", is_flag=True,
              help="Minimise a reproducer for each signature (from the ops up to its first sighting).")
@click.option("--shrink-budget", default=10.0, show_default=True, type=click.FloatRange(0),
              metavar="SECONDS", help="With --shrink: seconds to minimise each signature.")
@click.option("--stream-timeout", default=60.0, show_default=True, type=click.FloatRange(0.01),
              metavar="SECONDS", help="Time limit of each run, shrink runs included (past it: a hang).")
@click.option("--json", "as_json", is_flag=True, help="Print one difftest.report/1 document.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_ctx
def replay_cmd(ctx: Context, files: tuple[str, ...], backends: tuple[str, ...], reference: str | None,
               checkpoint_every: int, invariants: str, baseline: str | None, strict: bool, do_shrink: bool,
               shrink_budget: float, stream_timeout: float, as_json: bool, no_progress: bool) -> int:
    """Run stream files on the backends; exit 1 when anything the baseline does not know
    diverged (with --strict: when anything diverged).

    Streams are read as they run (memory does not grow with their length); a divergence
    names its stream and the op range that reproduces it, and --shrink adds a minimised
    stream."""
    # Every file is checked before any runs; the ops stay in the files until used.
    loaded = [streams.open_stream(path) for path in files]
    harness = make_harness(ctx, backends, reference, checkpoint_every=checkpoint_every,
                           invariants_per_op=invariants == "per-op")
    bar = _ops_bar(not (as_json or no_progress) and sys.stderr.isatty(), sum(len(s) for s in loaded))
    # What a backend prints goes to stderr: stdout may be the JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            runs = [harness.run(_counted(stream, bar), time_limit=stream_timeout) for stream in loaded]
        finally:
            if bar is not None:
                bar.close()
        reproducers, notes = (_shrink_firsts(harness, runs, loaded, files, shrink_budget, stream_timeout)
                              if do_shrink else ({}, {}))
    report = report_from_runs(runs, sources=files, reproducers=reproducers, shrink_notes=notes)
    mark_known(report, load_baseline(baseline) if baseline else list(ctx.registry.known))
    if as_json:
        from difftest.campaign import report_text  # (what report.json holds: the same encoding)

        click.echo(report_text(report))
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


def _ops_bar(enabled: bool, total: int):
    """A bar of ops on stderr (only on a terminal), or None."""
    return progress_bar(total, "op", unit_scale=True, mininterval=0.5) if enabled else None


class _CountedOps(Sequence[Op]):
    """A stream's ops that advance a progress bar as the harness reads them (every 1024)."""

    def __init__(self, ops: Sequence[Op], bar) -> None:
        self.ops = ops
        self.bar = bar

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, index):  # type: ignore[override]
        if type(index) is int and index & 1023 == 1023:
            self.bar.update(1024)
        return self.ops[index]


def _counted(stream: Stream, bar) -> Stream:
    if bar is None:
        return stream
    # dataclasses.replace keeps the subclass (a FileStream keeps its data frames).
    return dataclasses.replace(stream, ops=_CountedOps(stream.ops, bar))


def _shrink_firsts(harness: Harness, runs: Sequence[RunResult], loaded: Sequence[Stream],
                   files: Sequence[str], budget: float,
                   time_limit: float | None = None) -> tuple[dict[str, Stream], dict[str, str]]:
    """For each signature, minimise the ops up to its first sighting (``replay --shrink``)."""
    from difftest.shrink import shrink

    reproducers: dict[str, Stream] = {}
    notes: dict[str, str] = {}
    for run, stream, path in zip(runs, loaded, files):
        for d in run.divergences:
            if d.signature in reproducers or d.signature in notes:
                continue
            end = max(d.op_index + 1, 0)
            prefix = streams.Stream(ops=tuple(stream.ops[:end]), phys_pages=stream.phys_pages,
                                    origin={"stream": path, "start": 0, "end": end})
            try:
                reproducers[d.signature] = shrink(prefix, harness, d.signature, time_budget=budget,
                                                      time_limit=time_limit).stream
            except BadInput as exc:  # not VM-legal, or the prefix alone does not show it
                notes[d.signature] = f"not minimised: {exc}"
    return reproducers, notes


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
        ref = entry["reproducer_ref"]
        click.echo(f"  seen in {entry['count']} stream(s), {entry['events']} time(s); reproduced by ops "
                   f"[{ref['start']}, {ref['end']}) of {ref['stream']}")
        if entry["reproducer"] is not None:
            click.echo(f"  minimised: {len(entry['reproducer']['ops'])} ops (--json prints them)")
        elif entry.get("shrink_note"):
            click.echo(f"  {entry['shrink_note']}")
