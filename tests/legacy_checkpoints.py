"""Tiny checkpoints of the legacy families in their published layout, with a working tokenizer.

The reference packs (``tests/fixtures/legacy_models``) carry the real config fields and parameter
names but no vocabulary; ``tests/legacy_vocabs.py`` trains small vocabularies in each family's file
layout. ``build_legacy_checkpoint`` joins the two: the pack's config and weights, with every
vocabulary-sized tensor redrawn at the small vocabulary's size and the config's special-token ids
set to that vocabulary's, next to the vocabulary files. The folder is what a user downloads from
the Hub (config.json, weights, tokenizer files), minus the remote code, which we never run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from legacy_packs import PACKS_DIR as PACKS
from legacy_vocabs import make_family_folder

# --model_type -> the reference pack whose config and weights it starts from.
PACK_OF = {"chatglm": "chatglm", "chatglm2": "chatglm2", "chatglm3": "chatglm3", "baichuan": "baichuan",
           "internlm": "internlm", "moss": "moss"}
LEGACY_FAMILIES = tuple(PACK_OF)
VOCAB_KEYS = ("vocab_size", "padded_vocab_size")


def _special_ids(family: str, tokenizer) -> dict:
    """The config fields that hold token ids, as the family's config names them."""
    ids = tokenizer.convert_tokens_to_ids
    if family == "chatglm":
        return {"bos_token_id": ids("<sop>"), "eos_token_id": ids("<eop>"), "mask_token_id": ids("[MASK]"),
                "gmask_token_id": ids("[gMASK]"), "pad_token_id": tokenizer.pad_token_id}
    if family == "moss":
        return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return {}  # SentencePiece families keep the published ids (unk 0, bos 1, eos 2), as the vocabularies do


def build_legacy_checkpoint(family: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` checkpoint in the legacy layout into ``folder``; returns ``folder``.

    Weights: the pack's, except that every tensor with a vocabulary-sized dimension is redrawn
    (seeded, same scale) at the vocabulary's size.
    """
    from safetensors.torch import load_file, save_file

    from alpaca_cot.legacy import tokenizers

    folder = Path(folder)
    vocab = make_family_folder(family, folder.parent / f".{folder.name}-vocab")
    shutil.copytree(vocab, folder, dirs_exist_ok=True)
    pack = PACKS / PACK_OF[family]
    config = json.loads((pack / "config.json").read_text())
    tokenizer = tokenizers.build(family, folder, config)
    size = len(tokenizer)
    old = next(config[k] for k in VOCAB_KEYS if k in config)
    for key in VOCAB_KEYS:
        if key in config:
            config[key] = size
    config.update(_special_ids(family, tokenizer))
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in load_file(pack / "model.safetensors").items():
        if old in tensor.shape:
            shape = [size if d == old else d for d in tensor.shape]
            tensor = torch.randn(shape, generator=generator) * tensor.float().std()
        weights[name] = tensor.contiguous()
    tied = {"lm_head.weight", "transformer.word_embeddings.weight"}
    if family == "chatglm" and tied <= set(weights):  # ChatGLM-6B ties its output layer to the embeddings
        weights["lm_head.weight"] = weights["transformer.word_embeddings.weight"].clone()
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder
