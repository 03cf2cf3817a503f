"""ChatGLM-6B (v1) checkpoints -> our own ``ChatGLM6BForCausalLM`` (``modeling_chatglm6b``).

The legacy folder (config.json with ``model_type: chatglm``, ``position_encoding_2d``, ``inner_hidden_size``;
weights under ``transformer.*`` and ``lm_head.weight``) keeps its parameter names: our module uses the
published ones. Conversion maps the config fields, drops the rotary ``inv_freq`` buffers (the original
never loads them either: it recomputes them) and the output head, which the original ties to the input
embedding (``tie_word_embeddings`` absent = True).

ChatGLM2-6B / ChatGLM3-6B share ``model_type: chatglm`` but carry ``multi_query_attention`` /
``padded_vocab_size``; the detector leaves those to their own family.
"""

from __future__ import annotations

import logging

import torch

from . import modeling_chatglm6b, tokenizers  # importing the module registers chatglm6b with the Auto classes
from .convert import LegacyConversionError
from .registry import LegacyFamily, register_family

logger = logging.getLogger(__name__)

# Fields only ChatGLM2/3 configs have; ChatGLM-6B v1 has position_encoding_2d / inner_hidden_size.
_V2_FIELDS = ("multi_query_attention", "padded_vocab_size", "multi_query_group_num")


def detect(config: dict, files: set[str]) -> bool:
    return (config.get("model_type") == "chatglm"
            and ("position_encoding_2d" in config or "inner_hidden_size" in config)
            and not any(k in config for k in _V2_FIELDS))


def convert_config(legacy: dict):
    """Legacy config.json dict -> ``ChatGLM6BConfig``.

    Raises:
        LegacyConversionError: a layout the published code never had with these weights (no 2-D positions),
            P-tuning v2 prefixes, quantized weights, or a config without ``mask_token_id``/``gmask_token_id``
            (the first release, vocabulary 150528, whose code placed positions differently).
    """
    if not legacy.get("position_encoding_2d", True):
        raise LegacyConversionError("ChatGLM-6B with position_encoding_2d=false is not a published layout; "
                                    "only 2-D positions are implemented")
    if legacy.get("pre_seq_len"):
        raise LegacyConversionError(
            f"this ChatGLM-6B checkpoint carries a P-tuning v2 prefix (pre_seq_len={legacy['pre_seq_len']}); "
            "convert the base checkpoint (without pre_seq_len) and fine-tune it with a PEFT method instead")
    if legacy.get("quantization_bit"):
        raise LegacyConversionError(
            f"quantized ChatGLM-6B weights (quantization_bit={legacy['quantization_bit']}) cannot be converted; "
            "convert the float16 checkpoint (THUDM/chatglm-6b) and quantize when loading (bitsandbytes)")
    missing = [k for k in ("mask_token_id", "gmask_token_id", "bos_token_id", "eos_token_id") if k not in legacy]
    if missing:
        raise LegacyConversionError(
            f"ChatGLM-6B config.json lacks {missing}: this is the first release (vocabulary 150528), whose code "
            "placed positions differently; use the current THUDM/chatglm-6b revision (vocabulary 130528)")
    heads = legacy["num_attention_heads"]
    if legacy.get("hidden_size_per_attention_head") not in (None, legacy["hidden_size"] // heads):
        raise LegacyConversionError("hidden_size_per_attention_head differs from hidden_size / heads: "
                                    "not a published ChatGLM-6B layout")
    return modeling_chatglm6b.ChatGLM6BConfig(
        vocab_size=legacy["vocab_size"], hidden_size=legacy["hidden_size"],
        intermediate_size=legacy.get("inner_hidden_size") or 4 * legacy["hidden_size"],
        num_hidden_layers=legacy["num_layers"], num_attention_heads=heads,
        layer_norm_eps=legacy.get("layernorm_epsilon", 1e-5),
        max_position_embeddings=legacy.get("max_sequence_length", 2048),
        mask_token_id=legacy["mask_token_id"], gmask_token_id=legacy["gmask_token_id"],
        bos_token_id=legacy["bos_token_id"], eos_token_id=legacy["eos_token_id"],
        pad_token_id=legacy.get("pad_token_id", 3), use_cache=legacy.get("use_cache", True),
        tie_word_embeddings=legacy.get("tie_word_embeddings", True),
        dtype=legacy.get("torch_dtype") or legacy.get("dtype"),
        architectures=["ChatGLM6BForCausalLM"])


def convert_state_dict(state: dict[str, torch.Tensor], legacy: dict) -> dict[str, torch.Tensor]:
    """Same names; rotary buffers dropped; ``lm_head.weight`` dropped when tied (the embedding wins, as in
    the original's ``tie_weights``; a differing head is reported)."""
    out = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if legacy.get("tie_word_embeddings", True) and "lm_head.weight" in out:
        head = out.pop("lm_head.weight")
        embedding = out.get("transformer.word_embeddings.weight")
        if embedding is not None and not torch.equal(head, embedding):
            logger.warning("lm_head.weight differs from transformer.word_embeddings.weight; ChatGLM-6B ties them "
                           "and uses the embedding (as the original code does on load)")
    return out


FAMILY = register_family(LegacyFamily(
    name="chatglm",
    detect=detect,
    convert_config=convert_config,
    convert_state_dict=convert_state_dict,
    build_tokenizer=lambda folder, cfg: tokenizers.build("chatglm", folder, cfg),
    native_class="ChatGLM6BForCausalLM (alpaca_cot.legacy.modeling_chatglm6b, model_type chatglm6b)",
    checkpoints=("THUDM/chatglm-6b",),
    register=modeling_chatglm6b.register,
    notes="every sequence needs [gMASK] (or [MASK]) and <sop>: prompt [gMASK] <sop> response <eop>; "
          "LoRA target query_key_value (also dense, dense_h_to_4h, dense_4h_to_h)",
))
