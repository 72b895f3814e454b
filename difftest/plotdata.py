"""The data the reports' plots draw, recorded by the campaign: reports render it and never
run or regenerate a stream of the campaign themselves.

Recorded once at the end of a campaign, in one of its workers (``record``), kept in
``OUT/plots.json`` (so that ``merge`` finds each shard's) and copied into the report as
``plots`` (docs/REPORT.md):

* ``long_stream``: a representative stream of the campaign (``representative_stream``: the
  first where a backend ran out of memory, else the first ``resource`` divergence's, else
  the first divergence's, else the first stream run), run again with the harness's trace
  on, cut to its first ``LONG_STREAM_MAX_OPS`` ops.  Per backend: the PT + L1 frames held
  by user pmaps and those their live mappings need after each op, and the frames freed,
  downsampled to at most ``SERIES_POINTS`` buckets of ``step`` ops (held, needed and held
  minus needed: each bucket's maximum, so that peaks survive; freed: each bucket's sum);
  where the backend ran out of memory; its peaks and its end.
* ``coverage``: op kinds and depth counters (``difftest.coverage.stream_stats``) over the
  campaign's first streams (at most ``COVERAGE_MAX_STREAMS``, ``COVERAGE_MAX_OPS`` ops);
* ``reproducers``: each signature's reproducer traced the same way (the lanes), the ops where
  the signature shows (``marks``) and its op table's rows (every backend's frames and
  divergences per op; for a long reproducer only the ops around the first marks).

Bounded (tens of KB) and deterministic: a function of the configuration and the committed
streams, whatever the number of workers.  A piece that cannot be recorded is left out with
a line in ``notes``; nothing here may stop a campaign's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from difftest.errors import short

PLOTS_FILE = "plots.json"
LONG_STREAM_MAX_OPS = 20_000  # the long stream is traced over its first ops only
SERIES_POINTS = 400  # buckets per series at most
COVERAGE_MAX_STREAMS = 32
COVERAGE_MAX_OPS = 250_000
TABLE_ROWS = 60  # a longer reproducer's op table keeps the ops around where it diverges
MARKS_KEPT = 5  # ... around its first ops showing the signature
WORKER_DEATHS = ("worker-died", "worker-killed")  # classes of the divergence of a worker's death


@dataclass(frozen=True)
class PlotTask:
    """What a worker needs to record the plots' data."""

    config: Any  # difftest.units.CampaignConfig
    stream: int  # the long stream's k
    recipe: Any  # its difftest.feedback.Recipe, or None
    backends: tuple[str, ...]  # the lanes traced: the campaign's, less those that killed a worker
    coverage: tuple[tuple[int, Any], ...]  # (k, recipe) of the streams the coverage counts
    # (signature, its backend, whether it is a survival finding (out-of-memory), its reproducer as JSON)
    reproducers: tuple[tuple[str, str, bool, dict[str, Any]], ...] = ()
    # (k, difftest.coverage.stream_stats of stream k) for the coverage's streams whose
    # statistics the campaign's workers took when they ran them: not generated again here
    stats: tuple[tuple[int, dict[str, Any]], ...] = ()
    # (k, its run with the trace on) for streams whose worker ran them traced already
    # (``difftest.units.run_unit``): not run again here when the lanes are the same
    traced: tuple[tuple[int, Any], ...] = ()


def representative_stream(records: Iterable[Any], committed: Iterable[int]) -> int | None:
    """The long stream's k: where a backend first ran out of memory (the story of PR 5666),
    else the first ``resource`` divergence's, else the first divergence's, else the first
    stream run (None: none was).  Over shards, the merged campaign's pick is the pick of the
    shard that ran it: the same rule over a superset of first sightings."""
    firsts = [(rec.first_k, rec.first) for rec in records]
    for pick in (lambda f: f.get("class") == "out-of-memory", lambda f: f.get("kind") == "resource",
                 lambda f: True):
        found = [k for k, first in firsts if pick(first)]
        if found:
            return min(found)
    return min(committed, default=None)


