"""A campaign's journal: one small line per committed stream, and a summary for ``--resume``.

``OUT/journal.jsonl`` gets one JSON line per committed stream (``Campaign._commit``),
fsynced before the stream counts as done.  A line carries only what the report and
``--resume`` need, and nothing twice over the campaign:

- ``k``, ``ops``, ``at`` (the campaign's time at the commit), ``elapsed`` (the stream's);
  the stream's seed is ``unit_seed(campaign seed, k)`` and is not written;
- ``hits``: ``[[id, events], ...]``, signatures by number in the order the campaign first
  saw them; ``first``: the first divergence of each signature this stream is the first
  to show (its number is the next free one, in sorted order): a first sighting is written
  once, later streams write a count;
- ``fbits`` and ``features_new``: the features reached, as a bit set over the features
  numbered in the same way (``difftest.features.CoverageTally``); ``parent``/``donor``
  with feedback, ``oom`` and ``backends`` when there are any.

Lines written before this format (``seed`` present, ``hits`` a map of signature to
``[events, divergence]``, ``features`` a list) are read as well.

The journal stays bounded: when it passes ``SEGMENT_BYTES`` it is closed as
``journal.NNNN.jsonl.gz`` (gzip, an archive: nothing reads it again) and
``OUT/summary.json`` (``difftest.summary/1``) gets the whole campaign state it amounted
to; a campaign also writes the summary when it ends.  ``--resume`` reads the summary,
then the journal's lines past the ``journal_bytes`` it covers.  Every step is safe to
interrupt: the summary is written (then renamed) before the journal is emptied, and a
stream read twice counts once.  Without a summary, the closed segments are read in order,
then the journal.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterator

from difftest.errors import BadInput, short
from difftest.jsonstream import read_json_file
from difftest.streams import atomic_write_text

JOURNAL = "journal.jsonl"
SUMMARY = "summary.json"
SUMMARY_FORMAT = "difftest.summary/1"
SEGMENT_BYTES = 8 << 20  # a journal past this is closed as a gzip segment (~30k streams)

_DIVERGENCE_KEYS = {"kind", "backend", "op_kind", "field", "class"}


def _int(value: Any) -> bool:
    return type(value) is int and value >= 0


def record_problem(entry: Any) -> str | None:
    """What is wrong with a parsed journal line (None: a record the campaign can replay)."""
    if not isinstance(entry, dict):
        return "record is not a JSON object"
    if entry.get("type") == "elapsed":
        ok = isinstance(entry.get("elapsed"), (int, float)) and not isinstance(entry.get("elapsed"), bool)
        return None if ok else "elapsed record lacks a number 'elapsed'"
    if entry.get("type") == "corpus":
        ok = isinstance(entry.get("entry"), str) and isinstance(entry.get("outcome"), dict)
        return None if ok else "corpus record lacks a string 'entry' and an object 'outcome'"
    if "oom" in entry and not (isinstance(entry["oom"], dict) and all(type(v) is int for v in entry["oom"].values())):
        return "record's 'oom' is not a map of op indexes"
    if "backends" in entry and not (isinstance(entry["backends"], list)
                                    and all(isinstance(b, str) for b in entry["backends"])):
        return "record's 'backends' is not a list of names"
    death = entry.get("death")
    if "death" in entry and not (isinstance(death, dict) and all(
            isinstance(death.get(key), list) and all(isinstance(b, str) for b in death[key])
            for key in ("backends", "killed_by_watchdog"))):
        return "record's 'death' is not an object of 'backends' and 'killed_by_watchdog' name lists"
    for key in ("k", "ops"):
        if not _int(entry.get(key)):
            return f"record lacks a non-negative integer {key!r}"
    if "seed" in entry and not _int(entry["seed"]):
        return "record lacks a non-negative integer 'seed'"
    for key in ("elapsed", "at"):
        if key in entry and (not isinstance(entry[key], (int, float)) or isinstance(entry[key], bool)):
            return f"record's {key!r} is not a number"
    hits = entry.get("hits")
    if isinstance(hits, list):  # this format: [[id, events], ...] and the first sightings
        if not all(isinstance(h, list) and len(h) == 2 and _int(h[0]) and _int(h[1]) for h in hits):
            return "record's 'hits' is not a list of [signature number, count]"
        first = entry.get("first", {})
        if not isinstance(first, dict):
            return "record's 'first' is not an object"
        for sig, d in first.items():
            if not isinstance(d, dict) or not _DIVERGENCE_KEYS <= set(d):
                return f"record's first sighting of {short(sig)} is not a divergence"
        return None
    if not isinstance(hits, dict):
        return "record lacks an object 'hits'"
    if "seed" not in entry:
        return "record lacks a non-negative integer 'seed'"
    for sig, hit in hits.items():
        if (not isinstance(hit, list) or len(hit) != 2 or type(hit[0]) is not int or not isinstance(hit[1], dict)
                or not _DIVERGENCE_KEYS <= set(hit[1])):
            return f"record's hit {short(sig)} is not [count, divergence]"
    return None


class SignatureTable:
    """Signatures numbered in the order a campaign first saw them (ties: sorted)."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.names: list[str] = list(names or [])
        self.ids: dict[str, int] = {name: i for i, name in enumerate(self.names)}

    def declare(self, signatures: Any) -> None:
        for sig in sorted(signatures):
            if sig not in self.ids:
                self.ids[sig] = len(self.names)
                self.names.append(sig)

    def encode(self, hits: dict[str, Any]) -> dict[str, Any]:
        """A stream's journal fields for ``hits`` (signature -> [events, first divergence])."""
        new = {sig: hit[1] for sig, hit in sorted(hits.items()) if sig not in self.ids}
        self.declare(new)
        fields: dict[str, Any] = {"hits": sorted([self.ids[sig], hit[0]] for sig, hit in hits.items())}
        if new:
            fields["first"] = new
        return fields

    def decode(self, entry: dict[str, Any]) -> dict[str, list[Any]]:
        """A journal line's hits as signature -> [events, first divergence or None] (the
        divergence only where the line is the first sighting).  ValueError when a number
        names no signature declared before."""
        hits = entry["hits"]
        if isinstance(hits, dict):  # the earlier format: every hit carries its divergence
            self.declare(hits)
            return {sig: list(hit) for sig, hit in hits.items()}
        first = entry.get("first", {})
        self.declare(first)
        out = {}
        for i, n in hits:
            if i >= len(self.names):
                raise ValueError(f"record's hit {i} names no signature declared before")
            sig = self.names[i]
            out[sig] = [n, first.get(sig)]
        return out


