"""An incremental reader for one JSON object whose one big member is an array.

A stream file of 10^6 ops is ~90 MB of JSON; ``json.loads`` turns it into ~1 GB of
dicts.  This reader walks the top-level object with ``json.JSONDecoder.raw_decode`` over a
buffer of bounded size: the small members are decoded whole, the elements of the big
array one at a time, and every ``every``-th element's byte offset is remembered so that a
run of elements can be decoded again later from the file (``read_elements``).

Bytes are decoded as latin-1 (one character per byte, so buffer positions are file
offsets) and checked as UTF-8 on the side; strings are turned back into real text where
they matter (``fix_text``).  Every syntax problem is a ``MalformedJSON`` with the line and
column in the file.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator

CHUNK = 1 << 20  # bytes read at a time
_WS = " \t\n\r"


class MalformedJSON(ValueError):
    """A syntax problem (``message`` already says where), or bytes that are not UTF-8."""


def read_json_file(path: Any, what: str, fmt: str | None = None) -> dict[str, Any]:
    """A JSON object from ``path``, whose ``format`` is ``fmt`` when given: BadInput
    "PATH: not a WHAT (why)" otherwise."""
    from pathlib import Path

    from difftest.errors import BadInput, short

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: not a {what} ({short(str(exc), 80)})") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a {what} (not a JSON object)")
    if fmt is not None and doc.get("format") != fmt:
        raise BadInput(f"{path}: not a {what} (format is not {fmt})")
    return doc


def refuse_constant(name: str) -> Any:
    """Strict JSON: NaN and Infinity are refused (dumps(allow_nan=False) could not write them)."""
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a float")
    return value


DECODER = json.JSONDecoder(parse_constant=refuse_constant, parse_float=finite_float)


MAX_NESTING = 64  # levels of arrays and objects in a stream's free-form fields (its origin)


def nesting_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar: 0), without recursion;
    counting stops a level past ``MAX_NESTING``."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        todo.extend((child, depth + 1) for child in children)
    return deepest


def fix_text(value: Any) -> Any:
    """Undo the latin-1 reading of UTF-8 bytes in every string of a decoded value (one
    nested deeper than ``MAX_NESTING`` is left as it is: it is refused anyway)."""
    if isinstance(value, (list, dict)) and nesting_depth(value) > MAX_NESTING:
        return value
    return _fix_text(value)


def _fix_text(value: Any) -> Any:
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value  # a \\u escape beyond latin-1: already real text
    if isinstance(value, list):
        return [_fix_text(v) for v in value]
    if isinstance(value, dict):
        return {_fix_text(k): _fix_text(v) for k, v in value.items()}
    return value


class _Buffer:
    """A window on a binary file: ``text[pos:]`` is what is not consumed yet."""

    def __init__(self, fh: IO[bytes], start: int = 0) -> None:
        self.fh = fh
        fh.seek(start)
        self.base = start  # file offset of text[0]
        self.text = ""
        self.pos = 0
        self.eof = False
        self.utf8 = codecs.getincrementaldecoder("utf-8")()

    def offset(self) -> int:
        return self.base + self.pos

    def fill(self, want: int = CHUNK) -> bool:
        """Read ``want`` more bytes; False at the end of the file."""
        if self.eof:
            return False
        data = self.fh.read(want)
        if not data:
            self.eof = True
            try:
                self.utf8.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise MalformedJSON(f"cannot read: not UTF-8 text ({exc.reason})") from None
            return False
        try:
            self.utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise MalformedJSON(f"cannot read: not UTF-8 text ({exc.reason})") from None
        if self.pos > CHUNK:  # drop what is consumed, so the buffer stays small
            self.base += self.pos
            self.text = self.text[self.pos:]
            self.pos = 0
        self.text += data.decode("latin-1")
        return True

    def skip_ws(self) -> str:
        """Skip whitespace; the next character, or "" at the end of the file."""
        while True:
            text, pos = self.text, self.pos
            while pos < len(text) and text[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(text):
                return text[pos]
            if not self.fill():
                return ""

    def value(self) -> Any:
        """Decode the JSON value at ``pos`` (reading on while it runs past the buffer)."""
        want = CHUNK
        while True:
            try:
                value, end = DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                truncated = exc.pos >= len(self.text) - 8 or exc.msg.startswith("Unterminated string")
                if truncated and self.fill(want):
                    want *= 2
                    continue
                raise MalformedJSON(self.where(self.base + exc.pos, exc.msg)) from None
            except ValueError as exc:  # NaN, 1e999, a 5000-digit integer
                raise MalformedJSON(f"malformed JSON: {exc}") from None
            except RecursionError:
                raise MalformedJSON("malformed JSON: nested too deeply") from None
            if end >= len(self.text) and not self.eof and self.fill(want):
                continue  # a number cut by the buffer's end: decode it whole
            self.pos = end
            return value

    def expect(self, chars: str, what: str) -> str:
        ch = self.skip_ws()
        if ch == "" or ch not in chars:
            raise MalformedJSON(self.where(self.offset(), f"Expecting {what}"))
        self.pos += 1
        return ch

    def where(self, offset: int, msg: str) -> str:
        line, col = _line_col(self.fh, offset)
        return f"malformed JSON at line {line} column {col}: {msg}"


def _line_col(fh: IO[bytes], offset: int) -> tuple[int, int]:
    """Line and column (1-based) of a byte offset, counted from the file (errors only)."""
    fh.seek(0)
    line, last_nl, done = 1, -1, 0
    while done < offset:
        data = fh.read(min(CHUNK, offset - done))
        if not data:
            break
        line += data.count(b"\n")
        nl = data.rfind(b"\n")
        if nl >= 0:
            last_nl = done + nl
        done += len(data)
    return line, offset - last_nl


@dataclass
class ObjectScan:
    """What ``scan_object`` found: the small members, and where the big array's elements are."""

    members: dict[str, Any] = field(default_factory=dict)
    array_length: int = 0
    array_seen: bool = False
    # byte offset of element i * every, for i = 0, 1, ...
    offsets: list[int] = field(default_factory=list)


