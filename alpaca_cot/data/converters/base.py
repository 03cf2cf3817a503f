"""The converter registry and the loop that runs a converter over raw files.

A converter turns one raw source record into zero or more unified records::

    @register_converter("dolly")
    def dolly(raw, ctx):
        yield {"instruction": text(raw, "instruction"), "input": text(raw, "context"),
               "output": text(raw, "response")}

It raises ``BadRecord`` for a malformed raw record (an error naming file and line, or with
``skip_invalid`` a counted skip) and ``Skip`` for a well-formed record that holds nothing
to train on (counted by reason, never an error). A converter may also *yield* a ``Skip`` or
``BadRecord`` when one raw record produces several outputs. Formats whose records span
several rows (``grouped=True``) receive the whole ``(where, raw)`` stream and yield
``(where, item)`` pairs. The driver sets ``source``, validates every output with
``schema.record_problem`` and puts the keys in canonical order.
"""

from __future__ import annotations

import html
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..readers import read_raw
from ..schema import DataError, normalize, normalize_preference, preference_problem, record_problem

ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM = "user", "assistant", "system"


class Skip(Exception):
    """A well-formed raw record with nothing to train on; ``reason`` is counted in the summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BadRecord(Exception):
    """A malformed raw record; the message says what is wrong (the driver adds file and line)."""


# ---------------------------------------------------------------- escapes left in source text
#
# Some sources store text escaped once more than JSON needs: FLAN's chain-of-thought TSV files
# write line breaks as the two characters backslash-n, scraped web text keeps HTML entities
# (&amp; &lt; &#39;), and files written through two JSON encoders hold "\u4e2d" instead of the
# character. A converter names the escapes its source is known to use (``unescape=`` when it is
# registered); ``--unescape`` on data/convert.py adds more for any format. Whatever is left is
# counted per kind in the ConversionReport, so a source with escapes nobody decoded shows up in
# the summary instead of training as literal backslashes.

ESCAPES = {
    "backslash": re.compile(r"(?<!\\)\\[ntr]"),           # \n \t \r written as two characters
    "html": re.compile(r"&(?:amp|lt|gt|quot|apos|nbsp|#\d{1,6}|#x[0-9a-fA-F]{1,6});"),
    "unicode": re.compile(r"(?<!\\)\\u[0-9a-fA-F]{4}"),    # \u4e2d written as six characters
}
_BACKSLASH = {"n": "\n", "t": "\t", "r": "\r"}
TEXT_KEYS = ("instruction", "input", "output", "system", "chosen", "rejected")


def unescape(text: str, kinds) -> str:
    """``text`` with the escapes of ``kinds`` (keys of ``ESCAPES``) decoded.

    backslash: ``\\n``/``\\t``/``\\r`` (not preceded by another backslash) become the control
    character; html: entities through ``html.unescape``; unicode: ``\\uXXXX`` becomes the character
    (surrogate pairs joined).
    """
    if "unicode" in kinds and "\\u" in text:
        text = ESCAPES["unicode"].sub(lambda m: chr(int(m.group()[2:], 16)), text)
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if "backslash" in kinds and "\\" in text:
        text = ESCAPES["backslash"].sub(lambda m: _BACKSLASH[m.group()[1]], text)
    if "html" in kinds and "&" in text:
        text = html.unescape(text)
    return text


def _texts(record: dict):
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            yield record[key]
    for turn in record.get("history") or []:
        yield from (t for t in turn if isinstance(t, str))


def unescape_record(record: dict, kinds) -> dict:
    """A record with ``unescape`` applied to every text field (history turns included)."""
    if not kinds:
        return record
    out = dict(record)
    for key in TEXT_KEYS:
        if isinstance(out.get(key), str):
            out[key] = unescape(out[key], kinds)
    if out.get("history"):
        out["history"] = [[unescape(t, kinds) if isinstance(t, str) else t for t in turn] for turn in out["history"]]
    return out


def escapes_left(record: dict) -> list[str]:
    """The kinds of ``ESCAPES`` still present somewhere in the record's text."""
    return [kind for kind, pattern in ESCAPES.items() if any(pattern.search(t) for t in _texts(record))]


@dataclass(frozen=True)
class ConvertContext:
    """What a converter may depend on besides the record: the seed (template choice) and source."""

    seed: int = 42
    source: str = ""