def segment_path(out: Path, n: int) -> Path:
    return out / f"journal.{n:04d}.jsonl.gz"


def close_segment(out: Path, n: int) -> None:
    """Copy the journal into closed segment ``n`` (gzip; written then renamed)."""
    target = segment_path(out, n)
    tmp = target.with_name(target.name + ".tmp")
    with open(out / JOURNAL, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(tmp, target)


def segments(out: Path) -> list[Path]:
    """The closed segments, in order."""
    return sorted(out.glob("journal.[0-9][0-9][0-9][0-9].jsonl.gz"))


def read_summary(out: Path) -> dict[str, Any] | None:
    """``OUT/summary.json``, or None when there is none (BadInput when it is damaged)."""
    path = out / SUMMARY
    if not path.exists():
        return None
    doc = read_json_file(path, "campaign summary", SUMMARY_FORMAT)
    covers = doc.get("covers")
    if not (isinstance(covers, dict) and _int(covers.get("segments")) and _int(covers.get("journal_bytes"))
            and _int(covers.get("journal_lines")) and isinstance(covers.get("last_line"), str)):
        raise BadInput(f"{path}: not a campaign summary ('covers' lacks its journal's position)")
    return doc


CHECK_CHARS = 200  # the summary keeps the end of the journal's last line it covers, a check


def write_summary(out: Path, state: dict[str, Any], segments_closed: int, journal_bytes: int,
                  journal_lines: int, last_line: str) -> None:
    """``covers``: the closed segments, and the journal's first ``journal_bytes`` bytes
    (``journal_lines`` lines, the last of which ends with ``last_line``)."""
    covers = {"segments": segments_closed, "journal_bytes": journal_bytes, "journal_lines": journal_lines,
              "last_line": last_line[-CHECK_CHARS:]}
    atomic_write_text(out / SUMMARY, json.dumps({"format": SUMMARY_FORMAT, "covers": covers, **state},
                                                allow_nan=False, separators=(",", ":")))


def segment_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a closed segment (BadInput when it cannot be read)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not a closed journal segment ({short(str(exc), 80)})") from None


def ranges(ks: Any) -> list[list[int]]:
    """Sorted integers as [first, last] runs of a common step (a shard's streams)."""
    out: list[list[int]] = []
    ordered = sorted(ks)
    i = 0
    while i < len(ordered):
        j = i
        step = ordered[i + 1] - ordered[i] if i + 1 < len(ordered) else 1
        while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] == step:
            j += 1
        out.append([ordered[i], ordered[j], step] if j > i else [ordered[i], ordered[i], 1])
        i = j + 1
    return out


def unranges(runs: Any) -> list[int]:
    return [k for first, last, step in runs for k in range(first, last + 1, step)]
