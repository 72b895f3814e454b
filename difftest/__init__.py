"""pmap-difftest: differential testing of virtual-memory page-table managers (pmaps).

Everything a backend, generator or report plugin needs is importable from here
(docs/PLUGINS.md): the base classes and specs, the machine (``PhysPool``, ``Tag``,
``OutOfMemory``, the address ranges), the protection bits, the results of ``pmap_enter``
and ``pmap_access``, the access kinds, and ``KnownDivergence`` for a default baseline.

The names are imported when first used (PEP 562), so that ``import difftest`` costs
nothing: pytest imports ``difftest.pytest_plugin`` in every session of an environment where
pmap-difftest is installed, and that must not load the core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ("Backend", "BackendSpec", "GeneratorSpec", "Geometry", "ImporterSpec", "Invariant", "Level",
         "ReporterSpec", "Touched", "Translation", "needed_pt_frames"), "difftest.backend"),
    "KnownDivergence": "difftest.divergence",
    **dict.fromkeys(
        ("KERNEL_MAX", "KERNEL_MIN", "KERNEL_PMAP", "PAGE_SIZE", "USER_MAX", "USER_MIN", "OutOfMemory",
         "PhysPool", "Tag"), "difftest.machine"),
    **dict.fromkeys(
        ("ACCESS_KINDS", "ENOMEM", "FAULT", "OK", "PROT_ALL", "PROT_NONE", "PROT_R", "PROT_W", "PROT_X"),
        "difftest.ops"),
    "hookimpl": "difftest.plugins",
    "Stream": "difftest.streams",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'difftest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from difftest.backend import (  # noqa: F401
        Backend,
        BackendSpec,
        GeneratorSpec,
        Geometry,
        ImporterSpec,
        Invariant,
        Level,
        ReporterSpec,
        Touched,
        Translation,
        needed_pt_frames,
    )
    from difftest.divergence import KnownDivergence  # noqa: F401
    from difftest.machine import (  # noqa: F401
        KERNEL_MAX,
        KERNEL_MIN,
        KERNEL_PMAP,
        PAGE_SIZE,
        USER_MAX,
        USER_MIN,
        OutOfMemory,
        PhysPool,
        Tag,
    )
    from difftest.ops import (  # noqa: F401
        ACCESS_KINDS,
        ENOMEM,
        FAULT,
        OK,
        PROT_ALL,
        PROT_NONE,
        PROT_R,
        PROT_W,
        PROT_X,
    )
    from difftest.plugins import hookimpl  # noqa: F401
    from difftest.streams import Stream  # noqa: F401
