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
    "ops_per_second": _or_none(_num), "budget": _or_none(_num),
}
FIRST_HIT: dict[str, Check] = {"elapsed": _num, "streams": _int(), "signature": _str}
ENTRY: dict[str, Check] = {
    "op_kind": _str, "field": _str, "class": _str, "known_reason": _or_none(_str), "count": _int(),
    "events": _int(), "first": _dict, "reproducer_ops": _or_none(_int()), "reproducer_path": _or_none(_str),
    "shrink_note": _or_none(_str), "reproducer_ref": _or_none(_dict),
}
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
    if problem:
        return problem
    if "first" in e:
        problem = _fields(e["first"], FIRST, f"{where}.first")
        if problem:
            return problem
    if e.get("first_stream") is not None:
        problem = _fields(e["first_stream"], FIRST_STREAM, f"{where}.first_stream")
        if problem:
            return problem
    if e.get("reproducer") is not None:
        from difftest.streams import stream_from_json

        try:
            stream_from_json(e["reproducer"])
        except StreamError as exc:
            return f"{where}.reproducer is not a stream ({short(str(exc), 80)})"
    return None


def nested_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong below the top level of a report (None: the writers can use it).
    The top level (format, backends, divergences' names) is checked by the caller."""
    for key, checks in (("campaign", CAMPAIGN), ("summary", SUMMARY), ("timing", TIMING)):
        if key in doc:
            problem = _fields(doc[key], checks, key)
            if problem:
                return problem
    timing = doc.get("timing") or {}
    if "first_hits" in timing:
        problem = _objects(timing["first_hits"], FIRST_HIT, "timing.first_hits")
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
    return None
