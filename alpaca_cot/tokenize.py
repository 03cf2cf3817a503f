"""Records -> token ids and labels. Labels are made here and only here.

Each turn's prompt text and response text (from ``alpaca_cot.templates``) are tokenized
separately and concatenated; the EOS id is appended after every response. Prompt tokens get
label -100, response tokens and their EOS are labelled, so loss falls only on assistant
turns. Inference encodes a request with the same function, so its prompt tokens are exactly
the training prompt tokens (``tests/test_tokenize.py`` proves it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

IGNORE_INDEX = -100
FORMAT_VERSION = 1  # bump when the encoding changes, to invalidate cached tokenizations

logger = logging.getLogger(__name__)


def special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts in front of a text by itself (e.g. LLaMA's BOS), found by probing."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


@dataclass
class TruncationReport:
    """How truncation at ``cutoff_len`` affected a dataset."""

    total: int = 0
    truncated: int = 0
    dropped: int = 0  # no response token survived: the sample would train on nothing
    dropped_examples: list[int] = field(default_factory=list)
    dropped_by_source: dict[str, int] = field(default_factory=dict)  # filled by the datasets path (BatchEncoder)

    def summary(self, cutoff_len: int) -> str:
        return (f"{self.total} samples; {self.truncated} truncated at cutoff_len={cutoff_len}; "
                f"{self.dropped} dropped because no response token survived truncation")


def _turns_batch(records, template, tokenizer, with_response: bool):
    return [template.turns(r, with_response=with_response, tokenizer=tokenizer) for r in records]


def _tokenize_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # One batched call to the fast tokenizer; empty strings give [] ids.
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _turn_rows(records, tokenizer, template) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of text templates: prefix, then per turn the prompt (masked), the response and EOS."""
    eos = tokenizer.eos_token_id
    prefix = special_prefix(tokenizer)
    all_turns = _turns_batch(records, template, tokenizer, with_response=True)
    texts = [t for turns in all_turns for pair in turns for t in pair]
    ids = iter(_tokenize_texts(tokenizer, texts))
    rows = []
    for turns in all_turns:
        input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
        for _ in turns:
            prompt_ids, response_ids = next(ids), next(ids)
            input_ids += prompt_ids
            labels += [IGNORE_INDEX] * len(prompt_ids)
            input_ids += response_ids + [eos]
            labels += response_ids + [eos]
        rows.append((input_ids, labels))
    return rows


# ---------------------------------------------------------------- token-level templates


_DERIVED: dict[tuple[int, str], tuple] = {}  # (id(tokenizer), what) -> (weak reference to it, value)


def _derived(tokenizer, what: str, build):
    """``build(tokenizer)``, computed once per tokenizer object (inference encodes one request at a time)."""
    import weakref

    hit = _DERIVED.get((id(tokenizer), what))
    if hit is None or hit[0]() is not tokenizer:
        for key in [k for k, (ref, _) in _DERIVED.items() if ref() is None]:
            del _DERIVED[key]
        hit = (weakref.ref(tokenizer), build(tokenizer))
        _DERIVED[(id(tokenizer), what)] = hit
    return hit[1]


def _drop_dummy_prefix(node) -> bool:
    """Remove SentencePiece's dummy-prefix steps from a ``tokenizer.json`` normalizer/pre-tokenizer tree."""
    changed = False
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") != "never":
            node["prepend_scheme"], changed = "never", True
        for key in ("normalizers", "pretokenizers"):
            if isinstance(node.get(key), list):
                kept = [n for n in node[key] if not (n.get("type") == "Prepend" and n.get("prepend") == "\u2581")]
                changed |= len(kept) != len(node[key])
                node[key] = kept
                changed |= any([_drop_dummy_prefix(n) for n in kept])
    return changed


def _no_prefix_backend(tokenizer):
    """The tokenizer's backend without SentencePiece's dummy-prefix steps (itself where it has none)."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    top = spec.get("normalizer") or {}
    changed = _drop_dummy_prefix({"normalizers": [top]} if top.get("type") != "Sequence" else top)
    if top.get("type") == "Prepend" and top.get("prepend") == "\u2581":
        spec["normalizer"] = None
    changed |= _drop_dummy_prefix({"pretokenizers": [spec["pre_tokenizer"]]} if spec.get("pre_tokenizer") else {})
    if not changed:
        return backend
    plain = Tokenizer.from_str(json.dumps(spec))
    plain.encode_special_tokens = backend.encode_special_tokens
    return plain


def _continued_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of texts that continue a text before them: as the same tokenizer but without SentencePiece's
    dummy prefix ("▁" before a text), which a family's code never puts mid-conversation because it
    encodes the conversation as one string. Tokenizers without a dummy prefix encode them as usual."""
    if not texts:
        return []
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a slow tokenizer: no dummy-prefix step to drop
        return _tokenize_texts(tokenizer, texts)
    backend = _derived(tokenizer, "no_prefix", _no_prefix_backend)
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


