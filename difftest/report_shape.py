"""The shape of a ``difftest.report/1`` document, checked before any writer sees it.

``difftest report`` renders a file that may have been edited, truncated or damaged: every
field a writer reads is checked here for its type (and, for sizes, a sane range), so that a
damaged document is one line naming the field (exit 2), never a writer's crash or a
regeneration of an impossible stream.  docs/REPORT.md lists the fields; fields not listed
here are passed through unchecked (plugins may add their own).
"""

from __future__ import annotations

from typing import Any, Callable

from difftest.errors import StreamError, short

Check = Callable[[Any], bool]
MAX_COUNT = 1 << 53  # counts beyond this are not what a campaign wrote


def _int(lo: int = 0, hi: int = MAX_COUNT) -> Check:
    return lambda v: type(v) is int and lo <= v <= hi


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _map_of(check: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _or_none(check: Check) -> Check:
    return lambda v: v is None or check(v)


ANY_INT = _int(-MAX_COUNT)
SEED = _int(-(1 << 64), 1 << 64)

CAMPAIGN: dict[str, Check] = {
    "seed": SEED, "generator": _str, "generator_options": _dict, "ops_per_stream": _int(1, 1 << 30),
    "phys_pages": _int(16, 1 << 20), "streams_requested": _or_none(_int()), "shard": _str,
    "stream_timeout": _num, "shrink_budget": _num, "checkpoint_every": _int(1), "invariants": _str,
    "plugins": _list_of(_str), "shards_missing": _list_of(_int()), "feedback": _bool,
}
SUMMARY: dict[str, Check] = {"signatures": _int(), "new": _int(), "known": _int()}
TIMING: dict[str, Check] = {
    "elapsed": _or_none(_num), "workers": _or_none(_int()), "stream_seconds": _or_none(_num),
    "ops_per_second": _or_none(_num), "budget": _or_none(_num), "executor": _str,
}
FIRST_HIT: dict[str, Check] = {"elapsed": _num, "streams": _int(), "signature": _str}
WORKERS_SEEN: dict[str, Check] = {"elapsed": _num, "workers": _int()}
ENTRY: dict[str, Check] = {
    "op_kind": _str, "field": _str, "class": _str, "known_reason": _or_none(_str), "count": _int(),
    "events": _int(), "first": _dict, "reproducer_ops": _or_none(_int()), "reproducer_path": _or_none(_str),
    "shrink_note": _or_none(_str), "reproducer_ref": _or_none(_dict), "bug": _str,
}
REPRODUCER_REF: dict[str, Check] = {"stream": _str, "start": _int(), "end": _int()}
BUG: dict[str, Check] = {
    "head": _str, "head_signature": _str, "backend": _str, "kind": _str, "members": _list_of(_str),
    "count": _int(), "events": _int(), "known": _bool, "known_reason": _or_none(_str), "status": _str,
    "reproducer_ops": _or_none(_int()), "reproducer_path": _or_none(_str),
    "reproducer_signature": _or_none(_str),
}
SURVIVAL: dict[str, Check] = {"streams": _int(), "out_of_memory": _int(), "first_out_of_memory_op": _or_none(_int())}
CORPUS: dict[str, Check] = {"path": _str, "entries": _int(), "replayed": _int(), "diverged": _int(),
                            "added": _int()}
NOT_RUN: dict[str, Check] = {"head": _str, "backend": _str}
LIFECYCLE: dict[str, Check] = {
    "format": _str, "previous": _dict, "status": _map_of(_str), "counts": _map_of(_int()),
    "new": _list_of(_str), "regressed": _list_of(_str), "open": _list_of(_str), "known": _list_of(_str),
}
PREVIOUS: dict[str, Check] = {"path": _str, "seed": _or_none(SEED), "streams": _or_none(_int()),
                              "ops": _or_none(_int()), "signatures": _int()}
COVERAGE: dict[str, Check] = {"distinct": _int(), "mutants": _int(), "features": _map_of(_int())}
HEALTH: dict[str, Check] = {"feature": _str, "what": _str, "streams": _int(), "hint": _or_none(_str)}
FIXED: dict[str, Check] = {"signature": _str, "kind": _or_none(_str), "backend": _or_none(_str), "known": _bool,
                           "since": _str}
FIRST: dict[str, Check] = {
    "signature": _str, "kind": _str, "backend": _str, "op_index": ANY_INT, "op": _str, "op_kind": _str,
    "field": _str, "class": _str, "message": _str, "location": _or_none(_str), "attribution": _or_none(_str),
    "traceback": _or_none(_str),
    "observations": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
}
FIRST_STREAM: dict[str, Check] = {"index": _int(), "seed": SEED}
DEATH: dict[str, Check] = {"stream": _int(), "seed": SEED, "backends": _list_of(_str),
                           "killed_by_watchdog": _list_of(_str)}
GONE: dict[str, Check] = {"signature": _str, "reason": _or_none(_str)}


def _series(v: Any) -> bool:
    from difftest.plotdata import SERIES_POINTS

    return isinstance(v, list) and len(v) <= SERIES_POINTS and all(ANY_INT(x) for x in v)


def _rows(v: Any) -> bool:
    from difftest.plotdata import TABLE_ROWS

    return isinstance(v, list) and len(v) <= TABLE_ROWS


PLOTS: dict[str, Check] = {"long_stream": _or_none(_dict), "coverage": _or_none(_dict), "reproducers": _map_of(_dict),
                           "notes": _list_of(_str)}
TRACED: dict[str, Check] = {"ops": _int(), "ops_total": _int(), "step": _int(1), "reference": _str,
                            "divergences": _int(), "lanes": lambda v: isinstance(v, list)}
LONG_STREAM: dict[str, Check] = {"stream": _int(), "seed": SEED, **TRACED}
REPRODUCER: dict[str, Check] = {**TRACED, "marks": _list_of(_int()), "rows": _rows, "reproduced": _bool,
                                "others": _list_of(_str)}
ROW: dict[str, Check] = {"index": _int(), "op": _str, "cells": lambda v: isinstance(v, list)}
CELL: dict[str, Check] = {"held": _or_none(ANY_INT), "needed": _or_none(ANY_INT), "freed": ANY_INT,
                          "divergences": lambda v: isinstance(v, list)}
CELL_DIVERGENCE: dict[str, Check] = {"signature": _str, "kind": _str, "class": _str, "observed": _str}
LANE: dict[str, Check] = {
    "backend": _str, "held": _series, "needed": _series, "over": _series, "freed": _series, "ops": _int(),
    "peak_held": ANY_INT, "peak_needed": ANY_INT, "end_held": _or_none(ANY_INT), "end_needed": _or_none(ANY_INT),
    "excess": ANY_INT, "freed_total": ANY_INT, "out_of_memory": _or_none(_int()), "stopped": _or_none(_str),
}
PLOT_COVERAGE: dict[str, Check] = {"streams": _int(), "ops": _int(), "op_kinds": _map_of(_int()),
                                   "depth": _map_of(ANY_INT)}


def plots_problem(plots: Any, where: str) -> str | None:
    """What is wrong in a ``plots`` object (the report's, or a campaign's ``plots.json``).
    Every field is required: the recorder writes them all."""
    problem = _required(plots, PLOTS, where)
    if problem:
        return problem
    if plots["long_stream"] is not None:
        problem = _traced_problem(plots["long_stream"], LONG_STREAM, f"{where}.long_stream")
        if problem:
            return problem
    for signature, traced in plots["reproducers"].items():
        problem = _traced_problem(traced, REPRODUCER, f"{where}.reproducers[{short(signature)}]")
        if problem:
            return problem
    if plots["coverage"] is not None:
        return _required(plots["coverage"], PLOT_COVERAGE, f"{where}.coverage")
    return None


def _traced_problem(traced: Any, checks: dict[str, Check], where: str) -> str | None:
    """A traced stream of ``plots``: its fields, its lanes and (a reproducer's) table rows."""
    problem = _required(traced, checks, where) or _each_required(traced["lanes"], LANE, f"{where}.lanes")
    for i, row in enumerate(traced.get("rows", ()) if problem is None else ()):
        problem = _row_problem(row, len(traced["lanes"]), f"{where}.rows[{i}]")
        if problem:
            break
    return problem


def _row_problem(row: Any, lanes: int, where: str) -> str | None:
    problem = _required(row, ROW, where)
    if problem:
        return problem
    if len(row["cells"]) != lanes:
        return f"{where}.cells has {len(row['cells'])} cells for {lanes} lanes"
    for j, cell in enumerate(row["cells"]):
        problem = _required(cell, CELL, f"{where}.cells[{j}]") or _each_required(
            cell["divergences"], CELL_DIVERGENCE, f"{where}.cells[{j}].divergences")
        if problem:
            return problem
    return None


def _each_required(items: list[Any], checks: dict[str, Check], where: str) -> str | None:
    for i, item in enumerate(items):
        problem = _required(item, checks, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _required(doc: Any, checks: dict[str, Check], where: str) -> str | None:
    if isinstance(doc, dict):
        for key in checks:
            if key not in doc:
                return f"{where} has no {key!r}"
    return _fields(doc, checks, where)


def _fields(doc: Any, checks: dict[str, Check], where: str) -> str | None:
    if not isinstance(doc, dict):
        return f"{where} is not an object"
    for key, check in checks.items():
        if key in doc and not check(doc[key]):
            return f"{where}.{key} is {short(doc[key])}"
    return None


def _objects(items: Any, checks: dict[str, Check], where: str) -> str | None:
    if not isinstance(items, list):
        return f"{where} is not a list"
    for i, item in enumerate(items):
        problem = _fields(item, checks, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _entry_problem(e: dict[str, Any], where: str) -> str | None:
    problem = _fields(e, ENTRY, where)
    # "first" is checked whenever present (null is a damage); the others may be null.
    for key, shape, present in (("reproducer_ref", REPRODUCER_REF, e.get("reproducer_ref") is not None),
                                ("first", FIRST, "first" in e),
                                ("first_stream", FIRST_STREAM, e.get("first_stream") is not None)):
        if not problem and present:
            problem = _fields(e[key], shape, f"{where}.{key}")
    if problem:
        return problem
    return _stream_problem(e.get("reproducer"), f"{where}.reproducer")


def nested_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong below the top level of a report (None: the writers can use it).
    The top level (format, backends, divergences' names) is checked by the caller."""
    for key, checks in (("campaign", CAMPAIGN), ("summary", SUMMARY), ("timing", TIMING)):
        if key in doc:
            problem = _fields(doc[key], checks, key)
            if problem:
                return problem
    timing = doc.get("timing") or {}
    for key, checks in (("first_hits", FIRST_HIT), ("workers_timeline", WORKERS_SEEN)):
        if key in timing:
            problem = _objects(timing[key], checks, f"timing.{key}")
            if problem:
                return problem
    for key, checks in (("worker_deaths", DEATH), ("no_longer_seen", GONE)):
        if key in doc:
            problem = _objects(doc[key], checks, key)
            if problem:
                return problem
    for i, e in enumerate(doc.get("divergences") or ()):
        problem = _entry_problem(e, f"divergences[{i}]")
        if problem:
            return problem
    for problem in _campaign_extras(doc):
        if problem:
            return problem
    return None


def _stream_problem(value: Any, where: str) -> str | None:
    if value is None:
        return None
    from difftest.streams import stream_from_json

    try:
        stream_from_json(value)
    except StreamError as exc:
        return f"{where} is not a stream ({short(str(exc), 80)})"
    return None


def _campaign_extras(doc: dict[str, Any]):
    """Problems (or None) in bugs, survival, coverage, plots, corpus, lifecycle, allowed and stopped."""
    if "bugs" in doc:
        yield _objects(doc["bugs"], BUG, "bugs")
        for i, bug in enumerate(doc["bugs"]):
            if bug.get("first_stream") is not None:
                yield _fields(bug["first_stream"], FIRST_STREAM, f"bugs[{i}].first_stream")
            yield _stream_problem(bug.get("reproducer"), f"bugs[{i}].reproducer")
    if "survival" in doc:
        survival = doc["survival"]
        if not isinstance(survival, dict):
            yield "survival is not an object"
            return
        for name, entry in survival.items():
            yield _fields(entry, SURVIVAL, f"survival.{name}")
    if "coverage" in doc:
        yield _fields(doc["coverage"], COVERAGE, "coverage")
        if isinstance(doc["coverage"], dict) and "health" in doc["coverage"]:
            yield _objects(doc["coverage"]["health"], HEALTH, "coverage.health")
    if "plots" in doc:
        yield plots_problem(doc["plots"], "plots")
    if "corpus" in doc:
        yield _fields(doc["corpus"], CORPUS, "corpus")
        if isinstance(doc["corpus"], dict) and "not_run" in doc["corpus"]:
            yield _objects(doc["corpus"]["not_run"], NOT_RUN, "corpus.not_run")
    if "lifecycle" in doc:
        lc = doc["lifecycle"]
        yield _fields(lc, LIFECYCLE, "lifecycle")
        if isinstance(lc, dict):
            if "previous" in lc:
                yield _fields(lc["previous"], PREVIOUS, "lifecycle.previous")
            if "fixed" in lc:
                yield _objects(lc["fixed"], FIXED, "lifecycle.fixed")
            if "no_longer_seen" in lc:
                yield _objects(lc["no_longer_seen"], GONE, "lifecycle.no_longer_seen")
    if "allowed" in doc and not _map_of(_map_of(_int()))(doc["allowed"]):
        yield "allowed is not a map of backends to counts"
    if "stopped" in doc and not _map_of(_str)(doc["stopped"]):
        yield "stopped is not a map of backends to reasons"
