"""Bugs, not signatures: grouping divergence signatures by the cause their reproducers show.

One bug surfaces as many signatures: every op kind that later trips over it, every counter,
every invariant.  A report's unit is a *bug*: the signatures whose minimised reproducers
start with the same divergence.

* A signature's *head* is the first divergence of its backend in its minimised reproducer
  (computed in the worker that shrank it, ``head_of``; of several at that op, the leading
  kind by ``KIND_RANK``, and a reproducer whose first op's divergences include an existing
  bug's head joins that bug).  The shrinker keeps the signature,
  not what comes before it, so whatever diverges first in the small stream is what the
  signature needs: the cause.
* The head's *key* is its signature with the op kind replaced by ``*`` where the op kind only
  names where the bug surfaced (``SURFACING_KINDS``: frames held against what the live
  mappings need, REF/MOD page attributes, backend invariants; standing properties of the
  backend's state, checked after whichever op happened to expose them: PR 5666's leak at
  remove, protect and page_protect is one bug, and so is a MOD bit lost by a remove that
  protect and page_protect call too).  Elsewhere the op kind stays: a wrong PA on enter and a wrong PA
  on protect are different code paths.
* Signatures with equal head keys are one bug; a signature without a minimised reproducer
  (shrinking off or failed) is its own head: nothing shows what it shares.
* A finding explained by another divergence (a backend that runs out of memory where the
  reference survives, explained by its leak) joins that divergence's bug.

A leaf module (the standard library and ``fnmatch`` patterns of the baseline): the campaign
builds ``bugs`` of ``difftest.report/1`` with it, ``difftest merge`` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: divergence kinds whose op kind names where the bug surfaced, not where it is: standing
#: state (frames held, page attributes, backend invariants) that every op path reaching the
#: faulty code exposes (protect to none and page_protect remove mappings too)
SURFACING_KINDS = frozenset({"resource", "attribute", "invariant"})


def head_key(first: Mapping[str, Any]) -> str:
    """The key of a head divergence (``Divergence.to_json()``): its signature, with ``*``
    for the op kind where that only names where the bug surfaced."""
    kind = str(first["kind"])
    op_kind = "*" if kind in SURFACING_KINDS else str(first["op_kind"])
    return f"{kind}:{first['backend']}:{op_kind}:{first['field']}:{first['class']}"


#: which of several divergences found at one op leads (the order a harness checks things in
#: must not decide): what the op did wrong before the state it left
KIND_RANK = {k: i for i, k in enumerate(("crash", "hang", "translation", "result", "attribute", "accounting",
                                         "resource", "invariant"))}


def head_of(divergences: Iterable[Any], backend: str) -> list[dict[str, Any]] | None:
    """The divergences of ``backend`` at the first op where it diverged (``Divergence``
    objects, in the order found), as JSON, leading one first (``KIND_RANK``), or None."""
    mine = [d for d in divergences if d.backend == backend]
    if not mine:
        return None
    at = mine[0].op_index
    first = [d.to_json() for d in mine if d.op_index == at]
    return sorted(first, key=lambda j: (KIND_RANK.get(j["kind"], len(KIND_RANK)), head_key(j)))


@dataclass
class Member:
    """What grouping needs of one signature (a campaign's ``SignatureRecord`` supplies it)."""

    signature: str
    first: dict[str, Any]  # the first sighting (Divergence.to_json())
    first_k: int
    first_seed: int
    head: list[dict[str, Any]] | None = None  # ``head_of`` its minimised reproducer
    explained_by: str | None = None  # another signature whose bug this finding belongs to
    reproducer: dict[str, Any] | None = None
    reproducer_ops: int | None = None


@dataclass
class Bug:
    head: str  # the head key
    head_first: dict[str, Any]  # the head divergence, in full
    members: list[Member] = field(default_factory=list)

    @property
    def signatures(self) -> list[str]:
        return [m.signature for m in self.members]


def group(members: Sequence[Member]) -> list[Bug]:
    """Bugs in the order their first member was found (members in the order given, which
    should be the order first found).  A member joins a bug when a divergence at the first
    diverging op of its reproducer has the key of one at the first diverging op of a
    reproducer already in that bug (its minimised reproducer starts with that bug's head)."""
    by_sig = {m.signature: m for m in members}
    bugs: list[Bug] = []
    alias: dict[str, Bug] = {}  # head key of any divergence at a member's first diverging op -> its bug

    def heads_of(m: Member, seen: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        target = by_sig.get(m.explained_by) if m.explained_by else None
        if target is not None and target.signature not in seen:
            return heads_of(target, seen | {m.signature})
        return m.head or [m.first]

    for m in members:
        heads = heads_of(m)
        keys = [head_key(h) for h in heads]
        bug = next((alias[k] for k in keys if k in alias), None)
        if bug is None:
            bug = Bug(head=keys[0], head_first=heads[0])
            bugs.append(bug)
        for k in keys:
            alias.setdefault(k, bug)
        bug.members.append(m)
    return bugs


def representative(bug: Bug) -> Member:
    """The member whose reproducer stands for the bug: the shortest of those whose reproducer
    starts with the bug's head (it shows the cause, nothing it only led to), else the shortest."""
    with_repro = [m for m in bug.members if m.reproducer is not None]
    if not with_repro:
        return bug.members[0]

    def size(m: Member) -> tuple[int, int]:
        return (m.reproducer_ops if m.reproducer_ops is not None else len(m.reproducer.get("ops") or ()), m.first_k)

    starting = [m for m in with_repro if m.head and bug.head in {head_key(h) for h in m.head}]
    return min(starting or with_repro, key=size)


def streams_hit(signatures: Iterable[str], hit_sets: Mapping[frozenset[str], int]) -> int:
    """Streams in which any of ``signatures`` was seen, from the counts of streams by the
    set of signatures each showed."""
    wanted = set(signatures)
    return sum(n for sigs, n in hit_sets.items() if wanted & sigs)