@dataclass(frozen=True)
class Converter:
    name: str
    fn: Callable
    grouped: bool = False  # fn(rows, ctx) over the whole (where, raw) stream
    header: bool = True    # CSV/TSV sources start with a header row
    kind: str = "instruction"  # or "pairs": preference pairs (chosen/rejected), validated as such
    unescape: tuple[str, ...] = ()  # escapes the source is known to use (keys of ESCAPES), decoded

    def problem(self, record) -> str | None:
        return preference_problem(record) if self.kind == "pairs" else record_problem(record)

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str, *, grouped: bool = False, header: bool = True, kind: str = "instruction",
                       unescape: tuple[str, ...] = ()):
    """Decorator registering ``fn`` as the converter for source format ``name`` (no duplicates).

    ``kind`` "pairs" marks a converter of preference pairs (``chosen``/``rejected`` instead of ``output``).
    """
    def wrap(fn):
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} is already registered")
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"converter {name!r} needs a docstring stating its raw schema")
        if set(unescape) - set(ESCAPES):
            raise ValueError(f"converter {name!r}: unknown escapes {sorted(set(unescape) - set(ESCAPES))}")
        CONVERTERS[name] = Converter(name, fn, grouped=grouped, header=header, kind=kind, unescape=tuple(unescape))
        return fn
    return wrap


