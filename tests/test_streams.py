"""Stream files (MODEL.md section 8): every refusal is one line naming the op and field,
with exit 2, through the real ``difftest validate``; valid streams round-trip."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliutil import assert_one_line_error, run_difftest
from difftest import streams
from difftest.cli import main
from difftest.errors import EXIT_USAGE, StreamError
from difftest.machine import KERNEL_MAX, KERNEL_MIN, PAGE_SIZE, USER_MAX, USER_MIN
from difftest.ops import (
    F_ACCESS,
    F_BOOL,
    F_KIND,
    F_PA,
    F_PMAP,
    F_PROT,
    F_SIZE,
    F_VA,
    OP_TYPES,
    Access,
    ClearModify,
    ClearReference,
    Collect,
    Create,
    Destroy,
    Enter,
    Extract,
    IsModified,
    IsReferenced,
    KEnter,
    KRemove,
    PageProtect,
    Protect,
    Reference,
    Remove,
    Unwire,
    Update,
    prot_str,
)

FORMAT = streams.STREAM_FORMAT

# -- building raw documents ---------------------------------------------------------------

CREATE = {"op": "create"}


def doc(*ops: Any, **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"format": FORMAT, "ops": list(ops)}
    out.update(top)
    return out


def enter(pmap=1, va="0x00400000", pa="0x00200000", prot="rw", access="", wired=False,
          canfail=False, **extra: Any) -> dict[str, Any]:
    op = {"op": "enter", "pmap": pmap, "va": va, "pa": pa, "prot": prot, "access": access,
          "wired": wired, "canfail": canfail}
    op.update(extra)
    return op


def without(op: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in op.items() if k != field}


def remove(pmap=1, sva="0x00400000", eva="0x00401000") -> dict[str, Any]:
    return {"op": "remove", "pmap": pmap, "sva": sva, "eva": eva}


def protect(pmap=1, sva="0x00400000", eva="0x00401000", prot="r") -> dict[str, Any]:
    return {"op": "protect", "pmap": pmap, "sva": sva, "eva": eva, "prot": prot}


def kenter(va="0xf0000000", pa="0x00200000", prot="rw") -> dict[str, Any]:
    return {"op": "kenter", "va": va, "pa": pa, "prot": prot}


def kremove(va="0xf0000000", size="0x00001000") -> dict[str, Any]:
    return {"op": "kremove", "va": va, "size": size}


def pmap_op(name: str, pmap: int, **fields: Any) -> dict[str, Any]:
    return {"op": name, "pmap": pmap, **fields}


def hexa(n: int) -> str:
    return f"{n:#010x}"


PHYS_END = hexa(8192 * PAGE_SIZE)  # first PA beyond the default machine

# -- bad streams: (ops or a whole document, index, op name or None, field, a word of the reason)

BAD_OPS = [
    pytest.param([CREATE, {"op": "map"}], 1, None, "op", "unknown op 'map'", id="unknown-op"),
    pytest.param([CREATE, {"op": 7}], 1, None, "op", "unknown op", id="op-name-not-string"),
    pytest.param([CREATE, 42], 1, None, None, "not an object", id="op-not-object"),
    pytest.param([CREATE, {"pmap": 1}], 1, None, "op", "no 'op'", id="no-op-field"),
    pytest.param([CREATE, without(enter(), "va")], 1, "enter", "va", "missing", id="missing-field"),
    pytest.param([CREATE, without(enter(), "canfail")], 1, "enter", "canfail", "missing",
                 id="missing-bool-field"),
    pytest.param([CREATE, enter(size="0x1000")], 1, "enter", "size", "unexpected", id="extra-field"),
    pytest.param([{"op": "create", "pmap": 1}], 0, "create", "pmap", "unexpected",
                 id="extra-field-on-create"),
    pytest.param([CREATE, enter(va="0x00400010")], 1, "enter", "va", "page-aligned",
                 id="unaligned-va"),
    pytest.param([CREATE, enter(pa="0x00200fff")], 1, "enter", "pa", "page-aligned",
                 id="unaligned-pa"),
    pytest.param([CREATE, remove(sva="0x00400800")], 1, "remove", "sva", "page-aligned",
                 id="unaligned-sva"),
    pytest.param([CREATE, remove(eva=4097 + 0x400000)], 1, "remove", "eva", "page-aligned",
                 id="unaligned-eva-int"),
    pytest.param([kremove(size="0x00000800")], 0, "kremove", "size", "page-aligned",
                 id="unaligned-size"),
    pytest.param([CREATE, enter(va="4194304")], 1, "enter", "va", "hex", id="va-not-hex"),
    pytest.param([CREATE, enter(va="0x00401000\n")], 1, "enter", "va", "hex",
                 id="va-with-newline"),
    pytest.param([CREATE, enter(va="0x_401000")], 1, "enter", "va", "hex", id="va-underscore"),
    pytest.param([CREATE, enter(va=-4096)], 1, "enter", "va", "negative", id="va-negative"),
    pytest.param([CREATE, enter(va=4096.0)], 1, "enter", "va", "not an address", id="va-float"),
    pytest.param([CREATE, enter(va=True)], 1, "enter", "va", "not an address", id="va-bool"),
    pytest.param([CREATE, enter(va=hexa(USER_MAX))], 1, "enter", "va", "user range",
                 id="user-va-at-user-max"),
    pytest.param([CREATE, enter(va="0xefc01000")], 1, "enter", "va", "user range",
                 id="user-va-above-user-max"),
    pytest.param([CREATE, enter(va="0x00000000")], 1, "enter", "va", "user range",
                 id="user-va-page-zero"),
    pytest.param([CREATE, remove(eva=hexa(USER_MAX + PAGE_SIZE))], 1, "remove", "eva",
                 "user range", id="user-eva-past-user-max"),
    pytest.param([CREATE, enter(pa=PHYS_END)], 1, "enter", "pa", "beyond physical memory",
                 id="pa-beyond-phys-pages"),
    pytest.param(doc(kenter(pa="0x00010000"), machine={"phys_pages": 16}), 0, "kenter", "pa",
                 "16 pages", id="pa-beyond-small-machine"),
    pytest.param([{"op": "page_protect", "pa": PHYS_END, "prot": "r"}], 0, "page_protect", "pa",
                 "beyond", id="page-protect-pa-beyond"),
    pytest.param([{"op": "is_modified", "pa": "0xfffff000"}], 0, "is_modified", "pa", "beyond",
                 id="query-pa-beyond"),
    pytest.param([CREATE, remove(eva="0x00400000")], 1, "remove", "eva", "not above",
                 id="eva-equals-sva"),
    pytest.param([CREATE, protect(sva="0x00402000", eva="0x00401000")], 1, "protect", "eva",
                 "not above", id="eva-below-sva"),
    pytest.param([CREATE, enter(prot="r", access="w")], 1, "enter", "access", "not within",
                 id="access-not-within-prot"),
    pytest.param([CREATE, enter(prot="rw", access="rx")], 1, "enter", "access", "not within",
                 id="access-x-without-x"),
    pytest.param([CREATE, enter(va="0xf0000000")], 1, "enter", "va", "user range",
                 id="kernel-va-in-user-pmap"),
    pytest.param([CREATE, pmap_op("extract", 1, va="0xfffff000")], 1, "extract", "va",
                  "user range", id="kernel-va-extract-in-user-pmap"),
    pytest.param([CREATE, enter(pmap=0)], 1, "enter", "va", "kernel range",
                 id="user-va-in-kernel-pmap"),
    pytest.param([pmap_op("access", 0, va="0x00400000", kind="r")], 0, "access", "va",
                 "kernel pmap 0", id="user-va-access-in-kernel-pmap"),
    pytest.param([remove(pmap=0, sva="0xeff00000", eva="0xf0001000")], 0, "remove", "sva",
                 "kernel range", id="kernel-remove-starting-in-the-hole"),
    pytest.param([kenter(va="0x00400000")], 0, "kenter", "va", "kernel range",
                 id="user-va-in-kenter"),
    pytest.param([kenter(va=hexa(KERNEL_MAX))], 0, "kenter", "va", "kernel range",
                 id="kenter-at-kernel-max"),
    pytest.param([kremove(va="0x00400000")], 0, "kremove", "va", "kernel range",
                 id="user-va-in-kremove"),
    pytest.param([CREATE, enter(pmap=2)], 1, "enter", "pmap", "before its create",
                 id="pmap-before-its-create"),
    pytest.param([pmap_op("collect", 1)], 0, "collect", "pmap", "before its create",
                 id="pmap-before-any-create"),
    pytest.param([CREATE, pmap_op("destroy", 1), enter()], 2, "enter", "pmap",
                 "after its last destroy", id="pmap-after-destroy"),
    pytest.param(
        [CREATE, pmap_op("reference", 1), pmap_op("destroy", 1), enter(),
         pmap_op("destroy", 1), pmap_op("extract", 1, va="0x00400000")],
        5, "extract", "pmap", "after its last destroy", id="pmap-after-last-destroy-with-reference"),
    pytest.param([CREATE, pmap_op("destroy", 1), pmap_op("reference", 1)], 2, "reference", "pmap",
                 "after its last destroy", id="reference-after-destroy"),
    pytest.param([CREATE, pmap_op("destroy", 1), pmap_op("destroy", 1)], 2, "destroy", "pmap",
                 "after its last destroy", id="destroy-twice"),
    pytest.param([CREATE, CREATE, pmap_op("destroy", 1), pmap_op("update", 2),
                  pmap_op("update", 1)], 4, "update", "pmap", "after", id="ids-are-not-reused"),
    pytest.param([CREATE, enter(pmap="1")], 1, "enter", "pmap", "integer", id="pmap-id-string"),
    pytest.param([CREATE, enter(pmap=True)], 1, "enter", "pmap", "integer", id="pmap-id-bool"),
    pytest.param([CREATE, enter(pmap=-1)], 1, "enter", "pmap", ">= 0", id="pmap-id-negative"),
    pytest.param([CREATE, enter(prot="rwz")], 1, "enter", "prot", "subset", id="bad-prot-letter"),
    pytest.param([CREATE, enter(prot="rr")], 1, "enter", "prot", "subset", id="bad-prot-repeated"),
    pytest.param([CREATE, enter(prot="RW")], 1, "enter", "prot", "subset", id="bad-prot-upper"),
    pytest.param([CREATE, protect(prot=3)], 1, "protect", "prot", "protection string",
                 id="prot-not-string"),
    pytest.param([kenter(prot="none")], 0, "kenter", "prot", "subset", id="bad-kenter-prot"),
    pytest.param([CREATE, enter(access="q")], 1, "enter", "access", "subset", id="bad-access"),
    pytest.param([CREATE, enter(wired=1)], 1, "enter", "wired", "true or false",
                 id="wired-int"),
    pytest.param([CREATE, enter(wired="true")], 1, "enter", "wired", "true or false",
                 id="wired-string"),
    pytest.param([CREATE, enter(canfail=None)], 1, "enter", "canfail", "true or false",
                 id="canfail-null"),
    pytest.param([kremove(size="0x00000000")], 0, "kremove", "size", "zero", id="kremove-size-zero"),
    pytest.param([kremove(va="0xffffe000", size="0x00002000")], 0, "kremove", "size",
                 "past the kernel range end", id="kremove-past-the-end"),
    pytest.param([kremove(size="0x100000000")], 0, "kremove", "size", "past", id="kremove-huge"),
    pytest.param([pmap_op("reference", 0)], 0, "reference", "pmap", "kernel pmap 0",
                 id="reference-pmap-0"),
    pytest.param([CREATE, pmap_op("destroy", 0)], 1, "destroy", "pmap", "kernel pmap 0",
                 id="destroy-pmap-0"),
    pytest.param([CREATE, pmap_op("access", 1, va="0x00400000", kind="rw")], 1, "access", "kind",
                 "one of", id="bad-access-kind"),
]


@pytest.mark.parametrize(("ops", "index", "name", "field", "reason"), BAD_OPS)
def test_bad_op_is_refused_naming_index_and_field(tmp_path, capsys, ops, index, name, field, reason):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ops if isinstance(ops, dict) else doc(*ops)))

    with pytest.raises(StreamError) as excinfo:
        streams.load(path)
    err = excinfo.value
    assert (err.index, err.op, err.field) == (index, name, field)

    assert main(["validate", str(path)]) == EXIT_USAGE
    out, stderr = capsys.readouterr()
    assert out == ""
    where = f"op {index} ({name})" if name else f"op {index}:"
    needles = [str(path), where, reason]
    if field is not None:
        needles.append(f"field '{field}'")
    assert_one_line_error(stderr, *needles)


BAD_TOP = [
    pytest.param('{"format": "difftest.stream/1", "ops": [', ("malformed JSON", "line 1"),
                 id="malformed-json"),
    pytest.param('{"format": "difftest.stream/1", "ops": []} x', ("malformed JSON",),
                 id="trailing-garbage"),
    pytest.param("", ("malformed JSON",), id="empty-file"),
    pytest.param('{"format": "difftest.stream/1", "origin": {"x": NaN}, "ops": []}',
                 ("malformed JSON", "NaN"), id="nan"),
    pytest.param('{"format": "difftest.stream/1", "origin": {"x": 1e999}, "ops": []}',
                 ("malformed JSON", "1e999"), id="infinite-float"),
    pytest.param("[" * 100_000, ("malformed JSON",), id="nested-too-deeply"),
    pytest.param("[]", ("not a JSON object",), id="not-an-object"),
    pytest.param(doc(format="difftest.stream/2"), ("'format'", "difftest.stream/2"),
                 id="wrong-format"),
    pytest.param(doc(format="difftest.report/1"), ("'format'", "difftest.report/1"),
                 id="report-not-stream"),
    pytest.param({"ops": []}, ("'format'", "None"), id="missing-format"),
    pytest.param(doc(opps=[]), ("unexpected top-level field 'opps'",), id="unexpected-top-field"),
    pytest.param(doc(machine=[]), ("'machine'",), id="machine-not-object"),
    pytest.param(doc(machine={"phys_pages": 64, "cpus": 2}), ("'machine'",), id="machine-extra"),
    pytest.param(doc(machine={"phys_pages": 8}), ("phys_pages", "8"), id="phys-pages-too-small"),
    pytest.param(doc(machine={"phys_pages": 64.0}), ("phys_pages",), id="phys-pages-float"),
    pytest.param(doc(origin="fuzz"), ("'origin'",), id="origin-not-object"),
    pytest.param({"format": FORMAT}, ("'ops'",), id="ops-missing"),
    pytest.param(doc(ops={"0": CREATE}), ("'ops'",), id="ops-not-a-list"),
]


@pytest.mark.parametrize(("content", "needles"), BAD_TOP)
def test_bad_document_is_refused_naming_the_problem(tmp_path, capsys, content, needles):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(StreamError) as excinfo:
        streams.load(path)
    assert excinfo.value.index is None and excinfo.value.field is None

    assert main(["validate", str(path)]) == EXIT_USAGE
    out, stderr = capsys.readouterr()
    assert out == ""
    line = assert_one_line_error(stderr, str(path), *needles)
    assert not re.search(r"\bop \d", line)  # no op to name


def test_unreadable_files_are_bad_input(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["validate", str(missing)]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, str(missing), "cannot read")

    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"format": "\xff\xfe"}')
    assert main(["validate", str(binary)]) == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, str(binary), "cannot read")

    assert main(["validate", str(tmp_path)]) == EXIT_USAGE  # a directory
    assert_one_line_error(capsys.readouterr().err, str(tmp_path))


# The same refusals through a real child process (real stderr, real exit status).
SUBPROCESS_CASES = [
    ('{"format": "difftest.stream/1", "ops": [', ("malformed JSON",)),
    (doc(format="difftest.stream/9"), ("'format'", "difftest.stream/9")),
    (doc(CREATE, {"op": "map"}), ("op 1", "field 'op'", "unknown op")),
    (doc(CREATE, CREATE, enter(va="0x00400010")), ("op 2 (enter)", "field 'va'", "aligned")),
    (doc(CREATE, enter(extra=1)), ("op 1 (enter)", "field 'extra'")),
    (doc(CREATE, enter(pmap=0)), ("op 1 (enter)", "field 'va'", "kernel range")),
    (doc(CREATE, pmap_op("reference", 1), pmap_op("destroy", 1), pmap_op("destroy", 1),
         pmap_op("collect", 1)), ("op 4 (collect)", "field 'pmap'", "after its last destroy")),
    (doc(kremove(size="0x0")), ("op 0 (kremove)", "field 'size'")),
    (doc(CREATE, pmap_op("destroy", 0)), ("op 1 (destroy)", "field 'pmap'")),
]


@pytest.mark.parametrize(("content", "needles"), SUBPROCESS_CASES)
def test_bad_stream_through_the_command(tmp_path, content, needles):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = run_difftest("validate", str(path))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "difftest: error:", str(path), *needles)


# -- valid streams ----------------------------------------------------------------------------

EVERY_OP = doc(
    CREATE,
    pmap_op("reference", 1),
    enter(va=hexa(USER_MIN), pa="0x00000000", prot="rwx", access="rw", wired=True, canfail=True),
    enter(va=hexa(USER_MAX - PAGE_SIZE), pa=hexa(8191 * PAGE_SIZE), prot="", access=""),
    enter(pmap=0, va=hexa(KERNEL_MIN), pa="0x00001000", prot="r", access="r"),
    enter(va=0x400000, pa=0x5000),  # plain integers are accepted too
    remove(sva=hexa(USER_MIN), eva=hexa(USER_MAX)),
    protect(prot=""),
    pmap_op("unwire", 1, va="0x00400000"),
    pmap_op("extract", 0, va=hexa(KERNEL_MAX - PAGE_SIZE)),
    kenter(va=hexa(KERNEL_MAX - PAGE_SIZE), prot=""),
    kremove(va=hexa(KERNEL_MIN), size=hexa(KERNEL_MAX - KERNEL_MIN)),
    {"op": "page_protect", "pa": "0x00200000", "prot": ""},
    {"op": "clear_modify", "pa": "0x00200000"},
    {"op": "clear_reference", "pa": "0x00200000"},
    {"op": "is_modified", "pa": "0x00200000"},
    {"op": "is_referenced", "pa": "0x00200000"},
    pmap_op("collect", 1),
    pmap_op("access", 1, va="0x00400000", kind="x"),
    pmap_op("update", 0),
    pmap_op("destroy", 1),
    pmap_op("update", 1),  # still one reference left
    pmap_op("destroy", 1),
    CREATE,
    enter(pmap=2, va="0X00400000"),
    origin={"generator": "hand", "seed": 1, "note": "every op"},
)


def test_valid_stream_with_every_op_passes(tmp_path, capsys):
    assert {op["op"] for op in EVERY_OP["ops"]} == set(OP_TYPES)
    path = tmp_path / "every.json"
    path.write_text(json.dumps(EVERY_OP))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok ({len(EVERY_OP['ops'])} ops, 8192 pages)"
    assert err == ""
    stream = streams.load(path)
    assert stream.origin == EVERY_OP["origin"]
    assert stream.ops[3] == Enter(1, USER_MAX - PAGE_SIZE, 8191 * PAGE_SIZE, 0)


def test_valid_streams_pass_through_the_command(tmp_path):
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps(doc(machine={"phys_pages": 16})))
    every = tmp_path / "every.json"
    every.write_text(json.dumps(EVERY_OP))
    result = run_difftest("validate", str(minimal), str(every))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{minimal}: ok (0 ops, 16 pages)",
        f"{every}: ok ({len(EVERY_OP['ops'])} ops, 8192 pages)",
    ]


def test_validate_stops_at_the_first_bad_file(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc(CREATE)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc(CREATE, enter(pmap=3))))
    assert main(["validate", str(good), str(bad), str(good)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{good}: ok (1 ops, 8192 pages)"]
    assert_one_line_error(err, str(bad), "op 1 (enter)", "field 'pmap'")


def test_saved_stream_is_canonical_and_loads_back(tmp_path):
    stream = streams.loads(json.dumps(EVERY_OP))
    path = tmp_path / "sub" / "saved.json"
    streams.save(stream, path)
    assert streams.load(path) == stream
    assert path.read_text() == streams.dumps(stream)
    assert [p.name for p in path.parent.iterdir()] == ["saved.json"]  # no temporary left


def test_make_stream_validates_like_the_loader():
    with pytest.raises(StreamError) as excinfo:
        streams.make_stream([Create(), Enter(1, 0x400000, 0x1000, 1, access=2)])
    assert (excinfo.value.index, excinfo.value.field) == (1, "access")


# -- property: valid streams round-trip ---------------------------------------------------

PROTS = st.integers(0, 7)
USER_PAGES = (USER_MIN // PAGE_SIZE, USER_MAX // PAGE_SIZE)  # [lo, hi)
KERNEL_PAGES = (KERNEL_MIN // PAGE_SIZE, KERNEL_MAX // PAGE_SIZE)


def page_in(draw, lo: int, hi: int) -> int:
    """A page number in [lo, hi), often at or near an edge."""
    return draw(st.one_of(st.sampled_from([lo, lo + 1, hi - 2, hi - 1]), st.integers(lo, hi - 1)))


@st.composite
def valid_streams(draw, max_ops: int = 40) -> streams.Stream:
    """Streams the VM layer could produce: creates before use, no use after the last
    destroy, addresses aligned and in the right range for the pmap, access within prot."""
    phys_pages = draw(st.one_of(st.sampled_from([16, 8192, 1 << 20]), st.integers(16, 1 << 20)))
    refs: dict[int, int] = {}
    next_id = 1
    ops: list[Any] = []

    def pa() -> int:
        return page_in(draw, 0, phys_pages) * PAGE_SIZE

    def va(pmap: int) -> int:
        return page_in(draw, *(KERNEL_PAGES if pmap == 0 else USER_PAGES)) * PAGE_SIZE

    def va_range(pmap: int) -> tuple[int, int]:
        lo, hi = KERNEL_PAGES if pmap == 0 else USER_PAGES
        start = page_in(draw, lo, hi)
        end = draw(st.integers(start + 1, min(hi, start + 4096)))
        return start * PAGE_SIZE, end * PAGE_SIZE

    for _ in range(draw(st.integers(0, max_ops))):
        live = sorted(p for p, r in refs.items() if r > 0)
        kinds = ["create", "kenter", "kremove", "page", "pmap"] + (["reference", "destroy"] if live else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "create":
            ops.append(Create())
            refs[next_id] = 1
            next_id += 1
        elif kind in ("reference", "destroy"):
            pmap = draw(st.sampled_from(live))
            ops.append(Reference(pmap) if kind == "reference" else Destroy(pmap))
            refs[pmap] += 1 if kind == "reference" else -1
        elif kind == "kenter":
            ops.append(KEnter(va(0), pa(), draw(PROTS)))
        elif kind == "kremove":
            start, end = va_range(0)
            ops.append(KRemove(start, end - start))
        elif kind == "page":
            cls = draw(st.sampled_from([PageProtect, ClearModify, ClearReference, IsModified,
                                        IsReferenced]))
            ops.append(PageProtect(pa(), draw(PROTS)) if cls is PageProtect else cls(pa()))
        else:
            pmap = draw(st.sampled_from([0, *live]))
            name = draw(st.sampled_from(["enter", "remove", "protect", "unwire", "extract",
                                         "collect", "access", "update"]))
            if name == "enter":
                prot = draw(PROTS)
                access = draw(PROTS) & prot
                ops.append(Enter(pmap, va(pmap), pa(), prot, access, draw(st.booleans()),
                                 draw(st.booleans())))
            elif name in ("remove", "protect"):
                start, end = va_range(pmap)
                ops.append(Remove(pmap, start, end) if name == "remove"
                           else Protect(pmap, start, end, draw(PROTS)))
            elif name in ("unwire", "extract"):
                ops.append((Unwire if name == "unwire" else Extract)(pmap, va(pmap)))
            elif name == "access":
                ops.append(Access(pmap, va(pmap), draw(st.sampled_from("rwx"))))
            else:
                ops.append((Collect if name == "collect" else Update)(pmap))

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8)
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )
    origin = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    return streams.make_stream(ops, phys_pages, origin)


SETTINGS = settings(max_examples=100, deadline=None)


@SETTINGS
@given(valid_streams())
def test_valid_streams_round_trip_through_text(stream):
    text = streams.dumps(stream)
    assert streams.loads(text) == stream
    assert streams.loads(text).origin == stream.origin
    assert streams.dumps(streams.loads(text)) == text  # canonical
    assert json.loads(text) == streams.stream_to_json(stream)


@SETTINGS
@given(valid_streams())
def test_valid_streams_round_trip_through_json_objects(stream):
    assert streams.stream_from_json(streams.stream_to_json(stream)) == stream
    # The document is plain JSON: it survives a trip through text unchanged.
    assert json.loads(json.dumps(streams.stream_to_json(stream), allow_nan=False)) == \
        streams.stream_to_json(stream)


_CORRUPT = {
    F_PMAP: "1",
    F_VA: "0x00400800",
    F_PA: "0x00000800",
    F_SIZE: "0x00000800",
    F_PROT: "rwz",
    F_ACCESS: "q",
    F_KIND: "rx",
    F_BOOL: 1,
}


@SETTINGS
@given(valid_streams(max_ops=20).filter(lambda s: any(op.FIELDS for op in s.ops)), st.data())
def test_one_bad_field_is_refused_naming_its_op_and_field(stream, data):
    doc_ = streams.stream_to_json(stream)
    index = data.draw(st.sampled_from([i for i, op in enumerate(stream.ops) if op.FIELDS]))
    op = stream.ops[index]
    field, kind = data.draw(st.sampled_from(op.FIELDS))
    doc_["ops"][index][field] = _CORRUPT[kind]
    with pytest.raises(StreamError) as excinfo:
        streams.stream_from_json(doc_)
    assert (excinfo.value.index, excinfo.value.op, excinfo.value.field) == (index, op.name, field)
    assert f"op {index} ({op.name})" in str(excinfo.value)


def test_prot_strings_are_canonical():
    assert [prot_str(p) for p in range(8)] == ["", "r", "w", "rw", "x", "rx", "wx", "rwx"]


def test_json_with_streams_writes_lists_of_numbers_on_one_line_and_streams_one_op_a_line():
    stream = streams.make_stream([Create(), Enter(1, 0x1000, 0x2000, 1)])
    stream_doc = streams.stream_to_json(stream)
    doc = {"series": [3, 7, 9], "mixed": [1, 2.5, None, True, False], "empty": [], "names": ["a", "b"],
           "pairs": [[0, 1], [2, 3]], "reproducer": stream_doc, "nested": {"held": [0, 0, 1]}}
    text = streams.json_with_streams(doc, 2, {id(stream_doc): streams.dumps_doc(stream_doc)})
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert '  "series": [3, 7, 9],' in lines
    assert '  "mixed": [1, 2.5, null, true, false],' in lines
    assert '    "held": [0, 0, 1]' in lines
    assert '    [0, 1],' in lines and '    [2, 3]' in lines  # a list of lists: each inner one on a line
    assert '  "empty": [],' in lines
    assert '    "a",' in lines  # strings keep the indented form
    # the stream as its file's text: one op a line
    assert sum(1 for line in lines if line.lstrip().startswith('{"op": ')) == 2
    assert streams.json_with_streams({"x": [1]}, 2, {}) == '{\n  "x": [1]\n}'
