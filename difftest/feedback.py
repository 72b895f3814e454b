"""Coverage feedback: a *feedback pool* of streams that reached new features, and mutants.

(Not issue 11's ``--corpus DIR`` of reproducers: this pool lives inside one campaign.)

The campaign scores every committed stream by the features it reached
(``difftest.features``).  A stream that reached a feature no earlier stream did joins the
pool.  Part of the budget then goes to *mutants* of pool streams (AFL++, libFuzzer):
splice in part of another stream, insert or repeat a chunk, delete a chunk, retarget
addresses to region edges (a stream under memory pressure only gets the addresses of ops
that take no frames retargeted: a moved create or kenter could run a backend out of memory).  Every mutant is repaired into a
VM-legal stream (``difftest.legality``): pmap ids renumbered, an unmap inserted before a
last ``destroy``, an unwire before a revoke, anything else the VM never does dropped.

Determinism.  Stream k is described by a ``Recipe``: fresh (the generator's stream for
``unit_seed(seed, k)``) or a mutant of the stream of an earlier recipe, with k's seed
driving the mutation.  Recipes are chosen in k order from the pool *as committed for the
streams before k - WINDOW* (results are committed in k order), and the campaign submits k
only once those are committed, so the choice depends on neither the number of workers nor
their timing.  The journal records each stream's recipe (its parent and donor), so
``--resume`` and the minimiser rebuild the same streams.  A sharded campaign keeps one pool
per shard: its merged report is not the unsharded one's (use ``--no-feedback`` for that).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from difftest.legality import VMModel, legal_stream_problem
from difftest.machine import KERNEL_MAX, KERNEL_MIN, KERNEL_PMAP, PAGE_SIZE, USER_MAX, USER_MIN
from difftest.ops import Create, Enter, KEnter, KRemove, Op, Remove, Unwire
from difftest.streams import Stream

WINDOW = 8  # stream k's recipe sees the pool as committed for the streams before k - WINDOW
MAX_DEPTH = 6  # mutants of mutants, at most this deep (a worker rebuilds the chain)
POOL_SIZE = 64
P_MUTANT = 0.5  # share of the streams that are mutants, once the pool holds something
_SALT = 0x6665656462616B  # keeps the recipe draws apart from the generator's own


@dataclass(frozen=True)
class Recipe:
    """How stream k is made: fresh, or a mutant of ``parent`` (spliced with the fresh
    stream ``donor``), mutated with k's seed."""

    k: int
    parent: "Recipe | None" = None
    donor: int | None = None

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def journal(self) -> dict[str, Any]:
        return {"parent": None if self.parent is None else self.parent.k, "donor": self.donor}

    def to_json(self) -> dict[str, Any]:
        """The whole chain (a campaign summary's)."""
        return {"k": self.k, "parent": None if self.parent is None else self.parent.to_json(), "donor": self.donor}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Recipe":
        parent = doc.get("parent")
        return cls(doc["k"], None if parent is None else cls.from_json(parent), doc.get("donor"))


@dataclass
class _Entry:
    k: int
    recipe: Recipe
    features: frozenset[str]


