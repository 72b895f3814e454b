"""The strace importer: hand-written logs with hand-computed streams, then real recorded
logs (tests/data/strace/, recorded as README "Real workloads" says) through the command,
the VM rules and the backends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from difftest import streams
from difftest.cli import main
from difftest.errors import EXIT_OK, EXIT_USAGE, BadInput
from difftest.harness import Harness
from difftest.legality import vm_legality_problems
from difftest.ops import (
    PROT_R,
    PROT_W,
    ClearModify,
    Create,
    Destroy,
    Enter,
    IsModified,
    PageProtect,
    Protect,
    Reference,
    Remove,
)
from difftest.plugins import load_plugins
from strategies.strace import convert
from tests.cliutil import assert_one_line_error

DATA = Path(__file__).resolve().parent / "data" / "strace"
LOGS = sorted(DATA.glob("*.strace"))
R, RW = PROT_R, PROT_R | PROT_W
F = False


def imported(tmp_path: Path, text: str, phys_pages: int = 64, max_pages: int = 16) -> streams.Stream:
    log = tmp_path / "t.strace"
    log.write_text(text)
    return convert(str(log), phys_pages=phys_pages, max_pages_per_mapping=max_pages)


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


# -- hand-computed cases --------------------------------------------------------------------------

TWO_PROCESSES = """\
100 execve("/bin/a", ["a"], 0x7ffd0 /* 1 var */) = 0
100 brk(NULL) = 0x1000000
100 brk(0x1002000) = 0x1002000
100 openat(AT_FDCWD, "/lib/libc.so.6", O_RDONLY|O_CLOEXEC) = 3
100 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_DENYWRITE, 3, 0) = 0x7f0000000000
100 close(3) = 0
100 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = -1 ENOMEM (Cannot allocate memory)
100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f01) = 101
101 execve("/bin/b", ["b"], 0x7ffd0 /* 1 var */) = 0
101 openat(AT_FDCWD, "/lib/libc.so.6", O_RDONLY|O_CLOEXEC) = 4
101 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 4, 0x1000) = 0x7f1000000000
101 exit_group(0) = ?
101 +++ exited with 0 +++
100 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=101, si_uid=0, si_status=0} ---
100 +++ exited with 0 +++
"""


def test_two_processes_by_hand(tmp_path):
    """phys_pages 64: data frames from 16 up (a quarter left for page tables).

    The heap at 16 MiB is below 4 GiB: it keeps its address.  libc at 0x7f0000000000 is
    folded into the lowest free 4 MiB slot, 0x00400000, at the same offset.  The child gets
    a copy of the parent's pages (read-only: no copy-on-write), loses them at execve (same
    pmap), and maps libc's second page again: the same frame as the parent's, through
    the page cache, not through the fork."""
    stream = imported(tmp_path, TWO_PROCESSES)
    assert list(stream.ops) == [
        Create(),
        Enter(1, 0x01000000, 16 << 12, RW, PROT_W, F, F),  # heap: written, a page of its own
        Enter(1, 0x01001000, 17 << 12, RW, PROT_W, F, F),
        Enter(1, 0x00400000, 18 << 12, R, R, F, F),  # libc page 0 (file page, read)
        Enter(1, 0x00401000, 19 << 12, R, R, F, F),  # libc page 1
        Create(),  # clone without CLONE_VM: a new pmap with the parent's pages
        Enter(2, 0x01000000, 16 << 12, R, 0, F, F),  # copy-on-write: without w
        Enter(2, 0x01001000, 17 << 12, R, 0, F, F),
        Enter(2, 0x00400000, 18 << 12, R, 0, F, F),
        Enter(2, 0x00401000, 19 << 12, R, 0, F, F),
        Protect(1, 0x01000000, 0x01002000, R),  # ... and write-protected in the parent
        Remove(2, 0x00400000, 0x00402000),  # execve: everything goes, the pmap stays
        Remove(2, 0x01000000, 0x01002000),
        # the heap pages have one user again: the parent's next write needs no copy
        Enter(1, 0x01000000, 16 << 12, RW, PROT_W, F, F),
        Enter(1, 0x01001000, 17 << 12, RW, PROT_W, F, F),
        Enter(2, 0x00400000, 19 << 12, R, R, F, F),  # libc page 1 again: frame 19, shared
        Remove(2, 0x00400000, 0x00401000),  # exit
        Destroy(2),
        Remove(1, 0x00400000, 0x00402000),
        Remove(1, 0x01000000, 0x01002000),
        Destroy(1),
    ]
    assert stream.phys_pages == 64
    assert stream.origin["ignored"] == {"exit_group": 1, "mmap": 1}  # the failed mmap too
    assert stream.origin["unplaced"] == {"pages": 0, "regions": {}}
    assert stream.origin["warnings"] == []
    assert vm_legality_problems(stream) == []


VFORK_STDERR_STYLE = """\
execve("/bin/sh", ["sh"], 0x7ffd0 /* 1 var */) = 0
mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000400000
vfork(strace: Process 7 attached
 <unfinished ...>
[pid     7] execve("/bin/true", ["true"], 0x7ffd0 /* 1 var */ <unfinished ...>
[pid     6] <... vfork resumed>) = 7
[pid     7] <... execve resumed>) = 0
[pid     7] mmap(0x7f0000400000, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS, -1, 0) = 0x7f0000400000
[pid     7] +++ exited with 0 +++
[pid     6] munmap(0x7f0000400000, 4096) = 0
+++ exited with 0 +++
"""


def test_vfork_shares_the_pmap_until_execve_and_joins_split_lines(tmp_path):
    """stderr-style log: the first process bare, then "[pid 6]"; strace's own message
    cuts a line in two; the child runs before vfork returns in the log."""
    stream = imported(tmp_path, VFORK_STDERR_STYLE)
    assert list(stream.ops) == [
        Create(),
        Enter(1, 0x00400000, 16 << 12, RW, PROT_W, F, F),  # 0x7f0000400000: offset 0 of a slot
        Reference(1),  # vfork: the child borrows the parent's pmap
        Destroy(1),  # its execve gives it back ...
        Create(),  # ... and a pmap of its own
        Enter(2, 0x00400000, 17 << 12, RW, PROT_W, F, F),
        Remove(2, 0x00400000, 0x00401000),
        Destroy(2),
        Remove(1, 0x00400000, 0x00401000),  # munmap
        Destroy(1),
    ]
    assert stream.origin["processes"] == 2 and stream.origin["warnings"] == []


def test_touch_policy_caps_large_mappings_in_runs(tmp_path):
    log = ("1 mmap(NULL, 409600, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x40000000\n"
           "1 +++ exited with 0 +++\n")
    stream = imported(tmp_path, log, phys_pages=256, max_pages=8)
    vas = [op.va for op in stream.ops if isinstance(op, Enter)]
    page = [(va - 0x40000000) >> 12 for va in vas]
    # 100 pages, 8 touched: four runs of two, spread from the first page to the last.
    assert page == [0, 1, 32, 33, 65, 66, 98, 99]
    assert vas[0] == 0x40000000  # below 4 GiB: the address is kept


def test_what_cannot_be_placed_is_counted_and_named(tmp_path, capsys):
    log = ("1 mmap(0, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS, -1, 0) = 0\n"
           "1 +++ exited with 0 +++\n")
    stream = imported(tmp_path, log)
    # Page 0 is outside the user range: only the page at 0x1000 is entered.
    assert [op.va for op in stream.ops if isinstance(op, Enter)] == [0x1000]
    assert stream.origin["unplaced"] == {"pages": 1, "regions": {"[anon]": 1}}
    path = tmp_path / "t.strace"
    assert main(["import", "strace", str(path), "-o", str(tmp_path / "s.json"), "--phys-pages", "64"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "1 touched page(s) could not be placed" in err and "[anon] (1)" in err


def test_memory_pressure_pages_out_and_collects(tmp_path, registry):
    """64 frames: 16 for page tables, 48 for data; two processes touch 140 pages."""
    log = "".join([
        "1 mmap(NULL, 245760, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000\n",
        "1 clone(child_stack=NULL, flags=SIGCHLD) = 2\n",
        *[f"2 mmap(NULL, 81920, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f00{i:02x}000000\n"
          for i in range(4)],
        "2 +++ exited with 0 +++\n",
        "1 +++ exited with 0 +++\n",
    ])
    stream = imported(tmp_path, log, phys_pages=64, max_pages=60)
    kinds = [op.name for op in stream.ops]
    assert stream.origin["page_outs"] > 32 and stream.origin["collects"] >= 1
    outs = [i for i, op in enumerate(stream.ops) if isinstance(op, PageProtect)]
    assert len(outs) == stream.origin["page_outs"]
    for i in outs:  # write-back first, then every mapping revoked
        pa = stream.ops[i].pa
        assert stream.ops[i - 2] == IsModified(pa) and stream.ops[i - 1] == ClearModify(pa)
        assert stream.ops[i].prot == 0
    # The process swapped out is the idle parent, while the child works.
    assert [op.pmap for op in stream.ops if op.name == "collect"][0] == 1
    assert {op.pa >> 12 for op in stream.ops if isinstance(op, Enter)} <= set(range(16, 64))
    assert kinds.count("create") == 2 and kinds[-1] == "destroy"
    assert vm_legality_problems(stream) == []
    run = Harness.from_registry(registry, ["alpha-ref", "arm32-refcount"]).run(stream)
    assert run.divergences == [] and run.stopped == {}


@pytest.mark.parametrize(("text", "needle"), [
    ("hello world\n", "t.strace:1: not an strace line"),
    ("1 mmap(NULL, 4096) = 0x1000\n", "t.strace:1: cannot read the arguments of mmap"),
    ("1 brk(NULL <unfinished ...>\n1 <... mmap resumed>) = 0\n", "t.strace:2: 'mmap' resumed"),
    ("", "no process or memory system call"),
])
def test_a_bad_log_is_one_line_and_exit_2(tmp_path, capsys, text, needle):
    log = tmp_path / "t.strace"
    log.write_text(text)
    with pytest.raises(BadInput):
        convert(str(log), phys_pages=64)
    assert main(["import", "strace", str(log), "-o", str(tmp_path / "s.json")]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "s.json").exists()


def test_unknown_format_and_missing_log(tmp_path, capsys):
    assert main(["import", "ktrace", str(LOGS[0]), "-o", str(tmp_path / "s.json")]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "unknown trace format 'ktrace'", "strace")
    assert main(["import", "strace", str(tmp_path / "nope"), "-o", str(tmp_path / "s.json")]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "cannot read")


def test_a_log_without_openat_treats_each_descriptor_as_its_own_file(tmp_path):
    log = ("1 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f0000000000\n"
           "2 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f0000000000\n")
    stream = imported(tmp_path, log)
    pas = [op.pa for op in stream.ops if isinstance(op, Enter)]
    assert len(pas) == 2 and pas[0] != pas[1]  # the same fd number, not the same file
    assert any("never opened" in w for w in stream.origin["warnings"])


# -- the recorded logs ------------------------------------------------------------------------------


def test_the_recorded_logs_are_small_and_there():
    assert [p.name for p in LOGS] == ["gcc-hello.strace", "pipeline.strace", "python-alloc.strace"]
    assert all(p.stat().st_size < 64_000 for p in LOGS)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.stem)
def test_recorded_logs_import_to_valid_legal_streams_byte_for_byte_the_same(tmp_path, capsys, log):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["import", "strace", str(log), "-o", str(a)]) == EXIT_OK
    assert main(["import", "strace", str(log), "-o", str(b)]) == EXIT_OK
    assert a.read_bytes() == b.read_bytes()
    assert main(["validate", str(a)]) == EXIT_OK
    stream = streams.load(a)
    assert vm_legality_problems(stream) == []
    assert stream.origin["unplaced"]["pages"] == 0 and stream.origin["warnings"] == []
    capsys.readouterr()


def _lifetimes(stream: streams.Stream) -> dict[int, list[str]]:
    """pmap -> the kinds of its ops, in order (create as 'create')."""
    out: dict[int, list[str]] = {}
    next_id = 1
    for op in stream.ops:
        if isinstance(op, Create):
            out[next_id] = ["create"]
            next_id += 1
        elif hasattr(op, "pmap"):
            out[op.pmap].append(op.name)
    return out


def test_gcc_process_tree_vfork_exec_exit():
    """gcc vforks cc1 and then as: each child borrows gcc's pmap (reference), gives it
    back at execve (destroy) and gets its own (create); all three end destroyed."""
    stream = convert(str(DATA / "gcc-hello.strace"), phys_pages=8192)
    life = _lifetimes(stream)
    assert sorted(life) == [1, 2, 3]
    assert life[1].count("reference") == 2 and life[1].count("destroy") == 3
    for pmap in (2, 3):
        assert life[pmap][0] == "create" and life[pmap][-1] == "destroy"
        assert life[pmap].count("destroy") == 1 and "enter" in life[pmap]
    kinds = [op.name for op in stream.ops]
    first_ref = kinds.index("reference")
    assert kinds[first_ref + 1:first_ref + 3] == ["destroy", "create"]  # cc1's execve


def test_pipeline_process_tree_fork_exec_exit():
    """sh clones seq, sort and head: copies of its address space, each emptied by its
    execve (same pmap: no create after it), and destroyed at its exit."""
    stream = convert(str(DATA / "pipeline.strace"), phys_pages=8192)
    life = _lifetimes(stream)
    assert sorted(life) == [1, 2, 3, 4]
    assert not any(isinstance(op, Reference) for op in stream.ops)
    for pmap in (2, 3, 4):
        ops = life[pmap]
        assert ops[0] == "create" and ops[1] == "enter"  # the copy
        assert ops.count("create") == 1 and ops[-1] == "destroy"
        assert "remove" in ops[2:-1]
    # Copies are copy-on-write: the parent's writable pages were write-protected.
    assert any(isinstance(op, Protect) and op.pmap == 1 and op.prot == R for op in stream.ops)


def test_a_file_page_is_shared_by_two_processes():
    """cc1 and as (pmaps 2 and 3, made by execve, not by a fork) both map libc: the same
    file page is the same frame in both, entered read-only."""
    stream = convert(str(DATA / "gcc-hello.strace"), phys_pages=8192)
    pas: dict[int, dict[int, set[int]]] = {}
    for op in stream.ops:
        if isinstance(op, Enter):
            pas.setdefault(op.pmap, {}).setdefault(op.pa, set()).add(op.prot)
    shared = set(pas[2]) & set(pas[3])
    assert len(shared) >= 10
    assert all(not any(p & PROT_W for p in pas[2][pa] | pas[3][pa]) for pa in shared)


def test_addresses_above_4_gib_are_folded_into_the_user_range():
    """The log's mmaps return 0x7f... addresses; every entered VA is a 32-bit user VA,
    and a library keeps its layout: its pages are at the same offsets from each other."""
    log = (DATA / "gcc-hello.strace").read_text()
    high = [int(a, 16) for a in re.findall(r"\) = (0x[0-9a-f]+)$", log, re.M) if int(a, 16) >= 1 << 32]
    assert len(high) > 20
    stream = convert(str(DATA / "gcc-hello.strace"), phys_pages=8192, max_pages_per_mapping=10_000)
    enters = [op for op in stream.ops if isinstance(op, Enter)]
    assert all(0x1000 <= op.va < 0xEFC00000 for op in enters)
    # gcc's first libc mapping: 0x...eb000 (1974096 bytes, read-only, file offset 0).
    m = re.search(r"^(\d+) +mmap\(NULL, 1974096, PROT_READ, MAP_PRIVATE\|MAP_DENYWRITE, 3, 0\) = (0x[0-9a-f]+)$", log, re.M)
    assert m is not None
    base = int(m.group(2), 16)
    first = next(op for op in enters if op.pmap == 1 and op.prot == R and (op.va & 0x3FFFFF) == (base & 0x3FFFFF))
    # The page after it in the same mapping is at the next VA: the offset within 4 MiB kept.
    vas = {op.va for op in enters if op.pmap == 1}
    assert first.va + 0x1000 in vas
    assert first.va % (4 << 20) == base % (4 << 20)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.stem)
def test_recorded_workloads_replay_without_divergence_on_the_fixed_pmaps(registry, log):
    stream = convert(str(log), phys_pages=8192)
    run = Harness.from_registry(registry, ["alpha-ref", "arm32-refcount"]).run(stream)
    assert run.ops_run == len(stream)
    assert run.divergences == [] and run.stopped == {}


def test_the_leaky_pmap_leaks_on_a_real_compile(registry):
    """PR 5666 on a real workload: arm32-leaky keeps PT pages after cc1's unmaps."""
    stream = convert(str(DATA / "gcc-hello.strace"), phys_pages=8192)
    run = Harness.from_registry(registry, ["alpha-ref", "arm32-leaky"]).run(stream)
    assert {d.signature.split(":")[0] for d in run.divergences} == {"resource"}
    assert all(d.backend == "arm32-leaky" and d.field == "pt_frames" for d in run.divergences)


