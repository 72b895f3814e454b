"""State features a stream reached: what coverage feedback scores and health checks count.

A *feature* is a short string.  Two sources, both observed from outside the backends, so
that a third party's backend gets features without doing anything:

* per backend (``<backend>|...``), recorded while the harness runs the stream
  (``Harness(record_calls=True)``, as a ``difftest fuzz`` worker builds it): around every
  pmap(9) call the harness makes of a backend to run an op (not its reads to judge it), a
  ``CallRecorder`` counts the call by its op kind, its outcome (``OK``/``ENOMEM`` of an enter,
  ``ok``/``fault`` of an access, the previous value a ``clear_*`` returns, whether an
  ``extract`` found a page) and what the pool saw: page-table and L1 frames taken or given
  back by the call (``pt+2``, ``pt-3l1-1``: table creation and freeing per level, cascades),
  kernel page-table growth, the pool running low or dry;
* per stream (``stream|...``), from the ops alone (``difftest.coverage.stream_stats``): region
  edges, remaps, sharing, wiring, range crossings, collects, page_protects, exits with live
  mappings, kernel mappings, memory pressure.

``HEALTH`` names the features a campaign should reach (``health|...``); the report counts
the streams that reached each and warns, with the option that would reach it, for the ones
no stream did.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from difftest.coverage import stream_stats
from difftest.machine import KERNEL_PMAP, PhysPool, Tag
from difftest.streams import Stream

# The pmap(9) calls recorded, with how their result becomes an outcome.  The attribute
# queries (is_modified, is_referenced) are left out: the harness itself asks them after
# every op to judge it, so their calls say nothing about the stream.
_OUTCOME: dict[str, Callable[[Any], str]] = {
    "pmap_enter": str,
    "pmap_access": str,
    "pmap_extract": lambda r: "none" if r is None else "pa",
    "pmap_clear_modify": lambda r: "was-set" if r else "was-clear",
    "pmap_clear_reference": lambda r: "was-set" if r else "was-clear",
    "pmap_remove": lambda r: "",
    "pmap_protect": lambda r: "",
    "pmap_page_protect": lambda r: "",
    "pmap_unwire": lambda r: "",
    "pmap_kenter_pa": lambda r: "",
    "pmap_kremove": lambda r: "",
    "pmap_collect": lambda r: "",
    "pmap_create": lambda r: "",
    "pmap_destroy": lambda r: "",
}
_KERNEL_CALLS = frozenset({"pmap_kenter_pa", "pmap_kremove"})
_PT, _L1, _FREE = int(Tag.PT), int(Tag.L1), int(Tag.FREE)
LOW_FREE = 4  # "the pool runs low": at most this many frames free after a call


@dataclass(frozen=True)
class HealthCheck:
    """A feature a campaign should reach, and what to do when it did not."""

    feature: str  # "health|<name>"
    what: str
    hint: str


HEALTH: tuple[HealthCheck, ...] = (
    HealthCheck("health|enomem", "ENOMEM on a canfail enter",
                "--generator pressure (or random: its swarm drives memory pressure), or a longer --budget"),
    HealthCheck("health|pt-freed", "a page-table page freed",
                "--generator random (removes, collects, exits) with a backend that frees page tables"),
    HealthCheck("health|shared-3", "a page shared by >= 3 mappings",
                "--generator random (shared pages) or --generator pager (shared text)"),
    HealthCheck("health|kernel-mapping", "a kernel mapping (kenter, or enter on pmap 0)",
                "--generator random (kenter, kernel enters) or --generator pager (u-areas)"),
    HealthCheck("health|exit-with-mappings", "a pmap destroyed with live mappings (a process exit)",
                "--generator pager (processes exit) or --generator random (destroys)"),
)


def _bucket(n: int) -> str:
    return str(n) if n < 4 else "4+"


def _log2_bucket(n: int) -> str:
    """1, 2, 4-7, 8-15, ...: AFL's hit-count buckets, so that doing a thing more often
    (deeper sharing, more ENOMEMs) is new coverage too."""
    if n < 4:
        return str(n)
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


@dataclass(slots=True)
class CallLog:
    """What one backend's pmap(9) calls did in one stream run (``RunResult.calls``):
    ``seen`` counts the calls by (call, outcome, PT frames taken or given back, L1
    frames), ``extra`` holds the backend's other features (``kernel-pt-growth``,
    ``pool-low``, ``pool-empty``).  Plain data: it travels back from a worker."""

    seen: dict[tuple[str, str, int, int], int] = field(default_factory=dict)
    extra: set[str] = field(default_factory=set)


class CallRecorder:
    """Counts one lane's pmap(9) calls for its ``CallLog``: the harness calls ``before``
    and ``after`` around each call it makes of the backend to run an op
    (``Harness(record_calls=True)``), and ``finish`` at the end of the stream.

    Observed from outside, as the pool sees it: frames move only by alloc and free, so
    while the pool's allocs + frees (its *stamp*) stays, the tag counts read at that stamp
    still hold.  The common call (no page-table frame taken or given back, a result of
    None or a str) is counted by its raw result, which ``finish`` turns into its outcome;
    the rest are counted as they come.  A call the backend makes of itself is part of the outer call; a call that raises is
    not counted."""

    __slots__ = ("_still", "_log", "_pool", "_counts", "_stamp", "_pt", "_l1", "_kernel_pt", "_judged")

    def __init__(self, pool: PhysPool) -> None:
        self._still: defaultdict[tuple[str, Any], int] = defaultdict(int)  # (call, result) -> calls
        self._log = CallLog()  # the calls counted as they come, the pool's features
        self._pool = pool
        self._counts = pool.tag_counts  # (read in place)
        self._stamp = -1  # the stamp at which _pt and _l1 were read
        self._pt = self._l1 = 0
        self._kernel_pt = -1  # the kernel's PT frames before a call on it (else -1)
        self._judged = -1  # the stamp at which the free count was last judged

    def before(self, call: str, pmap: Any) -> None:
        """``call`` is about to be made; ``pmap``: its first argument."""
        pool = self._pool
        stamp = pool.allocs + pool.frees
        if stamp != self._stamp:
            counts = self._counts
            self._pt, self._l1, self._stamp = counts[_PT], counts[_L1], stamp
        if pmap == KERNEL_PMAP or call in _KERNEL_CALLS:
            self._kernel_pt = pool.held(KERNEL_PMAP, Tag.PT)

    def after(self, call: str, result: Any) -> None:
        """``call`` returned ``result``: count it with what the pool saw (a call that is
        not counted, such as a query the harness judges by, only keeps the tag counts
        current)."""
        pool = self._pool
        stamp = pool.allocs + pool.frees
        moved = stamp != self._stamp
        if moved:
            counts = self._counts
            pt, l1 = counts[_PT], counts[_L1]
            dpt, dl1 = pt - self._pt, l1 - self._l1
            self._pt, self._l1, self._stamp = pt, l1, stamp
        elif stamp == self._judged and self._kernel_pt < 0 and (type(result) is str or result is None):
            self._still[call, result] += 1  # (the commonest call: nothing more to see)
            return
        else:
            dpt = dl1 = 0
        kernel_pt = self._kernel_pt
        if kernel_pt >= 0:
            self._kernel_pt = -1
            if moved and call in _OUTCOME and pool.held(KERNEL_PMAP, Tag.PT) > kernel_pt:
                self._log.extra.add("kernel-pt-growth")
        if stamp != self._judged:
            if call not in _OUTCOME:
                return
            self._judged = stamp
            free = self._counts[_FREE]
            if free <= LOW_FREE:
                self._log.extra.add("pool-empty" if free == 0 else "pool-low")
        if not (dpt or dl1) and (type(result) is str or result is None):
            # (a str or None: values that are equal have one outcome)
            self._still[call, result] += 1
            return
        outcome = _OUTCOME.get(call)
        if outcome is not None:
            seen = self._log.seen
            key = (call, outcome(result), dpt, dl1)
            seen[key] = seen.get(key, 0) + 1

    def finish(self) -> CallLog:
        """The stream's calls, every one counted by its outcome."""
        seen = self._log.seen
        for (call, result), n in self._still.items():
            outcome = _OUTCOME.get(call)
            if outcome is not None:
                key = (call, outcome(result), 0, 0)
                seen[key] = seen.get(key, 0) + n
        self._still.clear()
        return self._log