ElementSink = Callable[[int, Any], None]


def scan_object(fh: IO[bytes], array_key: str, every: int,
                sink: Callable[[dict[str, Any]], ElementSink | None] | None = None) -> ObjectScan:
    """Read the top-level object; the ``array_key`` member, if an array, element by element.

    ``sink(members)``, called when the array starts with the members read so far, may
    return a function that gets each element ``(index, value)`` as it is decoded.

    Raises ``MalformedJSON`` for a syntax error, and ``NotAnObject`` when the top level is
    something else (the caller decodes it whole to say what).
    """
    buf = _Buffer(fh)
    scan = ObjectScan()
    ch = buf.skip_ws()
    if ch != "{":
        raise NotAnObject
    buf.pos += 1
    if buf.skip_ws() == "}":
        buf.pos += 1
    else:
        while True:
            if buf.skip_ws() != '"':
                raise MalformedJSON(buf.where(buf.offset(), "Expecting property name enclosed in double quotes"))
            key = fix_text(buf.value())
            buf.expect(":", "':' delimiter")
            buf.skip_ws()
            if key == array_key and buf.skip_ws() == "[":
                scan.members.pop(key, None)
                scan.array_seen = True
                scan.offsets = []
                on_element = sink(dict(scan.members)) if sink is not None else None
                scan.array_length = _scan_array(buf, every, scan.offsets, on_element)
            else:
                scan.members[key] = fix_text(buf.value())
                if key == array_key:
                    scan.array_seen = False
            if buf.expect(",}", "',' delimiter") == "}":
                break
    if buf.skip_ws() != "":
        raise MalformedJSON(buf.where(buf.offset(), "Extra data"))
    return scan


def _scan_array(buf: _Buffer, every: int, offsets: list[int], on_element: ElementSink | None) -> int:
    buf.pos += 1  # "["
    if buf.skip_ws() == "]":
        buf.pos += 1
        return 0
    n = 0
    while True:
        buf.skip_ws()
        if n % every == 0:
            offsets.append(buf.offset())
        value = buf.value()
        if on_element is not None:
            on_element(n, value)
        n += 1
        if buf.expect(",]", "',' delimiter") == "]":
            return n


def read_elements(fh: IO[bytes], offset: int, count: int) -> Iterator[Any]:
    """Decode up to ``count`` array elements starting at byte ``offset`` (found by a scan)."""
    buf = _Buffer(fh, offset)
    for i in range(count):
        if i:
            if buf.expect(",]", "',' delimiter") == "]":
                return
        buf.skip_ws()
        yield buf.value()


class NotAnObject(Exception):
    """The top-level JSON value is not an object."""