def test_import_then_replay_through_the_commands(tmp_path, capsys):
    out = tmp_path / "py.json"
    assert main(["import", "strace", str(DATA / "python-alloc.strace"), "-o", str(out),
                 "--phys-pages", "2048", "--max-pages-per-mapping", "8"]) == EXIT_OK
    assert "2 pmaps" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["machine"] == {"phys_pages": 2048} and doc["origin"]["max_pages_per_mapping"] == 8
    assert main(["replay", "--backends", "alpha-ref,arm32-refcount", str(out)]) == EXIT_OK
    assert "no divergences" in capsys.readouterr().out


# -- importers are plugins ----------------------------------------------------------------------------

IMPORTER_PLUGIN = '''
import difftest
from difftest.ops import Create, Destroy
from difftest.streams import make_stream


def convert(log_path, *, phys_pages, max_pages_per_mapping):
    n = len(open(log_path).read().split())
    return make_stream([op for i in range(n) for op in (Create(), Destroy(i + 1))], phys_pages=phys_pages,
                       origin={{"importer": "words", "warnings": [f"{{n}} words, no memory calls"]}})


@difftest.hookimpl
def difftest_register_importers(register):
    register({what})
'''


def _plugin_run(tmp_path, what: str, *args: str):
    from tests.cliutil import clean_env, run_difftest

    (tmp_path / "my_importer.py").write_text(IMPORTER_PLUGIN.format(what=what))
    return run_difftest("-p", "my_importer", *args, env=clean_env([tmp_path]))


