"""``html``: one self-contained HTML file that works offline (Jinja2 with autoescape,
matplotlib plots inlined as SVG, CSS inline, no JavaScript, no URL).

It shows the campaign; the divergences by signature (kind, backend, count, known/new and
the lifecycle status with ``--compare``), each with its minimised reproducer as a table of
ops with every backend's page-table frames side by side; and plots: frames held and needed
along each reproducer and along a long stream of the campaign, frames freed per op,
signatures found over campaign time, and the generator's coverage.

The traces and the coverage are what the campaign recorded (``report["plots"]``,
``difftest/plotdata.py``): this page runs no backend and generates no stream.  A report
without them (an older one) shows a note in their place, and each reproducer's ops plainly.
Every string from a plugin or a stream goes through autoescape; the only markup inserted
unescaped is matplotlib's SVG, checked by ``reports.plots.to_svg``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, TextIO

from reports import analysis, common, plots
from reports.health import coverage_context

OP_TABLE_ROWS = 60  # ops of a reproducer the campaign did not trace, listed plainly
STATUS_CLASS = {"new": "bad", "regressed": "bad", "open": "warn", "known": "muted", "fixed": "good",
                "fixed earlier": "good"}


def _safe_plot(make, *args: Any) -> tuple[Any, str | None]:
    """(Markup(svg), None) or (None, why the plot is missing)."""
    from markupsafe import Markup

    try:
        return Markup(make(*args)), None
    except Exception as exc:  # a plot must not stop the report
        return None, f"plot not drawn: {type(exc).__name__}: {exc}"


def _op_rows(traced: dict[str, Any], marks: set[int]) -> list[dict[str, Any]]:
    """The recorded table rows, with a gap row where ops were left out."""
    rows: list[dict[str, Any]] = []
    last = -1
    for row in traced["rows"]:
        i = row["index"]
        if i != last + 1:
            rows.append({"gap": i - last - 1})
        last = i
        cells = [{
            "frames": "-" if c["held"] is None else f"{c['held']} / {c['needed']}",
            "freed": c["freed"],
            "over": c["held"] is not None and c["needed"] is not None and c["held"] > c["needed"],
            "divergences": [{"signature": d["signature"], "cls": d["class"], "kind": d["kind"],
                             "observed": d["observed"]} for d in c["divergences"]],
        } for c in row["cells"]]
        rows.append({"index": i, "op": row["op"], "cells": cells, "marked": i in marks})
    if last + 1 < traced["ops"]:
        rows.append({"gap": traced["ops"] - last - 1})
    return rows


def _divergence(report: dict[str, Any], entry: dict[str, Any], i: int, run_dir: Any) -> dict[str, Any]:
    first = entry.get("first") or {}
    st = common.status(report, entry)
    item: dict[str, Any] = {
        "anchor": f"d{i}",
        "signature": entry.get("signature", ""),
        "kind": entry.get("kind", ""),
        "backend": entry.get("backend", ""),
        "count": common.number(entry.get("count")),
        "events": common.number(entry.get("events")) if entry.get("events") is not None else "-",
        "status": st,
        "status_class": STATUS_CLASS.get(st, ""),
        "known": bool(entry.get("known")),
        "known_reason": entry.get("known_reason"),
        "first_seen": common.first_seen(entry),
        "message": first.get("message", ""),
        "attribution": first.get("attribution", ""),
        "location": first.get("location", ""),
        "observations": common.observations(report, entry),
        "traceback": first.get("traceback"),
        "shrink_note": entry.get("shrink_note"),
        "reproducer_path": common.reproducer_path(entry, run_dir),
        "replay": common.replay_command(report, entry, run_dir),
        "repro_ops": len((entry.get("reproducer") or {}).get("ops") or ()),
        "repro": None,
        "repro_note": None,
    }
    recorded, why = _plots(report)
    traced = (recorded or {}).get("reproducers", {}).get(entry.get("signature"))
    if traced is None:
        if recorded is not None:
            why = ("the campaign did not trace it" + (f" ({'; '.join(recorded['notes'])})" if recorded["notes"]
                                                      else " (its backend killed a worker)"))
        item["repro_note"] = f"reproducer not traced: {why}"
        item["plain_ops"] = common.reproducer_excerpt(common.reproducer_ops(entry), common.divergence_ops(entry),
                                                      limit=OP_TABLE_ROWS)
        return item
    series = analysis.recorded(traced)
    marks = set(traced["marks"])
    svg, note = _safe_plot(plots.frames_plot, series, f"r{i}",
                           "the reproducer: PT + L1 frames held (solid) and needed (dashed); dotted: the divergence",
                           sorted(marks))
    item["repro"] = {
        "backends": series.backends,
        "reference": series.reference,
        "rows": _op_rows(traced, marks),
        "plot": svg,
        "plot_note": note,
        "notes": series.notes(),
        "reproduced": traced["reproduced"],
        "others": traced["others"],
        "stopped": {lane["backend"]: lane["stopped"] for lane in traced["lanes"] if lane["stopped"]},
    }
    return item


NO_PLOT_DATA = ("the report holds no plot data recorded by its campaign (written by an older pmap-difftest): "
                "omitted, since a report never runs the campaign again")


def _plots(report: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the campaign's recorded plot data or None, why a piece is missing)."""
    plots = report.get("plots")
    if not isinstance(plots, dict):
        return None, NO_PLOT_DATA if isinstance(report.get("campaign"), dict) else "the report is not a campaign's"
    return plots, "; ".join(plots.get("notes") or ()) or "the campaign recorded none"


