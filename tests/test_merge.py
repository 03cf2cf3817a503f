"""merge.py: the merged checkpoint loads with AutoModelForCausalLM alone and matches base + adapter;
methods that cannot be merged are refused with the reason; quantized bases merge in full precision."""

import dataclasses
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.merge import MergeError, merge
from alpaca_cot.train import run
from merge import main as merge_main

TOLERANCE = 1e-4  # max |logit difference|, fp32 (measured: ~1e-6)
PROMPT = "### Instruction:\nWrite the word apple backwards.\n\n### Response:\n"


def finetune(model_dir, folder, bits=None):
    """One LoRA step, then random B matrices: an adapter that changes the logits a lot (B starts at 0)."""
    data = folder / "data.json"
    data.write_text(json.dumps([{"instruction": f"Repeat {w}.", "input": "", "output": w}
                                for w in ("apple", "river", "stone", "cloud")]))
    out = folder / "out"
    run(ModelArguments(model_type="llama", model_name_or_path=model_dir, quantization_bit=bits),
        DataArguments(data=[str(data)], cutoff_len=64), PeftArguments(lora_dropout=0.0),
        FinetuneArguments(output_dir=str(out), max_steps=1, per_gpu_train_batch_size=4, save_steps=1000))
    weights = load_file(out / "adapter_model.safetensors")
    torch.manual_seed(0)
    weights = {k: torch.randn_like(v) * 0.5 if "lora_B" in k else v for k, v in weights.items()}
    save_file(weights, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def tiny64(tiny_model_factory):
    return tiny_model_factory("llama", hidden=64)  # 64: bitsandbytes' CPU 4-bit kernel needs it


@pytest.fixture(scope="module")
def lora_out(tiny64, tmp_path_factory):
    return finetune(tiny64, tmp_path_factory.mktemp("merge"))


def logits_and_greedy(model, tokenizer):
    ids = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return logits, out[0, ids["input_ids"].shape[1]:].tolist()


def test_merged_checkpoint_loads_alone_and_matches_base_plus_adapter(tiny64, lora_out, tmp_path, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = tmp_path / "merged"
    merge_main(["--lora_dir", str(lora_out), "--merged_dir", str(merged_dir)])
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "alpaca_cot.json"} <= names
    assert "adapter_config.json" not in names and not [n for n in tmp_path.iterdir() if n.name.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    assert (merged_dir / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not left 0600

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny64), lora_out)
    merged_logits, merged_tokens = logits_and_greedy(merged, tokenizer)
    adapted_logits, adapted_tokens = logits_and_greedy(adapted, tokenizer)
    with adapted.disable_adapter():
        base_logits, _ = logits_and_greedy(adapted, tokenizer)
    assert (merged_logits - adapted_logits).abs().max() < TOLERANCE
    assert (merged_logits - base_logits).abs().max() > 100 * TOLERANCE  # the adapter mattered
    assert merged_tokens == adapted_tokens

    from alpaca_cot.infer import load_generator  # the merged folder serves every script via --lora_dir
    generator = load_generator(str(merged_dir))
    assert generator.template.name == "alpaca" and not hasattr(generator.model, "peft_config")


def test_quantized_base_is_merged_in_full_precision_with_a_warning(tiny64, tmp_path, caplog, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = finetune(tiny64, tmp_path, bits=4)
    with caplog.at_level(logging.WARNING, logger="alpaca_cot.merge"):
        merge(str(out), str(tmp_path / "merged"))
    assert "4-bit quantized base" in caplog.text and "full-precision" in caplog.text
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert json.loads((tmp_path / "merged" / "alpaca_cot.json").read_text())["quantization_bit"] is None
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny64), out)  # full-precision base
    assert (logits_and_greedy(merged, tokenizer)[0] - logits_and_greedy(adapted, tokenizer)[0]).abs().max() < TOLERANCE


def test_prompt_tuning_adapter_is_refused_with_the_reason(tiny64, tmp_path):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "prompt"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny64),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.save_pretrained(out)
    meta = {"base_model": tiny64, "model_type": "llama", "template": "alpaca", "peft_type": "prompt"}
    (out / "alpaca_cot.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as refused:
        merge_main(["--lora_dir", str(out), "--merged_dir", str(tmp_path / "merged")])
    assert "cannot merge the prompt adapter" in str(refused.value) and "prompt-based" in str(refused.value)
    assert not (tmp_path / "merged").exists()


def test_registry_flag_and_destination_checks(lora_out, tmp_path, monkeypatch):
    from alpaca_cot import peft_methods

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="--overwrite"):
        merge(str(lora_out), str(occupied))
    assert (occupied / "keep.txt").read_text() == "mine"

    lora = peft_methods.PEFT_METHODS["lora"]
    monkeypatch.setitem(peft_methods.PEFT_METHODS, "lora", dataclasses.replace(lora, mergeable=False))
    with pytest.raises(MergeError, match="marks --peft_type lora as not mergeable"):
        merge(str(lora_out), str(tmp_path / "merged"))

    full = tmp_path / "full"  # a full fine-tune's folder: a model, no adapter
    full.mkdir()
    (full / "alpaca_cot.json").write_text(json.dumps({"peft_type": "full"}))
    with pytest.raises(MergeError, match="nothing to merge"):
        merge(str(full), str(tmp_path / "merged"))
