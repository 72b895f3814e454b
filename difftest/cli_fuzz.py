"""``difftest fuzz`` (nightly campaigns) and ``difftest merge`` (shards -> one report)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import click

from difftest.baseline import load_baseline
from difftest.features import warnings
from difftest.campaign import JOURNAL, Campaign, campaign_corpus, merge_runs, read_campaign_meta, report_text
from difftest.cli_base import Context, cli, generator_options, pass_ctx, progress_bar, split_names
from difftest.cluster import ENV_SCHEDULER
from difftest.units import CampaignConfig, local_process_pool, parse_duration, parse_shard
from difftest.corpus import Corpus
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK, BadInput, NothingToRun, Terminated
from difftest.harness import DEFAULT_CHECKPOINT_EVERY, DEFAULT_REFERENCE
from difftest.streams import atomic_write_text

DEFAULT_BUDGET = "20s"


SUMMARY_WIDTH = 100  # the terminal summary fits this many columns


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_table(report: dict, width: int = SUMMARY_WIDTH) -> str:
    """One row per bug (status, backend, head, signatures, streams, reproducer ops), within
    ``width`` columns: columns two spaces apart, the head clipped only when it must be (the
    signatures and paths are in the report)."""
    headers = ["status", "backend", "bug (head)", "sigs", "streams", "ops"]
    rows = [[str(b["status"]), _clip(str(b["backend"]), 18), str(b["head"]), str(len(b["members"])), str(b["count"]),
             str(b["reproducer_ops"]) if b.get("reproducer_ops") is not None else "-"]
            for b in report.get("bugs", [])]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    widths[2] = max(20, min(widths[2], width - (sum(widths) - widths[2]) - 2 * (len(headers) - 1)))
    right = {3, 4, 5}

    def line(cells: list[str]) -> str:
        out = [(c.rjust(w) if i in right else _clip(c, w).ljust(w)) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def survival_lines(report: dict) -> list[str]:
    """One line per backend: streams survived, out of memory, the first op it died at."""
    lines = []
    for name, s in (report.get("survival") or {}).items():
        if s["out_of_memory"]:
            lines.append(f"survival: {name}: out of memory in {s['out_of_memory']} of {s['streams']} streams "
                         f"(first at op {s['first_out_of_memory_op']})")
        else:
            lines.append(f"survival: {name}: survived all {s['streams']} streams")
    return lines


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def progress_text(state: dict) -> str:
    """The bar's words: ops/s (one unit, always), finds, crashes and hangs, the time since the
    last new signature; with a budget, elapsed of budget and the time left."""
    elapsed = state["elapsed"]
    rate = state["ops"] / elapsed if elapsed > 0 else 0.0
    last = state.get("last_new")
    parts = [f"{rate:,.0f} ops/s, new {state['new']}, known {state['known']}",
             f"crashes {state.get('crashes', 0)}, hangs {state.get('hangs', 0)}",
             f"last new find {_clock(elapsed - last)} ago" if last is not None else "no find yet"]
    budget = state.get("budget")
    if budget:
        parts.insert(0, f"{state['streams']} streams, {_clock(elapsed)} of {_clock(budget)}, "
                        f"ETA {_clock(budget - elapsed)}")
    return "; ".join(parts)


def _progress_bar(enabled: bool, total: int | None, budget: float | None = None):
    """A tqdm bar on stderr, or None: over streams with --streams, over the time budget
    otherwise.  The rate is printed by us in ops/s (tqdm's own would flip between
    stream/s and s/stream)."""
    if not enabled:
        return None, None
    by_time = total is None and budget is not None
    fmt = ("{l_bar}{bar}| {postfix}" if by_time
           else "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    bar = progress_bar(int(budget) if by_time else total, "stream", bar_format=fmt)

    def update(state: dict) -> None:
        bar.n = min(int(state["elapsed"]), int(budget)) if by_time else state["streams"]
        bar.set_postfix_str(progress_text(state), refresh=False)
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
@click.option("--workers", default=None, type=click.IntRange(1), help="Worker processes (default: cores); with --executor dask, the most worker "
                   "threads used (default: all, as many as join).")
@click.option("--generator", default="random", show_default=True, help="A registered stream generator.")
@click.option("--feedback/--no-feedback", default=True, show_default=True,
              help="Coverage feedback: keep streams that reach new features in a feedback pool and spend "
                   "half the streams on their mutants (sharded runs keep one pool per shard).")
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
@click.option("--invariants", "invariants", type=click.Choice(["auto", "per-op", "checkpoint"]), default="auto",
              show_default=True,
              help="auto: in the audits, a break re-runs the stream with per-op checks to find its op (fast, "
                   "same findings); per-op: after every op (the precise path throughout); checkpoint: only in "
                   "the audits, a break pinned on the audit.")
@click.option("--report", "report_formats", multiple=True, metavar="FORMAT",
              help="Also write OUT/report.FORMAT with a registered report writer (repeatable).")
@click.option("--corpus", "corpus_dir", default=None, type=click.Path(file_okay=False),
              help="A directory of reproducers kept between runs: replayed first, new bugs added "
                   "(a shard replays its share and writes nothing: difftest merge does).")
@click.option("--compare", "previous", default=None, metavar="PREVIOUS_RUN_DIR", type=click.Path(),
              help="Mark each signature new, still open, fixed, regressed or known against an earlier run.")
@click.option("--executor", "executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where streams run: local worker processes, or the Dask cluster of --scheduler (docs/CLUSTER.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS", envvar=ENV_SCHEDULER, show_envvar=True,
              help="The Dask scheduler of --executor dask, such as tcp://10.0.0.5:8786.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout (no progress bar).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_ctx
def fuzz_cmd(ctx: Context, backends, reference, budget, n_streams, ops_per_stream, seed, workers, generator,
             feedback, phys_pages, out, baseline, resume, shard, stream_timeout, shrink_budget, checkpoint_every,
             invariants, report_formats, corpus_dir, previous, executor, scheduler, as_json, no_progress) -> int:
    """Run a fuzz campaign: seeded streams on every backend, divergences deduplicated,
    minimised, and split into new and known.  Exit 1 only for new divergences.

    A generator's own options (``--trace-dir DIR`` for ``--generator trace``) pass
    through to it."""
    registry = ctx.registry
    scheduler = _scheduler_address(executor, scheduler)
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
        _refuse_conflicts(config, resume, backends=split_names(backends) or None, reference=reference, seed=seed,
                          generator=generator, ops_per_stream=ops_per_stream, phys_pages=phys_pages,
                          streams=n_streams, stream_timeout=stream_timeout, shrink_budget=shrink_budget,
                          checkpoint_every=checkpoint_every, invariants=invariants)
        budget = _resumed_budget(config, out_dir, budget, as_json)
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
        if reference is None and ref != DEFAULT_REFERENCE and not as_json:
            click.echo(f"reference {ref}: {DEFAULT_REFERENCE} is not among the backends (choose one with "
                       f"--reference)", err=True)
        if seed is None:
            seed = int(time.time())
        shard_index, shard_count = parse_shard(shard)
        config = CampaignConfig(
            backends=tuple(names), reference=ref, seed=seed, generator=generator,
            ops_per_stream=ops_per_stream, phys_pages=phys_pages, streams=n_streams,
            shard_index=shard_index, shard_count=shard_count, stream_timeout=stream_timeout,
            shrink_budget=shrink_budget, checkpoint_every=checkpoint_every,
            plugins=tuple(ctx.plugin_modules), invariants=invariants,
            generator_options=tuple(sorted(gen_options.items())), feedback=feedback,
        )
        known = load_baseline(baseline) if baseline else list(registry.known)
        out_dir = Path(out) if out else Path("difftest-out") / time.strftime("%Y%m%d-%H%M%S")
    if budget is None and config.streams is None:
        budget = DEFAULT_BUDGET
    budget_s = parse_duration(budget) if budget else None
    show = not (as_json or no_progress) and sys.stderr.isatty()
    if not as_json:
        click.echo(f"campaign seed {config.seed} -> {out_dir}", err=True)
    bar, update = _progress_bar(show, config.streams, budget_s)
    before = None
    if previous is not None:
        from difftest.cli_report import load_report

        before, _ = load_report(previous, what="--compare")
    if resume and corpus_dir is None:
        corpus_dir = campaign_corpus(out_dir).path
    corpus = Corpus.open(corpus_dir) if corpus_dir else None
    fresh = not resume and not out_dir.exists()
    campaign: Campaign | None = None
    cluster = None
    try:
        factory = local_process_pool
        if scheduler is not None:
            from difftest.cluster import connect, worker_wait

            wait = worker_wait()  # (a bad value is said before connecting)
            # --workers caps the cluster's threads the campaign keeps busy; without it, all of
            # them, as many as join while it runs (docs/CLUSTER.md)
            cluster = factory = connect(scheduler, max_threads=workers)
            cluster.prepare(config.plugins, wait)
            workers = cluster.slots()
        campaign = Campaign(config, out_dir, known, workers=workers or os.cpu_count() or 1, budget=budget_s,
                            executor_factory=factory, progress=update, resume=bool(resume), corpus=corpus)
        with _sigterm_as_interrupt():
            report = campaign.run()
    except (BadInput, NothingToRun):
        if fresh:
            _remove_failed_start(out_dir, default_parent=out is None)
        raise
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        if campaign is not None:
            _print_interrupted(campaign, out_dir)
        raise
    finally:
        if bar is not None:
            bar.close()
        if cluster is not None:
            cluster.close()
    if before is not None:
        from difftest.lifecycle import compare

        report = {**report, "lifecycle": compare(report, before, previous_label=str(previous))}
    text = report_text(report)
    atomic_write_text(out_dir / "report.json", text)
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
        click.echo(text)
    else:
        print_summary(report, out_dir)
        cov = report.get("coverage") or {}
        click.echo(f"{cov.get('distinct', 0):,} distinct features reached", err=True)
        for line in warnings(cov):  # health checks: what the campaign never reached
            click.echo(f"warning: {line}", err=True)
    return EXIT_DIVERGENCES if report["summary"]["failing_bugs"] else EXIT_OK


def _scheduler_address(executor: str, scheduler: str | None) -> str | None:
    """The Dask scheduler to use, or None for local workers."""
    source = click.get_current_context().get_parameter_source("scheduler")
    if executor == "local":
        if scheduler is not None and source == click.core.ParameterSource.COMMANDLINE:
            raise BadInput("--scheduler applies to --executor dask")
        return None
    if not scheduler:
        raise BadInput(f"--executor dask needs --scheduler ADDRESS (or {ENV_SCHEDULER})")
    return scheduler


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (timeout, CI runners, Slurm) ends the campaign as Ctrl-C does: workers
    stopped, journal closed, a summary, resumable; then exit 143 (``errors.Terminated``)."""
    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_interrupted(campaign: Campaign, out_dir: Path) -> None:
    """What an interrupted campaign had found, and how to go on (stderr)."""
    signatures = len(campaign.records)
    click.echo(f"interrupted after {len(campaign.committed)} streams, {campaign.ops:,} ops: "
               f"{signatures} signature(s) found so far, kept in {out_dir}", err=True)
    click.echo(f"go on with: difftest fuzz --resume {out_dir}", err=True)


