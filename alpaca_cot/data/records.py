"""Unified records as Arrow tables: each data file is read and validated once into a memory-mapped cache entry.

``file_records(path)`` streams a data file through ``jsonio`` (one record at a time), validates
and normalises every record (``schema.record_problem`` / ``normalize``: the same checks and
messages as ``loading.load_records``) and writes them in blocks of ``BLOCK`` rows to an Arrow
file under ``~/.cache/alpaca_cot/records/<key>/`` (``ALPACA_COT_HOME`` moves it). The returned
``datasets.Dataset`` maps that file into memory instead of holding Python objects, so a file of
a million records costs a few MB of resident memory however large it is. The key covers the
file's bytes, the settings that change the rows (``source`` default, ``skip_invalid``,
``require_output``) and this code, so an unchanged file is read only once.

Columns (``RECORD_SCHEMA``): ``instruction``, ``input``, ``output`` (null in inference inputs
without one), ``history`` (list of [user, assistant]), ``system`` (null when absent) and
``source``. Keys other than these are not kept (training reads none); a record kind with more
fields (preference pairs, say) adds a schema and a ``problem``/``normalize`` pair beside these.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .jsonio import iter_json
from .schema import DataError, normalize, record_problem

BLOCK = 10_000  # rows per Arrow record batch: bounds the Python objects alive while writing
FORMAT = 1      # bump when the stored rows change for the same file
CODE = ("jsonio.py", "loading.py", "schema.py", "records.py")
_HERE = Path(__file__).resolve().parent


def record_schema():
    import pyarrow as pa

    return pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()),
                      ("history", pa.list_(pa.list_(pa.string()))), ("system", pa.string()),
                      ("source", pa.string())])


@dataclass
class FileRecords:
    """One data file's valid records (memory-mapped) and what validation skipped."""

    dataset: object           # datasets.Dataset with the RECORD_SCHEMA columns
    key: str                  # content key: same key, same rows
    skipped: list[str] = field(default_factory=list)  # "FILE: where: problem" of each skipped record


def _records_dir() -> Path:
    from ..embedded import cache_home

    return cache_home() / "records"


def _key(path: Path, source: str, skip_invalid: bool, require_output: bool) -> str:
    from ..datacache import file_digest

    h = hashlib.sha256()
    h.update(file_digest(path))
    for name in CODE:
        h.update(file_digest(_HERE / name))
    h.update(json.dumps([FORMAT, source, skip_invalid, require_output]).encode())
    return h.hexdigest()[:32]


def _columns(rows: list[dict]) -> dict[str, list]:
    return {"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
            "output": [r.get("output") for r in rows], "history": [r["history"] for r in rows],
            "system": [r.get("system") or None for r in rows], "source": [r["source"] for r in rows]}


def write_records(values, target: Path, *, path, source: str, skip_invalid: bool,
                  require_output: bool) -> list[str]:
    """Validate ``(where, value)`` pairs of ``path`` and write the valid records to the Arrow file ``target``.

    Returns the messages of the skipped records; raises DataError at the first invalid record
    unless ``skip_invalid``. Rows lacking ``source`` get ``source``.
    """
    import pyarrow as pa

    schema = record_schema()
    skipped: list[str] = []
    rows: list[dict] = []
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush():
            if rows:
                writer.write_batch(pa.RecordBatch.from_pydict(_columns(rows), schema=schema))
                rows.clear()

        for where, value in values:
            problem = record_problem(value, require_output=require_output)
            if problem:
                message = f"{path}: {where}: {problem}"
                if not skip_invalid:
                    raise DataError(message + " (use --skip_invalid to skip such records)")
                skipped.append(message)
                continue
            record = normalize(value)
            record["source"] = record.get("source") or source
            rows.append(record)
            if len(rows) >= BLOCK:
                flush()
        flush()
    return skipped


def file_records(path: str | os.PathLike, *, source: str, skip_invalid: bool = False,
                 require_output: bool = True) -> FileRecords:
    """The valid records of one data file as a memory-mapped ``datasets.Dataset`` (cached by content).

    Raises DataError("FILE: record i: problem") for an invalid record unless ``skip_invalid``,
    and for files that cannot be read or parsed (``jsonio``).
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    key = _key(path, source, skip_invalid, require_output)
    folder = _records_dir() / key
    if (folder / "meta.json").exists():
        try:
            meta = json.loads((folder / "meta.json").read_text())
            return FileRecords(Dataset.from_file(str(folder / "records.arrow")), key, meta["skipped"])
        except (OSError, ValueError, KeyError):  # a damaged entry: read the file again
            shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        skipped = write_records(iter_json(path), tmp / "records.arrow", path=path, source=source,
                                skip_invalid=skip_invalid, require_output=require_output)
        (tmp / "meta.json").write_text(json.dumps({"file": str(path), "skipped": skipped}))
        try:
            os.replace(tmp, folder)  # atomic: a reader sees a whole entry or none
        except OSError:  # another process wrote the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileRecords(Dataset.from_file(str(folder / "records.arrow")), key, skipped)


def records_from_list(records: list[dict], *, source: str = "", require_output: bool = True):
    """Already validated records (a Python list) as an in-memory ``datasets.Dataset`` with the same columns."""
    import pyarrow as pa
    from datasets import Dataset

    rows = []
    for r in records:
        r = normalize(r)
        r["source"] = r.get("source") or source
        if not require_output:
            r.setdefault("output", None)
        rows.append(r)
    return Dataset(pa.Table.from_pydict(_columns(rows), schema=record_schema()))


def rows_as_records(batch: dict) -> list[dict]:
    """A batch of dataset columns (``dict`` of lists) back into record dicts, as templates read them."""
    n = len(batch["instruction"])
    out = []
    for i in range(n):
        record = {"instruction": batch["instruction"][i], "input": batch["input"][i] or "",
                  "output": batch["output"][i], "history": batch["history"][i] or []}
        if batch["system"][i]:
            record["system"] = batch["system"][i]
        out.append(record)
    return out
