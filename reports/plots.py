"""The HTML report's plots: matplotlib on the Agg canvas (no pyplot, no GUI, no global
backend switch), saved as SVG text for inlining.

The SVG keeps its text as ``<text>`` (``svg.fonttype = none``, escaped by matplotlib);
the XML prolog, the DOCTYPE (which names a URL) and the metadata block are dropped, and
ids are salted per plot so that several SVGs share one HTML page without clashing.
Labels from plugins (backend names) are made safe for matplotlib: ``$`` would start
mathtext, and a leading ``_`` hides a legend entry.
"""

from __future__ import annotations

import io
import re
from typing import Any, Sequence

WIDTH = 9.0  # inches at 100 dpi: 900 px
MAX_POINTS = 3000  # per line; longer series keep each bucket's maximum

_SVG_START = re.compile(r"<svg\b")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::xlink)?="http://www\.w3\.org/[^"]*"')
_TAG = re.compile(r"<[^<>]+>")
_UNSAFE = re.compile(r"<\s*script|<\s*foreignObject|\son[a-z]+\s*=|javascript:|(?:href|src)\s*=\s*[\"'](?!#)", re.I)


def label(text: Any) -> str:
    text = " ".join(str(text).split()).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _figure(height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_svg(fig: Any, name: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"difftest-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    m = _SVG_START.search(text)
    text = _METADATA.sub("", text[m.start():] if m else text)
    # Inline SVG in HTML needs no namespace declarations (the parser supplies them), and
    # without them the page names no URL at all.
    text = _XMLNS.sub("", text, count=2)
    # Unique ids per plot: matplotlib's are hashes, equal across figures for equal content.
    # Only inside tags: text content has its < and > escaped, so it is never rewritten.
    text = _TAG.sub(lambda tag: _salt_ids(tag.group(), name), text)
    if any(_UNSAFE.search(tag.group()) for tag in _TAG.finditer(text)):
        raise ValueError("the plot's SVG holds active content")  # never expected from matplotlib
    return text.strip()


def _salt_ids(tag: str, name: str) -> str:
    tag = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{name}-{m.group(1)}"', tag)
    tag = re.sub(r'url\(#([^)]+)\)', lambda m: f'url(#{name}-{m.group(1)})', tag)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{name}-{m.group(1)}"', tag)


def _decimate(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """(x, y) with at most MAX_POINTS points: each bucket's maximum (peaks survive)."""
    n = len(values)
    if n <= MAX_POINTS:
        return list(range(n)), list(values)
    step = -(-n // MAX_POINTS)
    xs, ys = [], []
    for start in range(0, n, step):
        chunk = values[start:start + step]
        xs.append(start)
        ys.append(max(chunk))
    return xs, ys


def _bucket_sums(values: Sequence[int], buckets: int = 200) -> tuple[list[int], list[int], int]:
    n = len(values)
    step = max(1, -(-n // buckets))
    xs, ys = [], []
    for start in range(0, n, step):
        xs.append(start)
        ys.append(sum(values[start:start + step]))
    return xs, ys, step


def _extend(xs: list[int], ys: list[int], n: int) -> tuple[list[int], list[int]]:
    """Repeat the last value at x = n so that steps-post draws the last op's step too."""
    return (xs + [n], ys + [ys[-1]]) if ys else (xs, ys)


def _scaled(xs: list[int], step: int) -> list[int]:
    """Bucket indices as op indices (buckets of ``step`` ops)."""
    return xs if step == 1 else [x * step for x in xs]


def frames_plot(traced: Any, name: str, title: str, marks: Sequence[int] = ()) -> str:
    """PT + L1 frames held (solid) and needed (dashed) by user pmaps, per backend, after
    each op; below, the frames held beyond what is needed (the leak).  Lines of backends
    that agree overlap: the earlier backends are drawn wider underneath.

    ``traced``: a ``reports.analysis.Recorded`` (a point per bucket of ``traced.step`` ops)."""
    fig = _figure(4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    colors = _colors()
    n = traced.length
    step = traced.step
    short = n <= 60
    count = len(traced.backends)
    for i, b in enumerate(traced.backends):
        c = colors[i % len(colors)]
        width = 1.4 + min(1.3 * (count - 1 - i), 4.0)
        # A backend that died stops where it died (one step past its last op), not at n.
        end = n if b not in traced.died else traced.died[b] + 1
        for ax, values, style in ((top, traced.held[b], dict(lw=width, alpha=0.85, label=label(f"{b} held"),
                                                              solid_capstyle="butt")),
                                  (top, traced.needed[b], dict(lw=1.1, ls="--", label=label(f"{b} needed"))),
                                  (bottom, traced.over(b), dict(lw=width, alpha=0.85, label=label(b),
                                                                solid_capstyle="butt"))):
            xs, ys = _decimate(values)
            xs, ys = _extend(_scaled(xs, step), ys, end)
            ax.plot(xs, ys, drawstyle="steps-post", color=c, **style)
    for m in marks:
        for ax in (top, bottom):
            ax.axvline(m + 0.5, color="#c0392b", lw=0.9, ls=":", alpha=0.8)
    for i, b in enumerate(traced.backends):
        at = traced.died.get(b)
        if at is None or not traced.held[b]:
            continue
        # Where the backend ran out of memory: its line ends in a cross, labelled.
        y = traced.last_held(b)
        top.plot([at], [y], marker="X", ms=11, color=colors[i % len(colors)], mec="black", mew=0.8, ls="none",
                 zorder=5, label=label(f"{b} out of memory (op {at})"))
        top.annotate(label(f"{b}: out of memory at op {at}"), (at, y), textcoords="offset points", xytext=(10, -3),
                     ha="left", va="top", fontsize=8, color="#922b21")
    top.set_ylabel("frames")
    bottom.set_ylabel("held − needed")
    bottom.set_xlabel("after op" if short else "op index")
    top.set_title(label(title), fontsize=10)
    if short:
        bottom.set_xticks(range(n))
    bottom.set_xlim(0, max(n, 1))
    from matplotlib.ticker import MaxNLocator

    for ax in (top, bottom):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, -0.5), max(hi, 1.5))  # all zeros: still whole-number ticks
        ax.grid(alpha=0.3)
    top.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return to_svg(fig, name)


def freed_plot(traced: Any, name: str, title: str) -> str:
    """Frames freed per op (summed over buckets of ops when long), and the running total.
    ``traced`` as for ``frames_plot``."""
    fig = _figure(4.4)
    top, bottom = fig.subplots(2, 1, sharex=True)
    colors = _colors()
    per = traced.step
    n = traced.length
    for i, b in enumerate(traced.backends):
        c = colors[i % len(colors)]
        xs, ys, inner = _bucket_sums(traced.freed[b])
        per = inner * traced.step
        top.plot(_scaled(xs, traced.step), ys, drawstyle="steps-post", color=c, lw=1.2, label=label(b))
        total, running = 0, []
        for v in traced.freed[b]:
            total += v
            running.append(total)
        xs, ys = _decimate(running)
        # A bucket's running total holds after its last op.
        ends = xs if traced.step == 1 else [min((x + 1) * traced.step, n) - 1 for x in xs]
        bottom.plot(ends, ys, color=c, lw=1.6, label=label(b))
    from matplotlib.ticker import MaxNLocator

    for ax in (top, bottom):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("freed per op" if per == 1 else f"freed per {per} ops")
    bottom.set_ylabel("freed, total")
    bottom.set_xlabel("op index")
    top.set_title(label(title), fontsize=10)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return to_svg(fig, name)


def timeline_plot(first_hits: Sequence[dict[str, Any]], known: dict[str, bool], name: str) -> str:
    """Distinct signatures found over campaign time (new and known)."""
    fig = _figure(3.0)
    ax = fig.add_subplot()
    xs = [0.0] + [float(h.get("elapsed") or 0.0) for h in first_hits]
    ys = list(range(len(xs)))
    ax.plot(xs, ys, drawstyle="steps-post", color="#34495e", lw=1.5)
    for flag, color, text in ((False, "#c0392b", "new"), (True, "#7f8c8d", "known")):
        pts = [(float(h.get("elapsed") or 0.0), i + 1) for i, h in enumerate(first_hits)
               if bool(known.get(h.get("signature"))) == flag]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, zorder=3, s=28, label=text)
    ax.set_xlabel("campaign time (s)")
    ax.set_ylabel("signatures found")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if first_hits:
        ax.legend(fontsize=8, loc="lower right")
    return to_svg(fig, name)


def coverage_plot(op_kinds: dict[str, int], depth: dict[str, int], name: str) -> str:
    """Op kinds generated, and the depth counters reached (log scale)."""
    have_depth = any(v > 0 for v in depth.values())
    rows = max(len(op_kinds), len(depth) if have_depth else 0, 4)
    fig = _figure(max(2.6, 0.2 * rows + 1.0))
    axes = fig.subplots(1, 2 if have_depth else 1, squeeze=False)[0]
    kinds = sorted(op_kinds.items(), key=lambda kv: kv[1])
    axes[0].barh([label(k) for k, _ in kinds], [v for _, v in kinds], color="#2e86c1")
    axes[0].set_title("op kinds generated", fontsize=10)
    axes[0].set_xlabel("ops")
    axes[0].tick_params(axis="y", labelsize=8)
    if have_depth:
        items = [(k, v) for k, v in depth.items()]
        axes[1].barh([label(k) for k, _ in items], [max(v, 0) for _, v in items], color="#27ae60")
        axes[1].set_xscale("symlog", linthresh=1)
        axes[1].set_title("depth reached", fontsize=10)
        axes[1].tick_params(axis="y", labelsize=8)
        axes[1].invert_yaxis()
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    return to_svg(fig, name)


def _colors() -> list[str]:
    return ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