def run_features(calls: dict[str, CallLog] | None, stream: Stream, stats: dict[str, Any] | None = None) -> set[str]:
    """Everything a stream run reached: per backend (``calls``: ``RunResult.calls`` of a
    harness that recorded them), per stream, health (``stats``: the stream's
    ``stream_stats`` when the caller has them already)."""
    out: set[str] = set()
    enomem = pt_freed = False
    for backend, log in (calls or {}).items():
        out.update(f"{backend}|{name}" for name in log.extra)
        for (call, outcome, dpt, dl1), n in log.seen.items():
            frames = ""
            if dpt:
                frames += f"pt{'+' if dpt > 0 else '-'}{_bucket(abs(dpt))}"
            if dl1:
                frames += f"l1{'+' if dl1 > 0 else '-'}{_bucket(abs(dl1))}"
            op = call[5:]  # "pmap_enter" -> "enter"
            base = f"{backend}|{op}|{outcome}|{frames}"
            out.add(base)
            out.add(f"{base}#{_log2_bucket(n)}")
            if op == "enter" and outcome == "ENOMEM":
                enomem = True
            if dpt < 0:
                pt_freed = True
    out.update(stream_features(stream, stats))
    if enomem:
        out.add("health|enomem")
    if pt_freed:
        out.add("health|pt-freed")
    return out


