"""Coverage features (observed from outside the backends), the feedback pool and its
mutants, health checks, and the test-only bugs only a stream that reaches a state shows."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from cliutil import clean_env, run_difftest
from difftest.features import CoverageTally, decode_bits, encode_bits, run_features, stream_features
from difftest.feedback import WINDOW, FeedbackPool, Recipe, UnitScheduler, build_stream, mutate
from difftest.harness import Harness
from difftest.legality import legal_stream_problem
from difftest.machine import PhysPool, Tag
from difftest.ops import Create, Destroy, Enter, KEnter, Remove
from difftest.plugins import PluginHost
from difftest.streams import Stream
from strategies.pager import generate_pager
from strategies.seeded import generate

PLUGINS = Path(__file__).parent / "plugins"
M = 1 << 20


@pytest.fixture(scope="module")
def host():
    h = PluginHost()
    h.load()
    return h


def features_of(host, stream: Stream, backends=("alpha-ref", "arm32-refcount")) -> set[str]:
    harness = Harness.from_registry(host.registry, list(backends), record_calls=True)
    result = harness.run(stream)
    assert result.divergences == []
    return run_features(result.calls, stream)


# -- features ---------------------------------------------------------------------------------------


def test_features_of_a_hand_made_stream(host):
    ops = (KEnter(0xF2000000, 0x12000, 3),
           Create(), Enter(1, 4 * M, 0x10000, 3), Enter(1, 4 * M + 4096, 0x10000, 3),
           Enter(1, 8 * M, 0x11000, 3, canfail=True),
           Remove(1, 4 * M, 4 * M + 8192), Remove(1, 8 * M, 8 * M + 4096), Destroy(1))
    # 10 free frames.  arm32: 4 (kernel L1) + 1 (kernel PT) + 4 (pmap 1's L1) + 1 (the PT
    # page at 4 MiB): none left for the one at 8 MiB, ENOMEM.  alpha: 1 + 2 (kernel L2, L3)
    # + 3 (pmap 1's L1, L2, L3) + 1 (the L3 at 8 MiB): 3 left.
    stream = Stream(ops, 8192, {}, free_frames=10)
    f = features_of(host, stream)
    assert {"alpha-ref|enter|OK|pt+2l1+1", "alpha-ref|enter|OK|", "alpha-ref|enter|OK|pt+1",
            "alpha-ref|remove||pt-1", "alpha-ref|remove||pt-2l1-1",  # the last remove cascades up
            "alpha-ref|kenter_pa||pt+2", "alpha-ref|kernel-pt-growth",
            "arm32-refcount|create||l1+4+", "arm32-refcount|enter|OK|pt+1", "arm32-refcount|enter|ENOMEM|",
            "arm32-refcount|remove||pt-1", "arm32-refcount|destroy||l1-4+",
            "arm32-refcount|pool-empty", "alpha-ref|pool-low"} <= f
    assert "alpha-ref|enter|OK|#2" not in f and "alpha-ref|enter|OK|#1" in f  # hit counts
    assert {"health|enomem", "health|pt-freed", "health|kernel-mapping", "health|exit-with-mappings",
            "stream|pressure", "stream|kenters"} <= f
    assert "health|shared-3" not in f  # the page at 0x10000 has two mappings, not three
    assert "health|shared-3" in stream_features(Stream(ops[:4] + (Enter(1, 12 * M, 0x10000, 1),)))


def test_the_tally_journals_compactly_and_replays_to_the_same_counts():
    tally, again = CoverageTally(), CoverageTally()
    entries = [tally.commit(["b", "a"]), tally.commit(["c", "a"], mutant=True), tally.commit([])]
    assert entries[0] == {"features_new": ["a", "b"], "fbits": "Aw=="}  # bits 0 and 1
    assert entries[1] == {"features_new": ["c"], "fbits": "BQ=="}  # bits 0 and 2
    assert entries[2] == {"fbits": ""}
    assert decode_bits(encode_bits([0, 9, 700])) == [0, 9, 700]
    for e, parent in zip(entries, (None, 0, None)):
        again.replay({**e, "parent": parent})
    assert again.streams == tally.streams == {"a": 2, "b": 1, "c": 1}
    assert again.mutants == tally.mutants == 1
    report = tally.to_report(3)
    assert report["distinct"] == 3 and [h["streams"] for h in report["health"]] == [0] * 5
    assert all(h["hint"].startswith("--generator") for h in report["health"])


# -- the feedback pool -----------------------------------------------------------------------------


def test_recipes_see_only_streams_before_the_window_and_replay_identically():
    pool = FeedbackPool(seed=3)
    recipes = []
    for k in range(120):
        assert pool.ready(k) or k > WINDOW
        recipes.append(pool.recipe_for(k))
        pool.commit(k, [f"f{k % 7}", f"g{k}"] if k % 5 == 0 else [f"f{k % 7}"])
    assert all(r.parent is None for r in recipes[: WINDOW + 1])  # nothing committed before the window
    mutants = [r for r in recipes if r.parent is not None]
    assert mutants and all(r.parent.k < r.k - WINDOW for r in mutants)
    # the same commits replayed from journal fields give the same recipes after them
    again = FeedbackPool(seed=3)
    for k, r in enumerate(recipes):
        feats = [f"f{k % 7}", f"g{k}"] if k % 5 == 0 else [f"f{k % 7}"]
        again.replay(k, r.journal(), feats)
    assert [again.recipe_for(k) for k in range(120, 160)] == [pool.recipe_for(k) for k in range(120, 160)]


def test_the_scheduler_runs_fresh_streams_past_held_candidates():
    pool = FeedbackPool(seed=1)
    sched = UnitScheduler(iter(range(60)), pool, lookahead=3)
    first = []
    while (k := sched.next()) is not None:
        first.append(k)
    # nothing is committed: every stream up to the window goes, then fresh ones only, until
    # three candidates are held
    assert first[: WINDOW + 1] == list(range(WINDOW + 1))
    assert all(not pool.candidate(k) for k in first[WINDOW + 1:])
    assert len(sched.held) == 3 and all(pool.candidate(k) and k > WINDOW for k in sched.held)
    assert sched.holds_below(sched.held[0] + 1) and not sched.holds_below(sched.held[0])
    h0, h1 = sched.held[0], sched.held[1]
    for k in range(h0 - WINDOW):  # commit in k order what the first held one waits for
        pool.recipe_for(k)
        pool.commit(k, [f"f{k}"])
    assert sched.next() == h0 and sched.held[0] == h1  # the first held one is ready now
    sched.stop()  # the budget is over: h1 is not run, nothing after it is committed
    assert sched.finished() and sched.cutoff == h1 and sched.beyond(h1 + 1) and not sched.beyond(h1)


@pytest.mark.parametrize("make", [generate, generate_pager])
def test_mutants_are_vm_legal_and_no_longer_than_asked(make):
    parent, donor = make(1, 600), make(2, 600)
    for i in range(60):
        child = mutate(parent, donor if i % 2 else None, random.Random(i), 600)
        assert len(child) <= 600
        assert legal_stream_problem(child) is None
        parent = child if i % 3 == 0 else parent  # mutants of mutants too


def test_build_stream_rebuilds_a_chain_from_its_fresh_root():
    def fresh(k):
        return generate(k, 300)

    chain = Recipe(9, Recipe(5, Recipe(1)), donor=2)
    a = build_stream(chain, fresh, 300, seed=4)
    b = build_stream(chain, fresh, 300, seed=4, key="memo")
    assert a.ops == b.ops and legal_stream_problem(a) is None
    assert a.origin["feedback"] == {"k": 9, "parent": 5, "donor": 2, "depth": 2}
    assert a.origin["root"]["generator"] == "random"


# -- campaigns ---------------------------------------------------------------------------------------


def fuzz_json(tmp_path: Path, name: str, *args: str) -> dict:
    proc = run_difftest("-p", "reach_bugs", "fuzz", "--no-progress", "--json", "--out", str(tmp_path / name),
                        "--shrink-budget", "0", *args, env=clean_env([PLUGINS]), cwd=tmp_path, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_feedback_campaign_is_the_same_at_any_worker_count_and_reports_its_coverage(tmp_path):
    args = ("--streams", str(WINDOW + 14), "--seed", "11", "--ops-per-stream", "250")
    one = fuzz_json(tmp_path, "w1", *args, "--workers", "1")
    two = fuzz_json(tmp_path, "w2", *args, "--workers", "2")
    one.pop("timing"), two.pop("timing")
    assert one == two
    cov = one["coverage"]
    assert one["campaign"]["feedback"] is True and cov["mutants"] > 0
    assert cov["distinct"] == len(cov["features"]) > 100
    assert [h["feature"] for h in cov["health"]] == ["enomem", "pt-freed", "shared-3", "kernel-mapping",
                                                     "exit-with-mappings"]
    assert all(h["streams"] == cov["features"].get(f"health|{h['feature']}", 0) for h in cov["health"])
    off = fuzz_json(tmp_path, "off", *args, "--workers", "2", "--no-feedback")
    assert off["campaign"]["feedback"] is False and off["coverage"]["mutants"] == 0

    from reports import html, text

    page = html.render(one)
    assert "Features reached" in page and f"every feature ({cov['distinct']})" in page
    # a campaign that never reached a health feature says so, with the option to try
    starved = dict(one, coverage={**cov, "health": [dict(h, streams=0, hint="--generator pressure")
                                                     if h["feature"] == "enomem" else h for h in cov["health"]]})
    assert "warning: never reached: ENOMEM on a canfail enter (try --generator pressure)" in text.render(starved)
    assert "never reached: try --generator pressure" in html.render(starved)


@pytest.mark.slow
@pytest.mark.parametrize("backend, seed, streams, signature", [
    ("bug-enomem-halfbuilt", 3, 3, "resource:bug-enomem-halfbuilt:enter:pool:enomem-left-trace"),
    ("bug-pp-read-miss", 1, 2, "translation:bug-pp-read-miss:page_protect:prot:prot-mismatch"),
])
def test_a_default_campaign_reaches_the_state_that_shows_the_bug(tmp_path, backend, seed, streams, signature):
    report = fuzz_json(tmp_path, "out", "--backends", f"alpha-ref,{backend}", "--seed", str(seed),
                       "--streams", str(streams), "--workers", "1")
    assert signature in [e["signature"] for e in report["divergences"]]


# -- the calls the harness counts ---------------------------------------------------------------


def test_each_backend_call_is_counted_with_the_frames_it_moved(host):
    """The stream of test_features_of_a_hand_made_stream, call by call.  arm32: kenter takes
    the kernel's first PT page; create takes the 4 frames of an L1 (1 free left); the enter
    at 4 MiB a PT page (0 left), the one next to it nothing, the one at 8 MiB fails; the
    first remove empties the PT page, which is freed; the second finds nothing; at the
    destroy the harness removes the rest (nothing) and the destroy frees the L1.  alpha:
    kenter takes the kernel's L2 and L3; its L1 is made at the first enter with an L2 and
    an L3 (4 free); the enter at 8 MiB takes another L3 (3 free); the first remove frees
    one L3, the second the other, then the empty L2 and L1."""
    ops = (KEnter(0xF2000000, 0x12000, 3),
           Create(), Enter(1, 4 * M, 0x10000, 3), Enter(1, 4 * M + 4096, 0x10000, 3),
           Enter(1, 8 * M, 0x11000, 3, canfail=True),
           Remove(1, 4 * M, 4 * M + 8192), Remove(1, 8 * M, 8 * M + 4096), Destroy(1))
    stream = Stream(ops, 8192, {}, free_frames=10)
    result = Harness.from_registry(host.registry, ["alpha-ref", "arm32-refcount"], record_calls=True).run(stream)
    arm, alpha = result.calls["arm32-refcount"], result.calls["alpha-ref"]
    assert arm.seen == {
        ("pmap_kenter_pa", "", 1, 0): 1, ("pmap_create", "", 0, 4): 1,
        ("pmap_enter", "OK", 1, 0): 1, ("pmap_enter", "OK", 0, 0): 1, ("pmap_enter", "ENOMEM", 0, 0): 1,
        ("pmap_remove", "", -1, 0): 1, ("pmap_remove", "", 0, 0): 2, ("pmap_destroy", "", 0, -4): 1,
    }
    assert arm.extra == {"kernel-pt-growth", "pool-low", "pool-empty"}
    assert alpha.seen == {
        ("pmap_kenter_pa", "", 2, 0): 1, ("pmap_create", "", 0, 0): 1,
        ("pmap_enter", "OK", 2, 1): 1, ("pmap_enter", "OK", 0, 0): 1, ("pmap_enter", "OK", 1, 0): 1,
        ("pmap_remove", "", -1, 0): 1, ("pmap_remove", "", -2, -1): 1, ("pmap_remove", "", 0, 0): 1,
        ("pmap_destroy", "", 0, 0): 1,
    }
    assert alpha.extra == {"kernel-pt-growth", "pool-low"}
    # A harness that does not count them has nothing to say.
    assert Harness.from_registry(host.registry, ["alpha-ref"]).run(stream).calls is None


def test_frames_moved_by_the_harness_reads_are_in_no_call(host):
    """A backend whose place reads (after every enter) take a frame: a call is counted with
    the frames that moved during it, not with those taken between calls."""
    spec = host.registry.backends["arm32-refcount"]
    base = type(spec.factory(PhysPool(8192)))

    class ReadsTakeFrames(base):  # type: ignore[misc, valid-type]
        def read_place(self, pmap, va, pa):
            self.pool.alloc(Tag.PT)  # (for no pmap)
            return super().read_place(pmap, va, pa)

    odd = replace(spec, name="reads-take-frames", factory=ReadsTakeFrames)
    stream = Stream((Create(), Enter(1, 4 * M, 0x10000, 3), Enter(1, 4 * M + 4096, 0x10000, 3),
                     Enter(1, 8 * M, 0x11000, 3), Remove(1, 4 * M, 4 * M + 8192)), 8192)
    result = Harness([spec, odd], "arm32-refcount", record_calls=True).run(stream)
    assert result.calls["reads-take-frames"].seen == result.calls["arm32-refcount"].seen == {
        ("pmap_create", "", 0, 4): 1, ("pmap_enter", "OK", 1, 0): 2, ("pmap_enter", "OK", 0, 0): 1,
        ("pmap_remove", "", -1, 0): 1,
    }
