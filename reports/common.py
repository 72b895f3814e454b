"""Helpers the report writers share: untrusted-text cleaning, the facts of a campaign, the
rows of the divergence tables, reproducers in words, replay commands, the lifecycle.

Everything in a report that came from a plugin or a stream (backend names, messages,
tracebacks, signatures, observations) is untrusted: each writer escapes it for its format
(``clean``/``one_line`` for terminals, ``md`` for Markdown, ``xml_safe`` + ElementTree for
JUnit, Jinja2's autoescape for HTML).

Writers take ``write(report, out, *, registry=None, run_dir=None)``: ``difftest report``
passes the keywords a writer accepts (the plugin registry, the run directory); ``difftest
fuzz --report`` calls ``write(report, out)`` alone.  Every keyword is optional.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Iterable, Sequence

# C0 controls but tab and newline, DEL, C1 controls: they move terminal cursors, change
# colours, or are invalid in XML.  Shown as \xNN instead.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Not allowed in XML 1.0 at all (even escaped): C0 but tab/LF/CR, surrogates, U+FFFE/U+FFFF.
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Markdown punctuation that can start emphasis, links, code, tables, HTML or headings.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")
# ... and what starts a heading, list, quote or rule at the start of a line.
_MD_LEADING = re.compile(r"^([#+\-=>]|\d+[.)])")

STATUS_TITLES = {
    "new": "new",
    "regressed": "regressed",
    "open": "still open",
    "known": "known",
    "fixed": "fixed",
}


def clean(text: Any) -> str:
    """``text`` as a string with control characters shown as ``\\xNN`` (tabs, newlines kept)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", "" if text is None else str(text))


def one_line(text: Any) -> str:
    """``clean`` with every run of whitespace (newlines too) made one space."""
    return " ".join(clean(text).split())


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def md(text: Any) -> str:
    """One line of untrusted text for Markdown (GitHub flavoured): no HTML, no markup, no
    table breaks.  A backslash before ASCII punctuation makes it literal in CommonMark."""
    escaped = _MD_SPECIAL.sub(r"\\\1", one_line(text))
    return _MD_LEADING.sub(lambda m: "\\" + m.group(1) if not m.group(1)[0].isdigit()
                           else m.group(1)[:-1] + "\\" + m.group(1)[-1], escaped)


def md_code_block(lines: Sequence[str], info: str = "") -> str:
    """A fenced code block (content literal, so no escaping) with a fence longer than any
    run of backticks inside."""
    body = "\n".join(clean(line) for line in lines)
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def xml_safe(text: Any) -> str:
    """Text ElementTree can write as valid XML 1.0 (it escapes <, >, & and quotes itself)."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", "" if text is None else str(text))


# -- report facts -------------------------------------------------------------------------------


def number(n: Any, digits: int = 0) -> str:
    if n is None:
        return "-"
    if isinstance(n, bool):
        return str(n).lower()
    if isinstance(n, (int, float)):
        return f"{n:,.{digits}f}" if isinstance(n, float) or digits else f"{n:,}"
    return str(n)


def seconds(s: Any) -> str:
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def campaign_facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run, in reading order (plain, unescaped text)."""
    camp = report.get("campaign") or {}
    timing = report.get("timing") or {}
    facts: list[tuple[str, str]] = [
        ("backends", ", ".join(map(str, report.get("backends", [])))),
        ("reference", str(report.get("reference", "-"))),
    ]
    if camp:
        facts += [
            ("seed", str(camp.get("seed"))),
            ("generator", str(camp.get("generator"))),
            ("ops per stream", number(camp.get("ops_per_stream"))),
            ("physical pages", number(camp.get("phys_pages"))),
        ]
        requested = camp.get("streams_requested")
        if requested is not None:
            facts.append(("streams requested", number(requested)))
        if camp.get("shard") not in (None, "0/1"):
            facts.append(("shard", str(camp.get("shard"))))
    facts += [("streams run", number(report.get("streams"))), ("ops run", number(report.get("ops")))]
    if timing:
        budget = timing.get("budget")
        facts += [
            ("budget", seconds(budget) if budget is not None else "none (--streams)"),
            ("elapsed", seconds(timing.get("elapsed"))),
            ("workers", number(timing.get("workers"))),
            ("throughput", f"{number(timing.get('ops_per_second'))} ops/s"),
        ]
    if camp:
        facts += [("stream timeout", seconds(camp.get("stream_timeout"))),
                  ("shrink budget", seconds(camp.get("shrink_budget")))]
    tool = report.get("tool") or {}
    facts.append(("tool", f"{tool.get('name', 'pmap-difftest')} {tool.get('version', '?')}"))
    return facts


def summary_counts(report: dict[str, Any]) -> dict[str, int]:
    entries = report.get("divergences", [])
    summary = report.get("summary") or {}
    return {
        "signatures": summary.get("signatures", len(entries)),
        "new": summary.get("new", sum(1 for e in entries if not e.get("known"))),
        "known": summary.get("known", sum(1 for e in entries if e.get("known"))),
    }


