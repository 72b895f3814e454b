"""The content of the text and Markdown reports, as a list of blocks both render.

Blocks hold plain, unescaped text; each renderer escapes for its format.

* ``("title", text)``, ``("heading", text)``, ``("subheading", text)``
* ``("para", text)``: one paragraph
* ``("lines", [text, ...])``: short facts, one a line
* ``("facts", [(label, value), ...])``
* ``("table", headers, rows)``
* ``("code", summary, lines)``: literal lines (ops, commands, tracebacks); ``summary``
  names them (Markdown folds them under it)
"""

from __future__ import annotations

from typing import Any

from reports import common
from reports.health import coverage_blocks

Block = tuple[Any, ...]

TRACEBACK_LINES = 12


def outline(report: dict[str, Any], run_dir: Any = None, details: bool = True) -> list[Block]:
    blocks: list[Block] = [("title", "pmap-difftest report"), ("para", common.headline(report))]
    life = common.lifecycle_line(report)
    if life:
        blocks.append(("para", life))

    bugs_line = common.bug_headline(report)
    if bugs_line:
        blocks.append(("para", bugs_line))
    if "bugs" in report:
        blocks.append(("heading", "Bugs"))
        headers, rows = common.bug_table(report)
        blocks.append(("table", headers, rows) if rows else ("para", "no bugs"))
    survival = common.survival_lines(report)
    if survival:
        blocks.append(("heading", "Survival"))
        blocks.append(("lines", survival))

    blocks.append(("heading", "Campaign"))
    blocks.append(("facts", common.campaign_facts(report)))

    blocks.append(("heading", "Divergences by signature"))
    headers, rows = common.divergence_table(report)
    if rows:
        blocks.append(("table", headers, rows))
    else:
        blocks.append(("para", "no divergences"))

    if isinstance(report.get("lifecycle"), dict):
        blocks.append(("heading", "Lifecycle"))
        lc_rows = common.lifecycle_rows(report)
        if lc_rows:
            blocks.append(("table", ["status", "kind", "backend", "signature"], [list(r) for r in lc_rows]))
        else:
            blocks.append(("para", "no signatures in either run"))

    gone = report.get("no_longer_seen") or []
    if gone:
        blocks.append(("heading", "Baseline entries no longer seen (fixed?)"))
        blocks.append(("table", ["pattern", "reason"], [[g.get("signature", ""), g.get("reason", "")] for g in gone]))

    deaths = report.get("worker_deaths") or []
    if deaths:
        blocks.append(("heading", "Worker deaths"))
        blocks.append(("table", ["stream", "seed", "kills the worker alone"],
                       [[d.get("stream"), d.get("seed"), ", ".join(map(str, d.get("backends") or [])) or "no single backend"]
                        for d in deaths]))
    stopped = report.get("stopped") or {}
    if stopped:
        blocks.append(("heading", "Backends stopped"))
        blocks.append(("table", ["backend", "why"], [[b, w] for b, w in sorted(stopped.items())]))
    allowed = report.get("allowed") or {}
    if allowed:
        blocks.append(("heading", "Allowed differences"))
        blocks.append(("table", ["backend", "kind", "count"],
                       [[b, k, n] for b, kinds in sorted(allowed.items()) for k, n in sorted(kinds.items())]))

    blocks.extend(coverage_blocks(report))

    if details and report.get("bugs"):
        blocks.append(("heading", "Bug details"))
        for bug in report["bugs"]:
            blocks.extend(_bug_details(report, bug, run_dir))
    if details and report.get("divergences"):
        blocks.append(("heading", "Signature details"))
        for entry in report["divergences"]:
            blocks.extend(_details(report, entry, run_dir))
    return blocks


def _bug_details(report: dict[str, Any], bug: dict[str, Any], run_dir: Any) -> list[Block]:
    out: list[Block] = [("subheading", f"[{common.bug_status(report, bug)}] {bug.get('head')}")]
    facts = [f"{bug.get('kind')} in {bug.get('backend')}, seen in {common.number(bug.get('count'))} stream(s)"]
    fs = bug.get("first_stream")
    if isinstance(fs, dict):
        facts.append(f"first seen: stream {fs.get('index')} (seed {fs.get('seed')})")
    if bug.get("known"):
        facts.append(f"known: {bug.get('known_reason') or '(no reason given)'}")
    facts.append("also seen as: " + ", ".join(str(m) for m in bug.get("members") or ()))
    out.append(("lines", facts))
    entry = {"reproducer": bug.get("reproducer")}
    ops = common.reproducer_ops(entry)
    if ops:
        path = bug.get("reproducer_path")
        out.append(("code", f"reproducer: {len(ops)} ops" + (f" ({path})" if path else ""),
                    common.reproducer_excerpt(ops, ())))
    cmd = common.bug_replay_command(report, bug, run_dir)
    if cmd:
        out.append(("code", "replay", [cmd]))
    return out


def _details(report: dict[str, Any], entry: dict[str, Any], run_dir: Any) -> list[Block]:
    first = entry.get("first") or {}
    out: list[Block] = [("subheading", f"[{common.status(report, entry)}] {entry.get('signature')}")]
    facts = [f"{entry.get('kind')} in {entry.get('backend')}, seen in {common.number(entry.get('count'))} stream(s)"]
    seen = common.first_seen(entry)
    if seen:
        facts.append(f"first seen: {seen}")
    if first.get("message"):
        facts.append(str(first["message"]))
    if first.get("attribution"):
        facts.append(str(first["attribution"]))
    if entry.get("known"):
        facts.append(f"known: {entry.get('known_reason') or '(no reason given)'}")
    if entry.get("shrink_note"):
        facts.append(f"not minimised: {entry['shrink_note']}")
    out.append(("lines", facts))
    obs = common.observations(report, entry)
    if obs:
        out.append(("table", ["backend", "observed"], [list(o) for o in obs]))
    if first.get("traceback"):
        lines = str(first["traceback"]).rstrip().splitlines()[-TRACEBACK_LINES:]
        out.append(("code", "traceback (last lines)", lines))
    ops = common.reproducer_ops(entry)
    if ops:
        path = common.reproducer_path(entry, run_dir)
        summary = f"reproducer: {len(ops)} ops" + (f" ({path})" if path else "")
        out.append(("code", summary, common.reproducer_excerpt(ops, common.divergence_ops(entry))))
    cmd = common.replay_command(report, entry, run_dir)
    if cmd:
        out.append(("code", "replay", [cmd]))
    return out
