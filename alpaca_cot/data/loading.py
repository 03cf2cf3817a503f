"""Read unified-record files and resolve ``--data`` specs (registry names, paths, ``NAME:N``)."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..suggest import did_you_mean
from .jsonio import iter_json, read_json_values
from .schema import DataError, normalize, record_problem

logger = logging.getLogger(__name__)

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
REGISTRY_FILE = "datasets.json"


def data_dir() -> Path:
    """The folder holding the registry file and the datasets (``ALPACA_COT_DATA_DIR`` overrides)."""
    return Path(os.environ.get("ALPACA_COT_DATA_DIR", REPO_DATA_DIR))


def read_json_records(path: str | os.PathLike) -> list[tuple[str, object]]:
    """Read a JSON list, JSON Lines or single-object file (UTF-8 with or without BOM, optionally gzipped).

    Returns ``(where, value)`` pairs, ``where`` being "record i", "line n" or "whole file", so errors
    can point at the record. The format is decided by the content (``jsonio``, the one reader every
    script uses); an empty file gives no pairs. Raises DataError naming the file when it cannot be
    read or parsed.
    """
    return read_json_values(path)


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
    for where, value in iter_json(path):
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
    """Split ``NAME:N`` / ``NAME:0.3`` / ``NAME:2.5`` / ``NAME`` into (name, amount); paths with ':' keep them.

    The amount is an int (a count of records), a float in (0, 1] (a fraction of them) or a float
    above 1 (a weight: the records repeated that many times, for oversampling in a mixture), or
    None (every record once). ``NAME:2`` is two records; ``NAME:2.0`` is every record twice.
    """
    name, sep, amount = spec.rpartition(":")
    if not sep or not name or os.path.exists(spec):
        return spec, None
    try:
        if amount.isdigit():
            if int(amount) < 1:
                raise DataError(f"--data {spec}: a count must be at least 1")
            return name, int(amount)
        value = float(amount)
    except ValueError:
        return spec, None
    if not value > 0 or value != value or value == float("inf"):
        raise DataError(f"--data {spec}: use a count (NAME:1000), a fraction in (0, 1] (NAME:0.3) or a weight "
                        "above 1 (NAME:2.5) to oversample")
    return name, value


def sample_indices(n: int, amount: float | int | None, seed: int, spec: str) -> list[int] | None:
    """The record indices a ``parse_data_spec`` amount selects out of ``n`` records (None: all, in order).

    Counts and fractions draw a seeded sample without replacement, kept in file order; a weight
    w > 1 gives every record int(w) times plus a seeded sample of round((w - int(w)) * n) of them
    once more (in order: all copies first). The sample depends on ``seed`` and the ``spec`` text only.
    """
    if amount is None or (isinstance(amount, float) and amount == 1.0):
        return None
    rng = random.Random(f"{seed}:{spec}")
    if isinstance(amount, float) and amount > 1:
        k = round(n * amount)
        copies, rest = divmod(k, n) if n else (0, 0)
        return list(range(n)) * copies + sorted(rng.sample(range(n), rest))
    k = round(n * amount) if isinstance(amount, float) else amount
    if k > n:
        raise DataError(f"--data {spec}: asked for {k} records but only {n} are available "
                        f"(to repeat records, give a weight: {spec.rpartition(':')[0]}:{k / max(n, 1):.1f})")
    return sorted(rng.sample(range(n), k))


def _subsample(records: list[dict], amount: float | int | None, seed: int, spec: str) -> list[dict]:
    idx = sample_indices(len(records), amount, seed, spec)
    return records if idx is None else [records[i] for i in idx]


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


def read_requests(path: str, stdin_text: str | None = None) -> list[dict]:
    """Inference requests from a file (or, for "-", from ``stdin_text``): JSON records or plain text.

    Decided by the content, as every data file is (``jsonio``): text whose first character (after a
    BOM and whitespace) is ``[`` or ``{`` is JSON (a list, JSON Lines or one object) and every record
    is validated (``output`` optional); anything else is plain text, one instruction per non-blank
    line. Raises DataError("FILE: where: problem") for invalid JSON or records.
    """
    from .jsonio import first_char, iter_json_text, text_first_char

    name = "<stdin>" if path == "-" else path
    kind = text_first_char(stdin_text or "") if path == "-" else first_char(path)
    if kind in ("[", "{"):
        values = iter_json_text(stdin_text, name) if path == "-" else iter_json(path)
        records = []
        try:
            for where, value in values:
                problem = record_problem(value, require_output=False)
                if problem:
                    raise DataError(f"{name}: {where}: {problem}")
                records.append(normalize(value))
        except DataError as e:
            raise DataError(f"{e} (a request file holds JSON records, or plain text with one instruction per line; "
                            f"text starting with '{kind}' is read as JSON)") from e
        return records
    if path == "-":
        text = stdin_text or ""
    else:
        from .jsonio import open_text

        with open_text(path) as f:
            text = f.read()
    return [{"instruction": line.strip(), "input": ""} for line in text.splitlines() if line.strip()]