def test_a_third_party_importer_registers_like_the_builtin(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("two words\n")
    out = tmp_path / "s.json"
    result = _plugin_run(tmp_path, 'difftest.ImporterSpec("words", convert)', "import", "words", str(log),
                         "-o", str(out), "--phys-pages", "32")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr.strip() == f"difftest: warning: {log}: 2 words, no memory calls"
    stream = streams.load(out)
    assert [op.name for op in stream.ops] == ["create", "destroy"] * 2 and stream.phys_pages == 32


@pytest.mark.parametrize(("what", "needles"), [
    ('difftest.ImporterSpec("strace", convert)', ("importer 'strace' is already registered", "by plugin 'seeded'")),
    ("object()", ("is not an ImporterSpec",)),
    ('difftest.ImporterSpec("two words", convert)', ("importer name 'two words' is not a non-empty word",)),
])
def test_the_plugin_host_refuses_a_bad_importer(tmp_path, what, needles):
    result = _plugin_run(tmp_path, what, "import", "strace", str(LOGS[0]), "-o", str(tmp_path / "s.json"))
    assert result.returncode == 3
    assert_one_line_error(result.stderr, "plugin 'my_importer' (local module)", *needles)


def test_decorated_logs_read_like_plain_ones(tmp_path):
    """-tt timestamps, -T durations and -y file names change nothing."""
    plain = imported(tmp_path, TWO_PROCESSES)
    decorated = []
    for line in TWO_PROCESSES.splitlines():
        pid, rest = line.split(" ", 1)
        rest = re.sub(r"^(openat\(.*\) = )(\d+)$", r"\1\2</lib/libc.so.6>", rest)
        rest = re.sub(r"(, )(\d)(, 0(x1000)?\) = )", r"\1\2</lib/libc.so.6>\3", rest)
        if " = " in rest and not rest.endswith("?"):
            rest += " <0.000012>"
        decorated.append(f"{pid}  12:00:00.000001 {rest}")
    assert list(imported(tmp_path, "\n".join(decorated) + "\n").ops) == list(plain.ops)


# -- properties: any log of these calls imports to a valid, VM-legal stream -----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASES = [0x00400000, 0x0FFC0000, 0x55550000000, 0x7F0000000000, 0x7FFFFFFFF000 - 0x400000, 0xEFBF0000]
_PROTS = ["PROT_NONE", "PROT_READ", "PROT_READ|PROT_WRITE", "PROT_READ|PROT_EXEC", "PROT_WRITE"]
_ACTIONS = st.lists(st.tuples(
    st.sampled_from(["mmap", "mmap", "mmap", "munmap", "mprotect", "brk", "openat", "close", "fork", "vfork",
                     "thread", "execve", "exit", "madvise", "mremap"]),
    st.integers(0, 7), st.integers(0, len(_BASES) - 1), st.integers(0, 1100), st.integers(1, 40),
    st.integers(0, len(_PROTS) - 1), st.booleans()), max_size=60)


def render_log(actions) -> str:
    """A log strace could print for these actions (pids, fds and addresses kept consistent)."""
    lines, alive, fds, brk = ['100 execve("/bin/sh", ["sh"], 0x7ffd0 /* 1 var */) = 0'], [100], {100: []}, {}
    next_pid = 101
    for kind, who, base, page, npages, prot, flag in actions:
        pid = alive[who % len(alive)]
        addr = _BASES[base] + page * 4096
        size = npages * 4096
        if kind == "mmap":
            if flag and fds[pid]:
                fd = fds[pid][page % len(fds[pid])]
                share = "MAP_SHARED" if npages % 3 == 0 else "MAP_PRIVATE"
                lines.append(f"{pid} mmap(NULL, {size}, {_PROTS[prot]}, {share}, {fd}, {page * 4096:#x}) = {addr:#x}")
            else:
                fixed = "|MAP_FIXED" if page % 2 else ""
                lines.append(f"{pid} mmap({addr:#x}, {size}, {_PROTS[prot]}, MAP_PRIVATE{fixed}|MAP_ANONYMOUS, -1, 0)"
                             f" = {addr:#x}")
        elif kind == "munmap":
            lines.append(f"{pid} munmap({addr:#x}, {size}) = 0")
        elif kind == "mprotect":
            lines.append(f"{pid} mprotect({addr:#x}, {size}, {_PROTS[prot]}) = 0")
        elif kind == "madvise":
            lines.append(f"{pid} madvise({addr:#x}, {size}, MADV_DONTNEED) = 0")
        elif kind == "mremap":
            lines.append(f"{pid} mremap({addr:#x}, {size}, {size * 2}, MREMAP_MAYMOVE) = {_BASES[(base + 1) % len(_BASES)]:#x}")
        elif kind == "brk":
            start = brk.setdefault(pid, 0x01000000 + 0x100000 * (pid % 7))
            if pid not in brk or not flag:
                lines.append(f"{pid} brk(NULL) = {start:#x}")
            lines.append(f"{pid} brk({start + page * 512:#x}) = {start + page * 512:#x}")
        elif kind == "openat":
            fd = 3 + len(fds[pid])
            lines.append(f'{pid} openat(AT_FDCWD, "/lib/lib{page % 4}.so", O_RDONLY|O_CLOEXEC) = {fd}')
            fds[pid].append(fd)
        elif kind == "close" and fds[pid]:
            lines.append(f"{pid} close({fds[pid].pop()}) = 0")
        elif kind in ("fork", "vfork", "thread"):
            child, next_pid = next_pid, next_pid + 1
            if kind == "fork":
                lines.append(f"{pid} clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = {child}")
            elif kind == "thread":
                lines.append(f"{pid} clone3({{flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_THREAD, exit_signal=0}}, 88) = {child}")
            else:
                lines.append(f"{pid} vfork( <unfinished ...>")
                lines.append(f'{child} execve("/bin/x", ["x"], 0x7ffd0 /* 1 var */) = 0')
                lines.append(f"{pid} <... vfork resumed>) = {child}")
            alive.append(child)
            fds[child] = list(fds[pid])
        elif kind == "execve":
            lines.append(f'{pid} execve("/bin/y", ["y"], 0x7ffd0 /* 1 var */) = 0')
            brk.pop(pid, None)
        elif kind == "exit" and len(alive) > 1:
            lines.append(f"{pid} exit_group(0) = ?")
            lines.append(f"{pid} +++ exited with 0 +++")
            alive.remove(pid)
    for pid in reversed(alive):
        lines.append(f"{pid} +++ exited with 0 +++")
    return "\n".join(lines) + "\n"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS, phys_pages=st.sampled_from([16, 40, 8192]), max_pages=st.sampled_from([1, 3, 16]))
def test_any_log_imports_to_a_valid_legal_deterministic_stream(tmp_path, actions, phys_pages, max_pages):
    text = render_log(actions)
    stream = imported(tmp_path, text, phys_pages=phys_pages, max_pages=max_pages)  # validates
    assert vm_legality_problems(stream) == []
    assert streams.dumps(imported(tmp_path, text, phys_pages=phys_pages, max_pages=max_pages)) == streams.dumps(stream)
    # every pmap the log made is destroyed once its processes are gone
    kinds = [op.name for op in stream.ops]
    assert kinds.count("create") + kinds.count("reference") == kinds.count("destroy")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS)
def test_any_imported_log_replays_alike_on_the_refcounting_pmaps(tmp_path, registry, actions):
    stream = imported(tmp_path, render_log(actions), phys_pages=96, max_pages=4)
    run = Harness.from_registry(registry, ["alpha-ref", "arm32-refcount"]).run(stream)
    assert run.divergences == [], run.divergences[0].message