RESUME_FIXED = {"backends": "--backends", "reference": "--reference", "seed": "--seed", "generator": "--generator",
                "ops_per_stream": "--ops-per-stream", "phys_pages": "--phys-pages", "streams": "--streams",
                "stream_timeout": "--stream-timeout", "shrink_budget": "--shrink-budget",
                "checkpoint_every": "--checkpoint-every", "invariants": "--invariants"}


def _refuse_conflicts(config: CampaignConfig, resume: str, **given: Any) -> None:
    """--resume goes on with the campaign as it was defined: an option given on the command
    line that says otherwise is refused (it would be another campaign), never ignored."""
    ctx = click.get_current_context()
    for name, flag in RESUME_FIXED.items():
        value = given[name]
        param = "n_streams" if name == "streams" else name
        explicit = ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE
        if not explicit or value is None:
            continue
        have = list(config.backends) if name == "backends" else getattr(config, name)
        if value != have:
            shown = ",".join(have) if name == "backends" else have
            raise BadInput(f"--resume {resume}: the campaign has {flag} {shown}; {flag} "
                           f"{','.join(value) if name == 'backends' else value} would make another campaign "
                           f"(start it with --out DIR)")


def _resumed_budget(config: CampaignConfig, out_dir: Path, budget: str | None, quiet: bool) -> str | None:
    """The budget of a resumed campaign: its own (over every --resume), or --budget, said so."""
    meta_path = out_dir / "campaign.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    stored = meta.get("budget")
    if config.streams is not None:
        if budget is not None:
            raise BadInput(f"--resume {out_dir}: the campaign runs exactly {config.streams} streams; "
                           f"--budget does not apply to it")
        return None
    if budget is None:
        return f"{stored}s" if stored else DEFAULT_BUDGET
    new = parse_duration(budget)
    if new != stored:
        if not quiet:
            was = f" (it was {stored:g} s)" if stored else ""
            click.echo(f"--budget {budget}: the campaign's budget is now {new:g} s in all, over every --resume{was}",
                       err=True)
        atomic_write_text(meta_path, json.dumps({**meta, "budget": new}, indent=2))
    return budget


