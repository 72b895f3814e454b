"""The signature-preserving shrinker (difftest.shrink) and ``difftest shrink``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import difftest.cli_shrink  # noqa: F401  (registers ``difftest shrink`` on the CLI group)
from cliutil import CONSOLE_SCRIPT, run_difftest
from difftest import streams
from difftest.cli import main
from difftest.errors import EXIT_NOTHING, EXIT_OK, EXIT_USAGE, BadInput
from difftest.harness import Harness
from difftest.legality import vm_legality_problems
from difftest.machine import KERNEL_MIN
from difftest.ops import Create, Destroy, Enter, Extract, KEnter, KRemove, PageProtect, Remove
from difftest.plugins import PluginHost
from difftest.shrink import ShrinkResult, delete_ops, merge_pmaps, remap_addresses, shrink
from difftest.streams import Stream, make_stream, validate_ops
from strategies.seeded import generate

PLUGINS = Path(__file__).parent / "plugins"
BUILTINS = ["alpha-ref", "arm32-leaky", "arm32-refcount"]
LEAK = "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
EXTRACT_BUG = "result:shrinkbug-extract:extract:result:extract-mismatch"
WIREDPP_BUG = "accounting:shrinkbug-wiredpp:page_protect:resident_count:count-high"
DESTROY_BUG = "resource:shrinkbug-destroy:destroy:pt_frames:pt-frames-held>needed"
RW = 3


@pytest.fixture(scope="module")
def registry():
    sys.path.insert(0, str(PLUGINS))
    try:
        host = PluginHost()
        host.load(["shrink_bugs"])
        yield host.registry
    finally:
        sys.path.remove(str(PLUGINS))


class LegalitySpy:
    """A harness that asserts every stream the shrinker runs is valid and VM-legal."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.runs = 0

    def run(self, stream, **kwargs):
        validate_ops(stream.ops, stream.phys_pages)
        problems = vm_legality_problems(stream)
        assert not problems, problems
        self.runs += 1
        return self.harness.run(stream, **kwargs)


def first_seed_showing(harness: Harness, signatures: set[str], n_ops: int, seeds=range(40)):
    """The first seed whose ``random`` stream shows every signature (searched, not assumed)."""
    for seed in seeds:
        stream = generate(seed, n_ops)
        if signatures <= harness.run(stream).signatures():
            return stream
    pytest.fail(f"no seed in {seeds} shows {sorted(signatures)}")


def names(stream: Stream) -> list[str]:
    return [op.name for op in stream.ops]


# -- (a) the leak, from 10,000 ops to three ------------------------------------------------------


def test_leak_in_a_10k_stream_shrinks_to_three_ops(registry):
    harness = Harness.from_registry(registry, BUILTINS, "alpha-ref")
    stream = first_seed_showing(harness, {LEAK}, 10_000)
    assert len(stream) == 10_000
    started = time.perf_counter()
    result = shrink(stream, harness, LEAK, time_budget=60.0)
    wall = time.perf_counter() - started
    print(f"\nshrink {stream.origin['generator']} seed {stream.origin['seed']} ({len(stream)} ops) "
          f"-> {len(result.stream)} ops in {wall:.2f} s, {result.runs} runs, {result.reductions} reductions")
    assert isinstance(result, ShrinkResult) and result.signature == LEAK
    assert names(result.stream) == ["create", "enter", "remove"]
    assert LEAK in harness.run(result.stream).signatures()
    assert not vm_legality_problems(result.stream)
    assert result.complete and result.original_ops == 10_000
    origin = result.stream.origin
    assert origin["shrunk_from"] == stream.origin and origin["signature"] == LEAK
    assert origin["original_ops"] == 10_000
    # the simplest values: pmap 1, one page at a low address, a read-only non-wired mapping
    create, enter, remove = result.stream.ops
    assert enter.pmap == 1 and not enter.wired and not enter.canfail and enter.access == 0
    assert (remove.sva, remove.eva) == (enter.va, enter.va + 4096)
    assert enter.va == 0x00400000 and enter.pa == 0x1000
    assert wall < 30


# -- (b) never slipping to another signature ---------------------------------------------------------


def test_each_signature_keeps_its_own_bug(registry):
    harness = Harness.from_registry(registry, ["alpha-ref", "arm32-leaky", "shrinkbug-extract"], "alpha-ref")
    stream = first_seed_showing(harness, {LEAK, EXTRACT_BUG}, 2000)
    leak = shrink(stream, harness, LEAK, time_budget=30)
    bug = shrink(stream, harness, EXTRACT_BUG, time_budget=30)
    assert LEAK in harness.run(leak.stream).signatures()
    assert EXTRACT_BUG in harness.run(bug.stream).signatures()
    assert names(leak.stream) == ["create", "enter", "remove"]
    # the extract bug needs two mappings in one pmap, then an extract: any shorter stream
    # shows only the leak (or nothing), which a "some divergence" shrinker would take
    assert len(bug.stream) == 4 and names(bug.stream)[-1] == "extract"
    assert sum(1 for op in bug.stream.ops if isinstance(op, Enter)) == 2
    assert leak.stream.ops != bug.stream.ops


