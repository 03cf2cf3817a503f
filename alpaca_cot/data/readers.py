"""Read raw source files as they ship: JSON (list, single object, or JSON Lines), CSV, TSV, gzip.

Every reader yields ``(where, value)`` pairs, ``where`` being "record i", "line n" or
"whole file", so a converter's error can point at the exact place in the file. CSV and TSV
are told by the file name (``.csv``, ``.tsv``, optionally ``.gz``); JSON files go through
``jsonio.iter_json``, which decides list, JSON Lines or single object by the content (a
``.json`` file of JSON Lines is common), as every other script reads them. A gzip file is
recognised by its magic bytes whatever its name; a UTF-8 byte-order mark is skipped.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .jsonio import iter_json, open_text
from .schema import DataError

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}


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
    if kind in ("json", "jsonl"):
        yield from iter_json(path)
        return
    try:
        with open_text(path) as f:
            yield from _read_table(path, f, TABLE_DELIMITERS["." + kind], header)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
