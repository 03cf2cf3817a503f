"""The metadata file of a fine-tune's output directory, and atomic file writing.

``OUT/alpaca_cot.json`` records what using the fine-tune again needs (base model, model_type,
template, PEFT method, data, cutoff_len), the full argument set and the final metrics. It is
written last, so its presence marks a complete output directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

METADATA_FILE = "alpaca_cot.json"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_metadata(output_dir: str | os.PathLike, meta: dict) -> None:
    atomic_write_text(Path(output_dir) / METADATA_FILE, json.dumps(meta, indent=2, ensure_ascii=False, default=str))


def read_metadata(output_dir: str | os.PathLike) -> dict:
    path = Path(output_dir) / METADATA_FILE
    if not Path(output_dir).is_dir():
        raise FileNotFoundError(f"--lora_dir {output_dir}: no such directory")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {output_dir} is not a finished uniform_finetune.py "
                                "output directory (pass --model_name_or_path/--model_type/--template "
                                "to use a bare adapter)")
    return json.loads(path.read_text(encoding="utf-8"))