def _remove_failed_start(out_dir: Path, default_parent: bool) -> None:
    """A campaign that failed to start (exit 2 or 5) leaves no directory behind, unless a
    stream was committed (then it can be resumed)."""
    import shutil

    journal = out_dir / JOURNAL
    if journal.exists() and any('"k"' in line for line in journal.read_text(encoding="utf-8").splitlines()):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    if default_parent:
        with contextlib.suppress(OSError):
            out_dir.parent.rmdir()  # difftest-out/, when it held only this run


def print_summary(report: dict, out_dir: Path) -> None:
    """What a campaign found, bugs first, within SUMMARY_WIDTH columns."""
    t = report.get("timing", {})
    click.echo(f"{report['streams']} streams, {report['ops']:,} ops in {t.get('elapsed', 0):.1f} s "
               f"({t.get('ops_per_second') or 0:,.0f} ops/s, {t.get('workers')} workers)")
    click.echo(textwrap.fill(f"backends {', '.join(report['backends'])}; reference {report['reference']}",
                             SUMMARY_WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    summary = report["summary"]
    bugs = report.get("bugs", [])
    if bugs:
        click.echo(f"{summary['bugs']} bug(s) ({summary['signatures']} signatures): {summary['failing_bugs']} failing, "
                   f"{summary['known_bugs']} known, {summary['fixed_bugs']} fixed")
        click.echo(summary_table(report))
    else:
        click.echo("no divergences")
    for line in survival_lines(report):
        click.echo(line)
    if report.get("corpus"):
        click.echo(corpus_line(report["corpus"]))
    for gone in report["no_longer_seen"]:
        click.echo(_clip(f"no longer seen (fixed?): {gone['signature']}  [{gone['reason']}]", SUMMARY_WIDTH))
    for death in report["worker_deaths"]:
        click.echo(f"worker died on stream {death['stream']} (seed {death['seed']}); "
                   f"alone: {', '.join(death['backends']) or 'no single backend'}")
    click.echo(f"report: {out_dir / 'report.json'}")


def corpus_line(corpus: dict) -> str:
    """What replaying the corpus did, and what was written back to it (a shard writes nothing)."""
    replayed = f"{corpus['replayed']} of {corpus['entries']} reproducers replayed"
    if "shard" in corpus:
        return (f"corpus {corpus['path']}: {replayed} ({corpus['other_shards']} by the other shards), "
                f"{corpus['diverged']} still diverge; shard {corpus['shard']}: not written (the merge writes it)")
    return f"corpus {corpus['path']}: {replayed}, {corpus['diverged']} still diverge, {corpus['added']} added"


@cli.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--corpus", "corpus_dir", default=None, type=click.Path(file_okay=False),
              help="The corpus the shards replayed (default: the one they were started with): judged with "
                   "their replays and written back, once.")
@click.option("--json", "as_json", is_flag=True)
def merge_cmd(dirs, out, corpus_dir, as_json) -> int:
    """Combine the outputs of campaign shards into one report."""
    report = merge_runs([Path(d) for d in dirs], Path(out), Path(corpus_dir) if corpus_dir else None)
    for i in report["campaign"].get("shards_missing", []):
        click.echo(f"difftest: warning: missing shard {i} of {report['campaign']['shard'].split('/')[-1]}",
                   err=True)
    if report["campaign"].get("shards_missing") and report.get("corpus"):
        click.echo(f"difftest: warning: corpus {report['corpus']['path']} not written: merge again with every shard",
                   err=True)
    if as_json:
        click.echo(report_text(report))
    else:
        click.echo(f"{report['streams']} streams, {report['ops']} ops from {len(dirs)} shard(s)")
        click.echo(summary_table(report) if report["bugs"] else "no divergences")
        if report.get("corpus"):
            click.echo(corpus_line(report["corpus"]))
        click.echo(f"report: {Path(out) / 'report.json'}")
    return EXIT_DIVERGENCES if report["summary"]["failing_bugs"] else EXIT_OK
