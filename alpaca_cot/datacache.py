"""A second run on unchanged data files skips reading them: a key over the files' bytes -> the tokenized sets.

Without it a second run would still open every records cache entry and derive the sampling,
split and mixture keys before ``tokenize_dataset`` finds its entry. This index sits in front:
``data_key`` hashes what decides the tokenized train and validation sets without parsing
anything (the ``--data`` specs, the bytes of the files they resolve to, the registry, the seed,
``--val_set_size``, ``--mix_weights``, ``--skip_invalid``, the tokenizer's files, the template,
``cutoff_len``, library versions and the source of the code that turns files into samples)
and before loading the tokenizer, and ``lookup`` returns the sets ``tokenize_dataset`` stored
for that key on an earlier run (memory-mapped: a million samples open in well under a second). Any doubt (a file that cannot be
resolved, a missing entry) means no hit: the normal path runs and reports errors as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
CODE = ("data/jsonio.py", "data/loading.py", "data/schema.py", "data/records.py", "data/mixing.py", "tokenize.py",
        "templates.py", "train.py", "datacache.py")


def _index_dir() -> Path:
    from .embedded import cache_home

    return cache_home() / "tokenized" / "by_files"


_DIGESTS: dict[tuple, bytes] = {}  # (path, size, mtime, inode) -> digest: each file hashed once per process


def file_digest(path: Path) -> bytes:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (remembered in this process while the file is unchanged)."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    _DIGESTS[memo] = h.digest()
    return _DIGESTS[memo]


TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.model",
                   "*.tiktoken", "chat_template*", "*.py")


def data_key(specs: list[str], *, seed: int, skip_invalid: bool, val_set_size: float, model_path: str, template,
             cutoff_len: int, mix_weights: list[float] | None = None) -> str | None:
    """A key for the tokenized sets of this run, or None when the files cannot be resolved cheaply.

    The tokenizer enters through its files in the local checkpoint folder ``model_path`` (so
    nothing is loaded before the data settings are known to be valid); a Hub id gives None.
    """
    import tokenizers
    import transformers

    from .data.loading import data_dir, parse_data_spec, resolve_files
    from .data.schema import DataError
    from .tokenize import FORMAT_VERSION

    folder = Path(model_path)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    try:
        for path in sorted({f for pattern in TOKENIZER_FILES for f in folder.glob(pattern) if f.is_file()}):
            h.update(f"tokenizer:{path.name}\n".encode())
            h.update(file_digest(path))
        for spec in specs:
            name, _ = parse_data_spec(spec)
            h.update(f"spec:{spec}\n".encode())
            for path in resolve_files(name):
                h.update(f"file:{Path(path).resolve()}\n".encode())
                h.update(file_digest(Path(path)))
        registry = data_dir() / "datasets.json"
        if registry.exists():
            h.update(file_digest(registry))
        for name in CODE:
            h.update(file_digest(PACKAGE / name))
    except (DataError, OSError):
        return None
    h.update(json.dumps([seed, skip_invalid, val_set_size, cutoff_len, mix_weights, FORMAT_VERSION,
                         transformers.__version__, tokenizers.__version__]).encode())
    h.update(repr(template).encode())
    return h.hexdigest()[:32]


def _entry_folder(dataset) -> str | None:
    """The ``tokenize_dataset`` folder a dataset was loaded from (it holds ``shard*.arrow`` and ``report.json``)."""
    files = getattr(dataset, "cache_files", None) or []
    if not files:
        return None
    folder = Path(files[0]["filename"]).parent
    return str(folder) if (folder / "report.json").exists() else None


def remember(key: str | None, train_set, val_set, skipped: int) -> None:
    """Record where this key's tokenized sets live (nothing when they were not cached)."""
    if key is None:
        return
    train = _entry_folder(train_set)
    val = _entry_folder(val_set) if val_set is not None else None
    if train is None or (val_set is not None and val is None):
        return
    index = _index_dir()
    index.mkdir(parents=True, exist_ok=True)
    tmp = index / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"train": train, "val": val, "skipped": skipped}))
    os.replace(tmp, index / f"{key}.json")


def lookup(key: str | None):
    """``(train_set, val_set, train TruncationReport, validation TruncationReport or None, skipped)`` for ``key``, or None."""
    if key is None:
        return None
    entry_file = _index_dir() / f"{key}.json"
    if not entry_file.exists():
        return None
    from .tokenize import TruncationReport, load_tokenized

    def load(folder):
        if not (Path(folder) / "report.json").exists():
            raise OSError(f"{folder}: no report.json")
        return load_tokenized(folder), TruncationReport(**json.loads((Path(folder) / "report.json").read_text()))

    try:
        entry = json.loads(entry_file.read_text())
        train_set, report = load(entry["train"])
        val_set, val_report = load(entry["val"]) if entry["val"] else (None, None)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a cleaned or half-written cache: no hit
        logger.info("ignoring the data index entry %s (%s)", entry_file, e)
        return None
    return train_set, val_set, report, val_report, entry.get("skipped", 0)
