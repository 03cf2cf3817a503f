"""``--data`` specs -> Arrow datasets: registry mixtures, ``NAME:N`` / ``NAME:fraction`` sampling, the
validation split and weighted mixing, all as index operations on memory-mapped records.

The steps of a fine-tune's data, in order:

1. ``load_parts(specs)``: one ``Part`` per ``--data`` entry. Its records come from
   ``records.file_records`` (each file read once, cached by content); a registry mixture is the
   concatenation of its entries; ``NAME:N`` and ``NAME:0.3`` keep a seeded sample (the same
   records ``loading.load_data`` picks). ``NAME:2.5`` (a weight above 1) is kept whole here and
   marked for oversampling.
2. ``split_parts(parts, val_set_size, seed)``: the validation records, drawn from the unique
   records of all parts together (``split_indices``, the same draw as ``train.split_records``),
   so a record repeated for oversampling can never be in both sets.
3. ``mix(train_parts, seed, mix_weights)``: the training mixture. Each part contributes
   round(weight x its size) samples: weight 1 keeps it as it is, a weight above 1 repeats every
   record int(weight) times plus a seeded sample for the fraction. ``--mix_weights`` instead
   gives each entry's share of the mixture (normalised), the mixture keeping the total size of
   the entries: an entry below its natural share is subsampled, one above it is repeated the
   same way. The Trainer draws batches in a seeded random order over the whole mixture, so the
   entries are interleaved throughout training.

Every dataset here carries a ``key`` naming its content (the files' bytes through their cache
keys, and every index selection), which keys the tokenization cache. Every step keeps the
``source`` column, so reports can group samples by the dataset (and file) they came from.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .loading import LoadReport, load_registry, parse_data_spec, resolve_files, sample_indices
from .records import file_records
from .schema import DataError


@dataclass
class Part:
    """One ``--data`` entry: its unique records, their content key, and the oversampling weight."""

    spec: str
    dataset: object  # datasets.Dataset (records columns)
    key: str
    weight: float = 1.0


def digest(*parts) -> str:
    """A short content key over strings, bytes and index arrays."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (list, np.ndarray)):
            p = np.asarray(p, dtype=np.int64).tobytes()
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def default_source(name: str) -> str:
    """The ``source`` of records that name none: the registry name, or the file's name without its suffixes."""
    if not os.path.exists(name):
        return name
    stem = Path(name).name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    return stem


def _select(dataset, key: str, idx, why: str):
    if idx is None:
        return dataset, key
    return dataset.select(idx), digest(key, why, idx)


def _concat(datasets: list, keys: list[str]):
    from datasets import concatenate_datasets

    if len(datasets) == 1:
        return datasets[0], keys[0]
    return concatenate_datasets(datasets), digest("concat", *keys)


def _load_name(name: str, *, seed: int, skip_invalid: bool, require_output: bool, report: LoadReport):
    """(dataset, key) of a registry name or a path; a registry mixture is its entries concatenated."""
    entry = load_registry().get(name, {})
    if "mixture" in entry and not os.path.exists(name):
        parts = load_parts(entry["mixture"], seed=seed, skip_invalid=skip_invalid, require_output=require_output,
                           report=report)
        pieces = [_select(p.dataset, p.key, _weight_indices(len(p.dataset), p.weight, seed, p.spec), "weight")
                  for p in parts]
        return _concat([d for d, _ in pieces], [k for _, k in pieces])
    datasets, keys = [], []
    for path in resolve_files(name):
        records = file_records(path, source=default_source(name), skip_invalid=skip_invalid,
                               require_output=require_output)
        report.skipped += records.skipped
        datasets.append(records.dataset)
        keys.append(records.key)
    return _concat(datasets, keys)


def load_parts(specs: list[str], *, seed: int = 42, skip_invalid: bool = False, require_output: bool = True,
               report: LoadReport | None = None) -> list[Part]:
    """One ``Part`` per ``--data`` spec, counts and fractions sampled, weights recorded (see the module doc).

    Raises DataError for unknown names, missing or unreadable files, invalid records (unless
    ``skip_invalid``, which counts them in ``report.skipped``) and impossible counts.
    """
    report = report if report is not None else LoadReport()
    parts = []
    for spec in specs:
        name, amount = parse_data_spec(spec)
        dataset, key = _load_name(name, seed=seed, skip_invalid=skip_invalid, require_output=require_output,
                                  report=report)
        weight = 1.0
        if isinstance(amount, float) and amount > 1:
            weight = amount
        else:
            dataset, key = _select(dataset, key, sample_indices(len(dataset), amount, seed, spec), f"sample:{spec}")
        parts.append(Part(spec, dataset, key, weight))
    report.kept = sum(len(p.dataset) for p in parts)
    return parts


# ---------------------------------------------------------------- split


