"""The stream generators: the seeded ``random`` and ``pager`` generators, the Hypothesis
strategy ``op_streams``, VM legality of everything they make, and the shaping statistics
(``difftest.coverage``) that show the streams reach deep states."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings

from difftest import streams
from difftest.backend import GeneratorSpec
from difftest.coverage import DEPTH_FIELDS, coverage, merge_stats, stream_stats
from difftest.legality import vm_legality_problems
from difftest.machine import KERNEL_MIN, USER_MAX, USER_MIN
from difftest.ops import Create, Destroy, KEnter, KRemove, Protect, Remove
from difftest.plugins import PluginHost
from difftest.streams import Stream, dumps, validate_ops
from strategies.hypothesis_ops import legalise, op_streams
from strategies.pager import PagerGenerator, generate_pager
from strategies.seeded import generate

GENERATORS = {"random": generate, "pager": generate_pager}


def assert_legal(stream: Stream) -> None:
    validate_ops(stream.ops, stream.phys_pages)
    problems = vm_legality_problems(stream)
    assert not problems, problems[:3]


@pytest.fixture(scope="module")
def host():
    h = PluginHost()
    h.load()
    return h


# -- registration -------------------------------------------------------------------------------


def test_both_generators_are_registered_through_the_entry_point(host):
    gens = host.registry.generators
    for name, fn in GENERATORS.items():
        spec = gens[name]
        assert isinstance(spec, GeneratorSpec)
        assert spec.generate is fn
        assert spec.plugin == "seeded" and spec.description
    stream = gens["random"].generate(3, 50, 8192)
    assert isinstance(stream, Stream) and len(stream) == 50


# -- determinism -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_bytes(name):
    gen = GENERATORS[name]
    a, b = gen(11, 3000), gen(11, 3000)
    assert dumps(a) == dumps(b)
    assert a.origin["generator"] == name and a.origin["seed"] == 11


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_different_seeds_differ(name):
    gen = GENERATORS[name]
    texts = {dumps(gen(seed, 500).replace(origin={})) for seed in range(8)}
    assert len(texts) == 8


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_exactly_n_ops_and_prefixes_agree(name):
    gen = GENERATORS[name]
    for n in (0, 1, 2, 17, 600):
        assert len(gen(5, n)) == n
    long = gen(5, 600)
    assert gen(5, 200).ops == long.ops[:200]  # a longer stream only adds ops at the end


def test_same_bytes_in_other_processes_with_other_hash_seeds(tmp_path):
    """No dependence on hash order (PYTHONHASHSEED), the process or the clock."""
    code = ("import sys; from strategies.seeded import generate; from strategies.pager import generate_pager; "
            "from difftest.streams import dumps; "
            "sys.stdout.write(dumps(generate(123, 4000)) + dumps(generate_pager(9, 4000, 4096)))")
    here = dumps(generate(123, 4000)) + dumps(generate_pager(9, 4000, 4096))
    outs = []
    for hash_seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=60, check=True)
        outs.append(proc.stdout)
    assert all(out == here for out in outs)


def test_streams_generate_cli_writes_the_same_bytes(tmp_path, capsys):
    import difftest.cli_streams  # noqa: F401  (registers the command)
    from difftest.cli import main

    out = tmp_path / "s.json"
    assert main(["streams", "generate", "--seed", "42", "--ops", "1500", "-o", str(out)]) == 0
    assert out.read_text() == dumps(generate(42, 1500))
    assert streams.load(out).origin["seed"] == 42
    out2 = tmp_path / "p.json"
    assert main(["streams", "generate", "--generator", "pager", "--seed", "3", "--ops", "700",
                 "--phys-pages", "4096", "-o", str(out2)]) == 0
    assert out2.read_text() == dumps(generate_pager(3, 700, 4096))
    assert main(["streams", "generate", "--generator", "nope", "--seed", "1", "--ops", "5",
                 "-o", str(out2)]) == 2
    assert "unknown generator 'nope'" in capsys.readouterr().err


# -- legality -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_many_short_streams_are_legal(name):
    gen = GENERATORS[name]
    for seed in range(150):
        assert_legal(gen(seed, 300))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_long_streams_are_legal(name):
    gen = GENERATORS[name]
    for seed in (0, 1, 2, 1000, 2**40):
        assert_legal(gen(seed, 10_000))


@pytest.mark.parametrize("phys_pages", [16, 64, 1024, 32768])
def test_other_machine_sizes(phys_pages):
    for gen in GENERATORS.values():
        stream = gen(7, 2000, phys_pages)
        assert stream.phys_pages == phys_pages
        assert_legal(stream)


def test_destroy_of_the_last_reference_comes_after_unmapping():
    """The VM unmaps a dying address space first: so do the generators."""
    from difftest.legality import VMModel

    destroys = 0
    for seed in range(10):
        m = VMModel()
        for op in generate(seed, 3000).ops:
            if isinstance(op, Destroy) and m.refs[op.pmap] == 1:
                assert not m.maps[op.pmap]
                destroys += 1
            m.apply(op)
    assert destroys > 0


def test_kernel_windows_keep_kenter_and_managed_apart():
    for seed in range(40):
        for op in generate(seed, 1500).ops:
            if isinstance(op, (KEnter, KRemove)):
                assert op.va >= KERNEL_MIN
            if isinstance(op, (Remove, Protect)) and op.pmap != 0:
                assert USER_MIN <= op.sva < op.eva <= USER_MAX


# -- shaping: the streams go deep ------------------------------------------------------------------


def test_random_streams_reach_deep_states():
    total = merge_stats([stream_stats(generate(seed, 10_000)) for seed in range(6)])
    depth = total["depth"]
    for key in ("edge_ops_4mib", "edge_ops_2mib", "remaps", "reenters", "shared_pages",
                "ranges_crossing_1mib", "ranges_crossing_2mib", "ranges_crossing_4mib",
                "wired_enters", "unwires", "canfail_enters", "collects", "page_protects_revoke",
                "page_protects_readonly", "page_protects_of_mapped", "empties_4mib", "destroys",
                "kenters"):
        assert depth[key] > 0, key
    assert depth["max_sharing"] >= 2
    assert depth["max_live_pmaps"] >= 2
    ops = total["ops"]
    # most addresses at region edges: far above a uniform spread (2 pages in 512)
    assert (depth["edge_ops_4mib"] + depth["edge_ops_2mib"]) / ops > 0.05
    assert depth["remaps"] / total["op_kinds"]["enter"] > 0.05
    assert set(total["op_kinds"]) >= {"enter", "remove", "protect", "page_protect", "collect", "unwire",
                                      "access", "extract", "kenter", "kremove", "create", "destroy",
                                      "reference", "clear_modify", "is_referenced", "update"}


def test_swarm_varies_the_op_mix_by_seed():
    mixes = [frozenset(generate(seed, 2000).origin["swarm"]) for seed in range(20)]
    assert len(set(mixes)) >= 10
    assert all({"enter", "remove"} <= m for m in mixes)


def test_pager_pages_out_and_swaps_and_the_leaky_pmap_dies(host):
    stream = generate_pager(0, 20_000)
    specs = [host.registry.backends[n] for n in ("alpha-ref", "arm32-leaky", "arm32-refcount")]
    doc = coverage(stream, specs)
    depth = doc["depth"]
    assert depth["page_protects_revoke"] > 100 and depth["collects"] > 0
    assert depth["shared_pages"] > 0 and depth["wired_enters"] > 0 and depth["destroys"] > 0
    assert doc["op_kinds"]["clear_modify"] > 0 and doc["op_kinds"]["kenter"] > 0
    backends = doc["backends"]
    leaky = backends["arm32-leaky"]
    assert leaky["stopped"].startswith("out of memory") and leaky["ops_run"] < len(stream)
    assert leaky["pt_peak"] > 2 * backends["arm32-refcount"]["pt_peak"]
    for name in ("alpha-ref", "arm32-refcount"):
        assert backends[name]["stopped"] == "" and backends[name]["ops_run"] == len(stream)
        assert backends[name]["pt_frees"] > 0


def test_coverage_counts_on_a_hand_made_stream():
    from difftest.ops import Collect, Enter, PageProtect, Unwire

    M = 1 << 20
    ops = [Create(), Create(),
           Enter(1, 4 * M, 0x10000, 3, 0, False, False),  # at a 4 MiB boundary
           Enter(2, 6 * M - 4096, 0x10000, 1, 0, False, True),  # the page below 6 MiB; shared
           Enter(1, 4 * M, 0x11000, 3, 0, True, False),  # a remap, wired
           Unwire(1, 4 * M),
           Remove(1, 4 * M - 4096, 4 * M + 4096),  # crosses 1, 2 and 4 MiB; empties a region
           Collect(2),
           PageProtect(0x10000, 0),  # revokes pmap 2's mapping: empties its region
           PageProtect(0x11000, 1)]  # write-protects a page nobody maps any more
    stream = Stream(tuple(ops))
    assert not vm_legality_problems(stream)
    depth = stream_stats(stream)["depth"]
    assert set(depth) == set(DEPTH_FIELDS)
    expected = dict(edge_ops_4mib=4, edge_ops_2mib=1, remaps=1, reenters=0, shared_pages=1, max_sharing=2,
                    ranges_crossing_1mib=1, ranges_crossing_2mib=1, ranges_crossing_4mib=1,
                    wired_enters=1, unwires=1, canfail_enters=1, collects=1, page_protects_revoke=1,
                    page_protects_readonly=1, page_protects_of_mapped=1, empties_4mib=2, destroys=0,
                    pmaps_created=2, max_live_pmaps=2, max_live_mappings=2, regions_4mib=2,
                    kenters=0, kremoves=0, max_page_mappings=2, exits_with_mappings=0, kernel_enters=0)
    assert depth == expected


def test_streams_stats_cli(tmp_path, capsys):
    import difftest.cli_streams  # noqa: F401
    from difftest.cli import main

    path = tmp_path / "s.json"
    streams.save(generate(1, 3000), path)
    assert main(["streams", "stats", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    total = doc["total"]
    assert total["ops"] == 3000 and sum(total["op_kinds"].values()) == 3000
    assert set(total["backends"]) == {"alpha-ref", "arm32-leaky", "arm32-refcount"}
    assert total["backends"]["arm32-refcount"]["pt_allocs"] >= total["backends"]["arm32-refcount"]["pt_frees"]
    assert main(["streams", "stats", "--seed", "1", "--ops", "3000", "--backends", "arm32-leaky"]) == 0
    text = capsys.readouterr().out
    assert "edge_ops_4mib" in text and "arm32-leaky" in text and "pt_allocs" in text
    assert "alpha-ref" not in text
    assert main(["streams", "stats", str(path), str(path), "--no-backends", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"]["streams"] == 2 and doc["total"]["ops"] == 6000 and "backends" not in doc["total"]
    assert main(["streams", "stats"]) == 2
    assert "needs stream files" in capsys.readouterr().err


# -- the Hypothesis strategy ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(op_streams())
def test_op_streams_are_legal(stream):
    assert_legal(stream)
    assert stream.origin["generator"] == "hypothesis"


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(op_streams(n_pmaps=1, regions=[0x00600000], weights={"enter": 3, "destroy": 2, "unwire": 2,
                                                             "page_protect": 2, "kenter": 1, "kremove": 1},
                  max_ops=40, phys_pages=64))
def test_op_streams_with_parameters(stream):
    assert_legal(stream)
    assert stream.phys_pages == 64
    kinds = {op.name for op in stream.ops}
    assert kinds <= {"create", "enter", "remove", "destroy", "unwire", "page_protect", "kenter", "kremove"}


def test_op_streams_rejects_bad_parameters():
    with pytest.raises(ValueError):
        op_streams(n_pmaps=0)
    with pytest.raises(ValueError):
        op_streams(weights={"bogus": 1})
    with pytest.raises(ValueError):
        op_streams(regions=[0x00401000])


def test_legalise_fixes_what_the_vm_would_not_do():
    pages = 8192 // 2 * 4096
    raw = [
        ("enter", 0, 0, 0, 1, 0, True, False),  # creates pmap 1 first; wired
        ("enter", 0, 0, 1, 1, 0, False, False),  # over the wired page: same pa, still wired
        ("page_protect", 0, 0),  # revoke of a wired page: write-protect instead
        ("unwire", 0, 5, 0),  # no mapping there: goes to the wired one
        ("destroy", 0),  # last reference with a mapping: unmap first
    ]
    stream = legalise(raw)
    names = [op.name for op in stream.ops]
    assert names == ["create", "enter", "enter", "page_protect", "unwire", "remove", "destroy"]
    assert stream.ops[2].pa == pages and stream.ops[2].wired
    assert stream.ops[3].prot == 1
    assert stream.ops[4].va == stream.ops[1].va
    assert_legal(stream)


@pytest.mark.parametrize("seed", range(4))
def test_pager_in_a_default_length_stream_does_what_a_pager_does(seed):
    stream = generate_pager(seed, 2000)
    assert_legal(stream)
    assert stream.free_frames == stream.origin["pt_reserve_frames"]  # the rest of the machine is held
    doc = stream_stats(stream)
    depth, kinds = doc["depth"], doc["op_kinds"]
    assert depth["page_protects_revoke"] > 0  # pages out (revokes)
    assert depth["page_protects_readonly"] > 0  # writes back: write-protect, then clear MOD
    assert kinds["is_modified"] > 0 and kinds["clear_modify"] > 0
    assert kinds["is_referenced"] > 0 and kinds["clear_reference"] > 0  # the clock's second chance
    assert depth["collects"] > 0  # swaps processes out
    assert depth["exits_with_mappings"] > 0 and depth["kremoves"] > 0  # processes exit (u-area kremove'd)


def test_pager_remaps_live_vas_to_new_pages_and_execs():
    stats = [PagerGenerator(seed, 8192) for seed in range(6)]
    for gen in stats:
        gen.run(2000)
    total = merge_stats([stream_stats(generate_pager(seed, 2000)) for seed in range(6)])
    assert total["depth"]["remaps"] > 0  # copy-on-write: a live VA gets a new page
    assert sum(g.stats["cow"] for g in stats) == total["depth"]["remaps"]
    assert sum(g.stats["execs"] for g in stats) > 0


# -- determinism across changes of the generators' code ----------------------------------------------

# sha256 of the stream file text, computed with the generators as they were before their
# speed-ups (the lean frame models, ops.maker): a change that makes them faster must not
# change one byte of what they make (journals, corpora and reproducers name streams by seed).
PINNED = [
    ("random", 1, 2000, 8192, None, "b9c500634d9a4934cc7dc48a0ebfc6c4ad6689b2f976efcbf77302e79cb7e922"),
    ("random", 2, 2000, 8192, None, "70f087c90c0a115aafd101f7c25d2372110a77aea4c812923d7b7dd806a4ac70"),
    ("random", 3, 1000, 512, False, "aaf234ecd27a013694e1cdaa35fd40830cdaff60f70613538b49b8936c1dd2c7"),
    ("random", 7, 1500, 8192, True, "dcfc3b72e44fa08f3bcb895e80f19df1296629acb3916ac66462bfa266d4f78b"),
    ("pressure", 11, 1500, 1024, None, "c03557bd9989904c58619f19481676797185837173a0adf8ac8566951065bb9c"),
    ("pager", 1, 2000, 8192, None, "887330a0703dc0debdcee7e568b605debeb92b6755576fc14ffa4c704b39d162"),
    ("pager", 5, 1500, 256, None, "057b1a103b1e3bd7bbeb3f975ed221e21c3a907706445422f358f136ad06115f"),
]


@pytest.mark.parametrize("name, seed, n_ops, phys_pages, pressure, digest", PINNED)
def test_streams_are_the_pinned_bytes(name, seed, n_ops, phys_pages, pressure, digest):
    import hashlib

    from strategies.seeded import generate_pressure

    if name == "random":
        stream = generate(seed, n_ops, phys_pages, pressure=pressure)
    elif name == "pressure":
        stream = generate_pressure(seed, n_ops, phys_pages)
    else:
        stream = generate_pager(seed, n_ops, phys_pages)
    assert hashlib.sha256(dumps(stream).encode()).hexdigest() == digest


def test_maker_builds_the_same_ops():
    import pickle
    from dataclasses import FrozenInstanceError, fields

    from difftest.ops import OP_TYPES, maker

    samples = {"pmap": 2, "va": 0x00401000, "pa": 0x00200000, "prot": 3, "access": 2, "wired": True,
               "canfail": True, "sva": 0x00400000, "eva": 0x00800000, "size": 0x2000, "kind": "w"}
    for cls in OP_TYPES.values():
        values = [samples[f.name] for f in fields(cls)]
        made, plain = maker(cls)(*values), cls(*values)
        assert type(made) is cls and made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
        assert pickle.loads(pickle.dumps(made)) == plain
        assert dumps(Stream((made,))) == dumps(Stream((plain,)))
        for f in fields(cls):
            with pytest.raises(FrozenInstanceError):
                setattr(made, f.name, 0)
        if fields(cls):
            assert made != cls(*[v + 1 if type(v) is int else v for v in values[:1]], *values[1:])
