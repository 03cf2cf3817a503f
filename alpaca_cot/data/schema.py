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


# ---------------------------------------------------------------- preference records
#
# A preference pair shares the prompt fields of an instruction record and replaces "output" by
# two responses: {"instruction", "input", "history"?, "system"?, "chosen", "rejected", "source"?}.
# An unpaired (KTO) record keeps "output" and adds "label": true (desirable) or false.

PREFERENCE_KINDS = ("pairs", "unpaired")


def preference_problem(record: Any, kind: str = "pairs") -> str | None:
    """What is wrong with a preference ``record`` of ``kind`` ("pairs" or "unpaired"), or None.

    The prompt fields are checked as for instruction records; "pairs" needs non-empty, different
    ``chosen`` and ``rejected`` strings, "unpaired" a non-empty ``output`` and a boolean ``label``.
    """
    if kind not in PREFERENCE_KINDS:
        raise ValueError(f"unknown preference record kind {kind!r}; known: {', '.join(PREFERENCE_KINDS)}")
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if kind == "unpaired":
        if "label" not in record:
            return "missing key 'label' (true for a desirable output, false for an undesirable one)"
        if not isinstance(record["label"], bool):
            return f"'label' must be true or false, got {json_type(record['label'])}"
        return record_problem(record)
    for key in ("chosen", "rejected"):
        if key not in record:
            hint = " (a preference pair has 'chosen' and 'rejected' instead of 'output')" if "output" in record else ""
            return f"missing key '{key}'{hint}"
        if not isinstance(record[key], str):
            return f"'{key}' must be a string, got {json_type(record[key])}"
        if not record[key].strip():
            return f"empty '{key}'"
    if record["chosen"] == record["rejected"]:
        return "'chosen' and 'rejected' are the same text: the pair states no preference"
    return record_problem({**record, "output": record["chosen"]})


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def normalize_preference(record: dict) -> dict:
    """A validated preference record with ``input`` "" and ``history`` a list of pairs filled in."""
    out = normalize({**record, "output": record.get("output", "")})
    if "chosen" in record:
        del out["output"]
    return out
