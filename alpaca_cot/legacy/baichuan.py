"""Baichuan checkpoints: Baichuan-7B / Baichuan2-7B -> ``LlamaForCausalLM``; Baichuan-13B / Baichuan2-13B ->
our ``BaichuanAlibiForCausalLM`` (``modeling_baichuan_alibi``).

All four are LLaMA blocks with a fused ``W_pack`` ([q | k | v] stacked along the output rows); the 7B
models use rotary positions, the 13B ones ALiBi. Baichuan2 normalises the rows of its output head on the
fly (NormHead: ``F.normalize(lm_head.weight)``, L2 norm per vocabulary row, eps 1e-12); conversion folds
that into ``lm_head.weight``, so both targets have a plain linear head. ``W_pack`` is split into
``q_proj``/``k_proj``/``v_proj`` for every size, so LoRA targets (``q_proj,v_proj`` ...) are the same.

Which variant a folder holds is read from its config.json, by rules taken from the published configs:

- rotary (7B) vs ALiBi (13B): ``architectures: ["BaiChuanForCausalLM"]`` is Baichuan-7B (rotary); else
  ``hidden_size`` 4096 is 7B and 5120 is 13B (baichuan-inc's four releases);
- NormHead (v2) vs plain head (v1): ``vocab_size`` 125696 is Baichuan2, 64000 is Baichuan(1).

A config with other sizes (a resized or test checkpoint) falls back, with a warning, to: rotary when it
has ``max_position_embeddings`` (the 7B configs have it, the 13B ones only ``model_max_length``), else
ALiBi; and Baichuan2's NormHead. Override the guess by converting with an explicit variant:
``convert_checkpoint(src, dst, family=VARIANT_FAMILIES["baichuan-13b"])`` (names in ``VARIANTS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import modeling_baichuan_alibi, tokenizers  # importing the module registers baichuan_alibi
from .registry import LegacyFamily, register_family

logger = logging.getLogger(__name__)

_ARCHITECTURES = ("BaiChuanForCausalLM", "BaichuanForCausalLM")


@dataclass(frozen=True)
class Variant:
    name: str
    alibi: bool  # 13B: ALiBi; 7B: rotary
    norm_head: bool  # Baichuan2: normalised output head
    checkpoint: str  # a published checkpoint of the variant


VARIANTS = {v.name: v for v in (
    Variant("baichuan-7b", alibi=False, norm_head=False, checkpoint="baichuan-inc/Baichuan-7B"),
    Variant("baichuan2-7b", alibi=False, norm_head=True, checkpoint="baichuan-inc/Baichuan2-7B-Base"),
    Variant("baichuan-13b", alibi=True, norm_head=False, checkpoint="baichuan-inc/Baichuan-13B-Base"),
    Variant("baichuan2-13b", alibi=True, norm_head=True, checkpoint="baichuan-inc/Baichuan2-13B-Base"),
)}
CHECKPOINTS = ("baichuan-inc/Baichuan-7B", "baichuan-inc/Baichuan-13B-Base", "baichuan-inc/Baichuan-13B-Chat",
               "baichuan-inc/Baichuan2-7B-Base", "baichuan-inc/Baichuan2-7B-Chat",
               "baichuan-inc/Baichuan2-13B-Base", "baichuan-inc/Baichuan2-13B-Chat")


def detect(config: dict, files: set[str]) -> bool:
    return config.get("model_type") == "baichuan" or any(a in _ARCHITECTURES for a in config.get("architectures") or ())


def identify(legacy: dict, warn: bool = True) -> Variant:
    """The variant of a Baichuan config.json dict (rules in the module docstring); a guess is logged as a
    warning (``warn``)."""
    guesses = []
    if "BaiChuanForCausalLM" in (legacy.get("architectures") or ()):
        alibi = False
    elif legacy.get("hidden_size") in (4096, 5120):
        alibi = legacy["hidden_size"] == 5120
    else:
        alibi = "max_position_embeddings" not in legacy
        guesses.append(f"{'ALiBi (13B)' if alibi else 'rotary (7B)'} positions, because config.json "
                       f"{'lacks' if alibi else 'has'} max_position_embeddings")
    if legacy.get("vocab_size") in (64000, 125696):
        norm_head = legacy["vocab_size"] == 125696
    else:
        norm_head = True
        guesses.append("Baichuan2's normalised output head")
    variant = next(v for v in VARIANTS.values() if (v.alibi, v.norm_head) == (alibi, norm_head))
    if guesses and warn:
        logger.warning(
            "Baichuan config with unpublished sizes (hidden_size %s, vocab_size %s): converting as %s, assuming %s. "
            "If that is wrong, convert with convert_checkpoint(src, dst, family=baichuan.VARIANT_FAMILIES[NAME]), "
            "NAME in %s", legacy.get("hidden_size"), legacy.get("vocab_size"), variant.name, " and ".join(guesses),
            sorted(VARIANTS))
    return variant


def _config(legacy: dict, variant: Variant):
    """Legacy config.json dict -> ``LlamaConfig`` (7B) or ``BaichuanAlibiConfig`` (13B)."""
    if legacy.get("z_loss_weight"):
        logger.warning("z_loss_weight=%s is dropped: the converted model trains with plain cross entropy",
                       legacy["z_loss_weight"])
    common = dict(
        vocab_size=legacy["vocab_size"], hidden_size=legacy["hidden_size"],
        intermediate_size=legacy["intermediate_size"], num_hidden_layers=legacy["num_hidden_layers"],
        num_attention_heads=legacy["num_attention_heads"], hidden_act=legacy.get("hidden_act", "silu"),
        rms_norm_eps=legacy.get("rms_norm_eps", 1e-6), initializer_range=legacy.get("initializer_range", 0.02),
        max_position_embeddings=legacy.get("max_position_embeddings") or legacy.get("model_max_length") or 4096,
        pad_token_id=legacy.get("pad_token_id", 0), bos_token_id=legacy.get("bos_token_id", 1),
        eos_token_id=legacy.get("eos_token_id", 2), use_cache=legacy.get("use_cache", True),
        tie_word_embeddings=legacy.get("tie_word_embeddings", False),
        dtype=legacy.get("torch_dtype") or legacy.get("dtype"))
    if variant.alibi:
        return modeling_baichuan_alibi.BaichuanAlibiConfig(architectures=["BaichuanAlibiForCausalLM"], **common)
    from transformers import LlamaConfig

    return LlamaConfig(num_key_value_heads=legacy["num_attention_heads"], attention_bias=False, mlp_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       architectures=["LlamaForCausalLM"], **common)


def _state_dict(state: dict[str, torch.Tensor], legacy: dict, variant: Variant) -> dict[str, torch.Tensor]:
    """``W_pack`` split into q/k/v (rows [0, h), [h, 2h), [2h, 3h)); NormHead folded; rotary buffers dropped."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name.endswith("self_attn.W_pack.weight"):
            prefix = name[:-len("W_pack.weight")]
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{prefix}{part}.weight"] = chunk.clone()  # own storage: safetensors refuses shared views
        elif name == "lm_head.weight" and variant.norm_head:
            out[name] = F.normalize(tensor.float(), dim=-1).to(tensor.dtype)
        else:
            out[name] = tensor
    return out


