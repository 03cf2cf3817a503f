"""Read unified-record files and resolve ``--data`` specs (registry names, paths, ``NAME:N``)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..suggest import did_you_mean
from .schema import DataError, normalize, record_problem

logger = logging.getLogger(__name__)

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
REGISTRY_FILE = "datasets.json"


def data_dir() -> Path:
    """The folder holding the registry file and the datasets (``ALPACA_COT_DATA_DIR`` overrides)."""
    return Path(os.environ.get("ALPACA_COT_DATA_DIR", REPO_DATA_DIR))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json_records(path: str | os.PathLike) -> list[tuple[str, object]]:
    """Read a JSON list or JSONL file (optionally gzipped) as ``(where, value)`` pairs.

    ``where`` is "record i" for a JSON list and "line n" for JSONL, so errors can point at it.
    Raises DataError naming the file when it cannot be read or parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
        return [(f"record {i}", v) for i, v in enumerate(values)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from e
    if not out and stripped:
        raise DataError(f"{path}: no records found")
    return out


@dataclass
class LoadReport:
    """What loading saw: records kept and, with ``skip_invalid``, the ones skipped and why."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.kept} records"
        if self.skipped:
            s += f", {len(self.skipped)} invalid skipped (first: {self.skipped[0]})"
        return s


def load_records(path: str | os.PathLike, *, skip_invalid: bool = False, require_output: bool = True,
                 report: LoadReport | None = None) -> list[dict]:
    """Load and validate unified records from one file.

    An invalid record raises DataError("FILE: record i: problem"); with ``skip_invalid`` it is
    counted in ``report`` and skipped instead.
    """
    report = report if report is not None else LoadReport()
    records = []
    for where, value in read_json_records(path):
        problem = record_problem(value, require_output=require_output)
        if problem:
            msg = f"{path}: {where}: {problem}"
            if not skip_invalid:
                raise DataError(msg + " (use --skip_invalid to skip such records)")
            report.skipped.append(msg)
            continue
        records.append(normalize(value))
    report.kept += len(records)
    return records


# ---------------------------------------------------------------- registry


def load_registry() -> dict[str, dict]:
    path = data_dir() / REGISTRY_FILE
    try:
        with open(path, encoding="utf-8") as f:
            registry = json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return {k: v for k, v in registry.items() if not k.startswith("_")}


def parse_data_spec(spec: str) -> tuple[str, float | int | None]:
    """Split ``NAME:N`` / ``NAME:0.3`` / ``NAME`` into (name, amount); paths with ':' keep them."""
    name, sep, amount = spec.rpartition(":")
    if not sep or not name or os.path.exists(spec):
        return spec, None
    try:
        if amount.isdigit():
            return name, int(amount)
        value = float(amount)
    except ValueError:
        return spec, None
    if not 0 < value <= 1:
        raise DataError(f"--data {spec}: a fraction must be in (0, 1]; use an integer for a count")
    return name, value


def _subsample(records: list[dict], amount: float | int | None, seed: int, spec: str) -> list[dict]:
    if amount is None:
        return records
    n = round(len(records) * amount) if isinstance(amount, float) else amount
    if n > len(records):
        raise DataError(f"--data {spec}: asked for {n} records but only {len(records)} are available")
    rng = random.Random(f"{seed}:{spec}")
    idx = sorted(rng.sample(range(len(records)), n))
    return [records[i] for i in idx]


def resolve_files(name: str) -> list[Path]:
    """Files for a registry name or a path; a missing registered file gives a helpful error."""
    if os.path.exists(name):
        return [Path(name)]
    registry = load_registry()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "(registry is empty)"
        raise DataError(f"--data {name}: not a file and not a registered dataset{did_you_mean(name, registry)}. "
                        f"Known datasets: {known}")
    entry = registry[name]
    if "mixture" in entry:
        return [f for part in entry["mixture"] for f in resolve_files(part)]
    files, missing = registry_files(entry)
    if missing or not files:
        expected = [str(data_dir() / p) for p in (missing or entry.get("files", []))]
        raise DataError(
            f"--data {name}: expected file(s) {', '.join(expected) or '(none listed)'} are not present. "
            + how_to_obtain(name, entry))
    return files


def registry_files(entry: dict) -> tuple[list[Path], list[str]]:
    """The files of a registry entry under ``data_dir()``, and the ``files`` patterns matching none.

    A pattern may be a glob (``xP3/*/merged_*.json``, ``**`` for any depth).
    """
    found, missing = [], []
    for pattern in entry.get("files", []):
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in data_dir().glob(pattern) if p.is_file())
        else:
            matches = [data_dir() / pattern] if (data_dir() / pattern).is_file() else []
        found += matches
        if not matches:
            missing.append(pattern)
    return found, missing


def how_to_obtain(name: str, entry: dict) -> str:
    """One sentence telling the user how to get a registry entry's files."""
    note = ("The original lists this dataset as in progress. "
            if entry.get("status") == "in_progress" else "")
    if entry.get("hub_files"):
        return note + f"Fetch them with: python data/download.py {name}"
    target = data_dir() / entry["files"][0] if entry.get("files") else f"{name}.json"
    return (note + "No already-unified download is known; convert the raw data"
            + (f" ({entry['source']})" if entry.get("source") else "")
            + f" with: python data/convert.py --format {entry.get('format', 'FORMAT')} "
              f"--input RAW [RAW ...] --output {target}")


def load_data(specs: list[str], *, seed: int = 42, skip_invalid: bool = False,
              require_output: bool = True) -> tuple[list[dict], LoadReport]:
    """Concatenate the records of every ``--data`` spec (registry name or path, ``:N``/``:frac``)."""
    report = LoadReport()
    out: list[dict] = []
    for spec in specs:
        name, amount = parse_data_spec(spec)
        entry = load_registry().get(name, {})
        source = name if not os.path.exists(name) else Path(name).stem
        records = []
        if "mixture" in entry and not os.path.exists(name):
            for part in entry["mixture"]:
                part_records, part_report = load_data([part], seed=seed, skip_invalid=skip_invalid,
                                                      require_output=require_output)
                records += part_records
                report.skipped += part_report.skipped
        else:
            for path in resolve_files(name):
                for r in load_records(path, skip_invalid=skip_invalid, require_output=require_output,
                                      report=report):
                    r.setdefault("source", source)
                    records.append(r)
        out += _subsample(records, amount, seed, spec)
    report.kept = len(out)
    return out, report
