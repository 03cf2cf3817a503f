"""The unified instruction record, the one format every dataset is converted to.

A record is a JSON object::

    {"instruction": str, "input": str, "output": str,          # required ("input" may be "")
     "history": [[user, assistant], ...],                      # optional, oldest turn first
     "system": str, "source": str}                             # optional

A file holds a JSON list of records, or one record per line (JSONL).
"""

from __future__ import annotations

from typing import Any

REQUIRED_KEYS = ("instruction", "input", "output")
OPTIONAL_STR_KEYS = ("system", "source")


class DataError(ValueError):
    """A record or data file that cannot be used; the message names file, record and problem."""


def record_problem(record: Any, *, require_output: bool = True) -> str | None:
    """Return what is wrong with ``record`` as a short phrase, or None when it is valid.

    ``input`` may be missing (read as ""), every other required key must be present.
    With ``require_output=False`` (inference inputs) ``output`` may be absent or empty.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in REQUIRED_KEYS:
        if key not in record:
            if key == "input" or (key == "output" and not require_output):
                continue
            return f"missing key '{key}'"
        if not isinstance(record[key], str):
            if key == "output" and not require_output and record[key] is None:
                continue
            return f"'{key}' must be a string, got {type(record[key]).__name__}"
    if not record["instruction"].strip():
        return "empty 'instruction'"
    if require_output and not record["output"].strip():
        return "empty 'output'"
    for key in OPTIONAL_STR_KEYS:
        if key in record and record[key] is not None and not isinstance(record[key], str):
            return f"'{key}' must be a string, got {type(record[key]).__name__}"
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            return f"'history' must be a list of [user, assistant] pairs, got {type(history).__name__}"
        for i, turn in enumerate(history):
            if (not isinstance(turn, (list, tuple)) or len(turn) != 2
                    or not all(isinstance(t, str) for t in turn)):
                return f"'history[{i}]' must be a [user, assistant] pair of strings"
    return None


def normalize(record: dict) -> dict:
    """A validated record with defaults filled in: ``input`` "", ``history`` as a list of pairs."""
    out = dict(record)
    out["input"] = out.get("input") or ""
    out["history"] = [[str(u), str(a)] for u, a in (out.get("history") or [])]
    return out
