"""State features a stream reached: what coverage feedback scores and health checks count.

A *feature* is a short string.  Two sources, both observed from outside the backends, so
that a third party's backend gets features without doing anything:

* per backend (``<backend>|...``), recorded while the harness runs the stream: every pmap(9)
  call the harness makes is wrapped (on the instance the backend's factory returns), and
  the outermost call records its op kind, its outcome (``OK``/``ENOMEM`` of an enter,
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
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from difftest.backend import Backend, BackendSpec
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
_KERNEL_CALLS = ("pmap_kenter_pa", "pmap_kremove")
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


class FeatureRecorder:
    """Records per-backend features of the streams a harness runs (one stream at a time)."""

    def __init__(self) -> None:
        # (backend, call, outcome, dpt, dl1) -> calls
        self.seen: dict[tuple[str, str, str, int, int], int] = {}
        self.extra: set[str] = set()
        self.made: set[str] = set()

    def start(self) -> None:
        self.seen = {}
        self.extra = set()
        self.made: set[str] = set()  # backends built in this recording



    def instrument(self, spec: BackendSpec) -> BackendSpec:
        """The same backend, its instances' pmap(9) calls recorded."""
        make = spec.factory

        def factory(pool: PhysPool) -> Backend:
            if spec.name in self.made:
                # The harness runs the stream again (its precise path after the fast one):
                # the features are those of the last run, as if it had run once.
                self.start()
            self.made.add(spec.name)
            backend = make(pool)
            self._wrap(spec.name, backend, pool)
            return backend

        return replace(spec, factory=factory)

    def _wrap(self, name: str, backend: Backend, pool: PhysPool) -> None:
        depth = [0]
        seen = self.seen
        extra = self.extra
        counts = pool.tag_counts  # (read in place: this runs around every backend call)
        pt, l1, free_tag = int(Tag.PT), int(Tag.L1), int(Tag.FREE)

        def wrap(call: str, fn: Callable[..., Any], outcome: Callable[[Any], str]) -> Callable[..., Any]:
            kernel = call in _KERNEL_CALLS

            def recorded(*args: Any) -> Any:
                if depth[0]:
                    return fn(*args)  # a call the backend makes itself: part of the outer one
                pt0, l10 = counts[pt], counts[l1]
                k0 = pool.held(KERNEL_PMAP, pt) if kernel or (args and args[0] == KERNEL_PMAP) else -1
                depth[0] = 1
                try:
                    result = fn(*args)
                finally:
                    depth[0] = 0
                key = (name, call, outcome(result), counts[pt] - pt0, counts[l1] - l10)
                seen[key] = seen.get(key, 0) + 1
                if k0 >= 0 and pool.held(KERNEL_PMAP, pt) > k0:
                    extra.add(f"{name}|kernel-pt-growth")
                free = counts[free_tag]
                if free <= LOW_FREE:
                    extra.add(f"{name}|pool-{'empty' if free == 0 else 'low'}")
                return result

            return recorded

        for call, outcome in _OUTCOME.items():
            fn = getattr(backend, call, None)
            if fn is None:
                continue
            try:
                setattr(backend, call, wrap(call, fn, outcome))
            except (AttributeError, TypeError):  # __slots__ without __dict__: pool features only
                return

    def features(self, stream: Stream, stats: dict[str, Any] | None = None) -> set[str]:
        """Everything the stream just run reached: per backend, per stream, health
        (``stats``: the stream's ``stream_stats`` when the caller has them already)."""
        out = set(self.extra)
        enomem = pt_freed = False
        for (backend, call, outcome, dpt, dl1), n in self.seen.items():
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


_RECORDERS: "weakref.WeakKeyDictionary[Any, FeatureRecorder]" = weakref.WeakKeyDictionary()


def recorder_for(harness: Any) -> FeatureRecorder:
    """The recorder of a (long-lived, cached) harness, instrumenting it the first time."""
    rec = _RECORDERS.get(harness)
    if rec is None:
        rec = FeatureRecorder()
        harness.specs = [rec.instrument(spec) for spec in harness.specs]
        _RECORDERS[harness] = rec
    return rec


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
