"""Test-only: a night after ``fixed_backends`` (tests/test_corpus_shards.py): ``bug-modloss``
still fixed, ``bug-wiredcount`` broken again, ``bug-wrongpa`` and ``bug-two`` broken, each
under its usual name, so that one campaign on a corpus meets every status at once."""

from __future__ import annotations

from broken_backends import TwoBugs, UnwireKeepsCount, WrongPaOnReplace, register_refcount_invariants
from difftest import hookimpl
from fixed_backends import ModKeptOnRemove

MIXED = (ModKeptOnRemove, UnwireKeepsCount, WrongPaOnReplace, TwoBugs)


@hookimpl
def difftest_register_backends(register):
    for cls in MIXED:
        register(cls)


@hookimpl
def difftest_register_invariants(register):
    register_refcount_invariants(register, MIXED)
