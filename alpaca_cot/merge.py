"""Fold a fine-tune's adapter into its base weights and save a standalone checkpoint.

The result (safetensors + tokenizer + ``alpaca_cot.json``) loads with
``AutoModelForCausalLM.from_pretrained`` alone, and with ``--lora_dir`` or
``--model_name_or_path`` in every script. Only methods that change existing weights can be
folded in: the registry's ``mergeable`` flag decides, and PEFT's prompt-learning types
(virtual tokens, prefixes) are refused even for a bare adapter folder. A base that was
quantized for training is reloaded and merged in full precision, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PROMPT_REASON = ("it is prompt-based: it learns virtual tokens (or key/value prefixes) fed to the model with "
                 "every input, not a change of the model's weights, so there is nothing to fold into them")
BOTTLENECK_REASON = ("bottleneck adapters add new layers (down-projection, non-linearity, up-projection) that no "
                     "change of the existing weights can express")
USE_INSTEAD = "; use the adapter as it is: every script takes --lora_dir"


class MergeError(ValueError):
    """A fine-tune that cannot be merged, or a destination that must not be written."""


def _is_prompt_learning(peft_type: str | None) -> bool:
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    return peft_type == "ADAPTION_PROMPT" or (config_cls is not None and issubclass(config_cls, PromptLearningConfig))


def unmergeable_reason(lora_dir: str | os.PathLike, meta: dict) -> str | None:
    """Why the adapter in ``lora_dir`` cannot be merged, or None when it can."""
    from .peft_methods import PEFT_METHODS

    adapter_config = Path(lora_dir) / "adapter_config.json"
    peft_type = json.loads(adapter_config.read_text()).get("peft_type")
    name = meta.get("peft_type")
    method = PEFT_METHODS.get(name)
    if _is_prompt_learning(peft_type):
        return PROMPT_REASON
    if peft_type == "BOTTLENECK":
        return BOTTLENECK_REASON
    if method is not None and not method.mergeable:
        return f"the method registry marks --peft_type {name} as not mergeable"
    return None


def _check_destination(merged_dir: Path, lora_dir: Path, overwrite: bool) -> None:
    if merged_dir.resolve() == lora_dir.resolve():
        raise MergeError("--merged_dir must differ from --lora_dir")
    if merged_dir.exists() and (not merged_dir.is_dir() or any(merged_dir.iterdir())) and not overwrite:
        raise MergeError(f"--merged_dir {merged_dir} exists and is not empty; pass --overwrite to replace it")


def merge(lora_dir: str, merged_dir: str, *, model_name_or_path: str | None = None, model_type: str | None = None,
          dtype: str = "auto", overwrite: bool = False) -> Path:
    """Merge the adapter of ``lora_dir`` into its base and save the result to ``merged_dir``.

    ``dtype`` is the dtype of the merged weights: ``auto`` keeps the base checkpoint's own.
    Raises MergeError for unmergeable methods, full models and occupied destinations.
    """
    from . import peft_methods  # noqa: F401  registers our PEFT methods before the adapter loads
    from .infer import _pick_base, fine_tune_metadata
    from .loader import load_model, load_tokenizer, resolve_dtype, resolve_spec
    from .metadata import write_metadata

    lora, target = Path(lora_dir), Path(merged_dir)
    meta = fine_tune_metadata(lora_dir)
    if not (lora / "adapter_config.json").exists():
        raise MergeError(f"{lora_dir} holds no adapter (adapter_config.json): it is a full model already, "
                         "nothing to merge")
    reason = unmergeable_reason(lora, meta)
    name = meta.get("peft_type") or json.loads((lora / "adapter_config.json").read_text()).get("peft_type")
    if reason:
        raise MergeError(f"cannot merge the {name} adapter in {lora_dir}: {reason}{USE_INSTEAD}")
    _check_destination(target, lora, overwrite)
    if meta.get("quantization_bit"):
        logger.warning("the adapter was trained on a %s-bit quantized base; merging it into the full-precision "
                       "base weights instead (the merged model's outputs differ slightly from %s-bit base + adapter)",
                       meta["quantization_bit"], meta["quantization_bit"])

    spec, path = resolve_spec(model_type or meta.get("model_type"), _pick_base(model_name_or_path, meta),
                              meta.get("args", {}).get("trust_remote_code", False))
    base = load_model(path, spec, dtype="auto" if dtype == "auto" else resolve_dtype(dtype))
    if getattr(base.config, "quantization_config", None):
        logger.warning("the base checkpoint %s is quantized; dequantizing it to merge in full precision", path)
        base = base.dequantize()
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, lora_dir)
    try:
        merged = model.merge_and_unload()
    except (AttributeError, NotImplementedError) as e:
        raise MergeError(f"cannot merge the {name} adapter in {lora_dir}: {e}{USE_INSTEAD}") from e
    tokenizer = load_tokenizer(lora_dir if (lora / "tokenizer_config.json").exists() else path, spec)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # quantization_bit None: scripts load the merged weights as saved unless told otherwise.
        write_metadata(tmp, {**meta, "merged_from": str(lora), "base_model_path": path, "quantization_bit": None,
                             "trained_quantization_bit": meta.get("quantization_bit"),
                             "merged_dtype": str(next(merged.parameters()).dtype).replace("torch.", "")})
        _publish_modes(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("folded the adapter of %s into a copy of its base model %s (the base's own files are unchanged)",
                lora_dir, path)
    return target


def _publish_modes(folder: Path) -> None:
    """The usual modes under the umask: mkdtemp makes the folder 0700, some writers make files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
