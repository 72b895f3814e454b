"""The ``trace`` generator: imported real workloads and their seeded variants, through the
generator, the commands and a campaign."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from difftest import streams
from difftest.cli import main
from difftest.errors import EXIT_OK, EXIT_USAGE, BadInput
from difftest.harness import Harness
from difftest.legality import vm_legality_problems
from difftest.ops import ClearModify, Collect, Create, IsModified, PageProtect
from difftest.plugins import load_plugins
from strategies.strace import convert
from strategies.trace import generate_trace
from tests.cliutil import assert_one_line_error

DATA = Path(__file__).resolve().parent / "data" / "strace"
SEEDS = range(48)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traces")
    for log in sorted(DATA.glob("*.strace")):
        streams.save(convert(str(log), phys_pages=8192), out / f"{log.stem}.json")
    return out


@pytest.fixture(scope="module")
def generated(trace_dir):
    return {seed: generate_trace(seed, 0, 8192, str(trace_dir)) for seed in SEEDS}


def _source(trace_dir: Path, stream) -> streams.Stream:
    return streams.load(trace_dir / stream.origin["source"])


def test_same_seed_same_stream_and_every_variant_appears(trace_dir, generated):
    for seed in (0, 7, 13):
        again = generate_trace(seed, 0, 8192, str(trace_dir))
        assert streams.dumps(again) == streams.dumps(generated[seed])
    kinds = Counter(s.origin["variant"]["kind"] for s in generated.values())
    assert set(kinds) == {"recorded", "machine", "pressure", "shift"}
    assert {s.origin["source"] for s in generated.values()} == {
        "gcc-hello.json", "pipeline.json", "python-alloc.json"}


def test_every_variant_is_valid_and_vm_legal(generated):
    for seed, stream in generated.items():
        assert "fallback" not in stream.origin["variant"], seed
        streams.validate_ops(stream.ops, stream.phys_pages)
        assert vm_legality_problems(stream) == [], seed


def test_recorded_is_the_workload(trace_dir, generated):
    stream = next(s for s in generated.values() if s.origin["variant"]["kind"] == "recorded")
    source = _source(trace_dir, stream)
    assert list(stream.ops) == list(source.ops) and stream.phys_pages == source.phys_pages


def test_machine_renumbers_frames_only(trace_dir, generated):
    seen_sizes = set()
    for stream in generated.values():
        v = stream.origin["variant"]
        if v["kind"] != "machine":
            continue
        source = _source(trace_dir, stream)
        assert stream.phys_pages == v["phys_pages"]
        seen_sizes.add(v["page_table_frames"])
        assert [op.name for op in stream.ops] == [op.name for op in source.ops]
        # The frame map is one-to-one, and the data sit above the page-table frames.
        mapping: dict[int, int] = {}
        for new, old in zip(stream.ops, source.ops):
            if hasattr(old, "pa"):
                assert mapping.setdefault(old.pa, new.pa) == new.pa
                assert v["page_table_frames"] * 4096 <= new.pa < stream.phys_pages * 4096
        assert len(set(mapping.values())) == len(mapping) == v["data_frames"]
    assert 32 in seen_sizes and len(seen_sizes) >= 2  # the starved machine and another


def test_pressure_inserts_page_outs_and_collects_only(trace_dir, generated):
    pressured = [s for s in generated.values() if s.origin["variant"]["kind"] == "pressure"]
    assert any(s.origin["variant"]["collects"] for s in pressured)
    for stream in pressured:
        source = list(_source(trace_dir, stream).ops)
        ops = list(stream.ops)
        kept, i = [], 0
        while i < len(ops):
            if isinstance(ops[i], IsModified) and i + 2 < len(ops) and isinstance(ops[i + 2], PageProtect) \
                    and len(kept) < len(source) and ops[i] != source[len(kept)]:
                pa = ops[i].pa
                assert ops[i + 1] == ClearModify(pa) and ops[i + 2] == PageProtect(pa, 0)
                i += 3
            elif isinstance(ops[i], Collect) and (len(kept) == len(source) or ops[i] != source[len(kept)]):
                i += 1
            else:
                kept.append(ops[i])
                i += 1
        assert kept == source  # the workload itself, in order, with the pager's ops between


def test_shift_keeps_each_pmaps_order(trace_dir, generated):
    shifted = [s for s in generated.values() if s.origin["variant"]["kind"] == "shift" and s.origin["variant"]["moved"]]
    assert shifted
    for stream in shifted:
        source = _source(trace_dir, stream)

        def per_pmap(ops):
            lanes: dict[int, list] = {}
            next_id = 1
            order = []
            for op in ops:
                if isinstance(op, Create):
                    lanes[next_id] = ["create"]
                    order.append(next_id)
                    next_id += 1
                elif hasattr(op, "pmap"):
                    lanes[op.pmap].append({k: getattr(op, k) for k in op.__dataclass_fields__ if k != "pmap"} | {"op": op.name})
            return [lanes[p] for p in order]

        # The same per-process op sequences, as a multiset (ids are renumbered by create order).
        assert sorted(map(repr, per_pmap(stream.ops))) == sorted(map(repr, per_pmap(source.ops)))
        assert list(stream.ops) != list(source.ops)
        assert Counter(op.name for op in stream.ops) == Counter(op.name for op in source.ops)


def test_a_starved_machine_shows_pr_5666_on_a_real_workload(generated):
    """With 32 frames for page tables, the leaky pmap runs out where the others do not."""
    registry = load_plugins().registry
    harness = Harness.from_registry(registry, ["alpha-ref", "arm32-leaky", "arm32-refcount"])
    starved = [s for s in generated.values() if s.origin["variant"].get("page_table_frames") == 32]
    stopped = []
    for stream in starved:
        run = harness.run(stream)
        assert set(run.stopped) <= {"arm32-leaky"}
        assert {d.backend for d in run.divergences} <= {"arm32-leaky"}
        stopped += run.stopped.values()
    assert any("out of memory" in why for why in stopped)


def test_n_ops_cuts_the_workload(trace_dir):
    stream = generate_trace(1, 100, 8192, str(trace_dir))
    assert len(stream) <= 100 + 3 * 2 + 1  # a pressure variant may add a page-out or a collect


def test_without_a_trace_dir(tmp_path):
    with pytest.raises(BadInput, match="needs --trace-dir"):
        generate_trace(1, 0, 8192)
    with pytest.raises(BadInput, match="no stream files"):
        generate_trace(1, 0, 8192, str(tmp_path))


def test_generator_options_through_the_commands(trace_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["streams", "generate", "--generator", "trace", "--seed", "3", "--ops", "0",
                 "--trace-dir", str(trace_dir), "-o", str(out)]) == EXIT_OK
    assert streams.load(out).origin["generator"] == "trace"
    assert main(["streams", "generate", "--generator", "trace", "--seed", "3", "--ops", "0",
                 f"--trace-dir={trace_dir}", "-o", str(tmp_path / "t.json")]) == EXIT_OK
    assert (tmp_path / "t.json").read_bytes() == out.read_bytes()
    capsys.readouterr()
    assert main(["streams", "generate", "--seed", "3", "--ops", "10", "--trace-dir", str(trace_dir),
                 "-o", str(out)]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "no such option: --trace-dir", "'random'")
    assert main(["fuzz", "--generator", "trace", "--streams", "1", "--trace-dri", "x"]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "no such option: --trace-dri", "--trace-dir")
    assert main(["fuzz", "--generator", "trace", "--streams", "1", "--out", str(tmp_path / "c")]) == EXIT_USAGE
    assert "needs --trace-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_campaign_on_real_workloads(trace_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fuzz", "--generator", "trace", "--trace-dir", str(trace_dir), "--streams", "6",
            "--seed", "5", "--workers", "1", "--shrink-budget", "2", "--out", str(out), "--json"]
    assert main(args) == EXIT_OK  # the leak of arm32-leaky is known (the built-in baseline)
    report = json.loads(capsys.readouterr().out)
    assert report["campaign"]["generator"] == "trace"
    assert report["campaign"]["generator_options"] == {"trace_dir": str(trace_dir)}
    assert report["streams"] == 6
    assert {e["backend"] for e in report["divergences"]} == {"arm32-leaky"}
    assert all(e["known"] for e in report["divergences"])
