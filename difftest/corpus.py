"""A corpus of reproducers kept between campaigns (``difftest fuzz --corpus DIR``).

Hypothesis's example database and syzbot's reproducer re-testing are the models: each
night replays every reproducer first, so that a bug is called *fixed* only when its
reproducer ran and no longer diverges, not because tonight's random streams missed it.

One entry per bug, two files named after the bug's head (``slug``):

* ``NAME.stream.json``: the minimised reproducer, a ``difftest.stream/1`` file (so
  ``difftest validate DIR/*.stream.json`` and ``difftest replay`` take it as it is);
* ``NAME.record.json``: ``difftest.corpus/1``: ``head``, ``backend``, ``kind``,
  ``members`` (the signatures seen as this bug), ``status`` (``open`` or ``fixed``, as of
  the last campaign that ran it) and ``stream`` (the file name above).

A campaign replays the entries whose backend it runs (the others are *not judged*, and kept
as they are), then fuzzes; at the end it judges its bugs against the entries (``judge``)
and writes the corpus back (``update``): new bugs become entries, statuses change.

Statuses of a bug in a ``--corpus`` campaign (``bugs[].status``), in order of precedence:

=============  ========================================================================
``regressed``  its entry was ``fixed``, and it diverges again (replay or fuzzing)
``known``      it diverges, and the baseline lists it
``open``       it has an entry, and it still diverges (replay or fuzzing): still open
``new``        found by fuzzing, no entry
``fixed``      its entry's reproducer ran and did not diverge, and fuzzing did not hit it
=============  ========================================================================
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from difftest.baseline import match_bug
from difftest.divergence import KnownDivergence
from difftest.errors import BadInput, StreamError
from difftest.jsonstream import read_json_file
from difftest.streams import atomic_write_text, dumps, stream_from_json, stream_to_json

CORPUS_FORMAT = "difftest.corpus/1"


def slug(signature: str) -> str:
    """A file name for a signature: readable, and unique through a short hash."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", signature)[:80]
    return f"{readable}-{hashlib.sha256(signature.encode()).hexdigest()[:10]}"


@dataclass
class CorpusEntry:
    name: str  # the file stem: NAME.record.json, NAME.stream.json
    head: str
    backend: str
    kind: str
    members: list[str]
    status: str  # "open" or "fixed"
    stream: dict[str, Any]  # the reproducer, difftest.stream/1

    def record(self) -> dict[str, Any]:
        return {"format": CORPUS_FORMAT, "head": self.head, "backend": self.backend, "kind": self.kind,
                "members": sorted(set(self.members)), "status": self.status, "stream": f"{self.name}.stream.json"}


