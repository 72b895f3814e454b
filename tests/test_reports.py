"""Report writers (reports/) and ``difftest report`` on the output of real campaigns.

Three small campaigns run once for the module, in parallel child processes:

* ``main``: the built-ins, ``bug-modloss`` (new divergences) and a backend named
  ``<script>alert(1)</script>`` whose exception message is markup (tests/plugins/
  hostile_backends.py), with the default baseline (PR 5666 known) and ``--report`` for
  every format (the writers called by ``difftest fuzz`` itself, without a registry);
* ``prev`` and ``now``: the same seed and an empty baseline, with ``bug-modloss`` in
  ``prev`` and ``bug-wrongpa`` in ``now``: comparing them gives one signature fixed, one
  new and the leak still open; comparing ``prev`` with ``now`` saved with its lifecycle
  gives a regression.

Then every format is rendered by ``difftest report`` (child processes, in parallel) and
checked: the JSON against docs/REPORT.md both ways, the JUnit parsed back, Markdown and
text, the HTML parsed and opened in headless Chromium, the hostile name escaped in each.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cliutil import assert_one_line_error, clean_env
from reportdocs import check_against_docs, documented_fields
from difftest.lifecycle import compare

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))
from hostile_backends import HOSTILE_NAME  # noqa: E402

# ``difftest`` with the report command (imported here until difftest/cli.py imports it).
SCRIPT = ("import sys; sys.argv[0] = 'difftest'; import difftest.cli_report; "
          "from difftest.cli import run; run()")
LEAK = "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
LEAK_HEAD = "resource:arm32-leaky:*:pt_frames:pt-frames-held>needed"
MODLOSS = "attribute:bug-modloss:remove:modified:mod-lost"
MODLOSS_HEAD = "attribute:bug-modloss:*:modified:mod-lost"
WRONGPA = "translation:bug-wrongpa:enter:pa:pa-mismatch"
HOSTILE_SIG = f"crash:{HOSTILE_NAME}:protect:exception:RuntimeError"
FORMATS = ("text", "markdown", "json", "junit", "html")
EXT = {"text": ".txt", "markdown": ".md", "json": ".json", "junit": ".xml", "html": ".html"}


def _popen(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=cwd, env=clean_env([PLUGINS]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: dict[str, subprocess.Popen], timeout: float = 120) -> dict[str, subprocess.CompletedProcess]:
    done = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=timeout)
        done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def difftest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _finish({"one": _popen(*args, cwd=cwd)})["one"]


class Runs:
    """Paths and outputs of the module's campaigns and renders."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    base = tmp_path_factory.mktemp("reports")
    (base / "empty.toml").write_text("")
    r = Runs()
    r.base = base
    r.main, r.prev, r.now = base / "main", base / "prev", base / "now"
    common = ["--workers", "1", "--shrink-budget", "2", "--no-progress"]
    fuzz = _finish({
        "main": _popen("-p", "hostile_backends", "-p", "broken_backends", "fuzz",
                       "--backends", f"alpha-ref,arm32-leaky,arm32-refcount,bug-modloss,{HOSTILE_NAME}",
                       "--streams", "3", "--ops-per-stream", "400", "--seed", "5", "--out", str(r.main),
                       *[a for f in FORMATS for a in ("--report", f)], *common, cwd=base),
        "prev": _popen("-p", "broken_backends", "fuzz", "--backends", "alpha-ref,arm32-leaky,bug-modloss",
                       "--baseline", str(base / "empty.toml"), "--streams", "2", "--ops-per-stream", "300",
                       "--seed", "7", "--out", str(r.prev), *common, cwd=base),
        "now": _popen("-p", "broken_backends", "fuzz", "--backends", "alpha-ref,arm32-leaky,bug-wrongpa",
                      "--baseline", str(base / "empty.toml"), "--streams", "2", "--ops-per-stream", "300",
                      "--seed", "7", "--out", str(r.now), *common, cwd=base),
    })
    for name, proc in fuzz.items():
        assert proc.returncode == 1, f"{name}: {proc.stdout}\n{proc.stderr}"  # each finds new divergences
    r.report = json.loads((r.main / "report.json").read_text())
    reproducer = next(e for e in r.report["divergences"] if e["signature"] == MODLOSS)["reproducer_path"]

    out = base / "out"
    out.mkdir()
    jobs = {f"main.{f}": ("-p", "hostile_backends", "-p", "broken_backends", "report", str(r.main),
                          "--format", f, "-o", str(out / f"main{EXT[f]}")) for f in FORMATS}
    jobs["main.stdout"] = ("report", str(r.main))
    jobs.update({f"cmp.{f}": ("report", str(r.now), "--compare", str(r.prev), "--format", f,
                              "-o", str(out / f"cmp{EXT[f]}")) for f in FORMATS})
    jobs["merge"] = ("merge", str(r.main), "--out", str(base / "merged"))
    jobs["replay"] = ("-p", "hostile_backends", "-p", "broken_backends", "replay", "--json", "--backends",
                      ",".join(r.report["backends"]), str(r.main / reproducer))
    r.rendered = _finish({name: _popen(*args, cwd=base) for name, args in jobs.items()})
    for name, proc in r.rendered.items():
        expected = 1 if name in ("replay", "merge") else 0  # they exit 1 for new divergences
        assert proc.returncode == expected, f"{name}: {proc.stdout[-2000:]}\n{proc.stderr}"
    r.out = out

    # A chain of nightlies: `now` saved with its lifecycle, then `prev` compared with it.
    r.saved = base / "now-saved"
    shutil.copytree(r.now, r.saved)
    shutil.copy(out / "cmp.json", r.saved / "report.json")
    r.chained = _finish({
        f: _popen("report", str(r.prev), "--compare", str(r.saved), "--format", f, "-o", str(out / f"chain{EXT[f]}"),
                  cwd=base) for f in ("json", "junit")
    } | {"merged.text": _popen("report", str(base / "merged"), cwd=base)})
    for name, proc in r.chained.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    return r