def get_converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise DataError(f"unknown source format {name!r}; known formats: {', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[name]


# ---------------------------------------------------------------- helpers for converters


def text(raw: dict, key: str, *, required: bool = True, default: str = "") -> str:
    """``raw[key]`` as a string; a missing required key or a non-string value is a BadRecord."""
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    if key not in raw or raw[key] is None:
        if required:
            raise BadRecord(f"missing field '{key}'")
        return default
    value = raw[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadRecord(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def first_text(raw: dict, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` present in ``raw`` (as by ``text``); BadRecord naming all when none is."""
    for key in keys:
        if isinstance(raw, dict) and raw.get(key) is not None:
            return text(raw, key)
    raise BadRecord("missing field " + " / ".join(f"'{k}'" for k in keys))


def items(raw: dict, key: str) -> list:
    """``raw[key]`` as a list; missing or not a list is a BadRecord."""
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    value = raw.get(key)
    if value is None:
        raise BadRecord(f"missing field '{key}'")
    if not isinstance(value, list):
        raise BadRecord(f"field '{key}' must be a list, got {type(value).__name__}")
    return value


def dialogue(turns: Iterable[tuple[str, str]], *, system: str = "") -> dict:
    """Unified record from ``(role, text)`` turns, roles ``user``/``assistant``/``system``.

    Blank turns are dropped, consecutive turns of one role are joined by a blank line,
    assistant turns before the first user turn are dropped, and a trailing user turn (a
    dialogue ending on the human side) is dropped. All pairs but the last become
    ``history``; the last pair becomes instruction/output. No assistant turn left: Skip.
    """
    merged: list[list[str]] = []
    systems = [system.strip()] if system.strip() else []
    for role, content in turns:
        content = content.strip()
        if not content:
            continue
        if role == ROLE_SYSTEM:
            systems.append(content)
        elif merged and merged[-1][0] == role:
            merged[-1][1] += "\n\n" + content
        elif merged or role == ROLE_USER:
            merged.append([role, content])
    if merged and merged[-1][0] == ROLE_USER:
        merged.pop()
    pairs = [[merged[i][1], merged[i + 1][1]] for i in range(0, len(merged) - 1, 2)]
    if not pairs:
        raise Skip("no assistant turn")
    record = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "history": pairs[:-1]}
    if systems:
        record["system"] = "\n\n".join(systems)
    return record


def split_markers(transcript: str, markers: dict[str, str], *, line_start: bool = True) -> list[tuple[str, str]]:
    """Cut a transcript at speaker markers into ``(role, text)`` turns.

    ``markers`` maps marker text (``"Human:"``) to a role. With ``line_start`` a marker only
    counts at the start of the text or of a line, so "Human:" quoted inside a message stays
    text. Text before the first marker is returned with role ``None``.
    """
    turns: list[tuple[str | None, str]] = []
    role, start, i = None, 0, 0
    ordered = sorted(markers, key=len, reverse=True)  # longest first: "<|Human|>:" before "Human:"
    while i < len(transcript):
        if not line_start or i == 0 or transcript[i - 1] == "\n":
            hit = next((m for m in ordered if transcript.startswith(m, i)), None)
            if hit is not None:
                turns.append((role, transcript[start:i]))
                role, i = markers[hit], i + len(hit)
                start = i
                continue
        i += 1
    turns.append((role, transcript[start:]))
    return [(r, t) for r, t in turns if r is not None or t.strip()]


# ---------------------------------------------------------------- the driver


@dataclass
class ConversionReport:
    """Counts of one conversion: raw records read, records written, skips by reason."""

    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)  # with skip_invalid: the messages
    escapes: Counter = field(default_factory=Counter)  # records still holding each kind of ESCAPES
    unescaped: tuple[str, ...] = ()                    # the kinds that were decoded

    def summary(self, verb: str = "wrote") -> str:
        lines = [f"read {self.read} raw records, {verb} {self.written} records, "
                 f"skipped {sum(self.skipped.values()) + len(self.invalid)}"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n}: {reason}")
        if self.invalid:
            lines.append(f"  skipped {len(self.invalid)} invalid (first: {self.invalid[0]})")
        if self.unescaped:
            lines.append(f"  decoded escapes: {', '.join(self.unescaped)}")
        for kind, n in sorted(self.escapes.items()):
            lines.append(f"  warning: {n} records still contain {kind} escapes ({ESCAPE_EXAMPLES[kind]}); "
                         f"if the source escapes its text, add --unescape {kind}")
        return "\n".join(lines)


ESCAPE_EXAMPLES = {"backslash": "a literal \\n or \\t", "html": "an entity such as &amp; or &#39;",
                   "unicode": "a literal \\uXXXX"}


def canonical(record: dict, source: str) -> dict:
    """Unified record with keys in order; empty ``history``/``system`` left out; ``source`` set."""
    record = normalize(record)
    out = {"instruction": record["instruction"], "input": record["input"], "output": record["output"]}
    if record["history"]:
        out["history"] = record["history"]
    if record.get("system"):
        out["system"] = record["system"]
    out["source"] = record.get("source") or source
    return out


def canonical_pair(record: dict, source: str) -> dict:
    """A preference pair with keys in order (prompt fields, chosen, rejected, source), as ``canonical``."""
    record = normalize_preference(record)
    out = {"instruction": record["instruction"], "input": record["input"]}
    if record["history"]:
        out["history"] = record["history"]
    if record.get("system"):
        out["system"] = record["system"]
    out.update(chosen=record["chosen"], rejected=record["rejected"], source=record.get("source") or source)
    return out


def _outputs(conv: Converter, stream: Iterator[tuple[str, object]], ctx: ConvertContext):
    """(where, item) pairs, item a record dict, a Skip or a BadRecord."""
    if conv.grouped:
        yield from conv.fn(stream, ctx)
        return
    for where, raw in stream:
        try:
            for item in conv.fn(raw, ctx):
                yield where, item
        except (Skip, BadRecord) as e:
            yield where, e


def file_stem(path: str | os.PathLike) -> str:
    """``x/aqua_train.tsv.gz`` -> ``aqua_train``: the file name without its data suffixes."""
    name = os.path.basename(str(path))
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".tsv", ".csv"):
        name = name.removesuffix(suffix)
    return name


def convert_files(fmt: str, paths: Iterable[str | os.PathLike], *, source: str | None = None,
                  dataset: str | None = None, seed: int = 42, skip_invalid: bool = False,
                  report: ConversionReport | None = None, unescape: Iterable[str] = ()) -> Iterator[dict]:
    """Convert raw files of source format ``fmt`` to unified records, lazily.

    Every record's ``source`` is ``source`` when given, else ``DATASET/FILE`` (``dataset``, default
    the format name, and the input file's name without suffixes: ``flan_cot/aqua_train``), unless
    the raw record carries its own. The converter's known escapes plus ``unescape`` (keys of
    ``ESCAPES``) are decoded in every text field; escapes left are counted in ``report.escapes``.
    A malformed record raises DataError("FILE: line n: problem"); with ``skip_invalid`` it is
    recorded in ``report.invalid`` instead.
    """
    conv = get_converter(fmt)
    kinds = tuple(dict.fromkeys((*conv.unescape, *unescape)))
    if set(kinds) - set(ESCAPES):
        raise DataError(f"unknown escape kind(s) {sorted(set(kinds) - set(ESCAPES))}; known: {', '.join(ESCAPES)}")
    report = report if report is not None else ConversionReport()
    report.unescaped = kinds

    def counted(path):
        for pair in read_raw(path, header=conv.header):
            report.read += 1
            yield pair

    for path in paths:
        ctx = ConvertContext(seed=seed, source=source or f"{dataset or fmt}/{file_stem(path)}")
        for where, item in _outputs(conv, counted(path), ctx):
            if isinstance(item, Skip):
                report.skipped[item.reason] += 1
                continue
            if not isinstance(item, BadRecord):
                item = unescape_record(item, kinds)
            problem = str(item) if isinstance(item, BadRecord) else conv.problem(item)
            if problem:
                message = f"{path}: {where}: {problem}"
                if not skip_invalid:
                    raise DataError(message + " (use --skip_invalid to skip such records)")
                report.invalid.append(message)
                continue
            report.escapes.update(escapes_left(item))
            report.written += 1
            yield canonical_pair(item, ctx.source) if conv.kind == "pairs" else canonical(item, ctx.source)
