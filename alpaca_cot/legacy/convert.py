"""Detect a legacy-layout checkpoint, convert it to a native folder, and cache the conversion.

``python -m alpaca_cot.convert_legacy SRC DST`` converts explicitly; every script converts
implicitly (once, cached under ``$ALPACA_COT_HOME/models/converted/``) when
``--model_name_or_path`` points at a legacy folder. The converted folder holds:

- ``config.json`` of the native class (``LegacyFamily.native_class``),
- the weights as safetensors (sharded like ``save_pretrained`` does, dtype kept),
- the fast tokenizer built from the checkpoint's own vocabulary files (when the folder has them),
- ``alpaca_cot_conversion.json``: the family, the source folder and its file digest, versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .registry import LEGACY_FAMILIES, LegacyFamily

logger = logging.getLogger(__name__)

CONVERSION_FILE = "alpaca_cot_conversion.json"
CONVERTER_VERSION = 1  # bump when a conversion's output changes, to invalidate cached folders
# Files copied unchanged into the converted folder when the source has them.
COPIED_FILES = ("generation_config.json",)


class LegacyConversionError(ValueError):
    """A legacy checkpoint that cannot be converted; the message says which file and why."""


def _families() -> dict[str, LegacyFamily]:
    from . import FAMILY_MODULES  # noqa: F401  importing the package registers every family

    return LEGACY_FAMILIES


def read_config(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise LegacyConversionError(f"{path}: invalid JSON ({e})") from e


def detect_family(folder: str | os.PathLike) -> LegacyFamily | None:
    """The legacy family of the checkpoint in ``folder``, or None (not a legacy layout, or converted already)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / CONVERSION_FILE).exists():
        return None
    config = read_config(folder)
    if config is None:
        return None
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    found = [f for f in _families().values() if f.detect(config, files)]
    if len(found) > 1:  # detectors must exclude each other; a tie is our bug, not the user's
        raise RuntimeError(f"{folder}: several legacy families match: {[f.name for f in found]}")
    return found[0] if found else None


def conversion_info(folder: str | os.PathLike) -> dict | None:
    """The ``alpaca_cot_conversion.json`` record of a converted folder, or None."""
    path = Path(folder) / CONVERSION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: those an index names, else ``model*.safetensors``, else
    ``pytorch_model*.bin`` (other tensor files in the folder, such as test references or adapters, are not weights)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def load_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``folder`` (safetensors or PyTorch ``.bin`` files, sharded or not)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        raise LegacyConversionError(f"{folder}: no weights (model*.safetensors or pytorch_model*.bin)")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            part = load_file(str(path)) if path.suffix == ".safetensors" else \
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - name the file that failed
            raise LegacyConversionError(f"{path}: cannot read weights ({e})") from e
        state.update(part)
    return state


def _check_against_model(config, state: dict[str, torch.Tensor], family: LegacyFamily) -> None:
    """Refuse a state dict whose names or shapes do not fit the native class built from ``config``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = {k for k in expected if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise LegacyConversionError(
            f"converting a {family.name} checkpoint to {family.native_class}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {[(k, tuple(state[k].shape), expected[k]) for k in wrong[:5]]}")


def source_digest(folder: str | os.PathLike) -> str:
    """A digest of the folder's file names, sizes and modification times (cheap; contents are not read)."""
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def resolve_family(family: LegacyFamily | str) -> LegacyFamily:
    """``family`` itself, or the registered family of that name (``--model_type chatglm3``)."""
    if isinstance(family, LegacyFamily):
        return family
    families = _families()
    if family not in families:
        raise LegacyConversionError(f"unknown legacy family {family!r}; known: {', '.join(sorted(families))}")
    return families[family]


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, family: LegacyFamily | str | None = None,
                       overwrite: bool = False) -> Path:
    """Convert the legacy checkpoint in ``src`` into a native folder ``dst`` (written atomically).

    ``family`` (a ``LegacyFamily`` or its name) overrides detection, e.g. ``"chatglm3"`` for a ChatGLM
    folder whose files do not say which generation it is.

    Raises:
        LegacyConversionError: ``src`` is not a legacy layout we know, its weights do not fit, or ``dst``
            is occupied (without ``overwrite``).
    """
    from huggingface_hub import save_torch_state_dict

    src, dst = Path(src), Path(dst)
    family = resolve_family(family) if family is not None else detect_family(src)
    if family is None:
        raise LegacyConversionError(
            f"{src}: not a checkpoint of a legacy family ({', '.join(_families())}); config.json model_type "
            f"{(read_config(src) or {}).get('model_type')!r}")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise LegacyConversionError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if family.register:
        family.register()
    legacy_config = read_config(src)
    config = family.convert_config(legacy_config)
    state = family.convert_state_dict(load_state_dict(src), legacy_config)
    _check_against_model(config, state, family)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}-") as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        config.save_pretrained(out)
        save_torch_state_dict({k: v.contiguous() for k, v in state.items()}, out)
        tokenizer_note = "no tokenizer files in the source: the converted folder has no tokenizer"
        if family.build_tokenizer is not None:
            tokenizer = family.build_tokenizer(src, legacy_config)
            if tokenizer is not None:
                tokenizer.save_pretrained(out)
                tokenizer_note = f"fast tokenizer built from the checkpoint's vocabulary ({type(tokenizer).__name__})"
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        import transformers

        record = {"family": family.name, "native_class": family.native_class, "source": str(src.resolve()),
                  "source_digest": source_digest(src), "converter_version": CONVERTER_VERSION,
                  "tokenizer": tokenizer_note, "transformers": transformers.__version__}
        (out / CONVERSION_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(out, dst)
    return dst


def cached_conversion(src: str | os.PathLike, family: LegacyFamily | str | None = None) -> Path | None:
    """The cached native folder for legacy checkpoint ``src`` (converting it on first use), or None
    when ``src`` is not a legacy layout. A changed source folder is converted again. ``family`` (or its
    name) overrides the detected family of a legacy folder (``--model_type chatglm3``)."""
    detected = detect_family(src)
    if detected is None:
        return None
    family = resolve_family(family) if family is not None else detected
    from ..embedded import cache_home

    src = Path(src)
    digest = source_digest(src)
    dst = cache_home() / "models" / "converted" / f"{family.name}-{src.resolve().name}-{digest[:12]}"
    if (dst / CONVERSION_FILE).is_file():
        if family.register:
            family.register()
        return dst
    logger.info("%s is a legacy %s checkpoint: converting it once to %s in %s (the source is not changed)",
                src, family.name, family.native_class, dst)
    convert_checkpoint(src, dst, family, overwrite=True)
    logger.info("converted %s -> %s", src, dst)
    return dst
