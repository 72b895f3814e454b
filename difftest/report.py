"""Building ``difftest.report/1`` documents (MODEL.md §8).

The core builds the document; the formats that render it (text, markdown, junit, html)
are report writers registered through the plugin host.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from difftest import __version__
from difftest.divergence import Divergence, RunResult
from difftest.streams import Stream, stream_to_json

REPORT_FORMAT = "difftest.report/1"


def divergence_entry(first: Divergence, count: int, events: int, reproducer: Stream | None,
                     known: bool = False, known_reason: str | None = None) -> dict[str, Any]:
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
        "events": events,
        "first": first.to_json(),
        "reproducer": stream_to_json(reproducer) if reproducer is not None else None,
    }


def reproducer_ref(source: str, first: Divergence) -> dict[str, Any]:
    """Where a divergence shows: ops [start, end) of the input stream reproduce it (a
    divergence at op i needs the ops up to i; a checkpoint's, the ops before it)."""
    return {"stream": source, "start": 0, "end": max(first.op_index + 1, 0)}


def report_from_runs(runs: Iterable[RunResult], sources: Sequence[str] | None = None,
                     reproducers: Mapping[str, Stream] | None = None,
                     shrink_notes: Mapping[str, str] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A report for one or more stream runs on the same backends (``difftest replay``).

    Each signature names the stream it was first seen in (``sources[i]`` for ``runs[i]``)
    and the op range that reproduces it; the reproducer itself is only the minimised
    stream in ``reproducers`` (by signature), never the whole input.
    """
    runs = list(runs)
    first_run = runs[0]
    sources = list(sources) if sources is not None else [f"<stream {i}>" for i in range(len(runs))]
    reproducers = reproducers or {}
    shrink_notes = shrink_notes or {}
    seen: dict[str, list[Any]] = {}  # signature -> [first divergence, streams, events, source]
    allowed: dict[str, dict[str, int]] = {}
    stopped: dict[str, str] = {}
    for run, source in zip(runs, sources):
        in_run: set[str] = set()
        for d in run.divergences:
            entry = seen.get(d.signature)
            if entry is None:
                entry = seen[d.signature] = [d, 0, 0, source]
            entry[2] += 1
            if d.signature not in in_run:
                in_run.add(d.signature)
                entry[1] += 1
        for (backend, kind), n in run.allowed_counts.items():
            allowed.setdefault(backend, {}).setdefault(kind, 0)
            allowed[backend][kind] += n
        stopped.update(run.stopped)
    entries = []
    for d, n_streams, n_events, source in sorted(seen.values(), key=lambda item: (item[0].op_index, item[0].signature)):
        entry = divergence_entry(d, n_streams, n_events, reproducers.get(d.signature))
        entry["reproducer_ref"] = reproducer_ref(source, d)
        if d.signature in shrink_notes:
            entry["shrink_note"] = shrink_notes[d.signature]
        entries.append(entry)
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": {"name": "pmap-difftest", "version": __version__},
        "backends": first_run.backends,
        "reference": first_run.reference,
        "streams": len(runs),
        "ops": sum(r.ops_run for r in runs),
        "divergences": entries,
        "allowed": allowed,
        "stopped": stopped,
    }
    if extra:
        doc.update(extra)
    return doc
