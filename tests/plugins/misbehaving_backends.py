"""Test-only backends that misbehave the way an unattended campaign must survive, registered
as a plugin exactly as a third party's would be.

Each is arm32-refcount (correct) but for one thing, done in ``pmap_protect`` and
``pmap_page_protect`` (or ``pmap_remove``, or every ``pmap_enter``), so that a short random
stream reaches it: leaving
the process (``sys.exit``, ``os._exit``), raising what is not an ``Exception``
(``KeyboardInterrupt``), ``OutOfMemory`` from an op that cannot fail, sleeping for ever (with
SIGALRM honoured, or ignored), and printing on stdout.  The ``mis-create-*`` ones do it in
``pmap_create``, where ``check-backend`` first calls a backend.  None runs by default.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from difftest import hookimpl
from difftest.machine import OutOfMemory
from impls.arm32 import Arm32Refcount


class _InProtect(Arm32Refcount):
    """Misbehaves (``misbehave``) in both protect operations."""

    run_by_default = False

    def misbehave(self):
        raise NotImplementedError

    def pmap_protect(self, pmap, sva, eva, prot):
        self.misbehave()

    def pmap_page_protect(self, pa, prot):
        self.misbehave()


class ExitsInProtect(_InProtect):
    name = "mis-exit"
    description = "test-only: pmap_protect calls sys.exit(0)"
    run_by_default = False

    def misbehave(self):
        sys.exit(0)


class InterruptsInProtect(_InProtect):
    name = "mis-kbint"
    description = "test-only: pmap_protect raises KeyboardInterrupt"
    run_by_default = False

    def misbehave(self):
        raise KeyboardInterrupt


class OutOfMemoryInRemove(Arm32Refcount):
    name = "mis-oom-remove"
    description = "test-only: pmap_remove raises OutOfMemory (as pool.alloc would)"
    run_by_default = False

    def pmap_remove(self, pmap, sva, eva):
        raise OutOfMemory("no frame for a demotion")


class SleepsInProtect(_InProtect):
    name = "mis-sleep"
    description = "test-only: pmap_protect sleeps for ever"
    run_by_default = False

    def misbehave(self):
        while True:
            time.sleep(3600)


class IgnoresAlarmInProtect(_InProtect):
    name = "mis-noalarm"
    description = "test-only: pmap_protect ignores SIGALRM, then sleeps for ever"
    run_by_default = False

    def misbehave(self):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            time.sleep(3600)


class PrintsInEnter(Arm32Refcount):
    name = "mis-print"
    description = "test-only: pmap_enter prints on stdout (and is right otherwise)"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        print(f"mis-print: enter {va:#x}")
        return super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)


class EnterReturnsNone(Arm32Refcount):
    name = "mis-none-enter"
    description = "test-only: pmap_enter maps, then returns None instead of a result"
    run_by_default = False

    def pmap_enter(self, pmap, va, pa, prot, access, wired, canfail):
        super().pmap_enter(pmap, va, pa, prot, access, wired, canfail)
        return None


class HardExitInProtect(_InProtect):
    name = "mis-hardexit"
    description = "test-only: pmap_protect calls os._exit(0) (the worker dies mid-stream)"
    run_by_default = False

    def misbehave(self):
        os._exit(0)


class _InCreate(Arm32Refcount):
    """Misbehaves (``misbehave``) in ``pmap_create``: at bootstrap, for ``check-backend``."""

    run_by_default = False

    def pmap_create(self, pmap):
        self.misbehave()


def _raise(exc):
    raise exc


def _in_create(name, what, misbehave):
    return type(name, (_InCreate,), {"name": name, "description": f"test-only: pmap_create {what}",
                                     "misbehave": lambda self: misbehave()})


IN_CREATE = (
    _in_create("mis-create-exit", "calls sys.exit(3)", lambda: sys.exit(3)),
    _in_create("mis-create-kbint", "raises KeyboardInterrupt", lambda: _raise(KeyboardInterrupt)),
    _in_create("mis-create-hardexit", "calls os._exit(0)", lambda: os._exit(0)),
)


@hookimpl
def difftest_register_backends(register):
    for cls in (ExitsInProtect, InterruptsInProtect, OutOfMemoryInRemove, SleepsInProtect,
                IgnoresAlarmInProtect, PrintsInEnter, HardExitInProtect, EnterReturnsNone, *IN_CREATE):
        register(cls)
