"""Reference packs of the legacy families (``tests/fixtures/legacy_models/<name>/``), for any test.

Each pack holds a tiny checkpoint in the family's legacy layout and what the family's own upstream
code computed on it (see the packs' README.md). ``load_pack(name)`` returns the folder, the parsed
``reference.json`` and the tensors of ``reference.safetensors`` (keys like ``"a.logits"``).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

PACKS_DIR = Path(__file__).resolve().parent / "fixtures" / "legacy_models"


def pack_names() -> list[str]:
    """The families that have a pack (folder names under ``PACKS_DIR``)."""
    return sorted(p.name for p in PACKS_DIR.iterdir() if (p / "reference.json").is_file())


@functools.lru_cache(maxsize=None)
def _load(name: str):
    from safetensors.torch import load_file

    folder = PACKS_DIR / name
    if not (folder / "reference.json").is_file():
        raise FileNotFoundError(f"no reference pack {name!r} in {PACKS_DIR}; packs: {pack_names()}")
    reference = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    return folder, reference, load_file(str(folder / "reference.safetensors"))


def load_pack(name: str):
    """``(folder, reference_json, tensors)`` of pack ``name``; callers must not modify the tensors in place
    (they are cached per process)."""
    return _load(name)


def case_inputs(reference: dict, tensors: dict, case: str) -> dict:
    """The keyword arguments the reference's forward call got for ``case``, read from its ``forward``
    entry (``"model(input_ids=b.input_ids, attention_mask=b.attention_mask)"``), as tensors."""
    call = reference["cases"][case]["forward"].split("->")[0]
    return {arg: tensors[f"{case_}.{key}"] for arg, case_, key in re.findall(r"(\w+)=(\w+)\.(\w+)", call)}


def valid_positions(reference: dict, case: str, rows: int) -> list[list[int]]:
    """Per row, the positions whose logits count (padded positions are left out); every position for
    cases without ``valid_positions``."""
    spec = reference["cases"][case]
    if "valid_positions" in spec:
        return spec["valid_positions"]
    length = spec["logits"]["shape"][1]
    return [list(range(length))] * rows
