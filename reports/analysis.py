"""The traces the HTML report plots, as the campaign recorded them (``report["plots"]``,
``difftest/plotdata.py``): the long stream and each signature's reproducer.  Nothing here
runs a backend or generates a stream: a report renders what its campaign recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Recorded:
    """A traced stream as the campaign recorded it: per backend, one point per bucket of
    ``step`` ops (held, needed, over: the bucket's maximum; freed: its sum)."""

    backends: list[str]
    reference: str
    held: dict[str, list[int]]
    needed: dict[str, list[int]]
    over_: dict[str, list[int]]
    freed: dict[str, list[int]]
    died: dict[str, int]  # backend -> the op at which it ran out of memory
    step: int
    length: int  # ops traced
    ops_total: int
    divergences: int
    lanes: list[dict[str, Any]]

    def over(self, backend: str) -> list[int]:
        return self.over_[backend]

    def last_held(self, backend: str) -> int:
        lane = next(lane for lane in self.lanes if lane["backend"] == backend)
        return lane["end_held"] if lane["end_held"] is not None else 0

    def notes(self) -> list[str]:
        out = []
        if self.ops_total > self.length:
            out.append(f"traced over its first {self.length:,} of {self.ops_total:,} ops")
        if self.step > 1:
            out.append(f"one point per {self.step} ops (each bucket's maximum; frames freed: its sum)")
        return out


def recorded(traced: dict[str, Any]) -> Recorded:
    """A traced stream of ``plots`` (checked by ``difftest.report_shape``) as plottable series."""
    lanes = traced["lanes"]
    return Recorded(
        backends=[lane["backend"] for lane in lanes], reference=traced["reference"],
        held={lane["backend"]: lane["held"] for lane in lanes},
        needed={lane["backend"]: lane["needed"] for lane in lanes},
        over_={lane["backend"]: lane["over"] for lane in lanes},
        freed={lane["backend"]: lane["freed"] for lane in lanes},
        died={lane["backend"]: lane["out_of_memory"] for lane in lanes if lane["out_of_memory"] is not None},
        step=traced["step"], length=traced["ops"], ops_total=traced["ops_total"], divergences=traced["divergences"],
        lanes=lanes)
