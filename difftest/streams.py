"""Stream files (``difftest.stream/1``, MODEL.md §8): load, validate, write.

A stream is everything needed to run it again: the machine, where it came from, and the
ops.  Validation is strict, because a stream that the VM layer could never produce finds
"bugs" that are not there; every refusal names the op index and the field.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from itertools import count, filterfalse, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from difftest.errors import BadInput, StreamError, short
from difftest.jsonstream import (
    MAX_NESTING,
    MalformedJSON,
    NotAnObject,
    finite_float,
    fix_text,
    nesting_depth,
    read_elements,
    refuse_constant,
    scan_object,
)
from difftest.machine import (
    DEFAULT_PHYS_PAGES,
    KERNEL_MAX,
    KERNEL_MIN,
    KERNEL_PMAP,
    PAGE_MASK,
    PAGE_SIZE,
    USER_MAX,
    USER_MIN,
)
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
    Create,
    Destroy,
    KEnter,
    KRemove,
    Op,
    Reference,
    parse_prot,
    prot_str,
)

STREAM_FORMAT = "difftest.stream/1"

_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


@dataclass(frozen=True)
class Stream:
    """A validated op sequence with its machine and origin.

    ``ops`` is a tuple, or for a file opened with ``open_stream`` a ``LazyOps`` that
    decodes them as they are used.
    """

    ops: Sequence[Op]
    phys_pages: int = DEFAULT_PHYS_PAGES
    origin: dict[str, Any] = field(default_factory=dict, hash=False)
    # Memory pressure (``machine.free_frames``): at most this many frames are free when the
    # stream starts; the rest of the machine beyond the named data pages is held by the
    # rest of the system (other processes, caches) and reserved like data.  None: every
    # frame the stream does not name is free.
    free_frames: int | None = None
    # named_frames(), worked out once (the ops never change): a run, its pools and the
    # stream's statistics all ask
    _named: frozenset[int] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __len__(self) -> int:
        return len(self.ops)

    def named_frames(self) -> set[int]:
        """Frames the stream's ops name as data pages."""
        named = self._named
        if named is None:
            named = frozenset(op.pa // PAGE_SIZE for op in self.ops if hasattr(op, "pa"))
            object.__setattr__(self, "_named", named)  # (a cache on a frozen value)
        return set(named)

    def data_frames(self) -> set[int]:
        """Frames reserved as data in every pool before running: the named ones, plus, with
        ``free_frames``, the lowest unnamed frames until only ``free_frames`` are left."""
        named = self.named_frames()
        if self.free_frames is None:
            return named
        held = self.phys_pages - len(named) - self.free_frames
        if held <= 0:
            return named
        named.update(islice(filterfalse(named.__contains__, count()), held))  # (at C speed: thousands)
        return named

    def data_frame_count(self) -> int:
        """``len(data_frames())`` without building the set of unnamed frames: the reserve
        adds exactly the frames held beyond the named ones."""
        named = len(self.named_frames())
        if self.free_frames is None:
            return named
        return named + max(0, self.phys_pages - named - self.free_frames)

    def replace(self, ops: Sequence[Op] | None = None, **changes: Any) -> "Stream":
        return Stream(
            ops=tuple(self.ops if ops is None else ops),
            phys_pages=changes.get("phys_pages", self.phys_pages),
            origin=changes.get("origin", self.origin),
            free_frames=changes.get("free_frames", self.free_frames),
        )

    def machine(self) -> dict[str, int]:
        """The ``machine`` object of the stream file."""
        doc = {"phys_pages": self.phys_pages}
        if self.free_frames is not None:
            doc["free_frames"] = self.free_frames
        return doc


# -- field codecs -----------------------------------------------------------------------


def _encode_field(kind: str, value: Any) -> Any:
    if kind in (F_VA, F_PA, F_SIZE):
        return f"{value:#010x}"
    if kind in (F_PROT, F_ACCESS):
        return prot_str(value)
    return value


def op_to_json(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op.name}
    for name, kind in op.FIELDS:
        out[name] = _encode_field(kind, getattr(op, name))
    return out


def _decode_field(kind: str, value: Any) -> Any:
    """Decode one field's JSON value; raise ValueError with a short reason."""
    if kind == F_PMAP:
        if type(value) is not int:
            raise ValueError(f"{short(value)} is not an integer pmap id")
        if value < 0:
            raise ValueError(f"{value} is not a pmap id (ids are >= 0)")
        return value
    if kind in (F_VA, F_PA, F_SIZE):
        if isinstance(value, str):
            # Strictly 0x and hex digits: int() alone would take spaces, newlines and '_'.
            if not _HEX.fullmatch(value):
                raise ValueError(f"{short(value)} is not a hex address such as '0x00400000'")
            number = int(value, 16)
        elif type(value) is int:
            number = value
        else:
            raise ValueError(f"{short(value)} is not an address")
        if number < 0:
            raise ValueError(f"{short(value)} is negative")
        if number & PAGE_MASK:
            raise ValueError(f"{number:#010x} is not page-aligned ({PAGE_SIZE} bytes)")
        return number
    if kind in (F_PROT, F_ACCESS):
        if not isinstance(value, str):
            raise ValueError(f"{short(value)} is not a protection string such as 'rw'")
        return parse_prot(value)
    if kind == F_KIND:
        if value not in ("r", "w", "x"):
            raise ValueError(f"{short(value)} is not one of 'r', 'w', 'x'")
        return value
    if kind == F_BOOL:
        if type(value) is not bool:
            raise ValueError(f"{short(value)} is not true or false")
        return value
    raise AssertionError(kind)


def op_from_json(raw: Any, index: int) -> Op:
    """Decode one op object, checking its shape and each field's own form."""
    if not isinstance(raw, dict):
        raise StreamError(f"{short(raw)} is not an object", index=index)
    name = raw.get("op")
    if name is None:
        raise StreamError("no 'op' field", index=index, field="op")
    cls = OP_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(OP_TYPES))
        raise StreamError(f"unknown op {short(name)} (known: {known})", index=index, field="op")
    expected = {n for n, _ in cls.FIELDS}
    extra = sorted(set(raw) - expected - {"op"})
    if extra:
        raise StreamError(f"unexpected field for {name}", index=index, op=name, field=extra[0])
    values = {}
    for fname, kind in cls.FIELDS:
        if fname not in raw:
            raise StreamError("missing", index=index, op=name, field=fname)
        try:
            values[fname] = _decode_field(kind, raw[fname])
        except ValueError as exc:
            raise StreamError(str(exc), index=index, op=name, field=fname) from None
    return cls(**values)


