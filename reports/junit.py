"""``junit``: JUnit XML (stdlib ``xml.etree``) for Jenkins, GitLab and GitHub test reports.

One ``<testsuite>``; one ``<testcase>`` per bug of a campaign (``classname``
difftest.KIND.BACKEND, ``name`` the bug's head, so GitLab's "first of duplicated names"
never merges two bugs; a replay's report, which has no bugs, gets one per signature):

* a bug ``new``, ``open`` or ``regressed``: ``<failure type=KIND message=HEAD>``, the body
  holding every signature it was seen as, what was observed, the minimised reproducer's ops
  (one per line, in words) and the ``difftest replay`` command;
* a known one: ``<skipped message="known: REASON">``; a fixed one passes;
* properties: the bug's status and its member signatures;
* one passing testcase per backend (``difftest.backend``: the streams it ran, its
  survival), so that a clean run is never an empty file.

``<properties>`` of the suite: seed, tool version, backends, reference (and generator,
streams, ops, the compared run).  ElementTree escapes markup; characters XML 1.0 cannot
hold at all are shown as ``\\xNN`` (``common.xml_safe``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, TextIO

from reports import common
from reports.outline import TRACEBACK_LINES


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    node = ET.SubElement(parent, tag, {k: common.xml_safe(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        node.text = common.xml_safe(text)
    return node


def failure_body(report: dict[str, Any], entry: dict[str, Any], run_dir: Any = None) -> str:
    first = entry.get("first") or {}
    lines = [f"{entry.get('kind')} in {entry.get('backend')}, seen in {entry.get('count')} stream(s)"]
    if isinstance(report.get("lifecycle"), dict):
        st = common.status(report, entry)
        lines.append(f"lifecycle: {common.STATUS_TITLES.get(st, st)}"
                     + (" (fixed in an earlier run, back now)" if st == "regressed" else ""))
    seen = common.first_seen(entry)
    if seen:
        lines.append(f"first seen: {seen}")
    for key in ("message", "attribution"):
        if first.get(key):
            lines.append(common.one_line(first[key]))
    for backend, observed in common.observations(report, entry):
        lines.append(f"  {common.one_line(backend)}: {common.one_line(observed)}")
    if first.get("traceback"):
        lines.append("traceback (last lines):")
        lines += ["  " + common.clean(l) for l in str(first["traceback"]).rstrip().splitlines()[-TRACEBACK_LINES:]]
    if entry.get("shrink_note"):
        lines.append(f"not minimised: {common.one_line(entry['shrink_note'])}")
    ops = common.reproducer_ops(entry)
    if ops:
        lines.append("")
        lines.append(f"minimised reproducer ({len(ops)} ops):" if entry.get("reproducer_ops") is not None
                     or "shrunk_from" in ((entry.get("reproducer") or {}).get("origin") or {})
                     else f"reproducer ({len(ops)} ops):")
        lines += common.numbered(ops, common.divergence_ops(entry))
    cmd = common.replay_command(report, entry, run_dir)
    if cmd:
        lines.append("")
        lines.append(cmd)
    return "\n".join(lines) + "\n"


def bug_body(report: dict[str, Any], bug: dict[str, Any], run_dir: Any = None) -> str:
    """A bug's failure body: its head sighting (observations, reproducer, replay command,
    from the member whose reproducer stands for it) and every signature it was seen as."""
    members = list(bug.get("members") or ())
    entries = {e.get("signature"): e for e in report.get("divergences", [])}
    lead = entries.get(bug.get("reproducer_signature")) or next((entries[m] for m in members if m in entries), None)
    lines = [f"bug {bug.get('head')}: {bug.get('kind')} in {bug.get('backend')}, status {common.bug_status(report, bug)}, "
             f"seen in {bug.get('count')} stream(s)"]
    lines.append("also seen as: " + ", ".join(map(str, members)))
    if isinstance(report.get("lifecycle"), dict):
        st = bug_lifecycle(report, bug)
        lines.append(f"lifecycle: {common.STATUS_TITLES.get(st or '', st)}"
                     + (" (fixed in an earlier run, back now)" if st == "regressed" else ""))
    if lead is not None:
        lines.append("")
        lines.append(failure_body(report, lead, run_dir).rstrip("\n"))
    else:
        ops = common.reproducer_ops({"reproducer": bug.get("reproducer")})
        if ops:
            lines.append(f"reproducer ({len(ops)} ops):")
            lines += common.numbered(ops)
        cmd = common.bug_replay_command(report, bug, run_dir)
        if cmd:
            lines += ["", cmd]
    return "\n".join(lines) + "\n"


def build(report: dict[str, Any], run_dir: Any = None) -> ET.Element:
    if "bugs" not in report:  # a replay's report: signatures are its unit
        cases = [("sig", e) for e in report.get("divergences", [])]
    else:
        cases = [("bug", b) for b in report.get("bugs") or ()]
    lifecycle = report.get("lifecycle") if isinstance(report.get("lifecycle"), dict) else None
    fixed = list((lifecycle or {}).get("fixed") or [])
    failures = sum(1 for what, c in cases if (common.bug_is_failure(c) if what == "bug" else common.is_failure(report, c)))
    skipped = sum(1 for what, c in cases if (c.get("status") == "known" if what == "bug" else c.get("known")))
    # One passing testcase per backend (it ran, and how it survived): a clean run is not empty.
    backends = [str(b) for b in report.get("backends", [])]
    tests = len(cases) + len(fixed) + len(backends)
    elapsed = (report.get("timing") or {}).get("elapsed")
    time_text = f"{elapsed:.3f}" if isinstance(elapsed, (int, float)) else "0"

    root = ET.Element("testsuites", {"name": "pmap-difftest", "tests": str(tests), "failures": str(failures),
                                     "errors": "0", "skipped": str(skipped), "time": time_text})
    suite = _el(root, "testsuite", name="difftest", tests=str(tests), failures=str(failures), errors="0",
                skipped=str(skipped), time=time_text)
    props = _el(suite, "properties")
    camp = report.get("campaign") or {}
    tool = report.get("tool") or {}
    facts = [
        ("seed", camp.get("seed")),
        ("tool_version", tool.get("version")),
        ("backends", ",".join(map(str, report.get("backends", [])))),
        ("reference", report.get("reference")),
        ("generator", camp.get("generator")),
        ("ops_per_stream", camp.get("ops_per_stream")),
        ("streams", report.get("streams")),
        ("ops", report.get("ops")),
    ]
    if lifecycle:
        facts.append(("compared_with", (lifecycle.get("previous") or {}).get("path")))
        for key, n in (lifecycle.get("counts") or {}).items():
            facts.append((f"lifecycle_{key}", n))
    for name, value in facts:
        if value is not None:
            _el(props, "property", name=name, value=str(value))

    for what, entry in cases:
        if what == "bug":
            _bug_case(suite, report, entry, lifecycle, run_dir)
        else:
            _signature_case(suite, report, entry, lifecycle, run_dir)
    for item in fixed:
        case = _el(suite, "testcase", classname=f"difftest.{item.get('kind')}.{item.get('backend')}",
                   name=str(item.get("signature")), time="0")
        cprops = _el(case, "properties")
        _el(cprops, "property", name="lifecycle", value="fixed" if item.get("since") == "this run" else "fixed earlier")
        since = "in this run" if item.get("since") == "this run" else "in an earlier run, still gone"
        _el(case, "system-out", f"fixed {since}: not seen any more\n")
    survival = dict(zip((report.get("survival") or {}).keys(), common.survival_lines(report)))
    for name in backends:
        case = _el(suite, "testcase", classname="difftest.backend", name=name, time="0")
        _el(case, "system-out", f"ran {report.get('streams')} stream(s)"
            + (f"; {survival[name]}" if name in survival else "") + "\n")
    ET.indent(root)
    return root


def bug_lifecycle(report: dict[str, Any], bug: dict[str, Any]) -> str | None:
    """The most urgent ``--compare`` status among a bug's signatures (regressed first)."""
    from difftest.lifecycle import ORDER

    statuses = [common.status(report, {"signature": m, "known": bug.get("known")}) for m in bug.get("members") or ()]
    return min(statuses, key=lambda st: ORDER.get(st, 9)) if statuses else None


