"""docs/REPORT.md's table of report fields, and a check of a real report against it both
ways (no undocumented field, every documented field of its producers present), for the
tests that make reports (tests/test_reports.py, tests/test_corpus_shards.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def documented_fields() -> dict[str, tuple[str, str]]:
    fields = {}
    for line in (ROOT / "docs" / "REPORT.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+)` \| ([^|]+?) \| (always|campaign|fuzz|replay|compare|optional) \|", line)
        if m:
            fields[m.group(1)] = (m.group(2).strip(), m.group(3))
    return fields


def _type_ok(value, typ: str) -> bool:
    for t in typ.split(" or "):
        if (t == "null" and value is None) or (t == "string" and isinstance(value, str)) \
                or (t == "integer" and type(value) is int) or (t == "boolean" and type(value) is bool) \
                or (t == "number" and type(value) in (int, float)) \
                or (t in ("object", "map") and isinstance(value, dict)) \
                or (t == "stream object" and isinstance(value, dict) and value.get("format") == "difftest.stream/1") \
                or (t == "list of strings" and isinstance(value, list) and all(isinstance(v, str) for v in value)) \
                or (t == "list of objects" and isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return True
    return False


def check_against_docs(doc: dict, producers: set[str]) -> list[str]:
    """Problems: undocumented fields, wrong types, documented fields missing."""
    fields = documented_fields()
    problems: list[str] = []

    def walk(obj: dict, prefix: str) -> None:
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            if path not in fields:
                problems.append(f"undocumented field {path}")
                continue
            typ, _ = fields[path]
            if not _type_ok(value, typ):
                problems.append(f"{path}: {value!r:.60} is not {typ}")
            elif typ == "object":
                walk(value, path)
            elif typ == "list of objects":
                for item in value:
                    walk(item, path + "[]")

    walk(doc, "")
    for path, (_, present) in fields.items():
        if present not in producers:
            continue
        containers = [doc]
        parts = path.split(".")
        for i, part in enumerate(parts):
            name = part[:-2] if part.endswith("[]") else part
            missing = [c for c in containers if name not in c]
            if missing:
                problems.append(f"documented field {path} ({present}) missing")
                break
            values = [c[name] for c in containers]
            containers = [v for vs in values for v in vs] if part.endswith("[]") else values
            if i < len(parts) - 1:
                containers = [c for c in containers if isinstance(c, dict)]
    return problems
