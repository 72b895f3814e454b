"""The campaign's coverage in the reports: features reached and health checks.

``coverage_blocks`` adds a *Coverage* section to the text and Markdown outlines (with one
``warning:`` line per health feature no stream reached); ``coverage_context`` gives the
HTML page its table.  Both only read the report's ``coverage`` object (docs/REPORT.md).
"""

from __future__ import annotations

from typing import Any

from difftest.features import warnings


def _coverage(report: dict[str, Any]) -> dict[str, Any] | None:
    cov = report.get("coverage")
    return cov if isinstance(cov, dict) else None


def coverage_blocks(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    cov = _coverage(report)
    if cov is None:
        return []
    blocks: list[tuple[Any, ...]] = [("heading", "Coverage"), ("para", summary(report, cov))]
    health = cov.get("health") or []
    if health:
        blocks.append(("table", ["feature", "what", "streams"],
                       [[h.get("feature"), h.get("what"), h.get("streams")] for h in health]))
    lines = [f"warning: {w}" for w in warnings(cov)]
    if lines:
        blocks.append(("lines", lines))
    return blocks


def summary(report: dict[str, Any], cov: dict[str, Any]) -> str:
    streams = report.get("streams") or 0
    text = f"{cov.get('distinct', 0):,} distinct features reached over {streams:,} stream(s)"
    if cov.get("mutants"):
        text += f"; {cov['mutants']:,} stream(s) were feedback mutants"
    return text


def coverage_context(report: dict[str, Any]) -> dict[str, Any] | None:
    """What the HTML page shows: the summary, the health rows, every feature's count."""
    cov = _coverage(report)
    if cov is None:
        return None
    streams = report.get("streams") or 0
    return {
        "summary": summary(report, cov),
        "health": [(h.get("feature"), h.get("what"), h.get("streams"), h.get("hint")) for h in cov.get("health") or []],
        "features": sorted((cov.get("features") or {}).items()),
        "streams": streams,
    }