def headline(report: dict[str, Any]) -> str:
    """One sentence: what ran and what it found."""
    counts = summary_counts(report)
    timing = report.get("timing") or {}
    text = (f"{number(report.get('streams'))} streams, {number(report.get('ops'))} ops on "
            f"{', '.join(map(str, report.get('backends', [])))} (reference {report.get('reference')})")
    if timing.get("elapsed") is not None:
        text += f" in {seconds(timing['elapsed'])}"
    if timing.get("ops_per_second"):
        text += f" ({number(timing['ops_per_second'])} ops/s)"
    return (f"{text}: {counts['signatures']} signatures, {counts['new']} new (not in the baseline), "
            f"{counts['known']} known")


def status(report: dict[str, Any], entry: dict[str, Any]) -> str:
    """``new``/``known``, or the lifecycle status when the report carries one."""
    lifecycle = report.get("lifecycle")
    if isinstance(lifecycle, dict):
        st = (lifecycle.get("status") or {}).get(entry.get("signature"))
        if st:
            return st
    return "known" if entry.get("known") else "new"


def is_failure(report: dict[str, Any], entry: dict[str, Any]) -> bool:
    """What a CI job should fail on: a signature the baseline does not know."""
    return not entry.get("known")


def lifecycle_line(report: dict[str, Any]) -> str | None:
    lc = report.get("lifecycle")
    if not isinstance(lc, dict):
        return None
    c = lc.get("counts") or {}
    prev = (lc.get("previous") or {}).get("path") or "the previous run"
    parts = [f"{c.get(k, 0)} {STATUS_TITLES[k]}" for k in ("new", "regressed", "open", "known", "fixed")]
    if c.get("fixed_earlier"):
        parts.append(f"{c['fixed_earlier']} fixed earlier (still gone)")
    return f"compared with {prev}: " + ", ".join(parts)


def lifecycle_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(status, kind, backend, signature) for every signature now and every fixed one."""
    lc = report.get("lifecycle")
    if not isinstance(lc, dict):
        return []
    from difftest.lifecycle import ORDER

    rows = []
    for e in report.get("divergences", []):
        rows.append((status(report, e), str(e.get("kind", "")), str(e.get("backend", "")), e["signature"]))
    for f in lc.get("fixed") or ():
        label = "fixed" if f.get("since") == "this run" else "fixed earlier"
        rows.append((label, str(f.get("kind") or ""), str(f.get("backend") or ""), f["signature"]))
    rows.sort(key=lambda r: (ORDER.get(r[0].split()[0], 9), r[0], r[3]))
    return rows


# -- reproducers --------------------------------------------------------------------------------


def reproducer_ops(entry: dict[str, Any]) -> list[str]:
    """The reproducer's ops in words (``difftest.ops.describe``); raw JSON for an op that
    does not decode (a report written by another version)."""
    doc = entry.get("reproducer")
    if not isinstance(doc, dict):
        return []
    from difftest.errors import StreamError
    from difftest.ops import describe
    from difftest.streams import stream_from_json

    try:
        return [describe(op) for op in stream_from_json(doc).ops]
    except StreamError:
        return [json.dumps(op, sort_keys=True) for op in doc.get("ops") or ()]


def numbered(lines: Sequence[str], marks: Iterable[int] = ()) -> list[str]:
    """``  3  remove(...)`` lines, with ``>`` before the marked indexes."""
    marks = set(marks)
    width = len(str(max(len(lines) - 1, 0)))
    return [f"{'>' if i in marks else ' '} {i:>{width}}  {line}" for i, line in enumerate(lines)]


def reproducer_path(entry: dict[str, Any], run_dir: Any = None) -> str | None:
    path = entry.get("reproducer_path")
    if not path:
        return None
    if run_dir is not None:
        from pathlib import Path

        return str(Path(run_dir) / path)
    return str(path)


def run_plugins(run_dir: Any) -> list[str]:
    """The ``--plugin`` modules a campaign ran with (``RUN_DIR/campaign.json``), if known."""
    if run_dir is None:
        return []
    from pathlib import Path

    try:
        meta = json.loads((Path(run_dir) / "campaign.json").read_text(encoding="utf-8"))
        plugins = meta["config"].get("plugins") or []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [str(p) for p in plugins] if isinstance(plugins, list) else []


def replay_command(report: dict[str, Any], entry: dict[str, Any], run_dir: Any = None) -> str | None:
    """The shell command that replays ``entry``'s reproducer on the report's backends."""
    path = reproducer_path(entry, run_dir)
    if path is None:
        return None
    plugins = (report.get("campaign") or {}).get("plugins") or run_plugins(run_dir)
    argv = ["difftest"]
    for p in plugins:
        argv += ["-p", str(p)]
    argv += ["replay", "--backends", ",".join(map(str, report.get("backends", []))),
             "--reference", str(report.get("reference")), path]
    return " ".join(shlex.quote(a) for a in argv)


def first_seen(entry: dict[str, Any]) -> str:
    first = entry.get("first") or {}
    where = []
    fs = entry.get("first_stream")
    if isinstance(fs, dict):
        where.append(f"stream {fs.get('index')} (seed {fs.get('seed')})")
    if first.get("op_index", -1) is not None and first.get("op_index", -1) >= 0:
        where.append(f"op {first.get('op_index')}: {first.get('op')}")
    elif first.get("op"):
        where.append(str(first.get("op")))
    return ", ".join(where)


def observations(report: dict[str, Any], entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(backend, observation) in the report's backend order, then any others."""
    obs = (entry.get("first") or {}).get("observations") or {}
    order = [b for b in report.get("backends", []) if b in obs] + [b for b in obs if b not in report.get("backends", [])]
    return [(str(b), str(obs[b])) for b in order]


