"""``difftest streams generate`` and ``difftest streams stats``."""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import click

from difftest import streams
from difftest.cli_base import Context, cli, generator_options, pass_ctx, split_names  # noqa: F401
from difftest.coverage import BACKEND_FIELDS, DEPTH_FIELDS, coverage, merge_stats
from difftest.errors import EXIT_OK, BadInput
from difftest.machine import DEFAULT_PHYS_PAGES
from difftest.streams import Stream


@cli.group("streams")
def streams_group() -> None:
    """Make stream files with a registered generator, and measure how deep streams go."""


def _generator(ctx: Context, name: str):
    gens = ctx.registry.generators
    spec = gens.get(name)
    if spec is None:
        known = ", ".join(sorted(gens)) or "none"
        raise BadInput(f"unknown generator {name!r} (registered: {known})")
    return spec


def generate_stream(ctx: Context, name: str, seed: int, n_ops: int, phys_pages: int,
                    extra: Sequence[str] = ()) -> Stream:
    spec = _generator(ctx, name)
    stream = spec.generate(seed, n_ops, phys_pages, **generator_options(spec, extra))
    if not isinstance(stream, Stream):
        raise BadInput(f"generator {name!r} (plugin {spec.plugin}) returned {type(stream).__name__}, not a Stream")
    streams.validate_ops(stream.ops, stream.phys_pages)
    return stream


_GEN_OPTIONS = [
    click.option("--generator", "generator", default="random", show_default=True, metavar="NAME",
                 help="A registered generator."),
    click.option("--seed", type=int, default=None, help="The generator's seed."),
    click.option("--ops", "n_ops", type=click.IntRange(0), default=None, help="Ops to generate."),
    click.option("--phys-pages", type=click.IntRange(16, 1 << 20), default=DEFAULT_PHYS_PAGES,
                 show_default=True, help="Frames of physical memory (4 KiB each)."),
]


def _gen_options(fn):
    for option in reversed(_GEN_OPTIONS):
        fn = option(fn)
    return fn


# Generators' own options (``--trace-dir DIR``) pass through to the generator.
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@streams_group.command("generate", context_settings=_PASS_THROUGH)
@_gen_options
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="The stream file to write.")
@pass_ctx
def generate_cmd(ctx: Context, generator: str, seed: int | None, n_ops: int | None, phys_pages: int,
                 output: str) -> int:
    """Write one generated stream file (same generator, seed and ops: the same bytes).

    A generator's own options (``--trace-dir DIR`` for ``trace``) follow the others."""
    if seed is None or n_ops is None:
        raise BadInput("streams generate needs --seed and --ops")
    started = time.perf_counter()
    stream = generate_stream(ctx, generator, seed, n_ops, phys_pages, click.get_current_context().args)
    elapsed = time.perf_counter() - started
    streams.save(stream, output)
    rate = f", {len(stream) / elapsed:,.0f} ops/s" if elapsed > 0 and len(stream) else ""
    click.echo(f"{output}: {len(stream)} ops from {generator} seed {seed} ({elapsed:.2f} s{rate})")
    return EXIT_OK


@streams_group.command("stats")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@_gen_options
@click.option("--backends", "backends", multiple=True, metavar="A,B,...",
              help="Backends whose pools to measure (default: every one registered as a default).")
@click.option("--no-backends", is_flag=True, help="Only the stream statistics; run no backend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@pass_ctx
def stats_cmd(ctx: Context, files: tuple[str, ...], generator: str, seed: int | None, n_ops: int | None,
              phys_pages: int, backends: tuple[str, ...], no_backends: bool, as_json: bool) -> int:
    """Op mix, depth reached and PT frames per backend, for FILES or one generated stream."""
    loaded: list[tuple[str, Stream]] = []
    if files:
        if seed is not None or n_ops is not None:
            raise BadInput("give stream files or --seed/--ops, not both")
        loaded = [(path, streams.open_stream(path)) for path in files]  # ops read as they are used
    else:
        if seed is None or n_ops is None:
            raise BadInput("streams stats needs stream files, or --seed and --ops (with --generator)")
        loaded = [(f"{generator}:seed={seed}:ops={n_ops}", generate_stream(ctx, generator, seed, n_ops, phys_pages))]
    specs = [] if no_backends else _specs(ctx, backends)
    per_stream = [(name, coverage(stream, specs)) for name, stream in loaded]
    total = merge_stats([doc for _, doc in per_stream]) if len(per_stream) > 1 else per_stream[0][1]
    if as_json:
        doc: dict[str, Any] = {"format": "difftest.stats/1", "total": total}
        if len(per_stream) > 1:
            doc["streams"] = [{"name": name, **d} for name, d in per_stream]
        click.echo(json.dumps(doc, indent=2, allow_nan=False, default=str))
        return EXIT_OK
    click.echo(render_stats(total, [name for name, _ in per_stream]))
    return EXIT_OK


def _specs(ctx: Context, names: Sequence[str]):
    registry = ctx.registry
    wanted = split_names(names)
    if not wanted:
        defaults = getattr(registry, "default_backends", None)
        wanted = list(defaults() if callable(defaults) else defaults or sorted(registry.backends))
    unknown = [n for n in wanted if n not in registry.backends]
    if unknown:
        known = ", ".join(sorted(registry.backends)) or "none"
        raise BadInput(f"unknown backend {unknown[0]!r} (registered: {known})")
    return [registry.backends[n] for n in wanted]


def render_stats(doc: dict[str, Any], names: Sequence[str]) -> str:
    """Tables (tabulate ``simple``): op kinds, depth counters, per-backend pools."""
    from tabulate import tabulate

    out = []
    ops = doc.get("ops", 0)
    head = f"{len(names)} stream(s), {ops} ops" if len(names) > 1 else f"{names[0]}: {ops} ops"
    out.append(head + f", {doc.get('data_pages', 0)} data pages")
    kinds = doc.get("op_kinds", {})
    rows = [[k, n, f"{100.0 * n / ops:.1f}%" if ops else "-"]
            for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    out.append("")
    out.append(tabulate(rows, headers=["op", "count", "share"], tablefmt="simple"))
    depth = doc.get("depth", {})
    out.append("")
    out.append(tabulate([[k, depth.get(k, 0), DEPTH_FIELDS[k]] for k in DEPTH_FIELDS],
                        headers=["depth", "value", "meaning"], tablefmt="simple"))
    backends = doc.get("backends")
    if backends:
        fields = list(BACKEND_FIELDS)
        rows = [[name, *[b.get(f, 0) for f in fields], b.get("stopped") or "-"] for name, b in sorted(backends.items())]
        out.append("")
        out.append(tabulate(rows, headers=["backend", *fields, "stopped"], tablefmt="simple"))
    return "\n".join(out)
