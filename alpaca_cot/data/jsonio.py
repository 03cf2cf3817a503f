"""The one reader for JSON data files: training data, prediction and evaluation sets, request files,
self-instruct seeds and outputs, converter inputs.

A file is read the same way wherever it is given:

- UTF-8, with or without a byte-order mark (Windows editors write one); gzip-compressed files are
  recognised by their magic bytes, whatever their name;
- JSON list vs JSON Lines is decided by the content, not the name: a file whose first character
  (after the BOM and whitespace) is ``[`` is a JSON list; otherwise each line holds one value
  (blank lines skipped, CRLF line ends fine), except a single object spread over several lines
  (a pretty-printed record, a Natural Instructions task file), which is one value;
- values are produced one at a time: a JSON list is parsed incrementally (1 MiB blocks), so a
  file of a million records never sits in memory as text or as Python objects;
- every problem is a ``DataError`` saying file, place and problem: ``FILE: line n: ...`` for
  JSON Lines, ``FILE: line L, column C: ...`` inside a JSON list, with a hint for the common
  mistakes (a trailing comma, a byte that is not UTF-8, a file that is not JSON at all).

Each value comes with ``where``: "record i" (0-based, a JSON list), "line n" (1-based, JSON
Lines) or "whole file" (a single multi-line object), for messages about the record itself.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .schema import DataError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 1 << 20  # characters read at a time from a JSON list
WHITESPACE = " \t\r\n"
_DECODER = json.JSONDecoder()


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file for reading: UTF-8 with the BOM stripped, gzip decompressed, line ends untranslated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_error(path, e: Exception) -> DataError:
    if isinstance(e, UnicodeDecodeError):
        return DataError(f"{path}: cannot read file: not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                         "save it as UTF-8")
    return DataError(f"{path}: cannot read file: {e}")


def _hint(text: str, pos: int) -> str:
    """Why JSON failed at ``pos`` when the reason is a common one (a trailing comma), else ""."""
    before = text[:pos].rstrip()
    if before.endswith(",") and text[pos:pos + 1] in ("]", "}"):
        return f" (a trailing comma before '{text[pos]}': JSON allows none)"
    return ""


def _where_in(text: str, pos: int, first_line: int = 1) -> str:
    line = first_line + text.count("\n", 0, pos)
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def _first_char(name, opener) -> str:
    try:
        with opener() as f:
            while True:
                block = f.read(4096)
                if not block:
                    return ""
                stripped = block.lstrip(WHITESPACE)
                if stripped:
                    return stripped[0]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _read_error(name, e) from e


def first_char(path: str | os.PathLike) -> str:
    """The first character of the file after the BOM and whitespace ("" for an empty file)."""
    return _first_char(path, lambda: open_text(path))


def is_json(path: str | os.PathLike) -> bool:
    """Whether the file's content is JSON data (a list, JSON Lines or one object), judged by its first character."""
    return first_char(path) in ("[", "{")


# ---------------------------------------------------------------- JSON list, incrementally


