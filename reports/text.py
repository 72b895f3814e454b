"""``text``: the report for a terminal (tabulate ``simple``).

Untrusted text loses its control characters (no escape sequences reach the terminal) and
table cells are one line each.  The details of one signature are indented under it.
"""

from __future__ import annotations

from typing import Any, TextIO

from reports import common
from reports.outline import outline

CELL_WIDTH = 100


def _block(block: tuple[Any, ...]) -> str:
    from tabulate import tabulate

    kind = block[0]
    if kind == "title":
        text = common.one_line(block[1])
        return f"{text}\n{'=' * len(text)}"
    if kind == "heading":
        text = common.one_line(block[1])
        return f"{text}\n{'-' * len(text)}"
    if kind in ("subheading", "para"):
        return common.one_line(block[1])
    if kind == "lines":
        return "\n".join(common.one_line(line) for line in block[1])
    if kind == "facts":
        pairs = [(common.one_line(k), common.one_line(v)) for k, v in block[1]]
        width = max((len(k) for k, _ in pairs), default=0)
        return "\n".join(f"{k + ':':<{width + 1}}  {v}" for k, v in pairs)
    if kind == "table":
        headers, rows = block[1], block[2]
        cells = [[common.clip(common.one_line(c), CELL_WIDTH) for c in row] for row in rows]
        return tabulate(cells, headers=[common.one_line(h) for h in headers], tablefmt="simple",
                        disable_numparse=True)
    if kind == "code":
        summary, lines = block[1], block[2]
        return f"{common.one_line(summary)}:\n" + "\n".join("  " + common.clean(line) for line in lines)
    raise ValueError(f"unknown block {kind!r}")


def render(report: dict[str, Any], run_dir: Any = None) -> str:
    parts: list[str] = []
    detail: list[str] | None = None  # the blocks under the current subheading
    for block in outline(report, run_dir):
        text = _block(block)
        if block[0] == "subheading":
            detail = [text]
            parts.append("")  # filled in below
        elif detail is not None and block[0] not in ("heading", "title"):
            detail.append("\n".join("  " + line if line else line for line in text.splitlines()))
        else:
            detail = None
            parts.append(text)
        if detail is not None:
            parts[-1] = "\n".join(detail)
    return "\n\n".join(parts) + "\n"


def write(report: dict[str, Any], out: TextIO, *, run_dir: Any = None, **_: Any) -> None:
    out.write(render(report, run_dir))
