"""The traces the HTML report plots.

* each reproducer (a minimised stream the report holds, cut to its first
  ``LONG_STREAM_MAX_OPS`` ops) is run on the report's backends with the harness's trace on
  (PT + L1 frames held by user pmaps, the frames their live mappings need, frames freed,
  after every op): ``run_reproducer``;
* the campaign's long stream is what the campaign recorded (``report["plots"]``,
  ``difftest/plotdata.py``): ``recorded`` reads it.  No stream of the campaign is ever
  generated or run again here, whatever its length.

Running reproducers needs the plugin registry (backends).  ``difftest report`` passes its
own; ``write(report, out)`` alone loads a plugin host once per process (the entry points,
plus any plugins the report names) and caches it.  Nothing here may stop a report from
being written: every failure becomes a note shown in its place.

Backends named in ``worker_deaths`` are never run again here: they end the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difftest.plotdata import LONG_STREAM_MAX_OPS

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
    step = 1  # one point per op

    def over(self, backend: str) -> list[int]:
        return [h - n for h, n in zip(self.held[backend], self.needed[backend])]

    def last_held(self, backend: str) -> int:
        return self.held[backend][-1]

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


@dataclass
class Recorded:
    """The long stream as the campaign recorded it (``plots.long_stream``): per backend,
    one point per bucket of ``step`` ops (held, needed, over: the bucket's maximum; freed:
    its sum).  Plots take it where they take a ``Traced``."""

    stream: int
    seed: int
    backends: list[str]
    reference: str
    held: dict[str, list[int]]
    needed: dict[str, list[int]]
    over_: dict[str, list[int]]
    freed: dict[str, list[int]]
    died: dict[str, int]
    step: int
    length: int  # ops traced
    ops_total: int
    divergences: int
    lanes: list[dict[str, Any]]

    def over(self, backend: str) -> list[int]:
        return self.over_[backend]

    def last_held(self, backend: str) -> int:
        lane = next(lane for lane in self.lanes if lane["backend"] == backend)
        return lane["end_held"] if lane["end_held"] is not None else 0


def recorded(long: dict[str, Any]) -> Recorded:
    """``plots.long_stream`` (checked by ``difftest.report_shape``) as plottable series."""
    lanes = long["lanes"]
    return Recorded(
        stream=long["stream"], seed=long["seed"], backends=[lane["backend"] for lane in lanes],
        reference=long["reference"], held={lane["backend"]: lane["held"] for lane in lanes},
        needed={lane["backend"]: lane["needed"] for lane in lanes},
        over_={lane["backend"]: lane["over"] for lane in lanes},
        freed={lane["backend"]: lane["freed"] for lane in lanes},
        died={lane["backend"]: lane["out_of_memory"] for lane in lanes if lane["out_of_memory"] is not None},
        step=long["step"], length=long["ops"], ops_total=long["ops_total"], divergences=long["divergences"],
        lanes=lanes)