class _ListParser:
    """The items of a JSON list read from a text stream block by block."""

    def __init__(self, path, f: io.TextIOBase):
        self.path, self.f = path, f
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False  # line: the line number of buf[0]

    def _more(self) -> bool:
        """Append the next block (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        block = self.f.read(BLOCK)
        if not block:
            self.eof = True
            return False
        self.line += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos:] + block, 0
        return True

    def _skip_space(self) -> str:
        """Move past whitespace; the next character ("" at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def _error(self, problem: str, pos: int | None = None) -> DataError:
        where = _where_in(self.buf, self.pos if pos is None else pos, self.line)
        return DataError(f"{self.path}: {where}: {problem}")

    def _value(self):
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # A value cut by the block end fails at the end of the block (or, inside a long
                # string, where the string starts): read on. Anything else is a real mistake.
                cut = e.pos >= len(self.buf) - 16 or e.msg.startswith("Unterminated string")
                if cut and self._more():
                    continue
                where = _where_in(self.buf, e.pos, self.line)
                raise DataError(f"{self.path}: invalid JSON at {where}: {e.msg}{_hint(self.buf, e.pos)}") from e
            if end >= len(self.buf) and not self.eof and self._more():
                continue  # a number cut by the block end: parse it again whole
            self.pos = end
            return value

    def items(self) -> Iterator[tuple[str, object]]:
        assert self._skip_space() == "["
        self.pos += 1
        index = 0
        if self._skip_space() == "]":
            self.pos += 1
        else:
            while True:
                if self._skip_space() == "":
                    raise self._error("the JSON list is not closed: ']' missing at the end of the file")
                yield f"record {index}", self._value()
                index += 1
                ch = self._skip_space()
                if ch == ",":
                    self.pos += 1
                    if self._skip_space() == "]":
                        raise self._error(f"a trailing comma after record {index - 1}: JSON allows none")
                    continue
                if ch == "]":
                    self.pos += 1
                    break
                if ch == "":
                    raise self._error("the JSON list is not closed: ']' missing at the end of the file")
                raise self._error(f"expected ',' or ']' after record {index - 1}, found {ch!r}")
        if self._skip_space():
            raise self._error("unexpected text after the JSON list (a file holds one list, or one object per line)")


# ---------------------------------------------------------------- JSON Lines and single objects


def _lines(path, f: io.TextIOBase) -> Iterator[tuple[str, object]]:
    lineno = 0
    for lineno, line in enumerate(f, start=1):
        if not line.strip(WHITESPACE):
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            stripped = line.rstrip(WHITESPACE)
            if e.msg == "Extra data" and stripped.endswith(",") and e.pos == len(stripped) - 1:
                raise DataError(f"{path}: line {lineno}: a trailing comma after the object (JSON Lines hold one "
                                "object per line, without commas; or make the file a JSON list in [ ])") from e
            raise DataError(f"{path}: line {lineno}: invalid JSON: {e.msg} (column {e.colno})"
                            f"{_hint(line, e.pos)}") from e


def _first_line_is_complete(f: io.TextIOBase) -> bool:
    """Whether the first non-blank line parses on its own, or fails somewhere before its end (JSON Lines)."""
    for line in f:
        if line.strip(WHITESPACE):
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                # "Extra data": a whole value and more on the line (a trailing comma, two objects)
                return e.msg == "Extra data" or (e.pos < len(line.rstrip(WHITESPACE)) - 1
                                                 and not e.msg.startswith("Unterminated"))
            return True
    return True


def _single(path, f: io.TextIOBase) -> Iterator[tuple[str, object]]:
    text = f.read()
    start = len(text) - len(text.lstrip(WHITESPACE))
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at {_where_in(text, e.pos)}: {e.msg}{_hint(text, e.pos)}") from e
    if text[end:].strip(WHITESPACE):
        rest = end + len(text[end:]) - len(text[end:].lstrip(WHITESPACE))
        raise DataError(f"{path}: {_where_in(text, rest)}: unexpected text after the first JSON object (a file holds "
                        "a JSON list, one object per line, or a single object)")
    yield "whole file", value


def _iter(name, opener) -> Iterator[tuple[str, object]]:
    kind = _first_char(name, opener)
    if kind == "":
        return
    if kind not in ("[", "{"):
        raise DataError(f"{name}: not JSON data: a data file holds a JSON list, one JSON object per line, or one "
                        f"object (this one starts with {kind!r})")
    try:
        if kind == "[":
            with opener() as f:
                yield from _ListParser(name, f).items()
            return
        with opener() as f:
            lines = _first_line_is_complete(f)
        with opener() as f:
            yield from (_lines(name, f) if lines else _single(name, f))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _read_error(name, e) from e


def iter_json(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """Yield ``(where, value)`` for every JSON value of a data file, lazily (see the module docstring).

    An empty file yields nothing. Raises DataError for a missing or unreadable file, invalid JSON
    (naming line and column), or content that is not JSON at all.
    """
    path = Path(path)
    yield from _iter(path, lambda: open_text(path))


def iter_json_text(text: str, name: str = "<stdin>") -> Iterator[tuple[str, object]]:
    """``iter_json`` over text already read (standard input); ``name`` stands for the file in messages."""
    text = text.removeprefix("\ufeff")
    yield from _iter(name, lambda: io.StringIO(text, newline=""))


def text_first_char(text: str) -> str:
    """The first character of ``text`` after a BOM and whitespace ("" when there is none)."""
    stripped = text.removeprefix("\ufeff").lstrip(WHITESPACE)
    return stripped[:1]


def read_json_values(path: str | os.PathLike) -> list[tuple[str, object]]:
    """``iter_json`` as a list (small files: request files, seeds, evaluation sets)."""
    return list(iter_json(path))
