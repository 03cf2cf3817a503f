"""The training path on tiny models: the classic failures of fine-tuning tools, each pinned.

- an adapter file saved empty or without the trained weights;
- a model that never stops because no EOS was trained;
- resume that does not restore optimizer, scheduler and data position;
- Ctrl-C losing the work done;
- 4-bit and 8-bit (bitsandbytes on the CPU) training.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.infer import load_generator
from alpaca_cot.train import run

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple"]
REVERSE = [{"instruction": f"Write the word {w} backwards, letter by letter.", "input": "", "output": " ".join(reversed(w))}
           for w in WORDS]
REPEAT = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w} for w in WORDS[:4]]


@pytest.fixture(scope="module")
def repeat_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "repeat.json"
    path.write_text(json.dumps(REPEAT))
    return str(path)


@pytest.fixture(scope="module")
def tiny64(tiny_model_factory):
    """Hidden size 64: bitsandbytes' CPU 4-bit kernel needs in_features divisible by 64."""
    return tiny_model_factory("llama", hidden=64)


def finetune(model_dir, data, out, **ft):
    lora = ft.pop("lora", {})
    cutoff = ft.pop("cutoff_len", 128)
    bits = ft.pop("quantization_bit", None)
    defaults = dict(output_dir=str(out), per_gpu_train_batch_size=4, save_steps=1000, logging_steps=1)
    return run(ModelArguments(model_type="llama", model_name_or_path=model_dir, quantization_bit=bits),
               DataArguments(data=[data], cutoff_len=cutoff), PeftArguments(**lora),
               FinetuneArguments(**{**defaults, **ft}))


@pytest.fixture(scope="module")
def trained_reverse(default_model_dir, tmp_path_factory):
    """The real default model taught a toy format (spell a word backwards) in 20 LoRA steps."""
    folder = tmp_path_factory.mktemp("reverse")
    (folder / "reverse.json").write_text(json.dumps(REVERSE))
    out = folder / "out"
    metrics = run(ModelArguments(), DataArguments(data=[str(folder / "reverse.json")], cutoff_len=128),
                  PeftArguments(lora_dropout=0.0),
                  FinetuneArguments(output_dir=str(out), max_steps=20, learning_rate=3e-3, save_steps=20,
                                    per_gpu_train_batch_size=4, logging_steps=5))
    return out, metrics


@pytest.mark.slow
def test_saved_adapter_holds_the_trained_weights(trained_reverse):
    out, metrics = trained_reverse
    saved = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means trained
    final_ckpt = load_file(out / f"checkpoint-{metrics['global_step']}" / "adapter_model.safetensors")
    assert saved.keys() == final_ckpt.keys()
    assert all(torch.equal(saved[k], final_ckpt[k]) for k in saved)


@pytest.mark.slow
def test_reloaded_adapter_changes_the_output_and_the_model_learnt_to_stop(trained_reverse, tokenizer):
    out, _ = trained_reverse
    tuned = load_generator(lora_dir=str(out))
    base = load_generator(lora_dir=str(out), base_only=True)
    greedy = {"max_new_tokens": 30, "do_sample": False}
    prompts = tuned.prompt_ids(REVERSE)
    tuned_ids = tuned.generate_ids(prompts, greedy)
    assert tuned_ids != base.generate_ids(prompts, greedy)
    answers = [tuned.decode(ids) for ids in tuned_ids]
    # The format was learnt (single letters separated by spaces; the 135M model misspells some).
    assert all(re.fullmatch(r"(\w )+\w", a) for a in answers), answers
    # EOS was trained: generation ends right after the answer, never running on to max_new_tokens.
    for ids, answer in zip(tuned_ids, answers):
        assert len(ids) == len(tokenizer(answer, add_special_tokens=False)["input_ids"]) < 30


def test_resume_continues_exactly_where_it_stopped(tiny64, tmp_path):
    """An interrupted run resumed from its checkpoint ends exactly where an uninterrupted one does."""
    # 6 samples of different lengths, batch 2: the checkpoint at step 2 falls mid-epoch, so resuming
    # at the wrong data position would give other batches and other losses.
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Repeat {w}.", "input": "", "output": f"{w} " * (i + 1)}
                                for i, w in enumerate(WORDS[:6])]))
    lora = {"lora_dropout": 0.0}
    full = finetune(tiny64, str(data), tmp_path / "full", max_steps=4, save_steps=2, lora=lora,
                    per_gpu_train_batch_size=2)
    (tmp_path / "part").mkdir()  # the state of a run stopped after step 2: its checkpoint only
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "part" / "checkpoint-2")
    resumed = finetune(tiny64, str(data), tmp_path / "part", max_steps=4, save_steps=2, lora=lora,
                       per_gpu_train_batch_size=2, resume_from_checkpoint="latest")
    assert resumed["global_step"] == full["global_step"] == 4

    def losses(out):
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        return [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]

    # optimizer, scheduler and data position restored: the same losses and weights (tolerance 1e-6)
    for (step_a, loss_a), (step_b, loss_b) in zip(losses(tmp_path / "full"), losses(tmp_path / "part"), strict=True):
        assert step_a == step_b and math.isclose(loss_a, loss_b, abs_tol=1e-6)
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_training_step(bits, tiny64, repeat_data, tmp_path):
    metrics = finetune(tiny64, repeat_data, tmp_path / "out", max_steps=2, quantization_bit=bits)
    assert math.isfinite(metrics["train_loss"]) and metrics["global_step"] == 2
    meta = json.loads((tmp_path / "out" / "alpaca_cot.json").read_text())
    assert meta["quantization_bit"] == bits
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size > 0


def test_ctrl_c_saves_a_resumable_adapter(tiny64, repeat_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "uniform_finetune.py"), "--model_type", "llama", "--model_name_or_path", tiny64,
         "--data", repeat_data, "--output_dir", str(out), "--max_steps", "100000", "--logging_steps", "1",
         "--save_steps", "100000", "--per_gpu_train_batch_size", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 120
    while "'loss'" not in seen and time.time() < deadline:  # wait until training steps are logged
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, seen + rest
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["metrics"]["interrupted"] is True
    step = meta["metrics"]["global_step"]
    assert step >= 1 and (out / f"checkpoint-{step}" / "optimizer.pt").exists()
    assert (out / "adapter_model.safetensors").exists()
