"""Read raw source files as they ship: JSON (list, single object, or JSON Lines), CSV, TSV, gzip.

Every reader yields ``(where, value)`` pairs, ``where`` being "record i", "line n" or
"whole file", so a converter's error can point at the exact place in the file. The format
comes from the file name (``.json``, ``.jsonl``, ``.csv``, ``.tsv``, each optionally
``.gz``); a gzip file is also recognised by its magic bytes whatever its name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .schema import DataError

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file for reading, decompressing gzip transparently (UTF-8, BOM stripped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def file_kind(path: str | os.PathLike) -> str:
    """``json``, ``jsonl``, ``csv`` or ``tsv`` from the name (a trailing ``.gz`` is ignored)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TABLE_DELIMITERS:
        return suffix[1:]
    raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; "
                    "expected .json, .jsonl, .csv or .tsv (optionally .gz)")


def _read_jsonl(path: Path, f: io.TextIOBase) -> Iterator[tuple[str, object]]:
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from e


def _read_json(path: Path, f: io.TextIOBase) -> Iterator[tuple[str, object]]:
    text = f.read()
    stripped = text.lstrip()
    if not stripped:
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        # Many ".json" files in the wild are JSON Lines; fall back when the first line parses.
        first = stripped.splitlines()[0]
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
        yield from _read_jsonl(path, io.StringIO(text))
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            yield f"record {i}", v
    else:
        yield "whole file", value


def _read_table(path: Path, f: io.TextIOBase, delimiter: str, header: bool) -> Iterator[tuple[str, object]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents live in single cells
    # TSV sources (FLAN's cot files) do not quote: a '"' in a question is text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    names = None
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"line {reader.line_num}"
        if header and names is None:
            names = [n.strip() for n in row]
            continue
        if names is None:
            yield where, row
        elif len(row) != len(names):
            raise DataError(f"{path}: {where}: expected {len(names)} columns ({', '.join(names)}), got {len(row)}")
        else:
            yield where, dict(zip(names, row))


def read_raw(path: str | os.PathLike, *, header: bool = True) -> Iterator[tuple[str, object]]:
    """Yield ``(where, value)`` for every raw record of a source file.

    JSON gives the list's items, or the whole object when the file holds one object (a
    Natural Instructions task file); JSONL gives one value per line; CSV/TSV give a dict per
    row keyed by the header, or a list of cells with ``header=False``.
    """
    path = Path(path)
    kind = file_kind(path)
    try:
        with open_text(path) as f:
            if kind == "json":
                yield from _read_json(path, f)
            elif kind == "jsonl":
                yield from _read_jsonl(path, f)
            else:
                yield from _read_table(path, f, TABLE_DELIMITERS["." + kind], header)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