def coverage_count(ops_per_stream: int) -> int:
    """How many streams the coverage counts at most."""
    return min(COVERAGE_MAX_STREAMS, max(1, COVERAGE_MAX_OPS // max(1, ops_per_stream)))


def coverage_units(committed: Iterable[int], ops_per_stream: int) -> list[int]:
    """The streams the coverage counts: the first ones run, within the bounds."""
    return sorted(committed)[:coverage_count(ops_per_stream)]


def make_task(config: Any, records: Iterable[Any], committed: Sequence[int], culprits: set[str],
              recipe: Callable[[int], Any], stats: dict[int, dict[str, Any]] | None = None,
              traced: dict[int, Any] | None = None) -> PlotTask | None:
    """The plot step's task; ``stats``: stream k -> its ``stream_stats``, those known;
    ``traced``: stream k -> its run with the trace on, those known."""
    records = list(records)
    k = representative_stream(records, committed)
    if k is None:
        return None
    backends = tuple(b for b in config.backends if b not in culprits)
    # A backend that kills its worker is not run, nor is a stream that killed or hung a worker
    # (the reproducer of a worker's death, whoever caused it).
    reproducers = tuple((rec.signature, rec.first.get("backend", ""), rec.first.get("class") == "out-of-memory",
                         rec.reproducer) for rec in sorted(records, key=lambda r: r.signature)
                        if rec.reproducer is not None and rec.first.get("backend") not in culprits
                        and rec.first.get("class") not in WORKER_DEATHS)
    units = coverage_units(committed, config.ops_per_stream)
    known = tuple((j, (stats or {})[j]) for j in units if j in (stats or {}))
    return PlotTask(config, k, recipe(k), backends, tuple((j, recipe(j)) for j in units), reproducers, known,
                    tuple(sorted((traced or {}).items(), key=lambda kv: kv[0])))


def not_recorded(why: str) -> dict[str, Any]:
    """The ``plots`` object when nothing could be recorded."""
    return {"long_stream": None, "coverage": None, "reproducers": {}, "notes": [why]}


def record(task: PlotTask) -> dict[str, Any]:
    """The ``plots`` object: executed in a worker process."""
    out: dict[str, Any] = {"long_stream": None, "coverage": None, "reproducers": {}, "notes": []}
    # A run is a function of its stream: a reproducer that is a whole stream (shrinking
    # off, or a survival finding) is the long stream itself, run once.
    runs: dict[Any, Any] = {}
    for _, result in task.traced:
        # A worker's traced run of a campaign stream is this step's run of it when it ran
        # the same lanes with the same reference (no backend has since killed a worker).
        total = len(result.stream.ops)
        if list(result.backends) == list(task.backends) and result.reference == _reference(task) \
                and total <= LONG_STREAM_MAX_OPS:
            runs[_run_key(result.stream, total)] = (result, _common(task, result, result.stream, total))

    def guarded(what: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except Exception as exc:  # one piece left out, with why: the report goes on
            out["notes"].append(f"{what} not recorded: {type(exc).__name__}: {short(str(exc), 200)}")
            return None

    out["long_stream"] = guarded("the long stream", lambda: _long_stream(task, runs))
    out["coverage"] = guarded("coverage", lambda: _coverage(task))
    for signature, backend, oom, doc in task.reproducers:
        traced = guarded(f"the reproducer of {signature}",
                         lambda: _reproducer(task, signature, backend, oom, doc, runs))
        if traced is not None:
            out["reproducers"][signature] = traced
    return out


def buckets(values: Sequence[int], step: int, how: Callable[[Sequence[int]], int]) -> list[int]:
    return [how(values[i:i + step]) for i in range(0, len(values), step)]


def _traced(task: PlotTask, stream: Any, runs: dict[Any, Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``stream`` (cut to LONG_STREAM_MAX_OPS) on the task's backends with the trace on:
    (the run's result, the record's common fields: ops, step, reference, lanes).  ``runs``
    keeps the outcomes by stream: the same ops on the same machine are run once."""
    if not task.backends:
        raise LookupError("every backend of the campaign killed a worker")
    total = len(stream.ops)
    if total > LONG_STREAM_MAX_OPS:
        stream = stream.replace(ops=stream.ops[:LONG_STREAM_MAX_OPS])
    key = _run_key(stream, total)
    if key not in runs:
        runs[key] = _trace_run(task, stream, total)
    return runs[key]


def _run_key(stream: Any, total: int) -> tuple[Any, ...]:
    """What a traced run depends on besides the task: the ops run, the machine, the length
    of the stream they were cut from."""
    return (tuple(stream.ops), stream.phys_pages, stream.free_frames, total)


def _reference(task: PlotTask) -> str:
    config = task.config
    return config.reference if config.reference in task.backends else task.backends[0]


def _trace_run(task: PlotTask, stream: Any, total: int) -> tuple[Any, dict[str, Any]]:
    from difftest.units import worker_registry
    from difftest.harness import Harness

    config = task.config
    harness = Harness.from_registry(worker_registry(config), task.backends, _reference(task), trace=True,
                                    checkpoint_every=config.checkpoint_every,
                                    invariants_per_op=config.invariants == "per-op",
                                    fast=config.invariants == "auto")
    result = harness.run(stream, time_limit=config.stream_timeout)
    return result, _common(task, result, stream, total)


def _common(task: PlotTask, result: Any, stream: Any, total: int) -> dict[str, Any]:
    """A traced run's fields of the record: ops, step, reference, the lanes' series."""
    from difftest.units import out_of_memory_ops

    died = out_of_memory_ops(result)
    n = len(stream.ops)
    step = max(1, -(-n // SERIES_POINTS))
    lanes = []
    for name in task.backends:
        rows = (result.trace or {}).get(name, [])
        if name in died:
            rows = rows[: died[name] + 1]  # a backend that died holds nothing after: no flat line
        held = [r[0] for r in rows]
        needed = [r[1] for r in rows]
        over = [h - nd for h, nd in zip(held, needed)]
        cumulative = [r[2] for r in rows]
        freed = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]])]
        lanes.append({
            "backend": name,
            "held": buckets(held, step, max), "needed": buckets(needed, step, max),
            "over": buckets(over, step, max), "freed": buckets(freed, step, sum),
            "ops": len(rows),
            "peak_held": max(held, default=0), "peak_needed": max(needed, default=0),
            "end_held": held[-1] if held else None, "end_needed": needed[-1] if needed else None,
            "excess": max(over, default=0), "freed_total": sum(freed),
            "out_of_memory": died.get(name), "stopped": result.stopped.get(name),
        })
    return {"ops": n, "ops_total": total, "step": step, "reference": result.reference,
            "divergences": len(result.divergences), "lanes": lanes}


def _long_stream(task: PlotTask, runs: dict[Any, Any]) -> dict[str, Any] | None:
    from difftest.units import make_stream, unit_seed

    ran = dict(task.traced).get(task.stream)
    stream = ran.stream if ran is not None else make_stream(task.config, task.stream, task.recipe)
    _, common = _traced(task, stream, runs)
    return {"stream": task.stream, "seed": unit_seed(task.config.seed, task.stream), **common}


def _reproducer(task: PlotTask, signature: str, backend: str, oom: bool, doc: dict[str, Any],
                runs: dict[Any, Any]) -> dict[str, Any]:
    """A reproducer traced: its lanes, the ops where the signature shows (and where its
    backend ran out of memory, for a survival finding), and the op table's rows: the first
    ops, the last, and those around the first MARKS_KEPT marks (TABLE_ROWS at most when
    longer), each with every backend's frames and divergences at that op."""
    from difftest.ops import describe
    from difftest.streams import stream_from_json

    decoded = ("decoded", id(doc))  # signatures of one whole stream share its document
    if decoded not in runs:
        runs[decoded] = stream_from_json(doc)
    stream = runs[decoded]
    result, common = _traced(task, stream, runs)
    marks = sorted({d.op_index for d in result.divergences if d.signature == signature and d.op_index >= 0})
    died = {lane["backend"]: lane["out_of_memory"] for lane in common["lanes"] if lane["out_of_memory"] is not None}
    if oom and backend in died:
        marks = sorted({*marks, died[backend]})  # the finding is the backend dying where the reference lives
    n = common["ops"]
    keep = set(range(n))
    if n > TABLE_ROWS:
        keep = set(range(3)) | {n - 1}
        for m in marks[:MARKS_KEPT]:
            keep |= set(range(max(0, m - 5), min(n, m + 6)))
    at: dict[tuple[int, str], list[dict[str, str]]] = {}
    for d in result.divergences:
        if d.op_index in keep:
            at.setdefault((d.op_index, d.backend), []).append(
                {"signature": d.signature, "kind": d.kind, "class": d.cls,
                 "observed": d.observations.get(d.backend, "")})
    by_name = {lane["backend"]: lane for lane in common["lanes"]}
    trace = result.trace or {}
    rows = []
    for i in sorted(keep):
        cells = []
        for name in task.backends:
            ran = i < by_name[name]["ops"]
            cum = trace.get(name, [])
            cells.append({"held": cum[i][0] if ran else None, "needed": cum[i][1] if ran else None,
                          "freed": (cum[i][2] - (cum[i - 1][2] if i else 0)) if ran else 0,
                          "divergences": at.get((i, name), [])})
        rows.append({"index": i, "op": describe(stream.ops[i]), "cells": cells})
    return {**common, "marks": marks[:MARKS_KEPT], "rows": rows,
            "reproduced": bool(marks) or backend not in task.backends,
            "others": sorted({d.signature for d in result.divergences if d.signature != signature})}


def _coverage(task: PlotTask) -> dict[str, Any] | None:
    from difftest.units import make_stream
    from difftest.coverage import stream_stats

    known = dict(task.stats)
    total: dict[str, Any] = {"streams": 0, "ops": 0, "op_kinds": {}, "depth": {}}
    for k, recipe in task.coverage:
        stats = known[k] if k in known else stream_stats(make_stream(task.config, k, recipe))
        add_coverage(total, {"streams": 1, **stats})
    return finish_coverage(total) if total["streams"] else None


def add_coverage(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one stream's statistics (or a shard's coverage) into ``total``: sums, and
    maxima for the ``max_*`` depth counters."""
    total["streams"] += part["streams"]
    total["ops"] += part["ops"]
    for name, value in part["op_kinds"].items():
        total["op_kinds"][name] = total["op_kinds"].get(name, 0) + value
    for name, value in part["depth"].items():
        have = total["depth"].get(name, 0)
        total["depth"][name] = max(have, value) if name.startswith("max_") else have + value


def finish_coverage(total: dict[str, Any]) -> dict[str, Any]:
    """Op kinds most frequent first (ties by name), depth counters in their order."""
    total["op_kinds"] = dict(sorted(total["op_kinds"].items(), key=lambda kv: (-kv[1], kv[0])))
    return total


def merge(shards: Sequence[dict[str, Any] | None], k: int | None,
          owners: dict[str, int] | None = None) -> dict[str, Any]:
    """The merged campaign's ``plots``: the long stream recorded by the shard that ran stream
    ``k`` (the merged campaign's representative stream), the shards' coverage added up, and
    each signature's reproducer as traced by ``owners[signature]``, the shard (an index in
    ``shards``) whose reproducer the merged report keeps."""
    out: dict[str, Any] = {"long_stream": None, "coverage": None, "reproducers": {}, "notes": []}
    for signature, i in sorted((owners or {}).items()):
        traced = (shards[i] or {}).get("reproducers", {}).get(signature)
        if traced is not None:
            out["reproducers"][signature] = traced
    recorded = [s for s in shards if s is not None]
    if len(recorded) < len(shards):
        out["notes"].append(f"{len(shards) - len(recorded)} shard(s) recorded no plot data")
    longs = [s["long_stream"] for s in recorded if s.get("long_stream") and s["long_stream"]["stream"] == k]
    if longs:
        out["long_stream"] = longs[0]
    elif k is not None:
        out["notes"].append(f"the long stream (stream {k}) was not recorded by its shard")
    covs = [s["coverage"] for s in recorded if s.get("coverage")]
    if covs:
        total: dict[str, Any] = {"streams": 0, "ops": 0, "op_kinds": {}, "depth": {}}
        for cov in covs:
            add_coverage(total, cov)
        out["coverage"] = finish_coverage(total)
    return out
