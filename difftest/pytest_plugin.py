"""The conformance battery as a pytest plugin (entry point ``pytest11: difftest``).

``pytest --difftest-backend NAME`` adds one test per check of ``difftest check-backend``;
``pytest --difftest-corpus DIR`` one regression test per reproducer stream file
(``*.stream.json``) under DIR, a campaign's ``corpus/`` for instance: it passes when the
stream runs without a divergence, fails on a divergence nobody knows, and is an expected
failure (xfail) for a known one (the default baseline, the campaign's baseline, or a
capability the backend declares it lacks).  Without these options the plugin adds nothing.

pytest loads this module in every session of an environment where pmap-difftest is
installed, and rewrites the asserts of every module of the distribution it imports while
that session runs: so this module imports nothing from difftest until an option asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("difftest", "pmap-difftest conformance of pmap backends")
    group.addoption("--difftest-backend", action="append", default=[], metavar="NAME",
                    help="Add one test per difftest check-backend check of backend NAME (repeatable).")
    group.addoption("--difftest-reference", default=None, metavar="NAME",
                    help="The judge of the checks (default: alpha-ref).")
    group.addoption("--difftest-corpus", action="append", default=[], metavar="DIR",
                    help="Add one regression test per *.stream.json under DIR (repeatable).")
    group.addoption("--difftest-plugin", action="append", default=[], metavar="MODULE",
                    help="Load MODULE as a difftest plugin (as difftest -p MODULE).")
    group.addoption("--difftest-check-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="Seconds one check may run before it is a hang (default 10).")


def _wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("difftest_backend") or config.getoption("difftest_corpus"))


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _wanted(config):
        return
    from difftest.errors import DifftestError

    try:
        new: list[pytest.Item] = []
        for name in config.getoption("difftest_backend"):
            node = f"difftest-check[{name}]"
            new += BatteryCollector.from_parent(session, name=node, nodeid=node, backend=name).collect()
        for directory in config.getoption("difftest_corpus"):
            node = f"difftest-corpus[{directory}]"
            new += CorpusCollector.from_parent(session, name=node, nodeid=node, directory=directory).collect()
    except DifftestError as exc:  # an unknown backend, a bad corpus: one line, as the CLI says it
        raise pytest.UsageError(f"difftest: {exc}") from None
    items.extend(new)


def _host(config: pytest.Config) -> Any:
    """The plugin host, loaded once per session with ``--difftest-plugin`` modules."""
    host = getattr(config, "_difftest_host", None)
    if host is None:
        from difftest.plugins import PluginHost

        host = PluginHost()
        host.load(config.getoption("difftest_plugin"))
        config._difftest_host = host  # type: ignore[attr-defined]
    return host


class DifftestFailure(Exception):
    """A divergence: reported as its description, not as a traceback into difftest."""


class _Item(pytest.Item):
    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, DifftestFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


# -- the battery -----------------------------------------------------------------------------------------


class BatteryCollector(pytest.Collector):
    def __init__(self, *, backend: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from difftest.conformance import Conformance

        self.conformance = Conformance(_host(self.config).registry, backend,
                                       self.config.getoption("difftest_reference"),
                                       time_limit=self.config.getoption("difftest_check_timeout"))

    def collect(self) -> list[pytest.Item]:
        from difftest.conformance import CHECKS

        return [CheckItem.from_parent(self, name=check.name, check=check) for check in CHECKS]


class CheckItem(_Item):
    def __init__(self, *, check: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        from difftest.conformance import FAIL, XFAIL

        conf = self.parent.conformance  # type: ignore[attr-defined]
        row = conf.run(self.check)
        if row.outcome == XFAIL:
            pytest.xfail(f"{row.first.signature}: {row.reason}")
        if row.outcome == FAIL:
            raise DifftestFailure(_describe(row.first, row.reason, conf.stream(self.check)))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "difftest-check", None, f"{self.parent.name}::{self.name}"  # type: ignore[union-attr]


# -- a corpus of reproducers ---------------------------------------------------------------------------


class CorpusCollector(pytest.Collector):
    def __init__(self, *, directory: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from difftest.errors import BadInput

        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise BadInput(f"--difftest-corpus {directory}: not a directory")

    def collect(self) -> list[pytest.Item]:
        files = sorted(self.directory.rglob("*.stream.json"))
        return [StreamItem.from_parent(self, name=str(f.relative_to(self.directory)), path_=f) for f in files]

    def campaign(self) -> dict:
        """The campaign.json of the campaign this corpus belongs to, if there is one."""
        for d in (self.directory, *self.directory.parents[:2]):
            meta = d / "campaign.json"
            if meta.is_file():
                return json.loads(meta.read_text())
        return {}


class StreamItem(_Item):
    def __init__(self, *, path_: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream_path = path_

    def runtest(self) -> None:
        from difftest import streams
        from difftest.conformance import capabilities_of, expected_patterns
        from difftest.divergence import KnownDivergence
        from difftest.harness import Harness

        registry = _host(self.config).registry
        campaign = self.parent.campaign()  # type: ignore[attr-defined]
        config = campaign.get("config", {})
        names = list(self.config.getoption("difftest_backend")) or list(config.get("backends", ()))
        reference = self.config.getoption("difftest_reference") or config.get("reference")
        if reference and reference not in names:
            names.insert(0, reference)
        harness = Harness.from_registry(registry, names or None, reference)
        known = list(registry.known)
        known += [KnownDivergence(k["pattern"], k.get("reason", "")) for k in campaign.get("known", ())
                  if isinstance(k, dict) and isinstance(k.get("pattern"), str)]
        for spec in harness.specs:
            known += expected_patterns(spec.name, capabilities_of(spec))
        stream = streams.load(self.stream_path)
        run = harness.run(stream, time_limit=self.config.getoption("difftest_check_timeout"))
        unknown = [d for d in run.divergences if not any(k.matches(d.signature) for k in known)]
        if unknown:
            raise DifftestFailure(_describe(unknown[0], unknown[0].message, stream))
        if run.divergences:
            d = run.divergences[0]
            reason = next(k.reason for k in known if k.matches(d.signature))
            pytest.xfail(f"known: {d.signature}: {reason}")

    def reportinfo(self) -> tuple[str, int | None, str]:
        return str(self.stream_path), None, f"{self.parent.name}::{self.name}"  # type: ignore[union-attr]


def _describe(first: Any, reason: str, stream: Any) -> str:
    if first is None:
        return reason
    lines = [f"{first.signature}", f"  first failing op {first.op_index}: {first.op}", f"  {first.message}"]
    if first.traceback:
        lines.append("  " + first.traceback.rstrip().splitlines()[-1])
    lines.append("  the stream, up to that op:")
    lines += [f"    {i}: {line}" for i, line in _ops_text(stream, first.op_index)]
    return "\n".join(lines)


def _ops_text(stream: Any, upto: int) -> Iterator[tuple[int, str]]:
    from difftest.ops import describe

    for i, op in enumerate(stream.ops[: upto + 1] if upto >= 0 else stream.ops):
        yield i, describe(op)
