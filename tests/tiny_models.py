"""Tiny random models of every registry family, built from configs, with the real tokenizer.

Native families use their transformers config classes; the original's older families are
checkpoints in their published (legacy) layout with a small vocabulary of their own
(``tests/legacy_checkpoints.py``), converted by the scripts like a user's download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from legacy_checkpoints import LEGACY_FAMILIES, build_legacy_checkpoint


def _native_config(family: str, vocab_size: int, hidden: int, tokenizer, init_std: float = 0.02):
    from transformers import BloomConfig, Gemma3TextConfig, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=init_std, **ids)
    if family == "llama":
        return LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family == "qwen2":
        return Qwen2Config(intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    if family == "gemma3":
        return Gemma3TextConfig(intermediate_size=2 * hidden, num_key_value_heads=2, head_dim=hidden // 4,
                                sliding_window=64, layer_types=["sliding_attention", "full_attention"], **common)
    if family == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=hidden, n_layer=2, n_head=4,
                           initializer_range=init_std, **ids)
    raise ValueError(f"no tiny config for {family}")


NATIVE_FAMILIES = ("llama", "bloom", "qwen2", "gemma3")
ALL_FAMILIES = NATIVE_FAMILIES + LEGACY_FAMILIES


def build_tiny_model(family: str, folder: Path, tokenizer, hidden: int = 32, seed: int = 0,
                     init_std: float = 0.02) -> str:
    """Write a tiny random model of ``family`` plus ``tokenizer`` into ``folder``; returns the path.

    ``init_std`` > 0.02 gives embeddings large enough for confident logits, which a LoRA-only
    fine-tune of such a small model needs to learn a sharp distribution (e.g. to emit EOS).
    """
    if family in LEGACY_FAMILIES:  # their own vocabulary; ``tokenizer`` and ``hidden`` do not apply
        return str(build_legacy_checkpoint(family, Path(folder) / family, seed=seed))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_native_config(family, len(tokenizer), hidden, tokenizer, init_std))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