class FeedbackPool:
    """The campaign side: which streams are kept, and each new stream's recipe."""

    def __init__(self, seed: int, first_unit: int = 0, stride: int = 1, window: int = WINDOW,
                 pool_size: int = POOL_SIZE) -> None:
        self.seed = seed
        self.first_unit = first_unit
        self.stride = stride
        self.window = window
        self.pool_size = pool_size
        self.entries: list[_Entry] = []
        self.counts: dict[str, int] = {}  # feature -> streams, over the streams applied
        self.queue: deque[tuple[int, Recipe, frozenset[str]]] = deque()  # committed, not applied yet
        self.recipes: dict[int, Recipe] = {}
        self.high = -1  # the last committed stream
        self.mutants = 0

    # -- a campaign summary (difftest.journal) -----------------------------------------------------

    def to_json(self, keep: set[int], encode: Callable[[Any], str]) -> dict[str, Any]:
        """The pool's state: what ``recipe_for`` and ``replay`` go on from.  ``keep``: the
        streams whose recipe the campaign may still ask for besides the pool's and the
        uncommitted ones; ``encode``: a feature set as text (the tally's bit set)."""
        held = {e.k for e in self.entries} | {k for k, _, _ in self.queue} | keep
        return {
            "entries": [[e.recipe.to_json(), encode(e.features)] for e in self.entries],
            "queue": [[r.to_json(), encode(f)] for _, r, f in self.queue],
            "counts": dict(sorted(self.counts.items())),
            "recipes": [r.to_json() for k, r in sorted(self.recipes.items()) if k in held or k > self.high],
            "high": self.high,
            "mutants": self.mutants,
        }

    def restore(self, doc: dict[str, Any], decode: Callable[[str], frozenset[str]]) -> None:
        """Take the state ``to_json`` gave (on a new pool of the same campaign)."""
        self.entries = [_Entry(r["k"], Recipe.from_json(r), decode(f)) for r, f in doc["entries"]]
        self.queue = deque((r["k"], Recipe.from_json(r), decode(f)) for r, f in doc["queue"])
        self.counts = dict(doc["counts"])
        self.recipes = {r["k"]: Recipe.from_json(r) for r in doc["recipes"]}
        for e in self.entries:
            self.recipes.setdefault(e.k, e.recipe)
        self.high = doc["high"]
        self.mutants = doc["mutants"]

    # -- commits (in k order) -----------------------------------------------------------------

    def commit(self, k: int, features: Sequence[str]) -> None:
        recipe = self.recipes.get(k) or Recipe(k)
        self.recipes[k] = recipe
        if recipe.parent is not None:
            self.mutants += 1
        self.queue.append((k, recipe, frozenset(features)))
        self.high = max(self.high, k)

    def replay(self, k: int, entry: dict[str, Any], features: Sequence[str]) -> None:
        """A journal entry read back on --resume."""
        parent = entry.get("parent")
        self.recipes[k] = Recipe(k, self.recipes.get(parent, Recipe(parent)) if parent is not None else None,
                                 entry.get("donor"))
        self.commit(k, features)

    def _apply_until(self, limit: int) -> None:
        while self.queue and self.queue[0][0] < limit:
            k, recipe, features = self.queue.popleft()
            new = [f for f in features if f not in self.counts]
            for f in features:
                self.counts[f] = self.counts.get(f, 0) + 1
            if new and recipe.depth < MAX_DEPTH:
                self.entries.append(_Entry(k, recipe, features))
                if len(self.entries) > self.pool_size:
                    self.entries.remove(min(self.entries, key=lambda e: (self._score(e), e.k)))

    def _score(self, entry: _Entry) -> float:
        """Rarity: streams reaching features few others reach are worth more."""
        counts = self.counts
        return sum(1.0 / counts[f] for f in entry.features)

    # -- choosing ---------------------------------------------------------------------------------

    def candidate(self, k: int) -> bool:
        """Stream k may be a mutant (decided from k alone; it is one if the pool then holds
        something).  The other streams are fresh and need not wait for the window."""
        return random.Random(_mix(self.seed, k)).random() < P_MUTANT

    def ready(self, k: int) -> bool:
        """Stream k's recipe can be chosen: it is fresh anyway, or every stream of this
        shard before k - WINDOW is committed."""
        nxt = self.high + self.stride if self.high >= 0 else self.first_unit
        return nxt >= k - self.window or not self.candidate(k)

    def recipe_for(self, k: int) -> Recipe:
        """Stream k's recipe (once ``ready(k)``; candidates in k order)."""
        if k in self.recipes:  # chosen before (a re-run after a worker died)
            return self.recipes[k]
        rng = random.Random(_mix(self.seed, k))
        recipe = Recipe(k)
        if rng.random() >= P_MUTANT:
            self.recipes[k] = recipe
            return recipe
        self._apply_until(k - self.window)
        if self.entries:
            scores = [self._score(e) for e in self.entries]
            parent = rng.choices(self.entries, weights=scores)[0]
            fresh = [e.k for e in self.entries if e.recipe.parent is None and e.k != parent.k]
            donor = fresh[int(rng.random() * len(fresh))] if fresh and rng.random() < 0.4 else None
            recipe = Recipe(k, parent.recipe, donor)
        self.recipes[k] = recipe
        return recipe


