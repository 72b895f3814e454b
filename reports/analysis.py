"""What the HTML report computes beyond the report document: it runs things again.

* each reproducer, on the report's backends with the harness's trace on (PT + L1 frames
  held by user pmaps, the frames their live mappings need, frames freed, after every op);
* a representative long stream of the campaign, regenerated from its seed
  (``unit_seed(seed, k)`` and the campaign's generator): stream k where the first
  ``resource`` divergence was first seen (else the first divergence's, else 0);
* the generator's coverage over the campaign's first streams (op kinds, depth counters:
  ``difftest.coverage`` when it is there, op kinds counted here otherwise).

All of it needs the plugin registry (backends, generators).  ``difftest report`` passes
its own; ``write(report, out)`` alone loads a plugin host once per process (the entry
points, plus any plugins the report names) and caches it.  Nothing here may stop a
report from being written: every failure becomes a note shown in its place.

Backends named in ``worker_deaths`` are never run again here: they end the process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

LONG_STREAM_MAX_OPS = 20_000  # the long stream is cut to its first ops beyond this
COVERAGE_MAX_STREAMS = 32
COVERAGE_MAX_OPS = 250_000
RUN_TIME_LIMIT = 30.0  # seconds, per re-run (a hang reproducer must not hang the report)

_REGISTRIES: dict[tuple[str, ...], Any] = {}


def registry_for(report: dict[str, Any], registry: Any = None) -> tuple[Any, str | None]:
    """(registry, None) or (None, why not)."""
    if registry is not None:
        return registry, None
    plugins = tuple(str(p) for p in ((report.get("campaign") or {}).get("plugins") or ()))
    if plugins not in _REGISTRIES:
        try:
            from difftest.plugins import PluginHost

            host = PluginHost()
            host.load(plugins)
            _REGISTRIES[plugins] = host.registry
        except Exception as exc:  # a broken plugin must not stop the report
            return None, f"the plugins could not be loaded: {type(exc).__name__}: {exc}"
    return _REGISTRIES[plugins], None


@dataclass
class Traced:
    """One stream run with the trace on."""

    backends: list[str]
    reference: str
    ops: list[str]
    held: dict[str, list[int]]
    needed: dict[str, list[int]]
    freed: dict[str, list[int]]  # per op (not cumulative)
    divergences: list[Any]  # difftest.divergence.Divergence
    stopped: dict[str, str]
    ops_total: int  # the stream's length before any cut
    notes: list[str] = field(default_factory=list)
    died: dict[str, int] = field(default_factory=dict)  # backend -> op at which it ran out of memory

    @property
    def length(self) -> int:
        return max((len(v) for v in self.held.values()), default=0)

    def at(self, index: int) -> dict[str, list[Any]]:
        """Divergences by backend at op ``index``."""
        out: dict[str, list[Any]] = {}
        for d in self.divergences:
            if d.op_index == index:
                out.setdefault(d.backend, []).append(d)
        return out

    def series_length(self) -> int:
        return max((len(v) for v in self.held.values()), default=0)

    def excess(self, backend: str) -> int:
        return max((h - n for h, n in zip(self.held[backend], self.needed[backend])), default=0)


def runnable_backends(report: dict[str, Any], registry: Any) -> tuple[list[str], str | None, list[str]]:
    """(backends to run, reference or None, notes)."""
    notes = []
    killers = {b for d in report.get("worker_deaths") or () for b in d.get("backends") or ()}
    names = []
    for b in report.get("backends", []):
        if b in killers:
            notes.append(f"{b} is not run here: it killed a worker process during the campaign")
        elif b not in registry.backends:
            notes.append(f"{b} is not run here: no plugin registers it in this environment")
        else:
            names.append(b)
    ref = report.get("reference")
    return names, (ref if ref in names else None), notes


def run_traced(report: dict[str, Any], registry: Any, stream: Any, cut: int | None = None) -> Traced | str:
    """Run ``stream`` (cut to its first ``cut`` ops) on the report's backends, traced."""
    from difftest.harness import Harness
    from difftest.ops import describe

    names, reference, notes = runnable_backends(report, registry)
    if not names:
        return "no backend of the report can run here" + (f" ({'; '.join(notes)})" if notes else "")
    total = len(stream.ops)
    if cut is not None and total > cut:
        stream = stream.replace(ops=stream.ops[:cut])
        notes.append(f"cut to its first {cut:,} of {total:,} ops")
    try:
        harness = Harness.from_registry(registry, names, reference, trace=True)
        result = harness.run(stream, time_limit=RUN_TIME_LIMIT)
    except Exception as exc:  # the report goes on without this run
        return f"running it failed: {type(exc).__name__}: {exc}"
    trace = result.trace or {}
    held, needed, freed = {}, {}, {}
    from difftest.campaign import out_of_memory_ops

    died = out_of_memory_ops(result)
    for name in names:
        rows = trace.get(name, [])
        if name in died:
            rows = rows[: died[name] + 1]  # a dead backend holds nothing after: no flat line
        held[name] = [r[0] for r in rows]
        needed[name] = [r[1] for r in rows]
        cumulative = [r[2] for r in rows]
        freed[name] = [c - p for c, p in zip(cumulative, [0] + cumulative[:-1])]
    return Traced(backends=names, reference=result.reference, ops=[describe(op) for op in stream.ops],
                  held=held, needed=needed, freed=freed, divergences=list(result.divergences),
                  stopped=dict(result.stopped), ops_total=total, notes=notes, died=died)


