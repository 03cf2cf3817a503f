"""Multi-process training on the CPU (gloo): ``torchrun --nproc_per_node 2 uniform_finetune.py``.

DDP is what runs on the CPU: accelerate only enables FSDP (and DeepSpeed needs CUDA) on GPUs,
and silently runs DDP for ``--fsdp`` on the CPU (checked: ``distributed_type`` MULTI_CPU). So
the FSDP and DeepSpeed configs are checked here for validity and for reaching the Trainer.

Two processes with micro-batch 2 make the same optimizer steps as one process with micro-batch
2 and 2 accumulation steps: the same 4 samples per step, the loss token-weighted over all of
them (the Trainer sums label tokens across processes). Only the order of the float32 gradient
sums differs, so the runs agree to rounding; the tolerances, and why they are what they are,
are in ``test_two_processes_match_one_process_with_gradient_accumulation``.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import ConfigError, run, training_arguments

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple"]
COMMON = ["--model_type", "llama", "--compute_dtype", "fp32", "--lora_dropout", "0", "--learning_rate", "1e-2",
          "--max_steps", "3", "--logging_steps", "1", "--save_steps", "3", "--per_gpu_train_batch_size", "2",
          "--cutoff_len", "128"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddpdata") / "data.json"
    path.write_text(json.dumps([{"instruction": f"Repeat {w} {i + 1} times.", "input": "",
                                 "output": " ".join([w] * (i + 1))} for i, w in enumerate(WORDS)]))
    return str(path)


@pytest.fixture(scope="module")
def single_process(tiny_llama_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir, compute_dtype="fp32"),
        DataArguments(data=[data_file], cutoff_len=128), PeftArguments(lora_dropout=0.0),
        FinetuneArguments(output_dir=str(out), per_gpu_train_batch_size=2, gradient_accumulation_steps=2,
                          max_steps=3, logging_steps=1, save_steps=3, learning_rate=1e-2))
    return out


def logged(out: Path) -> list[tuple[float, float]]:
    """(loss, grad_norm) of each logged step."""
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    return [(h["loss"], h["grad_norm"]) for h in state["log_history"] if "loss" in h]


def torchrun(out: Path, model_dir: str, data_file: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "uniform_finetune.py"), "--model_name_or_path", model_dir, "--data", data_file,
           "--output_dir", str(out), *COMMON, *extra]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_two_processes_match_one_process_with_gradient_accumulation(single_process, tiny_llama_dir, data_file,
                                                                    tmp_path):
    out = tmp_path / "out"
    torchrun(out, tiny_llama_dir, data_file)
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["metrics"]["global_step"] == 3 and meta["metrics"]["packing"] is True
    # Loss and gradient norm per step: sums over thousands of float32 terms whose order differs,
    # relative error ~1e-7; 1e-5 leaves 100x. A wrong sample split or loss normalisation changes
    # them by percents. The gradient norm also catches a gradient scaled by a constant, which
    # Adam's scale-invariant step would hide in the weights.
    got, want = logged(out), logged(single_process)
    assert len(got) == len(want) == 3
    assert all(math.isclose(g, w, rel_tol=1e-5) for gw, ww in zip(got, want) for g, w in zip(gw, ww)), (got, want)
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(single_process / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Weights after 3 AdamW steps (lr 1e-2, 6.7e-3, 3.3e-3; beta1 0.9, beta2 0.999, eps 1e-8). An
    # element moves by lr * m/(sqrt(v) + eps). Where |g| >> eps that ratio depends only on the
    # element's relative gradient errors (~1e-6 from the sum order): at most sum(lr) * 2e-6 = 4e-8
    # per element, so nearly every element agrees within 1e-6. Where |g| is below eps the step is
    # linear in g, about lr * 0.53 * g / eps at step 2: an absolute gradient error dg moves the
    # weight by 6.7e-3 * 0.53 / 1e-8 * dg = 3.5e5 * dg. The sum order changes a gradient element
    # by up to ~1e-5 of its tensor's largest element; in a LoRA A matrix at step 2 (B was zero
    # before step 1, so A's gradients are small) that largest element is ~1.5e-5, so
    # dg <= 1.5e-10 and the weight moves <= 5e-5. It happens here: one element of layers.1
    # q_proj lora_A has g = -6.8e-9 at step 2 and differs by 6.1e-6 (on AVX-512 and AVX2 CPUs
    # alike), every other element by <= 5e-7. Hence: every element within 1e-4 (a hundredth of
    # one step; measured: a 1% larger learning rate moves some elements by 1e-2), and at most
    # 1% of the elements beyond 1e-6 (measured: 1 of 1,280).
    assert diff.max() <= 1e-4, diff.max()
    assert (diff > 1e-6).float().mean() <= 0.01, (int((diff > 1e-6).sum()), diff.numel())


def test_deepspeed_configs_are_valid_and_forwarded(tmp_path):
    for name, stage in (("ds_zero2.json", 2), ("ds_zero3.json", 3)):
        config = json.loads((ROOT / "configs" / name).read_text())
        assert config["zero_optimization"]["stage"] == stage
        # batch sizes, accumulation, clipping and precision come from our flags
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto"
        assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    fsdp = json.loads((ROOT / "configs" / "fsdp.json").read_text())
    assert fsdp["fsdp_version"] == 2
    ds = FinetuneArguments(output_dir=str(tmp_path), deepspeed=str(ROOT / "configs" / "ds_zero2.json"))
    try:
        import deepspeed  # noqa: F401
    except ImportError:  # not installed here (it needs CUDA): a clear error, before any training
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            training_arguments(ds, str(tmp_path), torch.float32, has_eval=False)
    else:
        assert training_arguments(ds, str(tmp_path), torch.float32, has_eval=False).deepspeed
    with pytest.raises(ConfigError, match="no such config file"):
        training_arguments(FinetuneArguments(output_dir=str(tmp_path), deepspeed="nope.json"), str(tmp_path),
                           torch.float32, has_eval=False)
    args = training_arguments(FinetuneArguments(output_dir=str(tmp_path), fsdp="true",
                                                fsdp_config=str(ROOT / "configs" / "fsdp.json")),
                              str(tmp_path), torch.float32, has_eval=False)
    assert args.fsdp and args.fsdp_config["version"] == 2
