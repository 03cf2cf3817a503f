"""Padding-free packing through the collator and Trainer that training uses, and its fallbacks.

Tolerances (fp32): packed logits equal each sample's own logits within 2e-4 absolute (the
design notes measured 5.5e-05 on the embedded model with dense SDPA masks; our per-sample
SDPA gives 0 on the CPU); packed loss equals the token-weighted per-sample loss within 1e-5
relative; a packed training run equals a padded one within 1e-5 (loss) and 1e-5 (weights).
"""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.loader import cpu_has_bf16_matmul, resolve_dtype
from alpaca_cot.packing import (PACKED_SDPA, PackingCollator, enable_packing, packing_blocker, plan_batching,
                                segment_starts)
from alpaca_cot.templates import get_template
from alpaca_cot.tokenize import IGNORE_INDEX, encode_records
from alpaca_cot.train import run, training_arguments

RECORDS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
    {"instruction": "Write a short poem about the sea.", "input": "",
     "output": "The sea is wide, the sea is deep,\nit sings the shore to sleep."},
    {"instruction": "把这句话翻译成英文。", "input": "我喜欢读书。", "output": "I like reading books."},
]


def lora_model(path, dtype=torch.float32, attn="sdpa"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():  # a trained-looking adapter: B is zero at init
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.fixture(scope="module")
def samples(tokenizer):
    return encode_records(RECORDS, tokenizer, get_template("alpaca"), cutoff_len=512)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_per_sample_logits(default_model_dir, tokenizer, samples, attn):
    model = lora_model(default_model_dir, attn=attn)
    batching = plan_batching(model, False, len(tokenizer))
    assert batching.packing and batching.label_positions
    assert model.get_base_model().config._attn_implementation == (PACKED_SDPA if attn == "sdpa" else "eager")
    batch = batching.collator(tokenizer)(samples)
    assert batch["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    assert "attention_mask" not in batch
    model.train()  # as in training (no dropout: lora_dropout 0, attention dropout 0)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        expected = []
        for s in samples:
            logits = model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
            keep = [t for t in range(len(s["labels"]) - 1) if s["labels"][t + 1] != IGNORE_INDEX]
            expected.append(logits[keep])
    expected = torch.cat(expected)
    assert packed.shape == expected.shape  # logits only where a label follows
    assert (packed - expected).abs().max().item() < 2e-4


def test_packed_loss_is_the_token_weighted_per_sample_loss(default_model_dir, tokenizer, samples, tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    model = lora_model(default_model_dir)
    batching = plan_batching(model, False, len(tokenizer))
    args = training_arguments(FinetuneArguments(output_dir=str(tmp_path), per_gpu_train_batch_size=4),
                              str(tmp_path), torch.float32, has_eval=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(samples), processing_class=tokenizer,
                      data_collator=batching.collator(tokenizer), compute_loss_func=batching.loss_func())
    (batch,) = list(trainer.get_train_dataloader())  # the Trainer's own loader: shuffled, collated, on device
    batches, num_items = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    model.train()
    with torch.no_grad():
        packed_loss = trainer.compute_loss(model, dict(batches[0]), num_items_in_batch=num_items).item()
        total, count = 0.0, 0
        for s in samples:
            logits = model(input_ids=torch.tensor([s["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(s["labels"][1:])
            total += F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    assert int(num_items) == count
    assert math.isclose(packed_loss, total / count, rel_tol=1e-5)


def finetune(model_dir, data, out, **data_kwargs):
    return run(ModelArguments(model_type="llama", model_name_or_path=model_dir, compute_dtype="fp32"),
               DataArguments(data=[data], cutoff_len=128, **data_kwargs), PeftArguments(lora_dropout=0.0),
               FinetuneArguments(output_dir=str(out), per_gpu_train_batch_size=3, max_steps=3, save_steps=1000,
                                 logging_steps=1, learning_rate=1e-2))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("packdata") / "data.json"
    words = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple", "ocean"]
    path.write_text(json.dumps([{"instruction": f"Repeat {w} {i + 1} times.", "input": "",
                                 "output": " ".join([w] * (i + 1))} for i, w in enumerate(words)]))
    return str(path)


def test_packed_training_equals_padded_training(tiny_llama_dir, data_file, tmp_path):
    """uniform_finetune's run(): the same samples per step, the same losses and weights, minus the padding."""
    packed = finetune(tiny_llama_dir, data_file, tmp_path / "packed")
    padded = finetune(tiny_llama_dir, data_file, tmp_path / "padded", packing=False)
    assert packed["packing"] and not padded["packing"] and not padded["group_by_length"]

    def losses(out):
        meta = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
        return [h["loss"] for h in meta["log_history"] if "loss" in h]

    for a, b in zip(losses(tmp_path / "packed"), losses(tmp_path / "padded"), strict=True):
        assert math.isclose(a, b, rel_tol=1e-5)
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("packed", "padded"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_models_that_leak_fall_back_to_length_grouped_padding(tiny_model_factory, data_file, tmp_path, caplog):
    bloom = tiny_model_factory("bloom")  # ALiBi positions come from the attention mask: packed samples leak
    with caplog.at_level(logging.INFO, logger="alpaca_cot"):
        metrics = run(ModelArguments(model_type="bloom", model_name_or_path=bloom),
                      DataArguments(data=[data_file], cutoff_len=128), PeftArguments(),
                      FinetuneArguments(output_dir=str(tmp_path / "out"), max_steps=1, save_steps=1000))
    assert not metrics["packing"] and metrics["group_by_length"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batches:")]
    assert len(lines) == 1 and "no packing" in lines[0] and "does not isolate packed samples" in lines[0]
    with pytest.raises(SystemExit, match="--packing: attention 'eager' does not isolate"):
        from uniform_finetune import main

        main(["--model_type", "bloom", "--model_name_or_path", bloom, "--data", data_file, "--output_dir",
              str(tmp_path / "out2"), "--max_steps", "1", "--packing", "true"])


def test_the_use_cache_trap_is_caught(tiny_llama_dir):
    """Dense masks are only built without a cache: with use_cache on, the probe sees the leak."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    model.config.use_cache = True
    ok, why = enable_packing(model, False, model.config.vocab_size)
    assert not ok and "does not isolate" in why
    model.config.use_cache = False
    assert enable_packing(model, False, model.config.vocab_size)[0]


def test_prompt_learning_and_remote_code_do_not_pack(tiny_llama_dir):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert packing_blocker(model, trust_remote_code=True) == "remote-code models are not known to isolate packed samples"
    prefix = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "prepends virtual tokens" in packing_blocker(prefix, trust_remote_code=False)
    batching = plan_batching(prefix, False, model.config.vocab_size)
    assert not batching.packing and batching.group_by_length


def test_adalora_keeps_its_regulariser_when_packed(tiny_llama_dir):
    """AdaLoRA adds its orthogonality term in the forward, only when labels reach it."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                          LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    assert plan_batching(lora, False, lora.config.vocab_size).label_positions
    adalora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                             AdaLoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], total_step=10))
    batching = plan_batching(adalora, False, adalora.config.vocab_size)
    assert batching.packing and not batching.label_positions and batching.loss_func() is None


def test_segments_only_for_restarting_positions():
    assert segment_starts(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [0, 3, 5]
    assert segment_starts(torch.tensor([[0, 1, 2, 3]]), 4) is None  # one sample: plain SDPA
    assert segment_starts(torch.tensor([[1, 1, 0, 1, 2]]), 5) is None  # left padding in generation
    assert segment_starts(torch.tensor([[0, 1, 1, 2]]), 4) is None  # not a restart at 0
    assert segment_starts(torch.tensor([[0, 1], [0, 1]]), 2) is None  # several rows
    collated = PackingCollator(label_positions=True)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                                      {"input_ids": [8, 9], "labels": [8, 9]}])
    assert collated["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert collated["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # a sample's first token is never a target
    assert collated["logits_to_keep"].tolist() == [0, 1, 3]


def test_cpu_training_defaults_to_bf16_with_fp32_trainable_weights(tiny_llama_dir, data_file, tmp_path, caplog):
    expected = torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    assert resolve_dtype("auto", training=True) == expected and resolve_dtype("auto") == torch.float32
    with caplog.at_level(logging.INFO, logger="alpaca_cot"):
        run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
            DataArguments(data=[data_file], cutoff_len=128), PeftArguments(),
            FinetuneArguments(output_dir=str(tmp_path / "out"), max_steps=1, save_steps=1000))
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
    assert any("sdpa_packed" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "out" / "alpaca_cot.json").read_text())["metrics"]["packing"] is True


@pytest.mark.parametrize("peft_type", ["full", "freeze"])
def test_full_and_freeze_train_and_save_fp32_weights_on_the_cpu(peft_type, tiny_llama_dir, data_file, tmp_path):
    """A bf16 base would round the weights these methods train and save: they load in fp32."""
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
        DataArguments(data=[data_file], cutoff_len=128), PeftArguments(peft_type=peft_type),
        FinetuneArguments(output_dir=str(tmp_path / "out"), max_steps=1, save_steps=1000))
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
