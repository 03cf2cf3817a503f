"""Benchmark files -> evaluation items, one reader per layout (detected from the file, or ``--format``).

Layouts:

- ``mmcu``: JSON/JSONL records with 类别 (subject), 题目 (question), 选项 ("A:...\\nB:..." or a
  list / mapping of options) and 答案 (the letter, or letters);
- ``ceval``: the C-Eval / CMMLU CSV layout, one file per subject (columns question, A, B, C, D,
  answer in any case; the subject is the file name without ``_dev``/``_val``/``_test``); a
  folder is read whole; JSON records with the same keys are read too;
- ``gsm8k``: JSONL records with ``question`` and ``answer`` whose final value follows ``####``;
- ``unified``: our instruction records (``instruction``, ``input``, ``output``), also registry
  names such as ``demo_test`` or ``demo_test:50``;
- ``belle``: Belle-eval records with ``question``, ``std_answer`` and ``class``.

Items are plain dicts. Every item has ``id`` and ``category``; multiple-choice items add
``question``, ``options`` ({letter: text}) and ``answer`` (letters); math items ``instruction``,
``input``, ``reference`` and ``gold`` (the normalised final number); judged items
``question`` and ``reference``.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from ..data.loading import load_data, read_json_records
from ..data.schema import DataError
from ..suggest import did_you_mean
from .answers import extract_number

CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
TASK_FORMATS = {"multiple_choice": ("mmcu", "ceval"), "cot_math": ("gsm8k", "unified"),
                "judged": ("belle", "unified")}
FORMATS = ("auto", "mmcu", "ceval", "gsm8k", "unified", "belle")
_OPTION_LINE = re.compile(r"^\s*([A-Z])\s*[:：.．、)）]\s*(.*)$")
_SPLIT_SUFFIX = re.compile(r"_(dev|val|test)$")


def language(text: str) -> str:
    """'zh' when the text contains Chinese characters, else 'en'."""
    return "zh" if CJK_RE.search(text or "") else "en"


# ---------------------------------------------------------------- raw records


def _csv_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in rows]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".csv", ".json", ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"{path}: no .csv, .json or .jsonl files in this folder")
        return files
    return [path]


def raw_records(spec: str) -> list[tuple[str, str, list[dict]]]:
    """``(source name, kind, records)`` per file of ``spec`` (a file, a folder or a registry name)."""
    path = Path(spec)
    if not path.exists():
        records, _ = load_data([spec])
        return [(spec, "registry", records)]
    out = []
    for file in _files(path):
        if file.suffix == ".csv":
            out.append((file.stem, "csv", _csv_records(file)))
        else:
            values = [v for _, v in read_json_records(file)]
            bad = next((i for i, v in enumerate(values) if not isinstance(v, dict)), None)
            if bad is not None:
                raise DataError(f"{file}: record {bad} is not a JSON object")
            out.append((file.stem, "json", values))
    return out


def detect_format(kind: str, records: list[dict]) -> str | None:
    """The layout of one file's records, from their keys; None when unknown."""
    if kind == "registry":
        return "unified"
    keys = {k.lower() for k in (records[0] if records else {})}
    if kind == "csv" or {"question", "a", "b", "answer"} <= keys:
        return "ceval"
    if "题目" in keys:
        return "mmcu"
    if {"question", "std_answer"} <= keys:
        return "belle"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"instruction", "output"} <= keys:
        return "unified"
    return None


# ---------------------------------------------------------------- per layout


def parse_options(value) -> dict[str, str]:
    """MMCU options ("A:x\\nB:y", ["A:x", "B:y"], or {"A": "x"}) -> {"A": "x", "B": "y"}."""
    if isinstance(value, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in value.items()}
    lines = value if isinstance(value, list) else str(value).splitlines()
    options: dict[str, str] = {}
    last = None
    for line in lines:
        m = _OPTION_LINE.match(str(line))
        if m:
            last = m.group(1)
            options[last] = m.group(2).strip()
        elif last and str(line).strip():  # an option continued on the next line
            options[last] += "\n" + str(line).strip()
    return options


def answer_letters(value: str) -> str:
    """'A' -> 'A'; 'A、C' / 'AC' -> 'AC'; 'B: text' -> 'B'; '' when there is no answer."""
    text = str(value or "").strip().upper()
    if re.fullmatch(r"[A-Z](?:[\s,，、]*[A-Z])*", text):
        return re.sub(r"[^A-Z]", "", text)
    m = re.match(r"([A-Z])\b", text)
    return m.group(1) if m else ""


