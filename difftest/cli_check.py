"""``difftest check-backend``: does one backend conform to the pmap(9) contract?

The battery of hand-written contract streams (``difftest.conformance``), each run against
the reference, then a short campaign with shrunk reproducers; one table row per check.
Exit 0 when the backend conforms (expected failures allowed), 1 when it does not (a backend
that crashes, hangs or ends its process anywhere, bootstrap included, fails the check it was
running: every call into the backends runs in a worker process, bounded).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click
from tabulate import tabulate

from difftest import streams
from difftest.campaign import Campaign
from difftest.units import CampaignConfig, local_process_pool, parse_duration
from difftest.cli_base import Context, cli, pass_ctx
from difftest.conformance import (
    CHECK_FORMAT,
    CHECKS,
    FAIL,
    PASS,
    SKIP,
    BatteryTask,
    CheckResult,
    Conformance,
    Probe,
    ProbeTask,
    ReproducerTask,
    campaign_rows,
    conforming,
    firsts_isolated,
    probe_isolated,
    registered_pair,
    run_battery_isolated,
)
from difftest.divergence import Divergence
from difftest.errors import EXIT_DIVERGENCES, EXIT_OK, BadInput, NothingToRun

CAMPAIGN_OPS = 500  # ops per campaign stream: many short streams, quick to shrink


@cli.command("check-backend")
@click.argument("name")
@click.option("--reference", default=None, metavar="NAME", help="The judge (default: alpha-ref).")
@click.option("--budget", default="30s", show_default=True, metavar="DURATION",
              help="Time for the whole check (the campaign gets what the battery leaves).")
@click.option("--streams", "n_streams", default=None, type=click.IntRange(1), metavar="N",
              help="Run exactly N campaign streams, however long the battery took: the same check "
                   "on a loaded machine (--budget then only sizes the shrinks).")
@click.option("--seed", default=1, show_default=True, type=int, help="The campaign's seed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes for the campaign.")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Where the check streams and the campaign go (default difftest-out/check-NAME-<time>).")
@click.option("--check-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds one check may run before it is a hang.")
@click.option("--json", "as_json", is_flag=True, help="Print one difftest.check/1 document.")
@pass_ctx
def check_backend_cmd(ctx: Context, name: str, reference: str | None, budget: str, n_streams: int | None,
                      seed: int, workers: int, out: str | None, check_timeout: float, as_json: bool) -> int:
    """Run the conformance battery and a short campaign against one backend."""
    started = time.monotonic()
    budget_s = parse_duration(budget)
    reference = registered_pair(ctx.registry, name, reference)
    plugins = tuple(ctx.plugin_modules)
    # Every call into the backends runs in a worker process (difftest.conformance).
    probed = probe_isolated(ProbeTask(plugins, name, tuple(dict.fromkeys((reference, name))), check_timeout),
                            local_process_pool)
    conf = Conformance(ctx.registry, name, reference, time_limit=check_timeout, probed=probed)
    out_dir = Path(out) if out else Path("difftest-out") / f"check-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out_dir / "campaign" / "journal.jsonl").exists():
        raise BadInput(f"{out_dir} already holds a check-backend run: give another --out")
    (out_dir / "checks").mkdir(parents=True, exist_ok=True)

    def replay(path: str) -> str:
        return conf.replay_command(path, plugins)

    if probed.problem:  # a backend that cannot boot fails everything that follows
        rows = [CheckResult("bootstrap", "the backends boot and create a pmap", FAIL, 0, reason=probed.problem)]
    else:
        rows = _battery(conf, out_dir, plugins, check_timeout, replay, probed)
        # With --streams the campaign is sized in streams, not by the time the battery left
        # (which depends on the machine's load), and so are its shrinks: the same check anywhere.
        left = budget_s if n_streams else budget_s - (time.monotonic() - started)
        rows += _campaign(conf, out_dir, seed, workers, left, n_streams, plugins, replay, probed)
    ok = conforming(rows)
    doc = {"format": CHECK_FORMAT, "backend": conf.backend, "reference": conf.reference,
           "capabilities": conf.capabilities, "conforming": ok, "out": str(out_dir),
           "checks": [r.to_json() for r in rows], "seconds": round(time.monotonic() - started, 1)}
    (out_dir / "check.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    if as_json:
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
    else:
        _print_table(conf, rows, ok, out_dir)
    return EXIT_OK if ok else EXIT_DIVERGENCES


def _battery(conf: Conformance, out_dir: Path, plugins: tuple[str, ...], check_timeout: float,
             replay, probed: Probe) -> list[CheckResult]:
    """Every check's stream written to OUT/checks, then the checks run in a worker."""
    paths = {}
    for check in CHECKS:
        path = out_dir / "checks" / f"{check.name}.stream.json"
        streams.save(conf.stream(check), path)
        paths[check.name] = str(path)
    task = BatteryTask(plugins, conf.backend, conf.reference, tuple(c.name for c in CHECKS), check_timeout, probed)
    return [
        replace(row, path=paths[row.name], replay=replay(paths[row.name])) if row.outcome != PASS else
        replace(row, path=paths[row.name])
        for row in run_battery_isolated(task, local_process_pool)
    ]


