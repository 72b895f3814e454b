"""The built-in report writers, registered through the plugin host exactly as a third
party's would be (entry point ``reports = "reports.builtin"`` in the ``difftest`` group).

Cheap to import: each format module imports its heavy libraries (Jinja2, matplotlib) only
when it writes.
"""

from __future__ import annotations

from difftest import ReporterSpec, hookimpl
from reports import html, jsonfmt, junit, markdown, text

FORMATS = (
    ReporterSpec("text", text.write, ".txt", "plain text tables for a terminal"),
    ReporterSpec("markdown", markdown.write, ".md", "GitHub-flavoured Markdown, for a CI job summary"),
    ReporterSpec("json", jsonfmt.write, ".json", "the difftest.report/1 document (docs/REPORT.md)"),
    ReporterSpec("junit", junit.write, ".xml", "JUnit XML: one testcase per signature"),
    ReporterSpec("html", html.write, ".html", "one self-contained offline HTML page with plots"),
)


@hookimpl
def difftest_register_reporters(register) -> None:
    for spec in FORMATS:
        register(spec)
