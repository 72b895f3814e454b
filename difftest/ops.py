"""The operations of a stream: the pmap(9) interface plus what the MMU does (MODEL.md §3).

One frozen value type per op.  Protections are small ints (``PROT_R | PROT_W``) on the hot
path and strings (``"rw"``) in files; ``prot_str`` and ``parse_prot`` convert.
Each class lists its fields with a *field kind* in ``FIELDS``, which the stream loader,
the writer and the validator share.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Union

PROT_NONE = 0
PROT_R = 1
PROT_W = 2
PROT_X = 4
PROT_ALL = PROT_R | PROT_W | PROT_X

_PROT_LETTERS = ((PROT_R, "r"), (PROT_W, "w"), (PROT_X, "x"))


def prot_str(prot: int) -> str:
    """``PROT_R | PROT_W`` -> ``"rw"`` (always in r, w, x order)."""
    return "".join(letter for bit, letter in _PROT_LETTERS if prot & bit)


def parse_prot(text: str) -> int:
    """``"rw"`` -> ``PROT_R | PROT_W``; raise ValueError on anything but a subset of rwx."""
    prot = 0
    for ch in text:
        bit = {"r": PROT_R, "w": PROT_W, "x": PROT_X}.get(ch)
        if bit is None or prot & bit:
            raise ValueError(f"{text[:40]!r} is not a subset of 'rwx'")
        prot |= bit
    return prot


# Field kinds, shared by loader, writer and validator.
F_PMAP = "pmap"  # int pmap id
F_VA = "va"  # page-aligned virtual address, hex in files
F_PA = "pa"  # page-aligned physical address, hex in files
F_SIZE = "size"  # page-multiple byte count, hex in files
F_PROT = "prot"  # subset of rwx
F_ACCESS = "access"  # subset of rwx, within the op's prot
F_KIND = "kind"  # exactly one of r, w, x
F_BOOL = "bool"


@dataclass(frozen=True, slots=True)
class Create:
    """pmap_create(): the new pmap gets the next unused id."""

    name: ClassVar[str] = "create"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()


@dataclass(frozen=True, slots=True)
class Reference:
    name: ClassVar[str] = "reference"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP),)
    pmap: int


@dataclass(frozen=True, slots=True)
class Destroy:
    name: ClassVar[str] = "destroy"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP),)
    pmap: int


@dataclass(frozen=True, slots=True)
class Enter:
    name: ClassVar[str] = "enter"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pmap", F_PMAP),
        ("va", F_VA),
        ("pa", F_PA),
        ("prot", F_PROT),
        ("access", F_ACCESS),
        ("wired", F_BOOL),
        ("canfail", F_BOOL),
    )
    pmap: int
    va: int
    pa: int
    prot: int
    access: int = PROT_NONE
    wired: bool = False
    canfail: bool = False


@dataclass(frozen=True, slots=True)
class Remove:
    name: ClassVar[str] = "remove"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP), ("sva", F_VA), ("eva", F_VA))
    pmap: int
    sva: int
    eva: int


@dataclass(frozen=True, slots=True)
class Protect:
    name: ClassVar[str] = "protect"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pmap", F_PMAP),
        ("sva", F_VA),
        ("eva", F_VA),
        ("prot", F_PROT),
    )
    pmap: int
    sva: int
    eva: int
    prot: int


@dataclass(frozen=True, slots=True)
class Unwire:
    name: ClassVar[str] = "unwire"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP), ("va", F_VA))
    pmap: int
    va: int


@dataclass(frozen=True, slots=True)
class Extract:
    name: ClassVar[str] = "extract"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP), ("va", F_VA))
    pmap: int
    va: int


@dataclass(frozen=True, slots=True)
class KEnter:
    """pmap_kenter_pa(): kernel pmap only, unmanaged, always wired, no REF/MOD."""

    name: ClassVar[str] = "kenter"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("va", F_VA), ("pa", F_PA), ("prot", F_PROT))
    va: int
    pa: int
    prot: int


@dataclass(frozen=True, slots=True)
class KRemove:
    name: ClassVar[str] = "kremove"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("va", F_VA), ("size", F_SIZE))
    va: int
    size: int


@dataclass(frozen=True, slots=True)
class PageProtect:
    name: ClassVar[str] = "page_protect"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pa", F_PA), ("prot", F_PROT))
    pa: int
    prot: int


@dataclass(frozen=True, slots=True)
class ClearModify:
    name: ClassVar[str] = "clear_modify"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pa", F_PA),)
    pa: int


@dataclass(frozen=True, slots=True)
class ClearReference:
    name: ClassVar[str] = "clear_reference"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pa", F_PA),)
    pa: int


@dataclass(frozen=True, slots=True)
class IsModified:
    name: ClassVar[str] = "is_modified"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pa", F_PA),)
    pa: int


@dataclass(frozen=True, slots=True)
class IsReferenced:
    name: ClassVar[str] = "is_referenced"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pa", F_PA),)
    pa: int


@dataclass(frozen=True, slots=True)
class Collect:
    name: ClassVar[str] = "collect"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP),)
    pmap: int


@dataclass(frozen=True, slots=True)
class Access:
    """What the MMU does for a load (r), store (w) or fetch (x), after the pmap's fix-up."""

    name: ClassVar[str] = "access"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP), ("va", F_VA), ("kind", F_KIND))
    pmap: int
    va: int
    kind: str


