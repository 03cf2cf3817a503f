"""Preference data: load and validate pairs (DPO, ORPO, SimPO, reward models) and unpaired records (KTO).

A pair is an instruction record whose ``output`` is replaced by two responses to the same prompt::

    {"instruction": str, "input": str, "history": [[user, assistant], ...], "system": str,
     "chosen": str, "rejected": str, "source": str}

An unpaired (KTO) record is an instruction record with ``"label": true`` (a desirable output) or
``false``. ``--data`` takes the same specs as for instruction tuning (registry names, files, ``NAME:N``,
``NAME:0.3``); every record is validated with ``schema.preference_problem`` and an invalid one stops
the run with ``FILE: record i: problem`` (``--skip_invalid`` counts and skips it). Instruction records
given to a preference stage are refused with a message naming the preference entries.
"""

from __future__ import annotations

import os
from pathlib import Path

from .loading import LoadReport, load_registry, parse_data_spec, read_json_records, resolve_files
from .loading import _subsample as subsample  # the same seeded NAME:N / NAME:0.3 sampling as instruction data
from .schema import DataError, normalize_preference, preference_problem

# A registry entry's "kind": instruction records unless it says otherwise.
KIND_INSTRUCTION, KIND_PAIRS, KIND_UNPAIRED = "instruction", "pairs", "unpaired"


def record_kind(record) -> str:
    """Which kind of record this looks like, from its keys (validation comes after)."""
    if isinstance(record, dict) and ("chosen" in record or "rejected" in record):
        return KIND_PAIRS
    if isinstance(record, dict) and "label" in record:
        return KIND_UNPAIRED
    return KIND_INSTRUCTION


def preference_entries(registry: dict | None = None) -> list[str]:
    """Registry names whose records are preference pairs or unpaired (KTO) records."""
    registry = load_registry() if registry is None else registry
    return sorted(n for n, e in registry.items() if e.get("kind") in (KIND_PAIRS, KIND_UNPAIRED))


def _load_file(path: Path, accept: tuple[str, ...], skip_invalid: bool, report: LoadReport) -> list[dict]:
    records = []
    for where, value in read_json_records(path):
        kind = record_kind(value)
        if kind not in accept:
            wanted = " or ".join({KIND_PAIRS: "preference pairs ('chosen' and 'rejected')",
                                  KIND_UNPAIRED: "labelled records ('output' and 'label')"}[k] for k in accept)
            found = {KIND_INSTRUCTION: "an instruction record ('output' without 'label')",
                     KIND_UNPAIRED: "a labelled record ('output' and 'label', for --stage kto)"}[kind]
            problem = f"{found} where {wanted} are needed"
            entries = ", ".join(preference_entries()) or "none registered"
            raise DataError(f"{path}: {where}: {problem}; preference data in the registry: {entries}")
        problem = preference_problem(value, kind)
        if problem:
            message = f"{path}: {where}: {problem}"
            if not skip_invalid:
                raise DataError(message + " (use --skip_invalid to skip such records)")
            report.skipped.append(message)
            continue
        records.append(normalize_preference(value))
    report.kept += len(records)
    return records


def load_preference_data(specs: list[str], *, unpaired: bool = False, seed: int = 42,
                         skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    """The records of every ``--data`` spec, concatenated: pairs, or (``unpaired``, KTO) labelled records.

    With ``unpaired`` a file of pairs is split into two labelled records per pair (``unpair``);
    otherwise labelled records are refused. Raises DataError naming file, record and problem.
    """
    accept = (KIND_PAIRS, KIND_UNPAIRED) if unpaired else (KIND_PAIRS,)
    report = LoadReport()
    out: list[dict] = []
    for spec in specs:
        name, amount = parse_data_spec(spec)
        source = Path(name).stem if os.path.exists(name) else name
        records = []
        for path in resolve_files(name):
            for record in _load_file(path, accept, skip_invalid, report):
                record.setdefault("source", source)
                records.append(record)
        out += subsample(records, amount, seed, spec)
    if unpaired:
        out = unpair(out)
    report.kept = len(out)
    return out, report


def unpair(records: list[dict]) -> list[dict]:
    """Pairs become two labelled records (chosen: ``label`` true, rejected: false); labelled ones stay."""
    out = []
    for record in records:
        if "chosen" not in record:
            out.append(record)
            continue
        prompt = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
        out.append({**prompt, "output": record["chosen"], "label": True})
        out.append({**prompt, "output": record["rejected"], "label": False})
    return out