def divergence_table(report: dict[str, Any], width: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the summary table (plain text; the caller escapes)."""
    rows = []
    for e in report.get("divergences", []):
        sig = str(e.get("signature", ""))
        rows.append([
            status(report, e), str(e.get("kind", "")), str(e.get("backend", "")),
            clip(sig, width) if width else sig,
            number(e.get("count")), number(e.get("events")) if e.get("events") is not None else "-",
            number(e.get("reproducer_ops")) if e.get("reproducer_ops") is not None else
            (str(len((e.get("reproducer") or {}).get("ops") or ())) if e.get("reproducer") else "-"),
        ])
    return ["status", "kind", "backend", "signature", "streams", "events", "repro ops"], rows


def reproducer_excerpt(lines: list[str], marks: Iterable[int], limit: int = 40, context: int = 3) -> list[str]:
    """``numbered`` lines, cut to the ops around the marks when there are more than ``limit``."""
    out = numbered(lines, marks)
    if len(out) <= limit:
        return out
    keep = set(range(context)) | {len(out) - 1}
    for m in marks:
        keep |= set(range(max(0, m - context), min(len(out), m + context + 1)))
    result, last = [], -1
    for i in sorted(keep):
        if i != last + 1:
            result.append(f"  ... {i - last - 1} ops")
        result.append(out[i])
        last = i
    return result


def divergence_ops(entry: dict[str, Any]) -> list[int]:
    """Where the reproducer diverges, when the report says so without re-running it: the
    first sighting's op index, for a reproducer that is the whole stream (not minimised).
    A minimised reproducer's index is known only by running it (the HTML report does)."""
    doc = entry.get("reproducer") or {}
    n = len(doc.get("ops") or ())
    if "shrunk_from" in (doc.get("origin") or {}):
        return []
    idx = (entry.get("first") or {}).get("op_index")
    return [idx] if isinstance(idx, int) and 0 <= idx < n else []


# -- bugs and survival ----------------------------------------------------------------------------


def bug_status(report: dict[str, Any], bug: dict[str, Any]) -> str:
    """A bug's status: ``new``, ``known``, ``open``, ``regressed`` or ``fixed``."""
    return str(bug.get("status") or ("known" if bug.get("known") else "new"))


def bug_is_failure(bug: dict[str, Any]) -> bool:
    """What a CI job should fail on (``difftest fuzz`` exits 1 for it)."""
    return bug.get("status") in ("new", "open", "regressed") or (bug.get("status") is None and not bug.get("known"))


def bug_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the bug table (plain text; the caller escapes)."""
    rows = []
    for b in report.get("bugs") or ():
        rows.append([bug_status(report, b), str(b.get("kind", "")), str(b.get("backend", "")), str(b.get("head", "")),
                     number(len(b.get("members") or ())), number(b.get("count")),
                     number(b.get("reproducer_ops")) if b.get("reproducer_ops") is not None else "-"])
    return ["status", "kind", "backend", "bug (head)", "signatures", "streams", "repro ops"], rows


def bug_headline(report: dict[str, Any]) -> str | None:
    summary = report.get("summary") or {}
    if "bugs" not in summary:
        return None
    return (f"{summary['bugs']} bug(s) ({summary.get('signatures', 0)} signatures): "
            f"{summary.get('failing_bugs', 0)} failing, {summary.get('known_bugs', 0)} known, "
            f"{summary.get('fixed_bugs', 0)} fixed")


def survival_lines(report: dict[str, Any]) -> list[str]:
    """One line per backend: the streams it survived, or where it ran out of memory."""
    lines = []
    for name, s in (report.get("survival") or {}).items():
        if not isinstance(s, dict):
            continue
        if s.get("out_of_memory"):
            lines.append(f"{name}: out of memory in {s['out_of_memory']} of {s.get('streams')} streams "
                         f"(first at op {s.get('first_out_of_memory_op')})")
        else:
            lines.append(f"{name}: survived all {s.get('streams')} streams")
    return lines


def bug_replay_command(report: dict[str, Any], bug: dict[str, Any], run_dir: Any = None) -> str | None:
    """The ``difftest replay`` command for a bug's reproducer."""
    path = bug.get("reproducer_path")
    if path and run_dir is not None and not str(path).startswith("/") and bug.get("first_stream") is not None:
        from pathlib import Path

        path = str(Path(run_dir) / path)
    return replay_command(report, {"reproducer_path": path}, None) if path else None
