"""Telling a real Ctrl-C from a plugin that raises ``KeyboardInterrupt`` (or ``SystemExit``).

A backend is third-party code run unattended: whatever it raises, ``BaseException``
included, is that backend's ``crash`` and the campaign goes on.  Only two things raised
inside a backend call are not the backend's: the harness's own ``StreamTimeout``, and the
``KeyboardInterrupt`` of a real SIGINT sent to the process.  ``install()`` puts a SIGINT
handler that notes the signal before raising, so ``plugin_fault`` can tell the two apart.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_received = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt


def install() -> None:
    """Note real SIGINTs from now on (main thread only; a no-op elsewhere).  A SIGINT that
    was ignored (``SIG_IGN``, as for background jobs) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGINT, _on_sigint)


def received() -> bool:
    """A real SIGINT has reached this process."""
    return _received


def plugin_fault(exc: BaseException, own: tuple[type[BaseException], ...] = ()) -> bool:
    """``exc``, raised inside a plugin's code, is the plugin's fault: not one of the
    caller's ``own`` control-flow exceptions, and not the interrupt of a real SIGINT."""
    if own and isinstance(exc, own):
        return False
    if isinstance(exc, KeyboardInterrupt) and _received:
        return False
    return True