def run_reproducer(report: dict[str, Any], registry: Any, entry: dict[str, Any]) -> Traced | str:
    from difftest.streams import stream_from_json

    doc = entry.get("reproducer")
    if not isinstance(doc, dict):
        return "the report holds no reproducer for this signature"
    try:
        stream = stream_from_json(doc)
    except Exception as exc:
        return f"the reproducer does not load: {exc}"
    return run_traced(report, registry, stream, cut=LONG_STREAM_MAX_OPS)


def representative_index(report: dict[str, Any]) -> int:
    entries = report.get("divergences") or []
    # A stream where a backend ran out of memory first (the story of PR 5666), then a leak.
    for pick in (lambda e: e.get("class") == "out-of-memory", lambda e: e.get("kind") == "resource", lambda e: True):
        found = [e["first_stream"]["index"] for e in entries
                 if pick(e) and isinstance(e.get("first_stream"), dict)
                 and isinstance(e["first_stream"].get("index"), int)]
        if found:
            return min(found)
    return 0


def campaign_stream(report: dict[str, Any], registry: Any, k: int) -> Any:
    """Stream k of the campaign, regenerated (raises on a missing generator or campaign)."""
    from difftest.campaign import unit_seed

    camp = report["campaign"]
    gen = registry.generators.get(camp["generator"])
    if gen is None:
        raise LookupError(f"generator {camp['generator']!r} is not registered here")
    return gen.generate(unit_seed(camp["seed"], k), camp["ops_per_stream"], camp["phys_pages"])


def long_stream(report: dict[str, Any], registry: Any) -> tuple[int, Traced | str]:
    camp = report.get("campaign")
    if not isinstance(camp, dict) or "seed" not in camp:
        return -1, "the report is not a campaign's: no stream to regenerate"
    k = representative_index(report)
    try:
        stream = campaign_stream(report, registry, k)
    except Exception as exc:
        return k, f"stream {k} could not be regenerated: {type(exc).__name__}: {exc}"
    return k, run_traced(report, registry, stream, cut=LONG_STREAM_MAX_OPS)


def coverage(report: dict[str, Any], registry: Any) -> dict[str, Any] | str:
    """Op kinds and depth counters over the campaign's first streams."""
    camp = report.get("campaign")
    if not isinstance(camp, dict) or "seed" not in camp:
        return "the report is not a campaign's: no streams to regenerate"
    per = max(1, int(camp.get("ops_per_stream") or 1))
    n = min(int(report.get("streams") or 0), COVERAGE_MAX_STREAMS, max(1, COVERAGE_MAX_OPS // per))
    if n < 1:
        return "no stream was run"
    try:
        from difftest import coverage as cov  # written by another issue: optional here
        stats_of = cov.stream_stats
        fields = dict(getattr(cov, "DEPTH_FIELDS", {}))
    except Exception:
        stats_of, fields = None, {}
    started = time.perf_counter()
    kinds: dict[str, int] = {}
    depth: dict[str, int] = {}
    try:
        for k in range(n):
            stream = campaign_stream(report, registry, k)
            if stats_of is not None:
                try:
                    stats = stats_of(stream)
                except Exception:
                    stats_of, fields, depth = None, {}, {}
                else:
                    for name, value in stats.get("op_kinds", {}).items():
                        kinds[name] = kinds.get(name, 0) + int(value)
                    for name, value in stats.get("depth", {}).items():
                        if isinstance(value, bool) or not isinstance(value, int):
                            continue
                        depth[name] = max(depth.get(name, 0), value) if name.startswith("max_") \
                            else depth.get(name, 0) + value
                    continue
            for op in stream.ops:
                kinds[op.name] = kinds.get(op.name, 0) + 1
    except Exception as exc:
        return f"the streams could not be regenerated: {type(exc).__name__}: {exc}"
    return {
        "streams": n,
        "ops": sum(kinds.values()),
        "op_kinds": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        "depth": depth,
        "depth_fields": fields,
        "seconds": time.perf_counter() - started,
    }
