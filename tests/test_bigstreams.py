"""Big streams in bounded memory: the incremental reader, lazy ops, replay's references.

``streams.open_stream`` must accept and refuse exactly what ``streams.load`` does, give the
same ops, and keep only a chunk of them in memory; ``replay`` must name the input and the
op range of each divergence instead of copying the input into the report.
"""

from __future__ import annotations

import json

import pytest

from difftest import jsonstream, streams
from difftest.cli import main
from difftest.errors import EXIT_DIVERGENCES, EXIT_USAGE, StreamError
from difftest.ops import Create, Destroy, Enter, Remove
from difftest.streams import FileStream, LazyOps, make_stream
from tests.cliutil import assert_one_line_error

PAGE = 4096


def _leaky_stream(rounds: int) -> streams.Stream:
    """Processes that map a page and unmap it: arm32-leaky keeps the PT page (PR 5666)."""
    ops = []
    for i in range(rounds):
        va = 0x00400000 + (i % 64) * 0x00400000
        pa = (16 + i % 32) * PAGE
        ops += [Create(), Enter(i + 1, va, pa, 3, 0, False, False), Remove(i + 1, va, va + PAGE), Destroy(i + 1)]
    return make_stream(ops, phys_pages=256, origin={"note": "rounds of create/enter/remove/destroy"})


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny read and decode chunks, so that every boundary case happens in a small file."""
    monkeypatch.setattr(jsonstream, "CHUNK", 64)
    monkeypatch.setattr(streams, "OPS_PER_CHUNK", 7)


@pytest.mark.parametrize("chunks", ["default", "small"])
def test_open_stream_gives_the_ops_load_gives(tmp_path, request, chunks):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    stream = _leaky_stream(300)
    path = tmp_path / "s.json"
    streams.save(stream, path)
    opened = streams.open_stream(path)
    assert isinstance(opened, FileStream) and isinstance(opened.ops, LazyOps)
    assert len(opened) == len(stream) == 1200
    assert list(opened.ops) == list(stream.ops)
    # Random access across chunks, backwards too, and slices.
    assert opened.ops[1199] == stream.ops[1199] and opened.ops[3] == stream.ops[3]
    assert opened.ops[-1] == stream.ops[-1]
    assert opened.ops[10:20] == stream.ops[10:20]
    assert opened.data_frames() == stream.data_frames()
    assert (opened.phys_pages, opened.origin) == (256, stream.origin)


def test_open_stream_reads_any_key_order_and_layout(tmp_path, small_chunks):
    stream = _leaky_stream(40)
    doc = streams.stream_to_json(stream)
    doc["origin"] = {"note": "é ü — non-ASCII text survives"}
    # ops first, machine last, all on one line: the ops are validated in a second pass.
    reordered = {"ops": doc["ops"], "origin": doc["origin"], "format": doc["format"], "machine": doc["machine"]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(reordered, ensure_ascii=False), encoding="utf-8")
    opened = streams.open_stream(path)
    assert list(opened.ops) == list(stream.ops)
    assert opened.origin == doc["origin"]
    assert opened.phys_pages == 256


def test_an_op_error_deep_in_the_file_names_its_index(tmp_path, small_chunks):
    doc = streams.stream_to_json(_leaky_stream(100))
    doc["ops"][149]["va"] = "0x00400010"  # an enter
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(StreamError) as excinfo:
        streams.open_stream(path)
    assert (excinfo.value.index, excinfo.value.field) == (149, "va")
    assert "aligned" in str(excinfo.value) and str(path) in str(excinfo.value)


def test_a_pa_beyond_memory_is_refused_when_machine_comes_after_the_ops(tmp_path, small_chunks):
    doc = streams.stream_to_json(_leaky_stream(10))
    doc["machine"] = {"phys_pages": 16}  # the ops name frames up to 47
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": doc["format"], "ops": doc["ops"], "machine": doc["machine"]}))
    with pytest.raises(StreamError) as excinfo:
        streams.open_stream(path)
    assert excinfo.value.index is not None and "beyond physical memory" in str(excinfo.value)


def test_a_syntax_error_in_a_big_file_says_line_and_column(tmp_path, small_chunks):
    path = tmp_path / "s.json"
    streams.save(_leaky_stream(50), path)
    lines = path.read_text().splitlines()
    lines[40] = lines[40].replace('"op"', '"op" ', 1).replace(":", "", 1)  # drop a colon on line 41
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StreamError) as excinfo:
        streams.open_stream(path)
    assert "malformed JSON at line 41 column" in str(excinfo.value)
    with pytest.raises(StreamError) as whole:
        streams.load(path)
    assert "line 41" in str(whole.value)


def test_replay_names_the_input_and_the_op_range_not_the_whole_stream(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    streams.save(_leaky_stream(300), a)
    streams.save(_leaky_stream(20), b)
    args = ["replay", "--json", "--strict", "--backends", "arm32-leaky,alpha-ref", str(a), str(b)]
    assert main(args) == EXIT_DIVERGENCES
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["divergences"]
    assert entry["signature"] == "resource:arm32-leaky:remove:pt_frames:pt-frames-held>needed"
    # count: streams it was seen in (docs/REPORT.md); events: times, over all streams.
    assert entry["count"] == 2
    assert entry["events"] > entry["count"]
    assert entry["reproducer"] is None
    # The first remove (op 2) already leaks: ops [0, 3) of a.json reproduce it.
    assert entry["reproducer_ref"] == {"stream": str(a), "start": 0, "end": 3}
    assert len(json.dumps(report)) < 10_000

    prefix = streams.Stream(ops=streams.open_stream(a).ops[0:3], phys_pages=256)
    path = tmp_path / "prefix.json"
    streams.save(prefix, path)
    assert main(["replay", "--json", "--strict", "--backends", "arm32-leaky,alpha-ref", str(path)]) == EXIT_DIVERGENCES
    again = json.loads(capsys.readouterr().out)
    assert [e["signature"] for e in again["divergences"]] == [entry["signature"]]


def test_replay_shrink_adds_a_minimised_reproducer(tmp_path, capsys):
    path = tmp_path / "a.json"
    streams.save(_leaky_stream(300), path)
    assert main(["replay", "--json", "--strict", "--shrink", "--shrink-budget", "5",
                 "--backends", "arm32-leaky,alpha-ref", str(path)]) == EXIT_DIVERGENCES
    (entry,) = json.loads(capsys.readouterr().out)["divergences"]
    small = streams.stream_from_json(entry["reproducer"])
    assert [op.name for op in small.ops] == ["create", "enter", "remove"]  # PR 5666's reproducer
    assert small.origin["shrunk_from"] == {"stream": str(path), "start": 0, "end": 3}


def test_replay_refuses_a_bad_file_before_running_any(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    streams.save(_leaky_stream(5), good)
    doc = streams.stream_to_json(_leaky_stream(5))
    doc["ops"][4]["op"] = "map"  # a create
    bad.write_text(json.dumps(doc))
    assert main(["replay", str(good), str(bad)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, str(bad), "op 4", "unknown op")


def test_replay_progress_bar_on_a_terminal_only(tmp_path):
    from tests.cliutil import clean_env
    from cliutil import run_on_a_tty

    path = tmp_path / "a.json"
    streams.save(_leaky_stream(1500), path)  # 6000 ops
    args = ["replay", "--backends", "alpha-ref,arm32-refcount", str(path)]
    status, output = run_on_a_tty(*args, env=clean_env(TERM="xterm"))
    assert status == 0, output[-2000:]
    assert b"/6.00k [" in output  # tqdm: n/total [elapsed<remaining, rate]
    status, output = run_on_a_tty(*args, "--no-progress", env=clean_env(TERM="xterm"))
    assert status == 0 and b"/6.00k [" not in output and b"no divergences" in output
    assert main(args) == 0  # stderr is not a terminal here: no bar (nothing to assert but no error)


# -- properties ------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from strategies.hypothesis_ops import op_streams  # noqa: E402

LAYOUTS = ["canonical", "one-line", "indented", "ops-first"]


def _write(stream: streams.Stream, path, layout: str) -> None:
    doc = streams.stream_to_json(stream)
    if layout == "canonical":
        text = streams.dumps(stream)
    elif layout == "one-line":
        text = json.dumps(doc, separators=(",", ":"))
    elif layout == "indented":
        text = json.dumps(doc, indent=3)
    else:
        text = json.dumps({"ops": doc["ops"], "machine": doc["machine"], "format": doc["format"],
                           "origin": doc["origin"]})
    path.write_text(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=op_streams(max_ops=120), layout=st.sampled_from(LAYOUTS), chunk=st.integers(1, 200),
       per_chunk=st.integers(1, 50))
def test_open_stream_equals_load_for_any_layout_and_chunk_size(tmp_path, stream, layout, chunk, per_chunk):
    path = tmp_path / "s.json"
    _write(stream, path, layout)
    saved = (jsonstream.CHUNK, streams.OPS_PER_CHUNK)
    jsonstream.CHUNK, streams.OPS_PER_CHUNK = chunk, per_chunk
    try:
        opened = streams.open_stream(path)
        assert list(opened.ops) == list(streams.load(path).ops) == list(stream.ops)
        assert [opened.ops[i] for i in reversed(range(len(stream)))] == list(reversed(stream.ops))
        assert opened.data_frames() == stream.data_frames()
    finally:
        jsonstream.CHUNK, streams.OPS_PER_CHUNK = saved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=op_streams(max_ops=60), cut=st.integers(0, 10_000), junk=st.sampled_from(["", "x", "]", ",", "{"]))
def test_a_damaged_file_is_refused_alike_by_both_readers(tmp_path, stream, cut, junk):
    """Whatever load says about a truncated or damaged file, open_stream says too."""
    path = tmp_path / "s.json"
    text = streams.dumps(stream)
    path.write_text(text[: cut % (len(text) + 1)] + junk)
    try:
        whole = streams.load(path)
    except StreamError as err:
        with pytest.raises(StreamError) as excinfo:
            streams.open_stream(path)
        assert (excinfo.value.index, excinfo.value.field) == (err.index, err.field)
        assert ("malformed JSON" in str(excinfo.value)) == ("malformed JSON" in str(err))
    else:
        assert list(streams.open_stream(path).ops) == list(whole.ops)
