"""``--streaming``: the training data as a ``datasets.IterableDataset``, read, mixed and tokenized as training
consumes it, for data larger than the disk cache allows.

Nothing is written to disk: records stream from the files (``jsonio``, validated one by one as
in ``records``), the entries are interleaved (with ``--mix_weights``: drawn with those
probabilities, seeded, until every entry has been used up once, smaller ones restarting) or
else concatenated, then shuffled through a buffer of ``buffer_size`` records (seeded), and
tokenized in batches on the fly (``tokenize.BatchEncoder``; ``PackingCollator`` packs each
micro-batch as it comes). What needs the data's size up front is refused with a message:
``NAME:0.3`` and ``NAME:2.5`` (use ``NAME:N``, the first N records, or ``--mix_weights``), and a
fractional ``--val_set_size``. The validation set is the first ``--val_set_size`` records of
the (unshuffled) mixture, tokenized as usual; training skips every record equal to one of them.
"""

from __future__ import annotations

import hashlib
import json

from .loading import load_registry, parse_data_spec, resolve_files
from .mixing import default_source
from .records import record_schema, records_from_list
from .schema import DataError, normalize, record_problem


def _stream(files: list[str], source: str, skip_invalid: bool):
    """Normalised records of ``files`` in order; invalid ones raise (or, with ``skip_invalid``, are skipped)."""
    from .jsonio import iter_json

    for path in files:
        for where, value in iter_json(path):
            problem = record_problem(value)
            if problem:
                if skip_invalid:
                    continue
                raise DataError(f"{path}: {where}: {problem} (use --skip_invalid to skip such records)")
            record = normalize(value)
            yield {"instruction": record["instruction"], "input": record["input"], "output": record["output"],
                   "history": record["history"], "system": record.get("system") or None,
                   "source": record.get("source") or source}


def _features():
    from datasets import Features

    return Features.from_arrow_schema(record_schema())


def stream_entry(spec: str, *, skip_invalid: bool = False):
    """One ``--data`` entry as an IterableDataset (a registry mixture: its files one after another)."""
    from datasets import IterableDataset

    name, amount = parse_data_spec(spec)
    if isinstance(amount, float):
        raise DataError(f"--data {spec}: with --streaming the size of the data is not known in advance; use "
                        f"{name}:N for the first N records, or --mix_weights for proportions")
    files = [str(p) for p in resolve_files(name)]
    registry = load_registry()
    source = default_source(name)
    if name in registry and "mixture" in registry[name]:  # each part keeps its own name as the source
        streams = [stream_entry(part, skip_invalid=skip_invalid) for part in registry[name]["mixture"]]
        from datasets import concatenate_datasets

        dataset = concatenate_datasets(streams)
    else:
        # One shard: the files in order, passed as one string (list-valued gen_kwargs become shards).
        dataset = IterableDataset.from_generator(_one_shard, features=_features(),
                                                 gen_kwargs={"files": json.dumps(files), "source": source,
                                                             "skip_invalid": skip_invalid})
    return dataset.take(amount) if amount else dataset


def _one_shard(files: str, source: str, skip_invalid: bool):
    yield from _stream(json.loads(files), source, skip_invalid)


def record_hash(record: dict) -> str:
    return hashlib.sha256(json.dumps([record[k] for k in ("instruction", "input", "output", "history", "system")],
                                     ensure_ascii=False).encode()).hexdigest()


def stream_data(specs: list[str], *, seed: int, skip_invalid: bool = False, mix_weights: list[float] | None = None,
                val_set_size: float = 0, buffer_size: int = 10_000):
    """``(train IterableDataset, validation Dataset or None)`` for ``--streaming`` (see the module doc)."""
    from datasets import concatenate_datasets, interleave_datasets

    if val_set_size and (val_set_size < 1 or val_set_size != int(val_set_size)):
        raise DataError(f"--val_set_size {val_set_size:g}: with --streaming give a whole count of validation records")
    streams = [stream_entry(spec, skip_invalid=skip_invalid) for spec in specs]
    if mix_weights:
        if len(mix_weights) != len(specs):
            raise DataError(f"--mix_weights has {len(mix_weights)} values for {len(specs)} --data entries; give one "
                            "weight per entry")
        if any(w < 0 for w in mix_weights) or not sum(mix_weights) > 0:
            raise DataError("--mix_weights must be non-negative with a positive sum")
        shares = [w / sum(mix_weights) for w in mix_weights]
        mixture = interleave_datasets(streams, probabilities=shares, seed=seed, stopping_strategy="all_exhausted")
    else:
        mixture = streams[0] if len(streams) == 1 else concatenate_datasets(streams)
    val = None
    if val_set_size:
        head = list(mixture.take(int(val_set_size)))
        if len(head) < val_set_size:
            raise DataError(f"--val_set_size {val_set_size:g}: the data has only {len(head)} records")
        val = records_from_list(head)
        held = {record_hash(r) for r in head}
        mixture = mixture.filter(lambda r: record_hash(r) not in held)
    return mixture.shuffle(seed=seed, buffer_size=buffer_size), val
