"""Test-only: ``bug-modloss`` with its bug fixed, registered under the same name by another
plugin module, as the next night's build of a backend would be (tests/test_bugs.py runs
nights with ``-p broken_backends`` and with ``-p fixed_backends`` on one corpus)."""

from __future__ import annotations

from difftest import hookimpl
from impls.arm32 import Arm32Refcount


class ModKeptOnRemove(Arm32Refcount):
    name = "bug-modloss"
    description = "test-only: bug-modloss, fixed (remove keeps MOD)"
    run_by_default = False


@hookimpl
def difftest_register_backends(register):
    register(ModKeptOnRemove)


@hookimpl
def difftest_register_invariants(register):
    from dataclasses import replace

    from impls.arm32 import INVARIANTS, REFCOUNT

    for inv in INVARIANTS:
        if inv.applies_to(REFCOUNT):
            register(replace(inv, backends=(ModKeptOnRemove.name,)))