def _campaign(conf: Conformance, out_dir: Path, seed: int, workers: int, budget: float, n_streams: int | None,
              plugins: tuple[str, ...], replay, probed: Probe) -> list[CheckResult]:
    """The campaign's rows: ``n_streams`` streams, or as many as fit in ``budget`` seconds
    (SKIP under one second).  Its shrinks get a quarter of ``budget``, 5 at most."""
    if n_streams is None and budget < 1.0:
        return [CheckResult("campaign", "a short differential campaign", SKIP, 0,
                            reason="no time left in --budget")]
    config = CampaignConfig(backends=tuple(conf.backends_run), reference=conf.reference, seed=seed,
                            ops_per_stream=CAMPAIGN_OPS, shrink_budget=min(5.0, budget / 4),
                            plugins=plugins, streams=n_streams)
    campaign = Campaign(config, out_dir / "campaign", conf.known, workers=workers,
                        budget=None if n_streams else budget)
    try:
        report = campaign.run()
    except NothingToRun:
        return [CheckResult("campaign", "a short differential campaign", SKIP, 0,
                            reason="no stream finished within --budget")]
    # Where each signature first shows in its shrunk reproducer (run again in a worker);
    # the campaign's first sighting when that worker dies or hangs.
    mine = tuple((e["signature"], e["reproducer"]) for e in report["divergences"]
                 if e["backend"] == conf.backend and e.get("reproducer"))
    firsts = firsts_isolated(ReproducerTask(plugins, conf.backend, conf.reference, conf.time_limit, probed, mine),
                             local_process_pool) if mine else {}
    return campaign_rows(report, conf.backend, conf.expected, str(out_dir / "campaign"), replay,
                         lambda e: firsts.get(e["signature"]) or Divergence.from_json(e["first"]))


def _print_table(conf: Conformance, rows: list[CheckResult], ok: bool, out_dir: Path) -> None:
    caps = "".join(f"; {k} = {v}" for k, v in sorted(conf.capabilities.items()))  # none: it did not boot
    click.echo(f"check-backend {conf.backend} (reference {conf.reference}{caps})")
    table = []
    for r in rows:
        first = f"op {r.first.op_index}: {r.first.op}" if r.first is not None else ""
        detail = r.first.signature if r.first is not None else r.reason
        table.append([r.name, r.outcome, first, _clip(detail, 70)])
    click.echo(tabulate(table, headers=["check", "result", "first failing op", "signature / note"],
                        tablefmt="simple"))
    for r in rows:
        if r.outcome == FAIL:
            click.echo(f"\n{r.name}: {r.reason}")
            if r.replay:
                click.echo(f"  replay: {r.replay}")
    counts = {o: sum(1 for r in rows if r.outcome == o) for o in ("PASS", "FAIL", "XFAIL", "XPASS", "SKIP")}
    summary = ", ".join(f"{n} {o.lower()}" for o, n in counts.items() if n)
    verdict = "conforms" if ok else "does NOT conform"
    click.echo(f"\n{conf.backend} {verdict}: {summary} (streams and campaign in {out_dir})")


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command("new-backend")
@click.argument("name")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def new_backend_cmd(name: str, directory: str | None) -> int:
    """Write a ready-to-install backend plugin NAME into DIRECTORY (default difftest-NAME):
    pyproject with the entry point, a conforming two-level backend, tests (docs/PLUGINS.md)."""
    from difftest.scaffold import names_for, write_backend_distribution

    target = Path(directory) if directory else Path(names_for(name)["dist"])
    for path in write_backend_distribution(name, target):
        click.echo(f"wrote {path}")
    click.echo(f"next: cd {target} && pip install -e . && difftest check-backend {name}")
    return EXIT_OK
