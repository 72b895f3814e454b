"""The ``trace`` generator: real workloads (imported streams) as campaign input.

``difftest fuzz --generator trace --trace-dir DIR`` (or ``streams generate``): every
stream is one of DIR's stream files (``*.json``, for example from ``difftest import
strace``), picked by the seed, as recorded or as a variant of it made from the same seed:

* ``machine``: another machine size.  The data frames are renumbered, in order of first
  use, above the frames left for page tables: the campaign's ``--phys-pages`` (a quarter
  for page tables) if the workload fits in it, the smallest machine with a quarter for
  page tables, or a starved one with 32 frames for them (memory pressure on the pmaps'
  own pages: a pmap that keeps page tables it no longer needs, ``arm32-leaky``, runs out).
* ``pressure``: a pager at work: every 50-500 ops a resident page is paged out
  (``is_modified``, ``clear_modify``, ``page_protect(pa, none)``), and now and then an
  address space other than the last one used is swapped out (``collect``).
* ``shift``: process interleavings shifted: one or two pmaps' ops (from their ``create``
  on) move later by a number of ops, keeping their own order and every other op's; pmap
  ids are renumbered in the new order of the ``create`` ops.

A variant is kept only if it passes ``validate_ops`` and the VM rules (else the stream is
the workload as recorded and ``origin.variant.fallback`` says why).  A workload longer
than ``n_ops`` (when ``n_ops`` > 0) is cut to its first ``n_ops`` ops.  Pure: the same
seed, ``n_ops``, machine and directory contents give the same stream.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

from difftest import streams
from difftest.errors import BadInput, StreamError
from difftest.legality import VMModel, first_problem
from difftest.machine import PAGE_SIZE
from difftest.ops import ClearModify, Collect, Create, IsModified, Op, PageProtect
from difftest.streams import Stream

VARIANTS = ("recorded", "machine", "pressure", "shift")
STARVED_PT_FRAMES = 32  # the "starved" machine: page tables get 32 frames, the data the rest

_LOADED: dict[tuple[str, int, int], Stream] = {}  # per process: a campaign reads each file once


def trace_files(trace_dir: str) -> list[Path]:
    """The stream files of ``trace_dir``, in name order (BadInput when there are none)."""
    root = Path(trace_dir)
    if not root.is_dir():
        raise BadInput(f"--trace-dir {trace_dir}: not a directory")
    files = sorted(p for p in root.glob("*.json") if p.is_file())
    if not files:
        raise BadInput(f"--trace-dir {trace_dir}: no stream files (*.json); make them with difftest import")
    return files


def _load(path: Path) -> Stream:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    stream = _LOADED.get(key)
    if stream is None:
        stream = streams.load(path)
        _LOADED[key] = stream
    return stream


def generate_trace(seed: int, n_ops: int, phys_pages: int, trace_dir: str | None = None) -> Stream:
    """The ``trace`` generator (see the module's docstring)."""
    if not trace_dir:
        raise BadInput("the trace generator needs --trace-dir DIR (a directory of imported streams)")
    files = trace_files(trace_dir)
    rnd = random.Random(seed)
    path = files[rnd.randrange(len(files))]
    source = _load(path)
    ops = list(source.ops[:n_ops] if 0 < n_ops < len(source) else source.ops)
    variant = VARIANTS[rnd.randrange(len(VARIANTS))]
    detail: dict[str, Any] = {"kind": variant}
    pages = source.phys_pages
    if variant == "machine":
        ops, pages = renumber_frames(ops, phys_pages, rnd, detail)
    elif variant == "pressure":
        ops = with_pager(ops, rnd, detail)
    elif variant == "shift":
        ops = shifted(ops, rnd, detail)
    origin = {"generator": "trace", "seed": seed, "source": path.name,
              "source_origin": {k: v for k, v in source.origin.items() if k in ("importer", "log", "log_sha256")},
              "variant": detail}
    try:
        stream = streams.make_stream(ops, phys_pages=pages, origin=origin)
        problem = first_problem(stream)
    except StreamError as err:
        problem = str(err)
    if problem is not None:  # never expected: keep the campaign going on the recorded workload
        detail["fallback"] = problem
        ops = list(source.ops[:n_ops] if 0 < n_ops < len(source) else source.ops)
        stream = streams.make_stream(ops, phys_pages=source.phys_pages, origin=origin)
    return stream


def renumber_frames(ops: Sequence[Op], phys_pages: int, rnd: random.Random,
                    detail: dict[str, Any]) -> tuple[list[Op], int]:
    """The workload on another machine: data frames renumbered in order of first use."""
    order: dict[int, int] = {}
    for op in ops:
        pa = getattr(op, "pa", None)
        if pa is not None and pa not in order:
            order[pa] = len(order)
    used = len(order)
    # (machine size, frames left for page tables below the data frames)
    quarter = -(-used // 3)  # data in three quarters, page tables in one
    choices = [(used + quarter, quarter), (used + STARVED_PT_FRAMES, STARVED_PT_FRAMES)]
    if phys_pages - phys_pages // 4 >= used:
        choices.append((phys_pages, phys_pages // 4))
    pages, base = choices[rnd.randrange(len(choices))]
    pages = max(pages, 16)
    detail.update({"phys_pages": pages, "page_table_frames": base, "data_frames": used})
    out = []
    for op in ops:
        pa = getattr(op, "pa", None)
        out.append(op if pa is None else dataclasses.replace(op, pa=(base + order[pa]) * PAGE_SIZE))
    return out, pages


def with_pager(ops: Sequence[Op], rnd: random.Random, detail: dict[str, Any]) -> list[Op]:
    """Insert page-outs of resident pages and swap-outs of idle address spaces."""
    model = VMModel()
    out: list[Op] = []
    gap = rnd.randint(50, 500)
    next_out = gap
    last_pmap = 0
    page_outs = collects = 0
    for index, op in enumerate(ops):
        if index == next_out:
            next_out += gap
            resident = [pa for pa in model.pa_maps if not model.is_wired_page(pa)]
            if resident:
                pa = resident[rnd.randrange(len(resident))]
                for extra in (IsModified(pa), ClearModify(pa), PageProtect(pa, 0)):
                    out.append(extra)
                    model.apply(extra)
                page_outs += 1
            idle = [p for p in model.user_pmaps() if p != last_pmap]
            if idle and rnd.random() < 0.25:
                out.append(Collect(idle[rnd.randrange(len(idle))]))
                collects += 1
        out.append(op)
        model.apply(op)
        last_pmap = getattr(op, "pmap", last_pmap)
    detail.update({"every": gap, "page_outs": page_outs, "collects": collects})
    return out


def shifted(ops: Sequence[Op], rnd: random.Random, detail: dict[str, Any]) -> list[Op]:
    """One or two pmaps' ops moved later as a block, pmap ids renumbered by create order."""
    creates = [i for i, op in enumerate(ops) if isinstance(op, Create)]
    if len(creates) < 2:
        detail["moved"] = []
        return list(ops)
    # pmap ids: the k-th create makes k+1; pmap 1 (the first process) stays put.
    movable = list(range(2, len(creates) + 1))
    moved = sorted(rnd.sample(movable, min(len(movable), rnd.randint(1, 2))))
    delay = {p: rnd.randint(1, max(1, len(ops) // 4)) for p in moved}
    owner: list[int | None] = []
    next_id = 1
    for op in ops:
        if isinstance(op, Create):
            owner.append(next_id)
            next_id += 1
        else:
            owner.append(getattr(op, "pmap", None))
    keys = [(i + delay[p] + 0.5 if p in delay else float(i)) for i, p in enumerate(owner)]
    order = sorted(range(len(ops)), key=lambda i: (keys[i], i))
    renumber: dict[int, int] = {}
    out: list[Op] = []
    for i in order:
        op = ops[i]
        if isinstance(op, Create):
            renumber[owner[i]] = len(renumber) + 1  # type: ignore[index]
            out.append(op)
        elif owner[i] is not None and owner[i] != 0:
            out.append(dataclasses.replace(op, pmap=renumber[owner[i]]))
        else:
            out.append(op)
    detail["moved"] = [{"pmap": p, "by_ops": delay[p]} for p in moved]
    return out
