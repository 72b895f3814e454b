"""Registers the built-in seeded generators through the plugin host, like a third party's."""

from __future__ import annotations

from difftest import GeneratorSpec, hookimpl
from strategies.pager import generate_pager
from strategies.seeded import generate, generate_pressure


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