def test_two_backends_two_bugs_in_one_stream(registry):
    """Three signatures of three backends in one stream: each shrinks to a stream of its own."""
    harness = Harness.from_registry(registry, ["alpha-ref", "arm32-leaky", "shrinkbug-extract",
                                               "shrinkbug-destroy"], "alpha-ref")
    wanted = {LEAK, EXTRACT_BUG, DESTROY_BUG}
    stream = first_seed_showing(harness, wanted, 2000)
    for sig in sorted(wanted):
        result = shrink(stream, harness, sig, time_budget=30)
        assert sig in harness.run(result.stream).signatures(), sig
        assert result.stream.origin["signature"] == sig


# -- (c) legality at every step -------------------------------------------------------------------------


def test_revoke_of_a_wired_page_is_never_the_reproducer(registry):
    """The bug's shortest trigger is enter(wired) + page_protect(none): illegal.  Every
    stream the shrinker runs is legal, and the result keeps the unwire."""
    harness = Harness.from_registry(registry, ["alpha-ref", "shrinkbug-wiredpp"], "alpha-ref")
    stream = first_seed_showing(harness, {WIREDPP_BUG}, 2000)
    spy = LegalitySpy(harness)
    result = shrink(stream, spy, WIREDPP_BUG, time_budget=30)
    assert spy.runs == result.runs > 3
    assert names(result.stream) == ["create", "enter", "unwire", "page_protect"]
    assert result.stream.ops[1].wired and result.stream.ops[3].prot == 0
    assert WIREDPP_BUG in harness.run(result.stream).signatures()
    # without the VM rules the shrinker would have gone one step further, to an illegal stream
    loose = shrink(stream, harness, WIREDPP_BUG, time_budget=30, legal=None)
    assert names(loose.stream) == ["create", "enter", "page_protect"]
    assert vm_legality_problems(loose.stream)


def test_destroy_with_mappings_left_is_never_the_reproducer(registry):
    harness = Harness.from_registry(registry, ["alpha-ref", "shrinkbug-destroy"], "alpha-ref")
    stream = first_seed_showing(harness, {DESTROY_BUG}, 2000)
    spy = LegalitySpy(harness)
    result = shrink(stream, spy, DESTROY_BUG, time_budget=30)
    assert names(result.stream) == ["create", "enter", "remove", "destroy"]
    remove = result.stream.ops[2]
    assert remove.sva <= result.stream.ops[1].va < remove.eva
    loose = shrink(stream, harness, DESTROY_BUG, time_budget=30, legal=None)
    assert names(loose.stream) == ["create", "enter", "destroy"]


def test_a_custom_legality_check_is_honoured(registry):
    """legal= is any callable returning problems: here, 'never a page_protect'."""
    harness = Harness.from_registry(registry, BUILTINS, "alpha-ref")
    stream = first_seed_showing(harness, {LEAK}, 2000)

    def no_page_protect(ops):
        return [f"op {i}" for i, op in enumerate(ops) if isinstance(op, PageProtect)]

    stream = stream.replace([op for op in stream.ops if not isinstance(op, PageProtect)])
    if vm_legality_problems(stream) or LEAK not in harness.run(stream).signatures():
        pytest.skip("dropping the page_protects changed the stream too much")
    result = shrink(stream, harness, LEAK, time_budget=20, legal=no_page_protect)
    assert not no_page_protect(result.stream.ops)


# -- budget and bad input -----------------------------------------------------------------------------------


def test_zero_budget_returns_the_best_so_far(registry):
    harness = Harness.from_registry(registry, BUILTINS, "alpha-ref")
    stream = first_seed_showing(harness, {LEAK}, 3000)
    result = shrink(stream, harness, LEAK, time_budget=0)
    assert not result.complete
    assert len(result.stream) <= len(stream)
    assert LEAK in harness.run(result.stream).signatures()


def test_bad_input(registry):
    harness = Harness.from_registry(registry, BUILTINS, "alpha-ref")
    quiet = make_stream([Create(), Enter(1, 0x400000, 0x1000, RW, 0, False, False)])
    with pytest.raises(BadInput, match="does not show"):
        shrink(quiet, harness, LEAK)
    illegal = make_stream([Create(), Enter(1, 0x400000, 0x1000, RW, 0, False, False), Destroy(1)])
    with pytest.raises(BadInput, match="destroy-nonempty"):
        shrink(illegal, harness, LEAK)


# -- the transformations ------------------------------------------------------------------------------------


def e(pmap, va=0x400000, pa=0x1000):
    return Enter(pmap, va, pa, RW, 0, False, False)