# -- semantic validation -------------------------------------------------------------------


def _check_range(op: Op, index: int, fname: str, va: int, pmap: int, *, end: bool = False) -> None:
    """Kernel addresses only in pmap 0, user addresses only in user pmaps."""
    if pmap == KERNEL_PMAP:
        lo, hi, what = KERNEL_MIN, KERNEL_MAX, "kernel"
    else:
        lo, hi, what = USER_MIN, USER_MAX, "user"
    ok = lo <= va <= hi if end else lo <= va < hi
    if not ok:
        side = "kernel pmap 0" if pmap == KERNEL_PMAP else f"user pmap {pmap}"
        raise StreamError(
            f"{va:#010x} is outside the {what} range [{lo:#010x}, {hi:#010x}) of {side}",
            index=index,
            op=op.name,
            field=fname,
        )


def validate_ops(ops: Iterable[Op], phys_pages: int) -> None:
    """Check what a single op's fields cannot show: ranges, ordering, pmap lifetimes.

    pmap ids: 0 is the kernel pmap and always exists; ``create`` makes id 1, 2, 3, ... in
    order and ids are never reused; ``reference`` adds a reference and ``destroy`` drops
    one, the pmap dying at zero.  Using an id before its create or after its last destroy
    is refused.
    """
    check = Validator(phys_pages).check
    for index, op in enumerate(ops):
        check(index, op)