def _long_stream(report: dict[str, Any]) -> dict[str, Any]:
    recorded, why = _plots(report)
    if recorded is None or not recorded.get("long_stream"):
        return {"note": why}
    traced = analysis.recorded(recorded["long_stream"])
    k = recorded["long_stream"]["stream"]
    out: dict[str, Any] = {"k": k, "note": None, "seed": recorded["long_stream"]["seed"], "ops": traced.length,
                           "notes": traced.notes()}
    out["frames"], out["frames_note"] = _safe_plot(
        plots.frames_plot, traced, "long",
        f"stream {k} of the campaign: PT + L1 frames held (solid) and needed (dashed)")
    out["freed"], out["freed_note"] = _safe_plot(plots.freed_plot, traced, "freed",
                                                 f"stream {k}: frames freed per op, per backend")
    rows = []
    for lane in traced.lanes:
        end = "-" if lane["end_held"] is None else f"{lane['end_held']} / {lane['end_needed']}"
        rows.append({
            "backend": lane["backend"],
            "reference": lane["backend"] == traced.reference,
            "peak_held": lane["peak_held"],
            "peak_needed": lane["peak_needed"],
            "end": end,
            "excess": lane["excess"],
            "freed": lane["freed_total"],
            "stopped": lane["stopped"] or "",
        })
    out["rows"] = rows
    out["divergences"] = traced.divergences
    return out


def _timeline(report: dict[str, Any]) -> dict[str, Any] | None:
    timing = report.get("timing")
    if not isinstance(timing, dict) or "first_hits" not in timing:
        return None
    hits = [h for h in timing.get("first_hits") or [] if isinstance(h, dict)]
    known = {e.get("signature"): bool(e.get("known")) for e in report.get("divergences", [])}
    svg, note = _safe_plot(plots.timeline_plot, hits, known, "timeline")
    rows = [{"elapsed": common.seconds(h.get("elapsed")), "streams": h.get("streams"),
             "signature": h.get("signature"), "known": known.get(h.get("signature"), False)} for h in hits]
    return {"plot": svg, "note": note, "rows": rows}


def _coverage(report: dict[str, Any]) -> dict[str, Any]:
    from difftest.coverage import DEPTH_FIELDS

    recorded, why = _plots(report)
    cov = recorded.get("coverage") if recorded is not None else None
    if not cov:
        return {"note": why}
    svg, note = _safe_plot(plots.coverage_plot, cov["op_kinds"], cov["depth"], "coverage")
    return {
        "note": note,
        "plot": svg,
        "streams": cov["streams"],
        "ops": cov["ops"],
        "op_kinds": list(cov["op_kinds"].items()),
        "depth": [(name, value, DEPTH_FIELDS.get(name, "")) for name, value in cov["depth"].items()],
    }


def _bugs(report: dict[str, Any], run_dir: Any) -> list[dict[str, Any]]:
    anchors = {e.get("signature"): f"d{i}" for i, e in enumerate(report.get("divergences", []), 1)}
    out = []
    for b in report.get("bugs") or ():
        st = common.bug_status(report, b)
        out.append({
            "status": st, "status_class": STATUS_CLASS.get(st, ""), "kind": b.get("kind", ""),
            "backend": b.get("backend", ""), "head": b.get("head", ""),
            "members": [(m, anchors.get(m)) for m in b.get("members") or ()],
            "count": common.number(b.get("count")),
            "repro_ops": common.number(b.get("reproducer_ops")) if b.get("reproducer_ops") is not None else "-",
            "known_reason": b.get("known_reason"),
            "replay": common.bug_replay_command(report, b, run_dir),
        })
    return out


def context(report: dict[str, Any], run_dir: Any = None) -> dict[str, Any]:
    counts = common.summary_counts(report)
    lifecycle = report.get("lifecycle") if isinstance(report.get("lifecycle"), dict) else None
    ctx: dict[str, Any] = {
        "headline": common.headline(report),
        "bug_line": common.bug_headline(report),
        "bugs": _bugs(report, run_dir),
        "survival": [(name, line, bool((report.get("survival") or {}).get(name, {}).get("out_of_memory")))
                     for name, line in zip((report.get("survival") or {}).keys(), common.survival_lines(report))],
        "facts": common.campaign_facts(report),
        "backends": report.get("backends", []),
        "reference": report.get("reference"),
        "counts": counts,
        "lifecycle": None,
        "divergences": [_divergence(report, e, i, run_dir) for i, e in enumerate(report.get("divergences", []), 1)],
        "no_longer_seen": report.get("no_longer_seen") or [],
        "worker_deaths": report.get("worker_deaths") or [],
        "stopped": sorted((report.get("stopped") or {}).items()),
        "allowed": [(b, k, n) for b, kinds in sorted((report.get("allowed") or {}).items())
                    for k, n in sorted(kinds.items())],
        "long": _long_stream(report),
        "timeline": _timeline(report),
        "coverage": _coverage(report),
        "features": coverage_context(report),
        "tool": report.get("tool") or {},
        "status_class": STATUS_CLASS,
    }
    if lifecycle:
        ctx["lifecycle"] = {
            "line": common.lifecycle_line(report),
            "previous": lifecycle.get("previous") or {},
            "counts": lifecycle.get("counts") or {},
            "rows": common.lifecycle_rows(report),
        }
    return ctx


def _finalize(value: Any) -> Any:
    """Every value printed: control characters shown as \\xNN (then autoescaped); the
    plots (Markup) pass as they are."""
    from markupsafe import Markup

    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return common.clean(value)


def render(report: dict[str, Any], run_dir: Any = None) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, finalize=_finalize,
                             trim_blocks=True, lstrip_blocks=True)
    source = files("reports").joinpath("templates", "report.html.j2").read_text(encoding="utf-8")
    return env.from_string(source).render(**context(report, run_dir))


def write(report: dict[str, Any], out: TextIO, *, run_dir: Any = None, **_: Any) -> None:
    out.write(render(report, run_dir))
