"""Caches that make re-scoring free: generations, option scores and judgements, keyed by content.

Each cache is an append-only JSONL file in the evaluation's output directory, one
``{"key": ..., "value": ...}`` per line, flushed as soon as a batch is done, so an interrupted
evaluation resumes where it stopped and a re-run with another scorer (a judge after ROUGE-L, a
larger ``--max_samples``) generates only what is new. Keys hash everything the value depends
on: the model (base, adapter content, dtype), the exact prompt token ids, the generation
settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ..datacache import file_digest


def content_key(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:32]


class JsonlCache:
    """A key -> JSON value store kept in one JSONL file (None: in memory only)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.values: dict[str, object] = {}
        self._lock = threading.Lock()  # judge requests store their replies from worker threads
        if self.path and self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a crash: that value is recomputed
                        continue
                    self.values[entry["key"]] = entry["value"]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    def put_many(self, entries: dict[str, object]) -> None:
        with self._lock:
            self._put(entries)

    def _put(self, entries: dict[str, object]) -> None:
        self.values.update(entries)
        if self.path and entries:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                for key, value in entries.items():
                    f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


def model_fingerprint(generator, lora_dir: str | None = None) -> str:
    """What identifies the model's behaviour: base checkpoint, adapter weights, dtype, template."""
    config = getattr(generator.model, "config", None)
    adapter = {}
    if lora_dir:
        for name in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors"):
            if (Path(lora_dir) / name).exists():
                adapter = {"file": name, "sha256": file_digest(Path(lora_dir) / name).hex()}
                break
    dtype = str(next(generator.model.parameters()).dtype)
    return content_key(getattr(config, "name_or_path", generator.name), adapter, dtype, generator.template.name)


def cached_generate(generator, records: list[dict], gen_kwargs: dict, *, cache: JsonlCache, fingerprint: str,
                    batch_size: int = 8, seed: int | None = None, progress: bool = True) -> list[str]:
    """Answers for ``records``; cached ones are reused, the rest generated a chunk at a time and stored."""
    prompts = generator.prompt_ids(records)
    keys = [content_key("generation", fingerprint, ids, gen_kwargs, seed) for ids in prompts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.values(), key=lambda i: -len(prompts[i]))
    chunk = max(batch_size, 1) * 4  # stored every few batches: an interruption loses at most this much
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generating", unit="item")
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        answers = generator.generate([records[i] for i in part], gen_kwargs, batch_size=batch_size, seed=seed)
        cache.put_many({keys[i]: answer for i, answer in zip(part, answers)})
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return [cache.get(k) for k in keys]
