"""The baseline: divergences known and accepted, and matching signatures and bugs to them.

A baseline is a TOML file of ``[[known]]`` tables (``signature``, an ``fnmatch`` pattern, and
a ``reason``); the registry's ``difftest_register_known_divergences`` hooks give the default one.
``fuzz``, ``replay``, ``merge`` and the corpus judge what they found against it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Sequence

from difftest.divergence import KnownDivergence
from difftest.errors import BadInput


def load_baseline(path: str | os.PathLike[str]) -> list[KnownDivergence]:
    """Read a baseline TOML file: ``[[known]] signature = "..." reason = "..."``.

    An empty file means nothing is known."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{source}: not UTF-8 text") from None
    extra = sorted(set(data) - {"known"})
    if extra:
        raise BadInput(f"{source}: unexpected key {extra[0]!r} (expected [[known]] tables)")
    known = []
    for i, entry in enumerate(data.get("known", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
            raise BadInput(f"{source}: known entry {i} has no 'signature' string")
        if set(entry) - {"signature", "reason"}:
            raise BadInput(f"{source}: known entry {i} has unexpected key {sorted(set(entry) - {'signature', 'reason'})[0]!r}")
        known.append(KnownDivergence(entry["signature"], str(entry.get("reason", ""))))
    return known


def match_known(signature: str, known: Sequence[KnownDivergence]) -> KnownDivergence | None:
    for entry in known:
        if entry.matches(signature):
            return entry
    return None


def match_bug(head: str, members: Sequence[str], known: Sequence[KnownDivergence]) -> KnownDivergence | None:
    """The baseline entry that matches a bug: its head or any of its member signatures."""
    for sig in (head, *members):
        kd = match_known(sig, known)
        if kd is not None:
            return kd
    return None
