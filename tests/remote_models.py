"""Tiny local stand-ins for the model families whose real checkpoints need ``trust_remote_code=True``.

Each family's modeling code lives in ``tests/fixtures/remote_code/<family>/`` under the file and
class names of the real checkpoint, with the real module names (LoRA target modules depend on
them). ``build_remote_model`` copies that code into a folder, writes a ``config.json`` whose
``auto_map`` points at it, and saves random weights, so the folder loads offline with::

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)   # AutoModel for chatglm

The fixtures keep no KV cache: generation re-reads the whole sequence at each step.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "remote_code"

# Tiny sizes shared by every family: 2 layers, hidden 32, 4 heads of 8, feed-forward 64.
LAYERS, HIDDEN, HEADS, FFN = 2, 32, 4, 64


@dataclass(frozen=True)
class RemoteFamily:
    """One remote-code family: its real config.json shape and what tests may expect of it."""

    model_type: str                # config.json "model_type" (both ChatGLM generations say "chatglm")
    auto_map: dict[str, str]       # as in the real config.json: Auto class -> "module.Class"
    load_with: str                 # the Auto class the family is loaded with (a key of auto_map)
    vocab_key: str                 # config field holding the vocabulary size
    config: dict                   # tiny sizes, in the real config's field names
    lora_targets: tuple[str, ...]  # the family's default LoRA target modules
    module_names: tuple[str, ...]  # names (layer 0) that must exist in the loaded model


def _auto_map(config_class: str, model_class: str, *auto_classes: str) -> dict[str, str]:
    return {"AutoConfig": config_class, **{name: model_class for name in auto_classes}}


REMOTE_SPECS: dict[str, RemoteFamily] = {
    "chatglm": RemoteFamily(  # THUDM/chatglm-6b
        model_type="chatglm",
        auto_map=_auto_map("configuration_chatglm.ChatGLMConfig", "modeling_chatglm.ChatGLMForConditionalGeneration",
                           "AutoModel", "AutoModelForSeq2SeqLM"),
        load_with="AutoModel",
        vocab_key="vocab_size",
        config=dict(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, inner_hidden_size=FFN),
        lora_targets=("query_key_value",),
        module_names=(
            "transformer.word_embeddings", "transformer.layers.0.input_layernorm",
            "transformer.layers.0.attention.query_key_value", "transformer.layers.0.attention.dense",
            "transformer.layers.0.post_attention_layernorm", "transformer.layers.0.mlp.dense_h_to_4h",
            "transformer.layers.0.mlp.dense_4h_to_h", "transformer.final_layernorm", "lm_head")),
    "chatglm2": RemoteFamily(  # THUDM/chatglm2-6b
        model_type="chatglm",
        auto_map=_auto_map("configuration_chatglm.ChatGLMConfig", "modeling_chatglm.ChatGLMForConditionalGeneration",
                           "AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM"),
        load_with="AutoModelForCausalLM",
        vocab_key="padded_vocab_size",  # the real config has no vocab_size
        config=dict(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, kv_channels=HIDDEN // HEADS,
                    ffn_hidden_size=FFN, multi_query_attention=True, multi_query_group_num=2),
        lora_targets=("query_key_value",),
        module_names=(
            "transformer.embedding.word_embeddings", "transformer.encoder.layers.0.input_layernorm",
            "transformer.encoder.layers.0.self_attention.query_key_value",
            "transformer.encoder.layers.0.self_attention.dense",
            "transformer.encoder.layers.0.post_attention_layernorm", "transformer.encoder.layers.0.mlp.dense_h_to_4h",
            "transformer.encoder.layers.0.mlp.dense_4h_to_h", "transformer.encoder.final_layernorm",
            "transformer.output_layer")),
    "moss": RemoteFamily(  # fnlp/moss-moon-003-sft
        model_type="moss",
        auto_map={**_auto_map("configuration_moss.MossConfig", "modeling_moss.MossForCausalLM", "AutoModelForCausalLM"),
                  "AutoModel": "modeling_moss.MossModel"},
        load_with="AutoModelForCausalLM",
        vocab_key="vocab_size",
        config=dict(n_layer=LAYERS, n_embd=HIDDEN, n_head=HEADS, n_inner=FFN, rotary_dim=4),
        lora_targets=("qkv_proj",),
        module_names=(
            "transformer.wte", "transformer.h.0.ln_1", "transformer.h.0.attn.qkv_proj", "transformer.h.0.attn.out_proj",
            "transformer.h.0.mlp.fc_in", "transformer.h.0.mlp.fc_out", "transformer.ln_f", "lm_head")),
    "baichuan": RemoteFamily(  # baichuan-inc/Baichuan-7B, Baichuan2
        model_type="baichuan",
        auto_map=_auto_map("configuration_baichuan.BaichuanConfig", "modeling_baichuan.BaichuanForCausalLM",
                           "AutoModelForCausalLM"),
        load_with="AutoModelForCausalLM",
        vocab_key="vocab_size",
        config=dict(num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN),
        lora_targets=("W_pack",),
        module_names=(
            "model.embed_tokens", "model.layers.0.self_attn.W_pack", "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
            "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm", "lm_head")),
    "internlm": RemoteFamily(  # internlm/internlm-7b
        model_type="internlm",
        auto_map=_auto_map("configuration_internlm.InternLMConfig", "modeling_internlm.InternLMForCausalLM",
                           "AutoModel", "AutoModelForCausalLM"),
        load_with="AutoModelForCausalLM",
        vocab_key="vocab_size",
        config=dict(num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN),
        lora_targets=("q_proj", "v_proj"),
        module_names=(
            "model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
            "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.layers.0.input_layernorm",
            "model.layers.0.post_attention_layernorm", "model.norm", "lm_head")),
}
REMOTE_FAMILIES = tuple(REMOTE_SPECS)  # ("chatglm", "chatglm2", "moss", "baichuan", "internlm")

DEFAULT_VOCAB = 1024                   # without a tokenizer
DEFAULT_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def auto_class(family: str):
    """The transformers Auto class a family's checkpoint is loaded with (AutoModel for chatglm)."""
    import transformers

    return getattr(transformers, REMOTE_SPECS[family].load_with)


