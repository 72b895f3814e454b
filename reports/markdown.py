"""``markdown``: GitHub-flavoured Markdown (tabulate ``github``), fit for a CI job summary
(``cat report.md >> "$GITHUB_STEP_SUMMARY"``, a GitLab/Gitea comment, a wiki page).

Untrusted text is escaped (``common.md``: no HTML, links, emphasis or table breaks get
through); ops, tracebacks and commands go into fenced code blocks, which are literal,
folded under ``<details>`` so that the summary stays short.
"""

from __future__ import annotations

import html
from typing import Any, TextIO

from reports import common
from reports.outline import outline


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from tabulate import tabulate

    return tabulate([[common.md(c) for c in row] for row in rows], headers=[common.md(h) for h in headers],
                    tablefmt="github", disable_numparse=True)


def render(report: dict[str, Any], run_dir: Any = None) -> str:
    parts: list[str] = []
    for block in outline(report, run_dir):
        kind = block[0]
        if kind == "title":
            parts.append(f"# {common.md(block[1])}")
        elif kind == "heading":
            parts.append(f"## {common.md(block[1])}")
        elif kind == "subheading":
            parts.append(f"### {common.md(block[1])}")
        elif kind == "para":
            parts.append(common.md(block[1]))
        elif kind == "lines":
            parts.append("\n".join(f"- {common.md(line)}" for line in block[1]))
        elif kind == "facts":
            parts.append(_table(["campaign", ""], [list(pair) for pair in block[1]]))
        elif kind == "table":
            parts.append(_table(block[1], block[2]))
        elif kind == "code":
            summary, lines = block[1], block[2]
            # Inside an HTML block Markdown escapes are not processed: escape as HTML.
            parts.append(f"<details><summary>{html.escape(common.one_line(summary))}</summary>\n\n"
                         f"{common.md_code_block(lines)}\n\n</details>")
        else:
            raise ValueError(f"unknown block {kind!r}")
    return "\n\n".join(parts) + "\n"


def write(report: dict[str, Any], out: TextIO, *, run_dir: Any = None, **_: Any) -> None:
    out.write(render(report, run_dir))
