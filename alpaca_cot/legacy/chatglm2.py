"""ChatGLM2-6B and ChatGLM3-6B checkpoints (``model_type: chatglm``, multi-query layout) as ``GlmForCausalLM``.

Both generations share one architecture (transformers' GLM-4 class has the same block):

- ``query_key_value`` = [all query heads | K of the ``multi_query_group_num`` groups | V of the groups]
  (weight and bias) -> ``q_proj``, ``k_proj``, ``v_proj``; KV heads = ``multi_query_group_num``;
- rotary on the first half of each head (``kv_channels / 2`` dims), adjacent pairs (x0,x1),(x2,x3)...;
  GLM's ``partial_rotary_factor = 0.5`` with its interleaved pairing is the same rotation;
- ``dense_h_to_4h`` = [gate | up] of a SiLU-gated MLP -> ``gate_up_proj`` (GLM chunks it the same way);
- RMSNorm (``layernorm_epsilon``), a final norm (``post_layer_norm``), an untied ``output_layer``.

The generations differ in tokenizer and chat template, and in what ``rope_ratio`` (the long-context
variants) means: ChatGLM2's code divides the positions by it (chatglm2-6b-32k: linear position
interpolation), ChatGLM3's multiplies the rotary base by it (chatglm3-6b-32k: base 10000 * 50).
``chatglm_generation`` tells them apart from the folder's files.

Source: modeling_chatglm.py / tokenization_chatglm.py of THUDM/chatglm2-6b, chatglm2-6b-32k,
chatglm3-6b, chatglm3-6b-base, chatglm3-6b-32k (RotaryEmbedding, apply_rotary_pos_emb, SelfAttention,
MLP, SPTokenizer's special tokens).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from . import tokenizers
from .convert import LegacyConversionError
from .registry import LegacyFamily, register_family

logger = logging.getLogger(__name__)

ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|observation|>")  # ChatGLM3's tokenizer adds these; ChatGLM2's has none
GLM4_VOCAB = 100_000  # GLM-4 (glm-4-9b, same config layout, tiktoken vocabulary of 151552) is not ChatGLM2/3
RENAMES = (  # legacy name part -> native name part, applied in order
    ("transformer.embedding.word_embeddings.", "model.embed_tokens."),
    ("transformer.encoder.final_layernorm.", "model.norm."),
    ("transformer.encoder.layers.", "model.layers."),
    ("transformer.output_layer.", "lm_head."),
    (".self_attention.dense.", ".self_attn.o_proj."),
    (".mlp.dense_h_to_4h.", ".mlp.gate_up_proj."),
    (".mlp.dense_4h_to_h.", ".mlp.down_proj."),
)


def is_chatglm2_layout(config: dict) -> bool:
    """ChatGLM2/3's config: ``model_type: chatglm`` with the multi-query fields (ChatGLM-6B v1 has
    ``position_encoding_2d``/``inner_hidden_size`` instead), and not GLM-4's vocabulary."""
    return (config.get("model_type") == "chatglm" and "padded_vocab_size" in config
            and "multi_query_attention" in config and "position_encoding_2d" not in config
            and int(config["padded_vocab_size"]) < GLM4_VOCAB)