def _raw_ids(tokenizer) -> dict[int, int]:
    """{special id: the plain piece id it stands for} where the tokenizer gives a piece spelled like a
    special token that token's id and keeps the piece's own id under an alias (ChatGLM2/3's, built by
    ``legacy/spm.py``)."""
    from .legacy.spm import ALIAS

    vocab = tokenizer.get_vocab()
    return {vocab[name[len(ALIAS):]]: i for name, i in vocab.items()
            if name.startswith(ALIAS) and name[len(ALIAS):] in vocab}


def encode_spans(tokenizer, samples: list) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each sample, a list of ``family_templates.Span``: texts encoded in three
    batched calls (plain, with the tokenizer's special ids, continued), ids kept, labels -100 except
    on ``train`` spans (their ids) and on spans with a ``label``."""
    plain, special, continued = [], [], []
    for spans in samples:
        for span in spans:
            if span.text is not None:
                (continued if span.continued else special if span.special else plain).append(span.text)
    encoded = {"plain": iter(_tokenize_texts(tokenizer, plain)),
               "continued": iter(_continued_ids(tokenizer, continued)),
               "special": iter(tokenizer(special, add_special_tokens=True)["input_ids"] if special else [])}
    raw = _derived(tokenizer, "raw", _raw_ids) if any(span.raw for spans in samples for span in spans) else {}
    rows = []
    for spans in samples:
        input_ids, labels = [], []
        for span in spans:
            if span.text is None:
                ids = list(span.ids)
            else:
                ids = list(next(encoded["continued" if span.continued else "special" if span.special else "plain"]))
                if span.raw and raw:
                    ids = [raw.get(i, i) for i in ids]
            input_ids += ids
            if span.label is not None:
                labels += [span.label] * len(ids)
            else:
                labels += ids if span.train else [IGNORE_INDEX] * len(ids)
        rows.append((input_ids, labels))
    return rows


def encode_records(records: list[dict], tokenizer, template, cutoff_len: int,
                   report: TruncationReport | None = None) -> list[dict]:
    """Encode training records to ``{"input_ids", "labels"}``; drops samples with no label left.

    Text templates give per turn a prompt, a response and EOS; token-level templates
    (``alpaca_cot.family_templates``) give their spans. Truncation keeps the first ``cutoff_len``
    tokens. When the cut falls inside a response, its last kept token is replaced by EOS, so
    every labelled response still ends in EOS.
    """
    report = report if report is not None else TruncationReport()
    eos = tokenizer.eos_token_id
    rows = encode_spans(tokenizer, [template.spans(r, tokenizer=tokenizer) for r in records]) \
        if hasattr(template, "spans") else _turn_rows(records, tokenizer, template)
    out = []
    for index, (input_ids, labels) in enumerate(rows):
        report.total += 1
        if len(input_ids) > cutoff_len:
            report.truncated += 1
            input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
            if labels[-1] != IGNORE_INDEX and input_ids[-1] != eos:
                input_ids[-1] = labels[-1] = eos
            while labels and labels[-1] == IGNORE_INDEX:  # a cut inside a later prompt
                input_ids.pop()
                labels.pop()
        real = sum(1 for i, lab in enumerate(labels) if lab != IGNORE_INDEX
                   and not (lab == eos and i > 0 and labels[i - 1] == IGNORE_INDEX))
        if real == 0:
            report.dropped += 1
            if len(report.dropped_examples) < 10:
                report.dropped_examples.append(index)
            continue
        out.append({"input_ids": input_ids, "labels": labels})
    return out


_WORK: tuple | None = None  # (records, tokenizer, template, cutoff_len), inherited by forked workers


def _encode_chunk(bounds: tuple[int, int]) -> tuple[list[dict], dict]:
    records, tokenizer, template, cutoff_len = _WORK
    report = TruncationReport()
    return encode_records(records[bounds[0]:bounds[1]], tokenizer, template, cutoff_len, report), report.__dict__


def encode_records_parallel(records: list[dict], tokenizer, template, cutoff_len: int, num_workers: int,
                            report: TruncationReport | None = None) -> list[dict]:
    """``encode_records`` split over ``num_workers`` forked processes; the same output, in order."""
    import multiprocessing as mp

    report = report if report is not None else TruncationReport()
    if num_workers <= 1 or len(records) < 2 * num_workers or "fork" not in mp.get_all_start_methods():
        return encode_records(records, tokenizer, template, cutoff_len, report)
    global _WORK
    step = -(-len(records) // num_workers)
    chunks = [(start, min(start + step, len(records))) for start in range(0, len(records), step)]
    _WORK = (records, tokenizer, template, cutoff_len)
    try:
        with mp.get_context("fork").Pool(len(chunks)) as pool:
            results = pool.map(_encode_chunk, chunks)
    finally:
        _WORK = None
    out = []
    for (start, _), (encoded, part) in zip(chunks, results):
        out += encoded
        report.total += part["total"]
        report.truncated += part["truncated"]
        report.dropped += part["dropped"]
        room = 10 - len(report.dropped_examples)
        report.dropped_examples += [start + i for i in part["dropped_examples"][:max(room, 0)]]
    return out


def encode_prompts(records: list[dict], tokenizer, template) -> list[list[int]]:
    """Encode inference requests: history turns with their responses, then the last prompt."""
    if hasattr(template, "spans"):
        spans = [template.spans(r, tokenizer=tokenizer, with_response=False) for r in records]
        return [ids for ids, _ in encode_spans(tokenizer, spans)]
    eos = tokenizer.eos_token_id
    prefix = special_prefix(tokenizer)
    all_turns = _turns_batch(records, template, tokenizer, with_response=False)
    texts = [t for turns in all_turns for pair in turns for t in pair if t is not None]
    ids = iter(_tokenize_texts(tokenizer, texts))
    out = []
    for turns in all_turns:
        input_ids = list(prefix)
        for _, response in turns:
            input_ids += next(ids)
            if response is not None:
                input_ids += next(ids) + [eos]
        out.append(input_ids)
    return out


# ---------------------------------------------------------------- caching


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything about the tokenizer that changes ids."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary is what matters
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token_id, tokenizer.bos_token_id, special_prefix(tokenizer),
                         type(tokenizer).__name__]).encode())
    return h.hexdigest()


def cache_key(records: list[dict], tokenizer, template, cutoff_len: int) -> str:
    return _settings_key(json.dumps(records, ensure_ascii=False, sort_keys=True), tokenizer, template, cutoff_len)


def _settings_key(content: str, tokenizer, template, cutoff_len: int) -> str:
    """A cache key: ``content`` (the records, or a digest of them) and every setting that changes the tokens."""
    h = hashlib.sha256()
    h.update(content.encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(repr(template).encode())
    if getattr(tokenizer, "chat_template", None) and template.name == "chat":
        h.update(str(tokenizer.chat_template).encode())
    h.update(f"{cutoff_len}:{FORMAT_VERSION}".encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------- datasets: batches, workers, disk


def _merge(report: TruncationReport, part: TruncationReport, offset: int) -> None:
    report.total += part.total
    report.truncated += part.truncated
    report.dropped += part.dropped
    room = max(10 - len(report.dropped_examples), 0)
    report.dropped_examples += [offset + i for i in part.dropped_examples[:room]]


def encode_aligned(records: list[dict], tokenizer, template, cutoff_len: int) -> tuple[list, TruncationReport]:
    """``encode_records`` with one entry per record: the sample, or None where it was dropped.

    ``encode_records`` returns only the kept samples and names at most ten dropped ones; a batch
    that drops more is encoded again in halves until every drop is named (rare: it needs many
    prompts longer than ``cutoff_len``).
    """
    report = TruncationReport()
    encoded = encode_records(records, tokenizer, template, cutoff_len, report)
    if report.dropped == len(report.dropped_examples):
        dropped = set(report.dropped_examples)
        kept = iter(encoded)
        return [None if i in dropped else next(kept) for i in range(len(records))], report
    half = len(records) // 2
    first, first_report = encode_aligned(records[:half], tokenizer, template, cutoff_len)
    second, second_report = encode_aligned(records[half:], tokenizer, template, cutoff_len)
    report = TruncationReport()
    _merge(report, first_report, 0)
    _merge(report, second_report, half)
    return first + second, report


class BatchEncoder:
    """The ``datasets.map`` function: a batch of record columns -> ``input_ids``, ``labels``, ``source``.

    Encodes with ``encode_records`` (labels made there), keeps the ``source`` of every sample that
    survives truncation, and adds the batch's counts to ``self.report``; with ``stats_dir`` it
    also appends them to a file there, since worker processes cannot update the caller's report
    (``read_stats`` adds the files up).
    """

    def __init__(self, tokenizer, template, cutoff_len: int, stats_dir=None):
        self.tokenizer, self.template, self.cutoff_len = tokenizer, template, cutoff_len
        self.stats_dir = str(stats_dir) if stats_dir else None
        self.report = TruncationReport()

    def __call__(self, batch: dict, indices: list[int] | None = None) -> dict:
        from .data.records import rows_as_records

        records = rows_as_records(batch)
        encoded, report = encode_aligned(records, self.tokenizer, self.template, self.cutoff_len)
        offset = indices[0] if indices else self.report.total
        _merge(self.report, report, offset)
        out = {"input_ids": [], "labels": [], "source": []}
        dropped: dict[str, int] = {}
        for sample, source in zip(encoded, batch["source"]):
            if sample is None:
                dropped[source] = dropped.get(source, 0) + 1
                continue
            out["input_ids"].append(sample["input_ids"])
            out["labels"].append(sample["labels"])
            out["source"].append(source)
        for source, n in dropped.items():
            self.report.dropped_by_source[source] = self.report.dropped_by_source.get(source, 0) + n
        if self.stats_dir:
            import os

            line = json.dumps({**report.__dict__, "dropped_examples": [offset + i for i in report.dropped_examples],
                               "dropped_by_source": dropped})
            with open(os.path.join(self.stats_dir, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(line + "\n")
        return out


def read_stats(stats_dir) -> TruncationReport:
    """The sum of the per-batch counts ``BatchEncoder`` wrote to ``stats_dir`` (dropped indices: the first ten)."""
    from pathlib import Path

    report, dropped = TruncationReport(), []
    for path in sorted(Path(stats_dir).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            part = json.loads(line)
            report.total += part["total"]
            report.truncated += part["truncated"]
            report.dropped += part["dropped"]
            dropped += part["dropped_examples"]
            for source, n in part["dropped_by_source"].items():
                report.dropped_by_source[source] = report.dropped_by_source.get(source, 0) + n
    report.dropped_examples = sorted(dropped)[:10]
    return report


def tokenized_features():
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                     "source": Value("string")})


def load_tokenized(folder):
    """The tokenized dataset stored in ``folder`` (its ``shard*.arrow`` files, memory-mapped, in order)."""
    from pathlib import Path

    from datasets import Dataset, concatenate_datasets

    shards = sorted(Path(folder).glob("shard*.arrow"))
    if not shards:
        return Dataset.from_dict({"input_ids": [], "labels": [], "source": []}, features=tokenized_features())
    parts = [Dataset.from_file(str(p)) for p in shards]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def tokenize_dataset(dataset, tokenizer, template, cutoff_len: int, *, key: str, num_workers: int = 1,
                     cache_dir=None):
    """Encode a records dataset (``data.records`` columns) once; later calls with the same key load it from disk.

    ``key`` identifies the records' content (``data.mixing`` derives it from the files' bytes and
    the sampling); the tokenizer, template and ``cutoff_len`` are added here. The samples are
    written by ``datasets.map`` in ``num_workers`` processes straight to Arrow files under
    ``cache_dir`` (default ``~/.cache/alpaca_cot/tokenized``), so memory stays bounded whatever
    the size. Returns ``(datasets.Dataset with input_ids, labels, source; TruncationReport; hit)``.
    """
    import os
    import shutil
    from pathlib import Path

    from .embedded import cache_home

    full_key = _settings_key(key, tokenizer, template, cutoff_len)
    folder = Path(cache_dir or cache_home() / "tokenized") / full_key
    report_file = folder / "report.json"
    if report_file.exists():
        report = TruncationReport(**json.loads(report_file.read_text()))
        return load_tokenized(folder), report, True
    tmp = folder.with_name(f".{full_key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "stats").mkdir(parents=True)
    workers = num_workers if len(dataset) >= 2 * max(num_workers, 1) else 1
    try:
        encoded = dataset.map(BatchEncoder(tokenizer, template, cutoff_len, tmp / "stats"), batched=True,
                              batch_size=1000, with_indices=True, num_proc=workers if workers > 1 else None,
                              remove_columns=dataset.column_names, features=tokenized_features(),
                              cache_file_name=str(tmp / "shard.arrow"), new_fingerprint=full_key,
                              writer_batch_size=1000, desc="tokenizing")
        del encoded  # its files are reopened from their final place below
        report = read_stats(tmp / "stats")
        shutil.rmtree(tmp / "stats")
        (tmp / "report.json").write_text(json.dumps(report.__dict__))
        try:
            os.replace(tmp, folder)  # atomic: a reader sees a whole cache entry or none
        except OSError:  # another process wrote the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_tokenized(folder), report, False


def tokenize_cached(records: list[dict], tokenizer, template, cutoff_len: int, cache_dir=None,
                    num_workers: int = 1):
    """``tokenize_dataset`` for a Python list of validated records, keyed by their content.

    Returns ``(datasets.Dataset, TruncationReport, hit)``; ``num_workers`` is not part of the key.
    """
    from .data.records import records_from_list

    key = cache_key(records, tokenizer, template, cutoff_len)
    return tokenize_dataset(records_from_list(records), tokenizer, template, cutoff_len, key=key,
                            num_workers=num_workers, cache_dir=cache_dir)
