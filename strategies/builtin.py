"""Registers the built-in generators and importers through the plugin host, like a third party's."""

from __future__ import annotations

from difftest import GeneratorSpec, ImporterSpec, hookimpl
from strategies.pager import generate_pager
from strategies.seeded import generate, generate_pressure
from strategies.strace import convert as convert_strace
from strategies.trace import generate_trace


@hookimpl
def difftest_register_generators(register) -> None:
    register(
        GeneratorSpec(
            name="random",
            generate=generate,
            description="seeded random streams shaped for deep states: region edges, remaps, "
            "shared pages, wiring, boundary-crossing ranges, collect/page_protect, swarm op mix",
        )
    )
    register(
        GeneratorSpec(
            name="pressure",
            generate=generate_pressure,
            description="random streams all driven to the pool's edge: machine.free_frames leaves few "
            "frames for page tables, every enter canfail, fills until ENOMEM, then frees and exits",
        )
    )
    register(
        GeneratorSpec(
            name="pager",
            generate=generate_pager,
            description="PR 5666 How-To-Repeat: processes doing build-like work in a small "
            "machine, a pager revoking non-wired pages and collecting pmaps when memory runs low",
        )
    )
    register(
        GeneratorSpec(
            name="trace",
            generate=generate_trace,
            description="real workloads: the imported streams of --trace-dir, as recorded or as "
            "variants by seed (other machine sizes, a pager at work, process interleavings shifted)",
            options=(("trace-dir", "a directory of imported stream files (difftest import)"),),
        )
    )


@hookimpl
def difftest_register_importers(register) -> None:
    register(
        ImporterSpec(
            name="strace",
            convert=convert_strace,
            description="strace -f -e trace=memory,process,openat,close logs: processes as pmaps, "
            "fork copy-on-write, mmap/munmap/mprotect/brk, shared file pages, 64-bit addresses folded",
        )
    )