class Validator:
    """``validate_ops`` one op at a time (for streams read as they are used)."""

    __slots__ = ("limit", "phys_pages", "refs", "next_id")

    def __init__(self, phys_pages: int) -> None:
        self.phys_pages = phys_pages
        self.limit = phys_pages * PAGE_SIZE
        self.refs: dict[int, int] = {}
        self.next_id = 1

    def check(self, index: int, op: Op) -> None:
        """Raise StreamError if ``op``, the ``index``-th of the stream, is not valid here."""
        refs = self.refs
        name = op.name
        if isinstance(op, Create):
            refs[self.next_id] = 1
            self.next_id += 1
            return
        pmap = getattr(op, "pmap", None)
        if isinstance(op, (KEnter, KRemove)):
            pmap = KERNEL_PMAP
        if pmap is not None and pmap != KERNEL_PMAP and "pmap" in {f for f, _ in op.FIELDS}:
            if pmap >= self.next_id:
                raise StreamError(
                    f"pmap {pmap} is used before its create", index=index, op=name, field="pmap"
                )
            if refs.get(pmap, 0) <= 0:
                raise StreamError(
                    f"pmap {pmap} is used after its last destroy", index=index, op=name, field="pmap"
                )
        if isinstance(op, (Reference, Destroy)) and op.pmap == KERNEL_PMAP:
            raise StreamError(
                "the kernel pmap 0 is never referenced or destroyed", index=index, op=name, field="pmap"
            )
        for fname, kind in op.FIELDS:
            value = getattr(op, fname)
            if kind == F_PA and value >= self.limit:
                raise StreamError(
                    f"{value:#010x} is beyond physical memory ({self.phys_pages} pages)",
                    index=index,
                    op=name,
                    field=fname,
                )
            if kind == F_VA:
                _check_range(op, index, fname, value, pmap, end=(fname == "eva"))
        if hasattr(op, "sva") and op.eva <= op.sva:
            raise StreamError(
                f"eva {op.eva:#010x} is not above sva {op.sva:#010x}", index=index, op=name, field="eva"
            )
        if hasattr(op, "access") and op.access & ~op.prot:
            raise StreamError(
                f"access {prot_str(op.access)!r} is not within prot {prot_str(op.prot)!r}",
                index=index,
                op=name,
                field="access",
            )
        if isinstance(op, KRemove):
            if op.size == 0:
                raise StreamError("size is zero", index=index, op=name, field="size")
            if op.va + op.size > KERNEL_MAX:
                raise StreamError(
                    f"va + size = {op.va + op.size:#010x} runs past the kernel range end {KERNEL_MAX:#010x}",
                    index=index,
                    op=name,
                    field="size",
                )
        if isinstance(op, Reference):
            refs[op.pmap] += 1
        elif isinstance(op, Destroy):
            refs[op.pmap] -= 1


# -- files ---------------------------------------------------------------------------------


def stream_from_json(doc: Any, source: str | None = None) -> Stream:
    """Decode and validate a parsed ``difftest.stream/1`` document."""
    try:
        if not isinstance(doc, dict):
            raise StreamError("the document is not a JSON object")
        phys_pages, origin, free_frames = _check_header(doc)
        raw_ops = doc.get("ops")
        if not isinstance(raw_ops, list):
            raise StreamError("field 'ops' must be a list")
        ops = tuple(op_from_json(raw, i) for i, raw in enumerate(raw_ops))
        validate_ops(ops, phys_pages)
        return Stream(ops=ops, phys_pages=phys_pages, origin=origin, free_frames=free_frames)
    except StreamError as err:
        raise err.with_source(source) if source else err


