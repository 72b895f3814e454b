"""Errors the CLI turns into one line and a documented exit code (see README, STACK.md)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIVERGENCES = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_NOTHING = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, CI runners, Slurm): handled like Ctrl-C (what is found is
    kept, the campaign can be resumed), exit 143."""

QUOTE_LIMIT = 40  # characters of a bad value quoted in an error line


def short(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error line: at most ``limit`` characters of it, then "..."
    (a bad value may be a megabyte long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class DifftestError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = EXIT_INTERNAL


class BadInput(DifftestError):
    """A bad file, flag or value given by the user (exit 2)."""

    exit_code = EXIT_USAGE


class StreamError(BadInput):
    """A stream file or object that is not a valid ``difftest.stream/1``.

    ``index`` and ``field`` name the offending op and field when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        op: str | None = None,
        field: str | None = None,
        source: str | None = None,
    ) -> None:
        self.index = index
        self.op = op
        self.field = field
        self.source = source
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.index is not None:
            where.append(f"op {self.index}" + (f" ({self.op})" if self.op else ""))
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return ": ".join(where + [self.detail])

    def with_source(self, source: str) -> "StreamError":
        return StreamError(
            self.detail, index=self.index, op=self.op, field=self.field, source=source
        )


class PluginError(DifftestError):
    """A plugin failed to import, registered a name twice, or has a malformed hook (exit 3)."""

    exit_code = EXIT_INTERNAL


class NothingToRun(DifftestError):
    exit_code = EXIT_NOTHING