def _mmcu(source: str, records: list[dict]) -> list[dict]:
    return [{"id": f"{source}:{i}", "category": str(r.get("类别") or source), "question": str(r["题目"]).strip(),
             "options": parse_options(r.get("选项", "")), "answer": answer_letters(r.get("答案", ""))}
            for i, r in enumerate(records)]


def _ceval(source: str, records: list[dict]) -> list[dict]:
    items = []
    for i, r in enumerate(records):
        row = {k.strip(): v for k, v in r.items()}
        lower = {k.lower(): v for k, v in row.items()}
        options = {k: str(v).strip() for k, v in row.items() if len(k) == 1 and k.isupper()}
        category = lower.get("subject") or lower.get("category") or _SPLIT_SUFFIX.sub("", source)
        items.append({"id": f"{source}:{lower.get('id') or i}", "category": str(category),
                      "question": str(lower["question"]).strip(), "options": dict(sorted(options.items())),
                      "answer": answer_letters(lower.get("answer", ""))})
    return items


def _gsm8k(source: str, records: list[dict]) -> list[dict]:
    items = []
    for i, r in enumerate(records):
        answer = str(r["answer"])
        final = answer.rsplit("####", 1)[1] if "####" in answer else answer
        items.append({"id": f"{source}:{i}", "category": str(r.get("category") or language(r["question"])),
                      "instruction": str(r["question"]).strip(), "input": "", "reference": answer,
                      "gold": extract_number(final)})
    return items


def _unified_math(source: str, records: list[dict]) -> list[dict]:
    return [{"id": f"{source}:{i}", "category": str(r.get("category") or language(r["instruction"])),
             "instruction": r["instruction"], "input": r.get("input") or "", "reference": r["output"],
             "gold": extract_number(r["output"])} for i, r in enumerate(records)]


def _belle(source: str, records: list[dict]) -> list[dict]:
    return [{"id": f"{source}:{r.get('id', i)}", "category": str(r.get("class") or "default"),
             "question": str(r["question"]), "reference": str(r.get("std_answer") or "")}
            for i, r in enumerate(records)]


def _unified_judged(source: str, records: list[dict]) -> list[dict]:
    return [{"id": f"{source}:{i}", "category": str(r.get("class") or r.get("category") or language(r["instruction"])),
             "question": r["instruction"] + (f"\n{r['input']}" if r.get("input") else ""),
             "reference": r["output"]} for i, r in enumerate(records)]


READERS = {("multiple_choice", "mmcu"): _mmcu, ("multiple_choice", "ceval"): _ceval,
           ("cot_math", "gsm8k"): _gsm8k, ("cot_math", "unified"): _unified_math,
           ("judged", "belle"): _belle, ("judged", "unified"): _unified_judged}


def load_items(task: str, specs: list[str], fmt: str = "auto") -> list[dict]:
    """Items of ``task`` from files, folders or registry names, in order."""
    if task == "reward":  # preference pairs, validated as such (evaluation/reward.py scores them)
        from ..data.preference import load_preference_data

        return load_preference_data(specs)[0]
    if task not in TASK_FORMATS:
        raise ValueError(f"unknown --task {task!r}{did_you_mean(task, TASK_FORMATS)}; known: {', '.join(TASK_FORMATS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}{did_you_mean(fmt, FORMATS)}; known: {', '.join(FORMATS)}")
    items: list[dict] = []
    for spec in specs:
        for source, kind, records in raw_records(spec):
            layout = fmt if fmt != "auto" else detect_format(kind, records)
            if layout not in TASK_FORMATS[task]:
                found = f"looks like the {layout} layout" if layout else "is in no layout we know"
                raise DataError(f"{spec}: {found}; --task {task} reads {' or '.join(TASK_FORMATS[task])} "
                                f"(see --format)")
            try:
                items += READERS[task, layout](source if kind != "registry" else spec, records)
            except KeyError as e:
                raise DataError(f"{spec}: a record lacks the {layout} field {e}") from e
    if not items:
        raise DataError(f"{' '.join(specs)}: no items to evaluate")
    return items


def check_items(task: str, items: list[dict]) -> list[str]:
    """Problems that make items unscorable (printed as warnings; such items are counted, not scored)."""
    problems = []
    for item in items:
        if task == "multiple_choice":
            if len(item["options"]) < 2:
                problems.append(f"{item['id']}: fewer than two options")
            elif not item["answer"] or any(a not in item["options"] for a in item["answer"]):
                problems.append(f"{item['id']}: answer {item['answer']!r} is not one of the options")
        elif task == "cot_math" and item["gold"] is None:
            problems.append(f"{item['id']}: no number in the reference answer")
    return problems


def data_name(specs: list[str]) -> str:
    return " ".join(os.path.basename(os.path.normpath(s)) for s in specs)