class UnitScheduler:
    """Which stream a campaign submits next.  Fresh streams go in k order at once; a
    candidate for a mutant that is not ``ready`` is held back (up to ``lookahead`` of them)
    while later streams go ahead, so the workers stay busy whatever the window.  Results
    are still committed in k order: nothing after a held stream commits before it."""

    def __init__(self, units: Any, pool: "FeedbackPool | None", lookahead: int) -> None:
        self.units = units
        self.pool = pool
        self.lookahead = max(1, lookahead)
        self.held: list[int] = []
        self.cutoff: int | None = None  # after stop(): streams above it are not committed
        self.done = False  # no more units

    def next(self) -> int | None:
        """The next stream to submit, or None when none can go now."""
        pool = self.pool
        for k in self.held:
            if pool is not None and pool.ready(k):
                self.held.remove(k)
                return k
        while not self.done and len(self.held) < self.lookahead:
            k = next(self.units, None)
            if k is None:
                self.done = True
                break
            if pool is None or pool.ready(k):
                return k
            self.held.append(k)
        return None

    def finished(self) -> bool:
        return self.done and not self.held

    def holds_below(self, k: int) -> bool:
        return bool(self.held) and self.held[0] < k

    def stop(self) -> None:
        """The budget is over: held streams are not run, and nothing after the first of
        them is committed (a later --resume runs them, in order)."""
        self.done = True
        if self.held:
            self.cutoff = self.held[0]
            self.held.clear()

    def beyond(self, k: int) -> bool:
        return self.cutoff is not None and k > self.cutoff


def _mix(seed: int, k: int) -> int:
    return (seed * 1_000_003 + k) ^ _SALT


# -- building streams (in the workers) ------------------------------------------------------------

Generate = Callable[[int], Stream]  # k -> the generator's fresh stream k

_BUILT: dict[tuple[Any, int], Stream] = {}
_BUILT_LIMIT = 64


def build_stream(recipe: Recipe, fresh: Generate, n_ops: int, seed: int, key: Any = None) -> Stream:
    """The stream of ``recipe``: rebuilt from its fresh root through its mutations
    (a few recent ones are kept per process, under ``key`` and k)."""
    memo = (key, recipe.k)
    if key is not None and memo in _BUILT:
        return _BUILT[memo]
    if recipe.parent is None:
        stream = fresh(recipe.k)
    else:
        parent = build_stream(recipe.parent, fresh, n_ops, seed, key)
        donor = fresh(recipe.donor) if recipe.donor is not None else None
        # never shorter than the parent allows (an imported trace may be longer than n_ops)
        stream = mutate(parent, donor, random.Random(_mix(seed, recipe.k) ^ 1), max(n_ops, len(parent.ops)))
        if legal_stream_problem(stream) is not None:  # never expected: the repair keeps it legal
            stream = parent
        stream = stream.replace(origin={"feedback": {"k": recipe.k, "parent": recipe.parent.k,
                                                     "donor": recipe.donor, "depth": recipe.depth},
                                        "root": _root_origin(parent.origin)})
    if key is not None:
        if len(_BUILT) >= _BUILT_LIMIT:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[memo] = stream
    return stream


def _root_origin(origin: dict[str, Any]) -> dict[str, Any]:
    return origin.get("root", origin) if "feedback" in origin else origin


# -- mutations ------------------------------------------------------------------------------------

MUTATIONS = ("splice", "insert", "repeat", "delete", "retarget")