def _bug_case(suite: ET.Element, report: dict[str, Any], bug: dict[str, Any], lifecycle: Any, run_dir: Any) -> None:
    st = common.bug_status(report, bug)
    case = _el(suite, "testcase", classname=f"difftest.{bug.get('kind')}.{bug.get('backend')}",
               name=str(bug.get("head", "")), time="0")
    cprops = _el(case, "properties")
    _el(cprops, "property", name="status", value=st)
    if lifecycle:
        _el(cprops, "property", name="lifecycle", value=str(bug_lifecycle(report, bug)))
    for m in bug.get("members") or ():
        _el(cprops, "property", name="signature", value=str(m))
    if common.bug_is_failure(bug):
        _el(case, "failure", bug_body(report, bug, run_dir), type=str(bug.get("kind")), message=str(bug.get("head")))
    elif st == "known":
        reason = common.one_line(bug.get("known_reason") or "listed by the baseline")
        _el(case, "skipped", message=f"known: {reason}")
    else:
        _el(case, "system-out", "fixed: its reproducer ran and no longer diverges\n")


def _signature_case(suite: ET.Element, report: dict[str, Any], entry: dict[str, Any], lifecycle: Any,
                    run_dir: Any) -> None:
    sig = str(entry.get("signature", ""))
    case = _el(suite, "testcase", classname=f"difftest.{entry.get('kind')}.{entry.get('backend')}",
               name=sig, time="0")
    st = common.status(report, entry)
    if lifecycle:
        cprops = _el(case, "properties")
        _el(cprops, "property", name="lifecycle", value=st)
    if common.is_failure(report, entry):
        _el(case, "failure", failure_body(report, entry, run_dir), type=str(entry.get("kind")), message=sig)
    else:
        reason = common.one_line(entry.get("known_reason") or "listed by the baseline")
        prefix = "known (regressed: fixed in the previous run)" if st == "regressed" else "known"
        _el(case, "skipped", message=f"{prefix}: {reason}")


def render(report: dict[str, Any], run_dir: Any = None) -> str:
    return ET.tostring(build(report, run_dir), encoding="unicode", xml_declaration=True) + "\n"


def write(report: dict[str, Any], out: TextIO, *, run_dir: Any = None, **_: Any) -> None:
    out.write(render(report, run_dir))