UNDECIDED = ("no file says whether this is ChatGLM2 or ChatGLM3 (no tokenization_chatglm.py, no role tokens in "
             "tokenizer_config.json, no model name in config.json): it is taken as ChatGLM2 unless --model_type "
             "chatglm3 (convert_checkpoint(..., family='chatglm3')) says it is ChatGLM3")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def chatglm_generation(config: dict, files: Mapping[str, Path]) -> tuple[str, str]:
    """``("chatglm2" | "chatglm3", why)`` for a ChatGLM2/3-layout folder, from the first thing that decides:

    1. ``tokenization_chatglm.py`` (every published folder has it): ChatGLM3's defines the role tokens
       ``<|user|>``, ``<|assistant|>``, ``<|observation|>``; ChatGLM2's does not;
    2. ``tokenizer_config.json`` naming a role token (ChatGLM3's chat template) or its ``name_or_path``;
    3. config.json ``_name_or_path`` (THUDM/chatglm2-6b, THUDM/chatglm3-6b, ...);
    4. nothing decides: ChatGLM2, and the reason says so (the caller logs a warning).
    """
    if "tokenization_chatglm.py" in files:
        code = _read_text(files["tokenization_chatglm.py"])
        if any(token in code for token in ROLE_TOKENS):
            return "chatglm3", "tokenization_chatglm.py defines ChatGLM3's role tokens"
        return "chatglm2", "tokenization_chatglm.py has no role tokens (ChatGLM2)"
    names = []
    if "tokenizer_config.json" in files:
        text = _read_text(files["tokenizer_config.json"])
        if any(token in text for token in ROLE_TOKENS):
            return "chatglm3", "tokenizer_config.json names ChatGLM3's role tokens"
        try:
            names.append(("tokenizer_config.json name_or_path", str(json.loads(text).get("name_or_path", ""))))
        except (json.JSONDecodeError, AttributeError):
            pass
    names.append(("config.json _name_or_path", str(config.get("_name_or_path", ""))))
    for where, name in names:
        found = re.search(r"chatglm-?([23])", name.lower())
        if found:
            return f"chatglm{found.group(1)}", f"{where} is {name!r}"
    return "chatglm2", UNDECIDED


def detect(generation: str, config: dict, files: Mapping[str, Path]) -> bool:
    if not is_chatglm2_layout(config):
        return False
    found, why = chatglm_generation(config, files)
    if found == generation and why is UNDECIDED:
        logger.warning("ChatGLM checkpoint: %s", why)  # logged once per detection: only this detector says yes
    return found == generation


def _rope_parameters(generation: str, config: dict) -> dict:
    ratio = float(config.get("rope_ratio", 1) or 1)
    if ratio == 1:
        return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if generation == "chatglm2":  # positions / rope_ratio: linear interpolation (chatglm2-6b-32k)
        return {"rope_type": "linear", "factor": ratio, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    return {"rope_type": "default", "rope_theta": 10000.0 * ratio, "partial_rotary_factor": 0.5}  # base * rope_ratio


def convert_config(generation: str, config: dict):
    """The ``GlmConfig`` of a ChatGLM2/3 config.json dict.

    Raises:
        LegacyConversionError: not the ChatGLM2/3 layout, a quantized release (``quantization_bit``), a
            P-tuning prefix (``pre_seq_len``), or a block variant no published checkpoint uses.
    """
    from transformers import GlmConfig

    if not is_chatglm2_layout(config):
        raise LegacyConversionError(
            f"not a ChatGLM2/ChatGLM3 config (model_type {config.get('model_type')!r}; ChatGLM-6B v1 has "
            f"position_encoding_2d, GLM-4 a {GLM4_VOCAB}+ vocabulary): it cannot be converted as {generation}")
    if config.get("quantization_bit"):
        raise LegacyConversionError(
            f"{generation} checkpoint is quantized (quantization_bit={config['quantization_bit']}, e.g. "
            f"chatglm2-6b-int4): its packed int weights cannot be converted to GlmForCausalLM. Use the "
            f"unquantized release and quantize at load time instead (--quantization_bit 4 or 8)")
    if config.get("pre_seq_len"):
        raise LegacyConversionError(
            f"{generation} config has a P-tuning v2 prefix (pre_seq_len={config['pre_seq_len']}); convert the "
            f"base checkpoint without it (a prefix encoder has no place in GlmForCausalLM)")
    unsupported = {k: config.get(k) for k, ok in (("rmsnorm", True), ("post_layer_norm", True),
                                                   ("apply_residual_connection_post_layernorm", False),
                                                   ("add_bias_linear", False)) if config.get(k, ok) != ok}
    if unsupported:
        raise LegacyConversionError(f"{generation} config has a block variant GlmForCausalLM lacks: {unsupported}")
    missing = [k for k in ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
                           "multi_query_group_num") if k not in config]
    if missing:
        raise LegacyConversionError(f"{generation} config.json lacks {missing}")
    if config.get("hidden_dropout"):  # GLM's block has no dropout on the residual branches
        logger.warning("%s config: hidden_dropout=%s is not applied by GlmForCausalLM (inference is unaffected)",
                       generation, config["hidden_dropout"])
    heads = config["num_attention_heads"]
    return GlmConfig(
        vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config["multi_query_group_num"] if config.get("multi_query_attention") else heads,
        head_dim=config.get("kv_channels") or config["hidden_size"] // heads, hidden_act="silu",
        attention_dropout=config.get("attention_dropout", 0.0),
        max_position_embeddings=config.get("seq_length", 32768), rms_norm_eps=config.get("layernorm_epsilon", 1e-5),
        rope_parameters=_rope_parameters(generation, config), attention_bias=bool(config.get("add_qkv_bias", True)),
        tie_word_embeddings=False, pad_token_id=config.get("pad_token_id", 0),
        eos_token_id=config.get("eos_token_id", 2), bos_token_id=config.get("bos_token_id"),
        dtype=config.get("torch_dtype"))


