"""``json``: the ``difftest.report/1`` document itself (docs/REPORT.md), with its
``lifecycle`` when ``difftest report --compare`` added one, written as a campaign writes
``report.json`` (``difftest.campaign.report_text``: strict JSON, indented, its reproducers
one op a line and its lists of numbers on one line)."""

from __future__ import annotations

from typing import Any, TextIO


def render(report: dict[str, Any]) -> str:
    from difftest.campaign import report_text  # (imported when a report is written, not at plugin load)

    return report_text(report) + "\n"


def write(report: dict[str, Any], out: TextIO, **_: Any) -> None:
    out.write(render(report))