def text_of(runs: Runs, name: str) -> str:
    return (runs.out / name).read_text(encoding="utf-8")


# -- docs/REPORT.md: every documented field exists, no undocumented field appears ------------------


def test_the_docs_table_parses():
    fields = documented_fields()
    assert len(fields) > 80 and {"format", "divergences[].first.observations", "lifecycle.fixed[].since"} <= set(fields)


def test_fuzz_report_matches_the_docs(runs):
    assert check_against_docs(runs.report, {"always", "campaign", "fuzz"}) == []


def test_json_format_is_the_document_itself(runs):
    assert json.loads(text_of(runs, "main.json")) == runs.report


def test_merged_and_replayed_reports_match_the_docs(runs):
    merged = json.loads((runs.base / "merged" / "report.json").read_text())
    assert "timing" not in merged
    assert check_against_docs(merged, {"always", "campaign"}) == []
    replayed = json.loads(runs.rendered["replay"].stdout)
    assert check_against_docs(replayed, {"always", "replay"}) == []


def test_compared_report_matches_the_docs(runs):
    doc = json.loads(text_of(runs, "cmp.json"))
    assert check_against_docs(doc, {"always", "campaign", "fuzz", "compare"}) == []


def test_the_doc_check_sees_undocumented_and_missing_fields(runs):
    doc = json.loads(json.dumps(runs.report))
    doc["surprise"] = 1
    doc["campaign"]["extra"] = 2
    del doc["divergences"][0]["first"]["message"]
    del doc["ops"]
    problems = check_against_docs(doc, {"always", "campaign", "fuzz"})
    assert "undocumented field surprise" in problems and "undocumented field campaign.extra" in problems
    assert "documented field ops (always) missing" in problems
    assert "documented field divergences[].first.message (always) missing" in problems


# -- text and markdown ------------------------------------------------------------------------------


def test_text_report_has_every_signature(runs):
    text = runs.rendered["main.stdout"].stdout
    assert text == text_of(runs, "main.txt")
    for e in runs.report["divergences"]:
        assert e["signature"] in text
    assert "seed:" in text and "5" in text and "difftest" in text and "replay" in text
    assert "\x1b" not in text and "\x00" not in text
    assert "\\x1b[31mred" in text  # shown, not obeyed


def _unescape_md(text: str) -> str:
    return re.sub(r"\\([\\`*_\[\]<>|~&#+\-=.)])", r"\1", text)