def test_deleting_a_create_renumbers_later_pmaps():
    ops = [Create(), Create(), e(1), e(2), Create(), e(3), Remove(3, 0x400000, 0x401000), Extract(2, 0x400000)]
    out = delete_ops(ops, [1])  # the create of pmap 2
    assert out == [Create(), e(1), Create(), e(2), Remove(2, 0x400000, 0x401000)]
    validate_ops(out, 8192)
    assert delete_ops(ops, [2, 3]) == [Create(), Create(), Create(), e(3), Remove(3, 0x400000, 0x401000),
                                       Extract(2, 0x400000)]


def test_merging_pmaps():
    ops = [Create(), Create(), e(1), e(2, 0x800000), Destroy(2), Create(), e(3)]
    merged = merge_pmaps(ops, 2, 1)
    assert merged == [Create(), e(1), e(1, 0x800000), Create(), e(2)]
    assert merge_pmaps(ops, 7, 1) is None


def test_address_maps_keep_ranges_covering_the_same_pages():
    k = KERNEL_MIN + 0x01000000
    ops = [Create(), e(1, 0x20000000), e(1, 0x20400000), Remove(1, 0x20000000, 0x20401000),
           KEnter(k, 0x1000, RW), KRemove(k, 0x2000)]
    maps = {"u": {0x20000000: 0x00400000, 0x20400000: 0x00800000}, "k": {k: KERNEL_MIN, k + 0x1000: KERNEL_MIN + 0x1000}}
    out = remap_addresses(ops, maps)
    assert out[3] == Remove(1, 0x00400000, 0x00801000)
    assert out[4] == KEnter(KERNEL_MIN, 0x1000, RW) and out[5] == KRemove(KERNEL_MIN, 0x2000)


# -- (d) the command ------------------------------------------------------------------------------------------------


def test_cli_shrink_writes_a_stream_with_its_origin(tmp_path, capsys):
    src = tmp_path / "long.json"
    streams.save(generate(0, 3000), src)
    out = tmp_path / "small.json"
    assert main(["shrink", str(src), "-o", str(out), "--budget", "30"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "shrinking for" in captured.err
    small = streams.load(out)
    sig = small.origin["signature"]
    assert small.origin["shrunk_from"]["seed"] == 0 and small.origin["original_ops"] == 3000
    assert sig in captured.out and f"{len(small)} ops (from 3000)" in captured.out
    assert len(small) <= 3 and not vm_legality_problems(small)
    # an explicit signature
    out2 = tmp_path / "leak.json"
    assert main(["shrink", str(src), "-o", str(out2), "--signature", LEAK, "-q",
                 "--backends", "alpha-ref,arm32-leaky"]) == EXIT_OK
    assert streams.load(out2).origin["signature"] == LEAK
    assert capsys.readouterr().err == ""


def test_cli_shrink_exit_codes(tmp_path, capsys):
    quiet = tmp_path / "quiet.json"
    streams.save(make_stream([Create(), Enter(1, 0x400000, 0x1000, RW, 0, False, False),
                              Extract(1, 0x400000)]), quiet)
    out = tmp_path / "out.json"
    assert main(["shrink", str(quiet), "-o", str(out)]) == EXIT_NOTHING
    assert "no divergence" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "difftest.stream/1", "ops": [{"op": "fly"}]}')
    assert main(["shrink", str(bad), "-o", str(out)]) == EXIT_USAGE
    assert "unknown op 'fly'" in capsys.readouterr().err
    src = tmp_path / "long.json"
    streams.save(generate(0, 1000), src)
    assert main(["shrink", str(src), "-o", str(out), "--signature", "crash:nobody:enter:x:y"]) == EXIT_USAGE
    assert "does not show crash:nobody" in capsys.readouterr().err
    illegal = tmp_path / "illegal.json"
    streams.save(make_stream([Create(), Enter(1, 0x400000, 0x1000, RW, 0, True, False), PageProtect(0x1000, 0),
                              Remove(1, 0x400000, 0x401000)]), illegal)
    assert main(["shrink", str(illegal), "-o", str(out)]) == EXIT_USAGE
    assert "--no-vm-legality" in capsys.readouterr().err
    assert main(["shrink", str(illegal), "-o", str(out), "--no-vm-legality"]) == EXIT_OK
    assert main(["shrink", str(src), "-o", str(out), "--backends", "nope"]) == EXIT_USAGE


def test_cli_shrink_in_a_child_process(tmp_path):
    src = tmp_path / "s.json"
    streams.save(generate(2, 2000), src)
    out = tmp_path / "o.json"
    proc = run_difftest("shrink", str(src), "-o", str(out), "-q",
                        command=(sys.executable, "-c", "import difftest.cli_shrink; " + CONSOLE_SCRIPT))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "difftest.stream/1" and doc["origin"]["signature"]
    assert doc["origin"]["shrunk_from"]["generator"] == "random"