def _split_qkv(name: str, native_name: str, tensor: torch.Tensor, config: dict) -> dict[str, torch.Tensor]:
    heads = config["num_attention_heads"]
    head_dim = config.get("kv_channels") or config["hidden_size"] // heads
    groups = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    if tensor.shape[0] != sum(sizes):
        raise LegacyConversionError(f"{name}: shape {tuple(tensor.shape)}, expected {sum(sizes)} rows "
                                    f"(query {sizes[0]} + key {sizes[1]} + value {sizes[2]})")
    prefix, suffix = native_name.rsplit(".self_attention.query_key_value.", 1)
    # clone: views into one storage would be refused by safetensors (and keep the fused tensor alive)
    return {f"{prefix}.self_attn.{proj}.{suffix}": part.clone()
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(sizes, dim=0))}


def convert_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Rename to GLM's names and split the fused ``query_key_value``; the rotary ``inv_freq`` buffer
    (the original recomputes the angles anyway) is dropped. Quantized and P-tuning tensors are refused."""
    odd = sorted(k for k in state if k.endswith(".weight_scale") or ".prefix_encoder." in k)
    if odd:
        raise LegacyConversionError(f"ChatGLM2/3 checkpoint has quantized or P-tuning tensors {odd[:3]}; convert "
                                    f"the unquantized base checkpoint")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith("rotary_pos_emb.inv_freq"):
            continue
        native_name = functools.reduce(lambda n, r: n.replace(*r), RENAMES, name)
        if ".self_attention.query_key_value." in name:
            out.update(_split_qkv(name, native_name, tensor, config))
        else:
            out[native_name] = tensor
    return out


GLM_NOTES = ("query_key_value split into q/k/v (KV heads = multi_query_group_num), rotary on half of each head "
             "(partial_rotary_factor 0.5, adjacent pairs), dense_h_to_4h = gate_up_proj")
register_family(LegacyFamily(
    name="chatglm2", detect=functools.partial(detect, "chatglm2"),
    convert_config=functools.partial(convert_config, "chatglm2"), convert_state_dict=convert_state_dict,
    build_tokenizer=lambda folder, cfg: tokenizers.build("chatglm2", folder, cfg), native_class="GlmForCausalLM",
    checkpoints=("THUDM/chatglm2-6b", "THUDM/chatglm2-6b-32k"), notes=GLM_NOTES))
register_family(LegacyFamily(
    name="chatglm3", detect=functools.partial(detect, "chatglm3"),
    convert_config=functools.partial(convert_config, "chatglm3"), convert_state_dict=convert_state_dict,
    build_tokenizer=lambda folder, cfg: tokenizers.build("chatglm3", folder, cfg), native_class="GlmForCausalLM",
    checkpoints=("THUDM/chatglm3-6b", "THUDM/chatglm3-6b-base", "THUDM/chatglm3-6b-32k"), notes=GLM_NOTES))
