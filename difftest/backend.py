"""The backend contract: what every pmap implementation plugged into difftest provides.

A backend models one pmap module.  The harness creates one instance per stream run, on a
``PhysPool`` of its own, and drives it with the pmap(9) calls below (named as in pmap(9)).
It then *observes* the backend only through:

* ``walk`` / ``walk_range``: the backend's own page tables read as the MMU would read them
  (never its bookkeeping), giving PA, logical protection and the wired flag;
* the pool: frames held per use and per owning pmap, frames freed;
* ``pmap_resident_count`` / ``pmap_wired_count`` (leaf mappings only, see below);
* the REF/MOD queries;
* its registered invariant checks (``Invariant``, registered through the plugin host).

Conventions every backend follows:

* pmap ids are chosen by the harness: ``pmap_create(pmap)`` makes the pmap ``pmap`` (ids
  1, 2, ...); pmap 0 is the kernel pmap, made by ``__init__`` (bootstrap).
* Page-table memory (every level, the top-level table, anything else) comes from
  ``self.pool`` with the owning pmap as ``owner``, tagged ``Tag.PT`` / ``Tag.L1`` /
  ``Tag.META``.  ``Tag.DATA`` frames belong to the VM layer: never allocate or free them.
* Out of memory: ``pool.alloc`` raises ``OutOfMemory``.  ``pmap_enter`` with ``canfail``
  returns ``ENOMEM`` and leaves no trace (no half-built table, no count off); without
  ``canfail`` the exception propagates (the kernel would panic).  The harness checks
  that the pool's free and held frames are as before; to leave even the pool's
  ``snapshot()`` equal (its alloc/free counters and free-list order), ask
  ``pool.has_free(n)`` before allocating rather than allocating and giving back.
* ``pmap_resident_count`` / ``pmap_wired_count`` count *leaf* mappings (pages), whatever
  the original counted (some counted PT pages too; normalise here).
* Logical protection is what the pmap was asked for (after protect/page_protect), not
  what a PTE currently allows while REF/MOD emulation has it stripped.
"""

from __future__ import annotations

import abc
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Sequence

from difftest.machine import PAGE_SIZE, PhysPool, Tag


@dataclass(frozen=True, slots=True)
class Translation:
    """What the MMU finds for one virtual page: where it goes and how."""

    pa: int
    prot: int  # logical PROT_* bits
    wired: bool


@dataclass(frozen=True)
class Level:
    """One level of a page-table tree.

    ``span`` is the VA range one table of this level maps; ``entries`` how many entries it
    has (so one entry maps ``span // entries``); ``frames`` how many pool frames one table
    occupies, with ``tag``.
    """

    name: str
    span: int
    entries: int
    frames: int = 1
    tag: Tag = Tag.PT

    @property
    def entry_span(self) -> int:
        return self.span // self.entries


