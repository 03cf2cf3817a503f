"""InternLM v1 checkpoints (``model_type: internlm``) converted to ``LlamaForCausalLM``.

InternLM v1's decoder is LLaMA's: RMSNorm, rotary over the whole head with LLaMA's half-split
pairing, a SiLU-gated MLP, the same parameter names. Two differences, both carried by the config:

- the q/k/v/o projections have biases when ``bias`` is true (internlm-7b, internlm-chat-7b) and
  none when it is false (internlm-20b, internlm-chat-20b); LLaMA's ``attention_bias`` does the same
  for all four projections;
- the rotary base comes from ``rotary: {"base", "type", "scaling_factor"}`` (later revisions; type
  ``dynamic`` is dynamic NTK scaling past ``max_position_embeddings``, the formula LLaMA's
  ``rope_type: dynamic`` uses) and is 10000 without it; the code ignores ``rope_theta``,
  ``rope_scaling`` and ``num_key_value_heads`` (k/v always have ``num_attention_heads`` heads).

Source: the published modeling_internlm.py of internlm/internlm-7b and internlm/internlm-20b
(InternLMAttention, InternLMRotaryEmbedding, InternLMDynamicNTKScalingRotaryEmbedding).
Known difference: past ``max_position_embeddings`` with a cache, the original re-rotates the cached
keys with the new dynamic base at every step; LLaMA keeps them as they were rotated.
"""

from __future__ import annotations

import logging

import torch

from . import tokenizers
from .convert import LegacyConversionError
from .registry import LegacyFamily, register_family

logger = logging.getLogger(__name__)

DEFAULT_ROTARY_BASE = 10000.0  # InternLMRotaryEmbedding's default when the config has no `rotary`
# Keys some checkpoints saved for rotary buffers the native class recomputes.
ROTARY_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def detect(config: dict, files) -> bool:
    return config.get("model_type") == "internlm"


def _rope_parameters(config: dict) -> dict:
    rotary = config.get("rotary") or {}
    base = float(rotary.get("base", DEFAULT_ROTARY_BASE))
    kind = rotary.get("type", "origin")
    theta = config.get("rope_theta")
    if theta is not None and float(theta) != base:
        logger.warning("InternLM config: rope_theta=%s is ignored by the InternLM v1 code; using its rotary base %s",
                       theta, base)
    if kind == "origin":
        return {"rope_type": "default", "rope_theta": base}
    if kind == "dynamic":
        return {"rope_type": "dynamic", "rope_theta": base, "factor": float(rotary.get("scaling_factor", 1.0))}
    raise LegacyConversionError(f"InternLM config: rotary type {kind!r} is unknown (the code knows 'origin', "
                                "'dynamic')")


def convert_config(config: dict):
    """The ``LlamaConfig`` of an InternLM v1 config.json dict.

    Raises:
        LegacyConversionError: a field the architecture needs is missing, or the rotary type is unknown.
    """
    from transformers import LlamaConfig

    missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                           "vocab_size") if k not in config]
    if missing:
        raise LegacyConversionError(f"InternLM config.json lacks {missing}")
    heads = config["num_attention_heads"]
    if config.get("num_key_value_heads", heads) != heads:
        logger.warning("InternLM config: num_key_value_heads=%s is ignored by the InternLM v1 code (k/v have %s "
                       "heads)", config["num_key_value_heads"], heads)
    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=heads, hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope_parameters=_rope_parameters(config),
        attention_bias=bool(config.get("bias", True)), mlp_bias=False,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id", 1), eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 0), initializer_range=config.get("initializer_range", 0.02),
        dtype=config.get("torch_dtype"))


def convert_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The names are LLaMA's already; only saved rotary buffers are dropped."""
    return {k: v for k, v in state.items() if not k.endswith(ROTARY_BUFFERS)}


register_family(LegacyFamily(
    name="internlm", detect=detect, convert_config=convert_config, convert_state_dict=convert_state_dict,
    build_tokenizer=lambda folder, cfg: tokenizers.build("internlm", folder, cfg),
    native_class="LlamaForCausalLM",
    checkpoints=("internlm/internlm-7b", "internlm/internlm-chat-7b", "internlm/internlm-chat-7b-8k",
                 "internlm/internlm-20b", "internlm/internlm-chat-20b"),
    notes="LLaMA with q/k/v/o biases when config `bias` is true; rotary base from config `rotary`"))
