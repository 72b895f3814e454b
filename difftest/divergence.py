"""What the harness finds: divergences, allowed differences and a run's result."""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from difftest.streams import Stream

KINDS = ("translation", "result", "accounting", "attribute", "resource", "invariant", "crash", "hang")


@dataclass(frozen=True)
class Divergence:
    """One difference the contract and the reference do not allow.

    ``signature`` (kind, backend, op kind, field, class) is stable across runs and streams:
    it names the bug, not the place, so one bug seen a thousand times is one line.
    """

    kind: str
    backend: str
    op_index: int
    op: str  # the op, in words
    op_kind: str  # "enter", ..., or "audit" for a checkpoint
    field: str  # what was observed: "pa", "mapping", "result", "pt_frames", ...
    cls: str  # a short class of the difference: "pa-mismatch", "pt-frames-held>needed", ...
    message: str
    location: str = ""
    observations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    attribution: str = ""
    traceback: str | None = field(default=None, compare=False)

    @property
    def signature(self) -> str:
        return f"{self.kind}:{self.backend}:{self.op_kind}:{self.field}:{self.cls}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "signature": self.signature,
            "kind": self.kind,
            "backend": self.backend,
            "op_index": self.op_index,
            "op": self.op,
            "op_kind": self.op_kind,
            "field": self.field,
            "class": self.cls,
            "message": self.message,
            "location": self.location,
            "observations": dict(self.observations),
            "attribution": self.attribution,
        }
        if self.traceback:
            doc["traceback"] = self.traceback
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Divergence":
        return cls(
            kind=doc["kind"],
            backend=doc["backend"],
            op_index=doc["op_index"],
            op=doc["op"],
            op_kind=doc["op_kind"],
            field=doc["field"],
            cls=doc["class"],
            message=doc["message"],
            location=doc.get("location", ""),
            observations=dict(doc.get("observations", {})),
            attribution=doc.get("attribution", ""),
            traceback=doc.get("traceback"),
        )


@dataclass(frozen=True)
class Allowed:
    """A difference the contract allows (recorded, shown, never flagged)."""

    kind: str  # "forgotten", "ref-under-reported", "enomem", "out-of-memory"
    backend: str
    op_index: int
    detail: str


@dataclass
class RunResult:
    """Everything one stream run on N backends produced."""

    stream: Stream
    backends: list[str]
    reference: str
    divergences: list[Divergence] = field(default_factory=list)
    allowed: list[Allowed] = field(default_factory=list)  # the first few of each kind
    allowed_counts: Counter = field(default_factory=Counter)  # (backend, kind) -> n
    stopped: dict[str, str] = field(default_factory=dict)  # backend -> why it stopped
    ops_run: int = 0
    checkpoints: int = 0
    elapsed: float = 0.0
    trace: dict[str, list[tuple[int, int, int]]] | None = None  # backend -> [(held, needed, freed)]
    # True when the fast path found a backend invariant broken at an audit and the stream
    # was then re-run on the precise path (whose findings these are)
    localised: bool = False
    # backend -> its pmap(9) calls (difftest.features.CallLog), when the harness recorded them
    calls: dict[str, Any] | None = None

    def by_signature(self) -> dict[str, list[Divergence]]:
        out: dict[str, list[Divergence]] = {}
        for d in self.divergences:
            out.setdefault(d.signature, []).append(d)
        return out

    def signatures(self) -> set[str]:
        return {d.signature for d in self.divergences}

    def first(self, signature: str) -> Divergence | None:
        for d in self.divergences:
            if d.signature == signature:
                return d
        return None


@dataclass(frozen=True)
class KnownDivergence:
    """A signature or a pattern (``fnmatch``: ``*``, ``?``) known to diverge, and why."""

    pattern: str
    reason: str

    def matches(self, signature: str) -> bool:
        return fnmatch.fnmatchcase(signature, self.pattern)

    def concerns(self, backends: Sequence[str]) -> bool:
        """Whether a run of ``backends`` could show this entry at all: False when the
        pattern names a backend (``kind:backend:...``, kind without wildcards) that none of
        them is, so that an entry about a backend that did not run is not "no longer seen"."""
        kind, sep, rest = self.pattern.partition(":")
        if not sep or any(c in kind for c in "*?["):
            return True
        backend = rest.split(":", 1)[0]
        return any(fnmatch.fnmatchcase(name, backend) for name in backends)
