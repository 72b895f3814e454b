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
  campaign's first streams (at most ``COVERAGE_MAX_STREAMS``, ``COVERAGE_MAX_OPS`` ops).

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


@dataclass(frozen=True)
class PlotTask:
    """What a worker needs to record the plots' data."""

    config: Any  # difftest.campaign.CampaignConfig
    stream: int  # the long stream's k
    recipe: Any  # its difftest.feedback.Recipe, or None
    backends: tuple[str, ...]  # the lanes traced: the campaign's, less those that killed a worker
    coverage: tuple[tuple[int, Any], ...]  # (k, recipe) of the streams the coverage counts


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


def coverage_units(committed: Iterable[int], ops_per_stream: int) -> list[int]:
    """The streams the coverage counts: the first ones run, within the bounds."""
    n = min(COVERAGE_MAX_STREAMS, max(1, COVERAGE_MAX_OPS // max(1, ops_per_stream)))
    return sorted(committed)[:n]


def make_task(config: Any, records: Iterable[Any], committed: Sequence[int], culprits: set[str],
              recipe: Callable[[int], Any]) -> PlotTask | None:
    k = representative_stream(records, committed)
    if k is None:
        return None
    backends = tuple(b for b in config.backends if b not in culprits)
    return PlotTask(config, k, recipe(k), backends,
                    tuple((j, recipe(j)) for j in coverage_units(committed, config.ops_per_stream)))


def not_recorded(why: str) -> dict[str, Any]:
    """The ``plots`` object when nothing could be recorded."""
    return {"long_stream": None, "coverage": None, "notes": [why]}


def record(task: PlotTask) -> dict[str, Any]:
    """The ``plots`` object: executed in a worker process."""
    out: dict[str, Any] = {"long_stream": None, "coverage": None, "notes": []}
    for key, make, what in (("long_stream", _long_stream, "the long stream"), ("coverage", _coverage, "coverage")):
        try:
            out[key] = make(task)
        except Exception as exc:  # one piece left out, with why: the report goes on
            out["notes"].append(f"{what} not recorded: {type(exc).__name__}: {short(str(exc), 200)}")
    return out


def buckets(values: Sequence[int], step: int, how: Callable[[Sequence[int]], int]) -> list[int]:
    return [how(values[i:i + step]) for i in range(0, len(values), step)]


def _long_stream(task: PlotTask) -> dict[str, Any] | None:
    from difftest.campaign import make_stream, out_of_memory_ops, unit_seed, worker_registry
    from difftest.harness import Harness

    if not task.backends:
        raise LookupError("every backend of the campaign killed a worker")
    config = task.config
    stream = make_stream(config, task.stream, task.recipe)
    total = len(stream.ops)
    if total > LONG_STREAM_MAX_OPS:
        stream = stream.replace(ops=stream.ops[:LONG_STREAM_MAX_OPS])
    reference = config.reference if config.reference in task.backends else task.backends[0]
    harness = Harness.from_registry(worker_registry(config), task.backends, reference, trace=True,
                                    checkpoint_every=config.checkpoint_every,
                                    invariants_per_op=config.invariants == "per-op",
                                    fast=config.invariants == "auto")
    result = harness.run(stream, time_limit=config.stream_timeout)
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
    return {"stream": task.stream, "seed": unit_seed(config.seed, task.stream), "ops": n, "ops_total": total,
            "step": step, "reference": result.reference, "divergences": len(result.divergences),
            "lanes": lanes}


def _coverage(task: PlotTask) -> dict[str, Any] | None:
    from difftest.campaign import make_stream
    from difftest.coverage import stream_stats

    total: dict[str, Any] = {"streams": 0, "ops": 0, "op_kinds": {}, "depth": {}}
    for k, recipe in task.coverage:
        add_coverage(total, {"streams": 1, **stream_stats(make_stream(task.config, k, recipe))})
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


def merge(shards: Sequence[dict[str, Any] | None], k: int | None) -> dict[str, Any]:
    """The merged campaign's ``plots``: the long stream recorded by the shard that ran stream
    ``k`` (the merged campaign's representative stream), the shards' coverage added up."""
    out: dict[str, Any] = {"long_stream": None, "coverage": None, "notes": []}
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