def stream_features(stream: Stream, stats: dict[str, Any] | None = None) -> set[str]:
    """The backend-independent features of a stream (its ops, as the VM sees them);
    ``stats``: its ``stream_stats``, when known."""
    stats = stream_stats(stream) if stats is None else stats
    depth = stats["depth"]
    out = {f"stream|op|{kind}" for kind in stats["op_kinds"]}
    for name, value in depth.items():
        if value:
            out.add(f"stream|{name}")
            out.add(f"stream|{name}#{_log2_bucket(value)}")
    if stream.free_frames is not None:
        out.add("stream|pressure")
    if depth["max_page_mappings"] >= 3:
        out.add("health|shared-3")
    if depth["kenters"] or depth["kernel_enters"]:
        out.add("health|kernel-mapping")
    if depth["exits_with_mappings"]:
        out.add("health|exit-with-mappings")
    return out


def health_report(counts: dict[str, int], streams: int) -> list[dict[str, Any]]:
    """Each health check with the streams that reached it (and a hint when none did)."""
    return [{"feature": h.feature.split("|", 1)[1], "what": h.what, "streams": counts.get(h.feature, 0),
             "hint": None if counts.get(h.feature, 0) else h.hint} for h in HEALTH] if streams else []


def warnings(coverage: dict[str, Any]) -> Iterable[str]:
    """One line per health check no stream reached."""
    for h in coverage.get("health", ()):
        if not h["streams"]:
            yield f"never reached: {h['what']} (try {h['hint']})"


def encode_bits(ids: Iterable[int]) -> str:
    """A set of small integers as base64 of the bit set's little-endian bytes."""
    mask = 0
    for i in ids:
        mask |= 1 << i
    return base64.b64encode(mask.to_bytes((mask.bit_length() + 7) // 8, "little")).decode("ascii")


def decode_bits(text: Any) -> list[int]:
    """``encode_bits``'s integers, in increasing order (ValueError for anything else)."""
    if not isinstance(text, str):
        raise ValueError("'fbits' is not a string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'fbits' is not base64") from None
    return [8 * at + bit for at, byte in enumerate(data) if byte for bit in range(8) if byte >> bit & 1]


class CoverageTally:
    """A campaign's count of streams per feature.

    Journaled compactly: features are numbered in the order the campaign first met them,
    and a journal entry lists the new names (in that order) and the stream's numbers as a
    bit set (``fbits``: base64 of the little-endian integer whose bit i is feature i, about
    distinct/6 characters however many features the stream reached)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.streams: dict[str, int] = {}
        self.mutants = 0  # streams that were feedback mutants

    def commit(self, features: Iterable[str], mutant: bool = False) -> dict[str, Any]:
        """Count one stream's features; the fields its journal entry carries."""
        self.mutants += mutant
        ids, new = [], []
        for name in sorted(features):
            i = self.index.get(name)
            if i is None:
                i = self.index[name] = len(self.names)
                self.names.append(name)
                new.append(name)
            ids.append(i)
            self.streams[name] = self.streams.get(name, 0) + 1
        fields: dict[str, Any] = {"features_new": new} if new else {}
        fields["fbits"] = encode_bits(ids)
        return fields

    def replay(self, entry: dict[str, Any]) -> list[str]:
        """Count a journal entry again (on --resume); the stream's features."""
        self.mutants += entry.get("parent") is not None
        for name in entry.get("features_new", ()):
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
        ids = decode_bits(entry["fbits"]) if "fbits" in entry else entry.get("features", ())
        if any(i >= len(self.names) for i in ids):
            raise ValueError("record names a feature that no earlier record declared")
        names = [self.names[i] for i in ids]
        for name in names:
            self.streams[name] = self.streams.get(name, 0) + 1
        return names

    def add(self, other: "CoverageTally") -> None:
        for name, n in other.streams.items():
            self.streams[name] = self.streams.get(name, 0) + n
        self.mutants += other.mutants

    def encode(self, names: Iterable[str]) -> str:
        """Features met before as a bit set over their numbers (a campaign summary's)."""
        return encode_bits(self.index[n] for n in names)

    def decode(self, bits: str) -> frozenset[str]:
        return frozenset(self.names[i] for i in decode_bits(bits))

    def to_json(self) -> dict[str, Any]:
        """The tally's state (a campaign summary's): names in their numbering, counts."""
        return {"names": self.names, "streams": [self.streams.get(n, 0) for n in self.names], "mutants": self.mutants}

    def restore(self, doc: dict[str, Any]) -> None:
        self.names = list(doc["names"])
        self.index = {n: i for i, n in enumerate(self.names)}
        self.streams = {n: c for n, c in zip(self.names, doc["streams"], strict=True) if c}
        self.mutants = doc["mutants"]

    def to_report(self, streams: int) -> dict[str, Any]:
        """The report's ``coverage`` object (docs/REPORT.md)."""
        return {
            "distinct": len(self.streams),
            "mutants": self.mutants,
            "health": health_report(self.streams, streams),
            "features": dict(sorted(self.streams.items())),
        }
