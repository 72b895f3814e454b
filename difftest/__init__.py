"""pmap-difftest: differential testing of virtual-memory page-table managers (pmaps).

The public API for backend and generator authors is re-exported here.
"""

from difftest.backend import (
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
from difftest.machine import OutOfMemory, PhysPool, Tag
from difftest.plugins import hookimpl
from difftest.streams import Stream

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendSpec",
    "GeneratorSpec",
    "Geometry",
    "ImporterSpec",
    "Invariant",
    "Level",
    "OutOfMemory",
    "PhysPool",
    "ReporterSpec",
    "Stream",
    "Tag",
    "Touched",
    "Translation",
    "hookimpl",
    "needed_pt_frames",
    "__version__",
]