@dataclass(frozen=True, slots=True)
class Update:
    name: ClassVar[str] = "update"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("pmap", F_PMAP),)
    pmap: int


Op = Union[
    Create,
    Reference,
    Destroy,
    Enter,
    Remove,
    Protect,
    Unwire,
    Extract,
    KEnter,
    KRemove,
    PageProtect,
    ClearModify,
    ClearReference,
    IsModified,
    IsReferenced,
    Collect,
    Access,
    Update,
]

OP_TYPES: dict[str, type] = {
    cls.name: cls
    for cls in (
        Create,
        Reference,
        Destroy,
        Enter,
        Remove,
        Protect,
        Unwire,
        Extract,
        KEnter,
        KRemove,
        PageProtect,
        ClearModify,
        ClearReference,
        IsModified,
        IsReferenced,
        Collect,
        Access,
        Update,
    )
}

# Results an op can return (besides None, a PA int or a bool).  One spelling, upper case
# like the errno name: ``pmap_enter`` returns OK or ENOMEM, ``pmap_access`` OK or FAULT.
OK = "OK"
ENOMEM = "ENOMEM"
FAULT = "FAULT"
ACCESS_OK = OK  # the names of 0.1, kept for imports
ACCESS_FAULT = FAULT

#: What ``pmap_access`` may be asked to do: a load, a store, an instruction fetch.
ACCESS_KINDS = ("r", "w", "x")

# pmap_access returned "ok" / "fault" in 0.1.  Accepted (and normalised where the harness
# calls the backend) until 0.3; docs/PLUGINS.md says so.
_LEGACY_RESULTS = {"ok": OK, "fault": FAULT}


def normalise_result(result: object) -> object:
    """A backend's result in the current spelling (``"ok"`` -> ``OK``, ``"fault"`` -> ``FAULT``)."""
    return _LEGACY_RESULTS.get(result, result) if isinstance(result, str) else result


def op_pmap(op: Op) -> int | None:
    """The pmap an op names (0 for kernel-only ops, None for page-wide ones)."""
    if isinstance(op, (KEnter, KRemove)):
        return 0
    return getattr(op, "pmap", None)


def describe(op: Op) -> str:
    """One-line human form: ``enter(1, va=0x00400000, pa=0x00200000, prot=rw, wired)``."""
    parts: list[str] = []
    for field, kind in op.FIELDS:
        value = getattr(op, field)
        if kind == F_PMAP:
            parts.append(str(value))
        elif kind in (F_VA, F_PA, F_SIZE):
            parts.append(f"{field}={value:#010x}")
        elif kind in (F_PROT, F_ACCESS):
            if kind == F_ACCESS and not value:
                continue
            parts.append(f"{field}={prot_str(value) or '-'}")
        elif kind == F_BOOL:
            if value:
                parts.append(field)
        else:
            parts.append(f"{field}={value}")
    return f"{op.name}({', '.join(parts)})"


def maker(cls: type) -> Callable[..., Any]:
    """A constructor of op class ``cls`` taking every field positionally, for generators that
    build many ops: the same value as ``cls(...)`` (equal, same hash, repr and pickle, still
    frozen) at half the cost.  A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, which looks the name up every time; this sets the slots
    through their descriptors, bound once."""
    names = [f.name for f in fields(cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        scope["_set_" + name] = cls.__dict__[name].__set__
    body = "".join(f"    _set_{name}(op, {name})\n" for name in names)
    exec(f"def make({', '.join(names)}):\n    op = _new(_cls)\n{body}    return op\n", scope)
    make = scope["make"]
    make.__name__ = make.__qualname__ = f"make_{cls.__name__}"
    make.__module__ = __name__
    return make