@dataclass
class Corpus:
    path: Path
    entries: list[CorpusEntry] = field(default_factory=list)
    # entry name -> what replaying it did: {"diverged": bool, "signatures": [...], "head": key or None}
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: int = 0

    @classmethod
    def open(cls, path: str | Path) -> "Corpus":
        """Read DIR (made when missing); a malformed entry is bad input naming the file."""
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise BadInput(f"--corpus {root}: not a directory")
        corpus = cls(root)
        for record in sorted(root.glob("*.record.json")) if root.is_dir() else ():
            corpus.entries.append(_read_entry(record))
        return corpus

    def runnable(self, backends: Sequence[str]) -> list[CorpusEntry]:
        return [e for e in self.entries if e.backend in backends]

    def _entry_for(self, bug: dict[str, Any]) -> CorpusEntry | None:
        members = set(bug["members"])
        for e in self.entries:
            if e.head == bug["head"] or members & set(e.members):
                return e
        return None

    def judge(self, bugs: list[dict[str, Any]], known: Sequence[KnownDivergence]) -> list[dict[str, Any]]:
        """This campaign's bugs with their corpus status, then the entries fuzzing did not
        hit, judged by their replay (open, regressed or fixed)."""
        out = []
        matched: set[str] = set()
        for bug in bugs:
            entry = self._entry_for(bug)
            bug = dict(bug)
            if entry is not None:
                matched.add(entry.name)
                bug["status"] = "regressed" if entry.status == "fixed" else ("known" if bug["known"] else "open")
            out.append(bug)
        for entry in self.entries:
            outcome = self.outcomes.get(entry.name)
            if entry.name in matched or outcome is None:
                continue
            kd = match_bug(entry.head, entry.members, known)
            if outcome["diverged"]:
                status = "regressed" if entry.status == "fixed" else ("known" if kd else "open")
            else:
                status = "fixed"
            out.append({
                "head": entry.head,
                "head_signature": outcome.get("head_signature") or entry.head,
                "backend": entry.backend,
                "kind": entry.kind,
                "members": sorted(set(entry.members) | set(outcome["signatures"])),
                "count": 0,
                "events": 0,
                "first_stream": None,
                "known": kd is not None,
                "known_reason": kd.reason if kd else None,
                "status": status,
                "reproducer": entry.stream,
                "reproducer_ops": len(entry.stream.get("ops") or ()),
                "reproducer_path": str(self.path / f"{entry.name}.stream.json"),
                "reproducer_signature": None,
            })
        return out

    def summary(self) -> dict[str, Any]:
        before = self.entries[: len(self.entries) - self.added]
        replayed = [e for e in before if e.name in self.outcomes]
        return {
            "path": str(self.path),
            "entries": len(before),
            "replayed": len(replayed),
            "diverged": sum(1 for e in replayed if self.outcomes[e.name]["diverged"]),
            "not_run": [{"head": e.head, "backend": e.backend} for e in before if e.name not in self.outcomes],
            "added": self.added,
        }

    def update(self, bugs: Sequence[dict[str, Any]]) -> int:
        """Write the corpus back: statuses of the entries this campaign judged, an entry for
        every new bug with a reproducer.  Returns the number of entries added."""
        self.path.mkdir(parents=True, exist_ok=True)
        added = 0
        for bug in bugs:
            entry = self._entry_for(bug)
            if entry is None:
                if bug.get("reproducer") is None or bug["status"] == "fixed":
                    continue
                entry = CorpusEntry(name=slug(bug["head"]), head=bug["head"], backend=bug["backend"], kind=bug["kind"],
                                    members=list(bug["members"]), status="open", stream=bug["reproducer"])
                self.entries.append(entry)
                added += 1
                atomic_write_text(self.path / f"{entry.name}.stream.json", dumps(stream_from_json(entry.stream)))
            else:
                entry.members = sorted(set(entry.members) | set(bug["members"]))
                entry.status = "fixed" if bug["status"] == "fixed" else "open"
            atomic_write_text(self.path / f"{entry.name}.record.json", json.dumps(entry.record(), indent=1))
        self.added = added
        return added


def _read_entry(record: Path) -> CorpusEntry:
    doc = read_json_file(record, "corpus record", CORPUS_FORMAT)
    for key in ("head", "backend", "kind", "status", "stream"):
        if not isinstance(doc.get(key), str):
            raise BadInput(f"{record}: field {key!r} is not a string")
    if doc["status"] not in ("open", "fixed"):
        raise BadInput(f"{record}: status {doc['status']!r} is not open or fixed")
    members = doc.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise BadInput(f"{record}: field 'members' is not a list of signatures")
    stream_path = record.parent / Path(doc["stream"]).name
    try:
        from difftest.streams import load

        stream = stream_to_json(load(stream_path))
    except (StreamError, BadInput) as exc:
        raise BadInput(f"{record}: its reproducer {stream_path.name}: {exc}") from None
    name = record.name[: -len(".record.json")]
    return CorpusEntry(name=name, head=doc["head"], backend=doc["backend"], kind=doc["kind"], members=list(members),
                       status=doc["status"], stream=stream)
