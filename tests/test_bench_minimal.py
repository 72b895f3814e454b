"""The yardstick of benchmarks/bench_overhead.py (``MinimalRun``: the least a differential
harness can check per op) checks what it claims: on campaign streams it follows the
contract exactly as the harness's model does, finds nothing on the correct backends, and
finds PR 5666 on the leaky one where the harness does.  Its figures are worth nothing
otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from difftest.harness import Harness
from difftest.ops import ENOMEM
from difftest.plugins import PluginHost
from difftest.units import unit_seed

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_overhead_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def host() -> PluginHost:
    host = PluginHost()
    host.load()
    return host


def _streams(host: PluginHost, pressure: bool) -> list:
    gen = host.registry.generators["random"]
    extra = {} if pressure else {"pressure": False}
    # (streams 1 and 3 of seed 7 reach the pool's edge some 1,200 ops in, under pressure)
    return [gen.generate(unit_seed(7, k), 2000, 8192, **extra) for k in (1, 3)]


@pytest.mark.parametrize("pressure", [True, False], ids=["pressure", "no-pressure"])
def test_the_minimal_harness_follows_the_contract_as_the_harness_does(bench, host, pressure):
    specs = [host.registry.backends[n] for n in ("alpha-ref", "arm32-refcount")]
    harness = Harness(specs, "alpha-ref")
    enomem = 0
    for stream in _streams(host, pressure):
        minimal = bench.MinimalRun(specs, stream)
        run = harness.start(stream)
        for index, op in enumerate(stream.ops):
            minimal.step(index, op)
            run.step(index, op)
            for lane, (_, state, *_rest) in zip(run.lanes, minimal.lanes):
                assert state.maps == lane.state.maps, f"op {index} ({op}) on {lane.name}"
                assert (state.mod, state.ref) == (lane.state.mod, lane.state.ref), f"op {index} on {lane.name}"
            enomem += sum(lane.result == ENOMEM for lane in run.lanes)
        assert minimal.differences == 0
        assert not run.result.divergences
    # (the pressure streams do reach the pool's edge: the model skips the enters that fail)
    assert (enomem > 0) is pressure


def test_the_minimal_harness_finds_pr_5666_where_the_harness_does(bench, host):
    specs = [host.registry.backends["arm32-leaky"]]
    for stream in _streams(host, True):
        minimal = bench.MinimalRun(specs, stream)
        for index, op in enumerate(stream.ops):
            minimal.step(index, op)
        kinds = {d.cls for d in Harness(specs, "arm32-leaky").run(stream).divergences}
        assert "pt-frames-held>needed" in kinds
        assert minimal.differences > 0