def _family(variant: Variant | None) -> LegacyFamily:
    """The ``baichuan`` family: the variant read from each config (None), or a fixed one (an override)."""
    def pick(legacy, warn=True):
        return variant or identify(legacy, warn)

    if variant is None:
        native = "LlamaForCausalLM (7B) / BaichuanAlibiForCausalLM (13B, alpaca_cot.legacy.modeling_baichuan_alibi)"
    else:
        native = "BaichuanAlibiForCausalLM" if variant.alibi else "LlamaForCausalLM"
    return LegacyFamily(
        name="baichuan",
        detect=detect,
        convert_config=lambda legacy: _config(legacy, pick(legacy)),
        convert_state_dict=lambda state, legacy: _state_dict(state, legacy, pick(legacy, warn=False)),
        build_tokenizer=lambda folder, cfg: tokenizers.build("baichuan", folder, cfg),
        native_class=native,
        checkpoints=CHECKPOINTS if variant is None else (variant.checkpoint,),
        register=modeling_baichuan_alibi.register,
        notes="LoRA targets q_proj,v_proj (also k_proj, o_proj, gate_proj, up_proj, down_proj) for every size",
    )


FAMILY = register_family(_family(None))
# Explicit variants for convert_checkpoint(..., family=...) when a config's sizes do not tell (not registered:
# detection stays with FAMILY).
VARIANT_FAMILIES = {name: replace(_family(v), notes=f"{FAMILY.notes}; forced variant {name}")
                    for name, v in VARIANTS.items()}