def _check_header(doc: dict[str, Any]) -> tuple[int, dict[str, Any], int | None]:
    """The format, machine (phys_pages, free_frames) and origin of a stream document
    (every key but the ops' form): (phys_pages, origin, free_frames)."""
    fmt = doc.get("format")
    if fmt != STREAM_FORMAT:
        raise StreamError(f"field 'format' is {short(fmt)}, expected {STREAM_FORMAT!r}")
    extra = sorted(set(doc) - {"format", "machine", "origin", "ops"})
    if extra:
        raise StreamError(f"unexpected top-level field {extra[0]!r}")
    machine = doc.get("machine", {})
    if not isinstance(machine, dict) or set(machine) - {"phys_pages", "free_frames"}:
        raise StreamError("field 'machine' must be an object with only 'phys_pages' and 'free_frames'")
    phys_pages = machine.get("phys_pages", DEFAULT_PHYS_PAGES)
    if type(phys_pages) is not int or not 16 <= phys_pages <= (1 << 20):
        raise StreamError(f"machine.phys_pages {short(phys_pages)} is not an integer in 16..1048576")
    free_frames = machine.get("free_frames")
    _check_free_frames(free_frames, phys_pages)
    origin = doc.get("origin", {})
    if not isinstance(origin, dict):
        raise StreamError("field 'origin' must be an object")
    if nesting_depth(origin) > MAX_NESTING:  # the same limit for every command that reads it
        raise StreamError(f"field 'origin' is nested deeper than {MAX_NESTING} levels")
    return phys_pages, origin, free_frames


MAX_STREAM_BYTES_ENV = "DIFFTEST_MAX_STREAM_BYTES"
DEFAULT_MAX_STREAM_BYTES = 16 << 30


def max_stream_bytes() -> int:
    """The largest stream file read (``DIFFTEST_MAX_STREAM_BYTES``, default 16 GiB)."""
    text = os.environ.get(MAX_STREAM_BYTES_ENV)
    if not text:
        return DEFAULT_MAX_STREAM_BYTES
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise BadInput(f"{MAX_STREAM_BYTES_ENV}={short(text)} is not a positive number of bytes")
    return limit


def check_stream_file(path: str | os.PathLike[str]) -> bool:
    """Refuse what must not be read as a stream: a file above the size limit, a device
    (``/dev/zero`` never ends) or a directory.  A pipe is allowed (read up to the limit).
    Returns whether ``path`` is a regular file."""
    source = str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StreamError(f"cannot read: {exc.strerror or exc}", source=source) from None
    limit = max_stream_bytes()
    if stat.S_ISREG(st.st_mode):
        if st.st_size > limit:
            raise StreamError(f"{st.st_size} bytes: larger than the limit of {limit} bytes ({MAX_STREAM_BYTES_ENV})",
                              source=source)
        return True
    if not stat.S_ISFIFO(st.st_mode):
        raise StreamError("not a regular file", source=source)
    return False


def stream_to_json(stream: Stream) -> dict[str, Any]:
    return {
        "format": STREAM_FORMAT,
        "machine": stream.machine(),
        "origin": stream.origin,
        "ops": [op_to_json(op) for op in stream.ops],
    }


def loads(text: str, source: str | None = None) -> Stream:
    try:
        doc = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    except json.JSONDecodeError as exc:
        raise StreamError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source
        ) from None
    except ValueError as exc:  # NaN, Infinity, 1e999, a 5000-digit integer: dumps() could not write it back
        raise StreamError(f"malformed JSON: {exc}", source=source) from None
    except RecursionError:
        raise StreamError("malformed JSON: nested too deeply", source=source) from None
    return stream_from_json(doc, source)


def dumps(stream: Stream) -> str:
    """Canonical text: one op per line, so that diffs of reproducers read well."""
    return dumps_doc(stream_to_json(stream))


DOC_KEYS = ("format", "machine", "origin", "ops")  # a stream document's keys, in stream_to_json's order


def dumps_doc(doc: dict[str, Any]) -> str:
    """``dumps`` of the stream ``doc`` is the document of (``stream_to_json``), from the
    document: the same text, without decoding it."""
    head = json.dumps(
        {k: doc[k] for k in ("format", "machine", "origin")}, sort_keys=False, allow_nan=False
    )
    lines = [json.dumps(op, allow_nan=False) for op in doc["ops"]]
    body = ",\n  ".join(lines)
    return head[:-1] + ',\n "ops": [\n  ' + body + ("\n ]}\n" if lines else "]}\n")


