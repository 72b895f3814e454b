"""A test-only backend whose name and messages are hostile markup, registered as a plugin
exactly as a user's would be: every report format must show them as text.

Its name has no whitespace (the plugin host requires that) but is an HTML script element;
``pmap_protect`` raises with a message carrying HTML, XML CDATA's end, a terminal escape
sequence and a character XML 1.0 cannot hold.  It is arm32-refcount otherwise.
"""

from __future__ import annotations

from difftest import hookimpl
from impls.arm32 import Arm32Refcount

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_MESSAGE = "<img src=x onerror=alert(2)> & ]]> </failure> \x1b[31mred\x1b[0m \x00 $x$"


class HostileProtect(Arm32Refcount):
    name = HOSTILE_NAME
    description = "test-only: markup in the name, pmap_protect raises with markup"
    run_by_default = False

    def pmap_protect(self, pmap, sva, eva, prot):
        raise RuntimeError(HOSTILE_MESSAGE)


@hookimpl
def difftest_register_backends(register):
    register(HostileProtect)
