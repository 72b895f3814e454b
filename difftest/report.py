"""Building ``difftest.report/1`` documents (MODEL.md §8).

The core builds the document; the formats that render it (text, markdown, junit, html)
are report writers registered through the plugin host.
"""

from __future__ import annotations

from typing import Any, Iterable

from difftest import __version__
from difftest.divergence import Divergence, RunResult
from difftest.streams import Stream, stream_to_json

REPORT_FORMAT = "difftest.report/1"


def divergence_entry(first: Divergence, count: int, reproducer: Stream | None, known: bool = False,
                     known_reason: str | None = None) -> dict[str, Any]:
    """One report row: a signature, how often it was seen, its first sighting, its reproducer."""
    return {
        "signature": first.signature,
        "kind": first.kind,
        "backend": first.backend,
        "op_kind": first.op_kind,
        "field": first.field,
        "class": first.cls,
        "known": known,
        "known_reason": known_reason,
        "count": count,
        "first": first.to_json(),
        "reproducer": stream_to_json(reproducer) if reproducer is not None else None,
    }


def report_from_runs(runs: Iterable[RunResult], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A report for one or more stream runs on the same backends (``difftest replay``)."""
    runs = list(runs)
    first_run = runs[0]
    seen: dict[str, tuple[Divergence, int, Stream]] = {}
    allowed: dict[str, dict[str, int]] = {}
    stopped: dict[str, str] = {}
    for run in runs:
        for d in run.divergences:
            if d.signature in seen:
                div, n, stream = seen[d.signature]
                seen[d.signature] = (div, n + 1, stream)
            else:
                seen[d.signature] = (d, 1, run.stream)
        for (backend, kind), n in run.allowed_counts.items():
            allowed.setdefault(backend, {}).setdefault(kind, 0)
            allowed[backend][kind] += n
        stopped.update(run.stopped)
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": {"name": "pmap-difftest", "version": __version__},
        "backends": first_run.backends,
        "reference": first_run.reference,
        "streams": len(runs),
        "ops": sum(r.ops_run for r in runs),
        "divergences": [
            divergence_entry(d, n, stream) for d, n, stream in
            sorted(seen.values(), key=lambda item: (item[0].op_index, item[0].signature))
        ],
        "allowed": allowed,
        "stopped": stopped,
    }
    if extra:
        doc.update(extra)
    return doc
