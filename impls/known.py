"""The built-in backends' known divergences (the default baseline), from baseline.toml.

Registered through the ``difftest_register_known_divergences`` hook like any plugin's.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files

from difftest import hookimpl
from difftest.divergence import KnownDivergence


def builtin_baseline() -> list[KnownDivergence]:
    data = tomllib.loads(files(__package__).joinpath("baseline.toml").read_text(encoding="utf-8"))
    return [KnownDivergence(entry["signature"], entry.get("reason", "")) for entry in data.get("known", [])]


@hookimpl
def difftest_register_known_divergences(register) -> None:
    for entry in builtin_baseline():
        register(entry)