def json_with_streams(doc: Any, indent: int, texts: dict[int, str]) -> str:
    """``json.dumps(doc, indent=indent)``, but with each stream document in ``doc`` whose
    ``id`` is in ``texts`` written as that text (its ``dumps_doc``, one op a line), and each
    list of numbers, booleans and nulls (a plot's series) on one line: the same JSON value,
    its ops encoded at C speed rather than by the indenting encoder, and a report's plots
    not one number a line."""
    found: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            if id(value) in texts:
                found.append(texts[id(value)].rstrip("\n"))
                return f"{_STREAM_MARK}{len(found) - 1}"
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            if value and all(type(v) in _ONE_LINE_ITEMS for v in value):
                found.append(json.dumps(value, allow_nan=False))
                return f"{_STREAM_MARK}{len(found) - 1}"
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(doc), indent=indent, allow_nan=False)
    if not found:
        return text
    # The markers cannot occur in the other values (see _STREAM_MARK): each is one stream
    # or one list.
    mark = json.dumps(_STREAM_MARK)[:-1]
    return re.sub(re.escape(mark) + r'(\d+)"', lambda m: found[int(m.group(1))], text)


_ONE_LINE_ITEMS = frozenset({int, float, bool, type(None)})


# Stands for a stream while the rest of a document is encoded: with the process id and a
# random part, no value of a campaign's records holds it.
_STREAM_MARK = f"\x00stream {os.getpid()} {os.urandom(8).hex()}\x00"


def load(path: str | os.PathLike[str]) -> Stream:
    """Read a stream file; every problem is a StreamError naming the file."""
    source = str(path)
    check_stream_file(path)
    limit = max_stream_bytes()
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)  # a pipe has no size to check beforehand
        if len(data) > limit:
            raise StreamError(f"larger than the limit of {limit} bytes ({MAX_STREAM_BYTES_ENV})", source=source)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", source=source) from None
    return loads(text, source)


# -- big files: ops decoded as they are used ------------------------------------------------

OPS_PER_CHUNK = 4096  # ops decoded together when a file stream is read again


class LazyOps(Sequence[Op]):
    """The ops of a stream file, decoded a chunk at a time as they are used.

    ``ops[i]`` in order decodes each chunk once; memory holds one chunk, whatever the
    length.  A slice decodes the ops it names (a prefix to shrink, for example).
    """

    def __init__(self, path: str, offsets: list[int], length: int) -> None:
        self.path = path
        self._offsets = offsets  # byte offset of op k * OPS_PER_CHUNK
        self._length = length
        self._chunk = -1
        self._ops: list[Op] = []

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self._length)))
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        chunk, at = divmod(index, OPS_PER_CHUNK)
        if chunk != self._chunk:
            self._ops = self._decode(chunk)
            self._chunk = chunk
        return self._ops[at]

    def __iter__(self) -> Iterator[Op]:
        for chunk in range(len(self._offsets)):
            yield from self._decode(chunk)

    def _decode(self, chunk: int) -> list[Op]:
        first = chunk * OPS_PER_CHUNK
        count = min(OPS_PER_CHUNK, self._length - first)
        out: list[Op] = []
        try:
            with open(self.path, "rb") as fh:
                for i, raw in enumerate(read_elements(fh, self._offsets[chunk], count)):
                    try:
                        out.append(op_from_json(raw, first + i))
                    except StreamError:
                        op_from_json(fix_text(raw), first + i)  # the message in real text
                        raise
        except OSError as exc:
            raise StreamError(f"cannot read: {exc.strerror or exc}", source=self.path) from None
        except StreamError as err:
            raise err.with_source(self.path) from None
        return out