def build_remote_model(family: str, out_dir, tokenizer=None, vocab_size=None, seed=0) -> str:
    """Write a tiny random ``family`` checkpoint that loads with ``trust_remote_code=True``.

    Copies the family's fixture code into ``out_dir``, writes ``config.json`` (``auto_map``, tiny
    sizes, vocabulary = ``vocab_size`` or else ``len(tokenizer)`` or else 1024, special token ids
    from the tokenizer), saves random weights drawn with ``seed`` as ``model.safetensors`` and the
    tokenizer if given. The global torch RNG is left untouched. Returns ``str(out_dir)``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    spec = REMOTE_SPECS[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for source in (FIXTURES / family).glob("*.py"):
        shutil.copy(source, out / source.name)

    if vocab_size is None:
        vocab_size = len(tokenizer) if tokenizer is not None else DEFAULT_VOCAB
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < len(tokenizer) {len(tokenizer)}")
    token_ids = dict(DEFAULT_TOKEN_IDS)
    if tokenizer is not None:
        token_ids = {key: getattr(tokenizer, key) for key in token_ids}
        if token_ids["pad_token_id"] is None:  # a tokenizer without a pad token: pad with eos
            token_ids["pad_token_id"] = token_ids["eos_token_id"]
    config = {
        "model_type": spec.model_type,
        "architectures": [spec.auto_map[spec.load_with].split(".")[1]],
        "auto_map": spec.auto_map,
        **spec.config,
        spec.vocab_key: vocab_size,
        **token_ids,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    loaded_config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_class(family).from_config(loaded_config, trust_remote_code=True)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return str(out)
