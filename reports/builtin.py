"""The built-in report writers, registered through the plugin host exactly as a third
party's would be (entry point ``reports = "reports.builtin"`` in the ``difftest`` group).

Cheap to import: a format's module is imported when it first writes (every campaign and
each of its worker processes loads this plugin; few write a report format), and it
imports its heavy libraries (Jinja2, matplotlib) only then too.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, TextIO

from difftest import ReporterSpec, hookimpl


def _deferred(module: str) -> Callable[..., None]:
    """``reports.<module>.write``, imported at its first call (every writer takes the
    report, the output and keyword context it may ignore)."""
    def write(report: dict[str, Any], out: TextIO, **context: Any) -> None:
        importlib.import_module(f"reports.{module}").write(report, out, **context)

    return write


FORMATS = (
    ReporterSpec("text", _deferred("text"), ".txt", "plain text tables for a terminal"),
    ReporterSpec("markdown", _deferred("markdown"), ".md", "GitHub-flavoured Markdown, for a CI job summary"),
    ReporterSpec("json", _deferred("jsonfmt"), ".json", "the difftest.report/1 document (docs/REPORT.md)"),
    ReporterSpec("junit", _deferred("junit"), ".xml", "JUnit XML: one testcase per signature"),
    ReporterSpec("html", _deferred("html"), ".html", "one self-contained offline HTML page with plots"),
)


@hookimpl
def difftest_register_reporters(register) -> None:
    for spec in FORMATS:
        register(spec)
