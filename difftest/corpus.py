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
and writes the corpus back (``write_back``): new bugs become entries, statuses change.

A campaign split in shards (``--shard i/N``) replays each entry in exactly one shard: entry
NAME in shard ``shard_of(NAME, N)``, the first 8 bytes of the SHA-256 of NAME (a big-endian
number) modulo N: a rule of the entry alone, so that an entry's shard depends neither on
timing nor on the rest of the corpus.  Shards do not write the corpus: each journals what
replaying its share did (``corpus_runs``), and ``difftest merge`` judges the merged bugs with
every shard's outcomes, as the unsharded campaign would, and writes the corpus back once.
Each shard records the state of the corpus it started from (``fingerprint``, in its
``campaign.json``), so that a merge can tell that it judges against that very corpus.

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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from difftest.baseline import match_bug
from difftest.divergence import KnownDivergence
from difftest.errors import BadInput, StreamError, short
from difftest.jsonstream import read_json_file
from difftest.streams import atomic_write_text, dumps, stream_from_json, stream_to_json

CORPUS_FORMAT = "difftest.corpus/1"


def shard_of(name: str, shard_count: int) -> int:
    """The shard (0 .. shard_count - 1) whose campaign replays corpus entry ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % shard_count


def changed_entry(before: dict[str, str], now: dict[str, str]) -> str | None:
    """How a corpus changed between two ``fingerprint``s, for an error line: "entry NAME
    added" (removed, changed), the first such name; None when it did not."""
    names = sorted(n for n in set(before) | set(now) if before.get(n) != now.get(n))
    if not names:
        return None
    name = names[0]
    what = "added" if name not in before else "removed" if name not in now else "changed"
    return f"entry {short(name, 120)} {what}"


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

    def digest(self) -> str:
        """What the entry says (its record and its reproducer), in 16 hex digits."""
        text = json.dumps([self.record(), self.stream], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Corpus:
    path: Path
    entries: list[CorpusEntry] = field(default_factory=list)
    # entry name -> what replaying it did: {"diverged": bool, "signatures": [...], "head": key or None}
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: int = 0
    shard: tuple[int, int] = (0, 1)  # (index, count) of the campaign that uses it: a shard replays its share

    @classmethod
    def open(cls, path: str | Path) -> "Corpus":
        """Read DIR (made when written); a malformed entry is bad input naming the file.
        The path is kept absolute: a merge run elsewhere finds the shards' corpus."""
        root = Path(os.path.abspath(path))
        if root.exists() and not root.is_dir():
            raise BadInput(f"--corpus {root}: not a directory")
        corpus = cls(root)
        for record in sorted(root.glob("*.record.json")) if root.is_dir() else ():
            corpus.entries.append(_read_entry(record))
        return corpus

    def runnable(self, backends: Sequence[str]) -> list[CorpusEntry]:
        """The entries this campaign replays: those of its backends, and of a shard, its share."""
        index, count = self.shard
        return [e for e in self.entries if e.backend in backends and shard_of(e.name, count) == index]

    def fingerprint(self) -> dict[str, str]:
        """Every entry's name and digest: the state of the corpus a campaign started from."""
        return {e.name: e.digest() for e in self.entries}

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
        """The report's ``corpus``.  A shard's says which shard it is and how many entries
        the other shards replay (judged by the merge); its ``not_run`` is of its share."""
        index, count = self.shard
        before = self.entries[: len(self.entries) - self.added]
        mine = [e for e in before if shard_of(e.name, count) == index]
        replayed = [e for e in mine if e.name in self.outcomes]
        doc: dict[str, Any] = {
            "path": str(self.path),
            "entries": len(before),
            "replayed": len(replayed),
            "diverged": sum(1 for e in replayed if self.outcomes[e.name]["diverged"]),
            "not_run": [{"head": e.head, "backend": e.backend} for e in mine if e.name not in self.outcomes],
            "added": self.added,
        }
        if count > 1:
            doc["shard"] = f"{index}/{count}"
            doc["other_shards"] = len(before) - len(mine)
        return doc

    def write_back(self, report: dict[str, Any]) -> None:
        """The end of a campaign (or of a merge of its shards): write the corpus back after
        the report's bugs, and give the report its ``corpus`` section."""
        self.update(report["bugs"])
        report["corpus"] = self.summary()

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