def split_indices(n: int, val_set_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) index lists for ``n`` records; ``val_set_size`` a count (>= 1) or a fraction.

    Raises ValueError for a negative or fractional count, or a validation set as large as the data.
    """
    if val_set_size < 0:
        raise ValueError(f"--val_set_size must be >= 0, got {val_set_size:g}")
    if val_set_size >= 1 and val_set_size != int(val_set_size):
        raise ValueError(f"--val_set_size {val_set_size:g}: use a whole count or a fraction below 1")
    n_val = int(val_set_size) if val_set_size >= 1 else round(n * val_set_size)
    if n_val >= n:
        raise ValueError(f"--val_set_size {val_set_size:g} asks for {n_val} validation records but the data has "
                         f"only {n}; lower --val_set_size (or give more --data)")
    if n_val == 0:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    in_val = np.zeros(n, dtype=bool)
    in_val[val] = True
    return np.flatnonzero(~in_val).tolist(), val


def split_parts(parts: list[Part], val_set_size: float, seed: int) -> tuple[list[Part], object, str | None]:
    """Split the parts' unique records into training parts and one validation dataset (None when no split).

    Returns ``(train_parts, val_dataset, val_key)``. Weights stay with the training parts.
    """
    sizes = [len(p.dataset) for p in parts]
    train_idx, val_idx = split_indices(sum(sizes), val_set_size, seed)
    if not val_idx:
        return parts, None, None
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    bounds = np.cumsum([0] + sizes)
    train_parts, val_sets, val_keys = [], [], []
    for part, start, end in zip(parts, bounds[:-1], bounds[1:]):
        local_train = train_idx[(train_idx >= start) & (train_idx < end)] - start
        local_val = val_idx[(val_idx >= start) & (val_idx < end)] - start
        dataset, key = _select(part.dataset, part.key, local_train, f"train:{seed}")
        train_parts.append(Part(part.spec, dataset, key, part.weight))
        if len(local_val):
            dataset, key = _select(part.dataset, part.key, local_val, f"val:{seed}")
            val_sets.append(dataset)
            val_keys.append(key)
    val, val_key = _concat(val_sets, val_keys)
    return train_parts, val, val_key


# ---------------------------------------------------------------- weighted mixture


def _repeat_indices(n: int, k: int, rng: random.Random) -> list[int] | None:
    """``k`` indices out of ``n``: a seeded sample when k <= n, else whole copies plus a seeded sample."""
    if k == n:
        return None
    copies, rest = divmod(k, n)
    return list(range(n)) * copies + sorted(rng.sample(range(n), rest))


def _weight_indices(n: int, weight: float, seed: int, spec: str) -> list[int] | None:
    return None if weight == 1.0 or n == 0 else _repeat_indices(n, round(n * weight), random.Random(f"{seed}:w:{spec}"))


def mixture_sizes(parts: list[Part], mix_weights: list[float] | None = None) -> list[int]:
    """How many training samples each part contributes (see the module doc)."""
    sizes = [len(p.dataset) for p in parts]
    if not mix_weights:
        return [round(n * p.weight) for n, p in zip(sizes, parts)]
    if len(mix_weights) != len(parts):
        raise DataError(f"--mix_weights has {len(mix_weights)} values for {len(parts)} --data entries; give one "
                        "weight per entry")
    if any(w < 0 for w in mix_weights) or not sum(mix_weights) > 0:
        raise DataError("--mix_weights must be non-negative with a positive sum")
    if any(p.weight != 1.0 for p in parts):
        raise DataError("give mixture weights either as NAME:weight or with --mix_weights, not both")
    total = sum(sizes)
    shares = [w / sum(mix_weights) for w in mix_weights]
    wanted = [round(s * total) for s in shares]
    for part, n, k in zip(parts, sizes, wanted):
        if k and not n:
            raise DataError(f"--mix_weights: {part.spec} has no training records to draw from")
    return wanted


def mix(parts: list[Part], seed: int, mix_weights: list[float] | None = None) -> tuple[object, str, list[str]]:
    """The training mixture of ``parts``: ``(dataset, key, lines describing each part's contribution)``."""
    wanted = mixture_sizes(parts, mix_weights)
    pieces, keys, lines = [], [], []
    for part, k in zip(parts, wanted):
        n = len(part.dataset)
        idx = None if n == 0 else _repeat_indices(n, k, random.Random(f"{seed}:w:{part.spec}"))
        dataset, key = _select(part.dataset, part.key, idx, f"mix:{seed}")
        pieces.append(dataset)
        keys.append(key)
        lines.append(f"{part.spec}: {n} records -> {k} samples" + (f" (x{k / n:.2f})" if n and k != n else ""))
    dataset, key = _concat(pieces, keys)
    return dataset, key, lines
