"""Contamination check: n-gram overlap between training records and evaluation items.

An evaluation item *overlaps* the training data when one of its n-grams occurs in a training
record: word 13-grams for English text (the GPT-3 paper's decontamination, Brown et al. 2020,
appendix C) and character 8-grams for Chinese text (CJK characters carry about a word each, so
n-grams of single characters stand in for words; a run of Latin letters or digits inside Chinese
text counts as one unit). Both sizes are settings.

Text is NFKC-normalised and lower-cased. English units are the runs of letters and digits
outside CJK characters; Chinese units (only for text that contains CJK characters) are the CJK
characters and those runs, in order; punctuation and spaces never count. An item with fewer
units than n is checked as a whole (its entire unit sequence must occur), unless it has fewer
than ``MIN_UNITS`` units, in which case it is counted as too short to check.

The index holds only the evaluation side (small); training records are streamed past it, so
memory does not grow with the training set. ``item_text``/``record_text`` decide which fields
are compared: every text field of an evaluation record (question, options, reference), and the
instruction, input, output, history and system prompt of a training record.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

WORD_N = 13
CHAR_N = 8
MIN_UNITS = 3
SKIP_KEYS = {"id", "source", "category", "class", "gold"}
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_RE = re.compile(rf"[^\W_{_CJK}]+")
_ZH_UNIT_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def units(text: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """``(words, chinese_units)`` of a text; ``chinese_units`` is None when it has no CJK character."""
    text = normalize(text)
    words = tuple(_WORD_RE.findall(text))
    chars = tuple(_ZH_UNIT_RE.findall(text)) if _CJK_RE.search(text) else None
    return words, chars


def grams(seq: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """The n-grams of ``seq`` in order (so the first shared one found is always the same)."""
    return [seq[i:i + n] for i in range(len(seq) - n + 1)]


def record_text(record: dict) -> str:
    """The text of a training record that is compared (all turns, system prompt included)."""
    parts = [record.get("system") or "", record.get("instruction") or "", record.get("input") or "",
             record.get("output") or ""]
    parts += [str(t) for pair in record.get("history") or [] for t in pair]
    return "\n".join(p for p in parts if p)


def item_text(item: dict) -> str:
    """Every text field of an evaluation record (options of a mapping or list included), in key order."""
    parts = []
    for key, value in item.items():
        if key in SKIP_KEYS:
            continue
        if isinstance(value, dict):
            parts += [str(v) for v in value.values()]
        elif isinstance(value, list):
            parts += [str(v) for v in value if isinstance(v, (str, int, float))]
        elif isinstance(value, str):
            parts.append(value)
    return "\n".join(p for p in parts if p)


@dataclass
class OverlapReport:
    """What a scan found: per evaluation item the first training record sharing an n-gram with it."""

    items: int = 0
    too_short: int = 0
    word_n: int = WORD_N
    char_n: int = CHAR_N
    hits: dict = field(default_factory=dict)  # item index -> (record index, the shared n-gram as text)
    exact: set = field(default_factory=set)  # item indices whose whole unit sequence equals a record's
    records_hit: set = field(default_factory=set)  # training record indices sharing an n-gram with an item
    records_scanned: int = 0

    def summary(self, examples: int = 3, ids: list[str] | None = None, texts: list[str] | None = None) -> dict:
        """A JSON-ready summary with up to ``examples`` overlapping items."""
        shown = []
        for index in sorted(self.hits)[:examples]:
            record, gram = self.hits[index]
            shown.append({"item": ids[index] if ids else index, "training_record": record, "ngram": gram,
                          **({"text": texts[index][:160]} if texts else {})})
        return {"items": self.items, "overlapping": len(self.hits), "exact_duplicates": len(self.exact),
                "too_short": self.too_short, "training_records": self.records_scanned,
                "training_records_overlapping": len(self.records_hit),
                "ngrams": {"english_words": self.word_n, "chinese_characters": self.char_n}, "examples": shown}


class OverlapIndex:
    """The n-grams of a set of evaluation texts, to stream training texts past.

    Args:
        texts: one text per evaluation item.
        word_n: English n-gram size in words (>= 1).
        char_n: Chinese n-gram size in characters (>= 1).
    """

    def __init__(self, texts: list[str], word_n: int = WORD_N, char_n: int = CHAR_N):
        if word_n < 1 or char_n < 1:
            raise ValueError(f"n-gram sizes must be >= 1, got words {word_n}, characters {char_n}")
        self.report = OverlapReport(items=len(texts), word_n=word_n, char_n=char_n)
        self.index: dict[tuple, set[int]] = {}  # ("w"|"c", gram) -> item indices
        self.whole: dict[tuple, set[int]] = {}  # the complete unit sequence -> item indices (exact duplicates)
        self.lengths = {"w": set(), "c": set()}  # gram lengths to cut from training text
        for i, text in enumerate(texts):
            words, chars = units(text)
            checked = False
            for kind, seq, n in (("w", words, word_n), ("c", chars, char_n)):
                if seq is None or (kind == "w" and chars is not None and len(words) < word_n):
                    continue  # Chinese text: its few Latin words are covered by the character n-grams
                size = n if len(seq) >= n else len(seq)
                if size < MIN_UNITS:
                    continue
                checked = True
                self.lengths[kind].add(size)
                for gram in grams(seq, size):
                    self.index.setdefault((kind, gram), set()).add(i)
                self.whole.setdefault((kind, seq), set()).add(i)
            if not checked:
                self.report.too_short += 1

    def scan(self, texts, start: int = 0) -> OverlapReport:
        """Look for the items' n-grams in ``texts`` (training texts; index ``start`` for the first)."""
        report = self.report
        for offset, text in enumerate(texts):
            index = start + offset
            report.records_scanned += 1
            words, chars = units(text)
            for kind, seq in (("w", words), ("c", chars)):
                if seq is None:
                    continue
                for item in self.whole.get((kind, seq), ()):
                    report.exact.add(item)
                for n in self.lengths[kind]:
                    for gram in grams(seq, n):
                        found = self.index.get((kind, gram))
                        if found:
                            report.records_hit.add(index)
                            joiner = " " if kind == "w" else ""
                            for item in found:
                                report.hits.setdefault(item, (index, joiner.join(gram)))
        return report


def eval_records(spec: str, max_items: int = 0) -> list[dict]:
    """The raw records of an evaluation set (a file, a folder of files, or a registry name), in order."""
    from ..evaluation.readers import raw_records

    records = [r for _, _, part in raw_records(spec) for r in part]
    return records[:max_items] if max_items else records


def check_overlap(eval_specs: list[str], train_records: list[dict], word_n: int = WORD_N, char_n: int = CHAR_N,
                  max_items: int = 0) -> tuple[OverlapReport, list[dict]]:
    """Overlap of the evaluation sets ``eval_specs`` with ``train_records``; also returns the items."""
    items = [r for spec in eval_specs for r in eval_records(spec, max_items)]
    index = OverlapIndex([item_text(r) for r in items], word_n, char_n)
    return index.scan(record_text(r) for r in train_records), items


def decontaminate(records: list[dict], eval_specs: list[str], word_n: int = WORD_N,
                  char_n: int = CHAR_N) -> tuple[list[dict], OverlapReport]:
    """``records`` without those sharing an n-gram with (or equal to) an item of ``eval_specs``."""
    report, _ = check_overlap(eval_specs, records, word_n, char_n)
    drop = report.records_hit
    return [r for i, r in enumerate(records) if i not in drop], report
