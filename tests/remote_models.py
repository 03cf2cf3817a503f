"""A tiny checkpoint with its own modeling code (``auto_map``), for the ``--trust_remote_code`` path.

``build_custom_model`` copies ``tests/fixtures/remote_code/custom_lm/*.py`` into a folder, writes a
``config.json`` whose ``auto_map`` points at them, random weights and the tokenizer, so the folder
loads offline with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` and
with nothing else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "remote_code" / "custom_lm"
AUTO_MAP = {"AutoConfig": "configuration_custom_lm.CustomLMConfig",
            "AutoModelForCausalLM": "modeling_custom_lm.CustomLMForCausalLM"}


def build_custom_model(out_dir, tokenizer, seed: int = 0) -> str:
    """Write the tiny custom-code checkpoint (2 layers, hidden 32) with ``tokenizer`` into ``out_dir``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for source in FIXTURE.glob("*.py"):
        shutil.copy(source, out / source.name)
    config = {"model_type": "custom_lm", "architectures": ["CustomLMForCausalLM"], "auto_map": AUTO_MAP,
              "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
              "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "tie_word_embeddings": False, "dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    loaded = AutoConfig.from_pretrained(out, trust_remote_code=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(loaded, trust_remote_code=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    return str(out)
