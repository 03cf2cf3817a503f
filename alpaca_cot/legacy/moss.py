"""MOSS checkpoints (``model_type: moss``, moss-moon-003-*) converted to ``CodeGenForCausalLM``.

MOSS's modeling code is CodeGen's (GPT-J block: one LayerNorm, attention and MLP in parallel), so
the parameter names and layouts carry over unchanged:

- ``qkv_proj`` is cut into ``mp_num = 4`` model-parallel shards, each holding query, VALUE, key
  for ``n_head / 4`` heads; transformers' ``CodeGenAttention`` reads the same layout;
- rotary on the first ``rotary_dim`` dims of each head, adjacent pairs (GPT-J's rotate_every_two),
  the sin/cos table of ``create_sinusoidal_positions`` over ``n_positions``;
- ``lm_head`` has a bias; ``CodeGenForCausalLM``'s too.

What changes: the persistent ``attn.causal_mask`` / ``attn.masked_bias`` buffers are dropped (the
native class masks by itself), and the config keys MOSS added for GPTQ (``wbits``, ``groupsize``)
are read to refuse the quantized int4/int8 releases, whose ``qweight``/``qzeros``/``scales``
tensors no transformers class reads.

Source: OpenLMLab/MOSS ``models/modeling_moss.py`` and ``configuration_moss.py`` (moss-moon-003).
"""

from __future__ import annotations

import torch

from . import tokenizers
from .convert import LegacyConversionError
from .registry import LegacyFamily, register_family

DROPPED_BUFFERS = (".attn.causal_mask", ".attn.masked_bias")
GPTQ_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")
UNQUANTIZED = ("fnlp/moss-moon-003-base", "fnlp/moss-moon-003-sft", "fnlp/moss-moon-003-sft-plugin")


def detect(config: dict, files) -> bool:
    return config.get("model_type") == "moss"


def _refuse_quantized(what: str) -> None:
    raise LegacyConversionError(
        f"MOSS checkpoint is GPTQ-quantized ({what}): its packed int weights cannot be converted to "
        f"CodeGenForCausalLM. Use an unquantized release ({', '.join(UNQUANTIZED)}) and quantize at load "
        f"time instead (--quantization_bit 4 or 8)")


def convert_config(config: dict):
    """The ``CodeGenConfig`` of a MOSS config.json dict.

    Raises:
        LegacyConversionError: the config is of a quantized release (``wbits`` < 32) or lacks a size.
    """
    from transformers import CodeGenConfig

    wbits = config.get("wbits", 32)  # the MOSS code defaults to 32 (not quantized) when absent
    if int(wbits) < 32:
        _refuse_quantized(f"wbits={wbits}, groupsize={config.get('groupsize')}")
    missing = [k for k in ("n_embd", "n_head", "n_layer", "vocab_size", "rotary_dim") if k not in config]
    if missing:
        raise LegacyConversionError(f"MOSS config.json lacks {missing}")
    if config["n_embd"] % config["n_head"] or config["n_embd"] % 4:
        raise LegacyConversionError(f"MOSS config: n_embd={config['n_embd']} must divide into n_head="
                                    f"{config['n_head']} heads and into the 4 model-parallel shards of qkv_proj")
    return CodeGenConfig(
        vocab_size=config["vocab_size"], n_positions=config.get("n_positions", 2048),
        n_ctx=config.get("n_ctx", 2048), n_embd=config["n_embd"], n_layer=config["n_layer"],
        n_head=config["n_head"], rotary_dim=config["rotary_dim"], n_inner=config.get("n_inner"),
        activation_function=config.get("activation_function", "gelu_new"),
        resid_pdrop=config.get("resid_pdrop", 0.0), embd_pdrop=config.get("embd_pdrop", 0.0),
        attn_pdrop=config.get("attn_pdrop", 0.0), layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        initializer_range=config.get("initializer_range", 0.02), use_cache=config.get("use_cache", True),
        bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"), tie_word_embeddings=False, dtype=config.get("torch_dtype"))


def convert_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The names are CodeGen's already; the causal-mask buffers are dropped, GPTQ tensors refused."""
    packed = sorted(k for k in state if k.endswith(GPTQ_SUFFIXES))
    if packed:
        _refuse_quantized(f"tensors {packed[:3]}")
    return {k: v for k, v in state.items() if not k.endswith(DROPPED_BUFFERS)}


register_family(LegacyFamily(
    name="moss", detect=detect, convert_config=convert_config, convert_state_dict=convert_state_dict,
    build_tokenizer=lambda folder, cfg: tokenizers.build("moss", folder, cfg),
    native_class="CodeGenForCausalLM", checkpoints=UNQUANTIZED,
    notes="CodeGen layout as is (qkv_proj in 4 shards of query|value|key); causal_mask buffers dropped"))
