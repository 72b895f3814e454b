"""``json``: the ``difftest.report/1`` document itself (docs/REPORT.md), with its
``lifecycle`` when ``difftest report --compare`` added one.  ``allow_nan=False``: the output
is strict JSON that any parser reads."""

from __future__ import annotations

import json
from typing import Any, TextIO


def render(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write(report: dict[str, Any], out: TextIO, **_: Any) -> None:
    out.write(render(report))