@dataclass(frozen=True)
class Geometry:
    """The page-table geometry a backend declares, top level first.

    ``top_level`` says when the top-level table exists: ``"create"`` (made with the pmap,
    freed at destroy) or ``"lazy"`` (made with the first user mapping, freed with the last).
    The harness computes the frames a pmap *needs* for a set of live mappings from this
    alone (``needed_pt_frames``), never from the backend's word.
    """

    levels: tuple[Level, ...]
    top_level: Literal["create", "lazy"] = "create"
    page_size: int = PAGE_SIZE

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a geometry needs at least one level")
        if self.top_level not in ("create", "lazy"):
            raise ValueError(f"top_level must be 'create' or 'lazy', not {self.top_level!r}")
        leaf = self.levels[-1]
        if leaf.entry_span != self.page_size:
            raise ValueError(f"the last level's entries must map one page, not {leaf.entry_span}")
        for upper, lower in zip(self.levels, self.levels[1:]):
            # A lower table may cover several upper entries: an arm32 PT page holds four
            # 1 KiB L2 tables, one per 1 MiB L1 slot, and so spans 4 MiB.
            if lower.span % upper.entry_span or upper.span % lower.span:
                raise ValueError(
                    f"level {lower.name} spans {lower.span:#x}: not a whole number of level "
                    f"{upper.name} entries ({upper.entry_span:#x}) within its span {upper.span:#x}"
                )

    def describe(self) -> str:
        """Short text such as ``L1 4096x1MiB (4 fr, at create) > PT 1024x4KiB``."""
        parts = []
        for i, level in enumerate(self.levels):
            text = f"{level.name} {level.entries}x{_size(level.entry_span)}"
            extras = []
            if level.frames != 1:
                extras.append(f"{level.frames} frames")
            if i == 0:
                extras.append("at create" if self.top_level == "create" else "lazy")
            if extras:
                text += f" ({', '.join(extras)})"
            parts.append(text)
        return " > ".join(parts)

    def to_json(self) -> dict:
        return {
            "top_level": self.top_level,
            "page_size": self.page_size,
            "levels": [
                {"name": l.name, "span": l.span, "entries": l.entries, "frames": l.frames, "tag": str(l.tag)}
                for l in self.levels
            ],
        }


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def needed_pt_frames(geometry: Geometry, vas: Iterable[int], pmap_alive: bool = True) -> dict[Tag, int]:
    """Frames (by tag) a pmap with live leaf mappings at ``vas`` needs under ``geometry``.

    For every level below the top: one table per distinct region of that level's span
    holding a live mapping.  The top level: one table while the pmap lives (``create``)
    or while it has any mapping (``lazy``).  This is the reference count for the leak check;
    the harness keeps the same numbers incrementally (``ContractState``, held to this by
    ``tests/test_contract.py``).
    """
    vas = list(vas)
    needed: dict[Tag, int] = {}
    top = geometry.levels[0]
    if (geometry.top_level == "create" and pmap_alive) or (geometry.top_level == "lazy" and vas):
        needed[top.tag] = needed.get(top.tag, 0) + top.frames
    for level in geometry.levels[1:]:
        regions = {va // level.span for va in vas}
        needed[level.tag] = needed.get(level.tag, 0) + len(regions) * level.frames
    return needed


class Backend(abc.ABC):
    """Base class of a pmap model.  Subclass it, set the class attributes, implement
    the abstract methods, and register the class with ``difftest_register_backends``.
    """

    #: the name users pass to ``--backends`` (lower-case, no spaces)
    name: ClassVar[str]
    #: one line for ``difftest backends``
    description: ClassVar[str] = ""
    #: the declared page-table geometry (an instance attribute is fine too)
    geometry: Geometry
    #: run when the user names no backends (``difftest fuzz``/``replay`` without
    #: ``--backends``); a variant or a test-only backend says False
    run_by_default: ClassVar[bool] = True
    #: Scratch space while the harness audits this backend in full: a fresh dict from the
    #: start of the audit to its end, None otherwise.  The audit only reads (walks,
    #: counters, attributes, invariants with ``touched=None``), so the backend may keep
    #: views derived from its tables there and share one scan between several reads.
    #: The harness puts the pool's ``check_conservation()`` of that audit there under
    #: ``"pool-conservation"`` (``pool_conservation``).
    audit_memo: dict | None = None
    #: True when page-table pages of the kernel pmap are never freed once allocated (as in
    #: most real pmaps): the harness then lets pmap 0 hold more page-table frames than its
    #: live mappings need, never fewer.  False: the kernel is held to "needed" exactly.
    keeps_kernel_page_tables: ClassVar[bool] = False

    # -- capabilities: what the contract lets a backend lack.  ``difftest check-backend``
    # turns the divergences a missing capability explains into expected failures
    # (``difftest.conformance.CAPABILITIES``).

    #: frees a page-table page when its last live entry goes, not only at destroy
    frees_pt_pages: ClassVar[bool] = True

    def __init__(self, pool: PhysPool) -> None:
        """Bootstrap: take the pool and make the kernel pmap 0."""
        self.pool = pool

    # -- pmap(9) --------------------------------------------------------------------------

    @abc.abstractmethod
    def pmap_create(self, pmap: int) -> None:
        """Make user pmap ``pmap`` with one reference."""

    @abc.abstractmethod
    def pmap_reference(self, pmap: int) -> None:
        """Add a reference."""

    @abc.abstractmethod
    def pmap_destroy(self, pmap: int) -> None:
        """Drop a reference; at zero the pmap is empty of user mappings (the harness
        removes any first) and every frame it holds goes back to the pool."""

    @abc.abstractmethod
    def pmap_enter(
        self, pmap: int, va: int, pa: int, prot: int, access: int, wired: bool, canfail: bool
    ) -> str:
        """Map ``va`` to ``pa``; return ``difftest.OK`` or (``canfail`` only) ``difftest.ENOMEM``."""

    @abc.abstractmethod
    def pmap_remove(self, pmap: int, sva: int, eva: int) -> None:
        """Remove every mapping in [sva, eva)."""

    @abc.abstractmethod
    def pmap_protect(self, pmap: int, sva: int, eva: int, prot: int) -> None:
        """Lower the protection of [sva, eva) to ``prot``; no read removes the mappings."""

    @abc.abstractmethod
    def pmap_unwire(self, pmap: int, va: int) -> None:
        """Clear the wired flag of the mapping at ``va``."""

    @abc.abstractmethod
    def pmap_extract(self, pmap: int, va: int) -> int | None:
        """The PA ``va`` maps to, or None."""

    @abc.abstractmethod
    def pmap_kenter_pa(self, va: int, pa: int, prot: int) -> None:
        """Kernel pmap: an unmanaged, wired mapping with no REF/MOD tracking."""

    @abc.abstractmethod
    def pmap_kremove(self, va: int, size: int) -> None:
        """Kernel pmap: remove the kenter'd mappings in [va, va + size)."""

    @abc.abstractmethod
    def pmap_page_protect(self, pa: int, prot: int) -> None:
        """Lower every managed mapping of page ``pa``: r/rx removes write, none removes."""

    @abc.abstractmethod
    def pmap_clear_modify(self, pa: int) -> bool:
        """Clear MOD of page ``pa``; return its previous value."""

    @abc.abstractmethod
    def pmap_clear_reference(self, pa: int) -> bool:
        """Clear REF of page ``pa``; return its previous value."""

    @abc.abstractmethod
    def pmap_is_modified(self, pa: int) -> bool: ...

    @abc.abstractmethod
    def pmap_is_referenced(self, pa: int) -> bool: ...

    @abc.abstractmethod
    def pmap_collect(self, pmap: int) -> None:
        """Advisory: may remove non-wired user mappings to free page tables."""

    @abc.abstractmethod
    def pmap_access(self, pmap: int, va: int, kind: str) -> str:
        """The MMU performs a ``kind`` ("r", "w", "x") access at ``va``: walk the tables;
        on a fault the pmap's REF/MOD emulation may fix the PTE up and retry.  Return
        ``difftest.OK`` or ``difftest.FAULT`` (a fault the VM layer would have to handle).
        The 0.1 spellings ``"ok"`` / ``"fault"`` are accepted until 0.3."""

    def pmap_update(self, pmap: int) -> None:
        """Finish deferred work (TLB shootdowns).  Nothing to do in most models."""

    @abc.abstractmethod
    def pmap_resident_count(self, pmap: int) -> int:
        """Leaf mappings of ``pmap`` according to the backend's own counter."""

    @abc.abstractmethod
    def pmap_wired_count(self, pmap: int) -> int:
        """Wired leaf mappings of ``pmap`` according to the backend's own counter."""

    # -- the MMU's view --------------------------------------------------------------------

    @abc.abstractmethod
    def walk(self, pmap: int, va: int) -> Translation | None:
        """Read the page tables of ``pmap`` at ``va`` as the MMU would."""

    def walk_fields(self, pmap: int, va: int) -> tuple[int, int, bool] | None:
        """``walk(pmap, va)`` as a plain tuple ``(pa, prot, wired)``, or None: what the
        harness reads after every op.  The default calls ``walk``; a backend may return the
        tuple straight from its tables (no ``Translation`` built: the per-op path is hot).
        It must agree with ``walk`` field for field.  A subclass that overrides ``walk``
        but not this method gets the default (``fused_reader``), so a changed ``walk`` is
        never bypassed."""
        t = self.walk(pmap, va)
        return None if t is None else (t.pa, t.prot, t.wired)

    def walk_fields_many(self, pmap: int, vas: Sequence[int]) -> list[tuple[int, int, bool] | None]:
        """``[walk_fields(pmap, va) for va in vas]`` in one call: the harness reads every
        place a range op touched (remove, protect, collect...) this way.  The default reads
        through ``walk_fields`` (or, when a subclass changed ``walk`` below it, through
        ``walk``); a backend may walk its tables once for all of them.  Override as
        ``walk_fields``."""
        read = fused_reader(self, "walk_fields")
        return [read(pmap, va) for va in vas]

    def read_counts(self, pmap: int) -> tuple[int, int]:
        """``(pmap_resident_count(pmap), pmap_wired_count(pmap))`` in one call: the harness
        reads both after every op that names ``pmap``.  Override as ``walk_fields``."""
        return self.pmap_resident_count(pmap), self.pmap_wired_count(pmap)

    def read_attributes(self, pa: int) -> tuple[bool, bool]:
        """``(pmap_is_modified(pa), pmap_is_referenced(pa))`` in one call: the harness reads
        both for every page an op touched.  Override as ``walk_fields``."""
        return self.pmap_is_modified(pa), self.pmap_is_referenced(pa)

    def read_place(self, pmap: int, va: int, pa: int) -> tuple[Any, int, int, bool, bool] | None:
        """``(walk_fields(pmap, va), *read_counts(pmap), *read_attributes(pa))`` in one
        call, or None to have the harness make those reads one by one: what it reads after
        an op that touched one place and one page (enter, access, kenter).  The default makes
        the three reads (the harness does not call it: it reads one by one then); a backend
        may read its tables once.  Override as ``walk_fields``."""
        return (fused_reader(self, "walk_fields")(pmap, va), *fused_reader(self, "read_counts")(pmap),
                *fused_reader(self, "read_attributes")(pa))

    @abc.abstractmethod
    def walk_range(self, pmap: int, sva: int, eva: int) -> Iterator[tuple[int, Translation]]:
        """Every valid translation in [sva, eva), in VA order, skipping absent tables
        without visiting their pages (so the cost follows the tables, not the range)."""

    def walk_range_fields(self, pmap: int, sva: int, eva: int) -> dict[int, tuple[int, int, bool]]:
        """``walk_range(pmap, sva, eva)`` as ``{va: (pa, prot, wired)}``: what a full audit
        reads of each pmap.  The default calls ``walk_range``; a backend may build the
        tuples straight from its tables.  Override as ``walk_fields``."""
        return {va: (t.pa, t.prot, t.wired) for va, t in self.walk_range(pmap, sva, eva)}

    def state_snapshot(self) -> object:
        """A comparable value capturing the backend's whole state (tables, pv lists,
        counts, attributes), for "left no trace" checks.  Optional."""
        raise NotImplementedError


def pool_conservation(backend: Backend) -> list[str]:
    """``backend.pool.check_conservation()``, computed once per full audit (the harness's
    own, from ``audit_memo``) for invariants that check it too."""
    memo = getattr(backend, "audit_memo", None)
    if memo is not None and "pool-conservation" in memo:
        return memo["pool-conservation"]
    return backend.pool.check_conservation()


# A fused read -> the plain reads it stands for.
FUSED_READS = {
    "walk_fields": ("walk",),
    "walk_fields_many": ("walk", "walk_fields"),
    "walk_range_fields": ("walk_range",),
    "read_place": ("walk", "walk_fields", "pmap_resident_count", "pmap_wired_count", "read_counts",
                   "pmap_is_modified", "pmap_is_referenced", "read_attributes"),
    "read_counts": ("pmap_resident_count", "pmap_wired_count"),
    "read_attributes": ("pmap_is_modified", "pmap_is_referenced"),
}


def fused_reader(backend: Backend, name: str) -> Callable[..., Any]:
    """The fused read ``name`` (``FUSED_READS``) the harness may use for ``backend``: its
    own, unless a class below the one that defines it overrides one of the plain reads it
    stands for (then Backend's default, built on those reads): a changed plain read is
    never bypassed."""
    if _default_fused_read(type(backend), name):
        return functools.partial(getattr(Backend, name), backend)
    return getattr(backend, name)


@functools.lru_cache(maxsize=None)
def _default_fused_read(cls: type, name: str) -> bool:
    """Whether ``cls`` must use Backend's default of the fused read ``name`` (a property of
    the class alone, so decided once: Backend's defaults ask on every call)."""
    mro = cls.__mro__

    def owner(attr: str) -> type:
        return next((c for c in mro if attr in c.__dict__), Backend)

    fused = owner(name)
    return fused is Backend or any(mro.index(owner(plain)) < mro.index(fused) for plain in FUSED_READS[name])


def own_fused_reader(backend: Backend, name: str) -> Callable[..., Any] | None:
    """``fused_reader(backend, name)`` where that is the backend's own, else None (for a
    fused read the harness uses only when a backend has its own)."""
    read = fused_reader(backend, name)
    return None if isinstance(read, functools.partial) else read


@dataclass(frozen=True)
class Touched:
    """What an op could have changed: given to incremental invariant checks.

    ``pmaps``: pmap ids; ``vas``: (pmap, va) pairs; ``pas``: physical page addresses.
    A full audit passes ``None`` instead of a Touched.

    ``whole_pages``: the pages of ``pas`` every mapping of which the op may have changed
    (``page_protect``, clearing REF or MOD: the backend walks them all itself).  Of the
    other pages in ``pas`` the op changed only the mappings at ``vas`` (and their pv
    entries) and the page's attributes, which it may only have *set*: a check may look at
    just those and leave the page's other mappings alone, so that an op on one mapping of
    a page with many costs O(1).  ``None`` (the default) means every page in ``pas``: a
    check must assume anything of them changed (``whole``).
    """

    pmaps: frozenset[int] = frozenset()
    vas: tuple[tuple[int, int], ...] = ()
    pas: frozenset[int] = frozenset()
    whole_pages: frozenset[int] | None = None

    @property
    def whole(self) -> frozenset[int]:
        """The pages of ``pas`` to check whole: ``whole_pages``, or all of ``pas``."""
        return self.pas if self.whole_pages is None else self.whole_pages


_CHECK_MEMOS: dict[int, dict[str, Any]] = {}  # id(backend) -> its memos, while it lives


def check_memo(backend: Backend, key: str, make: Callable[[], Any]) -> Any:
    """What an incremental invariant keeps about ``backend`` from one check to the next,
    under ``key`` (``make()`` on first use; it lives as long as the backend).  For work a
    check may skip when it can prove it needless, e.g. the attributes a page had when its
    mappings were last checked: a page whose attributes lost no bit since then needs no
    walk of its other mappings.  Never a source of violations itself: a memo missing or
    behind only costs a walk.  Kept per backend object (two backends that compare equal
    have a memo each); a backend that cannot be weakly referenced (``__slots__`` without
    ``__weakref__``) gets a fresh ``make()`` every time: no memo, every walk made."""
    memos = _CHECK_MEMOS.get(id(backend))
    if memos is None:
        try:
            weakref.finalize(backend, _CHECK_MEMOS.pop, id(backend), None)
        except TypeError:
            return make()
        memos = _CHECK_MEMOS[id(backend)] = {}
    got = memos.get(key)
    if got is None:
        got = memos[key] = make()
    return got


InvariantCheck = Callable[[Backend, "Touched | None"], Iterable[str]]


@dataclass(frozen=True)
class Invariant:
    """A named check of a backend's internal consistency.

    ``check(backend, touched)`` yields one message per violation.  With a ``Touched`` it
    looks only at what the op touched (it runs after every op, so keep it O(touched));
    with ``None`` it audits the whole backend (checkpoints, end of stream).
    ``backends`` names the backends it applies to; ``("*",)`` means every backend (such a
    check may use only the contract above).
    """

    name: str
    check: InvariantCheck
    backends: tuple[str, ...] = ("*",)
    description: str = ""

    def applies_to(self, backend_name: str) -> bool:
        return "*" in self.backends or backend_name in self.backends


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: how to build it and how to describe it."""

    name: str
    factory: Callable[[PhysPool], Backend]
    geometry: Geometry
    description: str = ""
    #: run when no --backends is given (a parametrised variant may prefer False)
    default: bool = True
    plugin: str = ""  # filled in by the plugin host
    distribution: str = ""

    @classmethod
    def from_class(cls, backend_cls: type[Backend]) -> "BackendSpec":
        geometry = getattr(backend_cls, "geometry", None)
        if not isinstance(geometry, Geometry):
            raise TypeError(f"backend class {backend_cls.__name__} declares no Geometry")
        name = getattr(backend_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"backend class {backend_cls.__name__} has no name")
        return cls(name=name, factory=backend_cls, geometry=geometry,
                   description=getattr(backend_cls, "description", "") or "",
                   default=bool(getattr(backend_cls, "run_by_default", True)))


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered stream generator: ``generate(seed, n_ops, phys_pages) -> Stream``.

    ``options``: ``(name, help)`` pairs of the generator's own settings (``("trace-dir",
    "...")``); ``difftest fuzz`` and ``streams generate`` accept ``--NAME VALUE`` for
    each and pass it as the keyword ``NAME`` with ``-`` as ``_`` (a string).
    """

    name: str
    generate: Callable[..., object]
    description: str = ""
    plugin: str = ""
    distribution: str = ""
    options: tuple[tuple[str, str], ...] = ()


DEFAULT_MAX_PAGES_PER_MAPPING = 16  # pages an importer touches per mapping unless told otherwise


@dataclass(frozen=True)
class ImporterSpec:
    """A registered trace importer: ``convert(log_path, *, phys_pages, max_pages_per_mapping)
    -> Stream`` (``difftest import NAME LOG -o STREAM``)."""

    name: str
    convert: Callable[..., object]
    description: str = ""
    plugin: str = ""
    distribution: str = ""


@dataclass(frozen=True)
class ReporterSpec:
    """A registered report writer: ``write(report: dict, out: TextIO) -> None``."""

    name: str
    write: Callable[..., None]
    extension: str = ".txt"
    description: str = ""
    plugin: str = ""
    distribution: str = ""


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name."""

    backends: dict[str, BackendSpec] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)
    generators: dict[str, GeneratorSpec] = field(default_factory=dict)
    reporters: dict[str, ReporterSpec] = field(default_factory=dict)
    importers: dict[str, ImporterSpec] = field(default_factory=dict)
    known: list = field(default_factory=list)  # KnownDivergence entries: the default baseline

    def default_backends(self) -> list[str]:
        """What runs when the user names no backends."""
        return sorted(name for name, spec in self.backends.items() if spec.default)

    def invariants_for(self, backend_name: str) -> list[Invariant]:
        return [inv for inv in self.invariants if inv.applies_to(backend_name)]
