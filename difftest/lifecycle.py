"""The nightly lifecycle of divergence signatures: this run compared with the previous one.

``compare(report, previous)`` returns the ``lifecycle`` object that ``difftest report
--compare PREVIOUS`` puts into the report it renders (docs/REPORT.md, "lifecycle").  Every
signature of this run gets one status:

=============  ==========================================================================
``regressed``  seen now, and the previous run's own lifecycle had it as fixed
``known``      seen now and listed by the baseline (``known`` in the report entry)
``open``       seen now and in the previous run (still open)
``new``        seen now, not in the previous run, not known
=============  ==========================================================================

plus ``fixed``: signatures the previous run saw (or had already recorded as fixed) that
this run does not see.  ``fixed`` is cumulative, so that a chain of nightlies, each
compared with the one before and saved with its lifecycle (``difftest report RUN --compare
PREV --format json -o RUN/report.json``), still calls a signature ``regressed`` when it
comes back several runs after it went away.

A leaf module: the standard library only, so that any tool can use it (the report writers
only render the object; they never compute it).
"""

from __future__ import annotations

from typing import Any

LIFECYCLE_FORMAT = "difftest.lifecycle/1"
STATUSES = ("new", "regressed", "open", "known")
#: the order statuses are listed in (the most urgent first), fixed last
ORDER = {"regressed": 0, "new": 1, "open": 2, "known": 3, "fixed": 4}


def _fixed_signatures(previous: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The previous run's ``lifecycle.fixed`` entries by signature (strings accepted too)."""
    out: dict[str, dict[str, Any]] = {}
    lifecycle = previous.get("lifecycle")
    if not isinstance(lifecycle, dict):
        return out
    for item in lifecycle.get("fixed") or ():
        if isinstance(item, str):
            out[item] = {"signature": item}
        elif isinstance(item, dict) and isinstance(item.get("signature"), str):
            out[item["signature"]] = item
    return out


def compare(report: dict[str, Any], previous: dict[str, Any], previous_label: str = "") -> dict[str, Any]:
    """The lifecycle of ``report``'s signatures against ``previous`` (both difftest.report/1)."""
    now = {e["signature"]: e for e in report.get("divergences", [])}
    before = {e["signature"]: e for e in previous.get("divergences", [])}
    fixed_before = _fixed_signatures(previous)

    status: dict[str, str] = {}
    for sig, entry in now.items():
        if sig in fixed_before:
            status[sig] = "regressed"
        elif entry.get("known"):
            status[sig] = "known"
        elif sig in before:
            status[sig] = "open"
        else:
            status[sig] = "new"

    fixed: list[dict[str, Any]] = []
    for sig, entry in before.items():
        if sig not in now:
            fixed.append({"signature": sig, "kind": entry.get("kind"), "backend": entry.get("backend"),
                          "known": bool(entry.get("known")), "since": "this run"})
    for sig, item in fixed_before.items():
        if sig not in now and sig not in before:
            fixed.append({"signature": sig, "kind": item.get("kind"), "backend": item.get("backend"),
                          "known": bool(item.get("known")), "since": "earlier"})
    fixed.sort(key=lambda f: (f["since"] != "this run", f["signature"]))

    by_status = {name: sorted(s for s, st in status.items() if st == name) for name in STATUSES}
    campaign = previous.get("campaign") if isinstance(previous.get("campaign"), dict) else {}
    return {
        "format": LIFECYCLE_FORMAT,
        "previous": {
            "path": previous_label,
            "seed": campaign.get("seed"),
            "streams": previous.get("streams"),
            "ops": previous.get("ops"),
            "signatures": len(before),
        },
        "status": dict(sorted(status.items(), key=lambda kv: (ORDER[kv[1]], kv[0]))),
        "counts": {**{name: len(sigs) for name, sigs in by_status.items()},
                   "fixed": sum(1 for f in fixed if f["since"] == "this run"),
                   "fixed_earlier": sum(1 for f in fixed if f["since"] == "earlier")},
        **by_status,
        "fixed": fixed,
        "no_longer_seen": list(report.get("no_longer_seen", [])),
    }


def status_of(report: dict[str, Any], signature: str) -> str | None:
    """A signature's lifecycle status in ``report``, or None without a lifecycle."""
    lifecycle = report.get("lifecycle")
    if not isinstance(lifecycle, dict):
        return None
    status = lifecycle.get("status")
    return status.get(signature) if isinstance(status, dict) else None
