"""Load a registered family's tokenizer and model (optionally 4/8-bit quantized)."""

from __future__ import annotations

import logging

import torch

from .models import ModelSpec, detect_model_type, get_spec, resolve_model_path

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(name: str | None) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it, fp16 on other GPUs and fp32 on the CPU."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_spec(model_type: str | None, model_name_or_path: str | None) -> tuple[ModelSpec, str]:
    """The family spec and the local path / Hub id of the checkpoint to load."""
    if model_type:
        spec = get_spec(model_type)
        return spec, resolve_model_path(model_name_or_path, spec)
    path = resolve_model_path(model_name_or_path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot detect": say so
        raise ValueError(f"cannot read the config of {path!r} to detect its family ({e}); "
                         "pass --model_type") from e
    return get_spec(detect_model_type(config)), path


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
               dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """Load the checkpoint with the family's Auto class; quantized with bitsandbytes when asked."""
    import transformers

    cls = getattr(transformers, spec.model_class)
    kwargs = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    quant = quantization_config(quantization_bit, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(path, **kwargs)