def mutate(parent: Stream, donor: Stream | None, rng: random.Random, n_ops: int) -> Stream:
    """One to three mutations of ``parent``, repaired into a VM-legal stream of at most
    ``n_ops`` ops."""
    pieces = _pieces(parent, "main")
    free_frames = parent.free_frames
    copies = 0
    for _ in range(1 + int(rng.random() * 3)):
        kind = MUTATIONS[int(rng.random() * len(MUTATIONS))]
        if free_frames is not None:
            # At the pool's edge a moved create or kenter (which cannot fail gracefully) could
            # run a backend out of memory: pressure streams only get addresses retargeted.
            kind = "retarget"
        n = len(pieces)
        if kind == "splice" and donor is not None and len(donor.ops):
            d = _pieces(donor, "donor")
            a = int(rng.random() * len(d))
            chunk = d[a:a + 1 + int(rng.random() * min(400, len(d)))]
            i = int(rng.random() * (n + 1))
            pieces = pieces[:i] + chunk + pieces[i:]
        elif kind in ("insert", "repeat") and n:
            a = int(rng.random() * n)
            b = min(n, a + 1 + int(rng.random() * 60))
            copies += 1
            times = 1 if kind == "insert" else 2 + int(rng.random() * 4)
            # each repetition gets its own pmap namespace (renumbered by _repair)
            chunk = [(op, f"copy{copies}:{r}", cid) for r in range(times) for op, _, cid in pieces[a:b]]
            i = b if kind == "repeat" else int(rng.random() * (n + 1))
            pieces = pieces[:i] + chunk + pieces[i:]
        elif kind == "delete" and n > 8:
            a = int(rng.random() * n)
            pieces = pieces[:a] + pieces[a + 1 + int(rng.random() * min(100, n // 4)):]
        elif kind == "retarget" and n:
            for _ in range(1 + int(rng.random() * 8)):
                i = int(rng.random() * n)
                op, tag, cid = pieces[i]
                if free_frames is None or type(op) not in (Enter, KEnter):
                    pieces[i] = (_retarget(op, rng), tag, cid)
    ops = _repair(pieces, rng, n_ops)
    return Stream(tuple(ops), parent.phys_pages, {}, free_frames=free_frames)


def _pieces(stream: Stream, tag: str) -> list[tuple[Op, str, int | None]]:
    """(op, namespace, the id a create makes in its source stream)."""
    out: list[tuple[Op, str, int | None]] = []
    next_id = 1
    for op in stream.ops:
        if type(op) is Create:
            out.append((op, tag, next_id))
            next_id += 1
        else:
            out.append((op, tag, None))
    return out


_EDGE_SPANS = (4 << 20, 2 << 20, 1 << 20)


def _retarget(op: Op, rng: random.Random) -> Op:
    """Move an op's address to a region edge near it (first or last page of a 1, 2 or 4 MiB
    region, or a range straddling the boundary)."""
    span = _EDGE_SPANS[int(rng.random() * 3)]
    kernel = type(op) in (KEnter, KRemove) or getattr(op, "pmap", None) == KERNEL_PMAP
    lo, hi = (KERNEL_MIN, KERNEL_MAX) if kernel else (USER_MIN, USER_MAX)
    if hasattr(op, "sva"):
        edge = (op.sva // span + 1) * span
        sva = max(lo, edge - (1 + int(rng.random() * 4)) * PAGE_SIZE)
        eva = min(hi, edge + (1 + int(rng.random() * 4)) * PAGE_SIZE)
        return replace(op, sva=sva, eva=eva) if eva > sva else op
    if type(op) is KRemove:
        edge = (op.va // span + 1) * span
        va = max(lo, edge - (1 + int(rng.random() * 4)) * PAGE_SIZE)
        size = min(hi - va, (2 + int(rng.random() * 6)) * PAGE_SIZE)
        return replace(op, va=va, size=size) if size > 0 else op
    if not hasattr(op, "va"):
        return op
    base = op.va // span * span
    va = (base, base + PAGE_SIZE, base + span - PAGE_SIZE, base + span, base - PAGE_SIZE)[int(rng.random() * 5)]
    return replace(op, va=va) if lo <= va < hi else op


def _repair(pieces: list[tuple[Op, str, int | None]], rng: random.Random, n_ops: int) -> list[Op]:
    """Renumber pmaps per namespace and keep the stream VM-legal (see the module doc)."""
    model = VMModel()
    out: list[Op] = []
    names: dict[str, dict[int, int]] = {}  # namespace -> source id -> real id

    def emit(op: Op) -> None:
        model.apply(op)
        out.append(op)

    for op, tag, created in pieces:
        if len(out) >= n_ops:
            break
        ns = names.get(tag)
        if ns is None:
            # a copy of the main flow sees the main flow's pmaps; a donor's chunk starts blank
            ns = names[tag] = dict(names.get("main", {})) if tag.startswith("copy") else {}
        t = type(op)
        if t is Create:
            ns[created] = model.next_id
            emit(op)
            continue
        pmap = getattr(op, "pmap", None)
        if pmap is not None and pmap != KERNEL_PMAP:
            real = ns.get(pmap)
            if real is None or not model.alive(real):
                live = model.user_pmaps()
                if tag != "donor" or not live:
                    continue
                real = ns[pmap] = live[int(rng.random() * len(live))]
            if real != pmap:
                op = replace(op, pmap=real)
        problem = model.check(op)
        if problem is not None:
            rule = problem.split(":", 1)[0]
            if rule == "destroy-nonempty":
                emit(Remove(op.pmap, USER_MIN, USER_MAX))  # what the VM does before the last destroy
            elif rule == "wired-revoke":
                for pm, va in model.mappings_of(op.pa):
                    if model.maps[pm][va][1]:
                        emit(Unwire(pm, va))
            else:
                continue
            if model.check(op) is not None or len(out) >= n_ops:
                continue
        emit(op)
    return out[:n_ops]

