"""Test-only: ``bug-modloss`` and ``bug-wiredcount`` with their bugs fixed, registered under
the same names by another plugin module, as the next night's build of a backend would be
(tests/test_bugs.py and tests/test_corpus_shards.py run nights with ``-p broken_backends``
and with ``-p fixed_backends`` on one corpus)."""

from __future__ import annotations

from broken_backends import register_refcount_invariants
from difftest import hookimpl
from impls.arm32 import Arm32Refcount


class ModKeptOnRemove(Arm32Refcount):
    name = "bug-modloss"
    description = "test-only: bug-modloss, fixed (remove keeps MOD)"
    run_by_default = False


class UnwireDropsCount(Arm32Refcount):
    name = "bug-wiredcount"
    description = "test-only: bug-wiredcount, fixed (unwire decrements the wired count)"
    run_by_default = False


FIXED = (ModKeptOnRemove, UnwireDropsCount)


@hookimpl
def difftest_register_backends(register):
    for cls in FIXED:
        register(cls)


@hookimpl
def difftest_register_invariants(register):
    register_refcount_invariants(register, FIXED)