@dataclass(frozen=True)
class FileStream(Stream):
    """A validated stream file whose ops stay in the file until used (``open_stream``)."""

    path: str = ""
    frames: frozenset[int] = frozenset()

    def named_frames(self) -> set[int]:
        return set(self.frames)


def open_stream(path: str | os.PathLike[str]) -> Stream:
    """Check a stream file as ``load`` does, in memory that does not grow with its length.

    The file is read twice (once for its syntax and layout, once to decode and validate
    every op) and the ops are decoded again, a chunk at a time, as the run uses them.
    """
    source = str(path)
    regular = check_stream_file(path)
    if not regular:  # a pipe cannot be read again: hold it in memory (load says what is wrong)
        return load(path)
    # In the usual layout (format and machine before the ops) every op is decoded and
    # checked during the one read of the file; otherwise a second read does it.
    inline: list[Any] = []  # [Validator, frames, first StreamError or None] when checked inline

    def sink(members: dict[str, Any]):
        if "format" not in members or "machine" not in members:
            return None
        try:
            phys_pages, _, _ = _check_header({**members, "ops": []})
        except StreamError:
            return None  # reported after the whole object is read, as load() would
        inline.extend([Validator(phys_pages), set(), None])
        check, frames = inline[0].check, inline[1]

        def on_op(index: int, raw: Any) -> None:
            if inline[2] is not None:
                return
            try:
                try:
                    op = op_from_json(raw, index)
                except StreamError:
                    op_from_json(fix_text(raw), index)  # the message in real text
                    raise
                check(index, op)
            except StreamError as err:
                inline[2] = err
                return
            pa = getattr(op, "pa", None)
            if pa is not None:
                frames.add(pa // PAGE_SIZE)

        return on_op

    try:
        with open(path, "rb") as fh:
            scan = scan_object(fh, "ops", OPS_PER_CHUNK, sink)
    except NotAnObject:
        return load(path)  # not an object: the whole-file reader says what it is
    except MalformedJSON as exc:
        raise StreamError(str(exc), source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", source=source) from None
    header = dict(scan.members)
    if scan.array_seen:
        header["ops"] = []
    try:
        phys_pages, origin, free_frames = _check_header(header)
        if not scan.array_seen:
            raise StreamError("field 'ops' must be a list")
        ops = LazyOps(source, scan.offsets, scan.array_length)
        if inline and inline[0].phys_pages == phys_pages:
            if inline[2] is not None:
                raise inline[2]
            frames = inline[1]
        else:
            validator = Validator(phys_pages)
            frames = set()
            for index, op in enumerate(ops):
                validator.check(index, op)
                pa = getattr(op, "pa", None)
                if pa is not None:
                    frames.add(pa // PAGE_SIZE)
    except StreamError as err:
        raise (err if err.source else err.with_source(source)) from None
    return FileStream(ops=ops, phys_pages=phys_pages, origin=origin, free_frames=free_frames, path=source,
                      frames=frozenset(frames))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        # mkstemp makes the file 0600; a plain open() would give 0666 less the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def save(stream: Stream, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, dumps(stream))


def make_stream(
    ops: Iterable[Op], phys_pages: int = DEFAULT_PHYS_PAGES, origin: dict[str, Any] | None = None,
    free_frames: int | None = None,
) -> Stream:
    """Build and validate a stream from op values (raises StreamError like the loader)."""
    if type(phys_pages) is not int or not 16 <= phys_pages <= (1 << 20):
        raise StreamError(f"machine.phys_pages {short(phys_pages)} is not an integer in 16..1048576")
    _check_free_frames(free_frames, phys_pages)
    ops = tuple(ops)
    validate_ops(ops, phys_pages)
    return Stream(ops=ops, phys_pages=phys_pages, origin=dict(origin or {}), free_frames=free_frames)


def _check_free_frames(free_frames: Any, phys_pages: int) -> None:
    if free_frames is not None and (type(free_frames) is not int or not 0 <= free_frames <= phys_pages):
        raise StreamError(f"machine.free_frames {short(free_frames)} is not an integer in 0..{phys_pages}")
