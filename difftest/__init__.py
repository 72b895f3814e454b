"""pmap-difftest: differential testing of virtual-memory page-table managers (pmaps).

Everything a backend, generator or report plugin needs is importable from here
(docs/PLUGINS.md): the base classes and specs, the machine (``PhysPool``, ``Tag``,
``OutOfMemory``, the address ranges), the protection bits, the results of ``pmap_enter``
and ``pmap_access``, the access kinds, and ``KnownDivergence`` for a default baseline.
"""

from difftest.backend import (
    Backend,
    BackendSpec,
    GeneratorSpec,
    Geometry,
    Invariant,
    Level,
    ReporterSpec,
    Touched,
    Translation,
    needed_pt_frames,
)
from difftest.divergence import KnownDivergence
from difftest.machine import (
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
from difftest.ops import (
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
from difftest.plugins import hookimpl
from difftest.streams import Stream

__version__ = "0.1.0"

__all__ = [
    "ACCESS_KINDS",
    "Backend",
    "BackendSpec",
    "ENOMEM",
    "FAULT",
    "GeneratorSpec",
    "Geometry",
    "Invariant",
    "KERNEL_MAX",
    "KERNEL_MIN",
    "KERNEL_PMAP",
    "KnownDivergence",
    "Level",
    "OK",
    "OutOfMemory",
    "PAGE_SIZE",
    "PROT_ALL",
    "PROT_NONE",
    "PROT_R",
    "PROT_W",
    "PROT_X",
    "PhysPool",
    "ReporterSpec",
    "Stream",
    "Tag",
    "Touched",
    "Translation",
    "USER_MAX",
    "USER_MIN",
    "hookimpl",
    "needed_pt_frames",
    "__version__",
]