def _outside_code(markdown: str) -> str:
    return re.sub(r"^(`{3,})[^\n]*\n.*?^\1\s*$", "", markdown, flags=re.S | re.M)


def test_markdown_report_has_every_signature_escaped(runs):
    md = text_of(runs, "main.md")
    plain = _unescape_md(md)
    for e in runs.report["divergences"]:
        assert e["signature"] in plain
    assert md.startswith("# pmap-difftest report")
    assert "| status" in md and "|---" in md  # a GitHub table
    prose = _outside_code(md)
    assert not re.search(r"(?<!\\)</?(script|img|failure)", prose) and "\x1b" not in md
    assert "\\<script\\>alert(1)\\</script\\>" in prose
    # the replay command and the ops are code: literal, so the name is shown as it is
    assert f"'alpha-ref,arm32-leaky,arm32-refcount,bug-modloss,{HOSTILE_NAME}'" in md


# -- junit --------------------------------------------------------------------------------------------


def test_junit_report(runs):
    root = ET.parse(runs.out / "main.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    bugs = runs.report["bugs"]
    backends = runs.report["backends"]
    # one testcase per bug, then one per backend (a clean run is never an empty file)
    assert len(cases) == len(bugs) + len(backends) == int(suite.get("tests")) == int(root.get("tests"))
    assert [c.get("name") for c in cases[len(bugs):]] == backends
    failing = [b for b in bugs if b["status"] in ("new", "open", "regressed")]
    assert int(suite.get("failures")) == len(failing) == runs.report["summary"]["failing_bugs"] >= 2
    assert int(suite.get("skipped")) == runs.report["summary"]["known_bugs"] >= 1
    by_name = {c.get("name"): c for c in cases}
    entries = {e["signature"]: e for e in runs.report["divergences"]}
    for b in bugs:
        case = by_name[b["head"]]
        failures, skipped = case.findall("failure"), case.findall("skipped")
        members = [p.get("value") for p in case.findall("properties/property[@name='signature']")]
        assert members == b["members"]
        if b["known"]:
            assert not failures and len(skipped) == 1 and skipped[0].get("message").startswith("known")
        else:
            assert len(failures) == 1 and not skipped
            f = failures[0]
            assert f.get("type") == b["kind"] and f.get("message") == b["head"]
            body = f.text
            assert "difftest -p hostile_backends -p broken_backends replay" in body
            assert all(m in body for m in b["members"])
            lead = entries[b["reproducer_signature"]]
            assert lead["reproducer_path"] in body
            ops = [line for line in body.splitlines() if re.match(r"^[ >] +\d+  \w+\(", line)]
            assert len(ops) == lead["reproducer_ops"]
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["seed"] == "5" and props["tool_version"] == runs.report["tool"]["version"]
    assert props["backends"] == ",".join(runs.report["backends"]) and props["reference"] == "alpha-ref"
    # the hostile name and message round-trip as text
    hostile = by_name[HOSTILE_SIG].find("failure")
    assert HOSTILE_NAME in hostile.text and "<img src=x onerror=alert(2)> & ]]> </failure>" in hostile.text
    raw = text_of(runs, "main.xml")
    assert "<script>" not in raw and "\x1b" not in raw and "\x00" not in raw


def test_fuzz_writes_every_format(runs):
    """``difftest fuzz --report F`` writes every format; the HTML shows the plugin backends'
    reproducers as the campaign traced them (it runs nothing itself)."""
    for f in FORMATS:
        assert (runs.main / f"report{EXT[f]}").stat().st_size > 200
    page = (runs.main / "report.html").read_text()
    assert "<svg" in page
    assert "reproducer not traced" not in page
    ET.parse(runs.main / "report.xml")


# -- html ---------------------------------------------------------------------------------------------


class Page(HTMLParser):
    RESOURCE_ATTRS = {"src", "href", "xlink:href", "action", "formaction", "poster", "data", "srcset",
                      "background", "manifest", "ping"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: dict[str, int] = {}
        self.refs: list[str] = []
        self.handlers: list[str] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in self.RESOURCE_ATTRS and value and not value.startswith("#"):
                self.refs.append(f"{tag} {name}={value}")
            if name.startswith("on"):
                self.handlers.append(f"{tag} {name}")
            if name == "style" and value:
                self.styles.append(value)

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def test_html_report_structure(runs):
    text = text_of(runs, "main.html")
    page = parse_page(text)
    # plots inline: per reproducer, the long stream (frames, freed), the timeline, coverage
    assert page.tags.get("svg", 0) >= len(runs.report["divergences"]) + 4
    assert "script" not in page.tags and not page.handlers
    for tag in ("link", "iframe", "object", "embed", "img", "base", "meta http-equiv"):
        assert tag not in page.tags or tag == "meta"
    assert page.refs == []
    assert not any(re.search(r"url\((?!#)|@import", s) for s in page.styles)
    assert not re.search(r"https?://", text)
    shown = " ".join(page.text)
    for e in runs.report["divergences"]:
        assert e["signature"] in shown
    for needle in ("Campaign", "throughput", "Page-table frames along a long stream",
                   "Divergences found over campaign time", "Generator coverage", "op kinds generated"):
        assert needle in shown
    # the reproducers as the campaign traced them: each backend's frames side by side, the divergence
    assert "held / needed, freed" in shown and "pt-frames-held>needed" in shown
    assert "did not show this signature" not in shown


def test_hostile_names_are_text_everywhere(runs):
    page = parse_page(text_of(runs, "main.html"))
    assert "script" not in page.tags and "img" not in page.tags and not page.handlers
    shown = "".join(page.text)
    assert HOSTILE_NAME in shown and "<img src=x onerror=alert(2)>" in shown
    raw = text_of(runs, "main.html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw and "\x1b" not in raw
    # the same name in the JSON report round-trips, and the text report shows it inert
    assert HOSTILE_NAME in json.loads(text_of(runs, "main.json"))["backends"]
    assert HOSTILE_NAME in text_of(runs, "main.txt")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("name", ["main.html", "cmp.html"])
def test_html_renders_in_headless_chromium(runs, name):
    shot = runs.out / f"{name}.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             f"--screenshot={shot}", "--window-size=1280,2000", (runs.out / name).as_uri()],
            capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


# -- the lifecycle ------------------------------------------------------------------------------------


def test_compare_marks_fixed_new_and_open(runs):
    doc = json.loads(text_of(runs, "cmp.json"))
    lc = doc["lifecycle"]
    assert lc["status"][WRONGPA] == "new"
    assert lc["status"][LEAK] == "open"
    assert [f["signature"] for f in lc["fixed"]] == [MODLOSS] and lc["fixed"][0]["since"] == "this run"
    assert lc["counts"]["new"] >= 1 and lc["counts"]["open"] >= 1 and lc["counts"]["fixed"] == 1
    assert lc["previous"]["path"] == str(runs.prev)
    # every format shows it
    text = text_of(runs, "cmp.txt")
    assert re.search(rf"^new\s+translation\s+bug-wrongpa\s+{re.escape(WRONGPA)}", text, re.M)
    assert re.search(rf"^fixed\s+attribute\s+bug-modloss\s+{re.escape(MODLOSS)}", text, re.M)
    assert re.search(rf"^open\s+resource\s+arm32-leaky\s+{re.escape(LEAK)}", text, re.M)
    md = _unescape_md(text_of(runs, "cmp.md"))
    assert "## Lifecycle" in md
    assert re.search(rf"^\| fixed +\| attribute +\| bug-modloss +\| {re.escape(MODLOSS)} +\|$", md, re.M)
    root = ET.parse(runs.out / "cmp.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    status = {name: c.find("properties/property[@name='lifecycle']").get("value") for name, c in cases.items()
              if c.find("properties/property[@name='lifecycle']") is not None}
    # bugs by head (the lifecycle of their signatures), fixed signatures by signature
    assert status[WRONGPA] == "new" and status[LEAK_HEAD] == "open" and status[MODLOSS] == "fixed"
    assert cases[MODLOSS].find("failure") is None and cases[WRONGPA].find("failure") is not None
    shown = " ".join(parse_page(text_of(runs, "cmp.html")).text)
    assert "Lifecycle" in shown and "still open" in shown and MODLOSS in shown


def test_a_chain_of_nightlies_finds_the_regression(runs):
    doc = json.loads(text_of(runs, "chain.json"))
    lc = doc["lifecycle"]
    assert lc["status"][MODLOSS] == "regressed"
    assert lc["status"][LEAK] == "open"
    assert {f["signature"]: f["since"] for f in lc["fixed"]} == {WRONGPA: "this run"}
    root = ET.parse(runs.out / "chain.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == MODLOSS_HEAD)
    assert "lifecycle: regressed" in case.find("failure").text


def _report(*entries, fixed=None) -> dict:
    doc = {"divergences": [{"signature": s, "kind": s.split(":")[0], "backend": "b", "known": k} for s, k in entries]}
    if fixed is not None:
        doc["lifecycle"] = {"fixed": fixed}
    return doc


def test_lifecycle_statuses_and_precedence():
    prev = _report(("a:b:x:f:c", False), ("k:b:x:f:c", True), ("gone:b:x:f:c", False),
                   fixed=["back:b:x:f:c", {"signature": "long-gone:b:x:f:c", "kind": "long-gone"}])
    now = _report(("a:b:x:f:c", False), ("k:b:x:f:c", True), ("n:b:x:f:c", False), ("back:b:x:f:c", True))
    lc = compare(now, prev, "PREV")
    assert lc["status"] == {"back:b:x:f:c": "regressed", "n:b:x:f:c": "new", "a:b:x:f:c": "open",
                            "k:b:x:f:c": "known"}
    assert [(f["signature"], f["since"]) for f in lc["fixed"]] == [("gone:b:x:f:c", "this run"),
                                                                    ("long-gone:b:x:f:c", "earlier")]
    assert lc["counts"] == {"new": 1, "regressed": 1, "open": 1, "known": 1, "fixed": 1, "fixed_earlier": 1}
    # the next night still remembers both fixed signatures
    again = compare(_report(("gone:b:x:f:c", False), ("long-gone:b:x:f:c", False)), {**now, "lifecycle": lc})
    assert again["status"] == {"gone:b:x:f:c": "regressed", "long-gone:b:x:f:c": "regressed"}


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "no-report", "not-json", "nan", "wrong-format", "bad-entry",
                                  "unknown-format", "bad-compare"])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, case):
    run = tmp_path / "run"
    run.mkdir()
    args = ["report", str(run)]
    good = (runs.main / "report.json").read_text()
    if case == "missing":
        args = ["report", str(tmp_path / "nope")]
        needle = "no such directory"
    elif case == "no-report":
        needle = "no report.json"
    elif case == "not-json":
        (run / "report.json").write_text("{\"format\": ")
        needle = "malformed JSON"
    elif case == "nan":
        (run / "report.json").write_text(good.replace('"ops": ', '"ops": NaN, "x": ', 1))
        needle = "NaN"
    elif case == "wrong-format":
        (run / "report.json").write_text(json.dumps({"format": "difftest.stream/1", "ops": []}))
        needle = "not a difftest.report/1 document"
    elif case == "bad-entry":
        doc = json.loads(good)
        del doc["divergences"][0]["signature"]
        (run / "report.json").write_text(json.dumps(doc))
        needle = "divergence 0 has no 'signature'"
    elif case == "unknown-format":
        args = ["report", str(runs.main), "--format", "pdf"]
        needle = "unknown report format 'pdf'"
    else:
        args = ["report", str(runs.main), "--compare", str(tmp_path / "nope")]
        needle = "--compare"
    proc = difftest(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, needle)


def test_report_exits_0_even_with_new_divergences(runs):
    assert runs.report["summary"]["new"] >= 2
    assert runs.rendered["main.stdout"].returncode == 0
    assert runs.chained["merged.text"].returncode == 0
    assert "campaign time" not in runs.chained["merged.text"].stdout  # merged: no timing, still renders


def test_builtin_writers_are_registered_like_a_plugin():
    from difftest.plugins import PluginHost

    host = PluginHost()
    host.load()
    specs = host.registry.reporters
    assert {n: specs[n].extension for n in FORMATS} == EXT
    assert all(specs[n].plugin == "reports" for n in FORMATS)
