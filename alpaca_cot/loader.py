"""Load a registered family's tokenizer and model (optionally 4/8-bit quantized)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from .models import MODEL_REGISTRY, ModelSpec, detect_model_type, get_spec, resolve_model_path

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); elsewhere bf16 is slow."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers; without them, keep fp32
        return False


def resolve_dtype(name: str | None, training: bool = False) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it, fp16 on other GPUs and fp32 on the CPU.

    For training on a CPU with bf16 matrix units, ``auto`` is bf16: the frozen base in bf16 under
    bf16 autocast, trainable weights and optimizer state in fp32 (``upcast_trainable``).
    Measured on the embedded model, LoRA q,v, packed micro-batches of 4, 2 shared cores: a bare
    training step on bench512 samples takes 0.63x the time of fp32 (0.50-0.75 over 12 paired
    steps); through the Trainer (``bench/train_throughput.py --arms B B32``, 2 pairs each) bf16
    trains 1.38x the tokens/s on bench512 (1.22-1.54; loss per step +0.003, 0.16%) and 1.19x on
    the short demo records (1.14-1.24; loss per step +0.011, 0.7%), peak RSS 0.80x / 0.95x.
    """
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if training and cpu_has_bf16_matmul() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_spec(model_type: str | None, model_name_or_path: str | None,
                 trust_remote_code: bool = False) -> tuple[ModelSpec, str]:
    """The family spec and the local path / Hub id of the checkpoint to load.

    A checkpoint of one of the original's older families in its published (legacy) layout is
    converted once to a native folder (``alpaca_cot.legacy``), and that folder is returned. Without
    ``model_type`` the family is detected: from a converted folder's record, a fine-tune's or merged
    model's ``alpaca_cot.json``, or the config's ``model_type``. ``trust_remote_code`` lets
    checkpoints with their own modeling code (``auto_map``) run it; no registry family needs it.
    """
    spec = get_spec(model_type) if model_type else None
    path = native_checkpoint(resolve_model_path(model_name_or_path, spec), model_type)
    if spec is None:
        spec = get_spec(_detect_family(path, trust_remote_code))
    if not trust_remote_code:
        _refuse_custom_code(path)
    if trust_remote_code and not spec.trust_remote_code:
        spec = replace(spec, trust_remote_code=True)
    return spec, path


def native_checkpoint(path: str, model_type: str | None = None) -> str:
    """``path`` itself, or the cached native conversion of the legacy checkpoint it names (a local
    folder, or a Hub id whose config has a model_type transformers does not know: fetched first).
    ``model_type``, when it names a legacy family, overrides detection (e.g. chatglm3)."""
    from .legacy import LEGACY_FAMILIES
    from .legacy.convert import cached_conversion

    family = model_type if model_type in LEGACY_FAMILIES else None
    if os.path.isdir(path):
        converted = cached_conversion(path, family)
        return str(converted) if converted is not None else path
    try:  # a Hub id: only custom (remote-code) model types can be legacy checkpoints
        from huggingface_hub import hf_hub_download, snapshot_download
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        with open(hf_hub_download(path, "config.json"), encoding="utf-8") as f:
            if json.load(f).get("model_type") in CONFIG_MAPPING:
                return path
        local = snapshot_download(path, allow_patterns=["*.json", "*.model", "*.txt", "*.safetensors", "*.bin",
                                                        "*.py", "*.tiktoken"])
    except Exception as e:  # noqa: BLE001 - offline or not on the Hub: loading reports it as usual
        logger.debug("cannot inspect %s on the Hub (%s)", path, e)
        return path
    converted = cached_conversion(local, family)
    return str(converted) if converted is not None else local


def _refuse_custom_code(path: str) -> None:
    """Refuse a local checkpoint that can only load by running its own code (``auto_map`` for a model
    type transformers does not know), unless --trust_remote_code was given."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .legacy.convert import read_config

    config = read_config(path) if os.path.isdir(path) else None
    if config and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        files = sorted({v.split(".")[0] + ".py" for v in config["auto_map"].values() if isinstance(v, str)})
        raise ValueError(f"{path} ships its own modeling code ({', '.join(files)}, model_type "
                         f"{config.get('model_type')!r}) and no registry family covers it: read that code, then pass "
                         "--trust_remote_code to run it (it runs with your permissions)")


def _detect_family(path: str, trust_remote_code: bool) -> str:
    from .legacy.convert import conversion_info, read_config
    from .metadata import METADATA_FILE

    if os.path.isdir(path):
        info = conversion_info(path)
        if info:
            return info["family"]
        meta = Path(path) / METADATA_FILE  # a merged model or a full fine-tune
        if meta.is_file():
            model_type = json.loads(meta.read_text(encoding="utf-8")).get("model_type")
            if model_type in MODEL_REGISTRY:
                return model_type
        config = read_config(path)
        if config is None:
            raise ValueError(f"{path} has no config.json: not a model checkpoint folder")
        return detect_model_type(config)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot detect": say so
        raise ValueError(f"cannot read the config of {path!r} to detect its family ({e}); pass --model_type "
                         "(or --trust_remote_code for a checkpoint that needs its own code)") from e
    return detect_model_type(config)


def load_tokenizer(path: str, spec: ModelSpec):
    """The checkpoint's tokenizer with a pad token (the family's policy when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {path} has no EOS token; responses could never be ended")
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.unk_token if spec.pad_token == "unk" and tokenizer.unk_token else tokenizer.eos_token
        tokenizer.pad_token = fallback
        logger.info("tokenizer has no pad token; using %r (labels never depend on it)", fallback)
    return tokenizer


def quantization_config(bits: int | None, compute_dtype: torch.dtype):
    if not bits:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"--quantization_bit must be 4 or 8, got {bits}")


def load_model(path: str, spec: ModelSpec, *, quantization_bit: int | None = None,
               dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
               auto_class: str | None = None, **model_kwargs):
    """Load the checkpoint with the family's Auto class; quantized with bitsandbytes when asked.

    ``auto_class`` replaces the family's class (e.g. ``AutoModelForSequenceClassification`` for a
    reward model, with ``num_labels=1`` among ``model_kwargs``).
    """
    import transformers

    cls = getattr(transformers, auto_class or spec.model_class)
    kwargs = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code, **model_kwargs}
    quant = quantization_config(quantization_bit, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(path, **kwargs)


def upcast_trainable(model) -> int:
    """Keep trainable weights (and so their gradients and optimizer state) in fp32 over a half-precision base."""
    count = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            count += 1
    return count
